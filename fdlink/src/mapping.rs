//! Read-only mappings of a received frame's memories: memfds mapped shared and read-only,
//! dmabufs the same, bracketed by `DMA_BUF_IOCTL_SYNC` so the CPU sees what the device wrote.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use crate::protocol::MemoryKind;

/// `struct dma_buf_sync` of linux/dma-buf.h.
#[repr(C)]
struct DmaBufSync {
    flags: u64,
}

const DMA_BUF_SYNC_READ: u64 = 1;
const DMA_BUF_SYNC_START: u64 = 0;
const DMA_BUF_SYNC_END: u64 = 4;

nix::ioctl_write_ptr!(dma_buf_ioctl_sync, b'b', 0, DmaBufSync);

/// One memory mapped read-only: `window` bytes of its file from `offset`.
pub struct Mapping {
    /// The page-aligned mapping, and its length.
    base: NonNull<std::ffi::c_void>,
    mapped_len: usize,
    /// Where the window starts in the mapping, and its length.
    start: usize,
    len: usize,
    /// The dmabuf to end CPU access on when unmapped (a dup: the mapping outlives no borrow).
    dmabuf: Option<std::os::fd::OwnedFd>,
}

// SAFETY: the mapping is read-only shared memory owned by this value; reading it from another
// thread is as safe as from this one.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only gives out `&[u8]`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `[offset, offset + len)` of `fd` read-only. A dmabuf gets a SYNC_START for
    /// reading first, and a SYNC_END when the mapping is dropped.
    pub fn new(
        fd: BorrowedFd<'_>,
        kind: MemoryKind,
        offset: u64,
        len: u64,
    ) -> std::io::Result<Mapping> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u64;
        let aligned = offset - offset % page;
        let start = (offset - aligned) as usize;
        let len = usize::try_from(len).map_err(|_| std::io::Error::other("window too large"))?;
        let mapped_len = start + len;
        let Some(map_len) = NonZeroUsize::new(mapped_len) else {
            return Ok(Mapping {
                base: NonNull::dangling(),
                mapped_len: 0,
                start: 0,
                len: 0,
                dmabuf: None,
            });
        };
        // SAFETY: a new shared read-only mapping of a file we hold; nothing else aliases it
        // mutably in this process, and the kernel checks the range against the file.
        let base = unsafe {
            mmap(
                None,
                map_len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                fd,
                aligned as i64,
            )
        }?;
        let mut mapping = Mapping {
            base,
            mapped_len,
            start,
            len,
            dmabuf: None,
        };
        if kind == MemoryKind::DmaBuf {
            let sync = DmaBufSync {
                flags: DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ,
            };
            // SAFETY: the ioctl reads one `struct dma_buf_sync` from the pointer.
            unsafe { dma_buf_ioctl_sync(fd.as_raw_fd(), &sync) }?;
            mapping.dmabuf = Some(fd.try_clone_to_owned()?);
        }
        Ok(mapping)
    }

    /// The window's bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the mapping covers `start + len` bytes and lives as long as `self`; it is
        // read-only, so no `&mut` to it exists.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().cast::<u8>().add(self.start), self.len)
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(fd) = &self.dmabuf {
            let sync = DmaBufSync {
                flags: DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ,
            };
            // SAFETY: as in `new`.
            let _ = unsafe { dma_buf_ioctl_sync(fd.as_fd().as_raw_fd(), &sync) };
        }
        if self.mapped_len > 0 {
            // SAFETY: `base` and `mapped_len` are the mapping `new` made, unmapped once here.
            let _ = unsafe { munmap(self.base, self.mapped_len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdkind::create_sealed_memfd;

    #[test]
    fn maps_a_window_at_any_offset_read_only() {
        let fd = create_sealed_memfd("mapping-test", 3 * 4096).unwrap();
        let data: Vec<u8> = (0..3 * 4096).map(|i| (i % 251) as u8).collect();
        // The memfd is writable here (sealed against shrinking only): fill it.
        nix::sys::uio::pwrite(&fd, &data, 0).unwrap();
        let m = Mapping::new(fd.as_fd(), MemoryKind::Memfd, 5000, 3000).unwrap();
        assert_eq!(m.bytes(), &data[5000..8000]);
        let empty = Mapping::new(fd.as_fd(), MemoryKind::Memfd, 0, 0).unwrap();
        assert!(empty.bytes().is_empty());
    }
}
