//! The two pipelines behave as one: upstream events, queries and bus messages cross the link.
//! Real producer and consumer processes, as in the split-player use case (demuxer in one
//! process, decoder in the other).

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

fn query_line(lines: &[String]) -> (i64, i64) {
    let q = queries(lines);
    let q = q.first().expect("a position line");
    (q.position, q.duration)
}

/// Seek from the consumer side of a file playback: the consumer sees the flush and a new
/// segment, the producer really seeks; position and duration asked on the consumer are the
/// producer's.
#[test]
fn seek_and_queries_from_the_consumer_drive_the_producer() {
    init_gst();
    let dir = TempDir::new("seek");
    let sock = dir.socket();
    let file = clip(&dir);
    let mut producer = Peer::spawn(&[
        "produce",
        "--frames-log",
        "--query-after",
        "20",
        &format!(
            "filesrc location={file} ! qtdemux ! h264parse ! fdlinksink socket-path={sock} wait-for-connection=true"
        ),
    ]);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--events-log",
        "--seek-after",
        "30",
        "--seek-to",
        "6",
        "--query-after",
        "60",
        &format!("fdlinksrc socket-path={sock} ! h264parse ! avdec_h264 ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let c = consumer.lines();
    let p = producer.lines();

    // The producer seeked: its frames jump from ~1 s to 6 s, and it skipped the middle.
    let p_pts = pts_of(&p);
    let jump = p_pts
        .windows(2)
        .position(|w| w[1] - w[0] > 3_000_000_000)
        .expect("the producer's timestamps jump forward");
    assert!(
        p_pts[jump + 1] >= 5_900_000_000,
        "landed at {}",
        p_pts[jump + 1]
    );
    assert!(
        p_pts.len() < 250,
        "the producer sent {} of 300 frames",
        p_pts.len()
    );

    // The consumer saw the flush and a new segment after the seek. The seek goes to the
    // producer without waiting for it, so the flush may come back before the thread that
    // seeked prints "seek-sent": look from the first flush, which only the seek makes.
    assert!(
        c.iter().any(|l| l.starts_with("seek-sent ok=true")),
        "seek not sent: {c:?}"
    );
    let events: Vec<&str> = c
        .iter()
        .filter_map(|l| l.strip_prefix("event "))
        .skip_while(|e| *e != "flush-start")
        .collect();
    let fs = events
        .iter()
        .position(|e| *e == "flush-start")
        .expect("flush-start");
    let fst = events
        .iter()
        .position(|e| *e == "flush-stop")
        .expect("flush-stop");
    let seg = events
        .iter()
        .rposition(|e| e.starts_with("segment "))
        .expect("segment");
    assert!(fs < fst && fst < seg, "events after the seek: {events:?}");

    // Frames keep the producer's timestamps.
    let c_pts = pts_of(&c);
    assert!(
        c_pts.iter().all(|t| p_pts.contains(t)),
        "consumer timestamps not among the producer's"
    );

    // Duration asked on the consumer is answered by the producer's pipeline (the demuxer):
    // the same 10 s. Position follows the producer's stream: past the seek target, near the
    // frames arriving then.
    let (c_pos, c_dur) = query_line(&c);
    let (_, p_dur) = query_line(&p);
    assert_eq!(c_dur, 10_000_000_000);
    assert_eq!(c_dur, p_dur);
    assert!(
        (5_900_000_000..=10_000_000_000).contains(&c_pos),
        "consumer position after the seek to 6 s: {c_pos}"
    );
    let at_query = c_pts[59];
    assert!(
        (c_pos - at_query).abs() < 1_000_000_000,
        "position {c_pos} vs the 60th frame's pts {at_query}"
    );
}

/// Serialized events reach the consumer once each, in the producer's order: one stream-start
/// (the producer's, not BaseSrc's own as well), caps, a segment, the producer's tags before
/// the first frame, and EOS last.
#[test]
fn downstream_events_cross_once_in_stream_order() {
    init_gst();
    let dir = TempDir::new("events");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--events-log",
        &format!(
            "videotestsrc num-buffers=10 ! video/x-raw,format=NV12,width=320,height=240 ! taginject tags=title=fdlink-events ! fdlinksink socket-path={sock} wait-for-connection=true"
        ),
    ]);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--events-log",
        "--frames-log",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let (p, c) = (producer.lines(), consumer.lines());
    let stream_starts = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("event stream-start "))
            .map(str::to_string)
            .collect()
    };
    let (p_ids, c_ids) = (stream_starts(&p), stream_starts(&c));
    assert_eq!(p_ids.len(), 1, "producer: {p:?}");
    assert_eq!(c_ids, p_ids, "the consumer's stream-starts: {c:?}");

    let first = |pred: &dyn Fn(&str) -> bool| {
        find_from(&c, 0, pred).unwrap_or_else(|| panic!("missing in {c:?}"))
    };
    let stream_start = first(&|l| l.starts_with("event stream-start "));
    let caps = first(&|l| l.starts_with("event caps video/x-raw"));
    let segment = first(&|l| l.starts_with("event segment "));
    let tag = first(&|l| l == "event tag");
    let frame = first(&|l| l.starts_with("frame "));
    let eos = first(&|l| l == "event eos");
    assert!(
        stream_start < caps && caps < segment && segment < tag && tag < frame && frame < eos,
        "consumer events out of order: {c:?}"
    );
    // The tag came before the first frame said where the producer is: it waited for that
    // frame's segment, which went out once (BaseSrc's own push of it was held back).
    let count = |prefix: &str| c.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("event stream-start "), 1, "stream-start once: {c:?}");
    assert_eq!(count("event caps "), 1, "caps once: {c:?}");
    // The first frame is the producer's preroll frame, sent before its pipeline had a base
    // time: its shift is estimated from its arrival. The second frame carries the base time.
    // If the estimate was off by more than 1 ms (it is off by the time between the producer
    // going to PLAYING and the frame's arrival), one resync segment goes out before that
    // frame: the same segment with only the base moved. Nothing else repeats a segment.
    let segments: Vec<usize> = (0..c.len())
        .filter(|&i| c[i].starts_with("event segment "))
        .collect();
    let without_base = |i: usize| -> Vec<&str> {
        c[i].split(' ')
            .filter(|w| !w.starts_with("base="))
            .collect()
    };
    match segments[..] {
        [first] => assert_eq!(first, segment),
        [first, resync] => {
            assert_eq!(first, segment);
            let second_frame =
                find_from(&c, frame + 1, |l| l.starts_with("frame ")).expect("a second frame");
            assert!(
                frame < resync && resync < second_frame,
                "a second segment other than the resync before the second frame: {c:?}"
            );
            assert_eq!(
                without_base(first),
                without_base(resync),
                "the resync segment moves only the base: {c:?}"
            );
        }
        _ => panic!("more than one resync segment: {c:?}"),
    }
    assert_eq!(frames(&c).len(), 10);
    assert_eq!(c.iter().filter(|l| *l == "event eos").count(), 1);
}

