//! `demo`: a producer and a consumer process of this binary, and a summary for people.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crate::{Opts, init};

fn spawn_self(args: &[&str]) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

fn last_stats(output: &str) -> Option<gst::Structure> {
    output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("stats "))
        .and_then(|s| s.parse().ok())
}

pub(crate) fn demo(o: &Opts) -> i32 {
    init();
    let (w, h) = o.size;
    let dir = std::env::temp_dir().join(format!("fdlink-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("fdlink.sock");
    let sock = sock.to_str().expect("utf-8 temp path");
    // `identity drop-allocation=true` hides the memfd pool from videotestsrc, forcing the
    // system-memory path (one copy per frame) to show it.
    let copy = if o.copy {
        "identity drop-allocation=true ! "
    } else {
        ""
    };
    let producer_pipeline = format!(
        "videotestsrc num-buffers={} pattern=ball ! video/x-raw,format=NV12,width={w},height={h},framerate=60/1 ! {copy}fdlinksink socket-path={sock} wait-for-connection=true",
        o.frames
    );
    let consumer_pipeline = format!("fdlinksrc socket-path={sock} ! fakesink sync=true");
    println!("fdlink demo: {} frames of {w}x{h} NV12 at 60 fps", o.frames);
    println!("  producer: gst-launch-1.0 {producer_pipeline}");
    println!("  consumer: gst-launch-1.0 {consumer_pipeline}");
    let producer = spawn_self(&["produce", &producer_pipeline]).expect("spawn producer");
    let consumer = spawn_self(&["consume", &consumer_pipeline]).expect("spawn consumer");
    println!(
        "  running: producer pid {}, consumer pid {} ...",
        producer.id(),
        consumer.id()
    );
    let started = Instant::now();
    let p = producer.wait_with_output().expect("producer runs");
    let c = consumer.wait_with_output().expect("consumer runs");
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let (Some(ps), Some(cs)) = (
        last_stats(&String::from_utf8_lossy(&p.stdout)),
        last_stats(&String::from_utf8_lossy(&c.stdout)),
    ) else {
        eprintln!(
            "demo failed: producer {:?}, consumer {:?}",
            p.status, c.status
        );
        return 1;
    };
    let g = |s: &gst::Structure, f: &str| -> u64 {
        s.get::<u64>(f)
            .or_else(|_| s.get::<u32>(f).map(u64::from))
            .unwrap_or(0)
    };
    let sent = g(&ps, "frames-sent");
    let zc = g(&ps, "frames-zero-copy");
    let received = g(&cs, "frames-received");
    println!("results after {:.1} s:", elapsed.as_secs_f64());
    println!(
        "  producer: {} frames in, {sent} sent, {zc} zero-copy ({:.1}%), {} copied ({} bytes copied)",
        g(&ps, "frames-in"),
        if sent > 0 {
            100.0 * zc as f64 / sent as f64
        } else {
            0.0
        },
        g(&ps, "frames-copied"),
        g(&ps, "bytes-copied"),
    );
    println!(
        "  consumer: {received} frames received, {} released back",
        g(&cs, "releases-sent")
    );
    println!(
        "  per-frame latency (producer send -> consumer create(), queueing included): p50 {} us, p99 {} us, max {} us",
        g(&cs, "latency-p50-us"),
        g(&cs, "latency-p99-us"),
        g(&cs, "latency-max-us")
    );
    let ok = p.status.success() && c.status.success() && received == o.frames && sent == o.frames;
    println!(
        "  {}",
        if ok {
            "OK: every frame crossed"
        } else {
            "FAILED"
        }
    );
    if ok { 0 } else { 1 }
}
