//! Real kernel dmabufs for the hardware tests: udmabuf (from a sealed memfd), the dma-heap
//! system heap, and DRM dumb buffers exported with PRIME (vgem in the test VM). Each is the
//! kernel's own uAPI, called with the structs from <linux/udmabuf.h>, <linux/dma-heap.h> and
//! <drm/drm.h>/<drm/drm_mode.h>.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

/// Where dmabufs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Udmabuf,
    DmaHeap,
    Vgem,
}

impl Source {
    pub fn parse(s: &str) -> Option<Source> {
        Some(match s {
            "udmabuf" => Source::Udmabuf,
            "dma-heap" => Source::DmaHeap,
            "vgem" => Source::Vgem,
            _ => return None,
        })
    }
}

#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;
nix::ioctl_write_ptr!(udmabuf_create, b'u', 0x42, UdmabufCreate);

#[repr(C)]
struct DmaHeapAllocationData {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}
nix::ioctl_readwrite!(dma_heap_alloc, b'H', 0x0, DmaHeapAllocationData);

#[repr(C)]
struct DrmModeCreateDumb {
    height: u32,
    width: u32,
    bpp: u32,
    flags: u32,
    handle: u32,
    pitch: u32,
    size: u64,
}
nix::ioctl_readwrite!(drm_mode_create_dumb, b'd', 0xB2, DrmModeCreateDumb);

#[repr(C)]
struct DrmPrimeHandle {
    handle: u32,
    flags: u32,
    fd: i32,
}
nix::ioctl_readwrite!(drm_prime_handle_to_fd, b'd', 0x2d, DrmPrimeHandle);

/// Allocates dmabufs of one kind. Keeps the device open for as long as it lives.
pub struct Allocator {
    source: Source,
    device: std::fs::File,
}

fn page_align(n: usize) -> usize {
    n.div_ceil(4096) * 4096
}

impl Allocator {
    pub fn open(source: Source) -> std::io::Result<Allocator> {
        let path = match source {
            Source::Udmabuf => "/dev/udmabuf".to_string(),
            Source::DmaHeap => "/dev/dma_heap/system".to_string(),
            Source::Vgem => find_vgem()?,
        };
        let device = OpenOptions::new().read(true).write(true).open(&path)?;
        Ok(Allocator { source, device })
    }

    /// A dmabuf of at least `size` bytes; returns it and its real size. For DRM dumb buffers
    /// `width`x`height` at 8 bpp rows is what is asked for (the kernel pads the pitch).
    pub fn alloc(&self, size: usize) -> std::io::Result<(OwnedFd, usize)> {
        let dev = self.device.as_raw_fd();
        match self.source {
            Source::Udmabuf => {
                let size = page_align(size);
                let memfd = fdlink::fdkind::create_sealed_memfd("fdlink-udmabuf", size)?;
                let arg = UdmabufCreate {
                    memfd: memfd.as_raw_fd() as u32,
                    flags: UDMABUF_FLAGS_CLOEXEC,
                    offset: 0,
                    size: size as u64,
                };
                // SAFETY: `arg` is the kernel's struct udmabuf_create, valid for the call.
                let fd = unsafe { udmabuf_create(dev, &arg) }?;
                // SAFETY: UDMABUF_CREATE returns a new dmabuf fd that we now own.
                Ok((unsafe { OwnedFd::from_raw_fd(fd) }, size))
            }
            Source::DmaHeap => {
                let size = page_align(size);
                let mut arg = DmaHeapAllocationData {
                    len: size as u64,
                    fd: 0,
                    fd_flags: (libc::O_RDWR | libc::O_CLOEXEC) as u32,
                    heap_flags: 0,
                };
                // SAFETY: `arg` is the kernel's struct dma_heap_allocation_data.
                unsafe { dma_heap_alloc(dev, &mut arg) }?;
                // SAFETY: DMA_HEAP_IOCTL_ALLOC filled in a new dmabuf fd that we now own.
                Ok((unsafe { OwnedFd::from_raw_fd(arg.fd as i32) }, size))
            }
            Source::Vgem => {
                // One row of `size` bytes would exceed DRM's width limits: ask for 4096-byte
                // rows instead.
                let width = 1024u32;
                let height = size.div_ceil(4096) as u32;
                let mut dumb = DrmModeCreateDumb {
                    height,
                    width,
                    bpp: 32,
                    flags: 0,
                    handle: 0,
                    pitch: 0,
                    size: 0,
                };
                // SAFETY: `dumb` is the kernel's struct drm_mode_create_dumb.
                unsafe { drm_mode_create_dumb(dev, &mut dumb) }?;
                let mut prime = DrmPrimeHandle {
                    handle: dumb.handle,
                    flags: (libc::O_CLOEXEC | libc::O_RDWR) as u32,
                    fd: -1,
                };
                // SAFETY: `prime` is the kernel's struct drm_prime_handle.
                unsafe { drm_prime_handle_to_fd(dev, &mut prime) }?;
                // The GEM handle stays with the device fd; the dmabuf keeps the object alive.
                // SAFETY: PRIME_HANDLE_TO_FD filled in a new dmabuf fd that we now own.
                Ok((
                    unsafe { OwnedFd::from_raw_fd(prime.fd) },
                    dumb.size as usize,
                ))
            }
        }
    }
}

