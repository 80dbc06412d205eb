//! Caps across the link as a one-process pipeline would have them: no caps error from a pad
//! that is only flushing, request pads of muxers for the producer's media type (after
//! identity and queue too), GstVideoMeta where one process has it, and every frame a consumer
//! did not push downstream counted. Real `fdlink-peer` processes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

/// Runs `gst-launch-1.0 -q PIPELINE` (no fdlink element) to its end.
fn one_process(pipeline: &str) {
    let status = std::process::Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .status()
        .expect("gst-launch-1.0 runs");
    assert!(status.success(), "one-process pipeline failed: {pipeline}");
}

/// `source ! fdlinksink wait-for-connection=true` and `fdlinksrc ! consumer`, as two
/// processes; both must end at EOS.
fn two_processes(dir: &TempDir, source: &str, consumer: &str) {
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        &format!("{source} ! fdlinksink socket-path={sock} wait-for-connection=true"),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!("fdlinksrc socket-path={sock} ! {consumer}"),
    ]);
    consumer.wait_success(T, "consumer");
    producer.wait_success(T, "producer");
}

/// The `frame` lines of `filesrc location=FILE ! DEMUX ! fakesink`: what a demuxer reads
/// back of a recording.
fn frames_read_back(file: &Path, demux: &str) -> Vec<Frame> {
    let mut reader = Peer::spawn(&[
        "consume",
        "--frames-log",
        &format!(
            "filesrc location={} ! {demux} ! fakesink name=check",
            file.display()
        ),
    ]);
    reader.wait_success(T, "reader");
    frames(&reader.lines())
}

/// An application that sets its consumer pipeline PLAYING and back to READY 100 times in a
/// row, without waiting: each stop lands wherever the start got to (connecting, the hello,
/// setting the producer's caps while the pad deactivates). A flushing pad is no caps
/// refusal: the consumer then streams to EOS without an error, and the producer, which
/// reposts its consumers' errors, keeps running. Twice, since a stop catches the caps being
/// set only now and then (2 of 3 runs of 20 toggles did before the fix).
#[test]
fn quick_start_stop_is_no_caps_error() {
    init_gst();
    let dir = TempDir::new("toggle");
    let sock = dir.socket();
    let eos_file = dir.0.join("eos");
    let mut producer = Peer::spawn(&[
        "produce",
        "--eos-file",
        eos_file.to_str().unwrap(),
        &format!(
            "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock}"
        ),
    ]);
    wait_for_path(&sock, T);
    for round in 0..2 {
        let mut consumer = Peer::spawn(&[
            "consume",
            "--toggle-states",
            "100",
            "--seconds",
            "1",
            &format!("fdlinksrc socket-path={sock} ! fakesink"),
        ]);
        let status = consumer.wait(T);
        let lines = consumer.lines();
        assert!(
            status.success(),
            "round {round}: the consumer failed ({status}): {}",
            consumer.errors()
        );
        assert!(lines.iter().any(|l| l == "toggled 100"), "{lines:?}");
        assert!(lines.iter().any(|l| l == "eos"), "{lines:?}");
        let stats = consumer.latest_stats().expect("consumer stats");
        assert!(field(&stats, "frames-received") > 0, "{stats}");
        assert!(
            producer.child.try_wait().unwrap().is_none(),
            "round {round}: the producer stopped: {}",
            producer.errors()
        );
    }
    std::fs::write(&eos_file, b"").unwrap();
    producer.wait_success(T, "producer");
    assert!(
        !producer.errors().contains("caps"),
        "the producer heard of a caps error: {}",
        producer.errors()
    );
}

