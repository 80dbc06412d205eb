//! A buffer's running time on the consumer is its running time on the producer plus one
//! constant, the difference of the two pipelines' base times on CLOCK_MONOTONIC, so both have
//! it due at the same instant: through concat's playlist jumps (each branch a new segment
//! whose base carries the running time on) and through a flushing seek issued on the
//! consumer (which re-bases the producer's pipeline: the constant is the new difference of
//! base times after it, and again one value).
//!
//! Both processes print `running-time` lines (`fdlink-peer --running-time-log`) at their
//! fdlink element. Buffers a producer sends while it prerolls (its first, and its first after
//! a flush) have no base time yet, so a consumer shows them as they arrive: they are left
//! out of the comparison, and the lines say which they are (`playing=0`).

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

/// Past the consumer's resync threshold (1 ms): a shift that moved would show by more.
const TOLERANCE_NS: i64 = 1_500_000;

const CAPS: &str = "video/x-raw,format=I420,width=64,height=48,framerate=30/1";

#[derive(Debug, Clone, Copy)]
struct Rt {
    pts: i64,
    rt: i64,
    base_mono: i64,
    playing: bool,
    /// How many flush-stop events the pad saw before this buffer.
    epoch: usize,
}

fn running_times(lines: &[String]) -> Vec<Rt> {
    let mut epoch = 0;
    let mut out = Vec::new();
    for l in lines {
        if l == "event flush-stop" {
            epoch += 1;
        } else if l.starts_with("running-time ") {
            out.push(Rt {
                pts: number_field(l, "pts"),
                rt: number_field(l, "rt"),
                base_mono: number_field(l, "base-mono"),
                playing: number_field::<u8>(l, "playing") == 1,
                epoch,
            });
        }
    }
    out
}

/// The producer's buffer for each of the consumer's: the one with its PTS in its epoch (the
/// flushes the consumer saw are the producer's), the nth such for the consumer's nth (concat's
/// branches repeat PTS).
fn pairs(producer: &[Rt], consumer: &[Rt]) -> Vec<(Rt, Rt)> {
    consumer
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let same = |r: &&Rt| r.pts == c.pts && r.epoch == c.epoch;
            let nth = consumer[..i].iter().filter(same).count();
            let p = producer
                .iter()
                .filter(same)
                .nth(nth)
                .unwrap_or_else(|| panic!("consumer buffer {c:?} not among the producer's"));
            (*p, *c)
        })
        .collect()
}

/// For every pair both sides sent and showed PLAYING: consumer running time − producer
/// running time is the difference of their base times, and one value per epoch. Returns that
/// value per epoch, with how many buffers it held for.
fn assert_one_constant(pairs: &[(Rt, Rt)]) -> Vec<(i64, usize)> {
    let mut per_epoch: Vec<(i64, usize)> = Vec::new();
    for (p, c) in pairs.iter().filter(|(p, c)| p.playing && c.playing) {
        let d = c.rt - p.rt;
        let bases = p.base_mono - c.base_mono;
        assert!(
            (d - bases).abs() <= TOLERANCE_NS,
            "pts {}: consumer running time {} − producer's {} = {d}, but the base times \
             differ by {bases}",
            p.pts,
            c.rt,
            p.rt
        );
        match per_epoch.get_mut(c.epoch) {
            Some((first, n)) => {
                assert!(
                    (d - *first).abs() <= 1_000,
                    "pts {} (epoch {}): running times differ by {d}, earlier buffers by {first}",
                    p.pts,
                    c.epoch
                );
                *n += 1;
            }
            None => {
                assert_eq!(per_epoch.len(), c.epoch, "an epoch without a buffer");
                per_epoch.push((d, 1));
            }
        }
    }
    per_epoch
}

