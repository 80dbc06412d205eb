//! A flushing seek after EOS, as a looping player does it (on the EOS message, a flushing seek
//! to 0), plays the stream again through the link, round after round, whichever side seeks.
//! Real producer and consumer processes; the stream is a 1 s H.264 clip (30 frames) that
//! `filesrc ! qtdemux` plays again from the start at each seek.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);
const FRAMES_PER_ROUND: usize = 30;

/// A 1 s H.264 clip in MP4: 30 frames at 30 fps.
fn short_clip(dir: &TempDir) -> String {
    let path = dir.0.join("short.mp4");
    let status = std::process::Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "num-buffers=30", "pattern=ball", "!"])
        .args(["video/x-raw,width=320,height=240,framerate=30/1", "!"])
        .args(["x264enc", "key-int-max=15", "!", "h264parse", "!"])
        .args(["mp4mux", "!", "filesink"])
        .arg(format!("location={}", path.display()))
        .status()
        .expect("gst-launch-1.0 runs");
    assert!(status.success(), "cannot make the test clip");
    path.to_str().unwrap().to_string()
}

fn producer_pipeline(file: &str, sock: &str) -> String {
    format!(
        "filesrc location={file} ! qtdemux ! h264parse ! fdlinksink socket-path={sock} wait-for-connection=true"
    )
}

/// A consumer that decodes the stream. `player`: a queue, and a sink that shows each frame
/// at its time. Otherwise the sink takes each frame at once, and no queue lies between it and
/// fdlinksrc.
///
/// The producer's application seeks as soon as its own sink has the EOS, so the flush follows
/// the end of a round within a frame's time. A player is further behind (its decoder's
/// latency): that flush catches the end of the round still on its way and flushes it away,
/// as a flush in one process flushes what is on its way to the sink, the EOS too if it is
/// still in the queue (the sink then posts no EOS message for that round). The other consumer
/// keeps up: every frame of every round leaves fdlinksrc before the flush comes, and
/// fdlinksrc's thread pushes each EOS right into the sink, which posts its message at once.
fn consumer_pipeline(sock: &str, player: bool) -> String {
    let (queue, sync) = if player {
        ("queue !", "true")
    } else {
        ("", "false")
    };
    format!("fdlinksrc socket-path={sock} ! {queue} h264parse ! avdec_h264 ! fakesink sync={sync}")
}

/// The consumer's `frame` lines and its `event` lines but caps and tags, cut at each
/// flush-start: the first round, then one per seek, each from its flush-start on.
fn rounds(lines: &[String]) -> Vec<Vec<&str>> {
    let mut rounds: Vec<Vec<&str>> = vec![Vec::new()];
    let wanted = |l: &str| {
        l.starts_with("frame ")
            || (l.starts_with("event ")
                && !l.starts_with("event tag")
                && !l.starts_with("event caps"))
    };
    for l in lines.iter().filter(|l| wanted(l)) {
        if l == "event flush-start" {
            rounds.push(Vec::new());
        }
        rounds.last_mut().unwrap().push(l);
    }
    rounds
}

/// The PTS of each frame line in `round`.
fn round_pts(round: &[&str]) -> Vec<i64> {
    round
        .iter()
        .filter(|l| l.starts_with("frame "))
        .map(|l| number_field(l, "pts"))
        .collect()
}

/// Checks that every round after the first is flush-start, flush-stop, a segment, the 30
/// frames of the first round (same PTS), then EOS; and that the first is a segment, its
/// frames, EOS.
fn assert_rounds(c: &[String], seeks: usize) {
    let rounds = rounds(c);
    assert_eq!(
        rounds.len(),
        seeks + 1,
        "rounds (cut at flush-start): {c:?}"
    );
    let first_pts = round_pts(&rounds[0]);
    assert_eq!(
        first_pts.len(),
        FRAMES_PER_ROUND,
        "first round: {:?}",
        rounds[0]
    );
    for (n, round) in rounds.iter().enumerate() {
        let pos = |pred: &dyn Fn(&str) -> bool| round.iter().position(|l| pred(l));
        let segment = pos(&|l| l.starts_with("event segment ")).expect("a segment");
        let first_frame = pos(&|l| l.starts_with("frame ")).expect("a frame");
        let last_frame = round.iter().rposition(|l| l.starts_with("frame ")).unwrap();
        let eos: Vec<usize> = (0..round.len())
            .filter(|&i| round[i] == "event eos")
            .collect();
        assert_eq!(
            eos,
            vec![round.len() - 1],
            "round {n}: one EOS, last: {round:?}"
        );
        assert!(
            segment < first_frame && last_frame < eos[0],
            "round {n} out of order: {round:?}"
        );
        if n > 0 {
            assert_eq!(
                round[..2],
                ["event flush-start", "event flush-stop"],
                "round {n} starts with the flush: {round:?}"
            );
            assert!(2 <= segment, "round {n}: the segment after the flush");
            assert_eq!(
                round_pts(round),
                first_pts,
                "round {n} plays the same 30 frames again"
            );
        }
    }
    let count = |want: &str| c.iter().filter(|l| *l == want).count();
    assert_eq!(count("event flush-start"), seeks);
    assert_eq!(count("event flush-stop"), seeks);
    assert_eq!(count("event eos"), seeks + 1);
    assert_eq!(frames(c).len(), FRAMES_PER_ROUND * (seeks + 1));
}

/// The producer's final `frames-sent` and `frames-dropped`.
fn producer_sent_dropped(producer: &Peer) -> (u64, u64) {
    let stats = producer.latest_stats().expect("producer stats");
    (
        field(&stats, "frames-sent"),
        field(&stats, "frames-dropped"),
    )
}

