//! GstAudioMeta (raw audio's layout: its GstAudioInfo, valid samples and, for non-interleaved
//! audio, where each channel's plane starts), through libgstaudio's C API: the plugin does not
//! use the gstreamer-audio crate.
//!
//! `gst_buffer_add_audio_meta` asserts on bad values (an info that is not valid, offsets with
//! interleaved audio) and fails with a critical on planes that overlap or pass the buffer's
//! end, so [`add_audio_meta`] checks all of them first: a peer's values never reach it
//! unchecked.

use std::mem::MaybeUninit;

use gst::glib;

/// Most channels an audio meta crosses with (GstAudioInfo has 64 channel positions).
pub const MAX_AUDIO_CHANNELS: usize = 64;

mod ffi {
    use gst::glib;
    use std::os::raw::{c_int, c_void};

    /// GstAudioInfo (audio-info.h); `finfo` points at a GstAudioFormatInfo, whose first field
    /// is the GstAudioFormat.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct GstAudioInfo {
        pub finfo: *const c_int,
        pub flags: c_int,
        pub layout: c_int,
        pub rate: c_int,
        pub channels: c_int,
        pub bpf: c_int,
        pub position: [c_int; 64],
        pub _gst_reserved: [*mut c_void; 4],
    }

    /// GstAudioMeta (gstaudiometa.h).
    #[repr(C)]
    pub struct GstAudioMeta {
        pub meta: gst::ffi::GstMeta,
        pub info: GstAudioInfo,
        pub samples: usize,
        pub offsets: *mut usize,
        pub priv_offsets_arr: [usize; 8],
        pub _gst_reserved: [*mut c_void; 4],
    }

    pub const LAYOUT_NON_INTERLEAVED: c_int = 1;
    /// GST_AUDIO_FORMAT_ENCODED: formats past it are raw ones.
    pub const FORMAT_ENCODED: c_int = 1;

    #[link(name = "gstaudio-1.0")]
    unsafe extern "C" {
        pub fn gst_audio_meta_api_get_type() -> glib::ffi::GType;
        pub fn gst_buffer_add_audio_meta(
            buffer: *mut gst::ffi::GstBuffer,
            info: *const GstAudioInfo,
            samples: usize,
            offsets: *mut usize,
        ) -> *mut GstAudioMeta;
        pub fn gst_audio_info_from_caps(
            info: *mut GstAudioInfo,
            caps: *const gst::ffi::GstCaps,
        ) -> glib::ffi::gboolean;
        pub fn gst_audio_info_to_caps(info: *const GstAudioInfo) -> *mut gst::ffi::GstCaps;
    }
}

/// GstAudioMeta's API type.
pub fn audio_meta_api() -> glib::Type {
    use glib::translate::FromGlib;
    // SAFETY: registers (once) and returns the API type; no arguments.
    unsafe { glib::Type::from_glib(ffi::gst_audio_meta_api_get_type()) }
}

/// A GstAudioMeta's fields: its info as caps (`gst_audio_info_to_caps`), its valid samples,
/// and its channel planes' offsets (empty for interleaved audio).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioMetaFields {
    pub caps: gst::Caps,
    pub samples: usize,
    pub offsets: Vec<usize>,
}

/// The fields of `meta`, a meta of the audio meta API; an error says why it cannot cross (an
/// info without caps, or more channels than [`MAX_AUDIO_CHANNELS`]).
pub(super) fn fields_of(meta: &gst::MetaRef<'_, gst::Meta>) -> Result<AudioMetaFields, String> {
    // SAFETY: a meta of the audio meta API is a GstAudioMeta, alive while `meta` is borrowed.
    let m = unsafe { &*(meta.as_ptr() as *const ffi::GstAudioMeta) };
    let channels = m.info.channels;
    if !(1..=MAX_AUDIO_CHANNELS as i32).contains(&channels) {
        return Err(format!(
            "{channels} channels, past the {MAX_AUDIO_CHANNELS} an audio meta crosses with"
        ));
    }
    // SAFETY: the meta's info is a GstAudioInfo; to_caps only reads it and returns a new caps
    // or NULL.
    let caps = unsafe { ffi::gst_audio_info_to_caps(&m.info) };
    if caps.is_null() {
        return Err("its audio info has no caps form".into());
    }
    // SAFETY: to_caps returned a new, owned caps.
    let caps = unsafe { gst::Caps::from_glib_full(caps) };
    let offsets = if m.info.layout == ffi::LAYOUT_NON_INTERLEAVED && !m.offsets.is_null() {
        // SAFETY: a non-interleaved audio meta has `channels` offsets (add_audio_meta fills
        // them, defaults included).
        unsafe { std::slice::from_raw_parts(m.offsets, channels as usize) }.to_vec()
    } else {
        Vec::new()
    };
    Ok(AudioMetaFields {
        caps,
        samples: m.samples,
        offsets,
    })
}

