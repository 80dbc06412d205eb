//! GStreamer events to and from the protocol's event packets: the GstEventType value plus the
//! event's structure serialized as a string. Fields that cannot be serialized are dropped.

use gst::prelude::*;

use fdlink::protocol::EventPacket;
use gst::glib;

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

/// A received event packet, as far as fdlinksrc treats it specially. Every other event is
/// rebuilt as it was sent (`control::event_from_packet`).
#[derive(Debug)]
pub enum WireEvent {
    /// The producer's segment: fdlinksrc shifts it onto its own timeline.
    Segment(gst::Segment),
    Eos,
    FlushStart,
    FlushStop,
    Other(gst::EventType),
}

/// Decodes an event packet. Unknown event types are reported as `Other`, not errors.
pub fn decode(p: &EventPacket) -> Result<WireEvent, String> {
    use glib::translate::FromGlib;
    // SAFETY: from_glib maps unknown values to EventType::__Unknown.
    let ty = unsafe { gst::EventType::from_glib(p.event_type as i32) };
    Ok(match ty {
        gst::EventType::Segment => {
            let s = p
                .structure
                .parse::<gst::Structure>()
                .map_err(|e| format!("unparsable segment event {:?}: {e}", p.structure))?;
            WireEvent::Segment(
                s.get::<gst::Segment>("segment")
                    .map_err(|e| format!("segment: {e}"))?,
            )
        }
        gst::EventType::Eos => WireEvent::Eos,
        gst::EventType::FlushStart => WireEvent::FlushStart,
        gst::EventType::FlushStop => WireEvent::FlushStop,
        other => WireEvent::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{event_from_packet, event_to_packet};

    fn packet(ev: &gst::Event) -> EventPacket {
        event_to_packet(ev, |_| {})
    }

    /// The event as fdlinksrc gets it back: rebuilt from its packet.
    fn rebuilt(ev: &gst::Event) -> gst::Event {
        let p = packet(ev);
        assert!(matches!(decode(&p).unwrap(), WireEvent::Other(_)));
        let back = event_from_packet(&p).unwrap();
        assert_eq!(back.type_(), ev.type_());
        assert_eq!(back.seqnum(), ev.seqnum());
        back
    }

    #[test]
    fn events_survive_the_wire() {
        gst::init().unwrap();
        let mut seg = gst::FormattedSegment::<gst::ClockTime>::new();
        seg.set_start(gst::ClockTime::from_seconds(3));
        seg.set_rate(2.0);
        match decode(&packet(&gst::event::Segment::new(&seg))).unwrap() {
            WireEvent::Segment(s) => {
                let s = s.downcast::<gst::ClockTime>().unwrap();
                assert_eq!(s.start(), Some(gst::ClockTime::from_seconds(3)));
                assert_eq!(s.rate(), 2.0);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(&packet(&gst::event::Eos::new())).unwrap(),
            WireEvent::Eos
        ));
        assert!(matches!(
            decode(&packet(&gst::event::FlushStart::new())).unwrap(),
            WireEvent::FlushStart
        ));
        assert!(matches!(
            decode(&packet(&gst::event::FlushStop::new(true))).unwrap(),
            WireEvent::FlushStop
        ));

        // A GstStream object has no string form: the stream-start crosses without it.
        let group = gst::GroupId::next();
        let ss = gst::event::StreamStart::builder("abc/video")
            .group_id(group)
            .stream(gst::Stream::new(
                Some("abc"),
                None,
                gst::StreamType::VIDEO,
                gst::StreamFlags::empty(),
            ))
            .build();
        match rebuilt(&ss).view() {
            gst::EventView::StreamStart(s) => {
                assert_eq!(s.stream_id(), "abc/video");
                assert_eq!(s.group_id(), Some(group));
                assert!(s.stream().is_none());
            }
            _ => unreachable!(),
        }

        let mut tags = gst::TagList::new();
        tags.get_mut()
            .unwrap()
            .add::<gst::tags::Title>(&"a title", gst::TagMergeMode::Append);
        match rebuilt(&gst::event::Tag::new(tags)).view() {
            gst::EventView::Tag(t) => {
                assert_eq!(t.tag().get::<gst::tags::Title>().unwrap().get(), "a title")
            }
            _ => unreachable!(),
        }
        let gap = gst::event::Gap::builder(gst::ClockTime::from_seconds(2))
            .duration(gst::ClockTime::from_mseconds(40))
            .build();
        match rebuilt(&gap).view() {
            gst::EventView::Gap(g) => assert_eq!(
                g.get(),
                (
                    gst::ClockTime::from_seconds(2),
                    Some(gst::ClockTime::from_mseconds(40))
                )
            ),
            _ => unreachable!(),
        }
        match rebuilt(&gst::event::StreamGroupDone::new(group)).view() {
            gst::EventView::StreamGroupDone(g) => assert_eq!(g.group_id(), group),
            _ => unreachable!(),
        }
        let pssh = gst::Buffer::from_slice([1u8, 2, 3]);
        match rebuilt(&gst::event::Protection::new("0000-1111", &pssh)).view() {
            gst::EventView::Protection(p) => {
                let (system, data, _) = p.get();
                assert_eq!(system, "0000-1111");
                assert_eq!(data.map_readable().unwrap().as_slice(), &[1, 2, 3]);
            }
            _ => unreachable!(),
        }
        match rebuilt(&gst::event::InstantRateChange::new(
            0.5,
            gst::SegmentFlags::empty(),
        ))
        .view()
        {
            gst::EventView::InstantRateChange(r) => assert_eq!(r.get().0, 0.5),
            _ => unreachable!(),
        }
        for custom in [
            gst::event::CustomDownstream::new(
                gst::Structure::builder("my-marker")
                    .field("n", 5i32)
                    .build(),
            ),
            gst::event::CustomDownstreamOob::new(
                gst::Structure::builder("my-oob").field("n", 6i32).build(),
            ),
        ] {
            let back = rebuilt(&custom);
            assert_eq!(back.structure(), custom.structure());
        }
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
        assert!(decode(&p).is_err());
        let p = EventPacket {
            event_type: 0x7fff_0000,
            seqnum: 0,
            structure: String::new(),
        };
        assert!(matches!(decode(&p), Ok(WireEvent::Other(_))));
        let p = EventPacket {
            event_type: event_type_code(gst::EventType::Tag),
            seqnum: 0,
            structure: "not a (structure".into(),
        };
        assert!(event_from_packet(&p).is_none());
    }
}
