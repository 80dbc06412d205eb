//! Consumers that crash: kill -9 in a loop while a live producer streams to healthy consumers.
//! Real processes, real signals; the producer's fds and RSS are read from /proc.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(30);
/// Consumers killed, one after the other (the issue asks for at least 100).
const KILLS: usize = 100;
const HEALTHY: usize = 2;
/// The producer's `max-held`: what one consumer may hold unreleased.
const MAX_HELD: u64 = 2;
/// The bound: no producer stall over 100 ms.
const MAX_STALL_US: u64 = 100_000;
/// How much the producer's RSS may grow over the loop. Its frames live in a fixed pool of 8
/// memfds of 450 KiB, all mapped before the baseline (`RssShmem` 3616 KiB before and after),
/// so a frame that is never returned dries the pool (a stall) rather than growing RSS. What
/// can grow is the heap: the sink spawns a short thread per consumer request, and glibc keeps
/// arenas, freed chunks and thread stacks around; the loop measured +20 KiB. 4 MiB leaves
/// room for that and still fails on a 40 KiB leak per kill (checked: 100 KiB per removal
/// made it +10 MiB).
const RSS_TOLERANCE_KIB: u64 = 4 * 1024;

/// The per-consumer `(pid, buffers-held)` pairs of a producer's stats.
fn clients(stats: &gst::Structure) -> Vec<(i32, u64)> {
    let Ok(clients) = stats.get::<gst::Array>("clients") else {
        return Vec::new();
    };
    clients
        .iter()
        .filter_map(|v| v.get::<gst::Structure>().ok())
        .map(|c| (c.get::<i32>("pid").unwrap(), field(&c, "buffers-held")))
        .collect()
}

/// `VmRSS`, `RssAnon`, `RssFile` and `RssShmem` of a process, in KiB.
fn rss_kib(pid: i32) -> [u64; 4] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    ["VmRSS:", "RssAnon:", "RssFile:", "RssShmem:"].map(|key| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
    })
}

/// A peer's `stats` lines from its output line `from` on, parsed.
fn stats_from(peer: &Peer, from: usize) -> Vec<gst::Structure> {
    peer.lines()[from..]
        .iter()
        .filter_map(|l| l.strip_prefix("stats "))
        .map(|s| s.parse().unwrap())
        .collect()
}

fn frames_received(peer: &Peer) -> u64 {
    peer.latest_stats()
        .map_or(0, |s| field(&s, "frames-received"))
}