/// The producer application loops: on each EOS message, a flushing seek to 0, five times.
/// The consumer, which does not quit at the first EOS, gets each round whole: flush-start,
/// flush-stop, a segment, the 30 frames, EOS. Before, its source stopped at the first EOS,
/// the producer's packets piled up unread and the producer dropped the frames of later
/// rounds.
#[test]
fn a_producer_seeking_after_eos_reaches_the_consumer_every_round() {
    init_gst();
    let dir = TempDir::new("loop-producer");
    let sock = dir.socket();
    let file = short_clip(&dir);
    let seeks = 5;
    let mut producer = Peer::spawn(&[
        "produce",
        "--loop",
        &seeks.to_string(),
        "--stats-every",
        "500",
        &producer_pipeline(&file, &sock),
    ]);
    // It ends at the EOS message of the last round: each round's must come, and its frames
    // are all counted (see consumer_pipeline).
    let mut consumer = Peer::spawn(&[
        "consume",
        "--eos-count",
        &(seeks + 1).to_string(),
        "--events-log",
        "--frames-log",
        &consumer_pipeline(&sock, false),
    ]);
    consumer.wait_success(T, "consumer");
    producer.wait_success(T, "producer");
    let (c, p) = (consumer.lines(), producer.lines());
    assert_eq!(
        p.iter().filter(|l| l.starts_with("loop ")).count(),
        seeks,
        "producer: {p:?}"
    );
    assert_rounds(&c, seeks);
    let (sent, dropped) = producer_sent_dropped(&producer);
    assert_eq!(dropped, 0, "producer: {p:?}");
    assert_eq!(sent as usize, FRAMES_PER_ROUND * (seeks + 1));
}

/// The consumer application loops (the player in the split-player case): its seek after EOS
/// goes to the producer, whose flush and frames come back, round after round.
#[test]
fn a_consumer_seeking_after_eos_plays_again_every_round() {
    init_gst();
    let dir = TempDir::new("loop-consumer");
    let sock = dir.socket();
    let file = short_clip(&dir);
    let seeks = 3;
    // The producer application does not end at EOS: the consumer's seeks drive it.
    let producer = Peer::spawn(&[
        "produce",
        "--eos-count",
        "1000",
        "--stats-every",
        "200",
        &producer_pipeline(&file, &sock),
    ]);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--loop",
        &seeks.to_string(),
        "--events-log",
        "--frames-log",
        &consumer_pipeline(&sock, true),
    ]);
    consumer.wait_success(T, "consumer");
    let c = consumer.lines();
    assert_rounds(&c, seeks);
    let stats = producer
        .wait_stats(T, |s| {
            field(s, "frames-sent") as usize >= FRAMES_PER_ROUND * (seeks + 1)
        })
        .unwrap_or_else(|| panic!("producer: {:?}", producer.lines()));
    assert_eq!(field(&stats, "frames-dropped"), 0, "{stats}");
}

/// The real end: a producer that goes away after its EOS ends the stream with that one EOS,
/// whether it stops or is killed (which may reset the connection). A consumer that stays up
/// after it sees exactly one EOS, and no error.
fn assert_one_eos_when_the_producer_goes(kill: bool) {
    init_gst();
    let dir = TempDir::new("gone-after-eos");
    let sock = dir.socket();
    let file = short_clip(&dir);
    let pipeline = producer_pipeline(&file, &sock);
    let mut producer = if kill {
        Peer::spawn(&["produce", "--eos-count", "2", &pipeline])
    } else {
        Peer::spawn(&["produce", &pipeline])
    };
    // Killing: the consumer shows its frames 500 ms late, still holding the last ones when
    // the producer has its EOS.
    let consumer_pipeline = if kill {
        format!("fdlinksrc socket-path={sock} link-latency=500000000 ! queue ! fakesink sync=true")
    } else {
        consumer_pipeline(&sock, true)
    };
    let mut consumer = Peer::spawn(&[
        "consume",
        "--eos-count",
        "2",
        "--events-log",
        "--frames-log",
        &consumer_pipeline,
    ]);
    if kill {
        // Stopped before the consumer's last releases come, which then wait unread: killed,
        // the producer leaves the consumer a reset (ECONNRESET) before the end.
        producer
            .wait_line(T, |l| l == "eos")
            .expect("the producer's EOS");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(producer.pid()),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
        consumer
            .wait_line(T, |l| l == "eos")
            .expect("the consumer's EOS");
        std::thread::sleep(Duration::from_millis(100));
        producer.kill9();
    } else {
        producer.wait_success(T, "producer");
    }
    // The consumer has the close by now; give an error or a second EOS time to show.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        consumer.child.try_wait().unwrap().is_none(),
        "the consumer ended: {}",
        consumer.errors()
    );
    let c = consumer.lines();
    assert_eq!(c.iter().filter(|l| *l == "event eos").count(), 1, "{c:?}");
    assert_eq!(c.iter().filter(|l| *l == "eos").count(), 1, "{c:?}");
    assert_eq!(frames(&c).len(), FRAMES_PER_ROUND);
    assert!(
        !consumer.errors().contains("error"),
        "consumer: {}",
        consumer.errors()
    );
    consumer.kill9();
}

#[test]
fn a_producer_stopping_after_eos_ends_with_one_eos() {
    assert_one_eos_when_the_producer_goes(false);
}

#[test]
fn a_producer_killed_after_eos_ends_with_one_eos() {
    assert_one_eos_when_the_producer_goes(true);
}
