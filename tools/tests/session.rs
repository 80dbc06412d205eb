//! The two pipelines as one session: caps negotiated across the link, latency and position
//! that follow the producer, states that follow the other side (mode=follow), and bus
//! messages both ways. Real producer and consumer processes.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

fn caps_events(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("event caps "))
        .map(str::to_string)
        .collect()
}

fn frame_sizes(lines: &[String]) -> Vec<u64> {
    frames(lines).iter().map(|f| f.size).collect()
}

/// Upstream of the producer's sink sees what the consumer can take: a consumer that joins with
/// a capsfilter the producer's caps do not pass makes the producer renegotiate, and a later
/// change of that capsfilter (a reconfigure) makes it renegotiate again.
#[test]
fn consumer_caps_drive_the_producers_negotiation() {
    init_gst();
    let dir = TempDir::new("reneg");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--seconds",
        "4",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,framerate=30/1 ! fdlinksink socket-path={sock}"
        ),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--events-log",
        "--frames-log",
        "--caps-after",
        "20",
        "video/x-raw,width=640,height=480",
        &format!(
            "fdlinksrc socket-path={sock} ! capsfilter name=cf caps=video/x-raw,width=400,height=300 ! fakesink"
        ),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let c = consumer.lines();
    let caps = caps_events(&c);
    // The producer started at videotestsrc's 320x240; those caps never went downstream.
    assert!(
        caps.iter().all(|c| !c.contains("width=(int)320")),
        "{caps:?}"
    );
    assert!(caps[0].contains("width=(int)400") && caps[0].contains("height=(int)300"));
    assert!(
        caps.iter()
            .any(|c| c.contains("width=(int)640") && c.contains("height=(int)480")),
        "no renegotiation after the capsfilter change: {caps:?}"
    );
    // Frames follow: NV12 400x300 first, 640x480 after the change.
    let sizes = frame_sizes(&c);
    assert_eq!(sizes[0], 400 * 300 * 3 / 2);
    let set = c.iter().position(|l| l.starts_with("caps-set")).unwrap();
    assert!(
        frame_sizes(&c[set..]).contains(&(640 * 480 * 3 / 2)),
        "{sizes:?}"
    );
}

/// Latency asked on the consumer is the producer pipeline's plus the link's; position asked
/// on the consumer is the producer's stream position (not the consumer's own running time,
/// although the consumer started 1.5 s later).
#[test]
fn latency_and_position_follow_the_producer() {
    init_gst();
    let dir = TempDir::new("latpos");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--query-every",
        "15",
        "--seconds",
        "4",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock}"
        ),
    ]);
    wait_for_path(&sock, T);
    std::thread::sleep(Duration::from_millis(1500));
    let link_latency = 5_000_000;
    let mut consumer = Peer::spawn(&[
        "consume",
        "--query-every",
        "15",
        &format!("fdlinksrc socket-path={sock} link-latency={link_latency} ! fakesink sync=true"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let p = queries(&producer.lines());
    let c = queries(&consumer.lines());
    assert!(p.len() >= 4 && c.len() >= 2, "{p:?} {c:?}");
    let p_latency = p.last().unwrap().min_latency;
    // videotestsrc at 30 fps reports one frame of latency.
    assert!(p_latency >= 33_000_000, "{p:?}");
    for q in &c {
        assert!(q.live, "{q:?}");
        assert!(
            q.min_latency >= p_latency + link_latency,
            "{q:?} vs {p_latency}"
        );
    }
    // Position: interpolate the producer's position at the time the consumer asked.
    for q in &c {
        let before = p
            .iter()
            .rev()
            .find(|x| x.at <= q.at)
            .expect("an earlier producer query");
        let expected = before.position + (q.at - before.at);
        let diff = (q.position - expected).abs();
        assert!(
            diff < 300_000_000,
            "consumer position {} vs producer's {expected} ({diff} ns apart)",
            q.position
        );
        assert!(q.position > 1_400_000_000, "{q:?}: the consumer's own time");
    }
}

/// `(base, start)` of the first `event segment` line.
fn first_segment(lines: &[String]) -> (i64, i64) {
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix("event segment "))
        .unwrap_or_else(|| panic!("no segment in {lines:?}"));
    (number_field(line, "base"), number_field(line, "start"))
}

/// `seqnum -> timestamp` of each `upstream qos` line.
fn qos_timestamps(lines: &[String]) -> std::collections::HashMap<u32, i64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("upstream qos "))
        .map(|l| (number_field(l, "seqnum"), number_field(l, "timestamp")))
        .collect()
}

