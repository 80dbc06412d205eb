//! The control plane between the two pipelines: queries, upstream events and bus messages to
//! and from their packets. (The table of queries waiting for a reply is the core's
//! `fdlink::pending::PendingQueries`.)
//!
//! Queries and events cross as their GstQueryType / GstEventType value plus their structure as
//! a string; the receiving side rebuilds them with `gst_query_new_custom` /
//! `gst_event_new_custom`, which GStreamer's own parse functions read like native ones (the
//! ipcpipeline elements do the same). Fields that do not survive a string round trip are
//! dropped (see `wire_event::serializable_structure`).
//!
//! Texts from the peer pass `fdlink::structure_limits` before GStreamer parses them: the
//! packet decode refuses a packet past the limits (the peer is dropped), and every parse here
//! checks again, so no peer text reaches GStreamer's recursive parser unchecked. Texts sent
//! are fdlink's own serialization, which does not grow with nesting (see
//! `wire_event::serializable_structure`).

use glib::translate::{FromGlib, FromGlibPtrFull, IntoGlib, IntoGlibPtr};
use gst::prelude::*;

use std::sync::LazyLock;

use crate::peer_names::{parse_from_peer, quark_from_peer};
use crate::wire_event::serializable_structure;
use fdlink::protocol::{self, EventPacket, MessagePacket, QueryPacket, QueryReplyPacket};
use gst::glib;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "fdlinkcontrol",
        gst::DebugColorFlags::empty(),
        Some("fdlink's control plane: events, queries and messages across"),
    )
});

/// A structure text from the peer, parsed if it is within the limits and parses.
fn structure_from_peer(text: &str) -> Option<gst::Structure> {
    match parse_from_peer(text, str::parse) {
        Ok(parsed) => parsed.ok(),
        Err(e) => {
            gst::warning!(CAT, "not parsing a structure from the peer: {e}");
            None
        }
    }
}

/// Caps text from the peer, parsed; the error names why not (past the limits, or unparsable).
pub fn caps_from_peer(text: &str) -> Result<gst::Caps, String> {
    parse_from_peer(text, str::parse::<gst::Caps>)
        .map_err(|e| format!("caps refused: {e}"))?
        .map_err(|_| format!("unparsable caps {text:?}"))
}

/// What crosses back for an answered (or not) query: whether it was answered, and its
/// structure as text. An answer too long for a packet fails the query.
pub fn reply_structure(answered: bool, query: &gst::QueryRef) -> (bool, String) {
    let text = query
        .structure()
        .map_or_else(String::new, |s| serializable_structure(s, |_| {}));
    // The reply packet: the header, the id, `answered` and three reserved bytes, the text.
    if protocol::HEADER_SIZE + 8 + text.len() > protocol::MAX_PACKET_SIZE {
        gst::warning!(
            CAT,
            "failing the {} query: its answer does not fit in a packet ({} bytes or more)",
            query.type_(),
            text.len()
        );
        return (false, String::new());
    }
    (answered, text)
}

/// A query as a packet.
pub fn query_to_packet(id: u32, query: &gst::QueryRef) -> QueryPacket {
    QueryPacket {
        id,
        query_type: query.type_().into_glib() as u32,
        structure: query
            .structure()
            .map_or_else(String::new, |s| serializable_structure(s, |_| {})),
    }
}

/// Rebuilds a query from a packet; None when its structure does not parse.
pub fn query_from_packet(p: &QueryPacket) -> Option<gst::Query> {
    let structure = structure_from_peer(&p.structure)?;
    // SAFETY: from_glib maps unknown values to QueryType::__Unknown, which does not fit.
    let query_type = unsafe { gst::QueryType::from_glib(p.query_type as gst::ffi::GstQueryType) };
    if let Err(e) = crate::peer_fields::query_fits(query_type, Some(&structure)) {
        gst::warning!(CAT, "{e}");
        return None;
    }
    // SAFETY: gst_query_new_custom takes ownership of the structure and returns a new query
    // (or NULL, which from_glib_full turns into None through Option).
    unsafe {
        Option::<gst::Query>::from_glib_full(gst::ffi::gst_query_new_custom(
            p.query_type as gst::ffi::GstQueryType,
            structure.into_glib_ptr(),
        ))
    }
}

