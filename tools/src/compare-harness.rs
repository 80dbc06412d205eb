//! One side (producer or consumer) of a cross-process transport, for `benches/compare-peers.sh`.
//!
//! ```text
//! compare-harness produce|consume TRANSPORT key=value...
//!   TRANSPORT: fdlink fdlink-copy shm shm-alloc ipcpipeline unixfd unixfd-copy raw, or
//!   local (producer only: `videotestsrc ! fakesink`, what the source alone costs)
//!   width= height= frames= rate= (0: unthrottled) path= (socket or fifo base) go= done=
//!   timeout= (seconds, whole run) source= (videotestsrc, the default, or prefilled)
//!   samples= (consumer: a file for every frame's sequence number, send and receive time
//!   on CLOCK_MONOTONIC and latency, to line a latency tail up with a scheduler trace)
//! ```
//!
//! `source=prefilled` replaces videotestsrc with [`prefilled_src`]: frames from the pool the
//! sink proposes (as videotestsrc's and a decoder's are), each pool buffer written in full the
//! first time the source meets it and never again. It stands for a hardware decoder or a
//! camera, whose frames the CPU does not write, so the transport's own cost sets the pace
//! instead of videotestsrc drawing every pixel.
//!
//! Both sides print one line `RESULT {json}` on stdout.
//!
//! How it measures, the same way for every GStreamer transport:
//! - Producer: a buffer probe on the sink element's sink pad (the last thing before the
//!   transport) makes the buffer writable (counted when that copies) and writes 16 bytes into
//!   the start of its first memory: magic, sequence number, CLOCK_MONOTONIC in ns.
//! - Consumer: a buffer probe on fakesink's sink pad (right after the transport's source) maps
//!   the first memory read-only, reads them back and takes the difference to its own
//!   CLOCK_MONOTONIC (one kernel, so one clock), and counts gaps in the sequence (drops).
//! - fps: consumer side, (frames - 1) / (last arrival - first arrival).
//! - CPU: CLOCK_PROCESS_CPUTIME_ID (all threads, user + system) between the first and the last
//!   frame each process sees, divided by the frames in between; start-up is left out.
//! - `raw`: no GStreamer. The producer keeps 4 mapped memfds, writes the same 16 bytes (no
//!   other pixels), sends one fd plus a 100-byte message over SOCK_SEQPACKET and waits for a
//!   16-byte reply; the consumer maps the received fd, reads the 16 bytes, unmaps, replies.

use std::fs::OpenOptions;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use gst::prelude::*;

const MAGIC: u32 = 0x4b4c_4446; // "FDLK"
/// Latency samples of the first frames are left out: start-up (connection, first mmap, the
/// producer's preroll wait) is not the steady state.
const WARMUP_FRAMES: u64 = 10;

fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Time the hypervisor ran something else on this machine's CPUs, all CPUs together, in ms
/// (`/proc/stat` counts it in clock ticks, 10 ms here). A vCPU taken away for a millisecond
/// shows up as a latency tail that no transport caused; each run reports it to tell them apart.
fn steal_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .and_then(|cpu| cpu.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1000 / hz
}

/// User + system CPU of the whole process (all threads), in microseconds.
fn cpu_us() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .expect("process cpu clock");
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000
}

