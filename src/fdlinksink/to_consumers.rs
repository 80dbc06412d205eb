//! Control packets fdlinksink sends every consumer, in stream order with the buffers:
//! serialized events (the sticky ones replayed to consumers that join), State packets, bus
//! messages, and the error that stopped this pipeline.

use std::os::fd::BorrowedFd;
use std::sync::Mutex;
use std::time::Duration;

use gst::prelude::*;

use super::CAT;
use super::hub::{Hub, StickyKind};
use super::send;
use crate::control;
use crate::session::{self, Mode};
use fdlink::protocol::Packet;

/// The sticky slot an event fills on the hub (replayed to consumers that join), or None.
pub(super) fn sticky_kind(event: &gst::EventRef) -> StickyKind {
    match event.view() {
        gst::EventView::StreamStart(_) => StickyKind::StreamStart,
        gst::EventView::Segment(_) => StickyKind::Segment,
        gst::EventView::Tag(_) => StickyKind::Tags,
        gst::EventView::Eos(_) => StickyKind::Eos,
        gst::EventView::FlushStop(_) => StickyKind::FlushStop,
        _ => StickyKind::None,
    }
}

/// Encodes a control packet and sends it to every consumer, in stream order.
pub(super) fn send_packet(
    element: &gst::Element,
    hub: &Hub,
    packet: Packet<BorrowedFd<'_>>,
    sticky: StickyKind,
) {
    let mut bytes = Vec::new();
    match packet.encode(&mut bytes) {
        Ok(()) => hub.send_control(bytes, sticky, false),
        Err(e) => gst::warning!(
            CAT,
            obj = element,
            "not sending a control packet to the consumers: {e}"
        ),
    }
}

/// Sends the caps negotiated on `element`'s sink pad; they are replayed to consumers that join.
pub(super) fn send_caps(hub: &Hub, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
    let mut bytes = Vec::new();
    Packet::<BorrowedFd<'_>>::Caps(crate::wire_event::caps_text(caps))
        .encode(&mut bytes)
        .map_err(|e| gst::loggable_error!(CAT, "caps do not fit a packet: {e}"))?;
    hub.send_control(bytes, StickyKind::None, true);
    Ok(())
}

/// Sends a bus message of `element`'s pipeline, if it is one that crosses.
pub(super) fn send_message(element: &gst::Element, hub: &Hub, message: &gst::MessageRef) {
    if let Some(p) = control::message_to_packet(message) {
        send_packet(element, hub, Packet::Message(p), StickyKind::None);
    }
}

/// The first error this pipeline posted since the sink started. Its Message packet goes out
/// as the error is posted, but the application then stops the pipeline, and the sink's
/// connections would close with that packet (and the frames before it) still queued for a
/// consumer whose socket is full: so the sink tells every consumer again as it stops, in an
/// error packet, which fdlinksrc reports as the stream's end instead of a bare disconnection.
#[derive(Default)]
pub(super) struct PipelineError(Mutex<Option<String>>);

impl PipelineError {
    /// Keeps `message` if it is the pipeline's first error (from the bus watch, as it is
    /// posted).
    pub(super) fn note(&self, message: &gst::MessageRef) {
        let gst::MessageView::Error(e) = message.view() else {
            return;
        };
        let mut first = self.0.lock().unwrap();
        if first.is_none() {
            let origin = message
                .src()
                .map_or_else(|| "the pipeline".into(), |s| s.path_string().to_string());
            *first = Some(format!("its pipeline failed in {origin}: {}", e.error()));
        }
    }

    /// A new run: no error yet.
    pub(super) fn clear(&self) {
        self.0.lock().unwrap().take();
    }

    /// As the sink stops: sends the noted error, if any, to every consumer behind what is
    /// queued for it, and waits up to `timeout` until the queues are empty (a consumer that
    /// reads nothing holds up the stop no longer).
    pub(super) fn send_before_close(&self, element: &gst::Element, hub: &Hub, timeout: Duration) {
        let Some(text) = self.0.lock().unwrap().take() else {
            return;
        };
        gst::debug!(CAT, obj = element, "telling the consumers: {text}");
        send_packet(element, hub, Packet::Error(text), StickyKind::None);
        hub.drain(timeout);
    }
}

/// Sends an event that reached `element` (with its pipeline's base time).
pub(super) fn send_event(element: &gst::Element, hub: &Hub, event: &gst::Event) {
    let p = control::event_to_packet(event, |field| {
        gst::debug!(
            CAT,
            obj = element,
            "{:?} event: dropping field {field}, it has no string form",
            event.type_()
        );
    });
    let base_time = send::base_time_monotonic(element);
    if let gst::EventView::Segment(s) = event.view() {
        // Not in time: nothing to clip by.
        let segment = s.segment().downcast_ref::<gst::ClockTime>().cloned();
        let seqnum = event.seqnum();
        hub.set_joiner_segment(move |live| {
            joiner_segment(segment.as_ref()?, seqnum, live, base_time)
        });
    }
    let packet = Packet::Event {
        event: p,
        base_time,
    };
    send_packet(element, hub, packet, sticky_kind(event));
}

/// The Event packet of `segment` starting at `live` (ns), where a joiner's stream goes on
/// after the latest-keyframe backlog, the running time and stream time of every position
/// unchanged: what the backlog holds before `live` is clipped downstream, decoded but not
/// shown. None when `live` is not inside the segment, or it plays backwards.
fn joiner_segment(
    segment: &gst::FormattedSegment<gst::ClockTime>,
    seqnum: gst::Seqnum,
    live: u64,
    base_time: u64,
) -> Option<Vec<u8>> {
    let live = gst::ClockTime::from_nseconds(live);
    if segment.rate() < 0.0
        || segment.start().is_some_and(|s| live <= s)
        || segment.stop().is_some_and(|s| live >= s)
    {
        return None;
    }
    let mut clipped = segment.clone();
    clipped.set_base(segment.to_running_time(live)?);
    clipped.set_time(segment.to_stream_time(live)?);
    clipped.set_start(live);
    clipped.set_offset(gst::ClockTime::ZERO);
    clipped.set_position(live);
    let event = gst::event::Segment::builder(&clipped)
        .seqnum(seqnum)
        .build();
    let packet = Packet::<BorrowedFd<'_>>::Event {
        event: control::event_to_packet(&event, |_| {}),
        base_time,
    };
    let mut bytes = Vec::new();
    packet.encode(&mut bytes).ok()?;
    Some(bytes)
}

/// Tells the consumers the state `element` reached (or, PLAYING → PAUSED, is going to).
pub(super) fn send_state(element: &gst::Element, hub: &Hub, state: gst::State, mode: Mode) {
    let p = Packet::State(session::state_packet(state, mode));
    // PAUSED is a preroll barrier: a follower that prerolls after it lets this pipeline's own
    // preroll complete (wait_prerolled).
    let kind = if state == gst::State::Paused {
        StickyKind::PausedState
    } else {
        StickyKind::State
    };
    send_packet(element, hub, p, kind);
}
