//! A buffer's metas to and from the wire's (kind, bytes) entries (`fdlink::protocol::Metas`).
//!
//! GStreamer 1.22 has no generic meta serialization, so each kind that crosses is written here
//! by hand: custom metas (their structure as text, with top-level GstBuffer and GBytes fields
//! as raw bytes, so a 1 MB payload costs 1 MB and not 2 MB of hex that the structure limits
//! would refuse anyway), audio clipping, audio (GstAudioMeta), SEI user data unregistered,
//! region of interest, time code, reference timestamp and closed caption. VideoMeta is the header's video layout.
//! With the `v1_24` feature every other meta that has a serialize function crosses through
//! `gst_meta_serialize` / `gst_meta_deserialize`, as unixfd carries them. The rest are
//! dropped, with a debug line once per meta type.
//!
//! Every entry from a peer is checked before GStreamer sees it: lengths, values the add
//! functions assert on, structure texts through `fdlink::structure_limits`, and custom meta
//! names (valid type names, at most [`MAX_CUSTOM_NAMES`] registered by this process).

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;

use fdlink::protocol::{MAX_META_SIZE, MAX_METAS, MAX_METAS_SIZE, MetaEntry};
use fdlink::structure_limits::check_structure_text;

use crate::wire_event::{caps_text, serializable_structure};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "fdlinkmetas",
        gst::DebugColorFlags::empty(),
        Some("fdlink's buffer metas across"),
    )
});

/// GstCustomMeta: name, structure text, raw fields.
pub const KIND_CUSTOM: u16 = 1;
/// GstAudioClippingMeta: format, start, end.
pub const KIND_AUDIO_CLIPPING: u16 = 2;
/// GstVideoSEIUserDataUnregisteredMeta: uuid, data.
pub const KIND_SEI_UNREGISTERED: u16 = 3;
/// GstVideoRegionOfInterestMeta: id, parent id, rectangle, type, params.
pub const KIND_REGION_OF_INTEREST: u16 = 4;
/// GstVideoTimeCodeMeta: the time code's fields and daily jam.
pub const KIND_TIME_CODE: u16 = 5;
/// GstReferenceTimestampMeta: timestamp, duration, reference caps.
pub const KIND_REFERENCE_TIMESTAMP: u16 = 6;
/// GstVideoCaptionMeta: caption type, data.
pub const KIND_CAPTION: u16 = 7;
/// GstAudioMeta: audio info as caps, samples, channel plane offsets.
pub const KIND_AUDIO: u16 = 8;
/// Any meta, as `gst_meta_serialize` writes it (GStreamer >= 1.24 on both sides).
pub const KIND_GST_SERIALIZED: u16 = 64;

/// Custom meta names this process registers for peers at most: each is a GType for good.
pub const MAX_CUSTOM_NAMES: usize = 64;

/// Custom meta names registered here for peers.
static REGISTERED_NAMES: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Meta types (and unknown kinds) already reported as dropped.
static REPORTED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

/// The first time `what` is dropped, a debug line naming it.
fn report_dropped_once(what: &str, why: &str) {
    if REPORTED.lock().unwrap().insert(what.to_owned()) {
        gst::debug!(CAT, "dropping {what} metas: {why} (reported once)");
    }
}

/// Audio clipping meta: not bound by the gstreamer-rs crates the plugin uses, so its C API
/// from libgstaudio.
mod audio_ffi {
    use gst::glib;

    #[repr(C)]
    pub struct GstAudioClippingMeta {
        pub meta: gst::ffi::GstMeta,
        pub format: gst::ffi::GstFormat,
        pub start: u64,
        pub end: u64,
    }

    #[link(name = "gstaudio-1.0")]
    unsafe extern "C" {
        pub fn gst_audio_clipping_meta_api_get_type() -> glib::ffi::GType;
        pub fn gst_buffer_add_audio_clipping_meta(
            buffer: *mut gst::ffi::GstBuffer,
            format: gst::ffi::GstFormat,
            start: u64,
            end: u64,
        ) -> *mut GstAudioClippingMeta;
    }
}

fn audio_clipping_api() -> glib::Type {
    use glib::translate::FromGlib;
    // SAFETY: registers (once) and returns the API type; no arguments.
    unsafe { glib::Type::from_glib(audio_ffi::gst_audio_clipping_meta_api_get_type()) }
}

/// Adds a GstAudioClippingMeta to `buffer` (gstreamer-rs binds it in gstreamer-audio, which
/// the plugin does not use). `format` must not be UNDEFINED.
pub fn add_audio_clipping_meta(
    buffer: &mut gst::BufferRef,
    format: gst::Format,
    start: u64,
    end: u64,
) {
    use glib::translate::IntoGlib;
    assert_ne!(format, gst::Format::Undefined);
    // SAFETY: `buffer` is writable (held mutably); the add function's only precondition on
    // the format is checked above.
    unsafe {
        audio_ffi::gst_buffer_add_audio_clipping_meta(
            buffer.as_mut_ptr(),
            format.into_glib(),
            start,
            end,
        );
    }
}