/// The first GstAudioMeta of `buffer`, if it has one that fits the limits.
pub fn audio_meta(buffer: &gst::BufferRef) -> Option<AudioMetaFields> {
    let api = audio_meta_api();
    let meta = buffer.iter_meta::<gst::Meta>().find(|m| m.api() == api)?;
    fields_of(&meta).ok()
}

/// Adds a GstAudioMeta to `buffer` (its memories already in place) after checking every value
/// `gst_buffer_add_audio_meta` asserts or fails on: fixed raw audio caps of 1 ..= 64 channels
/// and a positive rate; for non-interleaved audio no offsets (the planes one after another)
/// or one per channel, planes of `samples` samples that neither overlap nor pass the buffer's
/// end; for interleaved audio no offsets and `samples` frames within the buffer. The error
/// names the field.
pub fn add_audio_meta(
    buffer: &mut gst::BufferRef,
    caps: &gst::CapsRef,
    samples: usize,
    offsets: &[usize],
) -> Result<(), String> {
    if !caps.is_fixed() {
        return Err(format!("audio meta caps {caps} are not fixed"));
    }
    let mut info = MaybeUninit::<ffi::GstAudioInfo>::zeroed();
    // SAFETY: `info` is writable memory of the right size; `caps` is fixed (checked above,
    // from_caps asserts on it) and only read.
    let ok = unsafe { ffi::gst_audio_info_from_caps(info.as_mut_ptr(), caps.as_ptr()) };
    if ok == 0 {
        return Err(format!("audio meta caps {caps} are not raw audio caps"));
    }
    // SAFETY: from_caps filled it (it starts from a zeroed info, all fields valid as zeroes).
    let info = unsafe { info.assume_init() };
    let channels = info.channels;
    if !(1..=MAX_AUDIO_CHANNELS as i32).contains(&channels) {
        return Err(format!(
            "audio meta channels {channels} not in 1 ..= {MAX_AUDIO_CHANNELS}"
        ));
    }
    let channels = channels as usize;
    // SAFETY: from_caps set `finfo` to a static GstAudioFormatInfo (or left it NULL); its
    // first field is the format.
    let format = (!info.finfo.is_null()).then(|| unsafe { *info.finfo });
    if format.is_none_or(|f| f <= ffi::FORMAT_ENCODED) || info.bpf <= 0 {
        return Err(format!("audio meta caps {caps} have no raw sample format"));
    }
    if info.rate <= 0 {
        return Err(format!("audio meta rate {} is not positive", info.rate));
    }
    let bpf = info.bpf as usize;
    let size = buffer.size();
    if info.layout == ffi::LAYOUT_NON_INTERLEAVED {
        let plane = samples
            .checked_mul(bpf / channels)
            .ok_or_else(|| format!("audio meta samples {samples} overflow a plane's size"))?;
        if offsets.is_empty() {
            if plane.checked_mul(channels).is_none_or(|n| n > size) {
                return Err(format!(
                    "audio meta samples {samples} pass the buffer's {size} bytes in \
                     {channels} planes"
                ));
            }
        } else if offsets.len() != channels {
            return Err(format!(
                "audio meta has {} offsets for {channels} channels",
                offsets.len()
            ));
        } else {
            for (i, &o) in offsets.iter().enumerate() {
                if o.checked_add(plane).is_none_or(|end| end > size) {
                    return Err(format!(
                        "audio meta offsets[{i}] {o} with planes of {plane} bytes passes the \
                         buffer's {size} bytes"
                    ));
                }
                if let Some(j) = offsets[..i]
                    .iter()
                    .position(|&p| p < o + plane && o < p + plane)
                {
                    return Err(format!(
                        "audio meta offsets[{i}] {o} overlaps offsets[{j}] {} (planes of \
                         {plane} bytes)",
                        offsets[j]
                    ));
                }
            }
        }
    } else {
        if !offsets.is_empty() {
            return Err("audio meta offsets with interleaved audio".into());
        }
        if samples.checked_mul(bpf).is_none_or(|n| n > size) {
            return Err(format!(
                "audio meta samples {samples} of {bpf} bytes pass the buffer's {size} bytes"
            ));
        }
    }
    let mut offsets = offsets.to_vec();
    let offsets_ptr = if offsets.is_empty() {
        std::ptr::null_mut()
    } else {
        offsets.as_mut_ptr()
    };
    // SAFETY: `buffer` is writable (held mutably); `info` is valid with a raw format, and
    // `offsets` is NULL or one per channel for non-interleaved audio, planes within the
    // buffer and apart (all checked above); the add function copies them.
    let meta =
        unsafe { ffi::gst_buffer_add_audio_meta(buffer.as_mut_ptr(), &info, samples, offsets_ptr) };
    if meta.is_null() {
        return Err(format!(
            "audio meta for caps {caps} was refused by GStreamer"
        ));
    }
    Ok(())
}
