//! The real handoff, across a process boundary: fdlinksink in this (the bench) process, one or
//! more consumers in child processes, against a raw SCM_RIGHTS baseline measured in the same
//! groups so every element figure reads as a ratio to the limit.
//!
//! `cargo bench -p fdlink-tools --bench crossprocess`; with `FDLINK_BENCH_QUICK=1` about
//! 1 min 45 s. See docs/performance-benches.md for what is timed exactly.
//!
//! # Processes
//! - Producer (this process): a standalone source pad, linked to `fdlinksink sync=false`, on
//!   which the bench thread calls `gst_pad_push` itself, as a decoder's streaming thread would.
//!   Frames come from a reused pool: fdlink's `MemfdBufferPool` (memfd path), a small pool of
//!   `DmaBufMemory` buffers, or a ring of `gst::Buffer::with_size` system-memory buffers,
//!   written once (copy fallback: fdlinksink copies each once into its sealed memfd pool).
//!   The dmabuf pool holds sealed memfds wrapped by `GstDmaBufAllocator` (`dmabuf-standin`,
//!   not a real dmabuf) or, where the exporters' device nodes exist, real kernel dmabufs from
//!   the dma-heap system heap (`dmabuf-heap`) and udmabuf (`dmabuf-udmabuf`). This host has
//!   neither; `benches/vm-dmabuf.sh` runs those rows in the project's test VM.
//! - Consumer (child): this same binary re-executed with `FDLINK_BENCH_CHILD=element`, running
//!   `fdlinksrc ! fakesink sync=false enable-last-sample=false` with a buffer probe on the
//!   fakesink pad, or with `FDLINK_BENCH_CHILD=raw`, a bare recvmsg loop. The probe (or the raw
//!   loop) writes the CLOCK_MONOTONIC time the frame arrived into a shared page; the buffer is
//!   then dropped at once, which sends the release.
//!
//! - io_uring baseline (`raw-io-uring`): the raw baseline with every message of a step through
//!   one `io_uring_enter` (benches/crossprocess/uring.rs): the producer's sends to all consumers
//!   and its reads of their releases, the consumer's release and its next receive. What an
//!   io_uring transport could save at the limit. `FDLINK_BENCH_URING_DEFER=1` sets up the rings
//!   with SINGLE_ISSUER and DEFER_TASKRUN.
//!
//! # Measurements (per frame size, per path)
//! - `oneway`: CLOCK_MONOTONIC just before `gst_pad_push` (raw: before `sendmsg`) to the
//!   consumer's stamp. The producer waits (untimed, sleeping) until the previous frame was
//!   received and released before each push, so nothing queues. Criterion gets the sum of the
//!   one-way times, so its "time" is the mean one-way latency.
//! - `roundtrip`: ping-pong with `max-held=1`: each push blocks in fdlinksink until the
//!   consumer's release of the previous frame came back, so the time of n pushes is n full
//!   cycles (push, send, receive, release, the producer taking the release, the pool buffer
//!   back). Raw: sendmsg, then recvmsg of the release.
//! - `throughput` groups: a window of 4 frames in flight (`max-held=4`, pool of 5), frames
//!   pushed as fast as the consumer releases them; criterion prints frames/s (elem/s).
//! - `fanout` group: `roundtrip` at 1080p memfd with 1, 2, 4, 8 consumer processes (a push
//!   waits for every consumer's release), raw: sendmsg to each, then each release back.
//! - Summary printed after criterion (and written to target/criterion/fdlink-crossprocess.md):
//!   one-way p50/p99 from every iteration, round-trip and throughput means, CPU time per frame
//!   in each process (CLOCK_PROCESS_CPUTIME_ID of the bench process, the child's CPU clock from
//!   clock_getcpuclockid) and heap allocations per frame in each process (a counting global
//!   allocator; it sees Rust allocations only, not GLib/GStreamer's C mallocs).

use std::path::PathBuf;
use std::time::Duration;

use criterion::Criterion;

mod accounting;
mod alloc_count;
mod children;
mod frames;
mod groups;
mod producers;
mod shared;
mod summary;
mod uring;

// The kernel dmabuf allocators of the hardware tests (udmabuf, dma-heap, vgem); the bench uses
// the first two, which exist in the project's test VM (benches/vm-dmabuf.sh).
#[allow(dead_code)]
#[path = "../../src/fdlink-peer/dmabuf_sources.rs"]
mod dmabuf_sources;

use crate::children::{child_main, pin_cpus, pin_to_cpu};
use crate::groups::{fanout, handoff, throughput};
use crate::shared::{CHILD_ENV, Shared};
use crate::summary::summary;

fn main() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child_main(&mode);
        return;
    }
    if let Some((cpu, _)) = pin_cpus() {
        pin_to_cpu(cpu);
    }
    gst::init().expect("GStreamer initializes");
    gstfdlink::plugin_register_static().expect("fdlink registers");
    // Short polling sleeps in the untimed waits: ask for 1 us timer slack instead of 50 us.
    let _ = nix::sys::prctl::set_timerslack(1000);
    let quick = std::env::var("FDLINK_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
    let (warm, measure) = if quick {
        (Duration::from_millis(200), Duration::from_millis(500))
    } else {
        (Duration::from_millis(500), Duration::from_millis(1500))
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(warm)
        .measurement_time(measure)
        .configure_from_args();
    let shared = Shared::create();
    handoff(&mut c, &shared);
    throughput(&mut c, &shared);
    fanout(&mut c, &shared);
    c.final_summary();
    let text = summary();
    println!("{text}");
    let path = std::env::var_os("FDLINK_BENCH_SUMMARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
                .join("criterion/fdlink-crossprocess.md")
        });
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&path, &text) {
        eprintln!(
            "crossprocess: cannot write the summary to {}: {e}",
            path.display()
        );
    }
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("fdlink-bench-{}", std::process::id())),
    );
}
