//! `fdlink-peer`: one end of an fdlink, as a process. Runs the demo, and is the producer and
//! consumer processes of the integration tests.
//!
//! ```text
//! fdlink-peer demo [--frames N] [--size WxH] [--copy]
//! fdlink-peer produce [OPTIONS] PIPELINE...       (a pipeline with an fdlinksink)
//! fdlink-peer consume [OPTIONS] PIPELINE...       (a pipeline with an fdlinksrc)
//! fdlink-peer produce-pattern --socket PATH --frames N --pool-max N [--pool-min N]
//!     [--size WxH] [--sink-props "prop=value ..."] [--wait-clients N] [--live]
//!     (the pool starts with pool-min buffers, default pool-max, and grows to pool-max while
//!     consumers hold them; prints `pool-waits N
//!     longest-us U`: acquires from the pool that waited over 5 ms for a buffer to come back;
//!     its `stats` lines carry the same counts so far as `pool-waits` and
//!     `pool-wait-longest-us`; `--live` makes its appsrc a live source)
//! fdlink-peer produce-dmabuf --source udmabuf|dma-heap|vgem --socket PATH --frames N
//!     --pool-max N [--size WxH] [--layout single|offsets|planes]
//! ```
//!
//! produce-dmabuf pushes NV12 frames in real kernel dmabufs (each filled with `offset % 251`):
//! `single` is one memory per frame; `offsets` two memories (Y, UV) in one dmabuf at nonzero
//! offsets; `planes` one dmabuf per plane. Strides are padded past the width.
//!
//! Options of produce/consume:
//! - `--frames-log`: print one `frame` line per buffer (offset, CRC-32 of its bytes, the
//!   (dev, inode) of each fd-backed memory, and whether it is a delta unit) at the fdlink
//!   element, or at the element named `check` if the pipeline has one.
//! - `--slow-ms N`: sleep N ms in that probe per buffer, checking that the frame did not
//!   change meanwhile (`overwritten` line if it did).
//! - `--pattern`: check each buffer is filled with `offset % 251` (see produce-pattern).
//! - `--stats-every MS`: print the fdlink element's `stats` every MS ms.
//! - `--seconds S`: send EOS after S seconds.
//! - `--wait-clients N`: keep the pipeline in PAUSED until the fdlinksink has N consumers.
//! - `--wait-clients-gone`: after EOS, wait (up to 10 s) until the fdlinksink has no consumer
//!   left before printing the final `stats` line, so it counts the releases they sent as they
//!   stopped.
//! - `--events-log`: print an `event NAME` line per downstream event at the fdlink element's
//!   pad (leaving an fdlinksrc, reaching an fdlinksink): `event caps CAPS`, `event stream-start
//!   STREAM-ID`, `event segment base=B start=S time=T rate=R`, `event gap timestamp=T
//!   duration=D`, `event NAME` for the others;
//!   and `upstream qos seqnum=N timestamp=T diff=D proportion=P` for each QoS event going
//!   upstream through that pad (T in the running time of the pipeline it is in, -1 if none).
//! - `--discont-log`: print `discont offset=N size=S` for each buffer leaving the fdlinksrc
//!   with the DISCONT flag.
//! - `--seek-after N --seek-to S`: after N frames, a flushing seek of the pipeline to S seconds.
//! - `--query-after N`, `--query-every N`: after N frames (every N frames), print
//!   `position P duration D latency LIVE MIN MAX at T` (ns, -1 if unknown; T is
//!   CLOCK_MONOTONIC when asked).
//! - `--pause-after N --pause-ms M`: after N frames, set the pipeline to PAUSED, and back to
//!   PLAYING M ms later (`paused`, `resumed` lines).
//! - `--caps-after N CAPS`: after N frames, set `caps` of the element named `cf`.
//! - `--post-after N`: after N frames, post an element message `fdlink-test, n=N` and a
//!   buffering message (50%) on the pipeline's bus.
//! - `--messages-log`: print `message TYPE SOURCE STRUCTURE` for element, buffering,
//!   request-state, latency, QoS and warning messages, `state NEW` for the pipeline's states, and
//!   `async-done at T` (CLOCK_MONOTONIC ns) when the pipeline finished prerolling.
//! - `--gaps`: add `gap-max-us` to each `stats` line: the longest time between two consecutive
//!   buffers at the fdlink element's pad (sink pad of an fdlinksink, src pad of an fdlinksrc)
//!   since the previous `stats` line, in µs (a gap still open is counted in the line after the
//!   buffer that ends it). produce-pattern takes it too.
//! - `--eos-file PATH`: send EOS once PATH exists (checked every 20 ms); produce-pattern takes
//!   it too.
//! - `--start-paused`: set the pipeline to PAUSED only, never to PLAYING (an fdlinksrc
//!   `mode=follow` takes it further).
//! - `--gap-first`: before the first buffer reaching the fdlinksink, send it a gap event from
//!   the segment's start to that buffer's PTS (`sent gap timestamp=T duration=D` line).
//! - `--preroll-delay-ms N`: hold the first buffer, and the first after each flush, N ms at
//!   the fdlink element (`preroll-delay at T` line, T CLOCK_MONOTONIC ns), so the pipeline
//!   prerolls late.
//!
//! Output lines: `frame ...`, `stats <structure>`, `overwritten ...`, `pattern-mismatch ...`,
//! `eos`, and on failure `error: ...` on stderr with exit code 1.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

