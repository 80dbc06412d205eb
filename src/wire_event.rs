//! GStreamer events to and from the protocol's event packets: the GstEventType value plus the
//! event's structure serialized as a string. Fields that cannot be serialized are dropped.

use gst::prelude::*;

use fdlink::protocol::EventPacket;
use fdlink::structure_limits::{MAX_STRUCTURE_TEXT_SIZE, check_structure_text};
use gst::glib;

/// The wire code of an event type: its GstEventType value, stable across GStreamer versions.
pub fn event_type_code(t: gst::EventType) -> u32 {
    use glib::translate::IntoGlib;
    t.into_glib() as u32
}

/// `s` as text for a packet, without the fields whose values do not survive a round trip
/// (objects such as a GstStream print but do not parse; a GValueArray does not parse) or
/// would nest past the receiver's limit. `on_drop` is told each dropped field.
///
/// The text is fdlink's own, not `gst_structure_to_string`'s: that escapes a nested
/// structure's text once more at every level, doubling it (a 214-byte query nested 30 deep
/// became GiB), and GStreamer 1.22's bracket form (`gst_structure_serialize`) still does so
/// inside caps. Here nested structures and caps go in brackets, lists and arrays are written
/// element by element, strings are quoted with only `"`, `\` and the brackets escaped, and a
/// text stops growing at [`MAX_STRUCTURE_TEXT_SIZE`]: one that reaches it is returned cut
/// there, longer than any packet, and the packet's encode refuses it.
pub fn serializable_structure(s: &gst::StructureRef, mut on_drop: impl FnMut(&str)) -> String {
    let mut w = Writer::default();
    let _ = w.top_structure(s, &mut on_drop);
    w.out
}

/// Caps as text for a packet, as [`serializable_structure`] writes them (`ANY`, `EMPTY`, or
/// structures with their features, separated by `;`).
/// A field with no string form is left out.
pub fn caps_text(caps: &gst::CapsRef) -> String {
    let mut w = Writer::default();
    let _ = w.caps_body(caps, Some(&mut |_| {}));
    w.out
}

// A text cut at the limit must never fit in a packet.
const _: () = assert!(MAX_STRUCTURE_TEXT_SIZE >= fdlink::protocol::MAX_PACKET_SIZE);

/// Why a value was not written.
#[derive(Debug)]
enum Unwritable {
    /// No string form that reads back: its field is dropped.
    NoStringForm,
    /// The text passed [`MAX_STRUCTURE_TEXT_SIZE`]: it cannot cross.
    TooLong,
}