/// QoS from a consumer's sink reaches the producer's pipeline in the producer's running time:
/// the consumer joined 1 s late, so its running time is the producer's shifted, and each QoS
/// event that crosses names, on the producer, the running time of a frame the producer sent.
#[test]
fn qos_reaches_the_producer_in_its_running_time() {
    init_gst();
    let dir = TempDir::new("qos");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--events-log",
        "--frames-log",
        "--seconds",
        "3",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock}"
        ),
    ]);
    wait_for_path(&sock, T);
    std::thread::sleep(Duration::from_millis(1000));
    let mut consumer = Peer::spawn(&[
        "consume",
        "--events-log",
        "--seconds",
        "1",
        &format!("fdlinksrc socket-path={sock} ! fakesink sync=true qos=true"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let (p, c) = (producer.lines(), consumer.lines());
    let (p_qos, c_qos) = (qos_timestamps(&p), qos_timestamps(&c));
    let (p_base, p_start) = first_segment(&p);
    let (c_base, c_start) = first_segment(&c);
    // Running time = pts - start + base on each side; the consumer's is the producer's + shift.
    let shift = (c_base - p_base) - (c_start - p_start);
    assert!(
        shift.abs() > 500_000_000,
        "the consumer joined 1 s late, yet its running time is shifted by {shift} ns"
    );
    let p_running: std::collections::HashSet<i64> = pts_of(&p)
        .iter()
        .map(|pts| pts - p_start + p_base)
        .collect();
    let crossed: Vec<(i64, i64)> = c_qos
        .iter()
        .filter_map(|(seqnum, c_ts)| Some((*c_ts, *p_qos.get(seqnum)?)))
        .collect();
    println!(
        "{} QoS events on the consumer, {} reached the producer; shift {shift} ns",
        c_qos.len(),
        crossed.len()
    );
    assert!(crossed.len() >= 10, "{crossed:?}");
    for (c_ts, p_ts) in crossed {
        assert_eq!(c_ts - p_ts, shift, "consumer {c_ts}, producer {p_ts}");
        assert!(
            p_running.contains(&p_ts),
            "QoS timestamp {p_ts} is no producer frame's running time"
        );
    }
}

/// The index of the `state Playing` line after a `state Playing`, `state Paused` run: the
/// pipeline played, followed a pause and followed the play again.
fn played_paused_played(lines: &[String]) -> usize {
    let playing = find_from(lines, 0, |l| l == "state Playing").expect("playing");
    let paused = find_from(lines, playing, |l| l == "state Paused").expect("followed the pause");
    find_from(lines, paused, |l| l == "state Playing").expect("followed the play")
}

#[test]
fn consumer_follows_the_producers_state() {
    init_gst();
    let dir = TempDir::new("follow");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--pause-after",
        "30",
        "--pause-ms",
        "1000",
        "--seconds",
        "4",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock}"
        ),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--messages-log",
        "--frames-log",
        &format!("fdlinksrc socket-path={sock} mode=follow ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let c = consumer.lines();
    let again = played_paused_played(&c);
    assert!(
        frames(&c[again..]).len() >= 10,
        "frames after resuming: {:?}",
        &c[again..]
    );
}

/// The CLOCK_MONOTONIC times of the `PREFIX at T` lines.
fn times_of(lines: &[String], prefix: &str) -> Vec<i64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|t| t.strip_prefix(" at "))
        .map(|t| t.parse().unwrap())
        .collect()
}

