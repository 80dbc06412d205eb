//! Consumers get memfds read-only. A memory's own fd is the producer's read-write one; a
//! consumer sent it could map the frame writable, or write(2) to it, and change what the
//! producer's pipeline and every other consumer read. So the producer sends a read-only open
//! of the file instead (`/proc/self/fd/N` opened O_RDONLY: a new open file description of the
//! same file, with the same seals and identity).
//!
//! The reopening is made once per memory and kept in its qdata until the memory is freed: a
//! pooled buffer costs one `open` in its life, not one per frame (fdlink's memfd pool makes it
//! with the buffer; the file registry's tag keeps its number, so a registered file's frames
//! do not even look it up). Dmabufs cross as they are: their access mode is the exporter's,
//! and /proc cannot reopen them (docs/security.md).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{LazyLock, Mutex};

use glib::translate::IntoGlib;

use fdlink::protocol::MemoryKind;
use gst::glib;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "fdlinkreadonly",
        gst::DebugColorFlags::empty(),
        Some("fdlink read-only fds for consumers"),
    )
});

/// What a memory's consumers are sent in place of its own fd (None: its own fd).
struct SentFd(Option<OwnedFd>);

impl SentFd {
    /// A read-only reopening of memfd `fd`; when /proc cannot reopen the file (no /proc
    /// mounted), nothing: the memory's own fd is sent.
    fn open(fd: BorrowedFd<'_>) -> SentFd {
        match reopen_read_only(fd) {
            Ok(ro) => SentFd(Some(ro)),
            Err(e) => {
                gst::warning!(
                    CAT,
                    "cannot reopen memfd {} read-only through /proc/self/fd ({e}): consumers \
                     get the producer's read-write fd and can write into its frames; mount /proc \
                     in the producer's namespace",
                    fd.as_raw_fd()
                );
                SentFd(None)
            }
        }
    }
}

/// Opens the file behind `fd` again, read-only and close-on-exec.
pub fn reopen_read_only(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    // std's File::open is O_RDONLY | O_CLOEXEC.
    std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd())).map(OwnedFd::from)
}

/// Qdata of memfd memories: their [`SentFd`].
static QUARK: LazyLock<glib::Quark> =
    LazyLock::new(|| glib::Quark::from_str("fdlink-read-only-fd"));

/// Taken to set the qdata, so that two sinks sending one memory (a tee) do not both set it
/// (the second set would close the fd the first is sending).
static SETTING: Mutex<()> = Mutex::new(());

unsafe extern "C" fn drop_sent_fd(data: glib::ffi::gpointer) {
    // SAFETY: `data` is the Box<SentFd> leaked in `sent_fd`; GStreamer calls this destroy
    // notify once, when the memory is freed.
    drop(unsafe { Box::from_raw(data as *mut SentFd) });
}

