//! `demo`: a producer and a consumer process of this binary, a live line a second while they
//! run, and a summary for people.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::report::{frames_of, link_summary, rate, stat};
use crate::{Opts, init};

/// How often the live line comes.
const LIVE_EVERY: Duration = Duration::from_secs(1);

/// A child process of this binary, its stdout lines collected as they come.
struct Peer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// When each `stats` line came, and its frame count.
    stats_times: Arc<Mutex<Vec<(Instant, u64)>>>,
}

fn spawn_self(args: &[&str]) -> std::io::Result<Peer> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stats_times = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().expect("stdout is piped");
    let (sink, times) = (lines.clone(), stats_times.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(s) = line.strip_prefix("stats ")
                && let Ok(s) = s.parse::<gst::Structure>()
            {
                times.lock().unwrap().push((Instant::now(), frames_of(&s)));
            }
            sink.lock().unwrap().push(line);
        }
    });
    Ok(Peer {
        child,
        lines,
        stats_times,
    })
}

impl Peer {
    /// The frame rate between its last two `stats` lines, as they came, and how many came.
    fn fps(&self) -> (Option<f64>, usize) {
        let times = self.stats_times.lock().unwrap();
        let fps = match times.as_slice() {
            [.., (t0, n0), (t1, n1)] => rate(n1.saturating_sub(*n0), *t1 - *t0),
            _ => None,
        };
        (fps, times.len())
    }

    fn last_stats(&self) -> Option<gst::Structure> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("stats "))
            .and_then(|s| s.parse().ok())
    }

    /// The consumer pipeline's minimum latency from its `latency LIVE MIN MAX` query line, in
    /// ns: how long after its timestamp the sink renders a frame.
    fn pipeline_latency_ns(&self) -> Option<u64> {
        self.lines.lock().unwrap().iter().find_map(|l| {
            let mut words = l.split(' ').skip_while(|w| *w != "latency").skip(2);
            words.next()?.parse().ok()
        })
    }
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
    // The queue takes each frame from fdlinksrc as it comes, so fdlinksrc's latency is the
    // link's own; fakesink then holds it until its render time (the pipeline's latency).
    let consumer_pipeline = format!("fdlinksrc socket-path={sock} ! queue ! fakesink sync=true");
    println!("fdlink demo: {} frames of {w}x{h} NV12 at 60 fps", o.frames);
    println!("  producer: gst-launch-1.0 {producer_pipeline}");
    println!("  consumer: gst-launch-1.0 {consumer_pipeline}");
    let every = LIVE_EVERY.as_millis().to_string();
    let mut producer = spawn_self(&["produce", "--stats-every", &every, &producer_pipeline])
        .expect("spawn producer");
    let mut consumer = spawn_self(&[
        "consume",
        "--stats-every",
        &every,
        "--query-after",
        "30",
        &consumer_pipeline,
    ])
    .expect("spawn consumer");
    println!(
        "  running: producer pid {}, consumer pid {} ...",
        producer.child.id(),
        consumer.child.id()
    );
    let started = Instant::now();
    // The consumer's `stats` lines summed up so far: one live line for each new one.
    let mut shown = 1;
    let (p_status, c_status) = loop {
        std::thread::sleep(Duration::from_millis(50));
        let p = producer.child.try_wait().expect("producer runs");
        let c = consumer.child.try_wait().expect("consumer runs");
        if let (Some(p), Some(c)) = (p, c) {
            break (p, c);
        }
        let (fps, lines) = consumer.fps();
        if lines > shown
            && let (Some(ps), Some(cs)) = (producer.last_stats(), consumer.last_stats())
        {
            shown = lines;
            println!("  {}", link_summary(&ps, &cs, fps));
        }
    };
    let elapsed = started.elapsed();
    // The readers end with the children's stdout.
    std::thread::sleep(Duration::from_millis(100));
    let _ = std::fs::remove_dir_all(&dir);
    let (Some(ps), Some(cs)) = (producer.last_stats(), consumer.last_stats()) else {
        eprintln!("demo failed: producer {p_status}, consumer {c_status}");
        return 1;
    };
    let sent = stat(&ps, "frames-sent");
    let zc = stat(&ps, "frames-zero-copy");
    let received = stat(&cs, "frames-received");
    println!("results after {:.1} s:", elapsed.as_secs_f64());
    println!(
        "  link latency (producer send -> fdlinksrc create()): p50 {} us, p99 {} us, max {} us",
        stat(&cs, "latency-p50-us"),
        stat(&cs, "latency-p99-us"),
        stat(&cs, "latency-max-us")
    );
    println!(
        "  pipeline latency (the consumer pipeline's latency: its fakesink renders each frame this long after the frame's timestamp): {}",
        consumer
            .pipeline_latency_ns()
            .map_or_else(|| "unknown".into(), |ns| format!("{} us", ns / 1000))
    );
    println!(
        "  producer: {} frames in, {sent} sent, {zc} zero-copy ({:.1}%), {} copied ({} bytes copied)",
        stat(&ps, "frames-in"),
        if sent > 0 {
            100.0 * zc as f64 / sent as f64
        } else {
            0.0
        },
        stat(&ps, "frames-copied"),
        stat(&ps, "bytes-copied"),
    );
    println!(
        "  consumer: {received} frames received, {} released back",
        stat(&cs, "releases-sent")
    );
    let ok = p_status.success() && c_status.success() && received == o.frames && sent == o.frames;
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
