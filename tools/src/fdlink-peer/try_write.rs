//! `--try-write`: a consumer that tries to write into the frames it receives, through the fd
//! of each fd-backed memory, as a hostile consumer would; one line per frame says whether it
//! could (docs/security.md).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use gst::prelude::*;
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use crate::report::print_line;

/// A write through `fd`: mmap PROT_WRITE MAP_SHARED, and pwrite of the byte at offset 0
/// (read first and written back as it was, so an allowed write changes nothing).
fn write_through(fd: BorrowedFd<'_>) -> (Result<(), Errno>, Result<(), Errno>) {
    let len = std::num::NonZeroUsize::new(4096).expect("nonzero");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a new mapping of our own, never touched, unmapped at once.
    let mapped = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, fd, 0) }.map(|p| {
        // SAFETY: `p` is the mapping just made, `len` long.
        let _ = unsafe { munmap(p, len.get()) };
    });
    let mut byte = [0u8];
    let written = nix::sys::uio::pread(fd, &mut byte, 0)
        .and_then(|_| nix::sys::uio::pwrite(fd, &byte, 0))
        .map(drop);
    (mapped, written)
}

fn outcome(r: Result<(), Errno>) -> String {
    match r {
        Ok(()) => "allowed".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// The same through a read-write reopening of the fd (`/proc/self/fd/N`): refused when the
/// open is, or when both writes through the new fd are (a write-sealed file).
fn reopen_outcome(fd: BorrowedFd<'_>) -> String {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let flags = nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC;
    match nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty()) {
        Err(e) => format!("{e:?}"),
        Ok(rw) => match write_through(rw.as_fd()) {
            (Err(m), Err(w)) => format!("{m:?}/{w:?}"),
            _ => "allowed".into(),
        },
    }
}

/// Adds the `--try-write` probe on `pad`: per buffer, `write-refused` when no fd of its
/// memories could be written through, else `write-allowed` (`no-fd`: none is fd-backed), then `offset=N fds=K` and how each
/// try ended, as `mmap=E write=E reopen=E` per fd (`allowed` or the errno).
pub(crate) fn add_try_write_probe(pad: &gst::Pad) {
    pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let mut raws: Vec<i32> = buffer
            .iter_memories()
            .filter_map(|m| m.downcast_memory_ref::<gst_allocators::FdMemory>())
            .map(|m| m.fd())
            .collect();
        raws.dedup();
        let mut allowed = false;
        let mut tries = Vec::new();
        for raw in &raws {
            // SAFETY: the buffer (borrowed here) keeps its memories and their fds open.
            let fd = unsafe { BorrowedFd::borrow_raw(*raw) };
            let (m, w) = write_through(fd);
            allowed |= m.is_ok() || w.is_ok();
            tries.push(format!(
                "mmap={} write={} reopen={}",
                outcome(m),
                outcome(w),
                reopen_outcome(fd)
            ));
        }
        let verdict = match (raws.is_empty(), allowed) {
            (true, _) => "no-fd",
            (false, true) => "write-allowed",
            (false, false) => "write-refused",
        };
        print_line(&format!(
            "{verdict} offset={} fds={} {}",
            buffer.offset(),
            raws.len(),
            tries.join(" ")
        ));
        gst::PadProbeReturn::Ok
    });
}
