//! The memfd allocator beneath fdlink's pool, which fdlinksink also proposes to upstream for
//! any caps: a GstFdAllocator that allocates, each memory a sealed memfd kept mapped, and that
//! keeps freed memories for reuse.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::CAT;
use fdlink::fdkind::{create_memfd_to_map, seal_future_writes};

glib::wrapper! {
    /// GstFdAllocator whose memories are sealed memfds it makes itself, kept mapped (see
    /// `imp`).
    pub struct MemfdAllocator(ObjectSubclass<imp::MemfdAllocator>)
        @extends gst_allocators::FdAllocator, gst::Allocator, gst::Object;
}

/// Freed memories kept for reuse by one allocator at most: in a stream memories are freed
/// and allocated in turn, so a few suffice; the rest are closed.
const MAX_IDLE_MEMORIES: usize = 16;

mod imp {
    use super::*;
    use gst_allocators::prelude::*;
    use gst_allocators::subclass::prelude::*;
    use std::os::fd::IntoRawFd;
    use std::ptr::NonNull;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use glib::translate::{IntoGlibPtr, from_glib_full};

    /// A freed memory kept for reuse, with a reference of its own but none on the allocator:
    /// idle memories must not keep their allocator alive, or neither would ever be freed.
    struct IdleMemory(NonNull<gst::ffi::GstMemory>);
    // SAFETY: a GstMemory is a thread-safe mini object; the idle list owns this reference.
    unsafe impl Send for IdleMemory {}

    #[derive(Default)]
    pub struct MemfdAllocator {
        idle: Mutex<Vec<IdleMemory>>,
        /// Set when the allocator goes: memories freed after that are closed, not kept.
        closed: AtomicBool,
        /// A new memory's flags, given back to a kept one when it is reused (whoever held it
        /// may have set some).
        fresh_flags: AtomicU32,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for MemfdAllocator {
        const NAME: &'static str = "GstFdlinkMemfdAllocator";
        type Type = super::MemfdAllocator;
        type ParentType = gst_allocators::FdAllocator;
    }

    impl ObjectImpl for MemfdAllocator {
        fn constructed(&self) {
            self.parent_constructed();
            let raw = self.obj().upcast_ref::<gst::Allocator>().as_ptr();
            // GstFdAllocator marks itself CUSTOM_ALLOC: it cannot alloc, so elements must not
            // take it from an ALLOCATION query, and GStreamer copies its memories into system
            // memory. This one allocates, so it clears the flag: elements allocate with it,
            // and a memory's copy (GstMemory's default mem_copy allocates it from the memory's
            // allocator) is a memfd too.
            // SAFETY: `raw` is this live allocator, not yet shared with another thread.
            unsafe { (*raw).object.flags &= !gst::ffi::GST_ALLOCATOR_FLAG_CUSTOM_ALLOC };
        }

        fn dispose(&self) {
            self.closed.store(true, Ordering::Release);
            self.drain();
        }
    }

    impl GstObjectImpl for MemfdAllocator {}

    // SAFETY: gstreamer-rs marks allocator subclasses unsafe; `alloc` returns memories of this
    // allocator made by its parent GstFdAllocator, sized and offset as the params ask, and the
    // parent's free is kept.
    unsafe impl AllocatorImpl for MemfdAllocator {
        /// A memory of `size` bytes in a sealed memfd (a freed one of about that size, or a
        /// new one), with params' prefix before it and padding after it, zeroed if asked, and
        /// its data aligned as asked.
        unsafe fn alloc(
            &self,
            size: usize,
            params: &gst::AllocationParams,
        ) -> *mut gst::ffi::GstMemory {
            let (prefix, padding, align) = (params.prefix(), params.padding(), params.align());
            // The mapping starts on a page, so the data (after the prefix) starts at the next
            // multiple of the alignment asked for (a mask: GStreamer's own are 7 to 63).
            let Some(offset) = prefix.checked_add(align).map(|n| n & !align) else {
                return std::ptr::null_mut();
            };
            let Some(total) = offset
                .checked_add(size)
                .and_then(|n| n.checked_add(padding))
            else {
                return std::ptr::null_mut();
            };
            let Some(mem) = self.take_idle(total).or_else(|| self.new_memory(total)) else {
                return std::ptr::null_mut();
            };
            let flags = params.flags();
            let zero_prefix = flags.contains(gst::MemoryFlags::ZERO_PREFIXED) && prefix > 0;
            let zero_padding = flags.contains(gst::MemoryFlags::ZERO_PADDED) && padding > 0;
            let raw = mem.into_glib_ptr();
            // SAFETY: `raw` is a memory of this allocator that nothing else references yet:
            // its window may be set, and its bytes written through its writable mapping.
            unsafe {
                (*raw).offset = 0;
                (*raw).size = total;
                if zero_prefix || zero_padding {
                    let mut info = std::mem::MaybeUninit::uninit();
                    if gst::ffi::gst_memory_map(raw, info.as_mut_ptr(), gst::ffi::GST_MAP_WRITE)
                        != glib::ffi::GFALSE
                    {
                        let mut info = info.assume_init();
                        if zero_prefix {
                            std::ptr::write_bytes(info.data.add(offset - prefix), 0, prefix);
                        }
                        if zero_padding {
                            std::ptr::write_bytes(info.data.add(offset + size), 0, padding);
                        }
                        gst::ffi::gst_memory_unmap(raw, &mut info);
                    }
                }
                (*raw).offset = offset;
                (*raw).size = size;
                (*raw).align = align;
            }
            raw
        }
    }

