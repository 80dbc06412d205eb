//! Output lines shared by every mode: `stats` lines and the one-line summaries for people
//! (`--summary`), the fd-leak report, line printing.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// `--summary`: each `stats` line is followed by a [`summary`] line.
pub(crate) static SUMMARY: AtomicBool = AtomicBool::new(false);

/// The previous `stats` line's time and frame count, for the summary's rate.
static LAST_STATS: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

pub(crate) fn print_stats(element: &gst::Element, extra: &[StatsExtra]) {
    let mut s = element.property::<gst::Structure>("stats");
    for add in extra {
        add(&mut s);
    }
    print_line(&format!("stats {s}"));
    if SUMMARY.load(Ordering::Relaxed) {
        let now = Instant::now();
        let frames = frames_of(&s);
        let fps = LAST_STATS
            .lock()
            .unwrap()
            .replace((now, frames))
            .and_then(|(then, before)| rate(frames.saturating_sub(before), now - then));
        print_line(&summary(&s, fps));
    }
}

/// A field of a `stats` structure as u64 (0 if missing).
pub(crate) fn stat(s: &gst::StructureRef, name: &str) -> u64 {
    s.get::<u64>(name)
        .or_else(|_| s.get::<u32>(name).map(u64::from))
        .unwrap_or(0)
}

/// Frames through the element whose `stats` these are: sent (fdlinksink) or received
/// (fdlinksrc).
pub(crate) fn frames_of(s: &gst::StructureRef) -> u64 {
    if is_producer(s) {
        stat(s, "frames-sent")
    } else {
        stat(s, "frames-received")
    }
}

fn is_producer(s: &gst::StructureRef) -> bool {
    s.name().as_str().contains("fdlinksink")
}

/// Frames per second, `frames` in `span`; None for a span too short to tell.
pub(crate) fn rate(frames: u64, span: Duration) -> Option<f64> {
    (span >= Duration::from_millis(10)).then(|| frames as f64 / span.as_secs_f64())
}

/// `part` of `whole` in percent, "-" without a whole.
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.0}%", 100.0 * part as f64 / whole as f64)
    }
}

fn fps_text(fps: Option<f64>) -> String {
    fps.map_or_else(|| "- fps".into(), |f| format!("{f:.1} fps"))
}

/// The transport's latency: producer send to fdlinksrc's `create()`.
fn latency_text(consumer: &gst::StructureRef) -> String {
    format!(
        "latency p50 {} µs p99 {} µs",
        stat(consumer, "latency-p50-us"),
        stat(consumer, "latency-p99-us")
    )
}

/// One line a person reads, from one element's `stats` (`fps`: its frame rate since the
/// previous line): `fdlink producer: 60.0 fps, zero-copy 100%, held 3, dropped 0, consumers 1`
/// or `fdlink consumer: 60.0 fps, zero-copy 100%, queued 0, dropped 0, latency p50 84 µs p99
/// 210 µs`. Zero-copy: frames that crossed without a copy, of those sent (fdlinksink) or
/// received (fdlinksrc: less those its queue or a downstream holding its share copied).
pub(crate) fn summary(s: &gst::StructureRef, fps: Option<f64>) -> String {
    if is_producer(s) {
        format!(
            "fdlink producer: {}, zero-copy {}, held {}, dropped {}, consumers {}",
            fps_text(fps),
            percent(stat(s, "frames-zero-copy"), stat(s, "frames-sent")),
            stat(s, "buffers-held"),
            stat(s, "frames-dropped"),
            stat(s, "consumers")
        )
    } else {
        let received = stat(s, "frames-received");
        format!(
            "fdlink consumer: {}, zero-copy {}, queued {}, dropped {}, {}",
            fps_text(fps),
            percent(received.saturating_sub(stat(s, "frames-copied")), received),
            stat(s, "frames-queued"),
            stat(s, "frames-dropped"),
            latency_text(s)
        )
    }
}

/// The demo's line, from both ends' `stats`: the consumer's frame rate, the producer's
/// zero-copy share, what it holds and dropped, and the transport's latency.
pub(crate) fn link_summary(
    producer: &gst::StructureRef,
    consumer: &gst::StructureRef,
    fps: Option<f64>,
) -> String {
    format!(
        "fdlink: {}, zero-copy {}, held {}, dropped {}, {}",
        fps_text(fps),
        percent(
            stat(producer, "frames-zero-copy"),
            stat(producer, "frames-sent")
        ),
        stat(producer, "buffers-held"),
        stat(producer, "frames-dropped") + stat(consumer, "frames-dropped"),
        latency_text(consumer)
    )
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