/// A gap (and a tag) between the producer's segment and its first frame: the consumer's
/// pipeline started 1 s earlier, so its running time is the producer's shifted by about 1 s.
/// The gap goes out after a segment shifted by that much, the one the frames then use, so
/// the gap is timed on the same timeline as the frames; before, it went out after a segment
/// shifted by 0 and the frames brought a second one.
#[test]
fn a_gap_before_the_first_frame_is_timed_like_the_frames() {
    init_gst();
    let dir = TempDir::new("gap");
    let sock = dir.socket();
    let mut consumer = Peer::spawn(&[
        "consume",
        "--events-log",
        "--frames-log",
        "--messages-log",
        &format!("fdlinksrc socket-path={sock} ! fakesink sync=true"),
    ]);
    // The consumer's pipeline takes its base time as it starts (a live source: it goes on to
    // PLAYING at once, posting it only after its first frame).
    consumer
        .wait_line(T, |l| l == "state Paused")
        .unwrap_or_else(|| panic!("the consumer did not start: {}", consumer.errors()));
    std::thread::sleep(Duration::from_secs(1));
    let mut producer = Peer::spawn(&[
        "produce",
        "--events-log",
        "--gap-first",
        "--seconds",
        "1",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! taginject tags=title=fdlink-gap ! fdlinksink socket-path={sock} wait-for-connection=true"
        ),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let (p, c) = (producer.lines(), consumer.lines());
    let sent = p
        .iter()
        .find_map(|l| l.strip_prefix("sent gap "))
        .unwrap_or_else(|| panic!("the producer sent no gap: {p:?}"));

    let first = |pred: &dyn Fn(&str) -> bool| {
        find_from(&c, 0, pred).unwrap_or_else(|| panic!("missing in {c:?}"))
    };
    let segment = first(&|l| l.starts_with("event segment "));
    let tag = first(&|l| l == "event tag");
    let gap = first(&|l| l.starts_with("event gap "));
    let frame = first(&|l| l.starts_with("frame "));
    assert!(
        segment < tag && tag < gap && gap < frame,
        "consumer events out of order: {c:?}"
    );
    assert_eq!(
        c[gap],
        format!("event gap {sent}"),
        "the gap crossed unchanged"
    );
    let segments = c.iter().filter(|l| l.starts_with("event segment ")).count();
    assert_eq!(
        segments, 1,
        "one segment, for the gap and the frames: {c:?}"
    );
    let base: i64 = number_field(&c[segment], "base");
    assert!(
        base >= 500_000_000,
        "the segment before the gap is shifted by the consumer's 1 s head start: {}",
        c[segment]
    );
}

/// An error in an independent consumer's pipeline shows up on the producer's bus as a
/// warning naming the consumer and the element that posted it; the producer keeps running
/// (a consumer's failure is that consumer's: tools/tests/consumer_errors.rs).
#[test]
fn consumer_errors_reach_the_producer_bus() {
    init_gst();
    let dir = TempDir::new("err");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--messages-log",
        "--seconds",
        "3",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240 ! fdlinksink socket-path={sock}"
        ),
    ]);
    wait_for_path(&sock, T);
    // The consumer cannot take NV12: its fdlinksrc posts a negotiation error.
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!(
            "fdlinksrc socket-path={sock} ack-timeout=500 ! video/x-raw,format=RGB ! fakesink"
        ),
    ]);
    assert_eq!(consumer.wait(T).code(), Some(1));
    producer.wait_success(T, "producer");
    let lines = producer.lines();
    let warning = lines
        .iter()
        .find(|l| l.starts_with("message warning") && l.contains("consumer 1 (pid"));
    assert!(
        warning.is_some_and(
            |w| w.contains("/GstPipeline:pipeline0/GstFdlinkSrc:fdlinksrc0")
                && (w.contains("not-negotiated") || w.contains("downstream does not accept"))
        ),
        "producer lines: {lines:?}"
    );
}

