//! Several links between the same two pipelines, in one direction or both: each bus message
//! crosses once and never comes back over another link, and the latency each pipeline learns
//! from the other settles. Every process runs with `--handle-latency`, recalculating its
//! latency at each latency message as gst-launch-1.0 does: that is what turned the messages
//! crossing back into a flood.

mod common;

use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(90);
/// How long the message rate is measured over, once both sides stream.
const WINDOW: Duration = Duration::from_secs(3);
/// Messages per second a bus may log over the window: a pipeline posts a few latency and
/// element messages as it starts, a flood thousands.
const MAX_RATE: f64 = 20.0;

/// The `message ...` lines of a peer run with `--messages-log` (latency, element, buffering,
/// request-state, QoS and warning messages).
fn message_count(peer: &Peer) -> usize {
    peer.lines()
        .iter()
        .filter(|l| l.starts_with("message "))
        .count()
}

/// Messages per second each peer's bus logged over `WINDOW`, starting once each logged its
/// pipeline PLAYING (and half a second more, for the links to connect).
fn message_rates(peers: &[&Peer]) -> Vec<f64> {
    for p in peers {
        assert!(
            p.wait_line(T, |l| l == "state Playing").is_some(),
            "never PLAYING: {}",
            p.errors()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let before: Vec<usize> = peers.iter().map(|p| message_count(p)).collect();
    let start = Instant::now();
    std::thread::sleep(WINDOW);
    let secs = start.elapsed().as_secs_f64();
    peers
        .iter()
        .zip(before)
        .map(|(p, n)| (message_count(p) - n) as f64 / secs)
        .collect()
}

/// The lines of `lines` with every one of `words`.
fn with_all<'a>(lines: &'a [String], words: &[&str]) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .collect()
}

/// A consumer's run ended at EOS, never dropped by the producer.
fn assert_consumer_ended_well(consumer: &mut Peer) {
    consumer.wait_success(T, "consumer");
    let lines = consumer.lines();
    assert!(lines.iter().any(|l| l == "eos"), "{lines:?}");
    let stats = consumer.latest_stats().expect("consumer stats");
    assert!(field(&stats, "frames-received") > 0, "{stats}");
}

/// The pipelines: a demuxer feeding two fdlinksinks (H.264 video, Opus audio) and a
/// consumer decoding both links at `sync=true`.
#[test]
fn demuxed_audio_and_video_over_two_links() {
    init_gst();
    let dir = TempDir::new("multilink-av");
    let media = av_mkv(&dir);
    let (v, a) = (dir.0.join("v.sock"), dir.0.join("a.sock"));
    let (v, a) = (v.display(), a.display());
    let mut producer = Peer::spawn(&[
        "produce",
        "--handle-latency",
        "--messages-log",
        &format!(
            "filesrc location={} ! matroskademux name=d \
             d.video_0 ! queue ! h264parse ! fdlinksink socket-path={v} wait-for-connection=true \
             d.audio_0 ! queue ! opusparse ! fdlinksink socket-path={a} wait-for-connection=true",
            media
        ),
    ]);
    wait_for_path(&v.to_string(), T);
    wait_for_path(&a.to_string(), T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--handle-latency",
        "--messages-log",
        &format!(
            "fdlinksrc socket-path={v} ! h264parse ! avdec_h264 ! videoconvert ! fakesink sync=true \
             fdlinksrc socket-path={a} ! opusparse ! opusdec ! audioconvert ! fakesink sync=true"
        ),
    ]);
    let rates = message_rates(&[&producer, &consumer]);
    assert_consumer_ended_well(&mut consumer);
    producer.wait_success(T, "producer");
    let p = producer.lines();
    let c = consumer.lines();
    assert!(
        rates.iter().all(|&r| r <= MAX_RATE),
        "{rates:?}\n{p:?}\n{c:?}"
    );
    // Nothing says a consumer was dropped.
    assert!(with_all(&p, &["disconnected"]).is_empty(), "{p:?}");
}