/// Copies an answered reply's fields into `query`, as if it had been answered here.
pub fn apply_reply(query: &mut gst::QueryRef, reply: &QueryReplyPacket) -> bool {
    if !reply.answered {
        return false;
    }
    let Some(answer) = structure_from_peer(&reply.structure) else {
        return false;
    };
    // The answer goes in only if the query still has the fields of its type after it.
    let mut merged = query.structure().map(|s| s.to_owned());
    if let Some(m) = merged.as_mut() {
        for (name, value) in answer.iter() {
            m.set_value(name, value.clone());
        }
    }
    if let Err(e) = crate::peer_fields::query_fits(query.type_(), merged.as_deref()) {
        gst::warning!(CAT, "answer refused: {e}");
        return false;
    }
    let s = query.structure_mut();
    for (name, value) in answer.iter() {
        s.set_value(name, value.clone());
    }
    true
}

/// An event as a packet; `on_drop` is told each field dropped for having no string form.
pub fn event_to_packet(event: &gst::EventRef, on_drop: impl FnMut(&str)) -> EventPacket {
    EventPacket {
        event_type: crate::wire_event::event_type_code(event.type_()),
        seqnum: event.seqnum().into_glib(),
        structure: event
            .structure()
            .map_or_else(String::new, |s| serializable_structure(s, on_drop)),
    }
}

/// Rebuilds an event from a packet, keeping its seqnum (so the flush a seek causes carries the
/// seek's seqnum back); None when its structure does not parse.
pub fn event_from_packet(p: &EventPacket) -> Option<gst::Event> {
    let structure: Option<gst::Structure> = if p.structure.is_empty() {
        None
    } else {
        Some(structure_from_peer(&p.structure)?)
    };
    // SAFETY: from_glib maps unknown values to EventType::__Unknown, which does not fit.
    let event_type = unsafe { gst::EventType::from_glib(p.event_type as i32) };
    if let Err(e) = crate::peer_fields::event_fits(event_type, structure.as_deref()) {
        gst::warning!(CAT, "{e}");
        return None;
    }
    let ptr = structure.map_or(std::ptr::null_mut(), |s| s.into_glib_ptr());
    // SAFETY: gst_event_new_custom takes ownership of the structure (or NULL) and returns a
    // new event, or NULL.
    let mut event = unsafe {
        Option::<gst::Event>::from_glib_full(gst::ffi::gst_event_new_custom(
            p.event_type as gst::ffi::GstEventType,
            ptr,
        ))
    }?;
    set_seqnum(&mut event, p.seqnum);
    Some(event)
}

/// Gives `event` the seqnum that crossed the wire (0: none, the event keeps its own).
pub fn set_seqnum(event: &mut gst::Event, seqnum: u32) {
    if seqnum != 0 {
        // SAFETY: the event is writable (make_mut) and any non-zero u32 is a valid seqnum.
        unsafe { gst::ffi::gst_event_set_seqnum(event.make_mut().as_mut_ptr(), seqnum) };
    }
}

/// Message types that cross from a consumer's bus to the producer's.
pub fn forwards(message: &gst::MessageRef) -> bool {
    matches!(
        message.view(),
        gst::MessageView::Error(_)
            | gst::MessageView::Warning(_)
            | gst::MessageView::Info(_)
            | gst::MessageView::Element(_)
            | gst::MessageView::Eos(_)
            | gst::MessageView::Latency(_)
            | gst::MessageView::Buffering(_)
            | gst::MessageView::RequestState(_)
    )
}

/// Message types that cross from the producer's bus to the consumers'. (A new latency goes
/// when the producer's pipeline configures it, not as its request; EOS travels as an event.)
pub fn forwards_to_consumers(message: &gst::MessageRef) -> bool {
    matches!(
        message.view(),
        gst::MessageView::Error(_)
            | gst::MessageView::Warning(_)
            | gst::MessageView::Info(_)
            | gst::MessageView::Element(_)
    )
}

