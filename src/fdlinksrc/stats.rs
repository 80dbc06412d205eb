//! fdlinksrc's `stats`: frames, reconnects and the latency from the producer's send to the
//! frame leaving `create()`.
//!
//! Every frame the producer sent is either taken by `create()` (`frames-received`) or dropped
//! from the link's queue (`leaky=oldest`); of those `create()` takes, the ones in caps
//! downstream refused, and the ones older than this pipeline's start (downstream would clip
//! them), are dropped there. `frames-dropped` counts every drop, `frames-dropped-caps` and
//! `frames-dropped-late` those of `create()`: frames pushed downstream = `frames-received` -
//! `frames-dropped-caps` - `frames-dropped-late`. `frames-empty` counts the frames received
//! without bytes (no memory, and no fd but for their metas).

use std::sync::atomic::Ordering;
use std::time::Duration;

use fdlink::warning_gate::WarningGate;

use super::link::QueueCounters;
use crate::clock;

/// Latency samples kept for the percentiles.
const LATENCY_WINDOW: usize = 1024;

/// The shortest time between two `fdlink-copies` messages.
const COPY_NOTICE_INTERVAL: Duration = Duration::from_secs(1);

/// The copies the link made (`leaky=copy`, a downstream holding its share), announced at most
/// once per [`COPY_NOTICE_INTERVAL`].
#[derive(Debug)]
struct CopyNotices {
    /// Copies counted so far (`QueueCounters::copied` when last looked at).
    seen: u64,
    gate: WarningGate,
}

impl Default for CopyNotices {
    fn default() -> Self {
        CopyNotices {
            seen: 0,
            gate: WarningGate::new(COPY_NOTICE_INTERVAL),
        }
    }
}

/// What the element counts itself; the link's queue counts the rest (`QueueCounters`).
#[derive(Debug, Default)]
pub struct Stats {
    pub frames: u64,
    /// Frames `create()` took but dropped because downstream refused their caps.
    dropped_for_caps: u64,
    /// Frames `create()` took but dropped as older than this pipeline's start.
    dropped_late: u64,
    pub reconnects: u64,
    latencies_us: Vec<u32>,
    next_sample: usize,
    last_us: u32,
    max_us: u32,
    sum_us: u64,
    copy_notices: CopyNotices,
}

/// Microseconds from `sent_at` (CLOCK_MONOTONIC ns, the producer's send) to now.
pub fn latency_us(sent_at: u64) -> u32 {
    (clock::monotonic_now().saturating_sub(sent_at) / 1000).min(u32::MAX as u64) as u32
}

impl Stats {
    /// One frame out, `us` after the producer sent it.
    pub fn record_frame(&mut self, us: u32) {
        self.frames += 1;
        self.last_us = us;
        self.max_us = self.max_us.max(us);
        self.sum_us += us as u64;
        if self.latencies_us.len() < LATENCY_WINDOW {
            self.latencies_us.push(us);
        } else {
            self.latencies_us[self.next_sample] = us;
        }
        self.next_sample = (self.next_sample + 1) % LATENCY_WINDOW;
    }

    /// Copies made since the last look, if it is time to announce them: Some((copies since
    /// the last announcement, copies in all)).
    pub fn copies_to_announce(&mut self, counters: &QueueCounters) -> Option<(u64, u64)> {
        let total = counters.copied.load(Ordering::Relaxed);
        let new = total.saturating_sub(self.copy_notices.seen);
        if new == 0 {
            return None;
        }
        self.copy_notices.seen = total;
        self.copy_notices.gate.note(new).map(|n| (n, total))
    }

    /// One frame of `record_frame` dropped: downstream refused its caps.
    pub fn record_dropped_for_caps(&mut self) {
        self.dropped_for_caps += 1;
    }

    /// Frames `create()` took and dropped (refused caps, too late).
    pub fn dropped_here(&self) -> u64 {
        self.dropped_for_caps + self.dropped_late
    }

    /// One frame of `record_frame` dropped: it ends before this pipeline's start.
    pub fn record_dropped_late(&mut self) {
        self.dropped_late += 1;
    }

