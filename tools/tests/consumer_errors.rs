//! A consumer's error is that consumer's: real producer and consumer processes, one consumer's
//! pipeline failing (`identity error-after=5`) beside a healthy one. In independent mode the
//! producer posts the error as a warning naming the failing consumer, drops it and streams on;
//! when the two pipelines run as one (fdlinksrc or fdlinksink in mode=follow) the error stops
//! the producer.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

/// Frames the producer sends: enough that it is still streaming when the failing consumer's
/// error arrives (the healthy consumer holds each one 5 ms).
const FRAMES: usize = 300;

/// What `identity error-after` says when it fails.
const IDENTITY_ERROR: &str = "Failed after iterations as requested";

struct Run {
    producer: Peer,
    failing: Peer,
    healthy: Peer,
    /// The socket's directory, removed after the processes (fields drop in order).
    _dir: TempDir,
}

/// A non-live producer that waits for both consumers (for one, if it follows), one consumer whose pipeline fails after
/// 5 frames (`failing_props` added to its fdlinksrc) and one that holds every frame 5 ms.
fn start(tag: &str, sink_props: &str, failing_props: &str) -> Run {
    let dir = TempDir::new(tag);
    let sock = dir.socket();
    // A follower is left to take its states from the producer: its application going to
    // PLAYING at the same time as following the producer's PAUSED sometimes leaves it paused.
    let follows = failing_props.contains("mode=follow");
    let pipeline = format!(
        "fdlinksrc socket-path={sock} timeout=30000 {failing_props} ! identity error-after=5 ! fakesink"
    );
    let mut args = vec!["consume"];
    if follows {
        args.push("--start-paused");
    }
    args.push(&pipeline);
    let failing = Peer::spawn(&args);
    let healthy = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--slow-ms",
        "5",
        &format!("fdlinksrc socket-path={sock} timeout=30000 ! queue ! fakesink"),
    ]);
    // A following producer plays as soon as its first consumer does, and may lose the failing
    // one before the other joins.
    let following = sink_props.contains("mode=follow");
    let wait_clients = if following { "1" } else { "2" };
    // Live at 30 frames/s it streams for 10 s, so the failing consumer still gets frames when
    // the healthy one came first and a loaded machine starts the failing one late.
    let live = if following { "is-live=true" } else { "" };
    let producer = Peer::spawn(&[
        "produce",
        "--frames-log",
        "--messages-log",
        "--wait-clients",
        wait_clients,
        "--wait-clients-gone",
        &format!(
            "videotestsrc num-buffers={FRAMES} pattern=ball {live} ! video/x-raw,format=NV12,width=320,height=240 ! fdlinksink socket-path={sock} sync=false {sink_props}"
        ),
    ]);
    Run {
        producer,
        failing,
        healthy,
        _dir: dir,
    }
}

/// The failing consumer exits with its own error, the one identity posted.
fn assert_fails_with_its_own_error(failing: &mut Peer) {
    assert_eq!(failing.wait(T).code(), Some(1), "{}", failing.errors());
    let first = failing
        .errors()
        .lines()
        .find(|l| l.starts_with("error: "))
        .map(String::from)
        .unwrap_or_default();
    assert!(
        first.contains(IDENTITY_ERROR) && first.contains("GstIdentity:identity0"),
        "the failing consumer's first error is its own: {}",
        failing.errors()
    );
}

/// Independent mode: the failing consumer's error reaches the producer as a warning naming it,
/// it is dropped, and the producer and the healthy consumer carry on to EOS with every frame.
#[test]
fn an_independent_consumers_error_is_its_own() {
    init_gst();
    let mut r = start("own-error", "", "");
    let Run {
        producer,
        failing,
        healthy,
        ..
    } = &mut r;
    assert_fails_with_its_own_error(failing);
    producer.wait_success(T, "producer");
    let lines = producer.lines();
    assert!(lines.iter().any(|l| l == "eos"), "the producer reaches EOS");
    assert_eq!(frames(&lines).len(), FRAMES);
    let warning = format!(
        "(pid {}) is disconnected: its pipeline failed in /GstPipeline:pipeline0/GstIdentity:identity0: {IDENTITY_ERROR}",
        failing.pid()
    );
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("message warning "))
        .collect();
    // One warning, for its first error: not again for the source's "Internal data stream
    // error" that follows from it.
    let failing_pid = format!("(pid {})", failing.pid());
    let about_failing: Vec<&&String> = warnings
        .iter()
        .filter(|l| l.contains(&failing_pid))
        .collect();
    assert!(
        about_failing.len() == 1
            && about_failing[0].contains("consumer ")
            && about_failing[0].contains(&warning),
        "one warning, naming the failing consumer: {warnings:?}"
    );
    let healthy_pid = format!("(pid {})", healthy.pid());
    assert!(
        !warnings.iter().any(|l| l.contains(&healthy_pid)),
        "no warning names the healthy consumer: {warnings:?}"
    );
    healthy.wait_success(T, "healthy consumer");
    let got = healthy.lines();
    assert_eq!(
        frames(&got).len(),
        FRAMES,
        "the healthy consumer gets every frame"
    );
    assert!(
        got.iter().any(|l| l == "eos"),
        "the healthy consumer ends at EOS"
    );
    // Both consumers came; every buffer either held came back (the failing one's with its drop).
    let ps = producer.latest_stats().expect("the producer's final stats");
    assert_eq!(field(&ps, "consumers-total"), 2, "{ps}");
    assert_eq!(field(&ps, "buffers-held"), 0, "{ps}");
}

/// The producer stops with the consumer's error, naming it, and not with a warning.
fn assert_producer_stops_with(producer: &mut Peer, failing: &Peer) {
    assert_eq!(
        producer.wait(T).code(),
        Some(1),
        "the producer stops on the error: {}",
        producer.errors()
    );
    let err = producer.errors();
    let named = format!(
        "(pid {}) /GstPipeline:pipeline0/GstIdentity:identity0: {IDENTITY_ERROR}",
        failing.pid()
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: consumer ") && l.contains(&named)),
        "the producer's error names the failing consumer: {err}"
    );
    assert!(
        !producer
            .lines()
            .iter()
            .any(|l| l.contains("is disconnected: its pipeline failed")),
        "a shared error is not a warning: {:?}",
        producer.lines()
    );
}

/// A following consumer (fdlinksrc mode=follow) runs as one with the producer: its error stops
/// the producer.
#[test]
fn a_following_consumers_error_stops_the_producer() {
    init_gst();
    let mut r = start("follower-error", "", "mode=follow");
    assert_fails_with_its_own_error(&mut r.failing);
    assert_producer_stops_with(&mut r.producer, &r.failing);
}

/// A producer that follows its consumers (fdlinksink mode=follow) runs as one with them: a
/// consumer's error stops it too.
#[test]
fn a_following_producer_stops_on_a_consumers_error() {
    init_gst();
    let mut r = start("following-producer", "mode=follow", "");
    assert_fails_with_its_own_error(&mut r.failing);
    assert_producer_stops_with(&mut r.producer, &r.failing);
}
