//! fdlinksrc mode=follow without races: whatever the start order and the timing of the two
//! sides, a following consumer reaches the producer's PLAYING, renders every frame, and both
//! reach EOS; and what a consumer's own pause does: a follower's pauses the producer's
//! pipeline (the two are one), an independent consumer's pauses its own pipeline only. Real
//! producer and consumer processes, each race run 20 times.

mod common;

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::*;

/// Runs of each race case.
const RUNS: usize = 20;
/// Runs at a time (each is two or three processes).
const PARALLEL: usize = 4;
/// How long one run may take before it counts as a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(15);
const T: Duration = Duration::from_secs(30);

/// A non-live 160x120 producer of `frames` frames at 30 fps into an fdlinksink.
fn producer(sock: &str, frames: usize, wait_for_connection: bool) -> String {
    format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,format=NV12,width=160,height=120,framerate=30/1 ! fdlinksink socket-path={sock} wait-for-connection={wait_for_connection}"
    )
}

/// A following consumer that renders in sync with the clock.
fn follower(sock: &str) -> String {
    format!("fdlinksrc socket-path={sock} timeout=10000 mode=follow ! fakesink sync=true")
}

/// Waits for `peer` to exit within `deadline`; kills it and says so if it does not.
fn exit_by(peer: &mut Peer, deadline: Instant, who: &str) -> Result<ExitStatus, String> {
    loop {
        if let Some(status) = peer.child.try_wait().unwrap() {
            // Let the reader threads take the last lines.
            std::thread::sleep(Duration::from_millis(50));
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = peer.child.kill();
            let lines = peer.lines();
            let states: Vec<&String> = lines
                .iter()
                .filter(|l| l.starts_with("state ") || l.starts_with("position "))
                .collect();
            return Err(format!(
                "{who} hung ({} frames, states and positions {states:?}; stderr {})",
                frames(&lines).len(),
                peer.errors()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A consumer ended at EOS after its pipeline played, having received `expected` frames (at
/// least one when None).
fn check_consumer(c: &mut Peer, deadline: Instant, expected: Option<usize>) -> Result<(), String> {
    let status = exit_by(c, deadline, "consumer")?;
    let lines = c.lines();
    let got = frames(&lines).len();
    if !status.success() {
        return Err(format!("consumer failed ({status}): {}", c.errors()));
    }
    if !lines.iter().any(|l| l == "state Playing") {
        return Err(format!("consumer never reached PLAYING ({got} frames)"));
    }
    match expected {
        Some(n) if got != n => return Err(format!("consumer rendered {got} of {n} frames")),
        None if got == 0 => return Err("consumer rendered no frame".into()),
        _ => {}
    }
    if !lines.iter().any(|l| l == "eos") {
        return Err("consumer saw no EOS".into());
    }
    Ok(())
}

/// A producer ended at EOS, its position moving on between its position lines.
fn check_producer(p: &mut Peer, deadline: Instant) -> Result<(), String> {
    let status = exit_by(p, deadline, "producer")?;
    if !status.success() {
        return Err(format!("producer failed ({status}): {}", p.errors()));
    }
    let lines = p.lines();
    if !lines.iter().any(|l| l == "eos") {
        return Err("producer saw no EOS".into());
    }
    let positions: Vec<i64> = queries(&lines).iter().map(|q| q.position).collect();
    if positions.len() < 2 || positions.windows(2).any(|w| w[1] <= w[0]) {
        return Err(format!("producer position did not advance: {positions:?}"));
    }
    Ok(())
}

/// Runs `one` RUNS times, PARALLEL at a time, and fails with every failed run's story.
fn runs(case: &str, one: impl Fn(usize) -> Result<(), String> + Sync) {
    let failures: Vec<String> = std::thread::scope(|s| {
        let one = &one;
        let mut failures = Vec::new();
        for batch in (0..RUNS).collect::<Vec<_>>().chunks(PARALLEL) {
            let handles: Vec<_> = batch
                .iter()
                .map(|&i| s.spawn(move || one(i).map_err(|e| format!("run {i}: {e}"))))
                .collect();
            failures.extend(handles.into_iter().filter_map(|h| h.join().unwrap().err()));
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{case}: {} of {RUNS} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// One run of a producer application that goes from NULL straight to PLAYING (fdlink-peer
/// produce does) and a follower, started first in runs 0 and 1 of every 4 and second in the
/// others, whose application sets it only to PAUSED in even runs, to PLAYING in odd ones.
fn producer_at_once_run(tag: &str, i: usize, wait_for_connection: bool) -> Result<(), String> {
    let dir = TempDir::new(&format!("{tag}{i}"));
    let sock = dir.socket();
    // Without wait-for-connection a producer that starts first does not wait: a longer stream
    // leaves the follower time to join it.
    let frames = if wait_for_connection { 30 } else { 45 };
    let consumer_args = |sock: &str| {
        let mut args = vec![
            "consume".to_string(),
            "--messages-log".into(),
            "--frames-log".into(),
        ];
        if i.is_multiple_of(2) {
            args.push("--start-paused".into());
        }
        args.push(follower(sock));
        args
    };
    let producer_args = [
        "produce".to_string(),
        "--query-every".into(),
        "5".into(),
        producer(&sock, frames, wait_for_connection),
    ];
    let spawn = |args: &[String]| Peer::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (mut c, mut p) = if i % 4 < 2 {
        let c = spawn(&consumer_args(&sock));
        (c, spawn(&producer_args))
    } else {
        let p = spawn(&producer_args);
        wait_for_path(&sock, T);
        (spawn(&consumer_args(&sock)), p)
    };
    let deadline = Instant::now() + RUN_TIMEOUT;
    let expected = wait_for_connection.then_some(frames);
    check_consumer(&mut c, deadline, expected)?;
    check_producer(&mut p, deadline)
}

/// wait-for-connection=true: the producer's pipeline prerolls on the follower's first frame
/// and plays at once; the follower must take PAUSED and then PLAYING in that order.
#[test]
fn follower_plays_with_a_producer_that_starts_playing_at_once() {
    init_gst();
    runs("wait-for-connection=true", |i| {
        producer_at_once_run("atonce", i, true)
    });
}

/// The same without wait-for-connection: the follower joins a producer that prerolls and
/// plays on its own, at whatever point it got to.
#[test]
fn follower_plays_with_a_producer_that_does_not_wait_for_it() {
    init_gst();
    runs("wait-for-connection=false", |i| {
        producer_at_once_run("nowait", i, false)
    });
}

/// A follower whose application sets it to PLAYING itself, with a producer that stays PAUSED
/// until it has two consumers (the follower and an independent one) and then plays: the
/// follower takes PAUSED from the producer while its own set_state(PLAYING) is still under
/// way, then PLAYING, and must end up playing. Before the follower's state changes were made
/// one at a time under the pipeline's state lock, 3 of 10 such runs stayed PAUSED for good.
#[test]
fn follower_whose_application_plays_it_plays_with_the_producer() {
    init_gst();
    runs("application sets PLAYING too", |i| {
        let dir = TempDir::new(&format!("appplays{i}"));
        let sock = dir.socket();
        let frames = 30;
        let mut f = Peer::spawn(&[
            "consume",
            "--messages-log",
            "--frames-log",
            &follower(&sock),
        ]);
        let mut other = Peer::spawn(&[
            "consume",
            "--messages-log",
            "--frames-log",
            &format!("fdlinksrc socket-path={sock} timeout=10000 ! queue ! fakesink"),
        ]);
        let mut p = Peer::spawn(&[
            "produce",
            "--wait-clients",
            "2",
            "--query-every",
            "10",
            &producer(&sock, frames, false),
        ]);
        let deadline = Instant::now() + RUN_TIMEOUT;
        check_consumer(&mut f, deadline, Some(frames))?;
        check_consumer(&mut other, deadline, None).map_err(|e| format!("other {e}"))?;
        check_producer(&mut p, deadline)
    });
}

/// The `state` lines of a `--messages-log` run.
fn states(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("state "))
        .collect()
}

/// Whether `states` has PLAYING, then PAUSED, then PLAYING again.
fn played_paused_played(states: &[&str]) -> bool {
    let Some(playing) = states.iter().position(|&s| s == "Playing") else {
        return false;
    };
    let Some(paused) = find_from_str(states, playing, "Paused") else {
        return false;
    };
    find_from_str(states, paused, "Playing").is_some()
}

fn find_from_str(states: &[&str], from: usize, what: &str) -> Option<usize> {
    states[from..]
        .iter()
        .position(|&s| s == what)
        .map(|i| i + from)
}

/// A consumer's application pauses it for 2.5 s after 20 frames of a 90-frame non-live
/// stream. A follower's pause pauses the producer's pipeline and its play plays it again, so
/// nothing is lost: every frame arrives, in order, and the producer drops none. (Before, the
/// producer played on, skipped the paused follower once it held max-held frames, and about 2 s
/// of the stream never reached it.) An independent consumer's pause is its own pipeline's:
/// the producer never pauses.
#[test]
fn a_consumers_pause_pauses_the_producer_only_when_it_follows() {
    init_gst();
    let total = 90;
    let run = |mode: &str| {
        let dir = TempDir::new(&format!("pause-{mode}"));
        let sock = dir.socket();
        let mut p = Peer::spawn(&["produce", "--messages-log", &producer(&sock, total, true)]);
        wait_for_path(&sock, T);
        let mut c = Peer::spawn(&[
            "consume",
            "--messages-log",
            "--frames-log",
            "--pause-after",
            "20",
            "--pause-ms",
            "2500",
            &format!("fdlinksrc socket-path={sock} mode={mode} ! fakesink sync=true"),
        ]);
        p.wait_success(T, &format!("producer ({mode} consumer)"));
        c.wait_success(T, &format!("{mode} consumer"));
        (p.lines(), c.lines())
    };
    let (follow, independent) = std::thread::scope(|s| {
        let follow = s.spawn(|| run("follow"));
        let independent = s.spawn(|| run("independent"));
        (follow.join().unwrap(), independent.join().unwrap())
    });

    let (p, c) = follow;
    assert!(
        c.iter().any(|l| l == "paused") && played_paused_played(&states(&c)),
        "the follower paused and played: {:?}",
        states(&c)
    );
    assert!(
        played_paused_played(&states(&p)),
        "the follower's pause paused the producer and its play played it: producer states {:?}",
        states(&p)
    );
    let offsets: Vec<u64> = frames(&c).iter().map(|f| f.offset).collect();
    assert_eq!(
        offsets,
        (0..total as u64).collect::<Vec<_>>(),
        "every frame reached the follower, in order"
    );
    let stats = p
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("stats "))
        .and_then(|s| s.parse::<gst::Structure>().ok())
        .expect("producer stats");
    assert_eq!(field(&stats, "frames-dropped"), 0, "producer: {stats}");

    let (p, c) = independent;
    assert!(
        c.iter().any(|l| l == "paused") && played_paused_played(&states(&c)),
        "the independent consumer paused and played: {:?}",
        states(&c)
    );
    let p_states = states(&p);
    let playing = p_states.iter().position(|&s| s == "Playing");
    assert!(
        playing.is_some_and(|at| !p_states[at..].contains(&"Paused")),
        "an independent consumer's pause left the producer playing: {p_states:?}"
    );
}
