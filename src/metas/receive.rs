//! Receiving: a peer's meta entries checked and attached to a buffer, the metas memfd read.

use std::os::fd::{AsFd, OwnedFd};

use gst::glib;

use fdlink::fdkind::ImportError;
use fdlink::protocol::{MAX_METAS_SIZE, MetaEntry};

use super::*;

/// Reads the metas list from a received metas memfd (`index`: its place in the packet): a
/// memfd sealed against shrinking, at least `size` bytes long, as frame memfds are checked.
pub fn read_metas_memfd(
    fd: OwnedFd,
    size: u64,
    index: usize,
) -> Result<Vec<MetaEntry>, ImportError> {
    use fdlink::protocol::MemoryKind;
    if size > MAX_METAS_SIZE as u64 {
        return Err(ImportError::Metas(format!(
            "a metas memfd of {size} bytes exceeds the limit of {MAX_METAS_SIZE}"
        )));
    }
    fdlink::fdkind::check_fd(
        index,
        fd.as_fd(),
        MemoryKind::Memfd,
        [(0, size)].into_iter(),
    )?;
    let mut bytes = vec![0u8; size as usize];
    let mut at = 0;
    while at < bytes.len() {
        match nix::sys::uio::pread(&fd, &mut bytes[at..], at as i64) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(ImportError::Sys { index, errno }),
        }
    }
    if at < bytes.len() {
        return Err(ImportError::Metas(format!(
            "the metas memfd ended after {at} of {size} bytes"
        )));
    }
    fdlink::protocol::decode_metas(&bytes).map_err(|e| ImportError::Metas(e.to_string()))
}

/// A little-endian reader over one entry; every error names the meta kind.
struct In<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(format!("{} meta truncated", self.what));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| format!("{} meta text is not UTF-8", self.what))
    }
    /// The rest, which must not be empty (the add functions assert on empty data).
    fn data(&mut self) -> Result<&'a [u8], String> {
        if self.b.is_empty() {
            return Err(format!("{} meta without data", self.what));
        }
        Ok(std::mem::take(&mut self.b))
    }
    fn finish(&self) -> Result<(), String> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} meta has {} trailing bytes",
                self.what,
                self.b.len()
            ))
        }
    }
}

/// A structure text from the peer, checked against the limits and parsed.
fn structure_from_peer(text: &str, what: &str) -> Result<gst::Structure, String> {
    crate::peer_names::parse_from_peer(text, str::parse)
        .map_err(|e| format!("{what} meta refused: {e}"))?
        .map_err(|_| format!("{what} meta has an unparsable structure {text:?}"))
}

/// Attaches the wire's metas to `buffer` in the producer's order, which they then iterate in
/// (after the VideoMeta the import adds first). An entry that does not check out fails the
/// buffer; kinds this build does not know are dropped.
pub fn attach(buffer: &mut gst::BufferRef, entries: &[MetaEntry]) -> Result<(), String> {
    for e in entries {
        attach_one(buffer, e)?;
    }
    Ok(())
}

