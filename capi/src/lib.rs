//! The C API of fdlink's application consumer (`fdlink::consumer`): `include/fdlink.h`
//! declares these functions and documents them for C callers.
//!
//! Every pointer a C caller gives may be NULL (the call then fails or does nothing); objects
//! are opaque and owned by the caller until freed. No panic crosses the ABI: each function
//! runs inside [`guard`], which turns a panic into the function's failure value.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::ffi::{CStr, CString, c_char};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fdlink::consumer::{Consumer, ConsumerError, Frame, Poll};
use fdlink::mapping::Mapping;
use fdlink::protocol::{MAX_PLANES, TIME_NONE};

mod consumer;
mod frame;
#[cfg(test)]
mod tests;

pub use consumer::*;
pub use frame::*;

/// `FDLINK_TIME_NONE`: a timestamp the frame does not have.
pub const FDLINK_TIME_NONE: u64 = TIME_NONE;

/// `FdlinkStatus`: what `fdlink_consumer_next_frame` found.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdlinkStatus {
    Frame = 0,
    Pending = 1,
    End = 2,
    Error = 3,
}

/// `FdlinkErrorKind`: what an `FdlinkError` is about.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdlinkErrorKind {
    InvalidArgument = 1,
    Connect = 2,
    Handshake = 3,
    PeerGone = 4,
    PeerError = 5,
    BadPacket = 6,
    BadFrame = 7,
    Transport = 8,
    Map = 9,
    Internal = 10,
}

/// `FdlinkMemoryKind`, as on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdlinkMemoryKind {
    None = 0,
    Memfd = 1,
    DmaBuf = 2,
}

/// `FdlinkVideoLayout`: the producer's video layout of a frame's bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FdlinkVideoLayout {
    pub format: u32,
    pub flags: u32,
    pub width: u32,
    pub height: u32,
    pub n_planes: u32,
    pub offsets: [u64; MAX_PLANES],
    pub strides: [i32; MAX_PLANES],
}

/// An error for C: its kind and a NUL-terminated message.
pub struct FdlinkError {
    kind: FdlinkErrorKind,
    message: CString,
}

impl FdlinkError {
    fn new(kind: FdlinkErrorKind, message: impl Into<String>) -> FdlinkError {
        FdlinkError {
            kind,
            message: c_string(message.into()),
        }
    }
}

impl From<ConsumerError> for FdlinkError {
    fn from(e: ConsumerError) -> FdlinkError {
        let kind = match &e {
            ConsumerError::Connect { .. } => FdlinkErrorKind::Connect,
            ConsumerError::Handshake(_) => FdlinkErrorKind::Handshake,
            ConsumerError::PeerGone => FdlinkErrorKind::PeerGone,
            ConsumerError::PeerError(_) => FdlinkErrorKind::PeerError,
            ConsumerError::BadPacket(_) => FdlinkErrorKind::BadPacket,
            ConsumerError::BadFrame(_) => FdlinkErrorKind::BadFrame,
            ConsumerError::Transport(_) => FdlinkErrorKind::Transport,
        };
        FdlinkError::new(kind, e.to_string())
    }
}

/// `s` as a C string, cut at its first NUL (a producer's text could hold one).
fn c_string(s: String) -> CString {
    CString::new(s).unwrap_or_else(|e| {
        let cut = e.nul_position();
        let mut bytes = e.into_vec();
        bytes.truncate(cut);
        CString::new(bytes).unwrap_or_default()
    })
}

/// Stores `e` in `*out` when the caller asked for errors (`out` not NULL).
///
/// # Safety
/// `out` is NULL or points to a writable `FdlinkError *`.
unsafe fn set_error(out: *mut *mut FdlinkError, e: FdlinkError) {
    if !out.is_null() {
        // SAFETY: the caller's contract: `out` points to a writable pointer.
        unsafe { *out = Box::into_raw(Box::new(e)) };
    }
}

/// Runs `f`, giving `on_panic()` if it panics, so that no unwind crosses into C.
fn guard<T>(f: impl FnOnce() -> T, on_panic: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| on_panic())
}

/// The error of a function that panicked (a bug in fdlink).
fn panicked(function: &str) -> FdlinkError {
    FdlinkError::new(
        FdlinkErrorKind::Internal,
        format!("{function}: internal error (a panic in fdlink); please report it"),
    )
}

/// A consumer for C: the Rust consumer and the stream's caps as a C string, shared by the
/// frames sent under them.
pub struct FdlinkConsumer {
    inner: Consumer,
    caps: Arc<CStr>,
}

impl FdlinkConsumer {
    fn new(inner: Consumer) -> FdlinkConsumer {
        FdlinkConsumer {
            inner,
            caps: Arc::from(c""),
        }
    }

    /// The C string of `caps`, made again only when the caps changed.
    fn caps_for(&mut self, caps: &str) -> Arc<CStr> {
        if self.caps.to_bytes() != caps.as_bytes() {
            self.caps = Arc::from(c_string(caps.to_owned()));
        }
        self.caps.clone()
    }

