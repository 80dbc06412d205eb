//! Read-only mappings of a received frame's memories: memfds mapped shared and read-only,
//! dmabufs the same, bracketed by `DMA_BUF_IOCTL_SYNC` so the CPU sees what the device wrote.
//!
//! A [`Mapping`] is a window of a [`Region`], a span of a file mapped once. A frame's own
//! files get a region per mapping; a consumer's registered files keep one region of the whole
//! file that every frame on it shares (see `consumer`), so a frame costs no mmap.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

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

/// Tells the exporter of a dmabuf that the CPU starts (`start`) or ends reading it.
fn dma_buf_sync(fd: BorrowedFd<'_>, start: bool) -> nix::Result<()> {
    let sync = DmaBufSync {
        flags: DMA_BUF_SYNC_READ
            | if start {
                DMA_BUF_SYNC_START
            } else {
                DMA_BUF_SYNC_END
            },
    };
    // SAFETY: the ioctl reads one `struct dma_buf_sync` from the pointer, which lives for the
    // call; a wrong fd gets an error, not undefined behaviour.
    unsafe { dma_buf_ioctl_sync(fd.as_raw_fd(), &sync) }.map(drop)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

/// A span of a file mapped shared and read-only, unmapped when dropped.
pub struct Region {
    base: NonNull<std::ffi::c_void>,
    len: NonZeroUsize,
}

// SAFETY: the region is read-only shared memory owned by this value; reading it from another
// thread is as safe as from this one.
unsafe impl Send for Region {}
// SAFETY: as above; nothing writes through it.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes of `fd` from `offset` (a multiple of the page size) read-only.
    fn map(fd: BorrowedFd<'_>, offset: u64, len: NonZeroUsize) -> std::io::Result<Region> {
        let offset =
            i64::try_from(offset).map_err(|_| std::io::Error::other("offset too large"))?;
        // SAFETY: a new shared read-only mapping of a file we hold; nothing else aliases it
        // mutably in this process, and the kernel checks the range against the file.
        let base = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                fd,
                offset,
            )
        }?;
        Ok(Region { base, len })
    }

    /// Maps the first `size` bytes of `fd` (a whole file: a window of it is then any range
    /// inside `size`); `None` for an empty file, which has nothing to map.
    pub fn whole_file(fd: BorrowedFd<'_>, size: u64) -> std::io::Result<Option<Arc<Region>>> {
        let size = usize::try_from(size).map_err(|_| std::io::Error::other("file too large"))?;
        match NonZeroUsize::new(size) {
            Some(len) => Ok(Some(Arc::new(Region::map(fd, 0, len)?))),
            None => Ok(None),
        }
    }

    /// The region's start address (tests compare it across frames).
    pub fn addr(&self) -> usize {
        self.base.as_ptr() as usize
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are the mapping `map` made, unmapped once here; every
        // `Mapping` that reads it holds this region by reference count, so none is left.
        let _ = unsafe { munmap(self.base, self.len.get()) };
    }
}

/// One memory mapped read-only: `len` bytes of a region from `start`.
pub struct Mapping {
    /// None for an empty window.
    region: Option<Arc<Region>>,
    start: usize,
    len: usize,
    /// The dmabuf to end CPU access on when dropped.
    dmabuf: Option<Arc<OwnedFd>>,
}

impl Mapping {
    /// Maps `[offset, offset + len)` of `fd` read-only. A dmabuf gets a SYNC_START for
    /// reading first, and a SYNC_END when the mapping is dropped.
    pub fn new(
        fd: BorrowedFd<'_>,
        kind: MemoryKind,
        offset: u64,
        len: u64,
    ) -> std::io::Result<Mapping> {
        let page = page_size();
        let aligned = offset - offset % page;
        let start = (offset - aligned) as usize;
        let len = usize::try_from(len).map_err(|_| std::io::Error::other("window too large"))?;
        let Some(map_len) = NonZeroUsize::new(start + len).filter(|_| len > 0) else {
            return Ok(Mapping::empty());
        };
        let region = Arc::new(Region::map(fd, aligned, map_len)?);
        let dmabuf = match kind {
            MemoryKind::DmaBuf => Some(Arc::new(fd.try_clone_to_owned()?)),
            MemoryKind::Memfd => None,
        };
        Mapping::start(Some(region), start, len, dmabuf)
    }

    /// The window `[offset, offset + len)` of `region`, a mapping from the start of its file
    /// ([`Region::whole_file`]); `dmabuf` (the file, when it is one) gets a SYNC_START now
    /// and a SYNC_END when the mapping is dropped.
    pub fn window(
        region: &Arc<Region>,
        dmabuf: Option<&Arc<OwnedFd>>,
        offset: u64,
        len: u64,
    ) -> std::io::Result<Mapping> {
        let inside = offset
            .checked_add(len)
            .is_some_and(|end| end <= region.len.get() as u64);
        if !inside {
            return Err(std::io::Error::other(format!(
                "window {offset}+{len} outside the file's {} mapped bytes",
                region.len
            )));
        }
        if len == 0 {
            return Ok(Mapping::empty());
        }
        Mapping::start(
            Some(region.clone()),
            offset as usize,
            len as usize,
            dmabuf.cloned(),
        )
    }

    fn empty() -> Mapping {
        Mapping {
            region: None,
            start: 0,
            len: 0,
            dmabuf: None,
        }
    }

    /// Starts CPU access to the dmabuf, if any, before the bytes are given out.
    fn start(
        region: Option<Arc<Region>>,
        start: usize,
        len: usize,
        dmabuf: Option<Arc<OwnedFd>>,
    ) -> std::io::Result<Mapping> {
        if let Some(fd) = &dmabuf {
            dma_buf_sync(fd.as_fd(), true)?;
        }
        Ok(Mapping {
            region,
            start,
            len,
            dmabuf,
        })
    }

    /// The window's bytes.
    pub fn bytes(&self) -> &[u8] {
        let Some(region) = &self.region else {
            return &[];
        };
        // SAFETY: the region covers `start + len` bytes (checked when made) and lives as long
        // as `self`, which holds it; it is read-only, so no `&mut` to it exists.
        unsafe {
            std::slice::from_raw_parts(region.base.as_ptr().cast::<u8>().add(self.start), self.len)
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Before the region goes (it goes after this, with the fields).
        if let Some(fd) = &self.dmabuf {
            let _ = dma_buf_sync(fd.as_fd(), false);
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

    #[test]
    fn windows_of_a_whole_file_share_its_region_and_stay_inside_it() {
        let fd = create_sealed_memfd("mapping-whole", 2 * 4096).unwrap();
        nix::sys::uio::pwrite(&fd, b"abcdefgh", 4096).unwrap();
        let region = Region::whole_file(fd.as_fd(), 2 * 4096).unwrap().unwrap();
        let a = Mapping::window(&region, None, 4096, 4).unwrap();
        let b = Mapping::window(&region, None, 4100, 4).unwrap();
        assert_eq!(a.bytes(), b"abcd");
        assert_eq!(b.bytes(), b"efgh");
        assert_eq!(a.bytes().as_ptr() as usize, region.addr() + 4096);
        assert!(Mapping::window(&region, None, 8190, 4).is_err());
        assert!(Mapping::window(&region, None, u64::MAX, 2).is_err());
        assert!(Region::whole_file(fd.as_fd(), 0).unwrap().is_none());
    }
}
