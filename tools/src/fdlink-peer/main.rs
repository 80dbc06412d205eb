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
//! fdlink-peer app-consume [--frames-log] [--events-log] --socket PATH
//!     (a consumer made of fdlink::consumer alone, no GStreamer in its path: the same
//!     `frame` lines as consume's, each frame mapped read-only, dmabufs with their sync ioctls;
//!     `--events-log`: an `event caps CAPS` line before the first frame in new caps)
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
//! - `--summary`: after each `stats` line, one a person reads: `fdlink producer: 60.0 fps,
//!   zero-copy 100%, held 3, dropped 0, consumers 1` or `fdlink consumer: 60.0 fps, zero-copy
//!   100%, queued 0, dropped 0, latency p50 84 µs p99 210 µs` (fps since the previous line).
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
//! - `--toggle-states N`: before starting, set the pipeline to PLAYING and back to READY N
//!   times without waiting in between (`toggled N` line), as an application that starts and
//!   stops quickly.
//! - `--loop N`: on each of the first N EOS messages, a flushing seek of the pipeline to 0
//!   instead of ending (`loop K` line after the Kth seek), as a looping player does.
//! - `--eos-count N`: end at the Nth EOS message, not the first (each prints `eos`).
//! - `--preroll-delay-ms N`: hold the first buffer, and the first after each flush, N ms at
//!   the fdlink element (`preroll-delay at T` line, T CLOCK_MONOTONIC ns), so the pipeline
//!   prerolls late.
//! - `--handle-latency`: recalculate the pipeline's latency at each latency message, as
//!   gst-launch-1.0 does.
//! - `--try-write`: at the fdlinksrc's src pad, try to write into each frame through the fd of
//!   its memories (mmap PROT_WRITE MAP_SHARED, pwrite of a byte as it was, and both through a
//!   read-write reopening of /proc/self/fd/N); one line per frame, `write-refused` or
//!   `write-allowed` (`no-fd` for system memory), `offset=N fds=K`, then per fd
//!   `mmap=E write=E reopen=E` (`allowed` or the errno).
//! - `--running-time-log`: print `running-time pts=P rt=R base-mono=B playing=0|1` per
//!   buffer where `--frames-log` looks: its running time in the pad's segment (-1 if none),
//!   the pipeline's base time on CLOCK_MONOTONIC (-1 without a clock), in ns, and whether
//!   the element is PLAYING with no state change pending (else prerolling: that base time is
//!   not the one the buffer plays with).
//! - `--render-log`: make every fakesink print `render NAME pts=P late-us=L` per buffer it
//!   renders: the clock's running time at render minus the buffer's running time, in µs.
//!
//! Output lines: `frame ...`, `stats <structure>`, `overwritten ...`, `pattern-mismatch ...`,
//! `eos`, and on failure `error: ...` on stderr with exit code 1.
#![deny(clippy::undocumented_unsafe_blocks)]

mod app_consume;
mod demo;
mod dmabuf_sources;
mod probes;
mod produce;
mod render_log;
mod report;
mod run;
mod try_write;

use crate::app_consume::app_consume;
use crate::demo::demo;
use crate::produce::{produce_dmabuf, produce_pattern};
use crate::report::{BASELINE_FDS, open_fd_targets, report_fds};
use crate::run::launch;

fn usage() -> ! {
    eprintln!(
        "usage: fdlink-peer demo [--frames N] [--size WxH] [--copy]\n\
         \x20      fdlink-peer produce|consume [--frames-log] [--slow-ms N] [--pattern] [--stats-every MS [--summary]] [--seconds S] PIPELINE...\n\
         \x20      fdlink-peer produce-pattern --socket PATH --frames N --pool-max N [--pool-min N] [--size WxH]\n\
         \x20      fdlink-peer app-consume [--frames-log] [--events-log] --socket PATH"
    );
    std::process::exit(2)
}

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
    /// EOS messages answered with a flushing seek to 0 before the run may end.
    loops: u64,
    /// EOS messages that end the run (0 or 1: the first).
    eos_count: u64,
    /// PLAYING -> READY this many times before starting.
    toggle_states: u64,
    gap_first: bool,
    try_write: bool,
    render_log: bool,
    running_time_log: bool,
    /// Recalculate the latency at each latency message, as gst-launch-1.0 does.
    handle_latency: bool,
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
            "--summary" => report::SUMMARY.store(true, std::sync::atomic::Ordering::Relaxed),
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
            "--try-write" => o.try_write = true,
            "--render-log" => o.render_log = true,
            "--running-time-log" => o.running_time_log = true,
            "--handle-latency" => o.handle_latency = true,
            "--preroll-delay-ms" => o.preroll_delay_ms = num(it.next()),
            "--loop" => o.loops = num(it.next()),
            "--eos-count" => o.eos_count = num(it.next()),
            "--toggle-states" => o.toggle_states = num(it.next()),
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

fn init() {
    gst::init().expect("GStreamer initializes");
    gstfdlink::plugin_register_static().expect("fdlink plugin registers");
    let _ = BASELINE_FDS.set(open_fd_targets());
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
        "app-consume" => app_consume(&o),
        _ => usage(),
    };
    // The demo's pipelines run in gst-launch-1.0 children: this process's fds say nothing
    // about them, and its output is for people.
    if cmd != "demo" {
        report_fds();
    }
    std::process::exit(code);
}
