//! Frames skipped for consumers at their limit are announced, never silent: each skip sends a
//! QoS event upstream and posts a QoS message, as a sink that drops buffers does, and a warning
//! sums them up at most every few seconds. Frames copied for consumers at their limit
//! (`slow-policy=copy`) are not lost, so they get no QoS and no warning: an `fdlink-copies`
//! element message (see [`crate::stats_interval::post_copies`]) at most once a second.

use std::time::Duration;

use gst::prelude::*;
use gst_base::prelude::*;

use super::CAT;
use fdlink::warning_gate::WarningGate;

/// The shortest time between two warnings about skipped frames.
const WARNING_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest time between two `fdlink-copies` messages.
const COPY_NOTICE_INTERVAL: Duration = Duration::from_secs(1);

/// Skips counted for the announcements, per stream.
#[derive(Debug)]
pub(super) struct Skips {
    /// Frames rendered, for the QoS message's `processed`.
    processed: u64,
    /// Frame offers skipped for a consumer, in all.
    skipped: u64,
    warnings: WarningGate,
    /// Copies made for consumers at their limit (slow-policy=copy), in all.
    copied: u64,
    copy_notices: WarningGate,
}

impl Default for Skips {
    fn default() -> Self {
        Skips {
            processed: 0,
            skipped: 0,
            warnings: WarningGate::new(WARNING_INTERVAL),
            copied: 0,
            copy_notices: WarningGate::new(COPY_NOTICE_INTERVAL),
        }
    }
}

impl Skips {
    /// One frame rendered; `skipped` offers of it (or of frames that made way for it) were
    /// skipped for consumers at their limit, and `copied` consumers at their limit were sent a
    /// copy of it (slow-policy=copy).
    pub(super) fn count(
        &mut self,
        element: &gst_base::BaseSink,
        buffer: &gst::BufferRef,
        (skipped, copied): (u64, u64),
        live: bool,
    ) {
        self.processed += 1;
        if copied > 0 {
            self.copied += copied;
            gst::debug!(
                CAT,
                obj = element,
                "slow-policy=copy: {copied} consumers at max-held get this frame as a copy"
            );
            if let Some(unannounced) = self.copy_notices.note(copied) {
                crate::stats_interval::post_copies(
                    element.upcast_ref(),
                    unannounced,
                    self.copied,
                    "slow-policy=copy: a consumer at max-held gets a copy in the memfd pool, so upstream's buffers go back",
                );
            }
        }
        if skipped == 0 {
            return;
        }
        self.skipped += skipped;
        gst::debug!(
            CAT,
            obj = element,
            "{skipped} frames skipped for consumers at their limit ({} in all)",
            self.skipped
        );
        self.announce_qos(element, buffer, live);
        let Some(unwarned) = self.warnings.note(skipped) else {
            return;
        };
        gst::element_warning!(
            element,
            gst::CoreError::Failed,
            ("fdlinksink skipped frames for a consumer at its limit"),
            [
                "{} frames skipped since the last warning, {} in all: a consumer holds max-held buffers or reads slower than the stream; its slow-policy decides (the stats property counts per consumer)",
                unwarned,
                self.skipped
            ]
        );
        gst::debug!(CAT, obj = element, "warned of {unwarned} skipped frames");
    }

    /// A QoS event upstream (overflow: the stream outruns a consumer) and a QoS message naming
    /// the skipped buffer, in the running time of this pipeline.
    fn announce_qos(&self, element: &gst_base::BaseSink, buffer: &gst::BufferRef, live: bool) {
        let segment = element.segment();
        let segment = segment.downcast_ref::<gst::ClockTime>();
        let running_time = segment.and_then(|s| s.to_running_time(buffer.pts()));
        let stream_time = segment.and_then(|s| s.to_stream_time(buffer.pts()));
        let event = gst::event::Qos::new(gst::QOSType::Overflow, 1.0, 0, running_time);
        element.sink_pad().push_event(event);
        let message = gst::message::Qos::builder(live)
            .running_time(running_time)
            .stream_time(stream_time)
            .timestamp(buffer.pts())
            .duration(buffer.duration())
            .stats(
                gst::format::Buffers::from_u64(self.processed),
                gst::format::Buffers::from_u64(self.skipped),
            )
            .src(element)
            .build();
        let _ = element.post_message(message);
    }
}
