//! The GStreamer transports: each producer and consumer pipeline, with the measuring probes.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_base::prelude::*;

use crate::prefilled_src;
use crate::record::{Record, json_str, read_header, write_header};
use crate::{Args, frame_size, wait_for_path};

pub(crate) fn caps(a: &Args) -> String {
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

pub(crate) fn produce_gst(a: &Args) -> String {
    let size = frame_size(a);
    let p = a.path.display();
    let mut keep_fds: Vec<OwnedFd> = Vec::new();
    // identity drop-allocation=true answers the allocation query with nothing, so
    // videotestsrc uses its own system-memory pool and the sink has to copy.
    let sink = match a.transport.as_str() {
        "fdlink" | "fdlink-app" | "fdlink-py" => {
            format!("fdlinksink name=sink socket-path={p} sync=false")
        }
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
    if a.source == "prefilled" && a.rate > 0 {
        // Paced by the clock at `rate`, as a camera is (see prefilled_src).
        let src = pipeline.by_name("src").unwrap();
        src.downcast_ref::<gst_base::BaseSrc>()
            .unwrap()
            .set_live(true);
    }
    let sink = pipeline.by_name("sink").unwrap();
    if sink.find_property("wait-for-connection").is_some() {
        // With consumers=0 nobody connects: the sink drops every frame.
        sink.set_property("wait-for-connection", a.consumers != Some(0));
    }
    let rec = Arc::new(Mutex::new(Record::with_warmup(a.warmup)));
    let copies = Arc::new(AtomicU64::new(0));
    let eos_seen = Arc::new(AtomicU64::new(0));
    let mem_type = Arc::new(Mutex::new(String::new()));
    {
        let rec = rec.clone();
        let copies = copies.clone();
        let eos_seen = eos_seen.clone();
        let mem_type = mem_type.clone();
        let seq = AtomicU64::new(0);
        let warmup = a.warmup;
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
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mem) = b.peek_memory_mut(0)
                            && let Ok(mut map) = mem.map_writable()
                        {
                            write_header(&mut map, n as u32);
                        }
                        if n >= warmup {
                            rec.lock().unwrap().mark();
                        }
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
        if let Some(n) = a.consumers {
            if !wait_for_clients(&sink, n, deadline) {
                error = format!("fewer than {n} consumers connected before the timeout");
            }
        } else if a.transport != "local" && !wait_for_path(&a.go, deadline) {
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
        // With a warm-up they count from the first frame after it.
        if a.warmup == 0 {
            rec.lock().unwrap().start();
        }
        pipeline.set_state(gst::State::Playing).expect("PLAYING");
        loop {
            if Instant::now() > deadline {
                error = "timeout".into();
                break;
            }
            // Seldom: this thread's wake-ups count in the process's CPU per frame.
            if let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(500)) {
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
    // Keep everything alive until the consumer has what it will get; many consumers on a
    // loaded machine take longer to drain and leave.
    let linger = Duration::from_secs(if a.consumers.is_some() { 30 } else { 10 });
    if a.transport != "local" && a.consumers != Some(0) {
        wait_for_path(&a.done, Instant::now() + linger);
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

/// Waits until `sink` (fdlinksink) has `n` consumers connected; false at the deadline.
fn wait_for_clients(sink: &gst::Element, n: u32, deadline: Instant) -> bool {
    while sink.property::<u32>("num-clients") < n {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
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

pub(crate) fn consume_gst(a: &Args) -> String {
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
    let rec = Arc::new(Mutex::new(Record::with_warmup(a.warmup)));
    let (tx, rx) = mpsc::channel::<&'static str>();
    {
        let rec = rec.clone();
        let expected = a.counted_frames();
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
        // Seldom: this thread's wake-ups count in the process's CPU per frame.
        if let Ok(why) = rx.recv_timeout(Duration::from_millis(500)) {
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
