//! Sealed memfds for producers that have plain bytes: each file is mapped writable once, then
//! sealed against writes through any other mapping or fd (F_SEAL_FUTURE_WRITE), so only this
//! process writes it and no consumer can write into a frame another one reads. Files are
//! reused once every consumer released them.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use crate::fdkind::{create_memfd_to_map, seal_future_writes};

/// A memfd of the pool and its writable mapping.
pub struct PoolFile {
    fd: Arc<OwnedFd>,
    map: NonNull<std::ffi::c_void>,
    size: usize,
}

// SAFETY: the mapping belongs to this value; it is written only through `&self` methods
// called by the one owner between publishes (the pool hands a file to one user at a time).
unsafe impl Send for PoolFile {}

impl PoolFile {
    fn new(size: usize) -> std::io::Result<PoolFile> {
        let len = NonZeroUsize::new(size.max(1)).expect("not zero");
        let fd = create_memfd_to_map("fdlink-app-pool", len.get())?;
        // SAFETY: a new shared mapping of a file we just made; nothing else maps it yet.
        let map = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }?;
        // Kernels before 5.1 lack the seal: the file stays writable for its holders then.
        let _ = seal_future_writes(fd.as_fd());
        Ok(PoolFile {
            fd: Arc::new(fd),
            map,
            size: len.get(),
        })
    }

    /// Writes `bytes` at the start of the file (at most its size).
    pub fn write(&self, bytes: &[u8]) {
        let n = bytes.len().min(self.size);
        // SAFETY: the mapping is `size` bytes long and writable; no consumer holds this file
        // now (the pool gives out only released files), so nobody reads it while it changes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_ptr().cast::<u8>(), n) };
    }

    /// The file, to send.
    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.clone()
    }
}

impl Drop for PoolFile {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, unmapped once.
        let _ = unsafe { munmap(self.map, self.size) };
    }
}

/// Free files of one size; a file whose size no longer fits is dropped.
pub struct MemfdPool {
    free: Vec<PoolFile>,
    max_free: usize,
}

impl MemfdPool {
    /// A pool that keeps at most `max_free` files for reuse.
    pub fn new(max_free: usize) -> MemfdPool {
        MemfdPool {
            free: Vec::new(),
            max_free,
        }
    }

    /// A file of exactly `size` bytes: a free one, or a new one.
    pub fn take(&mut self, size: usize) -> std::io::Result<PoolFile> {
        self.free.retain(|f| f.size == size.max(1));
        match self.free.pop() {
            Some(f) => Ok(f),
            None => PoolFile::new(size),
        }
    }

    /// Returns a released file for reuse.
    pub fn give_back(&mut self, file: PoolFile) {
        if self.free.len() < self.max_free {
            self.free.push(file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_reused_and_sealed_against_other_writers() {
        let mut pool = MemfdPool::new(2);
        let f = pool.take(8192).unwrap();
        f.write(&[7u8; 8192]);
        let fd = f.fd();
        // Another writer (a consumer with the fd) cannot write.
        assert!(nix::sys::uio::pwrite(fd.as_fd(), &[1], 0).is_err());
        let m =
            crate::mapping::Mapping::new(fd.as_fd(), crate::protocol::MemoryKind::Memfd, 0, 8192)
                .unwrap();
        assert!(m.bytes().iter().all(|&b| b == 7));
        pool.give_back(f);
        let again = pool.take(8192).unwrap();
        assert!(Arc::ptr_eq(&again.fd(), &fd), "the released file is reused");
        assert!(crate::fdkind::is_sealed_against_shrink(fd.as_fd()));
    }
}