/// The fd to send for `mem` (own fd `fd`, crossing as `kind`): for a memfd the read-only
/// reopening kept on the memory, made now if it has none yet; else `fd`. It stays open as
/// long as the memory lives.
pub(super) fn sent_fd<'a>(
    mem: &'a gst::MemoryRef,
    fd: BorrowedFd<'a>,
    kind: MemoryKind,
) -> BorrowedFd<'a> {
    if kind != MemoryKind::Memfd {
        return fd;
    }
    let obj = super::file_registry::root_memory(mem) as *mut gst::ffi::GstMiniObject;
    let kept = || {
        // SAFETY: the root memory is valid while `mem` is; the qdata under QUARK, if set, is
        // a SentFd set below, never replaced, freed only with the memory.
        unsafe {
            (gst::ffi::gst_mini_object_get_qdata(obj, QUARK.into_glib()) as *const SentFd).as_ref()
        }
    };
    let sent = match kept() {
        Some(s) => s,
        None => {
            let _setting = SETTING.lock().unwrap_or_else(|e| e.into_inner());
            match kept() {
                Some(s) => s,
                None => {
                    let sent = Box::into_raw(Box::new(SentFd::open(fd)));
                    // SAFETY: the root memory is valid; qdata takes ownership of the box and
                    // frees it through drop_sent_fd when the memory is freed.
                    unsafe {
                        gst::ffi::gst_mini_object_set_qdata(
                            obj,
                            QUARK.into_glib(),
                            sent as glib::ffi::gpointer,
                            Some(drop_sent_fd),
                        );
                        &*sent
                    }
                }
            }
        }
    };
    sent.0.as_ref().map_or(fd, |ro| ro.as_fd())
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

    use gst::prelude::*;
    use nix::errno::Errno;
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

    use super::super::{FdList, FileRegistry, MemfdBufferPool, describe_buffer};
    use crate::test_support::{fd_lock, open_fds};
    use fdlink::protocol::{MemoryKind, MemoryList};

    /// How a write through `fd` fails: (mmap PROT_WRITE MAP_SHARED, pwrite), Ok if allowed.
    fn try_write(fd: BorrowedFd<'_>) -> (Result<(), Errno>, Result<(), Errno>) {
        let len = std::num::NonZeroUsize::new(4096).unwrap();
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a fresh mapping of our own, unmapped at once without being touched.
        let mapped = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, fd, 0) }
            .map(|p| unsafe { munmap(p, len.get()) }.unwrap());
        let mut byte = [0u8];
        nix::sys::uio::pread(fd, &mut byte, 0).unwrap();
        // The byte read back: allowed or not, the frame stays as it is.
        let written = nix::sys::uio::pwrite(fd, &byte, 0).map(|_| ());
        (mapped, written)
    }

    fn pool(size: u32) -> MemfdBufferPool {
        let caps = gst::Caps::new_empty_simple("application/x-test");
        MemfdBufferPool::new_configured(&caps, size, 1, 0, false).unwrap()
    }

    /// A buffer on one memfd: from fdlink's pool (`true`), or wrapped by GstFdAllocator as an
    /// upstream element's own memfd would be (its read-only fd made on its first frame).
    fn memfd_buffer(from_pool: bool) -> (gst::Buffer, Option<MemfdBufferPool>) {
        if from_pool {
            let pool = pool(8192);
            (pool.acquire_buffer(None).unwrap(), Some(pool))
        } else {
            let fd = fdlink::fdkind::create_sealed_memfd("upstream", 8192).unwrap();
            let mem = super::super::Importer::default()
                .wrap(fd, MemoryKind::Memfd, 8192)
                .unwrap();
            let mut buf = gst::Buffer::new();
            buf.get_mut().unwrap().append_memory(mem);
            (buf, None)
        }
    }

    /// Every frame's fd is O_RDONLY and refuses writes (mmap PROT_WRITE: EACCES, write(2):
    /// EBADF), with and without register-once ids; it is made once per memory (the same fd on
    /// every frame) and closed with the memory.
    #[test]
    fn consumers_are_sent_read_only_fds_made_once_per_memory() {
        let _fds = fd_lock();
        gst::init().unwrap();
        for (registered, from_pool) in [(true, true), (false, true), (true, false), (false, false)]
        {
            let case = format!("registered {registered}, from the pool {from_pool}");
            let before = open_fds();
            let registry = registered.then(FileRegistry::default);
            let (buf, pool) = memfd_buffer(from_pool);
            let own = buf
                .peek_memory(0)
                .downcast_memory_ref::<gst_allocators::FdMemory>()
                .unwrap()
                .fd();
            // SAFETY: `buf` keeps the memory and its fd open.
            let own = unsafe { BorrowedFd::borrow_raw(own) };
            let mut descs = MemoryList::new();
            let mut sent_raw = None;
            for _frame in 0..3 {
                let mut fds = FdList::new();
                describe_buffer(&buf, registry.as_ref(), &mut descs, &mut fds).unwrap();
                assert_eq!(fds.len(), 1);
                let fd = fds[0];
                assert_ne!(
                    fd.as_raw_fd(),
                    own.as_raw_fd(),
                    "{case}: its own fd is sent"
                );
                let mode = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap());
                assert_eq!(mode & OFlag::O_ACCMODE, OFlag::O_RDONLY, "{case}");
                let refused = (Err(Errno::EACCES), Err(Errno::EBADF));
                assert_eq!(try_write(fd), refused, "{case}");
                assert_eq!(
                    fdlink::fdkind::file_identity(fd),
                    fdlink::fdkind::file_identity(own),
                    "{case}: another file"
                );
                let first = *sent_raw.get_or_insert(fd.as_raw_fd());
                assert_eq!(first, fd.as_raw_fd(), "{case}: reopened per frame");
            }
            drop(buf);
            if let Some(pool) = pool {
                pool.set_active(false).unwrap();
            }
            assert_eq!(
                open_fds(),
                before,
                "{case}: the read-only fd outlives its memory"
            );
        }
    }

    /// fdlink's pool seals its memfds against new writable mappings and writes once it has
    /// mapped them itself: the producer writes on, a consumer that reopens the file read-write
    /// through /proc still cannot.
    #[test]
    fn pool_memfds_refuse_writes_but_through_the_pools_own_mapping() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let pool = pool(8192);
        let mut buf = pool.acquire_buffer(None).unwrap();
        buf.get_mut()
            .unwrap()
            .map_writable()
            .unwrap()
            .as_mut_slice()[..5]
            .copy_from_slice(b"hello");
        let own = buf
            .peek_memory(0)
            .downcast_memory_ref::<gst_allocators::FdMemory>()
            .unwrap()
            .fd();
        // SAFETY: `buf` keeps the memory and its fd open.
        let own = unsafe { BorrowedFd::borrow_raw(own) };
        let rw = nix::fcntl::open(
            format!("/proc/self/fd/{}", own.as_raw_fd()).as_str(),
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        assert_eq!(
            try_write(rw.as_fd()),
            (Err(Errno::EPERM), Err(Errno::EPERM))
        );
        let mut got = [0u8; 5];
        nix::sys::uio::pread(&rw, &mut got, 0).unwrap();
        assert_eq!(&got, b"hello");
    }
}