#[test]
fn concat_jumps_keep_one_running_time_offset() {
    init_gst();
    let dir = TempDir::new("rt-concat");
    let sock = dir.socket();
    // Three branches of 8 frames (267 ms) each: concat starts each at PTS 0 again, in a
    // segment whose base is the running time so far.
    let branches: String = ["smpte", "ball", "snow"]
        .iter()
        .map(|p| format!(" videotestsrc num-buffers=8 pattern={p} ! {CAPS} ! c."))
        .collect();
    // The producer plays once the consumer is there: its base time is later than the
    // consumer's, so no frame is older than the consumer's start (which it would cut).
    let mut producer = Peer::spawn(&[
        "produce",
        "--running-time-log",
        "--events-log",
        "--wait-clients",
        "1",
        &format!(
            "concat name=c ! fdlinksink socket-path={sock} wait-for-connection=true{branches}"
        ),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--running-time-log",
        "--events-log",
        &format!("fdlinksrc socket-path={sock} ! fakesink sync=true"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let p = running_times(&producer.lines());
    let c = running_times(&consumer.lines());
    assert_eq!(p.len(), 24, "producer: {p:?}");
    assert_eq!(c.len(), 24, "every buffer crosses: {c:?}");

    // The jumps are real: PTS restarts at 0 twice while the producer's running time goes on.
    let restarts: Vec<&Rt> = p.iter().skip(1).filter(|r| r.pts == 0).collect();
    assert_eq!(restarts.len(), 2, "{p:?}");
    assert!(
        restarts.iter().all(|r| r.rt >= 266_000_000),
        "branches after the first run later: {restarts:?}"
    );
    assert!(p.windows(2).all(|w| w[1].rt > w[0].rt), "{p:?}");

    let pairs = pairs(&p, &c);
    let constants = assert_one_constant(&pairs);
    assert_eq!(constants.len(), 1, "no flush, one epoch: {constants:?}");
    // Every buffer but the producer's prerolled first is compared, the jumps' included.
    assert!(constants[0].1 >= 22, "compared {constants:?}");
    // The consumer's running times jump with the producer's: the base the segments carry
    // crossed (PTS alone would restart at the consumer's first running time).
    for w in pairs.windows(2).skip(1) {
        assert_eq!(
            w[1].1.rt - w[0].1.rt,
            w[1].0.rt - w[0].0.rt,
            "running time between pts {} and {}",
            w[0].0.pts,
            w[1].0.pts
        );
    }
}

#[test]
fn a_flushing_seek_from_the_consumer_keeps_running_times_in_step() {
    init_gst();
    let dir = TempDir::new("rt-seek");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--running-time-log",
        "--events-log",
        "--wait-clients",
        "1",
        &format!(
            "videotestsrc num-buffers=45 ! {CAPS} ! fdlinksink socket-path={sock} \
             wait-for-connection=true"
        ),
    ]);
    wait_for_path(&sock, T);
    // The seek jumps to 1.5 s: PTS before it (under 0.6 s) and after it do not meet.
    let mut consumer = Peer::spawn(&[
        "consume",
        "--running-time-log",
        "--events-log",
        "--seek-after",
        "10",
        "--seek-to",
        "1.5",
        &format!("fdlinksrc socket-path={sock} ! fakesink sync=true"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let p = running_times(&producer.lines());
    let c = running_times(&consumer.lines());

    // The producer flushed and restarted at the seek target, its running time from 0.
    let first_after = p
        .iter()
        .find(|r| r.epoch == 1)
        .unwrap_or_else(|| panic!("no producer buffer after the flush: {p:?}"));
    assert_eq!(first_after.pts, 1_500_000_000, "{p:?}");
    assert_eq!(first_after.rt, 0, "{p:?}");
    assert!(
        c.iter().any(|r| r.epoch == 1),
        "consumer saw no flush: {c:?}"
    );
    assert!(
        p.iter().all(|r| r.epoch <= 1) && c.iter().all(|r| r.epoch <= 1),
        "one flush only"
    );

    let pairs = pairs(&p, &c);
    let constants = assert_one_constant(&pairs);
    assert_eq!(
        constants.len(),
        2,
        "before and after the seek: {constants:?}"
    );
    assert!(constants[0].1 >= 5, "before the seek: {constants:?}");
    assert!(constants[1].1 >= 20, "after the seek: {constants:?}");
}