#[derive(Clone, Debug)]
struct Args {
    role: String,
    transport: String,
    width: u32,
    height: u32,
    frames: u64,
    rate: u32,
    path: PathBuf,
    go: PathBuf,
    done: PathBuf,
    timeout: Duration,
    source: String,
    /// Where the consumer writes every frame's latency, to line a tail up with a trace.
    samples: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let role = it.next().expect("role: produce|consume");
    let transport = it.next().expect("transport");
    let mut a = Args {
        role,
        transport,
        width: 640,
        height: 480,
        frames: 300,
        rate: 0,
        path: "/tmp/fdlink-compare.sock".into(),
        go: "/tmp/fdlink-compare.go".into(),
        done: "/tmp/fdlink-compare.done".into(),
        timeout: Duration::from_secs(120),
        source: "videotestsrc".into(),
        samples: None,
    };
    for kv in it {
        let (k, v) = kv.split_once('=').expect("key=value");
        match k {
            "width" => a.width = v.parse().unwrap(),
            "height" => a.height = v.parse().unwrap(),
            "frames" => a.frames = v.parse().unwrap(),
            "rate" => a.rate = v.parse().unwrap(),
            "path" => a.path = v.into(),
            "go" => a.go = v.into(),
            "done" => a.done = v.into(),
            "timeout" => a.timeout = Duration::from_secs(v.parse().unwrap()),
            "source" if v == "videotestsrc" || v == "prefilled" => a.source = v.into(),
            "samples" => a.samples = Some(v.into()),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

fn frame_size(a: &Args) -> usize {
    // NV12: Y plane plus half-size interleaved UV (even sizes only here).
    (a.width * a.height * 3 / 2) as usize
}

fn wait_for_path(p: &Path, deadline: Instant) -> bool {
    while !p.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// What both sides record per frame; shared with the probes.
#[derive(Default)]
struct Record {
    frames: u64,
    first_ns: u64,
    last_ns: u64,
    first_cpu: u64,
    last_cpu: u64,
    next_seq: u64,
    gaps: u64,
    bad: u64,
    /// `steal_ms()` when the count started.
    first_steal_ms: u64,
    /// (sequence number, sent at, received at), CLOCK_MONOTONIC ns, of each frame after the
    /// warm-up: the latencies, and samples=.
    arrivals: Vec<(u64, u64, u64)>,
    started: bool,
}

impl Record {
    /// Producer: counts time and CPU from now, not from the first frame.
    fn start(&mut self) {
        self.started = true;
        self.count_from(mono_ns());
    }

    /// The origin of the time, CPU and steal counts.
    fn count_from(&mut self, now: u64) {
        self.first_ns = now;
        self.first_cpu = cpu_us();
        self.first_steal_ms = steal_ms();
    }

    fn mark(&mut self) {
        let now = mono_ns();
        if self.frames == 0 && !self.started {
            self.count_from(now);
        }
        self.last_ns = now;
        self.last_cpu = cpu_us();
        self.frames += 1;
    }

    fn consumed(&mut self, header: Option<(u32, u64)>) {
        let now = mono_ns();
        match header {
            Some((seq, ts)) => {
                let seq = seq as u64;
                if seq > self.next_seq {
                    self.gaps += seq - self.next_seq;
                }
                self.next_seq = seq + 1;
                if seq >= WARMUP_FRAMES && now >= ts {
                    self.arrivals.push((seq, ts, now));
                }
            }
            None => self.bad += 1,
        }
        self.mark();
    }

    fn json(&self, a: &Args, extra: &str) -> String {
        // Read before anything else here; 0 when no frame came.
        let steal = if self.frames > 0 || self.started {
            steal_ms().saturating_sub(self.first_steal_ms)
        } else {
            0
        };
        if let Some(path) = &a.samples {
            let mut text = String::from("# seq sent_ns received_ns latency_us\n");
            for (seq, sent, received) in &self.arrivals {
                let us = (received - sent) as f64 / 1000.0;
                text.push_str(&format!("{seq} {sent} {received} {us:.1}\n"));
            }
            std::fs::write(path, text).expect("samples file");
        }
        let mut lat_ns: Vec<u64> = self.arrivals.iter().map(|(_, s, r)| r - s).collect();
        lat_ns.sort_unstable();
        let pct = |p: usize| -> String {
            if lat_ns.is_empty() {
                "null".into()
            } else {
                let i = (lat_ns.len() * p / 100).min(lat_ns.len() - 1);
                format!("{:.1}", lat_ns[i] as f64 / 1000.0)
            }
        };
        let span_ns = self.last_ns.saturating_sub(self.first_ns);
        // Intervals between first and last frame; from start() every frame counts.
        let n = if self.started {
            self.frames
        } else {
            self.frames.saturating_sub(1)
        };
        let fps = if span_ns > 0 {
            format!("{:.1}", n as f64 * 1e9 / span_ns as f64)
        } else {
            "null".into()
        };
        let cpu = if n > 0 {
            format!("{:.1}", (self.last_cpu - self.first_cpu) as f64 / n as f64)
        } else {
            "null".into()
        };
        format!(
            "{{\"role\":\"{}\",\"transport\":\"{}\",\"width\":{},\"height\":{},\"rate\":{},\"expected\":{},\"frames\":{},\"gaps\":{},\"bad\":{},\"fps\":{},\"cpu_us_per_frame\":{},\"lat_samples\":{},\"lat_p50_us\":{},\"lat_p99_us\":{},\"lat_max_us\":{},\"steal_ms\":{}{}}}",
            a.role,
            a.transport,
            a.width,
            a.height,
            a.rate,
            a.frames,
            self.frames,
            self.gaps,
            self.bad,
            fps,
            cpu,
            lat_ns.len(),
            pct(50),
            pct(99),
            lat_ns
                .last()
                .map_or("null".into(), |v| format!("{:.1}", *v as f64 / 1000.0)),
            steal,
            extra
        )
    }
}

fn write_header(data: &mut [u8], seq: u32) {
    data[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    data[4..8].copy_from_slice(&seq.to_le_bytes());
    data[8..16].copy_from_slice(&mono_ns().to_le_bytes());
}

fn read_header(data: &[u8]) -> Option<(u32, u64)> {
    if data.len() < 16 || data[0..4] != MAGIC.to_le_bytes() {
        return None;
    }
    Some((
        u32::from_le_bytes(data[4..8].try_into().unwrap()),
        u64::from_le_bytes(data[8..16].try_into().unwrap()),
    ))
}

fn json_str(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

// ---------------------------------------------------------------- GStreamer transports

fn caps(a: &Args) -> String {
    // Unthrottled runs: a non-live source with a nominal rate (0/1 would make videotestsrc
    // send one still frame) and sync=false everywhere, so the transport sets the pace.
    let fps = if a.rate > 0 { a.rate } else { 1000 };
    format!(
        "video/x-raw,format=NV12,width={},height={},framerate={fps}/1",
        a.width, a.height
    )
}

fn open_fifo(p: &Path, write: bool) -> OwnedFd {
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc_cloexec())
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    f.into()
}

fn libc_cloexec() -> i32 {
    nix::fcntl::OFlag::O_CLOEXEC.bits()
}

fn fifo_pair(a: &Args) -> (PathBuf, PathBuf) {
    let base = a.path.display().to_string();
    (format!("{base}.m2s").into(), format!("{base}.s2m").into())
}

fn produce_gst(a: &Args) -> String {
    let size = frame_size(a);
    let p = a.path.display();
    let mut keep_fds: Vec<OwnedFd> = Vec::new();
    // identity drop-allocation=true answers the allocation query with nothing, so
    // videotestsrc uses its own system-memory pool and the sink has to copy.
    let sink = match a.transport.as_str() {
        "fdlink" => format!("fdlinksink name=sink socket-path={p} sync=false"),
        "fdlink-copy" => {
            format!(
                "identity drop-allocation=true ! fdlinksink name=sink socket-path={p} sync=false"
            )
        }
        // With its own allocator proposed, videotestsrc ! shmsink stops after filling the
        // area once (1.22, reproducible with gst-launch; see docs/performance.md), so shmsink
        // is measured copying into its area, which is how it is normally fed anyway.
        "shm" => format!(
            "identity drop-allocation=true ! shmsink name=sink socket-path={p} sync=false shm-size={}",
            size * 10 + (1 << 20)
        ),
        "shm-alloc" => format!(
            "shmsink name=sink socket-path={p} sync=false shm-size={}",
            size * 10 + (1 << 20)
        ),
        "unixfd" => format!("unixfdsink name=sink socket-path={p} sync=false"),
        "unixfd-copy" => {
            format!(
                "identity drop-allocation=true ! unixfdsink name=sink socket-path={p} sync=false"
            )
        }
        "ipcpipeline" => {
            let (m2s, s2m) = fifo_pair(a);
            for f in [&m2s, &s2m] {
                let _ = std::fs::remove_file(f);
                nix::unistd::mkfifo(f, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .expect("mkfifo");
            }
            // Same order as the consumer so neither open blocks forever.
            let out = open_fifo(&m2s, true);
            let inp = open_fifo(&s2m, false);
            let s = format!(
                "ipcpipelinesink name=sink fdin={} fdout={}",
                inp.as_raw_fd(),
                out.as_raw_fd()
            );
            keep_fds.push(out);
            keep_fds.push(inp);
            s
        }
        // No transport: what the source alone costs, to subtract from the producer rows.
        "local" => "fakesink name=sink sync=false".to_string(),
        t => panic!("unknown transport {t}"),
    };
    let source = match a.source.as_str() {
        "prefilled" => {
            assert!(a.rate == 0, "source=prefilled is for unthrottled runs");
            prefilled_src::register();
            format!("{} name=src num-buffers={}", prefilled_src::NAME, a.frames)
        }
        _ => format!(
            "videotestsrc name=src num-buffers={} pattern=black is-live={}",
            a.frames,
            a.rate > 0
        ),
    };
    let desc = format!("{source} ! {} ! {sink}", caps(a));
    eprintln!("producer: {desc}");
    let pipeline = gst::parse::launch(&desc)
        .expect("producer pipeline")
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    if sink.find_property("wait-for-connection").is_some() {
        sink.set_property("wait-for-connection", true);
    }
    let rec = Arc::new(Mutex::new(Record::default()));
    let copies = Arc::new(AtomicU64::new(0));
    let eos_seen = Arc::new(AtomicU64::new(0));
    let mem_type = Arc::new(Mutex::new(String::new()));
    {
        let rec = rec.clone();
        let copies = copies.clone();
        let eos_seen = eos_seen.clone();
        let mem_type = mem_type.clone();
        let seq = AtomicU64::new(0);
        sink.static_pad("sink").unwrap().add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_, info| {
                match &mut info.data {
                    Some(gst::PadProbeData::Buffer(buf)) => {
                        let before = buf.as_ptr();
                        let b = buf.make_mut();
                        if b.as_ptr() != before {
                            copies.fetch_add(1, Ordering::Relaxed);
                        }
                        let mut m = mem_type.lock().unwrap();
                        if m.is_empty() {
                            // What the sink gets: tells a pool/allocator path from a copy.
                            *m = b
                                .peek_memory(0)
                                .allocator()
                                .map(|al| al.type_().name().to_string())
                                .unwrap_or_else(|| "none".into());
                        }
                        drop(m);
                        if let Ok(mem) = b.peek_memory_mut(0)
                            && let Ok(mut map) = mem.map_writable()
                        {
                            write_header(&mut map, seq.fetch_add(1, Ordering::Relaxed) as u32);
                        }
                        rec.lock().unwrap().mark();
                    }
                    Some(gst::PadProbeData::Event(ev)) if ev.type_() == gst::EventType::Eos => {
                        eos_seen.store(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
    let deadline = Instant::now() + a.timeout;
    let bus = pipeline.bus().unwrap();
    let mut error = String::new();
    if a.transport != "ipcpipeline" {
        // PAUSED makes the sink listen; the consumer says "go" once it is up, so no frame is
        // sent before anyone listens (not every sink has wait-for-connection).
        pipeline.set_state(gst::State::Paused).expect("PAUSED");
        if a.transport != "local" && !wait_for_path(&a.go, deadline) {
            error = "consumer never said go".into();
        }
        // Prerolled: the first frame made and, for source=prefilled, the pool written.
        let left = deadline.saturating_duration_since(Instant::now());
        let (res, _, _) = pipeline.state(gst::ClockTime::from_nseconds(left.as_nanos() as u64));
        if error.is_empty() && res.is_err() {
            error = "producer never prerolled".into();
        }
    }
    if error.is_empty() {
        // CPU and time count from here: start-up and the preroll frame are not per-frame work.
        rec.lock().unwrap().start();
        pipeline.set_state(gst::State::Playing).expect("PLAYING");
        loop {
            if Instant::now() > deadline {
                error = "timeout".into();
                break;
            }
            if let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) {
                match msg.view() {
                    gst::MessageView::Eos(_) => break,
                    gst::MessageView::Error(e) => {
                        error = format!("{} ({:?})", e.error(), e.debug());
                        break;
                    }
                    _ => {}
                }
            }
            // ipcpipelinesink posts EOS only once the slave did; the consumer's done file
            // after our EOS is as good.
            if eos_seen.load(Ordering::Relaxed) == 1 && a.done.exists() {
                break;
            }
        }
    }
    // Keep everything alive until the consumer has what it will get.
    if a.transport != "local" {
        wait_for_path(&a.done, Instant::now() + Duration::from_secs(10));
    }
    let mut extra = format!(
        ",\"writable_copies\":{},\"error\":\"{}\",\"sink_input_memory\":\"{}\"",
        copies.load(Ordering::Relaxed),
        json_str(&error),
        json_str(&mem_type.lock().unwrap())
    );
    if sink.find_property("stats").is_some() {
        let v = sink.property_value("stats");
        let s = v
            .get::<gst::Structure>()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| format!("{v:?}"));
        extra.push_str(&format!(",\"sink_stats\":\"{}\"", json_str(&s)));
    }
    let out = rec.lock().unwrap().json(a, &extra);
    // Printed before teardown so a hang there cannot lose the numbers.
    println!("RESULT {out}");
    teardown(pipeline.upcast());
    drop(keep_fds);
    out
}

fn teardown(pipeline: gst::Element) {
    // A transport that hangs on shutdown must not hang the benchmark.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(10));
        eprintln!("teardown hung for 10 s; exiting");
        std::process::exit(3);
    });
    let _ = pipeline.set_state(gst::State::Null);
}

fn consume_gst(a: &Args) -> String {
    let deadline = Instant::now() + a.timeout;
    let p = a.path.display();
    let mut keep_fds: Vec<OwnedFd> = Vec::new();
    let pipeline: gst::Element = if a.transport == "ipcpipeline" {
        let (m2s, s2m) = fifo_pair(a);
        if !wait_for_path(&m2s, deadline) || !wait_for_path(&s2m, deadline) {
            panic!("fifos never appeared");
        }
        let inp = open_fifo(&m2s, false);
        let out = open_fifo(&s2m, true);
        let slave = gst::ElementFactory::make("ipcslavepipeline")
            .build()
            .expect("ipcslavepipeline");
        let src = gst::ElementFactory::make("ipcpipelinesrc")
            .property("fdin", inp.as_raw_fd())
            .property("fdout", out.as_raw_fd())
            .build()
            .expect("ipcpipelinesrc");
        let sink = gst::ElementFactory::make("fakesink")
            .name("sink")
            .property("sync", false)
            .build()
            .unwrap();
        let bin = slave.downcast_ref::<gst::Bin>().unwrap();
        bin.add_many([&src, &sink]).unwrap();
        src.link(&sink).unwrap();
        keep_fds.push(inp);
        keep_fds.push(out);
        slave
    } else {
        let src = match a.transport.as_str() {
            "fdlink" | "fdlink-copy" => format!("fdlinksrc socket-path={p} timeout=30000"),
            // shmsrc knows no caps: they have to be typed in.
            "shm" | "shm-alloc" => format!("shmsrc socket-path={p} is-live=true ! {}", caps(a)),
            "unixfd" | "unixfd-copy" => format!("unixfdsrc socket-path={p}"),
            t => panic!("unknown transport {t}"),
        };
        if !wait_for_path(&a.path, deadline) {
            panic!("{} never appeared", a.path.display());
        }
        let desc = format!("{src} ! fakesink name=sink sync=false");
        eprintln!("consumer: {desc}");
        gst::parse::launch(&desc).expect("consumer pipeline")
    };
    let bin = pipeline.downcast_ref::<gst::Bin>().unwrap();
    let sink = bin.by_name("sink").unwrap();
    let rec = Arc::new(Mutex::new(Record::default()));
    let (tx, rx) = mpsc::channel::<&'static str>();
    {
        let rec = rec.clone();
        let expected = a.frames;
        let tx = Mutex::new(tx);
        sink.static_pad("sink").unwrap().add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_, info| {
                match &info.data {
                    Some(gst::PadProbeData::Buffer(buf)) => {
                        let header = buf
                            .peek_memory(0)
                            .map_readable()
                            .ok()
                            .and_then(|m| read_header(&m));
                        let mut r = rec.lock().unwrap();
                        r.consumed(header);
                        if r.frames == expected {
                            let _ = tx.lock().unwrap().send("all");
                        }
                    }
                    Some(gst::PadProbeData::Event(ev)) if ev.type_() == gst::EventType::Eos => {
                        let _ = tx.lock().unwrap().send("eos");
                    }
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
    let bus = pipeline.bus().unwrap();
    let mut error = String::new();
    let mut end = "timeout";
    if a.transport != "ipcpipeline" {
        // The slave pipeline is driven by the producer; everything else is ours.
        // Sources open their connection in start(), which set_state runs; waiting for the
        // state change to complete would wait for a first frame that needs "go".
        pipeline.set_state(gst::State::Playing).expect("PLAYING");
        std::fs::write(&a.go, b"go").expect("go file");
    }
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    loop {
        if Instant::now() > deadline {
            break;
        }
        if let Ok(why) = rx.recv_timeout(Duration::from_millis(50)) {
            end = why;
            break;
        }
        while let Some(msg) = bus.pop() {
            if let gst::MessageView::Error(e) = msg.view() {
                error = format!("{} ({:?})", e.error(), e.debug());
            }
        }
        if !error.is_empty() {
            // Give frames still in flight a moment, then stop (shmsrc errors out when the
            // producer leaves).
            std::thread::sleep(Duration::from_millis(200));
            end = "error";
            break;
        }
        // Stalled after frames flowed: stop rather than wait for the full timeout.
        let n = rec.lock().unwrap().frames;
        if n != last_count {
            last_count = n;
            last_progress = Instant::now();
        } else if n > 0 && last_progress.elapsed() > Duration::from_secs(10) {
            end = "stalled";
            break;
        }
    }
    let _ = std::fs::write(&a.done, b"done");
    let mut extra = format!(",\"end\":\"{end}\",\"error\":\"{}\"", json_str(&error));
    if let Some(src) = bin.iterate_sources().into_iter().flatten().next()
        && src.find_property("stats").is_some()
    {
        let v = src.property_value("stats");
        if let Ok(s) = v.get::<gst::Structure>() {
            extra.push_str(&format!(",\"src_stats\":\"{}\"", json_str(&s.to_string())));
        }
    }
    let out = rec.lock().unwrap().json(a, &extra);
    println!("RESULT {out}");
    teardown(pipeline);
    drop(keep_fds);
    out
}

// ---------------------------------------------------------------- raw SCM_RIGHTS baseline

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    accept, bind, connect, listen, recv, recvmsg, send, sendmsg, socket,
};

fn seqpacket() -> OwnedFd {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket")
}

fn produce_raw(a: &Args) -> String {
    let size = frame_size(a);
    let _ = std::fs::remove_file(&a.path);
    let listener = seqpacket();
    bind(listener.as_raw_fd(), &UnixAddr::new(&a.path).unwrap()).expect("bind");
    listen(&listener, nix::sys::socket::Backlog::new(1).unwrap()).expect("listen");
    // The frames: a small pool of memfds, mapped once, as a producer's pool would be.
    let mut pool = Vec::new();
    for i in 0..4 {
        let fd = nix::sys::memfd::memfd_create(
            std::ffi::CString::new(format!("raw{i}"))
                .unwrap()
                .as_c_str(),
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .expect("memfd");
        nix::unistd::ftruncate(&fd, size as i64).expect("ftruncate");
        let map = unsafe {
            nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(size).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .expect("mmap");
        pool.push((fd, map.as_ptr() as *mut u8));
    }
    let conn = accept(listener.as_raw_fd()).expect("accept");
    let conn = unsafe { OwnedFd::from_raw_fd(conn) };
    let rec = Arc::new(Mutex::new(Record::default()));
    let msg = [0u8; 100];
    let start = Instant::now();
    let mut reply = [0u8; 16];
    for i in 0..a.frames {
        if a.rate > 0 {
            let due = start + Duration::from_nanos(i * 1_000_000_000 / a.rate as u64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        let (fd, ptr) = &pool[(i % 4) as usize];
        let head = unsafe { std::slice::from_raw_parts_mut(*ptr, 16) };
        write_header(head, i as u32);
        rec.lock().unwrap().mark();
        let mut m = msg;
        m[0] = 1;
        let fds = [fd.as_raw_fd()];
        sendmsg::<()>(
            conn.as_raw_fd(),
            &[IoSlice::new(&m)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        let n = recv(conn.as_raw_fd(), &mut reply, MsgFlags::empty()).expect("recv");
        assert_eq!(n, 16, "short reply");
    }
    let mut m = msg;
    m[0] = 2; // end of stream
    let _ = send(conn.as_raw_fd(), &m, MsgFlags::empty());
    wait_for_path(&a.done, Instant::now() + Duration::from_secs(10));
    let _ = std::fs::remove_file(&a.path);
    rec.lock()
        .unwrap()
        .json(a, ",\"writable_copies\":0,\"error\":\"\"")
}

fn consume_raw(a: &Args) -> String {
    let size = frame_size(a);
    let deadline = Instant::now() + a.timeout;
    if !wait_for_path(&a.path, deadline) {
        panic!("{} never appeared", a.path.display());
    }
    let conn = seqpacket();
    connect(conn.as_raw_fd(), &UnixAddr::new(&a.path).unwrap()).expect("connect");
    let mut rec = Record::default();
    let mut buf = [0u8; 128];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .expect("recvmsg");
        let n = r.bytes;
        let mut fds = Vec::new();
        for c in r.cmsgs().expect("cmsgs") {
            if let ControlMessageOwned::ScmRights(v) = c {
                fds.extend(v.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        if n == 0 || buf[0] != 1 {
            break;
        }
        let fd = fds.into_iter().next().expect("one fd");
        // What any consumer of the frame has to do: map it. Read the stamp, unmap.
        let map = unsafe {
            nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(size).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }
        .expect("mmap");
        let head = unsafe { std::slice::from_raw_parts(map.as_ptr() as *const u8, 16) };
        rec.consumed(read_header(head));
        unsafe { nix::sys::mman::munmap(map, size) }.expect("munmap");
        drop(fd);
        send(conn.as_raw_fd(), &[0u8; 16], MsgFlags::empty()).expect("reply");
    }
    let _ = std::fs::write(&a.done, b"done");
    rec.json(a, ",\"end\":\"eos\",\"error\":\"\"")
}

/// A source whose frames the CPU writes once per pool buffer, not once per frame (see the
/// module docs).
mod prefilled_src {
    use gst::glib;
    use gst::prelude::*;
    use gst::subclass::prelude::*;
    use gst_base::prelude::*;
    use gst_base::subclass::prelude::*;

    pub const NAME: &str = "harnessprefilledsrc";

    glib::wrapper! {
        pub struct PrefilledSrc(ObjectSubclass<imp::PrefilledSrc>)
            @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
    }

    pub fn register() {
        gst::Element::register(None, NAME, gst::Rank::NONE, PrefilledSrc::static_type())
            .expect("register the prefilled source");
    }

    mod imp {
        use super::*;
        use std::collections::HashSet;
        use std::sync::Mutex;

        #[derive(Default)]
        struct State {
            /// The memories written so far (pool buffers keep theirs from frame to frame).
            written: HashSet<usize>,
            frame: u64,
            duration: Option<gst::ClockTime>,
        }

        #[derive(Default)]
        pub struct PrefilledSrc {
            state: Mutex<State>,
        }

        impl PrefilledSrc {
            /// Writes every byte of `buffer` if the source has not written its memory before.
            fn write_once(&self, buffer: &mut gst::BufferRef) -> Result<(), gst::FlowError> {
                let first_use = {
                    let mut st = self.state.lock().unwrap();
                    (0..buffer.n_memory())
                        .any(|i| st.written.insert(buffer.peek_memory(i).as_ptr() as usize))
                };
                if first_use {
                    // Real pages, so that a copying transport reads memory, not the zero page.
                    let mut map = buffer.map_writable().map_err(|_| gst::FlowError::Error)?;
                    map.as_mut_slice().fill(0x80);
                }
                Ok(())
            }
        }

        #[glib::object_subclass]
        impl ObjectSubclass for PrefilledSrc {
            const NAME: &'static str = "FdlinkHarnessPrefilledSrc";
            type Type = super::PrefilledSrc;
            type ParentType = gst_base::PushSrc;
        }

        impl ObjectImpl for PrefilledSrc {
            fn constructed(&self) {
                self.parent_constructed();
                self.obj().set_format(gst::Format::Time);
            }
        }

        impl GstObjectImpl for PrefilledSrc {}

        impl ElementImpl for PrefilledSrc {
            fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
                static META: std::sync::LazyLock<gst::subclass::ElementMetadata> =
                    std::sync::LazyLock::new(|| {
                        gst::subclass::ElementMetadata::new(
                            "Prefilled frames",
                            "Source/Video",
                            "Frames from the negotiated pool, each buffer written once",
                            "fdlink",
                        )
                    });
                Some(&META)
            }

            fn pad_templates() -> &'static [gst::PadTemplate] {
                static TEMPLATES: std::sync::LazyLock<Vec<gst::PadTemplate>> =
                    std::sync::LazyLock::new(|| {
                        vec![
                            gst::PadTemplate::new(
                                "src",
                                gst::PadDirection::Src,
                                gst::PadPresence::Always,
                                &gst::Caps::new_empty_simple("video/x-raw"),
                            )
                            .unwrap(),
                        ]
                    });
                TEMPLATES.as_ref()
            }
        }

        impl BaseSrcImpl for PrefilledSrc {
            /// As videotestsrc decides: downstream's pool (the first proposed) or a video
            /// buffer pool of its own, with VideoMeta where downstream takes it.
            fn decide_allocation(
                &self,
                query: &mut gst::query::Allocation,
            ) -> Result<(), gst::LoggableError> {
                let caps = query.get_owned().0.ok_or_else(|| {
                    gst::loggable_error!(gst::CAT_RUST, "allocation without caps")
                })?;
                let info = gst_video::VideoInfo::from_caps(&caps)
                    .map_err(|_| gst::loggable_error!(gst::CAT_RUST, "not video: {caps}"))?;
                let proposed = query.allocation_pools().next();
                let (pool, size, min, max) = match proposed {
                    Some((Some(pool), size, min, max)) => {
                        (pool, size.max(info.size() as u32), min, max)
                    }
                    Some((None, size, min, max)) => (
                        gst_video::VideoBufferPool::new().upcast(),
                        size.max(info.size() as u32),
                        min,
                        max,
                    ),
                    None => (
                        gst_video::VideoBufferPool::new().upcast(),
                        info.size() as u32,
                        0,
                        0,
                    ),
                };
                let mut config = pool.config();
                config.set_params(Some(&caps), size, min, max);
                // The allocator downstream asks for (unixfdsink's shm allocator), as BaseSrc
                // and videotestsrc take it.
                if let Some((allocator, params)) = query.allocation_params().next() {
                    config.set_allocator(allocator.as_ref(), Some(&params));
                }
                if query
                    .find_allocation_meta::<gst_video::VideoMeta>()
                    .is_some()
                {
                    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str());
                }
                pool.set_config(config)
                    .map_err(|e| gst::loggable_error!(gst::CAT_RUST, "pool config: {e}"))?;
                if query.allocation_pools().len() == 0 {
                    query.add_allocation_pool(Some(&pool), size, min, max);
                } else {
                    query.set_nth_allocation_pool(0, Some(&pool), size, min, max);
                }
                // The pool's first buffers written now, while the producer prerolls and
                // before anything is measured; buffers the pool adds later are written at
                // their first use.
                if min > 0 {
                    pool.set_active(true)
                        .map_err(|e| gst::loggable_error!(gst::CAT_RUST, "pool: {e}"))?;
                    let dont_wait = gst::BufferPoolAcquireParams::with_flags(
                        gst::BufferPoolAcquireFlags::DONTWAIT,
                    );
                    let mut held = Vec::new();
                    while held.len() < min as usize {
                        let Ok(mut buffer) = pool.acquire_buffer(Some(&dont_wait)) else {
                            break;
                        };
                        self.write_once(buffer.get_mut().unwrap())
                            .map_err(|e| gst::loggable_error!(gst::CAT_RUST, "fill: {e:?}"))?;
                        held.push(buffer);
                    }
                }
                Ok(())
            }

            fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
                let info = gst_video::VideoInfo::from_caps(caps)
                    .map_err(|_| gst::loggable_error!(gst::CAT_RUST, "not video: {caps}"))?;
                let fps = info.fps();
                let mut st = self.state.lock().unwrap();
                st.duration = (fps.numer() > 0).then(|| {
                    gst::ClockTime::SECOND
                        .mul_div_floor(fps.denom() as u64, fps.numer() as u64)
                        .unwrap()
                });
                Ok(())
            }
        }

        impl PushSrcImpl for PrefilledSrc {
            fn create(
                &self,
                _buffer: Option<&mut gst::BufferRef>,
            ) -> Result<gst_base::subclass::base_src::CreateSuccess, gst::FlowError> {
                // BaseSrc's default allocation: from the pool it negotiated downstream.
                let pool = self
                    .obj()
                    .buffer_pool()
                    .ok_or(gst::FlowError::NotNegotiated)?;
                let mut buffer = pool.acquire_buffer(None)?;
                let b = buffer.get_mut().ok_or(gst::FlowError::Error)?;
                self.write_once(b)?;
                let mut st = self.state.lock().unwrap();
                if let Some(d) = st.duration {
                    b.set_pts(d * st.frame);
                    b.set_duration(d);
                }
                st.frame += 1;
                Ok(gst_base::subclass::base_src::CreateSuccess::NewBuffer(
                    buffer,
                ))
            }
        }
    }
}

fn main() {
    let a = parse_args();
    if a.transport == "raw" {
        let out = match a.role.as_str() {
            "produce" => produce_raw(&a),
            _ => consume_raw(&a),
        };
        println!("RESULT {out}");
    } else {
        gst::init().expect("gst init");
        match a.role.as_str() {
            "produce" => produce_gst(&a),
            _ => consume_gst(&a),
        };
    }
    // Skip destructors of half-torn-down pipelines.
    std::process::exit(0);
}
