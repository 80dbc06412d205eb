//! The consumer's registered files, each mapped whole once, the first time a frame on it is
//! mapped, and that mapping shared by every later frame on the file (fdlinksrc keeps its
//! registered files mapped the same way): a frame then costs no mmap and no munmap.
//!
//! The table holds each file's mapping until the producer retires the file; a
//! [`Mapping`](crate::mapping::Mapping) of it holds the region by reference count, so a
//! mapped frame kept past the retire stays readable, and the region goes with the last of
//! them. Mappings are bounded by the table: one per registered file (at most
//! `MAX_REGISTERED_FILES`), plus retired ones that mapped frames still hold.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::mapping::{Mapping, Region};
use crate::protocol::MemoryKind;
use crate::registered_files::{RegisteredFiles, Retire};

/// A file the producer registered with this consumer, shared by the table and the frames
/// that use it.
pub(super) struct RegisteredFile {
    pub(super) fd: Arc<OwnedFd>,
    pub(super) kind: MemoryKind,
    pub(super) size: u64,
    region: Mutex<Cached>,
}

enum Cached {
    /// Not mapped yet.
    Unmapped,
    /// Mapped whole; frames take windows of it.
    Mapped(Arc<Region>),
    /// The producer retired the file: frames still holding it map their own windows.
    Retired,
}

impl RegisteredFile {
    pub(super) fn new(fd: Arc<OwnedFd>, kind: MemoryKind, size: u64) -> RegisteredFile {
        RegisteredFile {
            fd,
            kind,
            size,
            region: Mutex::new(Cached::Unmapped),
        }
    }

    /// Maps the window `[offset, offset + len)` (checked against the file when the frame
    /// came) read-only, from the file's shared mapping.
    pub(super) fn map(&self, offset: u64, len: u64) -> std::io::Result<Mapping> {
        let region = {
            let mut cached = self.lock();
            match &*cached {
                Cached::Mapped(region) => Some(region.clone()),
                Cached::Retired => None,
                Cached::Unmapped => {
                    let region = Region::whole_file(self.fd.as_fd(), self.size)?;
                    if let Some(r) = &region {
                        *cached = Cached::Mapped(r.clone());
                    }
                    region
                }
            }
        };
        match region {
            Some(region) => {
                let dmabuf = (self.kind == MemoryKind::DmaBuf).then_some(&self.fd);
                Mapping::window(&region, dmabuf, offset, len)
            }
            None => Mapping::new(self.fd.as_fd(), self.kind, offset, len),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cached> {
        // A panic while the lock was held left a valid state behind (each arm assigns once).
        self.region.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file's shared mapping's address, if it has one now (tests).
    #[cfg(test)]
    pub(super) fn region_addr(&self) -> Option<usize> {
        match &*self.lock() {
            Cached::Mapped(r) => Some(r.addr()),
            _ => None,
        }
    }
}

impl Retire for RegisteredFile {
    /// Drops the table's hold on the mapping: it goes with the last mapped frame using it.
    fn retire(&self) {
        *self.lock() = Cached::Retired;
    }
}

/// The files one producer registered with this consumer.
pub(super) type FileTable = RegisteredFiles<Arc<RegisteredFile>>;