mod dmabuf_sources;

fn usage() -> ! {
    eprintln!(
        "usage: fdlink-peer demo [--frames N] [--size WxH] [--copy]\n\
         \x20      fdlink-peer produce|consume [--frames-log] [--slow-ms N] [--pattern] [--stats-every MS] [--seconds S] PIPELINE...\n\
         \x20      fdlink-peer produce-pattern --socket PATH --frames N --pool-max N [--pool-min N] [--size WxH]"
    );
    std::process::exit(2)
}

/// Adds fields to a `stats` line.
type StatsExtra = Arc<dyn Fn(&mut gst::StructureRef) + Send + Sync>;

#[derive(Default)]
struct Opts {
    frames_log: bool,
    slow_ms: u64,
    pattern: bool,
    stats_every_ms: u64,
    seconds: Option<f64>,
    frames: u64,
    size: (u32, u32),
    socket: Option<String>,
    pool_max: u32,
    /// produce-pattern: buffers the pool starts with (0: pool_max).
    pool_min: u32,
    copy: bool,
    source: Option<String>,
    layout: Option<String>,
    wait_clients: u32,
    /// After EOS, wait (up to 10 s) until every consumer has left before the final stats.
    wait_clients_gone: bool,
    events_log: bool,
    discont_log: bool,
    seek_after: Option<u64>,
    seek_to: f64,
    query_after: Option<u64>,
    query_every: Option<u64>,
    pause_after: Option<u64>,
    pause_ms: u64,
    caps_after: Option<(u64, String)>,
    post_after: Option<u64>,
    messages_log: bool,
    gaps: bool,
    live: bool,
    eos_file: Option<String>,
    start_paused: bool,
    preroll_delay_ms: u64,
    gap_first: bool,
    sink_props: Vec<(String, String)>,
    rest: Vec<String>,
}

fn parse_opts(args: &[String]) -> Opts {
    let mut o = Opts {
        frames: 600,
        size: (1920, 1080),
        pool_max: 4,
        ..Default::default()
    };
    let mut it = args.iter();
    let num =
        |v: Option<&String>| -> u64 { v.and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()) };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--frames-log" => o.frames_log = true,
            "--pattern" => o.pattern = true,
            "--copy" => o.copy = true,
            "--slow-ms" => o.slow_ms = num(it.next()),
            "--stats-every" => o.stats_every_ms = num(it.next()),
            "--frames" => o.frames = num(it.next()),
            "--pool-max" => o.pool_max = num(it.next()) as u32,
            "--pool-min" => o.pool_min = num(it.next()) as u32,
            "--wait-clients" => o.wait_clients = num(it.next()) as u32,
            "--wait-clients-gone" => o.wait_clients_gone = true,
            "--events-log" => o.events_log = true,
            "--discont-log" => o.discont_log = true,
            "--seek-after" => o.seek_after = Some(num(it.next())),
            "--query-after" => o.query_after = Some(num(it.next())),
            "--query-every" => o.query_every = Some(num(it.next()).max(1)),
            "--pause-after" => o.pause_after = Some(num(it.next())),
            "--pause-ms" => o.pause_ms = num(it.next()),
            "--post-after" => o.post_after = Some(num(it.next())),
            "--messages-log" => o.messages_log = true,
            "--gaps" => o.gaps = true,
            "--live" => o.live = true,
            "--start-paused" => o.start_paused = true,
            "--gap-first" => o.gap_first = true,
            "--preroll-delay-ms" => o.preroll_delay_ms = num(it.next()),
            "--eos-file" => o.eos_file = Some(it.next().cloned().unwrap_or_else(|| usage())),
            "--sink-props" => {
                let props = it.next().unwrap_or_else(|| usage());
                for kv in props.split_whitespace() {
                    let (k, v) = kv.split_once('=').unwrap_or_else(|| usage());
                    o.sink_props.push((k.into(), v.into()));
                }
            }
            "--caps-after" => {
                let n = num(it.next());
                o.caps_after = Some((n, it.next().cloned().unwrap_or_else(|| usage())));
            }
            "--seek-to" => {
                o.seek_to = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--seconds" => {
                o.seconds = Some(
                    it.next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--socket" => o.socket = Some(it.next().cloned().unwrap_or_else(|| usage())),
            "--source" => o.source = Some(it.next().cloned().unwrap_or_else(|| usage())),
            "--layout" => o.layout = Some(it.next().cloned().unwrap_or_else(|| usage())),
            "--size" => {
                let s = it.next().unwrap_or_else(|| usage());
                let (w, h) = s.split_once('x').unwrap_or_else(|| usage());
                o.size = (
                    w.parse().unwrap_or_else(|_| usage()),
                    h.parse().unwrap_or_else(|_| usage()),
                );
            }
            _ => {
                o.rest.push(a.clone());
                o.rest.extend(it.by_ref().cloned());
            }
        }
    }
    o
}