/// gst-launch links `fdlinksrc ! avimux` before any caps are known, and avimux gives a pad
/// for ANY caps from its first request template, `audio_%u`. Through fdlink the recording is
/// still byte-identical to the one-process pipeline's (avimux writes no dates): raw I420, and
/// H.264 from x264enc, whose avc output avimux refuses, so the producer's first caps (which
/// wait for the first consumer, wait-for-connection=true) must be asked of the right pad.
#[test]
fn avimux_recording_is_identical_to_one_process() {
    init_gst();
    let raw =
        "videotestsrc num-buffers=60 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1";
    let h264 = "videotestsrc num-buffers=60 ! video/x-raw,width=320,height=240,framerate=30/1 ! x264enc ! h264parse";
    for (tag, source) in [("raw", raw), ("h264", h264)] {
        let dir = TempDir::new(&format!("avimux-{tag}"));
        let one = dir.0.join("one.avi");
        let two = dir.0.join("two.avi");
        one_process(&format!(
            "{source} ! avimux ! filesink location={}",
            one.display()
        ));
        two_processes(
            &dir,
            source,
            &format!("avimux ! filesink location={}", two.display()),
        );
        let (a, b) = (std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
        assert!(
            a.len() > 100_000,
            "{tag}: one-process file of {} bytes",
            a.len()
        );
        assert!(
            a == b,
            "{tag}: the recording through fdlink ({} bytes) differs from one process's ({} bytes)",
            b.len(),
            a.len()
        );
    }
}

/// The same with elements between the source and avimux that give the caps they take
/// (identity, queue, tee): gst-launch linked each of them with ANY caps too, so avimux's
/// `audio_%u` pad was picked after them as well. The recordings are byte-identical to one
/// process's: raw I420 through an identity, H.264 through a queue and an identity, raw I420
/// through a tee whose other branch is a display's.
#[test]
fn avimux_after_identity_queue_and_tee_is_identical_to_one_process() {
    init_gst();
    let raw =
        "videotestsrc num-buffers=60 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1";
    let h264 = "videotestsrc num-buffers=60 ! video/x-raw,width=320,height=240,framerate=30/1 ! x264enc ! h264parse";
    for (tag, source, before, after) in [
        ("identity-raw", raw, "identity", ""),
        ("queue-h264", h264, "queue ! identity", ""),
        (
            "tee-raw",
            raw,
            "tee name=t t. ! queue",
            "t. ! queue ! fakesink sync=true",
        ),
    ] {
        let dir = TempDir::new(&format!("avimux-{tag}"));
        let one = dir.0.join("one.avi");
        let two = dir.0.join("two.avi");
        let consumer = |file: &Path| {
            format!(
                "{before} ! avimux ! filesink location={} {after}",
                file.display()
            )
        };
        one_process(&format!("{source} ! {}", consumer(&one)));
        two_processes(&dir, source, &consumer(&two));
        let (a, b) = (std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
        assert!(
            a.len() > 100_000,
            "{tag}: one-process file of {} bytes",
            a.len()
        );
        assert!(
            a == b,
            "{tag}: the recording through fdlink ({} bytes) differs from one process's ({} bytes)",
            b.len(),
            a.len()
        );
    }
}

/// The `vmeta=` field of each `frame` line (`-`: no GstVideoMeta).
fn video_metas(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with("frame "))
        .filter_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix("vmeta=")))
        .map(str::to_string)
        .collect()
}

/// Frames leave fdlinksrc with a GstVideoMeta exactly when they leave the source in one
/// process. fdlinksink takes VideoMeta, so the producer's videotestsrc adds one to every
/// frame; in one process it adds one only for a downstream that says it reads it. A tee with
/// a fakesink branch answers no allocation query (fakesink answers none), so videotestsrc
/// adds none there, and fdlinksrc removes it from these default-layout frames; y4menc reads
/// it, so the frames keep it.
#[test]
fn frames_carry_video_meta_as_in_one_process() {
    init_gst();
    let source =
        "videotestsrc num-buffers=30 ! video/x-raw,format=I420,width=160,height=120,framerate=30/1";
    let tee = "queue ! tee name=t t. ! queue ! y4menc ! fakesink t. ! queue ! fakesink";
    for (tag, consumer, with_meta) in [("tee", tee, false), ("y4menc", "y4menc ! fakesink", true)] {
        let mut one = Peer::spawn(&[
            "consume",
            "--frames-log",
            &format!("{source} ! identity name=check ! {consumer}"),
        ]);
        one.wait_success(T, "one-process pipeline");
        let expected = video_metas(&one.lines());
        assert_eq!(expected.len(), 30, "{tag}: one process's frames");
        assert!(
            expected.iter().all(|m| (m != "-") == with_meta),
            "{tag}: one process's video metas {expected:?}"
        );
        let dir = TempDir::new(&format!("vmeta-{tag}"));
        let sock = dir.socket();
        let mut producer = Peer::spawn(&[
            "produce",
            &format!("{source} ! fdlinksink socket-path={sock} wait-for-connection=true"),
        ]);
        wait_for_path(&sock, T);
        let mut two = Peer::spawn(&[
            "consume",
            "--frames-log",
            &format!("fdlinksrc socket-path={sock} ! {consumer}"),
        ]);
        two.wait_success(T, "consumer");
        producer.wait_success(T, "producer");
        assert_eq!(
            video_metas(&two.lines()),
            expected,
            "{tag}: video metas through fdlink against one process's"
        );
    }
}

/// Other muxers with request pads take the producer's caps as in one process: mp4mux
/// (`audio_%u` comes first there too) records H.264 and matroskamux raw I420, and a demuxer
/// reads back all 60 frames of each (their files carry dates, so bytes are not compared).
#[test]
fn mp4mux_and_matroskamux_take_the_producers_caps() {
    init_gst();
    let cases = [
        (
            "mp4",
            "videotestsrc num-buffers=60 ! video/x-raw,width=320,height=240,framerate=30/1 ! x264enc ! h264parse",
            "mp4mux",
            "qtdemux",
        ),
        (
            "mkv",
            "videotestsrc num-buffers=60 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1",
            "matroskamux",
            "matroskademux",
        ),
    ];
    for (tag, source, mux, demux) in cases {
        let dir = TempDir::new(&format!("mux-{tag}"));
        let file = dir.0.join(format!("two.{tag}"));
        two_processes(
            &dir,
            source,
            &format!("{mux} ! filesink location={}", file.display()),
        );
        let frames = frames_read_back(&file, demux);
        assert_eq!(frames.len(), 60, "{mux}: frames read back");
    }
}