/// A bus message as a packet: errors, warnings and infos as their text, debug string, domain
/// and code; element messages as their structure.
pub fn message_to_packet(message: &gst::MessageRef) -> Option<MessagePacket> {
    let source = message
        .src()
        .map_or_else(String::new, |s| s.path_string().to_string());
    let text = |e: &glib::Error, debug: Option<&str>| {
        let s = gst::Structure::builder("fdlink-message")
            .field("text", e.message())
            .field("debug", debug.unwrap_or(""))
            .field("domain", e.domain().as_str())
            .field("code", e.code())
            .build();
        serializable_structure(&s, |_| {})
    };
    let structure = match message.view() {
        gst::MessageView::Error(m) => text(&m.error(), m.debug().as_deref()),
        gst::MessageView::Warning(m) => text(&m.error(), m.debug().as_deref()),
        gst::MessageView::Info(m) => text(&m.error(), m.debug().as_deref()),
        gst::MessageView::Element(m) => m
            .structure()
            .map_or_else(String::new, |s| serializable_structure(s, |_| {})),
        gst::MessageView::Buffering(m) => {
            let (mode, avg_in, avg_out, left) = m.buffering_stats();
            let s = gst::Structure::builder("fdlink-message")
                .field("percent", m.percent())
                .field("mode", mode.into_glib())
                .field("avg-in", avg_in)
                .field("avg-out", avg_out)
                .field("left", left)
                .build();
            serializable_structure(&s, |_| {})
        }
        gst::MessageView::RequestState(m) => {
            let s = gst::Structure::builder("fdlink-message")
                .field("state", m.requested_state().into_glib())
                .build();
            serializable_structure(&s, |_| {})
        }
        gst::MessageView::Eos(_) | gst::MessageView::Latency(_) => String::new(),
        _ => return None,
    };
    Some(MessagePacket {
        message_type: message.type_().into_glib(),
        source,
        structure,
    })
}

/// Rebuilds the peer's message to post on this side's bus from `element`. Texts name the peer
/// (`peer`, e.g. "consumer 2 (pid 41)") and the original source path; element messages get an
/// `fdlink-origin` field. The peer's EOS arrives as an element message `fdlink-peer-eos`: an
/// EOS message from a sink that has not seen EOS would end this pipeline.
pub fn message_from_packet(
    p: &MessagePacket,
    element: &gst::Element,
    peer: &str,
) -> Option<gst::Message> {
    let origin = format!("{peer} {}", p.source);
    let ty = p.message_type;
    match ty {
        gst::ffi::GST_MESSAGE_LATENCY => {
            return Some(gst::message::Latency::builder().src(element).build());
        }
        gst::ffi::GST_MESSAGE_EOS => {
            let s = gst::Structure::builder("fdlink-peer-eos")
                .field("fdlink-origin", origin)
                .build();
            return Some(gst::message::Element::builder(s).src(element).build());
        }
        _ => {}
    }
    let s = structure_from_peer(&p.structure)?;
    match ty {
        gst::ffi::GST_MESSAGE_ELEMENT => {
            let mut s = s;
            s.set("fdlink-origin", origin);
            return Some(gst::message::Element::builder(s).src(element).build());
        }
        gst::ffi::GST_MESSAGE_BUFFERING => {
            let percent = s.get::<i32>("percent").ok()?.clamp(0, 100);
            // SAFETY: from_glib maps unknown values to BufferingMode::__Unknown.
            let mode = unsafe { gst::BufferingMode::from_glib(s.get::<i32>("mode").unwrap_or(0)) };
            return Some(
                gst::message::Buffering::builder(percent)
                    .stats(
                        mode,
                        s.get::<i32>("avg-in").unwrap_or(-1),
                        s.get::<i32>("avg-out").unwrap_or(-1),
                        s.get::<i64>("left").unwrap_or(-1),
                    )
                    .src(element)
                    .build(),
            );
        }
        gst::ffi::GST_MESSAGE_REQUEST_STATE => {
            let v = s.get::<i32>("state").ok()?;
            if !(1..=4).contains(&v) {
                return None;
            }
            // SAFETY: 1..=4 are valid GstState values.
            let state = unsafe { gst::State::from_glib(v) };
            return Some(
                gst::message::RequestState::builder(state)
                    .src(element)
                    .build(),
            );
        }
        _ => {}
    }
    let text = s.get::<String>("text").ok()?;
    let debug = s.get::<String>("debug").unwrap_or_default();
    let domain = s.get::<String>("domain").unwrap_or_default();
    let code = s.get::<i32>("code").unwrap_or(0);
    let error = new_error(&domain, code, &format!("{origin}: {text}"));
    let debug = format!("{origin}: {debug}");
    Some(match ty {
        gst::ffi::GST_MESSAGE_ERROR => gst::message::Error::builder_from_error(error)
            .debug(&debug)
            .src(element)
            .build(),
        gst::ffi::GST_MESSAGE_WARNING => gst::message::Warning::builder_from_error(error)
            .debug(&debug)
            .src(element)
            .build(),
        gst::ffi::GST_MESSAGE_INFO => gst::message::Info::builder_from_error(error)
            .debug(&debug)
            .src(element)
            .build(),
        _ => return None,
    })
}