static BASELINE_FDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn open_fd_targets() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn init() {
    gst::init().expect("GStreamer initializes");
    gstfdlink::plugin_register_static().expect("fdlink plugin registers");
    let _ = BASELINE_FDS.set(open_fd_targets());
}

/// Fds opened since init() that are still open (the pipeline is gone by now): a `leaked-fds`
/// line lists them, each as what it points at. (Reading /proc/self/fd opens one fd itself;
/// it is closed again before the second read.)
fn report_fds() {
    let Some(base) = BASELINE_FDS.get() else {
        return;
    };
    let mut now = open_fd_targets();
    for b in base {
        if let Some(i) = now.iter().position(|n| n == b) {
            now.remove(i);
        }
    }
    print_line(format!("leaked-fds {}", now.join(" ")).trim_end());
}

fn print_line(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// The fdlink element of a pipeline (the first fdlinksink or fdlinksrc).
fn fdlink_element(pipeline: &gst::Bin) -> Option<gst::Element> {
    pipeline.iterate_recurse().into_iter().flatten().find(|e| {
        e.factory()
            .is_some_and(|f| f.name() == "fdlinksink" || f.name() == "fdlinksrc")
    })
}

fn buffer_crc(buffer: &gst::BufferRef) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for mem in buffer.iter_memories() {
        if let Ok(m) = mem.map_readable() {
            h.update(m.as_slice());
        }
    }
    h.finalize()
}

/// The buffer's GstVideoMeta as `FORMAT:WxH:offsets:strides`, or `-`.
fn video_meta_text(buffer: &gst::BufferRef) -> String {
    match buffer.meta::<gst_video::VideoMeta>() {
        Some(m) => format!(
            "{}:{}x{}:{:?}:{:?}",
            m.format().to_str(),
            m.width(),
            m.height(),
            m.offset(),
            m.stride()
        )
        .replace(' ', ""),
        None => "-".into(),
    }
}

fn buffer_files(buffer: &gst::BufferRef) -> String {
    let mut files = Vec::new();
    for mem in buffer.iter_memories() {
        if let Some(f) = mem.downcast_memory_ref::<gst_allocators::FdMemory>() {
            // SAFETY: the buffer (borrowed here) keeps the memory and its fd open.
            let fd = unsafe { BorrowedFd::borrow_raw(f.fd()) };
            if let Ok((dev, ino)) = fdlink::fdkind::file_identity(fd) {
                let exp = dmabuf_sources::exporter(f.fd()).unwrap_or_else(|| "file".into());
                files.push(format!("{dev}:{ino}:{exp}"));
            }
        }
    }
    if files.is_empty() {
        "-".into()
    } else {
        files.join(",")
    }
}

/// Checks the produce-pattern fill: sampled bytes all equal `offset % 251`.
fn pattern_ok(buffer: &gst::BufferRef) -> bool {
    let want = (buffer.offset() % 251) as u8;
    buffer.iter_memories().all(|mem| {
        mem.map_readable().is_ok_and(|m| {
            let s = m.as_slice();
            s.iter().step_by(4093).all(|&b| b == want) && s.last().is_none_or(|&b| b == want)
        })
    })
}

