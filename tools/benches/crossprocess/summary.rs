//! The summary printed after criterion and written to target/criterion/fdlink-crossprocess.md.

use std::time::{Duration, Instant};

use crate::accounting::{Row, SUMMARY};
use crate::children::pin_cpus;
use crate::frames::{Kind, SIZES};
use crate::groups::{KINDS, WINDOW};

fn pct(sorted: &[u64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(sorted.len() - 1) * p / 100] as f64 / 1000.0
}

fn per_frame(v: u64, frames: u64) -> f64 {
    if frames == 0 {
        f64::NAN
    } else {
        v as f64 / frames as f64
    }
}

/// A table cell: `value` with `digits` decimals, or "-" for a measurement this run did not take
/// (a filter left its group out).
pub(crate) fn cell(value: f64, digits: usize) -> String {
    if value.is_finite() {
        format!("{value:.digits$}")
    } else {
        "-".into()
    }
}

pub(crate) fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.1}x", a / b)
    } else {
        "-".into()
    }
}

/// Median time of one `copy_from_slice` of `size` bytes, in µs: the memcpy bandwidth the copy
/// fallback is compared with, measured in the same run. The copies cycle through as many
/// distinct sources and destinations as the copy path does (its ring of 2 frames into a pool of
/// WINDOW + 1), all written once beforehand, so they are as cold in the caches as that path's;
/// copying one warm pair again and again would measure the caches instead. At least 0.2 s of
/// copies (and 4 rounds of the buffers), so that one disturbed moment does not make the figure.
pub(crate) fn memcpy_us(size: usize) -> f64 {
    let sources: Vec<Vec<u8>> = (0..2).map(|i| vec![0x80 + i as u8; size]).collect();
    let mut dests: Vec<Vec<u8>> = (0..WINDOW as usize + 1).map(|_| vec![1u8; size]).collect();
    let k = dests.len();
    let start = Instant::now();
    let mut times: Vec<u64> = Vec::new();
    while times.len() < 4 * k
        || (start.elapsed() < Duration::from_millis(200) && times.len() < 20_000)
    {
        let i = times.len();
        let dst = &mut dests[i % k];
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&sources[i % 2]));
        std::hint::black_box(&dst);
        times.push(t.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    times[times.len() / 2] as f64 / 1000.0
}