    impl FdAllocatorImpl for MemfdAllocator {}

    impl MemfdAllocator {
        /// A new memory of `maxsize` bytes: a memfd sealed against resizing, mapped writable
        /// and kept mapped (KEEP_MAPPED, so every later map of it is that mapping), then sealed
        /// against other writes, so a consumer cannot write into it even through a read-write
        /// reopening of its read-only fd, while upstream writes on.
        fn new_memory(&self, maxsize: usize) -> Option<gst::Memory> {
            let fd = create_memfd_to_map("fdlink-pool", maxsize)
                .inspect_err(|e| {
                    gst::error!(
                        CAT,
                        imp = self,
                        "cannot create memfd of {maxsize} bytes: {e}"
                    )
                })
                .ok()?;
            let raw = fd.into_raw_fd();
            // SAFETY: alloc_fd takes ownership of the fd released here; on failure the C side
            // did not store it, so it is closed here.
            let mut mem = unsafe {
                self.obj()
                    .alloc_fd(raw, maxsize, gst_allocators::FdMemoryFlags::KEEP_MAPPED)
            }
            .inspect_err(|e| {
                // SAFETY: allocation failed, so `raw` is still ours alone.
                drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
                gst::error!(CAT, imp = self, "FdAllocator failed: {e}");
            })
            .ok()?;
            if mem.get_mut().map(|m| m.map_writable().is_ok()) != Some(true) {
                gst::error!(
                    CAT,
                    imp = self,
                    "cannot map a new {maxsize}-byte memfd writable"
                );
                return None;
            }
            // SAFETY: `mem` owns `raw` and keeps it open for this borrow.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
            if let Err(e) = seal_future_writes(fd) {
                gst::warning!(
                    CAT,
                    imp = self,
                    "cannot seal memfd against writes ({e}; Linux 5.1 or later has \
                     F_SEAL_FUTURE_WRITE): a consumer can reopen its read-only fd read-write"
                );
            }
            // The consumers' read-only fd, made with the memory: fds stay as many while it
            // is reused.
            crate::memory::read_only::sent_fd(&mem, fd, fdlink::protocol::MemoryKind::Memfd);
            // SAFETY: `mem` is a root memory made just now, referenced only here; its dispose
            // function is free to set (GstMemory sets none).
            unsafe {
                let raw = mem.as_mut_ptr();
                (*raw).mini_object.dispose = Some(recycle);
                self.fresh_flags
                    .store((*raw).mini_object.flags, Ordering::Relaxed);
            }
            Some(mem)
        }

        /// A freed memory of `total` to twice `total` bytes, if one is kept.
        fn take_idle(&self, total: usize) -> Option<gst::Memory> {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let fits = |m: &IdleMemory| {
                // SAFETY: the idle list holds a reference on each of its memories.
                let maxsize = unsafe { m.0.as_ref().maxsize };
                maxsize >= total && maxsize / 2 <= total
            };
            let at = idle.iter().rposition(fits)?;
            let IdleMemory(mem) = idle.swap_remove(at);
            drop(idle);
            let raw = mem.as_ptr();
            // SAFETY: the idle list's reference on the memory passes to the returned Memory;
            // the memory gets back the reference on this allocator it gave up when kept (the
            // caller of alloc holds one, so the allocator is alive).
            unsafe {
                gst::ffi::gst_object_ref((*raw).allocator as *mut gst::ffi::GstObject);
                (*raw).mini_object.flags = self.fresh_flags.load(Ordering::Relaxed);
                Some(from_glib_full(raw))
            }
        }

        /// Keeps freed memory `mem` for reuse, unless the allocator is going or keeps enough.
        ///
        /// # Safety
        /// `mem` is a root memory of this allocator being disposed (refcount 0, unlocked).
        unsafe fn keep(&self, mem: *mut gst::ffi::GstMemory) -> bool {
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() >= MAX_IDLE_MEMORIES {
                return false;
            }
            // SAFETY: resurrecting a memory in its dispose function is how a mini object is
            // recycled; the reference is the idle list's.
            unsafe {
                gst::ffi::gst_mini_object_ref(mem as *mut gst::ffi::GstMiniObject);
                idle.push(IdleMemory(NonNull::new_unchecked(mem)));
                drop(idle);
                // The idle memory lets go of its allocator (see IdleMemory); this may be the
                // last reference, and dispose then frees the memory again.
                gst::ffi::gst_object_unref((*mem).allocator as *mut gst::ffi::GstObject);
            }
            true
        }

