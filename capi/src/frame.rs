//! `fdlink_frame_*`: a frame's description, its bytes mapped read-only, and its release.

use std::ffi::c_char;
use std::os::fd::AsRawFd;

use fdlink::consumer::FrameMemory;
use fdlink::protocol::MemoryKind;

use crate::{
    FDLINK_TIME_NONE, FdlinkError, FdlinkFrame, FdlinkMemoryKind, FdlinkVideoLayout, guard,
    invalid, panicked, set_error,
};

/// The frame behind `frame`, or None for NULL.
///
/// # Safety
/// `frame` is NULL or a live frame.
unsafe fn frame_ref<'a>(frame: *const FdlinkFrame) -> Option<&'a FdlinkFrame> {
    // SAFETY: the caller's contract: NULL or a live frame, not released during the borrow.
    unsafe { frame.as_ref() }
}

/// Memory `index` of `frame`, or None for NULL or an index past the last.
///
/// # Safety
/// `frame` is NULL or a live frame.
unsafe fn memory<'a>(frame: *const FdlinkFrame, index: usize) -> Option<&'a FrameMemory> {
    // SAFETY: the caller's contract.
    unsafe { frame_ref(frame) }.and_then(|f| f.frame.memories().get(index))
}

fn ns(t: Option<std::time::Duration>) -> u64 {
    t.map_or(FDLINK_TIME_NONE, |d| {
        u64::try_from(d.as_nanos()).unwrap_or(FDLINK_TIME_NONE - 1)
    })
}

/// See `fdlink_frame_caps` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_caps(frame: *const FdlinkFrame) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { frame_ref(frame) }.map_or(c"".as_ptr(), |f| f.caps.as_ptr())
}

/// See `fdlink_frame_pts` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_pts(frame: *const FdlinkFrame) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { frame_ref(frame) }.map_or(FDLINK_TIME_NONE, |f| ns(f.frame.pts()))
}

/// See `fdlink_frame_dts` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_dts(frame: *const FdlinkFrame) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { frame_ref(frame) }.map_or(FDLINK_TIME_NONE, |f| ns(f.frame.dts()))
}

/// See `fdlink_frame_duration` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_duration(frame: *const FdlinkFrame) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { frame_ref(frame) }.map_or(FDLINK_TIME_NONE, |f| ns(f.frame.duration()))
}

/// See `fdlink_frame_flags` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_flags(frame: *const FdlinkFrame) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { frame_ref(frame) }.map_or(0, |f| f.frame.flags())
}

/// See `fdlink_frame_n_memories` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_n_memories(frame: *const FdlinkFrame) -> usize {
    // SAFETY: the caller's contract.
    unsafe { frame_ref(frame) }.map_or(0, |f| f.frame.memories().len())
}

/// See `fdlink_frame_memory_fd` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_memory_fd(frame: *const FdlinkFrame, index: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { memory(frame, index) }.map_or(-1, |m| m.fd().as_raw_fd())
}

/// See `fdlink_frame_memory_offset` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_memory_offset(
    frame: *const FdlinkFrame,
    index: usize,
) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { memory(frame, index) }.map_or(0, |m| m.offset)
}

/// See `fdlink_frame_memory_size` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_memory_size(frame: *const FdlinkFrame, index: usize) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { memory(frame, index) }.map_or(0, |m| m.size)
}

/// See `fdlink_frame_memory_kind` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_memory_kind(
    frame: *const FdlinkFrame,
    index: usize,
) -> FdlinkMemoryKind {
    // SAFETY: the caller's contract.
    match unsafe { memory(frame, index) }.map(|m| m.kind) {
        Some(MemoryKind::Memfd) => FdlinkMemoryKind::Memfd,
        Some(MemoryKind::DmaBuf) => FdlinkMemoryKind::DmaBuf,
        None => FdlinkMemoryKind::None,
    }
}

/// See `fdlink_frame_video_layout` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame; `layout` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_video_layout(
    frame: *const FdlinkFrame,
    layout: *mut FdlinkVideoLayout,
) -> bool {
    // SAFETY: the caller's contract.
    let Some(v) = unsafe { frame_ref(frame) }.and_then(|f| f.frame.video()) else {
        return false;
    };
    if layout.is_null() {
        return false;
    }
    // SAFETY: the caller's contract: `layout` points to a writable FdlinkVideoLayout.
    unsafe {
        *layout = FdlinkVideoLayout {
            format: v.format,
            flags: v.flags,
            width: v.width,
            height: v.height,
            n_planes: v.n_planes,
            offsets: v.offsets,
            strides: v.strides,
        }
    };
    true
}

/// Gives a mapping's bytes to C, or stores the error.
///
/// # Safety
/// `data` and `size` are writable; `error` is NULL or writable.
unsafe fn give_bytes(
    mapped: Result<&[u8], FdlinkError>,
    data: *mut *const u8,
    size: *mut usize,
    error: *mut *mut FdlinkError,
) -> bool {
    match mapped {
        Ok(bytes) => {
            // SAFETY: the caller's contract: both writable. An empty window gives NULL.
            unsafe {
                *data = if bytes.is_empty() {
                    std::ptr::null()
                } else {
                    bytes.as_ptr()
                };
                *size = bytes.len();
            }
            true
        }
        Err(e) => {
            // SAFETY: the caller's contract on `error`.
            unsafe { set_error(error, e) };
            false
        }
    }
}

/// See `fdlink_frame_map` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a live frame that no other thread uses during the call; `data`, `size`
/// and `error` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_map(
    frame: *mut FdlinkFrame,
    data: *mut *const u8,
    size: *mut usize,
    error: *mut *mut FdlinkError,
) -> bool {
    // SAFETY: the caller's contract: NULL or a live frame only this call uses now.
    let f = unsafe { frame.as_mut() };
    let mapped = match (f, data.is_null() || size.is_null()) {
        (None, _) => Err(invalid("frame")),
        (Some(_), true) => Err(invalid("data or size")),
        (Some(f), false) => guard(|| f.map_whole(), || Err(panicked("fdlink_frame_map"))),
    };
    // SAFETY: `data` and `size` are non-NULL when `mapped` is Ok; the caller's contract.
    unsafe { give_bytes(mapped, data, size, error) }
}

/// See `fdlink_frame_map_memory` in fdlink.h.
///
/// # Safety
/// As `fdlink_frame_map`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_map_memory(
    frame: *mut FdlinkFrame,
    index: usize,
    data: *mut *const u8,
    size: *mut usize,
    error: *mut *mut FdlinkError,
) -> bool {
    // SAFETY: the caller's contract: NULL or a live frame only this call uses now.
    let f = unsafe { frame.as_mut() };
    let mapped = match (f, data.is_null() || size.is_null()) {
        (None, _) => Err(invalid("frame")),
        (Some(_), true) => Err(invalid("data or size")),
        (Some(f), false) => guard(
            || f.map_memory(index),
            || Err(panicked("fdlink_frame_map_memory")),
        ),
    };
    // SAFETY: `data` and `size` are non-NULL when `mapped` is Ok; the caller's contract.
    unsafe { give_bytes(mapped, data, size, error) }
}

/// See `fdlink_frame_release` in fdlink.h.
///
/// # Safety
/// `frame` is NULL or a frame from this library, not yet released.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_frame_release(frame: *mut FdlinkFrame) {
    if !frame.is_null() {
        // SAFETY: the caller's contract: a Box this library made, released once. Dropping
        // unmaps its memories, then sends the release to the producer.
        let f = unsafe { Box::from_raw(frame) };
        guard(|| drop(f), || ());
    }
}