/// Caps the consumer's downstream refuses fail it at ack-timeout even when the producer sends
/// nothing after them (a paused producer: its caps and one preroll frame, then silence).
#[test]
fn refused_caps_fail_at_ack_timeout_without_more_packets() {
    init_gst();
    let dir = TempDir::new("refused");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--start-paused",
        &format!(
            "videotestsrc ! video/x-raw,format=NV12,width=320,height=240 ! fdlinksink socket-path={sock} forward-messages=false"
        ),
    ]);
    wait_for_path(&sock, T);
    let started = std::time::Instant::now();
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!(
            "fdlinksrc socket-path={sock} ack-timeout=500 ! video/x-raw,format=RGB ! fakesink"
        ),
    ]);
    assert_eq!(consumer.wait(T).code(), Some(1));
    let took = started.elapsed();
    let err = consumer.errors();
    assert!(
        err.contains("downstream does not accept the producer's caps")
            && err.contains("no other caps within")
            && err.contains("downstream accepts video/x-raw, format=(string)RGB"),
        "consumer stderr: {err}"
    );
    // The 500 ms wait, plus starting the process; not the 60 s the test allows.
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "failed after {took:?}"
    );
    assert!(
        producer.child.try_wait().unwrap().is_none(),
        "producer: {}",
        producer.errors()
    );
}

/// With forward-messages=false the producer carries on when a consumer fails.
#[test]
fn consumer_errors_can_be_kept_out() {
    init_gst();
    let dir = TempDir::new("noerr");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--seconds",
        "3",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240 ! fdlinksink socket-path={sock} forward-messages=false"
        ),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!(
            "fdlinksrc socket-path={sock} ack-timeout=500 ! video/x-raw,format=RGB ! fakesink"
        ),
    ]);
    assert_eq!(consumer.wait(T).code(), Some(1));
    producer.wait_success(T, "producer");
}