fn attach_one(buffer: &mut gst::BufferRef, e: &MetaEntry) -> Result<(), String> {
    match e.kind {
        KIND_CUSTOM => attach_custom(buffer, &e.bytes),
        KIND_AUDIO_CLIPPING => {
            let mut r = In {
                b: &e.bytes,
                what: "audio clipping",
            };
            let (format, start, end) = (r.u32()?, r.u64()?, r.u64()?);
            r.finish()?;
            // DEFAULT (samples) ..= PERCENT; the add function refuses UNDEFINED.
            if !(1..=5).contains(&format) {
                return Err(format!("audio clipping meta has unknown format {format}"));
            }
            use glib::translate::FromGlib;
            // SAFETY: any value is accepted by from_glib; it was checked to be a known one.
            let format = unsafe { gst::Format::from_glib(format as gst::ffi::GstFormat) };
            add_audio_clipping_meta(buffer, format, start, end);
            Ok(())
        }
        KIND_SEI_UNREGISTERED => {
            let mut r = In {
                b: &e.bytes,
                what: "SEI user data",
            };
            let uuid: [u8; 16] = r.take(16)?.try_into().unwrap();
            let data = r.data()?;
            gst_video::video_meta::VideoSeiUserDataUnregisteredMeta::add(buffer, &uuid, data);
            Ok(())
        }
        KIND_REGION_OF_INTEREST => {
            let mut r = In {
                b: &e.bytes,
                what: "region of interest",
            };
            let (id, parent_id) = (r.u32()? as i32, r.u32()? as i32);
            let rect = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
            let roi_type = r.str()?;
            let n = r.u32()? as usize;
            let mut params = Vec::new();
            for _ in 0..n {
                params.push(structure_from_peer(r.str()?, "region of interest")?);
            }
            r.finish()?;
            let mut m = gst_video::VideoRegionOfInterestMeta::add(buffer, roi_type, rect);
            m.set_id(id);
            m.set_parent_id(parent_id);
            for p in params {
                m.add_param(p);
            }
            Ok(())
        }
        KIND_TIME_CODE => {
            let mut r = In {
                b: &e.bytes,
                what: "time code",
            };
            let (fps_n, fps_d, flags) = (r.u32()?, r.u32()?, r.u32()?);
            let (h, m, s, f, fields) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?);
            let jam = r.str()?;
            r.finish()?;
            if fps_n > i32::MAX as u32 || fps_d == 0 || fps_d > i32::MAX as u32 {
                return Err(format!("time code meta has frame rate {fps_n}/{fps_d}"));
            }
            let jam = if jam.is_empty() {
                None
            } else {
                Some(
                    glib::DateTime::from_iso8601(jam, None)
                        .map_err(|_| format!("time code meta has daily jam {jam:?}"))?,
                )
            };
            let tc = gst_video::ValidVideoTimeCode::new(
                gst::Fraction::new(fps_n as i32, fps_d as i32),
                jam.as_ref(),
                gst_video::VideoTimeCodeFlags::from_bits_truncate(flags),
                h,
                m,
                s,
                f,
                fields,
            )
            .map_err(|_| format!("time code meta {h}:{m}:{s}:{f} at {fps_n}/{fps_d} is invalid"))?;
            gst_video::VideoTimeCodeMeta::add(buffer, &tc);
            Ok(())
        }
        KIND_REFERENCE_TIMESTAMP => {
            let mut r = In {
                b: &e.bytes,
                what: "reference timestamp",
            };
            let (timestamp, duration) = (r.u64()?, r.u64()?);
            let caps = crate::control::caps_from_peer(r.str()?)
                .map_err(|e| format!("reference timestamp meta: {e}"))?;
            r.finish()?;
            if timestamp == u64::MAX {
                return Err("reference timestamp meta without a timestamp".into());
            }
            gst::ReferenceTimestampMeta::add(
                buffer,
                &caps,
                gst::ClockTime::from_nseconds(timestamp),
                (duration != u64::MAX).then(|| gst::ClockTime::from_nseconds(duration)),
            );
            Ok(())
        }
        KIND_CAPTION => {
            let mut r = In {
                b: &e.bytes,
                what: "caption",
            };
            let ty = r.u32()?;
            let data = r.data()?;
            if ty > 4 {
                return Err(format!("caption meta has unknown caption type {ty}"));
            }
            use glib::translate::FromGlib;
            // SAFETY: any value is accepted by from_glib; it was checked to be a known one.
            let ty = unsafe { gst_video::VideoCaptionType::from_glib(ty as i32) };
            gst_video::VideoCaptionMeta::add(buffer, ty, data);
            Ok(())
        }
        KIND_AUDIO => attach_audio(buffer, &e.bytes),
        KIND_GST_SERIALIZED => attach_serialized(buffer, &e.bytes),
        other => {
            report_dropped_once(
                &format!("kind {other}"),
                "this build does not know the kind",
            );
            Ok(())
        }
    }
}

/// A GstAudioMeta: caps text, u64 samples, u32 count of offsets (0 or the channels, at most
/// [`MAX_AUDIO_CHANNELS`]), u64 each; every value checked before it is added.
fn attach_audio(buffer: &mut gst::BufferRef, bytes: &[u8]) -> Result<(), String> {
    let mut r = In {
        b: bytes,
        what: "audio",
    };
    let caps = crate::control::caps_from_peer(r.str()?).map_err(|e| format!("audio meta: {e}"))?;
    let samples = r.u64()?;
    let n = r.u32()? as usize;
    if n > MAX_AUDIO_CHANNELS {
        return Err(format!(
            "audio meta has {n} offsets, past the limit of {MAX_AUDIO_CHANNELS}"
        ));
    }
    let mut offsets = Vec::with_capacity(n);
    for i in 0..n {
        let o = r.u64()?;
        offsets.push(
            usize::try_from(o).map_err(|_| format!("audio meta offsets[{i}] {o} too large"))?,
        );
    }
    r.finish()?;
    let samples =
        usize::try_from(samples).map_err(|_| format!("audio meta samples {samples} too large"))?;
    add_audio_meta(buffer, &caps, samples, &offsets)
}