/// A GError in the domain named `domain` (GStreamer's own domains keep their meaning); in
/// GStreamer's stream error domain if `domain` is empty, or is a name new to this process
/// past the limit on names from peers.
fn new_error(domain: &str, code: i32, message: &str) -> glib::Error {
    let stream_errors = || glib::Quark::from_str("gst-stream-error-quark");
    let quark = if domain.is_empty() {
        stream_errors()
    } else {
        quark_from_peer(domain).unwrap_or_else(|e| {
            gst::warning!(CAT, "error domain {domain:?} from the peer not kept: {e}");
            stream_errors()
        })
    };
    let message = std::ffi::CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: g_error_new_literal copies the message and returns a new GError we own.
    unsafe {
        glib::Error::from_glib_full(glib::ffi::g_error_new_literal(
            quark.into_glib(),
            code,
            message.as_ptr(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_cross_and_answers_come_back() {
        gst::init().unwrap();
        let q = gst::query::Position::new(gst::Format::Time);
        let p = query_to_packet(3, &q);
        let mut rebuilt = query_from_packet(&p).unwrap();
        assert_eq!(rebuilt.type_(), gst::QueryType::Position);
        // The other side answers it...
        match rebuilt.get_mut().unwrap().view_mut() {
            gst::QueryViewMut::Position(pos) => pos.set(gst::ClockTime::from_seconds(7)),
            _ => unreachable!(),
        }
        let reply = QueryReplyPacket {
            id: 3,
            answered: true,
            structure: rebuilt.structure().unwrap().to_string(),
        };
        // ... and the answer lands in the original query.
        let mut q = gst::query::Position::new(gst::Format::Time);
        assert!(apply_reply(q.get_mut().unwrap(), &reply));
        assert_eq!(
            q.result(),
            gst::GenericFormattedValue::from(gst::ClockTime::from_seconds(7))
        );
        assert!(!apply_reply(
            q.get_mut().unwrap(),
            &QueryReplyPacket {
                answered: false,
                ..reply
            }
        ));
    }

    #[test]
    fn seeks_cross_with_their_seqnum() {
        gst::init().unwrap();
        let seek = gst::event::Seek::new(
            1.0,
            gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
            gst::SeekType::Set,
            gst::ClockTime::from_seconds(2),
            gst::SeekType::None,
            gst::ClockTime::NONE,
        );
        let back = event_from_packet(&event_to_packet(&seek, |_| {})).unwrap();
        assert_eq!(back.seqnum(), seek.seqnum());
        match back.view() {
            gst::EventView::Seek(s) => {
                let (rate, flags, start_type, start, _, _) = s.get();
                assert_eq!(rate, 1.0);
                assert!(flags.contains(gst::SeekFlags::FLUSH));
                assert_eq!(start_type, gst::SeekType::Set);
                assert_eq!(
                    start,
                    gst::GenericFormattedValue::from(gst::ClockTime::from_seconds(2))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_cross_with_their_origin() {
        gst::init().unwrap();
        let src = gst::ElementFactory::make("fakesrc")
            .name("dec0")
            .build()
            .unwrap();
        let msg = gst::message::Error::builder(gst::StreamError::Decode, "bad bitstream")
            .debug("at byte 42")
            .src(&src)
            .build();
        let p = message_to_packet(&msg).unwrap();
        assert_eq!(p.source, "/GstFakeSrc:dec0");
        let sink = gst::ElementFactory::make("fakesink").build().unwrap();
        let back = message_from_packet(&p, &sink, "consumer 1 (pid 9)").unwrap();
        match back.view() {
            gst::MessageView::Error(e) => {
                let err = e.error();
                assert!(err.matches(gst::StreamError::Decode));
                assert!(
                    err.message()
                        .contains("consumer 1 (pid 9) /GstFakeSrc:dec0: bad bitstream")
                );
                assert!(e.debug().unwrap().contains("at byte 42"));
            }
            other => panic!("{other:?}"),
        }
    }
}
