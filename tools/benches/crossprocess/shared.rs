//! The page shared with the consumer processes: where they stamp each frame's arrival.

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gstfdlink::clock::monotonic_now;

pub(crate) const SLOTS: usize = 1 << 16;
const MAX_CHILDREN: usize = 8;
pub(crate) const CHILD_ENV: &str = "FDLINK_BENCH_CHILD";

/// One consumer's part of the shared file.
#[repr(C)]
pub(crate) struct Region {
    /// seq + 1 of the last frame the consumer saw (0: none yet).
    pub(crate) last_seq: AtomicU64,
    /// Heap allocations of the consumer process so far.
    pub(crate) allocs: AtomicU64,
    _pad: [u64; 6],
    /// CLOCK_MONOTONIC ns at which frame `seq` reached the consumer, at `seq % SLOTS`.
    pub(crate) stamps: [AtomicU64; SLOTS],
}

impl Region {
    pub(crate) fn reset(&self) {
        self.last_seq.store(0, Ordering::SeqCst);
        self.allocs.store(0, Ordering::SeqCst);
    }

    pub(crate) fn stamp(&self, seq: u64) {
        self.stamps[seq as usize % SLOTS].store(monotonic_now(), Ordering::Relaxed);
        self.last_seq.store(seq + 1, Ordering::Release);
    }
}

/// Maps `path` (created and sized by the parent) for the process's lifetime.
pub(crate) fn map_regions(path: &Path) -> &'static [Region] {
    let len = std::mem::size_of::<Region>() * MAX_CHILDREN;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("shared bench file opens");
    assert_eq!(file.metadata().unwrap().len(), len as u64);
    // SAFETY: a fresh shared mapping of a file we opened, `len` > 0 bytes; nothing else maps
    // this address range.
    let ptr = unsafe {
        nix::sys::mman::mmap(
            None,
            NonZeroUsize::new(len).unwrap(),
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_SHARED,
            file.as_fd(),
            0,
        )
    }
    .expect("mmap of the shared bench file");
    // SAFETY: the mapping is page aligned, `len` bytes long (MAX_CHILDREN Regions), never
    // unmapped (so 'static), and Region holds only atomics and padding, for which any bytes
    // (zeroes from set_len included) are valid; other processes access it only atomically.
    unsafe { std::slice::from_raw_parts(ptr.as_ptr() as *const Region, MAX_CHILDREN) }
}

pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    pub(crate) regions: &'static [Region],
}

impl Shared {
    pub(crate) fn create() -> Shared {
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("fdlink-bench-{}", std::process::id()));
        let file = std::fs::File::create(&path).expect("shared bench file");
        file.set_len((std::mem::size_of::<Region>() * MAX_CHILDREN) as u64)
            .expect("size shared bench file");
        drop(file);
        let regions = map_regions(&path);
        Shared { path, regions }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
