//! Control packets fdlinksink sends every consumer, in stream order with the buffers:
//! serialized events (the sticky ones replayed to consumers that join), State packets and bus
//! messages.

use std::os::fd::BorrowedFd;

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
        Err(e) => gst::warning!(CAT, obj = element, "not sending {packet:?}: {e}"),
    }
}

/// Sends the caps negotiated on `element`'s sink pad; they are replayed to consumers that join.
pub(super) fn send_caps(hub: &Hub, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
    let mut bytes = Vec::new();
    Packet::<BorrowedFd<'_>>::Caps(caps.to_string())
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
    let packet = Packet::Event {
        event: p,
        base_time,
    };
    send_packet(element, hub, packet, sticky_kind(event));
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
