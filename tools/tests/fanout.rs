//! Fan-out: many consumers, slow and stopped consumers, per-consumer policies, client
//! signals. Real consumer processes; the producer is a process too, or this test process
//! when the test needs the element's signals.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;

const T: Duration = Duration::from_secs(90);

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

fn frames_received(s: &gst::Structure) -> u64 {
    field(s, "frames-received")
}

/// The per-consumer structure of `pid` in a producer's stats.
fn client(stats: &gst::Structure, pid: i32) -> Option<gst::Structure> {
    let clients = stats.get::<gst::Array>("clients").ok()?;
    clients
        .iter()
        .filter_map(|v| v.get::<gst::Structure>().ok())
        .find(|c| c.get::<i32>("pid") == Ok(pid))
}

/// A producer pipeline in this process (so the test sees the sink's signals), and its
/// fdlinksink, named `sink`.
fn producer_here(launch: &str) -> (gst::Pipeline, gst::Element) {
    gstfdlink::plugin_register_static().unwrap();
    let pipeline = gst::parse::launch(launch)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    (pipeline, sink)
}

/// The producer went on at its 30 fps (`produced` frames in `window` s) while a consumer was
/// stopped (its stats come every 200 ms, hence the margin), and never waited for a buffer of
/// its pool.
fn assert_kept_rate_and_pool(producer: &Peer, produced: f64, window: f64) {
    assert!(
        produced >= 25.0 * (window - 0.5),
        "producer made {produced} frames in {window:.1} s with a consumer stopped"
    );
    let waits = producer.pool_waits();
    assert_eq!(waits.count, 0, "the pool ran dry: {waits:?}");
}

/// Eight consumers of 1080p frames from a pool of 8 buffers; one is SIGSTOPped for 5 s. With
/// slow-policy=drop and max-held-total=6 the producer never waits for its pool, the other
/// seven keep up, and the stopped one skips frames and then carries on.
#[test]
fn a_stopped_consumer_stalls_neither_the_producer_nor_the_others() {
    init_gst();
    let dir = TempDir::new("stop8");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce-pattern",
        "--socket",
        &sock,
        "--frames",
        "360",
        "--pool-max",
        "8",
        "--size",
        "1920x1080",
        "--wait-clients",
        "8",
        "--stats-every",
        "200",
        "--sink-props",
        "sync=true slow-policy=drop max-held=4 max-held-total=6",
    ]);
    wait_for_path(&sock, T);
    let mut consumers: Vec<Peer> = (0..8)
        .map(|_| {
            Peer::spawn(&[
                "consume",
                "--pattern",
                "--stats-every",
                "200",
                &format!("fdlinksrc socket-path={sock} ! fakesink"),
            ])
        })
        .collect();
    // Two seconds in, stop one consumer for five.
    producer
        .wait_stats(T, |s| field(s, "frames-in") >= 60)
        .expect("the producer runs");
    let stopped = consumers[0].pid();
    let before = Instant::now();
    let p0 = field(&producer.latest_stats().unwrap(), "frames-in");
    let others0: Vec<u64> = consumers[1..]
        .iter()
        .map(|c| c.latest_stats().map_or(0, |s| frames_received(&s)))
        .collect();
    signal(stopped, nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    let window = before.elapsed().as_secs_f64();
    let p1 = field(&producer.latest_stats().unwrap(), "frames-in");
    let others1: Vec<u64> = consumers[1..]
        .iter()
        .map(|c| c.latest_stats().map_or(0, |s| frames_received(&s)))
        .collect();
    signal(stopped, nix::sys::signal::Signal::SIGCONT);

    producer.wait_success(T, "producer");
    for c in consumers.iter_mut() {
        c.wait_success(T, "c");
    }
    let produced = (p1 - p0) as f64;
    assert_kept_rate_and_pool(&producer, produced, window);
    // The seven others kept up during the stop and got every frame in the end.
    for (i, (a, b)) in others0.iter().zip(&others1).enumerate() {
        assert!(
            (b - a) as f64 >= produced - 15.0,
            "consumer {} got {} frames while the producer made {produced}",
            i + 1,
            b - a
        );
    }
    for c in &consumers[1..] {
        assert_eq!(frames_received(&c.latest_stats().unwrap()), 360);
    }
    // The stopped one skipped frames (per the policy) and then received again.
    let end = producer.latest_stats().unwrap();
    assert!(field(&end, "frames-dropped") >= 100, "{end}");
    let got = frames_received(&consumers[0].latest_stats().unwrap());
    assert!(got < 300 && got > 80, "stopped consumer received {got}");
    // Nobody saw a frame change under it.
    for c in &consumers {
        assert!(
            !c.lines().iter().any(|l| l.starts_with("pattern-mismatch")),
            "a frame was overwritten"
        );
    }
}