fn add_probe(pipeline: &gst::Bin, element: &gst::Element, o: &Opts) {
    let (target, pad) = match pipeline.by_name("check") {
        Some(check) => (check.clone(), check.static_pad("sink")),
        None => {
            let is_src = element.factory().is_some_and(|f| f.name() == "fdlinksrc");
            let pad = if is_src {
                element.static_pad("src")
            } else {
                element.static_pad("sink")
            };
            (element.clone(), pad)
        }
    };
    let Some(pad) = pad else {
        eprintln!("error: no pad to probe on {}", target.name());
        std::process::exit(2);
    };
    let (frames_log, slow, pattern) = (o.frames_log, o.slow_ms, o.pattern);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let crc = (frames_log || slow > 0).then(|| buffer_crc(buffer));
        if pattern && !pattern_ok(buffer) {
            print_line(&format!("pattern-mismatch offset={}", buffer.offset()));
        }
        if let Some(crc) = crc {
            if frames_log {
                print_line(&format!(
                    "frame offset={} pts={} size={} crc={crc:08x} files={} vmeta={} mems={} delta={}",
                    buffer.offset(),
                    buffer.pts().map_or(-1i64, |t| t.nseconds() as i64),
                    buffer.size(),
                    buffer_files(buffer),
                    video_meta_text(buffer),
                    buffer.n_memory(),
                    u8::from(buffer.flags().contains(gst::BufferFlags::DELTA_UNIT))
                ));
            }
            if slow > 0 {
                std::thread::sleep(Duration::from_millis(slow));
                let after = buffer_crc(buffer);
                if after != crc || (pattern && !pattern_ok(buffer)) {
                    print_line(&format!(
                        "overwritten offset={} crc-before={crc:08x} crc-after={after:08x}",
                        buffer.offset()
                    ));
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
}

fn print_stats(element: &gst::Element, extra: &[StatsExtra]) {
    let mut s = element.property::<gst::Structure>("stats");
    for add in extra {
        add(&mut s);
    }
    print_line(&format!("stats {s}"));
}

/// `--gaps`: measures, with a buffer probe on `pad`, the longest time between two consecutive
/// buffers; the returned extra adds it to a `stats` line as `gap-max-us` and starts a new
/// window.
fn gap_meter(pad: &gst::Pad) -> StatsExtra {
    // (when the last buffer came, longest gap in this window)
    let meter = Arc::new(Mutex::new((None::<Instant>, Duration::ZERO)));
    let probe_meter = meter.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        let now = Instant::now();
        let mut m = probe_meter.lock().unwrap();
        if let Some(last) = m.0 {
            m.1 = m.1.max(now - last);
        }
        m.0 = Some(now);
        gst::PadProbeReturn::Ok
    });
    Arc::new(move |s| {
        let mut m = meter.lock().unwrap();
        s.set("gap-max-us", m.1.as_micros() as u64);
        m.1 = Duration::ZERO;
    })
}

/// The pad of an fdlink element that buffers cross: an fdlinksrc's src, an fdlinksink's sink.
fn fdlink_pad(element: &gst::Element) -> Option<gst::Pad> {
    element
        .static_pad("src")
        .or_else(|| element.static_pad("sink"))
}

/// Runs a pipeline to EOS or error, `extra` adding fields to its `stats` lines. Returns the
/// exit code.
fn run(
    pipeline: gst::Pipeline,
    element: Option<gst::Element>,
    o: &Opts,
    extra: &[StatsExtra],
) -> i32 {
    let stop_at = o
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let stats_every = (o.stats_every_ms > 0).then(|| Duration::from_millis(o.stats_every_ms));
    let mut next_stats = Instant::now();
    if o.wait_clients > 0
        && let Some(el) = &element
    {
        // The sink listens from READY on: go to PAUSED (it prerolls), wait for the consumers.
        let _ = pipeline.set_state(gst::State::Paused);
        let deadline = Instant::now() + Duration::from_secs(30);
        while el.property::<u32>("num-clients") < o.wait_clients {
            if Instant::now() > deadline {
                eprintln!(
                    "error: fewer than {} consumers came within 30 s",
                    o.wait_clients
                );
                let _ = pipeline.set_state(gst::State::Null);
                return 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let bus = pipeline.bus().expect("pipeline has a bus");
    if o.messages_log {
        // Timed as it is posted, not as this loop gets to it, and in the bus's sync handler,
        // which runs before any `sync-message` handler: before a following fdlinksrc reports
        // the preroll to its producer, so a producer that waited for it is always later.
        let weak = pipeline.downgrade();
        bus.set_sync_handler(move |_, msg| {
            if let gst::MessageView::AsyncDone(_) = msg.view()
                && let Some(p) = weak.upgrade()
                && msg.src() == Some(p.upcast_ref())
            {
                print_line(&format!(
                    "async-done at {}",
                    gstfdlink::clock::monotonic_now()
                ));
            }
            gst::BusSyncReply::Pass
        });
    }
    let start = if o.start_paused {
        gst::State::Paused
    } else {
        gst::State::Playing
    };
    if let Err(e) = pipeline.set_state(start) {
        eprintln!("error: cannot start pipeline: {e}");
        drain_errors(&pipeline);
        let _ = pipeline.set_state(gst::State::Null);
        return 1;
    }
    let mut sent_eos = false;
    let code = loop {
        if let (Some(every), Some(el)) = (stats_every, &element)
            && Instant::now() >= next_stats
        {
            print_stats(el, extra);
            next_stats = Instant::now() + every;
        }
        let eos_file_there = || {
            o.eos_file
                .as_ref()
                .is_some_and(|f| std::path::Path::new(f).exists())
        };
        if !sent_eos && (stop_at.is_some_and(|t| Instant::now() >= t) || eos_file_there()) {
            pipeline.send_event(gst::event::Eos::new());
            sent_eos = true;
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(20)) else {
            continue;
        };
        if o.messages_log {
            log_message(&pipeline, &msg);
        }
        match msg.view() {
            gst::MessageView::Eos(_) => {
                print_line("eos");
                break 0;
            }
            gst::MessageView::Error(err) => {
                eprintln!(
                    "error: {} (from {})",
                    err.error(),
                    err.src().map_or_else(|| "?".into(), |s| s.path_string())
                );
                if let Some(d) = err.debug() {
                    eprintln!("debug: {d}");
                }
                break 1;
            }
            _ => {}
        }
    };
    if let Some(el) = &element {
        if o.wait_clients_gone && el.find_property("num-clients").is_some() {
            // Consumers release what they hold as they stop: the final stats count it all.
            let deadline = Instant::now() + Duration::from_secs(10);
            while el.property::<u32>("num-clients") > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        print_stats(el, extra);
    }
    let _ = pipeline.set_state(gst::State::Null);
    code
}

/// The `--messages-log` line for a bus message, if it is of a kind worth a line.
fn log_message(pipeline: &gst::Pipeline, msg: &gst::Message) {
    let src = msg.src().map_or_else(|| "?".into(), |s| s.path_string());
    let line = match msg.view() {
        gst::MessageView::StateChanged(s) if msg.src() == Some(pipeline.upcast_ref()) => {
            format!("state {:?}", s.current())
        }
        gst::MessageView::Element(_)
        | gst::MessageView::Buffering(_)
        | gst::MessageView::RequestState(_)
        | gst::MessageView::Latency(_)
        | gst::MessageView::Qos(_) => format!(
            "message {:?} {src} {}",
            msg.type_(),
            msg.structure().map_or_else(String::new, |s| s.to_string())
        ),
        gst::MessageView::Warning(w) => format!("message warning {src} {}", w.error()),
        _ => return,
    };
    print_line(&line);
}

fn drain_errors(pipeline: &gst::Pipeline) {
    let bus = pipeline.bus().expect("pipeline has a bus");
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(err) = msg.view() {
            eprintln!("error: {}", err.error());
            if let Some(d) = err.debug() {
                eprintln!("debug: {d}");
            }
        }
    }
}

fn launch(o: &Opts) -> i32 {
    if o.rest.is_empty() {
        usage();
    }
    init();
    let desc = o.rest.join(" ");
    let pipeline = match gst::parse::launch(&desc) {
        Ok(p) => p.downcast::<gst::Pipeline>().unwrap_or_else(|_| {
            eprintln!("error: not a pipeline: {desc}");
            std::process::exit(2)
        }),
        Err(e) => {
            eprintln!("error: cannot parse pipeline: {e}");
            return 2;
        }
    };
    let element = fdlink_element(pipeline.upcast_ref());
    if o.frames_log || o.slow_ms > 0 || o.pattern {
        match element.clone().or_else(|| pipeline.by_name("check")) {
            Some(el) => add_probe(pipeline.upcast_ref(), &el, o),
            None => {
                eprintln!("error: nothing to probe: no fdlink element and no element named check");
                return 2;
            }
        }
    }
    if let Some(el) = &element
        && (o.events_log
            || o.discont_log
            || o.seek_after.is_some()
            || o.query_after.is_some()
            || o.query_every.is_some()
            || o.pause_after.is_some()
            || o.caps_after.is_some()
            || o.post_after.is_some()
            || o.preroll_delay_ms > 0
            || o.gap_first)
    {
        add_control_probes(&pipeline, el, o);
    }
    let mut extra = Vec::new();
    if o.gaps {
        match element.as_ref().and_then(fdlink_pad) {
            Some(pad) => extra.push(gap_meter(&pad)),
            None => {
                eprintln!("error: --gaps needs an fdlink element");
                return 2;
            }
        }
    }
    run(pipeline, element, o, &extra)
}

/// Event log, and seek / position queries issued from another thread after N buffers, as an
/// application would.
fn add_control_probes(pipeline: &gst::Pipeline, element: &gst::Element, o: &Opts) {
    let pad = fdlink_pad(element).expect("fdlink element has a pad");
    if o.events_log {
        let events = gst::PadProbeType::EVENT_DOWNSTREAM
            | gst::PadProbeType::EVENT_FLUSH
            | gst::PadProbeType::EVENT_UPSTREAM;
        pad.add_probe(events, |_, info| {
            if let Some(ev) = info.event() {
                match ev.view() {
                    gst::EventView::Qos(q) => {
                        let (_, proportion, diff, timestamp) = q.get();
                        print_line(&format!(
                            "upstream qos seqnum={} timestamp={} diff={diff} proportion={proportion:.3}",
                            gst::glib::translate::IntoGlib::into_glib(ev.seqnum()),
                            timestamp.map_or(-1, |t| t.nseconds() as i64),
                        ))
                    }
                    _ if ev.is_upstream() && !ev.is_downstream() => {}
                    gst::EventView::Caps(c) => print_line(&format!("event caps {}", c.caps())),
                    gst::EventView::StreamStart(s) => {
                        print_line(&format!("event stream-start {}", s.stream_id()))
                    }
                    gst::EventView::Segment(s) => {
                        let seg = s.segment();
                        print_line(&format!(
                            "event segment base={} start={} time={} rate={}",
                            seg.base().value(),
                            seg.start().value(),
                            seg.time().value(),
                            seg.rate()
                        ))
                    }
                    gst::EventView::Gap(g) => {
                        let (timestamp, duration) = g.get();
                        print_line(&format!(
                            "event gap timestamp={} duration={}",
                            timestamp.nseconds(),
                            duration.map_or(-1, |d| d.nseconds() as i64)
                        ))
                    }
                    _ => print_line(&format!("event {}", ev.type_().name())),
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
    if o.gap_first {
        let upstream = pad.peer().expect("--gap-first: the fdlinksink is linked");
        let first = std::sync::atomic::AtomicBool::new(true);
        upstream.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            if let Some(pts) = info.buffer().and_then(|b| b.pts())
                && first.swap(false, Ordering::SeqCst)
            {
                let start = pad
                    .sticky_event::<gst::event::Segment>(0)
                    .and_then(|s| s.segment().downcast_ref::<gst::ClockTime>()?.start())
                    .unwrap_or(gst::ClockTime::ZERO);
                let duration = pts.saturating_sub(start);
                print_line(&format!(
                    "sent gap timestamp={} duration={}",
                    start.nseconds(),
                    duration.nseconds()
                ));
                pad.push_event(gst::event::Gap::builder(start).duration(duration).build());
            }
            gst::PadProbeReturn::Ok
        });
    }
    if o.discont_log {
        pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
            if let Some(b) = info.buffer()
                && b.flags().contains(gst::BufferFlags::DISCONT)
            {
                print_line(&format!("discont offset={} size={}", b.offset(), b.size()));
            }
            gst::PadProbeReturn::Ok
        });
    }
    let (seek_after, seek_to, query_after) = (o.seek_after, o.seek_to, o.query_after);
    let (query_every, pause_after, pause_ms) = (o.query_every, o.pause_after, o.pause_ms);
    let (caps_after, post_after) = (o.caps_after.clone(), o.post_after);
    if o.preroll_delay_ms > 0 {
        let delay = Duration::from_millis(o.preroll_delay_ms);
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let again = first.clone();
        pad.add_probe(gst::PadProbeType::EVENT_FLUSH, move |_, info| {
            if info
                .event()
                .is_some_and(|e| e.type_() == gst::EventType::FlushStop)
            {
                again.store(true, Ordering::SeqCst);
            }
            gst::PadProbeReturn::Ok
        });
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            if first.swap(false, Ordering::SeqCst) {
                print_line(&format!(
                    "preroll-delay at {}",
                    gstfdlink::clock::monotonic_now()
                ));
                std::thread::sleep(delay);
            }
            gst::PadProbeReturn::Ok
        });
    }
    let frames = Arc::new(AtomicU64::new(0));
    let weak = pipeline.downgrade();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        let n = frames.fetch_add(1, Ordering::SeqCst) + 1;
        // Application calls go from threads of their own, never the streaming thread.
        let app = |f: Box<dyn FnOnce(gst::Pipeline) + Send>| {
            let weak = weak.clone();
            std::thread::spawn(move || {
                if let Some(p) = weak.upgrade() {
                    f(p)
                }
            });
        };
        if Some(n) == pause_after {
            app(Box::new(move |p| {
                let _ = p.set_state(gst::State::Paused);
                print_line("paused");
                std::thread::sleep(Duration::from_millis(pause_ms));
                let _ = p.set_state(gst::State::Playing);
                print_line("resumed");
            }));
        }
        if let Some((at, caps)) = &caps_after
            && *at == n
        {
            let caps = caps.clone();
            app(Box::new(move |p| {
                let Some(cf) = p.by_name("cf") else {
                    eprintln!("error: --caps-after needs an element named cf");
                    return;
                };
                match caps.parse::<gst::Caps>() {
                    Ok(c) => {
                        cf.set_property("caps", &c);
                        print_line(&format!("caps-set {c}"));
                    }
                    Err(e) => eprintln!("error: bad caps {caps}: {e}"),
                }
            }));
        }
        if Some(n) == post_after {
            app(Box::new(move |p| {
                let s = gst::Structure::builder("fdlink-test")
                    .field("n", n as i32)
                    .build();
                let _ = p.post_message(gst::message::Element::builder(s).src(&p).build());
                let _ = p.post_message(gst::message::Buffering::builder(50).src(&p).build());
                print_line("posted");
            }));
        }
        let query_now = Some(n) == query_after || query_every.is_some_and(|e| n.is_multiple_of(e));
        if Some(n) == seek_after {
            let weak = weak.clone();
            std::thread::spawn(move || {
                let Some(p) = weak.upgrade() else { return };
                let ok = p
                    .seek_simple(
                        gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                        gst::ClockTime::from_nseconds((seek_to * 1e9) as u64),
                    )
                    .is_ok();
                print_line(&format!("seek-sent ok={ok}"));
            });
        }
        if query_now {
            app(Box::new(|p| {
                let ns = |t: Option<gst::ClockTime>| t.map_or(-1i64, |t| t.nseconds() as i64);
                let mut latency = gst::query::Latency::new();
                let (live, min, max) = if p.query(&mut latency) {
                    let (live, min, max) = latency.result();
                    (live, ns(Some(min)), ns(max))
                } else {
                    (false, -1, -1)
                };
                print_line(&format!(
                    "position {} duration {} latency {live} {min} {max} at {}",
                    ns(p.query_position::<gst::ClockTime>()),
                    ns(p.query_duration::<gst::ClockTime>()),
                    gstfdlink::clock::monotonic_now()
                ));
            }));
        }
        gst::PadProbeReturn::Ok
    });
}

/// NV12 at 30 fps, as the hand-made producers push it.
fn nv12_caps(width: u32, height: u32) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "NV12")
        .field("width", width as i32)
        .field("height", height as i32)
        .field("framerate", gst::Fraction::new(30, 1))
        .build()
}

