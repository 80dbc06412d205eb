//! GStreamer events to and from the protocol's event packets: the GstEventType value plus the
//! event's structure serialized as a string. Fields that cannot be serialized are dropped.

use gst::prelude::*;

use crate::protocol::EventPacket;

/// The wire code of an event type: its GstEventType value, stable across GStreamer versions.
pub fn event_type_code(t: gst::EventType) -> u32 {
    use glib::translate::IntoGlib;
    t.into_glib() as u32
}

/// `s` as a string, without the fields whose values do not survive a string round trip
/// (objects such as a GstStream print but do not parse). `on_drop` is told each dropped field.
pub fn serializable_structure(s: &gst::StructureRef, mut on_drop: impl FnMut(&str)) -> String {
    let mut out = gst::Structure::new_empty(s.name());
    for (name, value) in s.iter() {
        let round_trips = value
            .serialize()
            .is_ok_and(|text| glib::Value::deserialize(&text, value.type_()).is_ok());
        if round_trips {
            out.set_value(name, value.clone());
        } else {
            on_drop(name.as_str());
        }
    }
    out.to_string()
}

/// A received event packet, decoded into what fdlinksrc acts on.
#[derive(Debug)]
pub enum WireEvent {
    StreamStart {
        stream_id: String,
        group_id: Option<u32>,
    },
    Segment(gst::Segment),
    Tag(gst::TagList),
    /// Gap timestamp is CLOCK_MONOTONIC ns (as buffer times on the wire).
    Gap {
        timestamp: u64,
        duration: u64,
    },
    Eos,
    FlushStart,
    FlushStop,
    /// Any other serialized downstream event, rebuilt as a custom downstream event.
    CustomDownstream(gst::Structure),
    Other(gst::EventType),
}

fn parse(p: &EventPacket) -> Result<Option<gst::Structure>, String> {
    if p.structure.is_empty() {
        return Ok(None);
    }
    p.structure
        .parse::<gst::Structure>()
        .map(Some)
        .map_err(|e| format!("unparsable event structure {:?}: {e}", p.structure))
}

/// Decodes an event packet. Unknown event types are reported as `Other`, not errors.
pub fn decode(p: &EventPacket) -> Result<WireEvent, String> {
    use glib::translate::FromGlib;
    // SAFETY: from_glib maps unknown values to EventType::__Unknown.
    let ty = unsafe { gst::EventType::from_glib(p.event_type as i32) };
    let s = parse(p)?;
    let field = |name: &str| -> Result<&gst::StructureRef, String> {
        s.as_deref()
            .ok_or_else(|| format!("{ty:?} event without structure (need {name})"))
    };
    Ok(match ty {
        gst::EventType::StreamStart => {
            let s = field("stream-id")?;
            WireEvent::StreamStart {
                stream_id: s
                    .get::<String>("stream-id")
                    .map_err(|e| format!("stream-start: {e}"))?,
                group_id: s.get::<u32>("group-id").ok(),
            }
        }
        gst::EventType::Segment => WireEvent::Segment(
            field("segment")?
                .get::<gst::Segment>("segment")
                .map_err(|e| format!("segment: {e}"))?,
        ),
        gst::EventType::Tag => WireEvent::Tag(
            field("taglist")?
                .get::<gst::TagList>("taglist")
                .map_err(|e| format!("tag: {e}"))?,
        ),
        gst::EventType::Gap => {
            let s = field("timestamp")?;
            WireEvent::Gap {
                timestamp: s.get::<u64>("timestamp").map_err(|e| format!("gap: {e}"))?,
                duration: s.get::<u64>("duration").map_err(|e| format!("gap: {e}"))?,
            }
        }
        gst::EventType::Eos => WireEvent::Eos,
        gst::EventType::FlushStart => WireEvent::FlushStart,
        gst::EventType::FlushStop => WireEvent::FlushStop,
        gst::EventType::CustomDownstream | gst::EventType::CustomDownstreamOob => {
            WireEvent::CustomDownstream(s.ok_or("custom event without structure")?)
        }
        other => WireEvent::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(ev: gst::Event) -> WireEvent {
        let p = EventPacket {
            event_type: event_type_code(ev.type_()),
            seqnum: 0,
            structure: ev
                .structure()
                .map_or_else(String::new, |s| serializable_structure(s, |_| {})),
        };
        decode(&p).unwrap()
    }

    #[test]
    fn events_survive_the_wire() {
        gst::init().unwrap();
        let ss = gst::event::StreamStart::builder("abc/video")
            .group_id(gst::GroupId::next())
            .stream(gst::Stream::new(
                Some("abc"),
                None,
                gst::StreamType::VIDEO,
                gst::StreamFlags::empty(),
            ))
            .build();
        assert!(
            matches!(roundtrip(ss), WireEvent::StreamStart { stream_id, group_id: Some(_) } if stream_id == "abc/video")
        );

        let mut seg = gst::FormattedSegment::<gst::ClockTime>::new();
        seg.set_start(gst::ClockTime::from_seconds(3));
        seg.set_rate(2.0);
        match roundtrip(gst::event::Segment::new(&seg)) {
            WireEvent::Segment(s) => {
                let s = s.downcast::<gst::ClockTime>().unwrap();
                assert_eq!(s.start(), Some(gst::ClockTime::from_seconds(3)));
                assert_eq!(s.rate(), 2.0);
            }
            other => panic!("{other:?}"),
        }

        let mut tags = gst::TagList::new();
        tags.get_mut()
            .unwrap()
            .add::<gst::tags::Title>(&"a title", gst::TagMergeMode::Append);
        match roundtrip(gst::event::Tag::new(tags)) {
            WireEvent::Tag(t) => assert_eq!(t.get::<gst::tags::Title>().unwrap().get(), "a title"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(roundtrip(gst::event::Eos::new()), WireEvent::Eos));
        assert!(matches!(
            roundtrip(gst::event::FlushStart::new()),
            WireEvent::FlushStart
        ));
        assert!(matches!(
            roundtrip(gst::event::FlushStop::new(true)),
            WireEvent::FlushStop
        ));
        let custom = gst::event::CustomDownstream::new(
            gst::Structure::builder("my-marker")
                .field("n", 5i32)
                .build(),
        );
        assert!(
            matches!(roundtrip(custom), WireEvent::CustomDownstream(s) if s.get::<i32>("n") == Ok(5))
        );
    }

    #[test]
    fn bad_structures_are_errors_not_panics() {
        gst::init().unwrap();
        let p = EventPacket {
            event_type: event_type_code(gst::EventType::Segment),
            seqnum: 0,
            structure: "not a (structure".into(),
        };
        assert!(decode(&p).is_err());
        let p = EventPacket {
            event_type: event_type_code(gst::EventType::Segment),
            seqnum: 0,
            structure: String::new(),
        };
        assert!(decode(&p).unwrap_err().contains("without structure"));
        let p = EventPacket {
            event_type: 0x7fff_0000,
            seqnum: 0,
            structure: String::new(),
        };
        assert!(matches!(decode(&p), Ok(WireEvent::Other(_))));
    }
}