/// fdlinksrc mode=follow behind a file playback (filesrc ! qtdemux ! h264parse | avdec_h264):
/// the consumer, which its application only sets to PAUSED, prerolls with the producer (the
/// producer's preroll completes only once the consumer's has, which is held 300 ms), pauses
/// and plays with it, and a flushing seek made on the producer's side flushes the consumer
/// and prerolls both again at the new position.
#[test]
fn follower_prerolls_pauses_and_seeks_with_the_producer() {
    init_gst();
    let dir = TempDir::new("followseek");
    let sock = dir.socket();
    let file = clip(&dir);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--start-paused",
        "--messages-log",
        "--events-log",
        "--frames-log",
        "--preroll-delay-ms",
        "300",
        &format!(
            "fdlinksrc socket-path={sock} mode=follow ! h264parse ! avdec_h264 ! fakesink sync=true"
        ),
    ]);
    let mut producer = Peer::spawn(&[
        "produce",
        "--messages-log",
        "--pause-after",
        "30",
        "--pause-ms",
        "1000",
        "--seek-after",
        "90",
        "--seek-to",
        "6",
        &format!(
            "filesrc location={file} ! qtdemux ! h264parse ! fdlinksink socket-path={sock} wait-for-connection=true"
        ),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let (p, c) = (producer.lines(), consumer.lines());
    let (p_done, c_done) = (times_of(&p, "async-done"), times_of(&c, "async-done"));
    let c_held = times_of(&c, "preroll-delay");
    // Prerolls: the first one, the pause, the seek.
    assert_eq!(p_done.len(), 3, "producer: {p:?}");
    assert_eq!(c_done.len(), 3, "consumer: {c:?}");
    assert_eq!(
        c_held.len(),
        2,
        "held the first preroll and the one after the flush"
    );
    let ms = |ns: i64| ns as f64 / 1e6;
    // The producer prerolled after the consumer did, and so at least 300 ms after the
    // consumer started holding its first frame (without waiting, it prerolls at once).
    for (i, (p_at, held_at)) in [(p_done[0], c_held[0]), (p_done[2], c_held[1])]
        .into_iter()
        .enumerate()
    {
        assert!(
            p_at - held_at >= 300_000_000,
            "preroll {i}: producer prerolled {} ms after the consumer's preroll was held",
            ms(p_at - held_at)
        );
    }
    // The async-done times are taken in each bus's sync handler, on the consumer before its
    // fdlinksrc reports the preroll: a producer that waited for that report is later.
    // What each side said about its states, QoS and warnings, for a failure to be read.
    let timeline = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| {
                ["state ", "async-done", "preroll-delay", "message "]
                    .iter()
                    .any(|w| l.starts_with(w))
            })
            .cloned()
            .collect()
    };
    for (i, (p_at, c_at)) in p_done.iter().zip(&c_done).enumerate() {
        assert!(
            p_at > c_at,
            "preroll {i}: producer {} ms before the consumer\nproducer: {:#?}\nconsumer: {:#?}",
            ms(c_at - p_at),
            timeline(&p),
            timeline(&c)
        );
    }
    // The consumer's pipeline went PAUSED (prerolled), PLAYING, PAUSED with the producer's
    // pause, PLAYING again.
    let states: Vec<&str> = c
        .iter()
        .filter(|l| l.starts_with("state "))
        .map(String::as_str)
        .collect();
    let expected = [
        "state Paused",
        "state Playing",
        "state Paused",
        "state Playing",
    ];
    assert!(
        states.windows(4).any(|w| w == expected),
        "consumer states: {states:?}"
    );
    // The seek: flush-start, flush-stop and a new segment reached the consumer, and the
    // frames after the flush start at the 6 s keyframe.
    let flush = find_from(&c, 0, |l| l == "event flush-start").expect("flush-start");
    let stop = find_from(&c, flush, |l| l == "event flush-stop").expect("flush-stop");
    find_from(&c, stop, |l| l.starts_with("event segment ")).expect("a segment after the flush");
    let after = pts_of(&c[stop..]);
    assert!(
        after.first().is_some_and(|&pts| pts >= 5_900_000_000),
        "frames after the flush: {:?}",
        &after[..after.len().min(5)]
    );
    assert!(c.iter().any(|l| l == "eos"), "consumer: {c:?}");
}

/// fdlinksink mode=follow: the producer pipeline pauses and plays with its consumer's.
#[test]
fn producer_follows_the_consumers_state() {
    init_gst();
    let dir = TempDir::new("pfollow");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--messages-log",
        "--seconds",
        "5",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock} mode=follow"
        ),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--pause-after",
        "20",
        "--pause-ms",
        "1000",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let p = producer.lines();
    played_paused_played(&p);
}

/// Both ends following each other is refused with an error naming the cause.
#[test]
fn both_ends_following_is_an_error() {
    init_gst();
    let dir = TempDir::new("bothfollow");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--seconds",
        "3",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240 ! fdlinksink socket-path={sock} mode=follow forward-messages=false"
        ),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!("fdlinksrc socket-path={sock} mode=follow forward-messages=false ! fakesink"),
    ]);
    assert_eq!(consumer.wait(T).code(), Some(1));
    assert!(
        consumer.errors().contains("each would follow the other"),
        "{}",
        consumer.errors()
    );
    let _ = producer.wait(T);
}

/// Messages cross both ways, naming where they come from, and never bounce back.
#[test]
fn messages_cross_both_ways() {
    init_gst();
    let dir = TempDir::new("msgs");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--messages-log",
        "--post-after",
        "40",
        "--seconds",
        "3",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock}"
        ),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--messages-log",
        "--post-after",
        "20",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let p = producer.lines();
    let c = consumer.lines();
    let from_link = |lines: &[String], element: &str, what: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains(element) && l.contains(what))
            .cloned()
            .collect()
    };
    // Consumer -> producer: an element message and a buffering message, posted by fdlinksink.
    let el = from_link(&p, "GstFdlinkSink:fdlinksink0 fdlink-test", "n=(int)20");
    assert_eq!(el.len(), 1, "{p:?}");
    assert!(
        el[0].replace('\\', "").contains("consumer 1 (pid"),
        "{el:?}"
    );
    let buffering = from_link(
        &p,
        "message Buffering /GstPipeline:pipeline0/GstFdlinkSink",
        "50",
    );
    assert_eq!(buffering.len(), 1, "{p:?}");
    // Producer -> consumer: the element message, posted by fdlinksrc, naming the producer.
    let el = from_link(&c, "GstFdlinkSrc:fdlinksrc0 fdlink-test", "n=(int)40");
    assert_eq!(el.len(), 1, "{c:?}");
    assert!(el[0].replace('\\', "").contains("producer (pid"), "{el:?}");
    // Nothing came back to where it started.
    assert!(from_link(&c, "GstFdlinkSrc:fdlinksrc0", "n=(int)20").is_empty());
    assert!(from_link(&p, "GstFdlinkSink:fdlinksink0", "n=(int)40").is_empty());
}