/// A live 30 fps producer (pool of 8 memfds, `max-held=2`, default `slow-policy`: drop for a
/// live upstream) streams to two healthy consumers while 100 consumers, one after the other,
/// connect, are seen by the producer holding a frame, and are killed with SIGKILL. The
/// producer never goes 100 ms without handing a frame to its sink and never waits that long
/// for a pool buffer; afterwards it holds only what the healthy consumers hold, has exactly
/// the fds it had before the loop, and an RSS within 4 MiB of before. The healthy consumers
/// receive throughout and no frame changes under them.
#[test]
fn a_hundred_killed_consumers_neither_stall_nor_leak() {
    init_gst();
    let dir = TempDir::new("crashes");
    let sock = dir.socket();
    let eos_file = dir.0.join("eos").to_str().unwrap().to_string();
    let mut producer = Peer::spawn(&[
        "produce-pattern",
        "--socket",
        &sock,
        "--frames",
        "1000000",
        "--pool-max",
        "8",
        "--size",
        "640x480",
        "--live",
        "--gaps",
        "--stats-every",
        "50",
        "--eos-file",
        &eos_file,
        "--sink-props",
        &format!("sync=true max-held={MAX_HELD}"),
    ]);
    wait_for_path(&sock, T);
    let consumer_pipeline = format!("fdlinksrc socket-path={sock} ! fakesink");
    let mut healthy: Vec<Peer> = (0..HEALTHY)
        .map(|_| {
            Peer::spawn(&[
                "consume",
                "--pattern",
                "--gaps",
                "--stats-every",
                "100",
                &consumer_pipeline,
            ])
        })
        .collect();
    let healthy_pids: Vec<i32> = healthy.iter().map(Peer::pid).collect();

    // Warm-up: both healthy consumers in and two seconds of frames, then the baseline.
    let s = producer
        .wait_stats(T, |s| {
            field(s, "consumers") == HEALTHY as u64 && field(s, "frames-in") >= 60
        })
        .unwrap_or_else(|| panic!("the producer never streamed to both consumers"));
    let frames_in_before = field(&s, "frames-in");
    std::thread::sleep(Duration::from_secs(1));
    let fds_before = fd_targets(producer.pid());
    let rss_before = rss_kib(producer.pid());

    let loop_start = Instant::now();
    let first_line = producer.lines().len();
    let healthy_first: Vec<usize> = healthy.iter().map(|c| c.lines().len()).collect();
    let mut received: Vec<u64> = healthy.iter().map(frames_received).collect();
    // How many victims held 1, 2, ... frames when the producer last reported on them.
    let mut held_at_kill = [0usize; MAX_HELD as usize + 1];
    for kill in 0..KILLS {
        // Stuck 300 ms in its probe per frame: at max-held within a frame or two, one frame
        // in its pipeline and the next one unread in its socket.
        let mut victim = Peer::spawn(&["consume", "--slow-ms", "300", &consumer_pipeline]);
        let pid = victim.pid();
        let s = producer
            .wait_stats(Duration::from_secs(10), |s| {
                clients(s).iter().any(|&(p, held)| p == pid && held > 0)
            })
            .unwrap_or_else(|| {
                panic!(
                    "kill {kill}: the producer never saw consumer {pid} hold a frame\n\
                     producer: {:?}\nconsumer: {}",
                    producer.latest_stats(),
                    victim.errors()
                )
            });
        let held = clients(&s).iter().find(|c| c.0 == pid).unwrap().1;
        held_at_kill[held.min(MAX_HELD) as usize] += 1;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let status = victim.child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "kill {kill}: consumer {pid} ended otherwise: {status}\n{}",
            victim.errors()
        );
        // Every ten kills, both healthy consumers have received more frames.
        if kill % 10 == 9 {
            let now: Vec<u64> = healthy.iter().map(frames_received).collect();
            for (i, (a, b)) in received.iter().zip(&now).enumerate() {
                assert!(
                    b > a,
                    "kill {kill}: healthy consumer {i} stuck at {b} frames (was {a})"
                );
            }
            received = now;
        }
    }
    let loop_time = loop_start.elapsed();
    let last_line = producer.lines().len();

    // The victims are all gone, and what they held with them.
    let s = producer
        .wait_stats(Duration::from_secs(5), |s| {
            field(s, "consumers") == HEALTHY as u64
                && field(s, "buffers-held") <= HEALTHY as u64 * MAX_HELD
        })
        .unwrap_or_else(|| {
            panic!(
                "held buffers or consumers never went back to the healthy ones: {}",
                producer.latest_stats().unwrap()
            )
        });
    let mut pids: Vec<i32> = clients(&s).iter().map(|c| c.0).collect();
    pids.sort();
    let mut want = healthy_pids.clone();
    want.sort();
    assert_eq!(pids, want, "consumers left in the producer: {s}");
    assert_eq!(
        field(&s, "consumers-total"),
        (HEALTHY + KILLS) as u64,
        "every victim became a consumer: {s}"
    );

    // No stall during the loop: the longest time between two frames reaching the sink (33 ms
    // at 30 fps when all is well; it covers the sink's clock wait, render, and the appsrc
    // taking a buffer from the pool), over every stats window from the one the loop started
    // in to the first one after it ended (so a gap still open at the end is counted too).
    let deadline = Instant::now() + T;
    while stats_from(&producer, last_line).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the producer stopped printing stats"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let windows = stats_from(&producer, first_line);
    let gap_max = windows
        .iter()
        .map(|s| field(s, "gap-max-us"))
        .max()
        .unwrap();
    let end = windows.last().unwrap();
    let (pool_waits, pool_wait_max) =
        (field(end, "pool-waits"), field(end, "pool-wait-longest-us"));

    // Fds and RSS, once the control thread has had a moment.
    std::thread::sleep(Duration::from_secs(1));
    let fds_after = fd_targets(producer.pid());
    let rss_after = rss_kib(producer.pid());
    let frames_in_after = field(&producer.latest_stats().unwrap(), "frames-in");
    println!(
        "victims holding 1..={MAX_HELD} frames when killed: {:?}",
        &held_at_kill[1..]
    );
    println!(
        "{KILLS} kills in {:.1} s; producer frames-in {frames_in_before} -> {frames_in_after}; \
         longest gap between frames at the sink {} us over {} stats windows; pool waits {pool_waits} \
         (longest {pool_wait_max} us); fds {} -> {}; RSS KiB (VmRSS, anon, file, shmem) {:?} -> {:?}",
        loop_time.as_secs_f64(),
        gap_max,
        windows.len(),
        fds_before.len(),
        fds_after.len(),
        rss_before,
        rss_after
    );
    assert!(
        gap_max < MAX_STALL_US,
        "the producer went {gap_max} us without a frame at its sink"
    );
    assert!(
        pool_waits == 0 || pool_wait_max < MAX_STALL_US,
        "the producer waited {pool_wait_max} us for a pool buffer ({pool_waits} waits)"
    );
    let added: Vec<&String> = fds_after
        .iter()
        .filter(|f| !fds_before.contains(f))
        .collect();
    let gone: Vec<&String> = fds_before
        .iter()
        .filter(|f| !fds_after.contains(f))
        .collect();
    assert!(
        fds_after.len() == fds_before.len() && added.is_empty() && gone.is_empty(),
        "the producer's fds went from {} to {}: new {added:?}, gone {gone:?}",
        fds_before.len(),
        fds_after.len()
    );
    assert!(
        rss_after[0] <= rss_before[0] + RSS_TOLERANCE_KIB,
        "the producer's RSS grew from {} to {} KiB",
        rss_before[0],
        rss_after[0]
    );

    // The healthy consumers are still receiving, and get the EOS.
    let now: Vec<u64> = healthy.iter().map(frames_received).collect();
    for (i, (a, b)) in received.iter().zip(&now).enumerate() {
        assert!(b > a, "healthy consumer {i} stuck at {b} frames");
    }
    std::fs::write(&eos_file, b"").unwrap();
    producer.wait_success(T, "producer");
    assert_no_leaked_fds(&producer, "the producer");
    let waits = producer.pool_waits();
    println!("producer: {waits:?}");
    assert!(
        waits.count == 0 || waits.longest < Duration::from_micros(MAX_STALL_US),
        "the producer waited {:?} for a pool buffer ({} waits) over its run",
        waits.longest,
        waits.count
    );
    for (i, c) in healthy.iter_mut().enumerate() {
        c.wait_success(T, &format!("healthy consumer {i}"));
        let lines = c.lines();
        assert!(
            !lines.iter().any(|l| l.starts_with("pattern-mismatch")),
            "healthy consumer {i} saw a frame change under it"
        );
        let gaps = stats_from(c, healthy_first[i])
            .iter()
            .map(|s| field(s, "gap-max-us"))
            .max()
            .unwrap_or(0);
        println!(
            "healthy consumer {i}: {} frames, longest gap from the loop on {gaps} us",
            frames_received(c)
        );
    }
}