/// The DRM card node of vgem (a platform device: /sys/class/drm/cardN -> .../platform/vgem/...).
fn find_vgem() -> std::io::Result<String> {
    for entry in std::fs::read_dir("/sys/class/drm")? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("card") || name.contains('-') {
            continue;
        }
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target.to_string_lossy().contains("/platform/vgem/") {
            return Ok(format!("/dev/dri/{name}"));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no vgem DRM device (modprobe vgem)",
    ))
}

#[repr(C)]
struct DmaBufSync {
    flags: u64,
}
const DMA_BUF_SYNC_WRITE: u64 = 2;
const DMA_BUF_SYNC_END: u64 = 4;
nix::ioctl_write_ptr!(dma_buf_ioctl_sync, b'b', 0, DmaBufSync);

/// Writes `byte` into `ranges` of a dmabuf through the CPU, bracketed by DMA_BUF_IOCTL_SYNC as
/// the kernel asks of CPU access.
pub fn fill(
    fd: std::os::fd::BorrowedFd<'_>,
    size: usize,
    ranges: &[(usize, usize)],
    byte: u8,
) -> std::io::Result<()> {
    use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
    let len = std::num::NonZeroUsize::new(size).ok_or(std::io::ErrorKind::InvalidInput)?;
    // SAFETY: a fresh shared mapping of a dmabuf we hold; unmapped below before returning.
    let ptr = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd,
            0,
        )
    }?;
    let sync = |flags| {
        // SAFETY: `DmaBufSync` is the kernel's struct dma_buf_sync.
        unsafe { dma_buf_ioctl_sync(fd.as_raw_fd(), &DmaBufSync { flags }) }
    };
    let result = (|| -> std::io::Result<()> {
        sync(DMA_BUF_SYNC_WRITE)?;
        for &(offset, n) in ranges {
            if offset + n > size {
                return Err(std::io::ErrorKind::InvalidInput.into());
            }
            // SAFETY: [offset, offset + n) lies inside the `size`-byte mapping.
            unsafe { std::ptr::write_bytes(ptr.as_ptr().cast::<u8>().add(offset), byte, n) };
        }
        sync(DMA_BUF_SYNC_WRITE | DMA_BUF_SYNC_END)?;
        Ok(())
    })();
    // SAFETY: unmapping exactly what mmap returned above.
    unsafe { munmap(ptr, size) }?;
    result
}

/// The exporter of a dmabuf fd ("udmabuf", "system", "vgem", "videobuf2_vmalloc", ...), from
/// /proc/self/fdinfo; None for an fd that is not a dmabuf.
pub fn exporter(fd: i32) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("exp_name:"))
        .map(|s| s.trim().to_string())
}