/// slow-policy=block is lossless: a slow consumer slows the producer and every frame reaches
/// every consumer.
#[test]
fn block_policy_loses_nothing() {
    init_gst();
    let dir = TempDir::new("block");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce-pattern",
        "--socket",
        &sock,
        "--frames",
        "60",
        "--pool-max",
        "4",
        "--size",
        "640x480",
        "--wait-clients",
        "2",
        "--sink-props",
        "slow-policy=block max-held=2",
    ]);
    wait_for_path(&sock, T);
    let mut slow = Peer::spawn(&[
        "consume",
        "--pattern",
        "--slow-ms",
        "30",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    let mut fast = Peer::spawn(&[
        "consume",
        "--pattern",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    for c in [&mut slow, &mut fast] {
        c.wait_success(T, "c");
        assert_eq!(frames_received(&c.latest_stats().unwrap()), 60);
        assert!(!c.lines().iter().any(|l| l.starts_with("pattern-mismatch")));
    }
    assert_eq!(
        field(&producer.latest_stats().unwrap(), "frames-dropped"),
        0
    );
}

/// client-added / client-removed with their reasons, the remove action signal, per-client
/// stats, and slow-policy=disconnect; the producer is this process, so its signals are seen.
#[test]
fn client_signals_remove_and_disconnect_policy() {
    init_gst();
    let dir = TempDir::new("signals");
    let sock = dir.socket();
    let (pipeline, sink) = producer_here(&format!(
        "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! fdlinksink name=sink socket-path={sock} slow-policy=disconnect max-held=2"
    ));
    let added: Arc<Mutex<Vec<(u64, i32)>>> = Arc::default();
    let removed: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let a = added.clone();
    sink.connect("client-added", false, move |args| {
        a.lock()
            .unwrap()
            .push((args[1].get().unwrap(), args[2].get().unwrap()));
        None
    });
    let r = removed.clone();
    sink.connect("client-removed", false, move |args| {
        r.lock()
            .unwrap()
            .push((args[1].get().unwrap(), args[2].get().unwrap()));
        None
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    wait_for_path(&sock, T);

    let consumer = |extra: &[&str]| {
        let mut args = vec!["consume"];
        args.extend_from_slice(extra);
        let pipeline = format!("fdlinksrc socket-path={sock} ! fakesink");
        args.push(&pipeline);
        Peer::spawn(&args)
    };
    let mut normal = consumer(&[]);
    // Holds each frame 300 ms: it reaches max-held within a second and is disconnected.
    let mut slow = consumer(&["--slow-ms", "300", "--frames-log"]);
    let deadline = Instant::now() + T;
    while added.lock().unwrap().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ids: Vec<(u64, i32)> = added.lock().unwrap().clone();
    assert_eq!(ids.len(), 2, "client-added");
    let id_of = |pid: i32| ids.iter().find(|(_, p)| *p == pid).unwrap().0;
    let (normal_id, slow_id) = (id_of(normal.pid()), id_of(slow.pid()));

    assert_ne!(
        slow.wait(T).code(),
        Some(0),
        "the slow consumer is disconnected"
    );
    assert!(
        slow.errors().contains("disconnected") || slow.errors().contains("slow"),
        "{}",
        slow.errors()
    );
    assert!(
        removed
            .lock()
            .unwrap()
            .contains(&(slow_id, "slow".to_string()))
    );

    // Per-client stats of the one left.
    std::thread::sleep(Duration::from_millis(500));
    let stats = sink.property::<gst::Structure>("stats");
    let c = client(&stats, normal.pid()).expect("per-client stats");
    assert_eq!(c.get::<u64>("id"), Ok(normal_id));
    assert!(c.get::<u64>("frames-sent").unwrap() > 0, "{c}");
    assert!(c.get::<u64>("releases").unwrap() > 0, "{c}");
    assert!(
        c.get::<u64>("bytes-sent").unwrap() >= 320 * 240 * 3 / 2,
        "{c}"
    );
    assert!(client(&stats, slow.pid()).is_none());

    // The application removes the other one; an unknown id is refused.
    assert!(!sink.emit_by_name::<bool>("remove", &[&999u64]));
    assert!(sink.emit_by_name::<bool>("remove", &[&normal_id]));
    assert_ne!(normal.wait(T).code(), Some(0));
    assert!(
        removed
            .lock()
            .unwrap()
            .contains(&(normal_id, "removed".to_string()))
    );
    assert_eq!(sink.property::<u32>("num-clients"), 0);

    // A consumer that dies is removed as closed.
    let mut third = consumer(&[]);
    while added.lock().unwrap().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let third_id = added.lock().unwrap()[2].0;
    third.kill9();
    while !removed
        .lock()
        .unwrap()
        .iter()
        .any(|(id, _)| *id == third_id)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        removed
            .lock()
            .unwrap()
            .contains(&(third_id, "closed".to_string()))
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

/// slow-policy=copy with an upstream pool of 4 buffers: a consumer SIGSTOPped for 3 s holds at
/// most max-held of them; every frame after that reaches it as a copy in the memfd pool. The
/// producer never waits for its pool and keeps its rate, and the stopped consumer, once
/// resumed, gets every frame, none overwritten.
#[test]
fn copy_policy_keeps_the_pool_and_the_stalled_consumers_frames() {
    init_gst();
    let dir = TempDir::new("copy");
    let sock = dir.socket();
    let frames = 240u64;
    let mut producer = Peer::spawn(&[
        "produce-pattern",
        "--socket",
        &sock,
        "--frames",
        &frames.to_string(),
        "--pool-max",
        "4",
        "--size",
        "640x480",
        "--wait-clients",
        "2",
        "--stats-every",
        "200",
        "--sink-props",
        "sync=true slow-policy=copy max-held=1 max-queued=150",
    ]);
    wait_for_path(&sock, T);
    let consumer = || {
        Peer::spawn(&[
            "consume",
            "--pattern",
            "--stats-every",
            "200",
            &format!("fdlinksrc socket-path={sock} ! fakesink enable-last-sample=false"),
        ])
    };
    let mut stopped = consumer();
    let mut healthy = consumer();
    producer
        .wait_stats(T, |s| field(s, "frames-in") >= 45)
        .expect("the producer runs");
    let before = Instant::now();
    let p0 = field(&producer.latest_stats().unwrap(), "frames-in");
    signal(stopped.pid(), nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    let window = before.elapsed().as_secs_f64();
    let during = producer.latest_stats().unwrap();
    signal(stopped.pid(), nix::sys::signal::Signal::SIGCONT);

    let c = client(&during, stopped.pid()).expect("stopped consumer's stats");
    // It holds copies and at most max-held (1) of upstream's buffers.
    assert!(
        field(&c, "buffers-held").saturating_sub(field(&c, "frames-copied")) <= 1,
        "{c}"
    );
    assert!(field(&c, "frames-copied") >= 60, "{c}");
    producer.wait_success(T, "producer");
    for c in [&mut stopped, &mut healthy] {
        c.wait_success(T, "c");
        assert_eq!(frames_received(&c.latest_stats().unwrap()), frames);
        assert!(
            !c.lines().iter().any(|l| l.starts_with("pattern-mismatch")),
            "a frame was overwritten"
        );
    }
    let produced = (field(&during, "frames-in") - p0) as f64;
    assert_kept_rate_and_pool(&producer, produced, window);
    let end = producer.latest_stats().unwrap();
    assert_eq!(field(&end, "frames-dropped"), 0, "{end}");
    assert!(field(&end, "slow-copies") >= 60, "{end}");
}

/// sync-method on an H.264 stream (x264enc, a keyframe every 30 frames): a consumer that
/// joins mid-GOP starts at a keyframe, the latest one before it joined (latest-keyframe,
/// from the producer's backlog) or the next one (next-keyframe), and then gets every frame:
/// with latest-keyframe, the GOP so far arrives at once, more than max-held (8), and the next
/// frame must not be skipped for it.
#[test]
fn sync_method_starts_consumers_at_keyframes() {
    init_gst();
    for method in ["latest-keyframe", "next-keyframe"] {
        let dir = TempDir::new("syncmethod");
        let sock = dir.socket();
        let total = 150u64;
        let (pipeline, sink) = producer_here(&format!(
            "videotestsrc is-live=true num-buffers={total} ! video/x-raw,width=320,height=240,framerate=30/1 ! x264enc key-int-max=30 option-string=scenecut=0 tune=zerolatency speed-preset=ultrafast ! h264parse ! fdlinksink name=sink socket-path={sock} sync-method={method}"
        ));
        // Frames the producer had taken in when the consumer finished its hello.
        let joined_at: Arc<Mutex<Option<u64>>> = Arc::default();
        let j = joined_at.clone();
        sink.connect("client-added", false, move |args| {
            let sink = args[0].get::<gst::Element>().unwrap();
            let stats = sink.property::<gst::Structure>("stats");
            *j.lock().unwrap() = Some(field(&stats, "frames-in"));
            None
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        wait_for_path(&sock, T);
        let deadline = Instant::now() + T;
        while field(&sink.property::<gst::Structure>("stats"), "frames-in") < 45 {
            assert!(Instant::now() < deadline, "the producer runs");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut consumer = Peer::spawn(&[
            "consume",
            "--frames-log",
            &format!("fdlinksrc socket-path={sock} ! fakesink"),
        ]);
        consumer.wait_success(T, "consumer");
        pipeline.set_state(gst::State::Null).unwrap();
        let joined = joined_at.lock().unwrap().expect("client-added");
        let got = frames(&consumer.lines());
        let received = got.len() as u64;
        assert!(!got[0].delta, "{method}: the first frame is a keyframe");
        // Every frame from there on, none skipped: the joiner's burst of frames from the
        // backlog (up to a GOP, more than max-held) does not count toward its max-held.
        let pts: Vec<i64> = pts_of(&consumer.lines());
        let skips: Vec<(usize, i64)> = pts
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[1] - w[0] > 40_000_000)
            .map(|(i, w)| (i + 1, w[1] - w[0]))
            .collect();
        assert!(
            skips.is_empty(),
            "{method}: frames skipped before (index, pts step): {skips:?}, joined at {joined}"
        );
        // It started at a keyframe, so it got whole GOPs.
        assert_eq!(received % 30, 0, "{method}: {received} frames");
        let first = total - received;
        match method {
            // From the keyframe at or before the join.
            "latest-keyframe" => assert!(
                first <= joined && joined < first + 30,
                "{method}: started at frame {first}, joined at {joined}"
            ),
            // From the first keyframe after the join (a frame in render at the join may
            // still count as before it).
            _ => assert!(
                first + 1 >= joined && first < joined + 31,
                "{method}: started at frame {first}, joined at {joined}"
            ),
        }
    }
}
