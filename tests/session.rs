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

/// The index of the first line at or after `from` that satisfies `pred`.
fn find_from(lines: &[String], from: usize, pred: impl Fn(&str) -> bool) -> Option<usize> {
    lines[from..].iter().position(|l| pred(l)).map(|i| i + from)
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
    assert!(producer.wait(T).success(), "{}", producer.errors());
    assert!(consumer.wait(T).success(), "{}", consumer.errors());
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
    assert!(producer.wait(T).success(), "{}", producer.errors());
    assert!(consumer.wait(T).success(), "{}", consumer.errors());
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

/// fdlinksrc mode=follow: the consumer pipeline pauses and plays with the producer's.
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
    assert!(producer.wait(T).success(), "{}", producer.errors());
    assert!(consumer.wait(T).success(), "{}", consumer.errors());
    let c = consumer.lines();
    let playing = find_from(&c, 0, |l| l == "state Playing").expect("playing");
    let paused = find_from(&c, playing, |l| l == "state Paused").expect("followed the pause");
    let again = find_from(&c, paused, |l| l == "state Playing").expect("followed the play");
    assert!(
        frames(&c[again..]).len() >= 10,
        "frames after resuming: {:?}",
        &c[again..]
    );
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
    assert!(producer.wait(T).success(), "{}", producer.errors());
    assert!(consumer.wait(T).success(), "{}", consumer.errors());
    let p = producer.lines();
    let playing = find_from(&p, 0, |l| l == "state Playing").expect("playing");
    let paused = find_from(&p, playing, |l| l == "state Paused").expect("followed the pause");
    find_from(&p, paused, |l| l == "state Playing").expect("followed the play");
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
    assert!(producer.wait(T).success(), "{}", producer.errors());
    assert!(consumer.wait(T).success(), "{}", consumer.errors());
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