/// A structure text being written, never much longer than the limit.
#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn push(&mut self, s: &str) -> Result<(), Unwritable> {
        self.out.push_str(s);
        if self.out.len() > MAX_STRUCTURE_TEXT_SIZE {
            return Err(Unwritable::TooLong);
        }
        Ok(())
    }

    /// The top level: a field that cannot be written, or nests past the limit, is dropped.
    fn top_structure(
        &mut self,
        s: &gst::StructureRef,
        on_drop: &mut dyn FnMut(&str),
    ) -> Result<(), Unwritable> {
        self.push(s.name())?;
        self.top_fields(s, on_drop)
    }

    /// The fields of a top-level structure (or of caps), each written or dropped.
    fn top_fields(
        &mut self,
        s: &gst::StructureRef,
        on_drop: &mut dyn FnMut(&str),
    ) -> Result<(), Unwritable> {
        for (name, value) in s.iter() {
            let mark = self.out.len();
            let written = self.field(name, value).and_then(|()| {
                check_structure_text(&self.out[mark..]).map_err(|_| Unwritable::NoStringForm)
            });
            match written {
                Ok(()) => {}
                Err(Unwritable::NoStringForm) => {
                    self.out.truncate(mark);
                    on_drop(name.as_str());
                }
                Err(Unwritable::TooLong) => return Err(Unwritable::TooLong),
            }
        }
        Ok(())
    }

    /// A nested structure: all of it or nothing.
    fn structure(&mut self, s: &gst::StructureRef) -> Result<(), Unwritable> {
        self.push(s.name())?;
        for (name, value) in s.iter() {
            self.field(name, value)?;
        }
        Ok(())
    }

    /// `, name=(type)value`, the type as GStreamer gives it: a list's or array's is that of its
    /// first element.
    fn field(&mut self, name: &str, value: &glib::Value) -> Result<(), Unwritable> {
        let mut ty = value;
        while let Some(first) = elements(ty).and_then(|e| e.first()) {
            ty = first;
        }
        let ty = cast_type(ty.type_());
        self.push(", ")?;
        self.push(name)?;
        self.push("=(")?;
        self.push(ty.name())?;
        self.push(")")?;
        self.value(value)
    }

    fn value(&mut self, v: &glib::Value) -> Result<(), Unwritable> {
        let t = v.type_();
        if let Some(items) = elements(v) {
            let (open, close) = if t == gst::List::static_type() {
                ("{ ", " }")
            } else {
                ("< ", " >")
            };
            self.push(open)?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    self.push(", ")?;
                }
                self.value(item)?;
            }
            return self.push(close);
        }
        if t == gst::Structure::static_type() {
            return match v.get::<Option<&gst::StructureRef>>().ok().flatten() {
                Some(s) => {
                    self.push("[")?;
                    self.structure(s)?;
                    self.push("]")
                }
                None => self.push("NULL"),
            };
        }
        if t == gst::Caps::static_type() {
            return match v.get::<Option<gst::Caps>>().ok().flatten() {
                Some(c) if c.is_any() || c.is_empty() => self.caps_body(&c, None),
                Some(c) => {
                    self.push("[")?;
                    self.caps_body(&c, None)?;
                    self.push("]")
                }
                None => self.push("NULL"),
            };
        }
        if t == String::static_type() {
            return match v.get::<Option<&str>>() {
                Ok(Some(s)) => self.push_quoted(s),
                Ok(None) => self.push("NULL"),
                Err(_) => Err(Unwritable::NoStringForm),
            };
        }
        if t == gst::TagList::static_type() {
            let tags = v
                .get::<Option<gst::TagList>>()
                .ok()
                .flatten()
                .ok_or(Unwritable::NoStringForm)?;
            let mut inner = Writer::default();
            inner.tag_list(&tags)?;
            return self.push_quoted(&inner.out);
        }
        if t == gst::Sample::static_type() {
            let sample = v
                .get::<Option<gst::Sample>>()
                .ok()
                .flatten()
                .ok_or(Unwritable::NoStringForm)?;
            return self.sample(&sample);
        }
        self.leaf(v)
    }

    /// `ANY`, `EMPTY`, or each structure with its features (when not plain system memory).
    /// With `on_drop`, fields that cannot be written are dropped; without, they fail it all.
    fn caps_body(
        &mut self,
        caps: &gst::CapsRef,
        mut on_drop: Option<&mut dyn FnMut(&str)>,
    ) -> Result<(), Unwritable> {
        if caps.is_any() {
            return self.push("ANY");
        }
        if caps.is_empty() {
            return self.push("EMPTY");
        }
        for (i, (s, features)) in caps.iter_with_features().enumerate() {
            if i > 0 {
                self.push("; ")?;
            }
            self.push(s.name())?;
            if features.is_any() || !features.is_equal(&gst::CAPS_FEATURES_MEMORY_SYSTEM_MEMORY) {
                self.push("(")?;
                self.push(&features.to_string())?;
                self.push(")")?;
            }
            match on_drop.as_deref_mut() {
                Some(on_drop) => self.top_fields(s, on_drop)?,
                None => {
                    for (name, value) in s.iter() {
                        self.field(name, value)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A tag list as `gst_tag_list_new_from_string` reads it: a tag with several values
    /// holds them as a list.
    fn tag_list(&mut self, tags: &gst::TagListRef) -> Result<(), Unwritable> {
        self.push("taglist")?;
        for (name, values) in tags.iter_generic() {
            let values: Vec<&glib::SendValue> = values.collect();
            match values.as_slice() {
                [one] => self.field(name, one)?,
                many => {
                    let list = gst::List::new(many.iter().map(|v| (*v).clone()));
                    self.field(name, &list.to_value())?;
                }
            }
        }
        Ok(())
    }

    /// A sample as `gst_value_deserialize_sample` reads it: `hex:caps:segment:info`, the last
    /// three base64 of their NUL-terminated text with `_` for `=`, or `None`.
    fn sample(&mut self, sample: &gst::SampleRef) -> Result<(), Unwritable> {
        let hex = match sample.buffer() {
            Some(b) if b.size() * 2 > MAX_STRUCTURE_TEXT_SIZE => return Err(Unwritable::TooLong),
            Some(b) => {
                let map = b.map_readable().map_err(|_| Unwritable::NoStringForm)?;
                map.iter().map(|byte| format!("{byte:02x}")).collect()
            }
            None => "None".to_string(),
        };
        let base64 = |text: Option<String>| match text {
            Some(mut text) => {
                text.push('\0');
                glib::base64_encode(text.as_bytes()).replace('=', "_")
            }
            None => "None".to_string(),
        };
        let caps = match sample.caps() {
            Some(c) => {
                let mut inner = Writer::default();
                inner.caps_body(c, None)?;
                Some(inner.out)
            }
            None => None,
        };
        let segment = match sample.segment() {
            Some(seg) => Some(unquote(
                &seg.to_value()
                    .serialize()
                    .map_err(|_| Unwritable::NoStringForm)?,
            )),
            None => None,
        };
        let info = match sample.info() {
            Some(s) => {
                let mut inner = Writer::default();
                inner.structure(s)?;
                Some(inner.out)
            }
            None => None,
        };
        self.push(&hex)?;
        for part in [caps, segment, info] {
            self.push(":")?;
            self.push(&base64(part))?;
        }
        Ok(())
    }

    /// Any other value as GStreamer serializes it, if that reads back (such values hold no
    /// structure). Numbers, ranges, enums and flags always do; other types are tried as the
    /// other side reads them, in a structure field (`gst_value_deserialize` alone does not
    /// read ranges, for one).
    fn leaf(&mut self, v: &glib::Value) -> Result<(), Unwritable> {
        let t = v.type_();
        let text = v.serialize().map_err(|_| Unwritable::NoStringForm)?;
        let reads_back = [
            i32::static_type(),
            u32::static_type(),
            i64::static_type(),
            u64::static_type(),
            f64::static_type(),
            f32::static_type(),
            bool::static_type(),
            gst::Fraction::static_type(),
            gst::IntRange::<i32>::static_type(),
            gst::IntRange::<i64>::static_type(),
            gst::FractionRange::static_type(),
        ]
        .contains(&t)
            || t.is_a(glib::Type::ENUM)
            || t.is_a(glib::Type::FLAGS)
            || (text.matches('[').count() == text.matches(']').count()
                && format!("x, v=({}){text}", cast_type(t).name())
                    .parse::<gst::Structure>()
                    .is_ok_and(|s| s.value("v").is_ok_and(|back| back.type_() == t)));
        if !reads_back {
            return Err(Unwritable::NoStringForm);
        }
        self.push(&text)
    }

    /// `s` in quotes. Besides `"` and `\`, the brackets are escaped (as octal): GStreamer finds
    /// the end of a bracketed structure by counting brackets, quotes or not.
    fn push_quoted(&mut self, s: &str) -> Result<(), Unwritable> {
        let mut q = String::with_capacity(s.len() + 2);
        q.push('"');
        for c in s.chars() {
            match c {
                '"' => q.push_str("\\\""),
                '\\' => q.push_str("\\\\"),
                '[' => q.push_str("\\133"),
                ']' => q.push_str("\\135"),
                c => q.push(c),
            }
        }
        q.push('"');
        self.push(&q)
    }
}

/// The type a value of type `t` is written with: a range's is that of its bounds.
fn cast_type(t: glib::Type) -> glib::Type {
    match t {
        t if t == gst::IntRange::<i32>::static_type() => i32::static_type(),
        t if t == gst::IntRange::<i64>::static_type() => i64::static_type(),
        t if t == gst::FractionRange::static_type() => gst::Fraction::static_type(),
        t if t.name() == "GstDoubleRange" => f64::static_type(),
        t => t,
    }
}

/// The elements of a list or array value.
fn elements(v: &glib::Value) -> Option<&[glib::SendValue]> {
    if let Ok(list) = v.get::<gst::ListRef<'_>>() {
        return Some(list.as_slice());
    }
    v.get::<gst::ArrayRef<'_>>().ok().map(|a| a.as_slice())
}

/// A quoted text from `gst_value_serialize`, unescaped (`\c` is `c`).
fn unquote(text: &str) -> String {
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
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
            let s = crate::peer_names::parse_from_peer(&p.structure, str::parse::<gst::Structure>)
                .map_err(|e| format!("segment event refused: {e}"))?
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

    /// `text` parsed, as the other side does.
    fn parsed(text: &str) -> gst::Structure {
        check_structure_text(text).unwrap();
        text.parse().unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn text_of(s: &gst::StructureRef) -> String {
        serializable_structure(s, |name| panic!("{name} dropped"))
    }

    /// `levels` structures nested in field `b`, the outermost named `a`.
    fn nested_structure(levels: usize, innermost: gst::Structure) -> gst::Structure {
        (0..levels).fold(innermost, |inner, _| {
            gst::Structure::builder("a").field("b", inner).build()
        })
    }

    #[test]
    fn structures_read_back_identically() {
        gst::init().unwrap();
        let tricky = "q\"uo\\te, comma; semi [br]acket ]] {x} <y> (z) = é\n\\133";
        let caps: gst::Caps =
            "video/x-raw(memory:DMABuf), format=(string){ NV12, I420 }, width=(int)[ 1, 4096 ], \
             framerate=(fraction)30/1; audio/x-raw, rate=(int)48000"
                .parse()
                .unwrap();
        let inner = gst::Structure::builder("inner")
            .field("text", tricky)
            .field("caps", &caps)
            .field("none", None::<&str>)
            .field(
                "nested",
                gst::Structure::builder("deeper").field("s", tricky).build(),
            )
            .build();
        let s = gst::Structure::builder("outer")
            .field("inner", &inner)
            .field("text", tricky)
            .field("empty", "")
            .field("caps", &caps)
            .field("any", gst::Caps::new_any())
            .field("nocaps", gst::Caps::new_empty())
            .field("array", gst::Array::new([1i32, 2, 3]))
            .field("strings", gst::List::new([tricky, "b"]))
            .field("structures", gst::List::new([inner.clone(), inner.clone()]))
            .field("arrays", gst::Array::new([gst::Array::new([1.5f64, 2.5])]))
            .field("empty-list", gst::List::new::<i32>([]))
            .field("range", gst::IntRange::new(1, 9))
            .field("fraction", gst::Fraction::new(30000, 1001))
            .field("big", u64::MAX)
            .field("flag", true)
            .field("format", gst::Format::Time)
            .field("flags", gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE)
            .field(
                "in-caps",
                gst::Caps::builder("x/y").field("s", &inner).build(),
            )
            .build();
        let back = parsed(&text_of(&s));
        assert_eq!(back, s, "{}", text_of(&s));
        for c in [
            caps.clone(),
            gst::Caps::new_any(),
            gst::Caps::new_empty(),
            "video/x-raw(ANY); video/x-raw(memory:GLMemory, meta:GstVideoOverlayComposition)"
                .parse()
                .unwrap(),
        ] {
            let text = caps_text(&c);
            check_structure_text(&text).unwrap();
            assert_eq!(text.parse::<gst::Caps>().unwrap(), c, "{text}");
        }

        // Tags, with an image sample, cross in a tag event's structure.
        let mut tags = gst::TagList::new();
        let image = gst::Sample::builder()
            .buffer(&gst::Buffer::from_slice(*b"\x89PNG[x]"))
            .caps(&gst::Caps::builder("image/png").build())
            .info(inner.clone())
            .build();
        {
            let tags = tags.get_mut().unwrap();
            tags.add::<gst::tags::Title>(&tricky, gst::TagMergeMode::Append);
            tags.add::<gst::tags::Artist>(&"one", gst::TagMergeMode::Append);
            tags.add::<gst::tags::Artist>(&"two", gst::TagMergeMode::Append);
            tags.add::<gst::tags::Image>(&image, gst::TagMergeMode::Append);
        }
        let ev = gst::event::Tag::new(tags.clone());
        let back = parsed(&text_of(ev.structure().unwrap()));
        let back = back.get::<gst::TagList>("taglist").unwrap();
        assert_eq!(back.get::<gst::tags::Title>().unwrap().get(), tricky);
        let artists: Vec<&str> = back
            .iter_tag::<gst::tags::Artist>()
            .map(|a| a.get())
            .collect();
        assert_eq!(artists, ["one", "two"]);
        let img = back.get::<gst::tags::Image>().unwrap().get().clone();
        assert_eq!(
            img.buffer().unwrap().map_readable().unwrap().as_slice(),
            b"\x89PNG[x]"
        );
        assert_eq!(img.caps().unwrap(), image.caps().unwrap());
        assert_eq!(img.info().unwrap(), &inner);
    }

    /// Nesting does not grow the text: GStreamer's own forms double it per level (a 214-byte
    /// query nested 30 deep took GiB), also in 1.22's bracket form for structures in caps.
    #[test]
    fn nesting_does_not_grow_the_text() {
        gst::init().unwrap();
        let deep = nested_structure(
            30,
            gst::Structure::builder("z").field("s", "a \"b\"").build(),
        );
        let text = text_of(&deep);
        assert!(text.len() < 30 * 40, "{} bytes: {text}", text.len());
        assert_eq!(parsed(&text), deep);
        // Caps holding structures 28 deep, inside a structure.
        let in_caps = gst::Structure::builder("q")
            .field(
                "caps",
                gst::Caps::builder("x/y")
                    .field("b", nested_structure(28, gst::Structure::new_empty("z")))
                    .build(),
            )
            .build();
        let text = text_of(&in_caps);
        assert!(text.len() < 30 * 40, "{} bytes: {text}", text.len());
        assert_eq!(parsed(&text), in_caps);
        // A query that crossed comes back as it went.
        let q = gst::query::Custom::new(deep.clone());
        let (answered, reply) = crate::control::reply_structure(true, &q);
        assert!(answered);
        assert_eq!(parsed(&reply), deep);
    }

    /// A field nested past the receiver's limit is dropped (the receiver would refuse the
    /// packet); a text past the size limit is cut, longer than any packet; a reply that does not
    /// fit fails its query.
    #[test]
    fn limits_hold_on_the_sending_side() {
        gst::init().unwrap();
        let s = gst::Structure::builder("m")
            .field("deep", nested_structure(40, gst::Structure::new_empty("z")))
            .field("n", 1i32)
            .build();
        let mut dropped = Vec::new();
        let text = serializable_structure(&s, |f| dropped.push(f.to_string()));
        assert_eq!(dropped, ["deep"]);
        assert_eq!(parsed(&text).get::<i32>("n").unwrap(), 1);

        let big = gst::Structure::builder("big")
            .field("a", "x".repeat(40_000))
            .field("b", "y".repeat(40_000))
            .build();
        let text = serializable_structure(&big, |_| {});
        assert!(text.len() > fdlink::protocol::MAX_PACKET_SIZE);
        assert!(text.len() < 2 * MAX_STRUCTURE_TEXT_SIZE);
        let q = gst::query::Custom::new(big);
        assert_eq!(
            crate::control::reply_structure(true, &q),
            (false, String::new())
        );
    }
}
