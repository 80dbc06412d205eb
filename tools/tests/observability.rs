//! Seeing what the link does: `stats-interval` messages on both buses, the `fdlink-copies`
//! message when frames are copied for a slow consumer, and fdlink-peer's one-line summaries.
//! Real processes, real sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(60);

/// The `--messages-log` lines of element messages named `name` from an element whose path
/// contains `from`, their structures parsed.
fn messages(peer: &Peer, name: &str, from: &str) -> Vec<gst::Structure> {
    peer.lines()
        .iter()
        .filter_map(|l| l.strip_prefix("message Element "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(src, s)| src.contains(from) && s.starts_with(&format!("{name},")))
        .filter_map(|(_, s)| s.parse().ok())
        .collect()
}

/// A live 320x240 NV12 producer at 30 fps (`frames` frames, waiting for its consumer) with
/// `sink_props`; its pipeline text.
fn live_producer(sock: &str, frames: u32, sink_props: &str) -> String {
    format!(
        "videotestsrc is-live=true num-buffers={frames} pattern=ball ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock} wait-for-connection=true {sink_props}"
    )
}

/// stats-interval=200 on both elements: each posts its stats as an `fdlink-stats` message
/// every 200 ms while it runs (as many as its run time allows), on its own bus only, with the
/// counts growing; the last carries the whole stream.
#[test]
fn stats_interval_posts_the_stats_every_interval_on_each_bus() {
    init_gst();
    let dir = TempDir::new("stats-interval");
    let sock = dir.socket();
    let started = Instant::now();
    let mut producer = Peer::spawn(&[
        "produce",
        "--messages-log",
        &live_producer(&sock, 60, "stats-interval=200"),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--messages-log",
        &format!("fdlinksrc socket-path={sock} stats-interval=200 ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    let producer_ran = started.elapsed();
    consumer.wait_success(T, "consumer");
    let ticks_in = |d: Duration| d.as_millis() as usize / 200;

    let sink_stats = messages(&producer, "fdlink-stats", "fdlinksink");
    let src_stats = messages(&consumer, "fdlink-stats", "fdlinksrc");
    println!(
        "producer ran {producer_ran:?}: {} messages; consumer: {}",
        sink_stats.len(),
        src_stats.len()
    );
    // The producer ran from its start to its EOS (60 frames at 30 fps once the consumer
    // came): one message per 200 ms of it, give or take the start and a loaded machine.
    let expected = ticks_in(producer_ran);
    assert!(
        sink_stats.len() + 3 >= expected && sink_stats.len() <= expected + 1,
        "{} producer messages in {producer_ran:?} at 200 ms",
        sink_stats.len()
    );
    // The consumer ran at least the 2 s of the stream.
    assert!(
        src_stats.len() >= ticks_in(Duration::from_secs(2)) - 2,
        "{} consumer messages in at least 2 s at 200 ms",
        src_stats.len()
    );
    let sent: Vec<u64> = sink_stats.iter().map(|s| field(s, "frames-sent")).collect();
    assert!(sent.windows(2).all(|w| w[0] <= w[1]), "growing: {sent:?}");
    assert!(
        *sent.last().unwrap() >= 50,
        "the last ones count the stream: {sent:?}"
    );
    let received: Vec<u64> = src_stats
        .iter()
        .map(|s| field(s, "frames-received"))
        .collect();
    assert!(received.windows(2).all(|w| w[0] <= w[1]), "{received:?}");
    assert!(*received.last().unwrap() >= 50, "{received:?}");
    assert!(
        src_stats[src_stats.len() / 2].has_field("latency-p50-us"),
        "the consumer's own stats"
    );
    // Each pipeline's own: neither crosses to the other (forward-messages is on).
    assert!(messages(&consumer, "fdlink-stats", "fdlinksink").is_empty());
    assert!(messages(&producer, "fdlink-stats", "fdlinksrc").is_empty());
}

/// Without stats-interval, no `fdlink-stats` message.
#[test]
fn no_stats_messages_by_default() {
    init_gst();
    let dir = TempDir::new("stats-off");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&["produce", "--messages-log", &live_producer(&sock, 15, "")]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--messages-log",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    assert!(messages(&producer, "fdlink-stats", "").is_empty());
    assert!(messages(&consumer, "fdlink-stats", "").is_empty());
}

/// A consumer whose downstream takes 100 ms a frame (and a fakesink that keeps its last
/// sample) holds its producer's buffers: the producer (`max-held=2 slow-policy=copy`) sends
/// it copies, and the consumer copies frames out of the buffers downstream would pin. Each
/// side says so with `fdlink-copies` messages, at most one a second, counting the copies.
#[test]
fn copies_for_a_slow_consumer_are_announced_on_both_sides() {
    init_gst();
    let dir = TempDir::new("copies");
    let sock = dir.socket();
    let started = Instant::now();
    let mut producer = Peer::spawn(&[
        "produce",
        "--messages-log",
        &live_producer(&sock, 75, "max-held=2 slow-policy=copy"),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--messages-log",
        "--slow-ms",
        "100",
        "--stats-every",
        "100",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    let producer_ran = started.elapsed();
    consumer.wait_success(T, "consumer");
    let consumer_ran = started.elapsed();

    let ps = producer.latest_stats().expect("producer stats");
    let slow_copies = field(&ps, "slow-copies");
    assert!(slow_copies > 0, "the setup makes slow-policy copies: {ps}");
    let notices = messages(&producer, "fdlink-copies", "fdlinksink");
    println!(
        "producer: {slow_copies} slow copies, {} messages in {producer_ran:?}",
        notices.len()
    );
    assert!(!notices.is_empty(), "the producer's copies are announced");
    assert!(
        notices.len() as u64 <= producer_ran.as_secs() + 1,
        "at most one a second: {} in {producer_ran:?}",
        notices.len()
    );
    let totals: Vec<u64> = notices.iter().map(|s| field(s, "total")).collect();
    assert!(totals.windows(2).all(|w| w[0] < w[1]), "{totals:?}");
    assert!(*totals.last().unwrap() <= slow_copies);
    let counted: u64 = notices.iter().map(|s| field(s, "copies")).sum();
    assert_eq!(counted, *totals.last().unwrap(), "each copy counted once");
    assert!(
        notices[0]
            .get::<String>("reason")
            .unwrap()
            .contains("slow-policy=copy"),
        "{}",
        notices[0]
    );

    let cs = consumer.latest_stats().expect("consumer stats");
    let copied = field(&cs, "frames-copied");
    assert!(
        copied > 0,
        "downstream holds a frame: the consumer copies: {cs}"
    );
    let notices = messages(&consumer, "fdlink-copies", "fdlinksrc");
    assert!(!notices.is_empty(), "the consumer's copies are announced");
    assert!(
        notices.len() as u64 <= consumer_ran.as_secs() + 1,
        "at most one a second: {} in {consumer_ran:?}",
        notices.len()
    );
    assert!(field(notices.last().unwrap(), "total") <= copied);
}

/// `--summary` follows each `stats` line with a line for people: the frame rate since the
/// previous one (a live 30 fps stream: about 30), the zero-copy share and, on the consumer,
/// the link's latency.
#[test]
fn summary_lines_say_fps_zero_copy_and_latency() {
    init_gst();
    let dir = TempDir::new("summary");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--stats-every",
        "500",
        "--summary",
        &live_producer(&sock, 90, ""),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--stats-every",
        "500",
        "--summary",
        &format!("fdlinksrc socket-path={sock} ! queue ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let fps = |line: &str| -> f64 {
        line.split(": ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let lines = |peer: &Peer, prefix: &str| -> Vec<String> {
        peer.lines()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .collect()
    };
    let p = lines(&producer, "fdlink producer: ");
    let c = lines(&consumer, "fdlink consumer: ");
    println!("{}\n{}", p.join("\n"), c.join("\n"));
    let stats_lines = consumer
        .lines()
        .iter()
        .filter(|l| l.starts_with("stats "))
        .count();
    assert_eq!(c.len(), stats_lines, "one summary per stats line");
    // In the middle of the 3 s stream, a rate near 30 fps.
    for (who, l) in [("producer", &p), ("consumer", &c)] {
        assert!(l.len() >= 5, "{who}: {l:?}");
        let mid = fps(&l[l.len() / 2]);
        assert!((20.0..=40.0).contains(&mid), "{who}: {}", l[l.len() / 2]);
    }
    let last = p.last().unwrap();
    assert!(last.contains("zero-copy 100%"), "{last}");
    let last = c.last().unwrap();
    assert!(
        last.contains("zero-copy 100%")
            && last.contains("latency p50 ")
            && !last.contains("p50 0 µs"),
        "{last}"
    );
}