/// `appsrc ! fdlinksink` for the hand-made producers: as fast as the consumer takes frames,
/// starting when the first consumer is in.
fn appsrc_into_fdlinksink(
    caps: &gst::Caps,
    socket: &str,
) -> (gst::Pipeline, gst_app::AppSrc, gst::Element) {
    let pipeline = gst::Pipeline::new();
    let appsrc = gst_app::AppSrc::builder()
        .caps(caps)
        .format(gst::Format::Time)
        .build();
    let sink = gst::ElementFactory::make("fdlinksink")
        .property("socket-path", socket)
        .property("sync", false)
        .property("wait-for-connection", true)
        .build()
        .expect("fdlinksink");
    pipeline
        .add_many([appsrc.upcast_ref(), &sink])
        .expect("add");
    appsrc.link(&sink).expect("link");
    (pipeline, appsrc, sink)
}

/// A producer whose frames come from a small memfd pool (`--pool-max` buffers), each filled
/// with `offset % 251`: if a frame were reused while a consumer still held it, the consumer's
/// pattern check would see it.
fn produce_pattern(o: &Opts) -> i32 {
    init();
    let socket = o.socket.clone().unwrap_or_else(|| usage());
    let (w, h) = o.size;
    let caps = nv12_caps(w, h);
    let info = gst_video::VideoInfo::from_caps(&caps).expect("valid caps");
    let pool = gstfdlink::memory::MemfdBufferPool::new_configured(
        &caps,
        info.size() as u32,
        if o.pool_min > 0 {
            o.pool_min
        } else {
            o.pool_max
        },
        o.pool_max,
        true,
    )
    .expect("pool configures");
    let (pipeline, appsrc, sink) = appsrc_into_fdlinksink(&caps, &socket);
    for (k, v) in &o.sink_props {
        sink.set_property_from_str(k, v);
    }
    if o.live {
        appsrc.set_is_live(true);
    }
    let frames = o.frames;
    let acquired = Arc::new(AtomicU64::new(0));
    let pool_cb = Mutex::new(pool);
    let counter = acquired.clone();
    // Acquires that had to wait for a buffer to come back: the pool ran dry.
    let waits = Arc::new(Mutex::new((0u64, Duration::ZERO)));
    let waits_cb = waits.clone();
    appsrc.set_callbacks(
        gst_app::AppSrcCallbacks::builder()
            .need_data(move |src, _| {
                let i = counter.load(Ordering::SeqCst);
                if i >= frames {
                    let _ = src.end_of_stream();
                    return;
                }
                // Blocks while all pool buffers are held by consumers.
                let asked = Instant::now();
                let Ok(mut buffer) = pool_cb.lock().unwrap().acquire_buffer(None) else {
                    return;
                };
                let waited = asked.elapsed();
                if waited > Duration::from_millis(5) {
                    let mut w = waits_cb.lock().unwrap();
                    w.0 += 1;
                    w.1 = w.1.max(waited);
                }
                {
                    let b = buffer.get_mut().expect("pool buffer is writable");
                    b.set_offset(i);
                    b.set_pts(gst::ClockTime::from_mseconds(i * 33));
                    let mut map = b.map_writable().expect("maps");
                    map.as_mut_slice().fill((i % 251) as u8);
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = src.push_buffer(buffer);
            })
            .build(),
    );
    let mut extra = Vec::new();
    if o.gaps {
        extra.push(gap_meter(
            &sink.static_pad("sink").expect("fdlinksink has a sink pad"),
        ));
    }
    let waits_stats = waits.clone();
    extra.push(Arc::new(move |s: &mut gst::StructureRef| {
        let (n, longest) = *waits_stats.lock().unwrap();
        s.set("pool-waits", n);
        s.set("pool-wait-longest-us", longest.as_micros() as u64);
    }) as StatsExtra);
    let o2 = Opts {
        stats_every_ms: o.stats_every_ms,
        wait_clients: o.wait_clients,
        eos_file: o.eos_file.clone(),
        ..Default::default()
    };
    let code = run(pipeline, Some(sink), &o2, &extra);
    let (n, longest) = *waits.lock().unwrap();
    print_line(&format!(
        "pool-waits {n} longest-us {}",
        longest.as_micros()
    ));
    code
}

/// Frames in real kernel dmabufs (see the module doc), through appsrc into fdlinksink.
fn produce_dmabuf(o: &Opts) -> i32 {
    use dmabuf_sources::{Allocator, Source};
    init();
    let socket = o.socket.clone().unwrap_or_else(|| usage());
    let source = o
        .source
        .as_deref()
        .and_then(Source::parse)
        .unwrap_or_else(|| usage());
    let layout = o.layout.clone().unwrap_or_else(|| "single".into());
    let alloc = match Allocator::open(source) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: cannot open {source:?} allocator: {e}");
            return 1;
        }
    };
    let (w, h) = (o.size.0 as usize, o.size.1 as usize);
    // Padded stride, so strides that get lost or defaulted on the way show up.
    let stride = (w + 64).div_ceil(64) * 64;
    let (y_size, uv_size) = (stride * h, stride * h.div_ceil(2));
    // Each frame: the buffer, plus for CPU filling a dup of every dmabuf with its size and
    // the ranges the buffer's memories cover.
    type Fill = Vec<(OwnedFd, usize, Vec<(usize, usize)>)>;
    let make_buffer = || -> std::io::Result<(gst::Buffer, Fill)> {
        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().expect("new buffer");
        let wrap = |fd: &OwnedFd, size| {
            gstfdlink::memory::wrap_dmabuf(fd.try_clone()?, size).map_err(std::io::Error::other)
        };
        let mut fill = Fill::new();
        match layout.as_str() {
            "single" => {
                let (fd, size) = alloc.alloc(y_size + uv_size)?;
                let mut m = wrap(&fd, size)?;
                m.get_mut().unwrap().resize(0..y_size + uv_size);
                b.append_memory(m);
                fill.push((fd, size, vec![(0, y_size + uv_size)]));
            }
            "offsets" => {
                // Y at 4096, UV one page after Y: nonzero memory offsets on one fd.
                let uv_at = (4096 + y_size).div_ceil(4096) * 4096 + 4096;
                let (fd, size) = alloc.alloc(uv_at + uv_size)?;
                let base = wrap(&fd, size)?;
                b.append_memory(base.share(4096..4096 + y_size));
                b.append_memory(base.share(uv_at..uv_at + uv_size));
                fill.push((fd, size, vec![(4096, y_size), (uv_at, uv_size)]));
            }
            "planes" => {
                for plane in [y_size, uv_size] {
                    let (fd, size) = alloc.alloc(plane)?;
                    let mut m = wrap(&fd, size)?;
                    m.get_mut().unwrap().resize(0..plane);
                    b.append_memory(m);
                    fill.push((fd, size, vec![(0, plane)]));
                }
            }
            _ => usage(),
        }
        gst_video::VideoMeta::add_full(
            b,
            gst_video::VideoFrameFlags::empty(),
            gst_video::VideoFormat::Nv12,
            w as u32,
            h as u32,
            &[0, y_size],
            &[stride as i32, stride as i32],
        )
        .map_err(std::io::Error::other)?;
        Ok((buffer, fill))
    };
    let mut frames_pool = Vec::new();
    for _ in 0..o.pool_max {
        match make_buffer() {
            Ok(b) => frames_pool.push(b),
            Err(e) => {
                eprintln!("error: cannot allocate a {source:?} dmabuf: {e}");
                return 1;
            }
        }
    }
    let caps = nv12_caps(w as u32, h as u32);
    let (pipeline, appsrc, sink) = appsrc_into_fdlinksink(&caps, &socket);
    if o.frames_log {
        add_probe(pipeline.upcast_ref(), &sink, o);
    }
    let frames = o.frames;
    let next = Mutex::new((0u64, frames_pool));
    appsrc.set_callbacks(
        gst_app::AppSrcCallbacks::builder()
            .need_data(move |src, _| {
                let mut guard = next.lock().unwrap();
                let (i, pool) = &mut *guard;
                if *i >= frames {
                    let _ = src.end_of_stream();
                    return;
                }
                // A pool buffer is free when nobody but us holds it or its memories: basesrc
                // shallow-copies some buffers (DISCONT), and the copy keeps the memories, as
                // GstBufferPool itself checks.
                let deadline = Instant::now() + Duration::from_secs(20);
                let slot = loop {
                    if let Some(slot) = pool
                        .iter()
                        .position(|(b, _)| b.is_writable() && b.is_all_memory_writable())
                    {
                        break slot;
                    }
                    if Instant::now() > deadline {
                        eprintln!("error: no dmabuf came back within 20 s");
                        let _ = src.end_of_stream();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                let byte = (*i % 251) as u8;
                let (buffer, fill) = &mut pool[slot];
                for (fd, size, ranges) in fill.iter() {
                    if let Err(e) = dmabuf_sources::fill(fd.as_fd(), *size, ranges, byte) {
                        eprintln!("error: cannot write into the dmabuf: {e}");
                        let _ = src.end_of_stream();
                        return;
                    }
                }
                {
                    let b = buffer.get_mut().expect("free buffer");
                    b.set_offset(*i);
                    b.set_pts(gst::ClockTime::from_mseconds(*i * 33));
                }
                *i += 1;
                let _ = src.push_buffer(buffer.clone());
            })
            .build(),
    );
    let o2 = Opts {
        stats_every_ms: o.stats_every_ms,
        ..Default::default()
    };
    run(pipeline, Some(sink), &o2, &[])
}

// ---------------------------------------------------------------------------------------------
// Demo

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

fn demo(o: &Opts) -> i32 {
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        usage()
    };
    let o = parse_opts(rest);
    let code = match cmd.as_str() {
        "demo" => demo(&o),
        "produce" | "consume" => launch(&o),
        "produce-pattern" => produce_pattern(&o),
        "produce-dmabuf" => produce_dmabuf(&o),
        _ => usage(),
    };
    // The demo's pipelines run in gst-launch-1.0 children: this process's fds say nothing
    // about them, and its output is for people.
    if cmd != "demo" {
        report_fds();
    }
    std::process::exit(code);
}
