//! One side (producer or consumer) of a cross-process transport, for `benches/compare-peers.sh`.
//!
//! ```text
//! compare-harness produce|consume TRANSPORT key=value...
//!   TRANSPORT: fdlink fdlink-copy fdlink-app shm shm-alloc ipcpipeline unixfd unixfd-copy raw, or
//!   local (producer only: `videotestsrc ! fakesink`, what the source alone costs)
//!   width= height= frames= rate= (0: unthrottled) path= (socket or fifo base) go= done=
//!   timeout= (seconds, whole run) source= (videotestsrc, the default, or prefilled)
//!   samples= (consumer: a file for every frame's sequence number, send and receive time
//!   on CLOCK_MONOTONIC and latency, to line a latency tail up with a scheduler trace)
//!   consumers= (fdlink producer: wait for this many connected consumers instead of the go
//!   file; 0: none, fdlinksink drops the frames) warmup= (both sides: the first this many
//!   frames are sent but not counted; fps, CPU and frames are over the rest)
//! ```
//!
//! `source=prefilled` replaces videotestsrc with [`prefilled_src`]: frames from the pool the
//! sink proposes (as videotestsrc's and a decoder's are), each pool buffer written in full the
//! first time the source meets it and never again. It stands for a hardware decoder or a
//! camera, whose frames the CPU does not write, so the transport's own cost sets the pace
//! instead of videotestsrc drawing every pixel.
//! With rate= it is live: the clock paces it, as it does a camera (the fan-out sweep).
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
//! - `fdlink-app`: fdlinksink, and a consumer made of `fdlink::consumer` (no GStreamer in its
//!   path): it maps each frame read-only, reads the header, and drops the frame (its release).
//! - `raw`: no GStreamer. The producer keeps 4 mapped memfds, writes the same 16 bytes (no
//!   other pixels), sends one fd plus a 100-byte message over SOCK_SEQPACKET and waits for a
//!   16-byte reply; the consumer maps the received fd, reads the 16 bytes, unmaps, replies.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod app;
mod gst_transports;
mod prefilled_src;
mod raw;
mod record;

use crate::gst_transports::{consume_gst, produce_gst};
use crate::raw::{consume_raw, produce_raw};

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
    /// Producer: start once this many consumers are connected (the fan-out sweep).
    consumers: Option<u32>,
    /// Frames left out of every count at the start (sequence numbers below it).
    warmup: u64,
}

impl Args {
    /// The frames that count: all of them but the warm-up.
    fn counted_frames(&self) -> u64 {
        self.frames.saturating_sub(self.warmup)
    }
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
        consumers: None,
        warmup: 0,
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
            "consumers" => a.consumers = Some(v.parse().unwrap()),
            "warmup" => a.warmup = v.parse().unwrap(),
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

fn main() {
    let a = parse_args();
    if a.transport == "fdlink-app" && a.role != "produce" {
        app::consume_app(&a);
    } else if a.transport == "raw" {
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