pub(crate) fn summary() -> String {
    use std::fmt::Write;
    let s = SUMMARY.lock().unwrap();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## fdlink cross-process handoff (this run)\n\n\
         Ratios are to the raw SCM_RIGHTS baseline of the same group, same run. One-way \
         percentiles are over every iteration (warm-up included); round trip and throughput are \
         means over every timed batch. CPU and allocations are per frame, in the producer (bench) \
         process and in the consumer process(es); allocations are Rust heap allocations only.\n"
    );
    let _ = writeln!(
        out,
        "CPU pinning: {}\n",
        match pin_cpus() {
            Some((p, c)) => format!("producer on CPU {p}, consumers on CPU {c}"),
            None => "none".into(),
        }
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = kernel.trim();
    // Not available_parallelism(): the bench process may be pinned to one CPU.
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let _ = writeln!(
        out,
        "Machine: Linux {kernel}, CPUs {} online\n",
        cpus.trim()
    );
    let real: Vec<&str> = [Kind::DmabufHeap, Kind::Udmabuf]
        .iter()
        .map(|k| k.label())
        .collect();
    let _ = writeln!(
        out,
        "Real kernel dmabuf paths ({}): {}\n",
        real.join(", "),
        if [Kind::DmabufHeap, Kind::Udmabuf]
            .iter()
            .all(|k| k.runs_here())
        {
            "run (their exporters' device nodes exist here)"
        } else {
            "NOT run: no /dev/dma_heap/system or /dev/udmabuf on this machine; \
             benches/vm-dmabuf.sh runs them in the test VM"
        }
    );
    let _ = writeln!(
        out,
        "| size | path | one-way p50 us | p99 us | ratio p50 | round trip us | ratio | fps (window 4) | ratio | CPU us/frame prod / cons | allocs/frame prod / cons (rt) | allocs/frame prod / cons (fps) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut notes = String::new();
    for (group, kind) in SIZES
        .iter()
        .flat_map(|(label, ..)| KINDS.iter().map(move |k| (label.to_string(), *k)))
    {
        let Some(row) = s.get(&(group.clone(), kind, 1)) else {
            continue;
        };
        let raw = s.get(&(group.clone(), Kind::Raw, 1));
        let mut ow = row.oneway_ns.clone();
        ow.sort_unstable();
        let raw_ow = raw.map(|r| {
            let mut v = r.oneway_ns.clone();
            v.sort_unstable();
            pct(&v, 50)
        });
        let rt = per_frame(row.roundtrip.wall_ns, row.roundtrip.frames) / 1000.0;
        let raw_rt = raw.map(|r| per_frame(r.roundtrip.wall_ns, r.roundtrip.frames) / 1000.0);
        let t = &row.throughput;
        let fps = 1e9 / per_frame(t.wall_ns, t.frames);
        let raw_fps = raw.map(|r| 1e9 / per_frame(r.throughput.wall_ns, r.throughput.frames));
        let r = &row.roundtrip;
        let _ = writeln!(
            out,
            "| {group} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} |",
            kind.label(),
            cell(pct(&ow, 50), 1),
            cell(pct(&ow, 99), 1),
            ratio(pct(&ow, 50), raw_ow.unwrap_or(f64::NAN)),
            cell(rt, 1),
            ratio(rt, raw_rt.unwrap_or(f64::NAN)),
            cell(fps, 0),
            ratio(raw_fps.unwrap_or(f64::NAN), fps),
            cell(per_frame(t.cpu_self_ns, t.frames) / 1000.0, 1),
            cell(per_frame(t.cpu_child_ns, t.frames) / 1000.0, 1),
            cell(per_frame(r.allocs_self, r.frames), 1),
            cell(per_frame(r.allocs_child, r.frames), 1),
            cell(per_frame(t.allocs_self, t.frames), 1),
            cell(per_frame(t.allocs_child, t.frames), 1),
        );
        for n in &row.notes {
            let _ = writeln!(notes, "- {group} {}: {n}", kind.label());
        }
    }
    let _ = writeln!(
        out,
        "\n| copy fallback | frame MB | memcpy us (as many buffers as the path, right after it) | the path's copy us/frame (copy-time-us) | its share of memcpy bandwidth | producer CPU us/frame (fps) | share of memcpy bandwidth (whole frame) |\n|---|---|---|---|---|---|---|"
    );
    for (label, w, h) in SIZES {
        let Some(row) = s.get(&(label.to_string(), Kind::Copy, 1)) else {
            continue;
        };
        let size = (w * h * 3 / 2) as usize;
        // Taken after the path's own run (see Row::memcpy_us): every copy row has one.
        let copy = row.memcpy_us.iter().sum::<f64>() / row.memcpy_us.len() as f64;
        let cpu = per_frame(row.throughput.cpu_self_ns, row.throughput.frames) / 1000.0;
        let in_path = per_frame(row.copy_us, row.copies);
        let _ = writeln!(
            out,
            "| {label} | {:.1} | {copy:.0} | {} | {} | {cpu:.0} | {:.0}% |",
            size as f64 / 1e6,
            cell(in_path, 0),
            if in_path > 0.0 {
                format!("{:.0}%", 100.0 * copy / in_path)
            } else {
                "-".into()
            },
            100.0 * copy / cpu
        );
    }
    let _ = writeln!(
        out,
        "\n(fps ratio is raw fps / element fps, so larger is slower everywhere.)\n\n\
         | fan-out 1080p | raw round trip us | raw io_uring round trip us | memfd round trip us | ratio memfd / raw | allocs/frame prod / cons (memfd) |\n|---|---|---|---|---|---|"
    );
    for k in [1usize, 2, 4, 8] {
        let get = |kind| s.get(&("fanout-1080p".to_string(), kind, k));
        let rt = |r: Option<&Row>| {
            r.map_or(f64::NAN, |r| {
                per_frame(r.roundtrip.wall_ns, r.roundtrip.frames) / 1000.0
            })
        };
        let (raw, uring, el) = (
            rt(get(Kind::Raw)),
            rt(get(Kind::RawUring)),
            rt(get(Kind::Memfd)),
        );
        if raw.is_nan() && uring.is_nan() && el.is_nan() {
            continue;
        }
        let allocs = get(Kind::Memfd).map_or((f64::NAN, f64::NAN), |r| {
            (
                per_frame(r.roundtrip.allocs_self, r.roundtrip.frames),
                per_frame(r.roundtrip.allocs_child, r.roundtrip.frames),
            )
        });
        let _ = writeln!(
            out,
            "| {k} | {raw:.1} | {uring:.1} | {el:.1} | {} | {:.1} / {:.1} |",
            ratio(el, raw),
            allocs.0,
            allocs.1
        );
        if let Some(r) = get(Kind::Memfd) {
            for n in &r.notes {
                let _ = writeln!(notes, "- fanout {k} consumers memfd: {n}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\nfdlinksink counters at the end of each setup:\n{notes}"
    );
    out
}
