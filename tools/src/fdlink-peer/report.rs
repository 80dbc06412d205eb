//! Output lines shared by every mode: `stats` lines, the fd-leak report, line printing.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

/// Adds fields to a `stats` line.
pub(crate) type StatsExtra = Arc<dyn Fn(&mut gst::StructureRef) + Send + Sync>;

pub(crate) static BASELINE_FDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

pub(crate) fn open_fd_targets() -> Vec<String> {
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

/// Fds opened since init() that are still open (the pipeline is gone by now): a `leaked-fds`
/// line lists them, each as what it points at. (Reading /proc/self/fd opens one fd itself;
/// it is closed again before the second read.)
pub(crate) fn report_fds() {
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

pub(crate) fn print_line(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

pub(crate) fn print_stats(element: &gst::Element, extra: &[StatsExtra]) {
    let mut s = element.property::<gst::Structure>("stats");
    for add in extra {
        add(&mut s);
    }
    print_line(&format!("stats {s}"));
}

/// `--gaps`: measures, with a buffer probe on `pad`, the longest time between two consecutive
/// buffers; the returned extra adds it to a `stats` line as `gap-max-us` and starts a new
/// window.
pub(crate) fn gap_meter(pad: &gst::Pad) -> StatsExtra {
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