/// The first GstAudioClippingMeta of `buffer`: format, start, end.
pub fn audio_clipping_meta(buffer: &gst::BufferRef) -> Option<(gst::Format, u64, u64)> {
    use glib::translate::FromGlib;
    let api = audio_clipping_api();
    let meta = buffer.iter_meta::<gst::Meta>().find(|m| m.api() == api)?;
    // SAFETY: a meta of the audio clipping API is a GstAudioClippingMeta; any format value
    // is accepted by from_glib.
    unsafe {
        let m = &*(meta.as_ptr() as *const audio_ffi::GstAudioClippingMeta);
        Some((gst::Format::from_glib(m.format), m.start, m.end))
    }
}

// ---------------------------------------------------------------------------------------------
// Sending

/// A little-endian writer for one entry.
#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A u32 length, then the bytes.
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

/// The metas of `buffer` that cross, as wire entries in the buffer's order, within the
/// protocol's limits: a meta past them is left out with a warning naming the limit.
pub fn collect(element: &gst::Element, buffer: &gst::BufferRef) -> Vec<MetaEntry> {
    let mut entries = Vec::new();
    let mut total = 4usize;
    for meta in buffer.iter_meta::<gst::Meta>() {
        let Some(entry) = entry_of(&meta) else {
            continue;
        };
        let name = meta.api().name();
        let limit = if entries.len() == MAX_METAS {
            Some(format!("more than {MAX_METAS} metas on one buffer"))
        } else if entry.bytes.len() > MAX_META_SIZE {
            Some(format!(
                "{} bytes, past the limit of {MAX_META_SIZE} for one meta",
                entry.bytes.len()
            ))
        } else if total + 8 + entry.bytes.len() > MAX_METAS_SIZE {
            Some(format!(
                "the buffer's metas pass the limit of {MAX_METAS_SIZE} bytes"
            ))
        } else {
            None
        };
        if let Some(why) = limit {
            gst::warning!(CAT, obj = element, "not sending a {name} meta: {why}");
            continue;
        }
        total += 8 + entry.bytes.len();
        entries.push(entry);
    }
    entries
}

/// One meta as an entry; None when it does not cross (reported once per type).
fn entry_of(meta: &gst::MetaRef<'_, gst::Meta>) -> Option<MetaEntry> {
    let api = meta.api();
    if api == gst_video::VideoMeta::meta_api() {
        return None;
    }
    let mut out = Out::default();
    let kind = if let Some(custom) = meta.try_as_custom_meta() {
        custom_entry(meta, custom, &mut out)?;
        KIND_CUSTOM
    } else if api == audio_clipping_api() {
        // SAFETY: a meta of the audio clipping API is a GstAudioClippingMeta.
        let m = unsafe { &*(meta.as_ptr() as *const audio_ffi::GstAudioClippingMeta) };
        out.u32(m.format as u32);
        out.u64(m.start);
        out.u64(m.end);
        KIND_AUDIO_CLIPPING
    } else if api == audio::audio_meta_api() {
        let f = match audio::fields_of(meta) {
            Ok(f) => f,
            Err(why) => {
                report_dropped_once("GstAudioMeta", &why);
                return None;
            }
        };
        out.bytes(caps_text(&f.caps).as_bytes());
        out.u64(f.samples as u64);
        out.u32(f.offsets.len() as u32);
        for o in f.offsets {
            out.u64(o as u64);
        }
        KIND_AUDIO
    } else if let Some(m) =
        meta.downcast_ref::<gst_video::video_meta::VideoSeiUserDataUnregisteredMeta>()
    {
        out.0.extend_from_slice(&m.uuid());
        out.0.extend_from_slice(m.data());
        KIND_SEI_UNREGISTERED
    } else if let Some(m) = meta.downcast_ref::<gst_video::VideoRegionOfInterestMeta>() {
        let (x, y, w, h) = m.rect();
        out.u32(m.id() as u32);
        out.u32(m.parent_id() as u32);
        for v in [x, y, w, h] {
            out.u32(v);
        }
        out.bytes(m.roi_type().as_bytes());
        let params: Vec<String> = m
            .params()
            .map(|p| serializable_structure(p, |_| {}))
            .collect();
        out.u32(params.len() as u32);
        for p in &params {
            out.bytes(p.as_bytes());
        }
        KIND_REGION_OF_INTEREST
    } else if let Some(m) = meta.downcast_ref::<gst_video::VideoTimeCodeMeta>() {
        let tc = m.tc();
        let fps = tc.fps();
        out.u32(fps.numer() as u32);
        out.u32(fps.denom() as u32);
        out.u32(tc.flags().bits());
        for v in [
            tc.hours(),
            tc.minutes(),
            tc.seconds(),
            tc.frames(),
            tc.field_count(),
        ] {
            out.u32(v);
        }
        let jam = tc
            .latest_daily_jam()
            .and_then(|d| d.format("%Y-%m-%dT%H:%M:%S.%f%:z").ok())
            .map(|s| s.to_string())
            .unwrap_or_default();
        out.bytes(jam.as_bytes());
        KIND_TIME_CODE
    } else if let Some(m) = meta.downcast_ref::<gst::ReferenceTimestampMeta>() {
        out.u64(m.timestamp().nseconds());
        out.u64(m.duration().map_or(u64::MAX, |d| d.nseconds()));
        out.bytes(caps_text(m.reference()).as_bytes());
        KIND_REFERENCE_TIMESTAMP
    } else if let Some(m) = meta.downcast_ref::<gst_video::VideoCaptionMeta>() {
        out.u32(glib::translate::IntoGlib::into_glib(m.caption_type()) as u32);
        out.0.extend_from_slice(m.data());
        KIND_CAPTION
    } else {
        return serialized_entry(meta);
    };
    Some(MetaEntry { kind, bytes: out.0 })
}