    /// The `stats` property: these counts, the queue's, and what the link holds now (`queued`
    /// frames, `files_registered`).
    pub fn structure(
        &self,
        counters: &QueueCounters,
        queued: u64,
        files_registered: u32,
    ) -> gst::Structure {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let pct = |p: usize| -> u32 {
            if sorted.is_empty() {
                0
            } else {
                sorted[(sorted.len() - 1) * p / 100]
            }
        };
        gst::Structure::builder("application/x-fdlinksrc-stats")
            .field("frames-received", self.frames)
            .field("releases-sent", counters.releases.load(Ordering::Relaxed))
            .field("reconnects", self.reconnects)
            .field(
                "frames-dropped",
                counters.dropped.load(Ordering::Relaxed)
                    + self.dropped_for_caps
                    + self.dropped_late,
            )
            .field("frames-dropped-caps", self.dropped_for_caps)
            .field("frames-dropped-late", self.dropped_late)
            .field("frames-copied", counters.copied.load(Ordering::Relaxed))
            .field("frames-empty", counters.empty.load(Ordering::Relaxed))
            .field("frames-queued", queued)
            .field("files-registered", files_registered)
            .field("latency-last-us", self.last_us)
            .field(
                "latency-avg-us",
                self.sum_us.checked_div(self.frames).unwrap_or(0),
            )
            .field("latency-p50-us", pct(50))
            .field("latency-p99-us", pct(99))
            .field("latency-max-us", self.max_us)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'a, T: gst::glib::value::FromValue<'a> + 'static>(
        s: &'a gst::StructureRef,
        name: &str,
    ) -> T {
        s.get::<T>(name).unwrap()
    }

    #[test]
    fn latencies_over_the_last_window() {
        gst::init().unwrap();
        let counters = QueueCounters::default();
        let empty = Stats::default().structure(&counters, 0, 0);
        assert_eq!(field::<u64>(&empty, "latency-avg-us"), 0);
        assert_eq!(field::<u32>(&empty, "latency-p99-us"), 0);

        let mut stats = Stats::default();
        // An old slow frame, then a full window of 1..=1024 µs that pushes it out.
        stats.record_frame(1_000_000);
        for us in 1..=LATENCY_WINDOW as u32 {
            stats.record_frame(us);
        }
        counters.releases.fetch_add(3, Ordering::Relaxed);
        counters.dropped.fetch_add(4, Ordering::Relaxed);
        stats.record_dropped_for_caps();
        let s = stats.structure(&counters, 2, 5);
        assert_eq!(field::<u64>(&s, "frames-received"), 1025);
        // Dropped from the queue and for refused caps, the second also on its own.
        assert_eq!(field::<u64>(&s, "frames-dropped"), 5);
        assert_eq!(field::<u64>(&s, "frames-dropped-caps"), 1);
        assert_eq!(field::<u64>(&s, "releases-sent"), 3);
        assert_eq!(field::<u64>(&s, "frames-queued"), 2);
        assert_eq!(field::<u32>(&s, "files-registered"), 5);
        assert_eq!(field::<u32>(&s, "latency-last-us"), 1024);
        assert_eq!(field::<u32>(&s, "latency-max-us"), 1_000_000);
        assert_eq!(field::<u32>(&s, "latency-p50-us"), 512);
        assert_eq!(field::<u32>(&s, "latency-p99-us"), 1013);
        assert_eq!(
            field::<u64>(&s, "latency-avg-us"),
            (1_000_000 + 1024 * 1025 / 2) / 1025
        );
    }

    #[test]
    fn copies_are_announced_at_most_once_a_second_with_the_count_between() {
        let counters = QueueCounters::default();
        let mut stats = Stats::default();
        assert_eq!(stats.copies_to_announce(&counters), None, "no copy yet");
        counters.copied.fetch_add(2, Ordering::Relaxed);
        assert_eq!(stats.copies_to_announce(&counters), Some((2, 2)));
        counters.copied.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            stats.copies_to_announce(&counters),
            None,
            "within the second"
        );
        assert_eq!(stats.copies_to_announce(&counters), None, "nothing new");
        counters.copied.fetch_add(3, Ordering::Relaxed);
        // The second over, the next announcement counts the copies between.
        std::thread::sleep(COPY_NOTICE_INTERVAL);
        assert_eq!(stats.copies_to_announce(&counters), Some((4, 6)));
    }

    #[test]
    fn latency_is_counted_from_the_send() {
        let sent_at = clock::monotonic_now() - 3_000_000;
        let us = latency_us(sent_at);
        assert!((3_000..1_000_000).contains(&us), "{us}");
        // A send stamped in the future (another clock domain) is not negative.
        assert_eq!(latency_us(u64::MAX), 0);
    }
}
