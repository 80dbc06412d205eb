//! The fields GStreamer's own event and query types need, checked before a peer's structure
//! becomes one. An event or query is rebuilt from the peer's type code and structure
//! (`gst_event_new_custom` / `gst_query_new_custom`), and GStreamer's parse functions then
//! read their fields without looking: a segment event without its `segment`, a tag event
//! without its `taglist`, read a NULL; an allocation query whose `pool` is not an array
//! crashes inside libgstreamer. So each known type's fields must be there with their types,
//! and types that make no sense across the link (objects, allocation, context) are refused.

use glib::types::StaticType;
use gst::glib;

/// A field a type needs: its name and its GType.
type Field = (&'static str, fn() -> glib::Type);

fn format() -> glib::Type {
    gst::Format::static_type()
}
fn int64() -> glib::Type {
    glib::Type::I64
}
fn uint64() -> glib::Type {
    glib::Type::U64
}
fn uint() -> glib::Type {
    glib::Type::U32
}
fn boolean() -> glib::Type {
    glib::Type::BOOL
}
fn double() -> glib::Type {
    glib::Type::F64
}
fn string() -> glib::Type {
    glib::Type::STRING
}
fn caps() -> glib::Type {
    gst::Caps::static_type()
}

/// Checks `s` has every field of `fields` with its type; the error names the first that does
/// not.
fn has_fields(what: &str, s: Option<&gst::StructureRef>, fields: &[Field]) -> Result<(), String> {
    for (name, ty) in fields {
        let found = s.and_then(|s| s.value(*name).ok()).map(|v| v.type_());
        if found != Some(ty()) {
            return Err(format!(
                "{what} refused: its field {name} is {}, not {}",
                found.map_or_else(|| "missing".to_string(), |t| t.name().to_string()),
                ty().name()
            ));
        }
    }
    Ok(())
}

/// Whether a query of type `query_type` with structure `s` from the peer may be rebuilt and
/// run here: the types that cross (position, duration, latency, seeking, segment, convert,
/// formats, uri, caps, accept-caps, custom), each with its fields.
pub fn query_fits(query_type: gst::QueryType, s: Option<&gst::StructureRef>) -> Result<(), String> {
    use gst::QueryType as Q;
    let what = format!("{query_type} query");
    let fields: &[Field] = match query_type {
        Q::Position => &[("format", format), ("current", int64)],
        Q::Duration => &[("format", format), ("duration", int64)],
        Q::Latency => &[
            ("live", boolean),
            ("min-latency", uint64),
            ("max-latency", uint64),
        ],
        Q::Seeking => &[
            ("format", format),
            ("seekable", boolean),
            ("segment-start", int64),
            ("segment-end", int64),
        ],
        Q::Segment => &[
            ("rate", double),
            ("format", format),
            ("start_value", int64),
            ("stop_value", int64),
        ],
        Q::Convert => &[
            ("src_format", format),
            ("src_value", int64),
            ("dest_format", format),
            ("dest_value", int64),
        ],
        // The formats list may be absent (none yet); uri fields are read with a type check.
        Q::Formats | Q::Uri | Q::Custom => &[],
        Q::Caps => &[("caps", caps)],
        Q::AcceptCaps => &[("caps", caps), ("result", boolean)],
        _ => return Err(format!("{what} refused: it does not cross the link")),
    };
    if query_type == Q::Caps
        && let Some(filter) = s.and_then(|s| s.value("filter").ok())
        && filter.type_() != caps()
    {
        return Err(format!("{what} refused: its field filter is not GstCaps"));
    }
    has_fields(&what, s, fields)
}

/// Whether an event of type `event_type` with structure `s` from the peer may be rebuilt and
/// pushed or sent here, with the fields its parse function reads.
pub fn event_fits(event_type: gst::EventType, s: Option<&gst::StructureRef>) -> Result<(), String> {
    use gst::EventType as E;
    let what = format!("{event_type} event");
    let fields: &[Field] = match event_type {
        E::StreamStart => &[("stream-id", string)],
        E::Segment => &[("segment", gst::Segment::static_type)],
        E::Tag => &[("taglist", gst::TagList::static_type)],
        E::Gap => &[("timestamp", uint64), ("duration", uint64)],
        E::Toc => &[("toc", gst::Toc::static_type), ("updated", boolean)],
        // The origin may be NULL, which does not cross.
        E::Protection => &[("data", gst::Buffer::static_type), ("system_id", string)],
        E::SegmentDone => &[("format", format), ("position", int64)],
        E::FlushStop => &[("reset-time", boolean)],
        E::StreamGroupDone => &[("group-id", uint)],
        E::Qos => &[
            ("type", gst::QOSType::static_type),
            ("proportion", double),
            ("diff", int64),
            ("timestamp", uint64),
        ],
        E::Seek => &[
            ("rate", double),
            ("format", format),
            ("flags", gst::SeekFlags::static_type),
            ("cur-type", gst::SeekType::static_type),
            ("cur", int64),
            ("stop-type", gst::SeekType::static_type),
            ("stop", int64),
        ],
        E::Latency => &[("latency", uint64)],
        E::Step => &[
            ("format", format),
            ("amount", uint64),
            ("rate", double),
            ("flush", boolean),
            ("intermediate", boolean),
        ],
        E::Caps => &[("caps", caps)],
        E::TocSelect => &[("uid", string)],
        E::Buffersize => &[
            ("format", format),
            ("minsize", int64),
            ("maxsize", int64),
            ("async", boolean),
        ],
        E::InstantRateChange => &[("rate", double), ("flags", gst::SegmentFlags::static_type)],
        E::InstantRateSyncTime => &[
            ("rate", double),
            ("running-time", uint64),
            ("upstream-running-time", uint64),
        ],
        // Read with a type check, or as a list GStreamer checks itself.
        E::SelectStreams => &[],
        E::Eos
        | E::FlushStart
        | E::Reconfigure
        | E::Navigation
        | E::CustomUpstream
        | E::CustomDownstream
        | E::CustomDownstreamOob
        | E::CustomDownstreamSticky
        | E::CustomBoth
        | E::CustomBothOob => &[],
        _ => return Err(format!("{what} refused: it does not cross the link")),
    };
    has_fields(&what, s, fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_events_and_queries_fit_and_hollow_ones_do_not() {
        gst::init().unwrap();
        let seg = gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new());
        let events = [
            seg,
            gst::event::StreamStart::new("abc"),
            gst::event::Gap::builder(gst::ClockTime::ZERO).build(),
            gst::event::FlushStop::new(true),
            gst::event::Latency::new(gst::ClockTime::ZERO),
            gst::event::Seek::new(
                1.0,
                gst::SeekFlags::FLUSH,
                gst::SeekType::Set,
                gst::ClockTime::ZERO,
                gst::SeekType::None,
                gst::ClockTime::NONE,
            ),
            gst::event::Tag::new(gst::TagList::new()),
            gst::event::Eos::new(),
        ];
        for ev in &events {
            assert_eq!(event_fits(ev.type_(), ev.structure()), Ok(()), "{ev:?}");
        }
        let hollow = gst::Structure::new_empty("GstEventStreamStart");
        let err = event_fits(gst::EventType::StreamStart, Some(&hollow)).unwrap_err();
        assert!(err.contains("stream-id is missing"), "{err}");
        assert!(event_fits(gst::EventType::Segment, None).is_err());
        assert!(event_fits(gst::EventType::SinkMessage, None).is_err());

        let q = gst::query::Position::new(gst::Format::Time);
        assert_eq!(query_fits(q.type_(), q.structure()), Ok(()));
        let q = gst::query::Caps::new(None);
        assert_eq!(query_fits(q.type_(), q.structure()), Ok(()));
        let q = gst::query::Allocation::new(None, false);
        assert!(query_fits(q.type_(), q.structure()).is_err());
        let mut wrong = gst::Structure::new_empty("GstQueryDuration");
        wrong.set("format", "time");
        wrong.set("duration", 5i64);
        let err = query_fits(gst::QueryType::Duration, Some(&wrong)).unwrap_err();
        assert!(err.contains("format is gchararray"), "{err}");
    }
}