/// A producer (`source ! fdlinksink sink_props`) and, `delay_ms` after its socket appears,
/// a consumer whose x264enc takes only some raw formats (frames and events logged); both run
/// to their end.
fn x264_consumer_after(tag: &str, source: &str, sink_props: &str, delay_ms: u64) -> (Peer, Peer) {
    init_gst();
    let dir = TempDir::new(tag);
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        &format!("{source} ! fdlinksink socket-path={sock} {sink_props}"),
    ]);
    wait_for_path(&sock, T);
    std::thread::sleep(Duration::from_millis(delay_ms));
    let mut consumer = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--events-log",
        &format!(
            "fdlinksrc socket-path={sock} ! x264enc tune=zerolatency speed-preset=ultrafast ! fakesink"
        ),
    ]);
    consumer.wait_success(T, "consumer");
    producer.wait_success(T, "producer");
    (producer, consumer)
}

/// A consumer whose downstream takes fewer caps (x264enc: no ABGR64) joins a live producer
/// that negotiated alone. It refuses the producer's caps, asks it to renegotiate, and drops
/// the frames that come in the old caps meanwhile: those are counted (`frames-dropped`,
/// `frames-dropped-caps`), so what reached downstream is received minus dropped; and from
/// the first frame in the new caps on, every frame the producer made reaches downstream.
#[test]
fn frames_in_refused_caps_are_counted_dropped() {
    // Well after the producer's first frame: it negotiated without this consumer.
    let (producer, consumer) = x264_consumer_after(
        "late-restricted",
        "videotestsrc is-live=true num-buffers=90 ! video/x-raw,width=320,height=240,framerate=30/1",
        "",
        800,
    );
    let lines = consumer.lines();
    let pushed = frames(&lines);
    let stats = consumer.latest_stats().expect("consumer stats");
    let (received, dropped) = (
        field(&stats, "frames-received"),
        field(&stats, "frames-dropped"),
    );
    println!(
        "received {received} dropped {dropped} pushed {}: {stats}",
        pushed.len()
    );
    let not_pushed = received
        .checked_sub(pushed.len() as u64)
        .unwrap_or_else(|| panic!("more frames downstream than received: {stats}"));
    assert!(
        not_pushed >= 1,
        "no frame came in the refused caps, so nothing was tested: {stats}"
    );
    assert_eq!(
        dropped, not_pushed,
        "frames received but not pushed downstream must be counted dropped: {stats}"
    );
    assert_eq!(field(&stats, "frames-dropped-caps"), dropped, "{stats}");
    // Only the accepted caps went downstream, and the frames in them ran without a gap to
    // the producer's last.
    let caps: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("event caps "))
        .collect();
    assert_eq!(caps.len(), 1, "{caps:?}");
    assert!(!caps[0].contains("ABGR64"), "{caps:?}");
    let (first, last) = (pushed[0].offset, pushed.last().unwrap().offset);
    assert_eq!(last, 89, "the producer's last frame");
    assert_eq!(
        pushed.len() as u64,
        last - first + 1,
        "a frame after the renegotiation went missing"
    );
    let producer_stats = producer.latest_stats().expect("producer stats");
    assert_eq!(
        field(&producer_stats, "frames-sent"),
        received,
        "{producer_stats}"
    );
}

/// With wait-for-connection=true the producer's first caps wait for the first consumer and
/// are asked of it: a non-live producer whose source could pick ABGR64 starts in caps the
/// consumer's x264enc takes, so not one of its 60 frames is dropped (negotiated alone, its
/// first frame went out in ABGR64 and was dropped: 59 arrived).
#[test]
fn wait_for_connection_negotiates_with_the_first_consumer() {
    // Long enough for the producer to have negotiated, had it not waited.
    let (_producer, consumer) = x264_consumer_after(
        "first-caps",
        "videotestsrc num-buffers=60 ! video/x-raw,width=320,height=240,framerate=30/1",
        "wait-for-connection=true",
        500,
    );
    let lines = consumer.lines();
    let stats = consumer.latest_stats().expect("consumer stats");
    assert_eq!(frames(&lines).len(), 60, "{stats}");
    assert_eq!(field(&stats, "frames-dropped"), 0, "{stats}");
    let caps: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("event caps "))
        .collect();
    assert_eq!(caps.len(), 1, "{caps:?}");
}
