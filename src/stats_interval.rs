//! What both elements tell about the link as it runs: the `stats-interval` property (every
//! interval, the element's `stats` structure posted on the bus as an element message named
//! `fdlink-stats`, so that `gst-launch-1.0 -m` or an application's bus watch sees the link
//! live), the `fdlink-copies` message about frames copied for a slow consumer, and the text
//! of the per-buffer LOG lines.
//!
//! The ticks come from the system clock's asynchronous waits (`gst_clock_id_wait_async`),
//! whose one thread serves every async wait of the process: no thread per element, nothing on
//! the streaming thread, and a tick that finds the element gone does nothing. The messages
//! are for this pipeline's application only: no link forwards them to its peer (see
//! `session::Reposted`).

use std::sync::Mutex;

use gst::glib;
use gst::prelude::*;

use crate::session::Reposted;

/// The name of the messages' structure.
pub const MESSAGE_NAME: &str = "fdlink-stats";
/// The name of the message about frames copied for a slow consumer (`post_copies`).
pub const COPIES_MESSAGE_NAME: &str = "fdlink-copies";

/// The `stats-interval` property's spec (ms, 0 = off), the same on both elements.
pub fn param_spec() -> glib::ParamSpec {
    glib::ParamSpecUInt::builder("stats-interval")
        .nick("Stats interval (ms)")
        .blurb("Every this many ms while started, post the stats property as an element message named fdlink-stats on the bus (gst-launch-1.0 -m shows it), in ms (0: never)")
        .default_value(0)
        .mutable_playing()
        .build()
}

#[derive(Default)]
struct Inner {
    interval_ms: u32,
    /// The element while it is started (between `start` and `stop`).
    element: Option<glib::WeakRef<gst::Element>>,
    /// The pending periodic wait, while one runs.
    tick: Option<gst::PeriodicClockId>,
}

/// One element's `stats-interval`: its value, and the periodic wait that posts the messages
/// while the element is started.
#[derive(Default)]
pub struct StatsInterval {
    inner: Mutex<Inner>,
}

impl StatsInterval {
    pub fn interval_ms(&self) -> u32 {
        self.lock().interval_ms
    }

    /// Sets the interval; a started element's messages follow the new one at once.
    pub fn set_interval_ms(&self, ms: u32) {
        let mut inner = self.lock();
        inner.interval_ms = ms;
        reschedule(&mut inner);
    }

    /// The element started: messages from now on, if the interval is not 0.
    pub fn start(&self, element: &gst::Element) {
        let mut inner = self.lock();
        inner.element = Some(element.downgrade());
        reschedule(&mut inner);
    }

    /// The element stopped: no more messages.
    pub fn stop(&self) {
        let mut inner = self.lock();
        inner.element = None;
        reschedule(&mut inner);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for StatsInterval {
    fn drop(&mut self) {
        if let Some(tick) = self.lock().tick.take() {
            tick.unschedule();
        }
    }
}

/// Cancels the pending wait and starts a new one if the element is started with an interval.
fn reschedule(inner: &mut Inner) {
    if let Some(tick) = inner.tick.take() {
        tick.unschedule();
    }
    let Some(element) = inner.element.clone() else {
        return;
    };
    if inner.interval_ms == 0 {
        return;
    }
    let clock = gst::SystemClock::obtain();
    let interval = gst::ClockTime::from_mseconds(inner.interval_ms.into());
    let tick = clock.new_periodic_id(clock.time() + interval, interval);
    let posted = tick.wait_async(move |_, _, id| match element.upgrade() {
        Some(element) => post(&element),
        // The element is gone: so is the reason to tick.
        None => id.unschedule(),
    });
    if posted.is_ok() {
        inner.tick = Some(tick);
    }
}

/// Posts `element`'s stats as an `fdlink-stats` element message from `element`, for this
/// pipeline only.
pub fn post(element: &gst::Element) {
    let mut stats = element.property::<gst::Structure>("stats");
    stats.set_name(MESSAGE_NAME);
    let msg = gst::message::Element::builder(stats).src(element).build();
    Reposted.remember(msg.seqnum());
    let _ = element.post_message(msg);
}

/// Posts an `fdlink-copies` element message from `element` (for this pipeline only): frames
/// were copied for a slow consumer, `copies` since the last such message, `total` in all,
/// `reason` says why. The callers post at most one a second.
pub fn post_copies(element: &gst::Element, copies: u64, total: u64, reason: &str) {
    let s = gst::Structure::builder(COPIES_MESSAGE_NAME)
        .field("copies", copies)
        .field("total", total)
        .field("reason", reason)
        .build();
    let msg = gst::message::Element::builder(s).src(element).build();
    Reposted.remember(msg.seqnum());
    let _ = element.post_message(msg);
}

/// A frame's memories for a LOG line: "2 memories (memfd), 2 in registered files".
pub fn describe_memories(memories: &[fdlink::protocol::MemoryDesc]) -> String {
    use fdlink::protocol::MemoryKind;
    if memories.is_empty() {
        return "no memory".into();
    }
    let kinds = match (
        memories.iter().any(|m| m.kind == MemoryKind::Memfd),
        memories.iter().any(|m| m.kind == MemoryKind::DmaBuf),
    ) {
        (true, true) => "memfd and dmabuf",
        (false, true) => "dmabuf",
        _ => "memfd",
    };
    let registered = memories.iter().filter(|m| m.file_id != 0).count();
    format!(
        "{} memories ({kinds}), {registered} in registered files",
        memories.len()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Counts the `fdlink-stats` messages from `element` on `bus` for `span`.
    fn count(bus: &gst::Bus, element: &gst::Element, span: Duration) -> usize {
        let end = Instant::now() + span;
        let mut n = 0;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let Some(msg) = bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(left.as_nanos() as u64),
                &[gst::MessageType::Element],
            ) else {
                break;
            };
            if msg.src() == Some(element.upcast_ref())
                && msg.structure().is_some_and(|s| s.name() == MESSAGE_NAME)
            {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn posts_every_interval_while_started_only() {
        gst::init().unwrap();
        // BaseSink's own `stats` will do: what is posted is whatever the property holds.
        let sink = gst::ElementFactory::make("fakesink").build().unwrap();
        let bus = gst::Bus::new();
        sink.set_bus(Some(&bus));
        let ticks = StatsInterval::default();
        ticks.set_interval_ms(50);
        assert_eq!(
            count(&bus, &sink, Duration::from_millis(200)),
            0,
            "not started"
        );
        ticks.start(&sink);
        let n = count(&bus, &sink, Duration::from_millis(520));
        assert!((7..=11).contains(&n), "{n} messages in 520 ms at 50 ms");
        ticks.set_interval_ms(0);
        assert_eq!(
            count(&bus, &sink, Duration::from_millis(200)),
            0,
            "interval 0"
        );
        ticks.set_interval_ms(100);
        let n = count(&bus, &sink, Duration::from_millis(520));
        assert!((3..=6).contains(&n), "{n} messages in 520 ms at 100 ms");
        ticks.stop();
        assert_eq!(count(&bus, &sink, Duration::from_millis(200)), 0, "stopped");
        sink.set_bus(None);
    }
}