/// A live producer with two fdlinksinks and a consumer with `links` fdlinksrcs, half on each
/// socket. An element message posted on either side reaches the other once per link, and
/// never comes back; the message rates stay low; the consumer is never dropped and both
/// reach EOS.
fn links_one_way(links: usize) {
    init_gst();
    let dir = TempDir::new(&format!("multilink-{links}"));
    let (v, a) = (dir.0.join("v.sock"), dir.0.join("a.sock"));
    let (v, a) = (v.display().to_string(), a.display().to_string());
    let mut producer = Peer::spawn(&[
        "produce",
        "--handle-latency",
        "--messages-log",
        "--post-after",
        "60",
        "--seconds",
        "6",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 \
             ! fdlinksink socket-path={v} \
             audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=2 ! fdlinksink socket-path={a}"
        ),
    ]);
    wait_for_path(&v, T);
    wait_for_path(&a, T);
    let branches: Vec<String> = (0..links)
        .map(|i| {
            let path = if i % 2 == 0 { &v } else { &a };
            format!("fdlinksrc socket-path={path} ! queue ! fakesink sync=true")
        })
        .collect();
    let mut consumer = Peer::spawn(&[
        "consume",
        "--handle-latency",
        "--messages-log",
        "--post-after",
        "20",
        &branches.join(" "),
    ]);
    let rates = message_rates(&[&producer, &consumer]);
    assert_consumer_ended_well(&mut consumer);
    producer.wait_success(T, "producer");
    let p = producer.lines();
    let c = consumer.lines();
    assert!(
        rates.iter().all(|&r| r <= MAX_RATE),
        "{rates:?}\n{p:?}\n{c:?}"
    );
    assert!(with_all(&p, &["disconnected"]).is_empty(), "{p:?}");
    // The consumer's message reaches the producer once over each link, from its fdlinksinks;
    // the producer's reaches the consumer once over each link, from its fdlinksrcs.
    let theirs = with_all(&p, &["message Element", "fdlink-test", "n=(int)20"]);
    assert_eq!(theirs.len(), links, "{p:?}");
    assert!(
        theirs.iter().all(|l| l.contains("GstFdlinkSink")),
        "{theirs:?}"
    );
    let theirs = with_all(&c, &["message Element", "fdlink-test", "n=(int)60"]);
    assert_eq!(theirs.len(), links, "{c:?}");
    assert!(
        theirs.iter().all(|l| l.contains("GstFdlinkSrc")),
        "{theirs:?}"
    );
    // Neither comes back: each side logs its own message once, posted by its pipeline.
    assert_eq!(
        with_all(&p, &["fdlink-test", "n=(int)60"]).len(),
        1,
        "{p:?}"
    );
    assert_eq!(
        with_all(&c, &["fdlink-test", "n=(int)20"]).len(),
        1,
        "{c:?}"
    );
}

#[test]
fn two_links_one_way() {
    links_one_way(2);
}

#[test]
fn four_links_one_way() {
    links_one_way(4);
}

/// A link each way between two live pipelines, each also posting a message: each message
/// crosses once, none comes back, and the latency settles (the sink of one direction runs
/// `sync=false`: two syncing sinks would each hold frames for a latency that includes the
/// other's, which has no end; see docs/architecture.md, Latency and position).
#[test]
fn links_both_ways() {
    init_gst();
    let dir = TempDir::new("multilink-both");
    let (ab, ba) = (dir.0.join("ab.sock"), dir.0.join("ba.sock"));
    let (ab, ba) = (ab.display().to_string(), ba.display().to_string());
    let video =
        "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1";
    let mut a = Peer::spawn(&[
        "produce",
        "--handle-latency",
        "--messages-log",
        "--post-after",
        "60",
        "--seconds",
        "6",
        &format!(
            "{video} ! fdlinksink socket-path={ab} sync=false \
             fdlinksrc socket-path={ba} ! queue ! fakesink sync=true"
        ),
    ]);
    let mut b = Peer::spawn(&[
        "produce",
        "--handle-latency",
        "--messages-log",
        "--post-after",
        "20",
        "--seconds",
        "6",
        &format!(
            "{video} ! fdlinksink socket-path={ba} \
             fdlinksrc socket-path={ab} ! queue ! fakesink sync=true"
        ),
    ]);
    let rates = message_rates(&[&a, &b]);
    a.wait_success(T, "pipeline a");
    b.wait_success(T, "pipeline b");
    let (la, lb) = (a.lines(), b.lines());
    assert!(
        rates.iter().all(|&r| r <= MAX_RATE),
        "{rates:?}\n{la:?}\n{lb:?}"
    );
    assert!(with_all(&la, &["disconnected"]).is_empty(), "{la:?}");
    assert!(with_all(&lb, &["disconnected"]).is_empty(), "{lb:?}");
    // Each side's message reaches the other once over each link (from its fdlinksrc and its
    // fdlinksink), and none comes back: each side logs its own once.
    for (own, theirs, lines) in [("60", "20", &la), ("20", "60", &lb)] {
        let own = format!("n=(int){own}");
        let theirs = format!("n=(int){theirs}");
        assert_eq!(
            with_all(lines, &["fdlink-test", &own]).len(),
            1,
            "{lines:?}"
        );
        let from_peer = with_all(lines, &["message Element", "fdlink-test", &theirs]);
        assert_eq!(from_peer.len(), 2, "{lines:?}");
        assert!(
            from_peer.iter().any(|l| l.contains("GstFdlinkSrc"))
                && from_peer.iter().any(|l| l.contains("GstFdlinkSink")),
            "{from_peer:?}"
        );
    }
}