    fn wrap(&mut self, frame: Frame) -> FdlinkFrame {
        let caps = self.caps_for(frame.caps());
        let maps = (0..frame.memories().len()).map(|_| None).collect();
        FdlinkFrame {
            whole: None,
            maps,
            caps,
            frame,
        }
    }

    /// The next frame within `timeout` (`None`: no limit), going past packets that are not
    /// frames until it ends.
    fn next(&mut self, timeout: Option<Duration>) -> Result<Poll, ConsumerError> {
        let Some(timeout) = timeout else {
            return Ok(match self.inner.next_frame()? {
                Some(f) => Poll::Frame(f),
                None => Poll::Ended,
            });
        };
        if timeout.is_zero() {
            return self.inner.poll_frame(Some(Duration::ZERO));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.inner.poll_frame(Some(Duration::ZERO));
            }
            match self.inner.poll_frame(Some(left))? {
                Poll::Pending => {}
                done => return Ok(done),
            }
        }
    }
}

/// A frame for C. The mappings come first so that they are dropped (unmapped) before the
/// frame, whose drop releases the buffer to the producer.
pub struct FdlinkFrame {
    /// All memories as one mapping (`fdlink_frame_map`), once asked for.
    whole: Option<Mapping>,
    /// Each memory's mapping (`fdlink_frame_map_memory`), once asked for.
    maps: Vec<Option<Mapping>>,
    caps: Arc<CStr>,
    frame: Frame,
}

impl FdlinkFrame {
    /// One mapping over all memories: they are one memory, or adjacent windows of one file.
    fn map_whole(&mut self) -> Result<&[u8], FdlinkError> {
        if self.whole.is_none() {
            let memories = self.frame.memories();
            let Some(first) = memories.first() else {
                return Ok(&[]);
            };
            let mut end = first.offset;
            for m in memories {
                let same_file =
                    m.fd().as_raw_fd() == first.fd().as_raw_fd() && m.kind == first.kind;
                if !same_file || m.offset != end {
                    return Err(FdlinkError::new(
                        FdlinkErrorKind::InvalidArgument,
                        format!(
                            "the frame's {} memories are not one window of one file: map each \
                             with fdlink_frame_map_memory",
                            memories.len()
                        ),
                    ));
                }
                end = m.offset.saturating_add(m.size);
            }
            let mapping = first
                .map_window(first.offset, end - first.offset)
                .map_err(|e| map_error(&e))?;
            self.whole = Some(mapping);
        }
        Ok(self.whole.as_ref().map_or(&[], Mapping::bytes))
    }

    fn map_memory(&mut self, index: usize) -> Result<&[u8], FdlinkError> {
        let n = self.frame.memories().len();
        let Some(m) = self.frame.memories().get(index) else {
            return Err(FdlinkError::new(
                FdlinkErrorKind::InvalidArgument,
                format!("memory {index} of a frame with {n} memories"),
            ));
        };
        let slot = &mut self.maps[index];
        if slot.is_none() {
            *slot = Some(m.map().map_err(|e| map_error(&e))?);
        }
        Ok(slot.as_ref().map_or(&[], Mapping::bytes))
    }
}

fn map_error(e: &std::io::Error) -> FdlinkError {
    FdlinkError::new(
        FdlinkErrorKind::Map,
        format!("cannot map the frame read-only: {e}"),
    )
}

fn invalid(what: &str) -> FdlinkError {
    FdlinkError::new(FdlinkErrorKind::InvalidArgument, format!("{what} is NULL"))
}

/// See `fdlink_error_message` in fdlink.h.
///
/// # Safety
/// `error` is NULL or an error not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_error_message(error: *const FdlinkError) -> *const c_char {
    // SAFETY: the caller's contract: NULL or a live error.
    match unsafe { error.as_ref() } {
        Some(e) => e.message.as_ptr(),
        None => c"(no error)".as_ptr(),
    }
}

/// See `fdlink_error_kind` in fdlink.h.
///
/// # Safety
/// `error` is NULL or an error not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_error_kind(error: *const FdlinkError) -> FdlinkErrorKind {
    // SAFETY: the caller's contract: NULL or a live error.
    unsafe { error.as_ref() }.map_or(FdlinkErrorKind::InvalidArgument, |e| e.kind)
}

/// See `fdlink_error_free` in fdlink.h.
///
/// # Safety
/// `error` is NULL or an error from this library, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_error_free(error: *mut FdlinkError) {
    if !error.is_null() {
        // SAFETY: the caller's contract: a Box this library made, freed once.
        drop(unsafe { Box::from_raw(error) });
    }
}

// fdlink.h spells these out.
const _: () = assert!(MAX_PLANES == 4);
const _: () = assert!(fdlink::consumer::FLAG_DISCONT == 1 << 6);
const _: () = assert!(fdlink::consumer::FLAG_DELTA_UNIT == 1 << 13);

// fdlink.h lets a frame be released on any thread, and a consumer move between threads.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<FdlinkFrame>();
    send::<FdlinkConsumer>();
};