        /// Frees the memories kept for reuse.
        pub(crate) fn drain(&self) {
            let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
            let allocator = self.obj();
            for IdleMemory(mem) in idle {
                let raw = mem.as_ptr();
                // SAFETY: the idle list's reference is the last one; the memory gets back its
                // reference on this allocator (alive: `allocator` holds one), which freeing it
                // drops, and no dispose function, so it is freed now.
                unsafe {
                    gst::ffi::gst_object_ref(allocator.upcast_ref::<gst::Object>().as_ptr());
                    (*raw).mini_object.dispose = None;
                    gst::ffi::gst_mini_object_unref(raw as *mut gst::ffi::GstMiniObject);
                }
            }
        }
    }

    /// GstMemory's dispose function for this allocator's memories: keep the memory for reuse
    /// (FALSE: not freed) or let it be freed.
    unsafe extern "C" fn recycle(obj: *mut gst::ffi::GstMiniObject) -> glib::ffi::gboolean {
        let mem = obj as *mut gst::ffi::GstMemory;
        // SAFETY: only memories made by `new_memory` have this dispose function: root memories
        // whose allocator is a MemfdAllocator, alive while the memory holds its reference.
        unsafe {
            let unlocked = (*obj).lockstate == 0;
            let allocator =
                &*((*mem).allocator as *mut <MemfdAllocator as ObjectSubclass>::Instance);
            if unlocked && (*mem).parent.is_null() && allocator.imp().keep(mem) {
                glib::ffi::GFALSE
            } else {
                glib::ffi::GTRUE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemfdBufferPool;
    use crate::test_support::{fd_lock, open_fds};

    /// Fds per memory: its memfd and the read-only one for consumers.
    const FDS: usize = 2;

    #[test]
    fn the_allocator_reuses_freed_memfds_and_closes_them_when_it_goes() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let before = open_fds();
        let allocator = MemfdBufferPool::upstream_allocator();
        // SAFETY: reads the flags of a live allocator (object_flags() drops the
        // allocator-specific ones).
        let flags = unsafe { (*allocator.as_ptr()).object.flags };
        assert_eq!(
            flags & gst::ffi::GST_ALLOCATOR_FLAG_CUSTOM_ALLOC,
            0,
            "GStreamer copies a CUSTOM_ALLOC allocator's memory into system memory"
        );
        let params = gst::AllocationParams::new(
            gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED,
            63,
            16,
            32,
        );
        let fd_of = |m: &gst::Memory| {
            m.downcast_memory_ref::<gst_allocators::FdMemory>()
                .expect("fd memory")
                .fd()
        };
        let mems: Vec<gst::Memory> = (0..3)
            .map(|_| allocator.alloc(10_000, Some(&params)).unwrap())
            .collect();
        for m in &mems {
            // The 16-byte prefix before data aligned on 64 bytes, the padding after it.
            assert_eq!((m.offset(), m.size(), m.maxsize()), (64, 10_000, 10_096));
            assert_eq!(m.map_readable().unwrap().as_ptr() as usize % 64, 0);
            // SAFETY: the memory owns the fd for this borrow.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd_of(m)) };
            assert!(fdlink::fdkind::is_sealed_against_shrink(fd));
        }
        assert_eq!(open_fds(), before + 3 * FDS);
        let mut mems = mems.into_iter();
        let first = mems.next().unwrap();
        let fd = fd_of(&first);
        // Dirty it, prefix and padding included, to see them zeroed when it is reused.
        let whole = |mut m: gst::Memory| {
            // SAFETY: `m` is referenced only here; the window covers its whole file.
            unsafe {
                (*m.get_mut().unwrap().as_mut_ptr()).offset = 0;
                (*m.get_mut().unwrap().as_mut_ptr()).size = 10_096;
            }
            m
        };
        let mut first = whole(first);
        first.get_mut().unwrap().map_writable().unwrap().fill(0xa5);
        drop(first);
        assert_eq!(open_fds(), before + 3 * FDS, "a freed memfd is kept");
        let again = whole(allocator.alloc(10_000, Some(&params)).unwrap());
        assert_eq!(fd_of(&again), fd, "and reused for the same size");
        let bytes = again.map_readable().unwrap().to_vec();
        assert!(bytes[48..64].iter().all(|&b| b == 0), "prefix zeroed");
        assert!(bytes[10_064..].iter().all(|&b| b == 0), "padding zeroed");
        assert!(bytes[64..10_064].iter().all(|&b| b == 0xa5), "payload not");
        let small = allocator.alloc(100, None).unwrap();
        assert_ne!(fd_of(&small), fd, "far smaller: a memfd of its own");
        assert_eq!(open_fds(), before + 4 * FDS);
        // The allocator goes first: its memories keep it, and it keeps those freed meanwhile,
        // until the last is freed.
        drop(allocator);
        drop(small);
        assert_eq!(open_fds(), before + 4 * FDS);
        drop(again);
        drop(mems);
        assert_eq!(open_fds(), before, "every memfd closed");
    }
}
