//! `fdlink_consumer_*`: connecting to a producer and taking its frames.

use std::ffi::{CStr, OsStr, c_char, c_int};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use fdlink::consumer::{Consumer, Poll};

use crate::{
    FdlinkConsumer, FdlinkError, FdlinkErrorKind, FdlinkFrame, FdlinkStatus, guard, invalid,
    panicked, set_error,
};

/// Boxes a new consumer for C, or stores the error and gives NULL.
///
/// # Safety
/// `error` is NULL or writable.
unsafe fn consumer_or_error(
    result: Result<FdlinkConsumer, FdlinkError>,
    error: *mut *mut FdlinkError,
) -> *mut FdlinkConsumer {
    match result {
        Ok(c) => Box::into_raw(Box::new(c)),
        Err(e) => {
            // SAFETY: the caller's contract on `error`.
            unsafe { set_error(error, e) };
            std::ptr::null_mut()
        }
    }
}

/// See `fdlink_consumer_connect` in fdlink.h.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `error` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_consumer_connect(
    path: *const c_char,
    error: *mut *mut FdlinkError,
) -> *mut FdlinkConsumer {
    let result = guard(
        || {
            if path.is_null() {
                return Err(invalid("path"));
            }
            // SAFETY: the caller's contract: a NUL-terminated string that outlives this call.
            let path = unsafe { CStr::from_ptr(path) };
            let path = Path::new(OsStr::from_bytes(path.to_bytes()));
            Ok(FdlinkConsumer::new(Consumer::connect(path)?))
        },
        || Err(panicked("fdlink_consumer_connect")),
    );
    // SAFETY: the caller's contract on `error`.
    unsafe { consumer_or_error(result, error) }
}

/// See `fdlink_consumer_from_fd` in fdlink.h.
///
/// # Safety
/// `fd` is negative or an open fd that the caller gives up; `error` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_consumer_from_fd(
    fd: c_int,
    error: *mut *mut FdlinkError,
) -> *mut FdlinkConsumer {
    let result = if fd < 0 {
        Err(FdlinkError::new(
            FdlinkErrorKind::InvalidArgument,
            format!("fd {fd} is not a file descriptor"),
        ))
    } else {
        // SAFETY: the caller's contract: `fd` is open and now ours, closed once by this
        // OwnedFd (also when the handshake fails).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        guard(
            || Ok(FdlinkConsumer::new(Consumer::from_fd(fd)?)),
            || Err(panicked("fdlink_consumer_from_fd")),
        )
    };
    // SAFETY: the caller's contract on `error`.
    unsafe { consumer_or_error(result, error) }
}

/// See `fdlink_consumer_fd` in fdlink.h.
///
/// # Safety
/// `consumer` is NULL or a live consumer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_consumer_fd(consumer: *const FdlinkConsumer) -> c_int {
    // SAFETY: the caller's contract: NULL or a live consumer, not freed during this call.
    match unsafe { consumer.as_ref() } {
        Some(c) => c.inner.as_fd().as_raw_fd(),
        None => -1,
    }
}

/// See `fdlink_consumer_hold_limit` in fdlink.h.
///
/// # Safety
/// `consumer` is NULL or a live consumer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_consumer_hold_limit(consumer: *const FdlinkConsumer) -> u32 {
    // SAFETY: as in `fdlink_consumer_fd`.
    unsafe { consumer.as_ref() }.map_or(0, |c| c.inner.hold_limit())
}

/// What one `next_frame` call found, before it is handed to C.
enum Next {
    Frame(Box<FdlinkFrame>),
    Pending,
    End,
    Error(FdlinkError),
}

/// See `fdlink_consumer_next_frame` in fdlink.h.
///
/// # Safety
/// `consumer` is NULL or a live consumer that no other thread uses during the call; `frame`
/// and `error` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_consumer_next_frame(
    consumer: *mut FdlinkConsumer,
    timeout_ms: c_int,
    frame: *mut *mut FdlinkFrame,
    error: *mut *mut FdlinkError,
) -> FdlinkStatus {
    if frame.is_null() {
        // SAFETY: the caller's contract on `error`.
        unsafe { set_error(error, invalid("frame")) };
        return FdlinkStatus::Error;
    }
    // SAFETY: the caller's contract: `frame` points to a writable pointer.
    unsafe { *frame = std::ptr::null_mut() };
    // SAFETY: the caller's contract: NULL or a live consumer that only this call uses now.
    let Some(c) = (unsafe { consumer.as_mut() }) else {
        // SAFETY: the caller's contract on `error`.
        unsafe { set_error(error, invalid("consumer")) };
        return FdlinkStatus::Error;
    };
    // Negative: no limit.
    let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
    let next = guard(
        || match c.next(timeout) {
            Ok(Poll::Frame(f)) => Next::Frame(Box::new(c.wrap(f))),
            Ok(Poll::Pending) => Next::Pending,
            Ok(Poll::Ended) => Next::End,
            Err(e) => Next::Error(e.into()),
        },
        || Next::Error(panicked("fdlink_consumer_next_frame")),
    );
    match next {
        Next::Frame(f) => {
            // SAFETY: checked writable above.
            unsafe { *frame = Box::into_raw(f) };
            FdlinkStatus::Frame
        }
        Next::Pending => FdlinkStatus::Pending,
        Next::End => FdlinkStatus::End,
        Next::Error(e) => {
            // SAFETY: the caller's contract on `error`.
            unsafe { set_error(error, e) };
            FdlinkStatus::Error
        }
    }
}

/// See `fdlink_consumer_free` in fdlink.h.
///
/// # Safety
/// `consumer` is NULL or a consumer from this library, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdlink_consumer_free(consumer: *mut FdlinkConsumer) {
    if !consumer.is_null() {
        // SAFETY: the caller's contract: a Box this library made, freed once. Dropping closes
        // the socket; frames still held keep it open until released.
        let c = unsafe { Box::from_raw(consumer) };
        guard(|| drop(c), || ());
    }
}