#[cfg(feature = "v1_24")]
fn attach_serialized(buffer: &mut gst::BufferRef, bytes: &[u8]) -> Result<(), String> {
    let mut consumed = 0;
    match gst::Meta::deserialize(buffer, bytes, &mut consumed) {
        Ok(_) => Ok(()),
        Err(_) => {
            // Its type may not be registered in this process (no element here uses it).
            report_dropped_once("serialized", "gst_meta_deserialize refused one");
            Ok(())
        }
    }
}

#[cfg(not(feature = "v1_24"))]
fn attach_serialized(_: &mut gst::BufferRef, _: &[u8]) -> Result<(), String> {
    report_dropped_once(
        "gst_meta_serialize",
        "fdlink built for GStreamer 1.22 cannot deserialize them",
    );
    Ok(())
}

/// Whether `name` can be a custom meta's type name (and its "-api" twin): GType's rules, at
/// most 128 bytes, and not in GStreamer's own `Gst` namespace: a peer's custom meta must not
/// take the name of a GStreamer meta this process has not registered yet (GstVideoMeta before
/// the first video frame), which would then fail to register.
pub(super) fn valid_meta_name(name: &str) -> bool {
    let b = name.as_bytes();
    !name.starts_with("Gst")
        && (3..=128).contains(&b.len())
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_+".contains(c))
}

/// Whether `name` can be a structure's field name: a letter, then letters, digits and
/// `/-_.:`, at most 256 bytes.
fn valid_field_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=256).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"/-_.:".contains(c))
}

/// Makes sure a custom meta `name` is registered here: registered already as a custom meta,
/// or registered now (no tags) if its name is free and this process has registered fewer than
/// [`MAX_CUSTOM_NAMES`] for peers.
fn ensure_custom_registered(name: &str) -> Result<(), String> {
    if !valid_meta_name(name) {
        return Err(format!(
            "custom meta name {name:?} is not a valid type name"
        ));
    }
    let mut registered = REGISTERED_NAMES.lock().unwrap();
    if let Some(info) = meta_info(name) {
        // SAFETY: `info` is a registered GstMetaInfo, valid for the process's life.
        return if unsafe { gst::ffi::gst_meta_info_is_custom(info) } != 0 {
            Ok(())
        } else {
            Err(format!(
                "meta {name:?} is not a custom meta in this process"
            ))
        };
    }
    if glib::Type::from_name(name).is_some()
        || glib::Type::from_name(format!("{name}-api")).is_some()
    {
        return Err(format!("custom meta name {name:?} names another type here"));
    }
    if registered.len() >= MAX_CUSTOM_NAMES {
        return Err(format!(
            "custom meta {name:?} not registered: this process registered the limit of \
             {MAX_CUSTOM_NAMES} custom meta names for peers"
        ));
    }
    gst::meta::CustomMeta::register(name, &[]);
    if meta_info(name).is_none() {
        return Err(format!("custom meta {name:?} could not be registered"));
    }
    registered.push(name.to_owned());
    Ok(())
}

fn meta_info(name: &str) -> Option<*const gst::ffi::GstMetaInfo> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name; the lookup only reads the registry.
    let info = unsafe { gst::ffi::gst_meta_get_info(name.as_ptr()) };
    (!info.is_null()).then_some(info)
}

fn attach_custom(buffer: &mut gst::BufferRef, bytes: &[u8]) -> Result<(), String> {
    let mut r = In {
        b: bytes,
        what: "custom",
    };
    let name = r.str()?;
    let text = r.str()?;
    let n = r.u32()? as usize;
    let mut raw = Vec::new();
    for _ in 0..n {
        let field = r.str()?;
        let ty = r.take(1)?[0];
        let data = r.bytes()?;
        let value = match ty {
            1 => gst::Buffer::from_slice(data.to_vec()).to_send_value(),
            2 => glib::Bytes::from(data).to_send_value(),
            _ => {
                return Err(format!(
                    "custom meta {name:?} field {field:?} has type {ty}"
                ));
            }
        };
        if !valid_field_name(field) {
            return Err(format!(
                "custom meta {name:?} has a bad field name {field:?}"
            ));
        }
        raw.push((field, value));
    }
    r.finish()?;
    let fields = structure_from_peer(text, "custom")?;
    ensure_custom_registered(name)?;
    let mut meta = gst::meta::CustomMeta::add(buffer, name)
        .map_err(|e| format!("custom meta {name:?}: {e}"))?;
    let s = meta.mut_structure();
    for (field, value) in fields.iter() {
        s.set_value(field, value.clone());
    }
    for (field, value) in raw {
        s.set_value(field, value);
    }
    Ok(())
}