/// Any other meta through `gst_meta_serialize`, when it has a serialize function.
#[cfg(feature = "v1_24")]
fn serialized_entry(meta: &gst::MetaRef<'_, gst::Meta>) -> Option<MetaEntry> {
    let mut bytes = Vec::new();
    match meta.serialize(&mut bytes) {
        Ok(_) => Some(MetaEntry {
            kind: KIND_GST_SERIALIZED,
            bytes,
        }),
        Err(_) => {
            report_dropped_once(meta.api().name(), "it has no serialize function");
            None
        }
    }
}

#[cfg(not(feature = "v1_24"))]
fn serialized_entry(meta: &gst::MetaRef<'_, gst::Meta>) -> Option<MetaEntry> {
    report_dropped_once(
        meta.api().name(),
        "fdlink built for GStreamer 1.22 carries custom, audio clipping, audio, SEI, region \
         of interest, time code, reference timestamp and caption metas",
    );
    None
}

/// A custom meta: its name, its structure text without the raw fields, and the raw fields
/// (u32 count; per field its name, a type byte, 1 GstBuffer or 2 GBytes, and its bytes), each
/// text and byte string after a u32 length. None when its structure does not fit the limits
/// a consumer parses within.
fn custom_entry(
    meta: &gst::MetaRef<'_, gst::Meta>,
    custom: &gst::MetaRef<'_, gst::meta::CustomMeta>,
    out: &mut Out,
) -> Option<()> {
    let name = meta.type_().name();
    if !receive::valid_meta_name(name) {
        gst::warning!(
            CAT,
            "not sending a {name} meta: consumers refuse that custom meta name (see valid_meta_name)"
        );
        return None;
    }
    let mut rest = custom.structure().to_owned();
    let mut raw: Vec<(String, u8, Vec<u8>)> = Vec::new();
    for (field, value) in custom.structure().iter() {
        if let Ok(b) = value.get::<gst::Buffer>() {
            let Ok(map) = b.map_readable() else {
                continue;
            };
            raw.push((field.to_string(), 1, map.as_slice().to_vec()));
        } else if let Ok(b) = value.get::<glib::Bytes>() {
            raw.push((field.to_string(), 2, b.to_vec()));
        } else {
            continue;
        }
        rest.remove_field(field.as_str());
    }
    let text = serializable_structure(&rest, |field| {
        report_dropped_once(&format!("{name}.{field}"), "the field has no string form")
    });
    if let Err(e) = check_structure_text(&text) {
        gst::warning!(CAT, "not sending a {name} meta: {e}");
        return None;
    }
    out.bytes(name.as_bytes());
    out.bytes(text.as_bytes());
    out.u32(raw.len() as u32);
    for (field, ty, bytes) in &raw {
        out.bytes(field.as_bytes());
        out.0.push(*ty);
        out.bytes(bytes);
    }
    Some(())
}

/// A sealed memfd holding `encoded` (a metas list), for metas too big for the packet: sealed
/// against every change, so the consumer reads what was written.
pub fn metas_memfd(encoded: &[u8]) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    let fd = fdlink::fdkind::create_memfd_to_map("fdlink-metas", encoded.len())?;
    let mut at = 0;
    while at < encoded.len() {
        at += nix::sys::uio::pwrite(&fd, &encoded[at..], at as i64)?;
    }
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL),
    )?;
    Ok(fd)
}

mod audio;
pub use audio::{AudioMetaFields, MAX_AUDIO_CHANNELS, add_audio_meta, audio_meta, audio_meta_api};

mod receive;
pub use receive::{attach, read_metas_memfd};

#[cfg(test)]
mod tests;
