//! A buffer pool whose buffers live in sealed memfds, so they cross processes as fds, and the
//! memfd allocator beneath it.
//!
//! fdlinksink offers both to upstream in the ALLOCATION query: the pool for raw video
//! (videotestsrc and software decoders then write straight into shareable memory), the
//! allocator for any caps (audio sources, encoders and parsers allocate with it), and uses the
//! pool for the one copy of the system-memory fallback. At GStreamer 1.22 there is no
//! GstShmAllocator, so these are ours.
//!
//! A copy of the allocator's memory (`gst_memory_copy`) is a memfd of it too: GstVideoDecoder
//! copies each frame libav still holds mapped as a reference (avdec_* with direct rendering),
//! and that one copy then lands in shareable memory, not in system memory that fdlinksink would
//! copy again.

use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_video::prelude::*;
use std::sync::LazyLock;

use gst::glib;

mod allocator;

use allocator::MemfdAllocator;

pub(crate) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "fdlinkmemfdpool",
        gst::DebugColorFlags::empty(),
        Some("fdlink memfd buffer pool"),
    )
});

glib::wrapper! {
    /// Buffer pool of sealed memfd-backed buffers, with optional GstVideoMeta.
    pub struct MemfdBufferPool(ObjectSubclass<imp::MemfdBufferPool>)
        @extends gst::BufferPool, gst::Object;
}

impl MemfdBufferPool {
    pub fn new() -> Self {
        glib::Object::new()
    }

    /// A pool for `caps` (video or not) of `min..=max` buffers (max 0 = unlimited), active.
    pub fn new_configured(
        caps: &gst::Caps,
        size: u32,
        min: u32,
        max: u32,
        video_meta: bool,
    ) -> Result<Self, glib::BoolError> {
        let pool = Self::new();
        let mut config = pool.config();
        config.set_params(Some(caps), size, min, max);
        if video_meta {
            config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str());
        }
        pool.set_config(config)?;
        pool.set_active(true)?;
        Ok(pool)
    }

    /// A memfd allocator of its own for upstream to allocate with (`gst_buffer_new_allocate`):
    /// memories of any size in sealed memfds, recycled as they are freed.
    pub fn upstream_allocator() -> gst::Allocator {
        glib::Object::new::<MemfdAllocator>().upcast()
    }
}

impl Default for MemfdBufferPool {
    fn default() -> Self {
        Self::new()
    }
}

mod imp {
    use super::*;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::{Condvar, Mutex};

    #[derive(Debug, Default)]
    struct Config {
        size: usize,
        video_info: Option<gst_video::VideoInfo>,
        add_video_meta: bool,
        /// Padding asked for with GST_BUFFER_POOL_OPTION_VIDEO_ALIGNMENT (software decoders such
        /// as avdec_* render straight into the pool only when it is supported).
        alignment: Option<gst_video::VideoAlignment>,
    }

    pub struct MemfdBufferPool {
        config: Mutex<Config>,
        /// Its memories' allocator, which also keeps them when buffers are freed.
        allocator: super::MemfdAllocator,
        /// Buffers back in the pool, the most recently released last: acquire takes that one,
        /// whose pages are still in the CPU's caches. GstBufferPool's own queue is first in,
        /// first out, so every buffer of the pool comes round in turn and a frame is written
        /// into memory that left the caches long ago (at 1080p, nine pool buffers cost the
        /// producer ~60 % more CPU per frame than three did).
        idle: Mutex<Idle>,
        /// Signalled when a buffer comes back or the pool starts flushing.
        returned: Condvar,
    }

    #[derive(Default)]
    struct Idle {
        buffers: Vec<gst::Buffer>,
        /// Threads waiting on `returned`: a release signals only if there are any (a notify
        /// is a futex call, and a release happens once per frame).
        waiters: usize,
    }

    impl Default for MemfdBufferPool {
        fn default() -> Self {
            MemfdBufferPool {
                config: Mutex::new(Config::default()),
                allocator: glib::Object::new(),
                idle: Mutex::new(Idle::default()),
                returned: Condvar::new(),
            }
        }
    }

    impl MemfdBufferPool {
        fn is_flushing(&self) -> bool {
            let pool = self.obj();
            let raw = pool.upcast_ref::<gst::BufferPool>().as_ptr();
            // SAFETY: `flushing` is a public field of the live GstBufferPool, which GStreamer
            // reads and writes with g_atomic_int_*: an aligned i32 accessed atomically.
            unsafe { AtomicI32::from_ptr(std::ptr::addr_of_mut!((*raw).flushing)) }
                .load(Ordering::Acquire)
                != 0
        }

        fn lock_idle(&self) -> std::sync::MutexGuard<'_, Idle> {
            self.idle.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for MemfdBufferPool {
        const NAME: &'static str = "GstFdlinkMemfdBufferPool";
        type Type = super::MemfdBufferPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for MemfdBufferPool {}
    impl GstObjectImpl for MemfdBufferPool {}

    impl BufferPoolImpl for MemfdBufferPool {
        /// Last released, first acquired (see `idle`); below the pool's max, GstBufferPool
        /// allocates a new buffer as usual; at it, waits for a release unless DONTWAIT.
        fn acquire_buffer(
            &self,
            params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let dont_wait = gst::BufferPoolAcquireFlags::DONTWAIT;
            let may_wait = !params.is_some_and(|p| p.flags().contains(dont_wait));
            // The base class must not wait itself: releases come to `idle`, not to its queue,
            // so only its allocation (with its count against max) is asked of it.
            let mut alloc_params = params.copied().unwrap_or_default();
            alloc_params.set_flags(alloc_params.flags() | dont_wait);
            loop {
                {
                    let mut idle = self.lock_idle();
                    if self.is_flushing() {
                        return Err(gst::FlowError::Flushing);
                    }
                    if let Some(buffer) = idle.buffers.pop() {
                        return Ok(buffer);
                    }
                }
                match self.parent_acquire_buffer(Some(&alloc_params)) {
                    Err(gst::FlowError::Eos) if may_wait => {
                        let mut idle = self.lock_idle();
                        while idle.buffers.is_empty() && !self.is_flushing() {
                            idle.waiters += 1;
                            idle = self.returned.wait(idle).unwrap_or_else(|e| e.into_inner());
                            idle.waiters -= 1;
                        }
                    }
                    other => return other,
                }
            }
        }

        /// Back on the idle stack if fit for reuse; what GstBufferPool would free (memory
        /// replaced or shared, size changed) goes to the base class, which frees it.
        fn release_buffer(&self, buffer: gst::Buffer) {
            let size = self.config.lock().unwrap().size;
            let fit = !buffer.flags().contains(gst::BufferFlags::TAG_MEMORY)
                && buffer.size() == size
                && buffer.is_all_memory_writable();
            if !fit {
                gst::debug!(CAT, imp = self, "freeing released buffer unfit for reuse");
                self.parent_release_buffer(buffer);
                return;
            }
            let mut idle = self.lock_idle();
            idle.buffers.push(buffer);
            let waiting = idle.waiters > 0;
            drop(idle);
            if waiting {
                self.returned.notify_one();
            }
        }

        fn flush_start(&self) {
            // Under the lock, so a waiter between its check and its wait sees it.
            drop(self.lock_idle());
            self.returned.notify_all();
            self.parent_flush_start();
        }

        /// GstBufferPool frees the buffers in its own queue when it stops: hand it ours.
        fn stop(&self) -> bool {
            let idle = std::mem::take(&mut self.lock_idle().buffers);
            for buffer in idle {
                self.parent_release_buffer(buffer);
            }
            let stopped = self.parent_stop();
            // The freed buffers' memories went to the allocator to be kept: close them now.
            self.allocator.imp().drain();
            stopped
        }

        fn options() -> &'static [&'static str] {
            static OPTIONS: LazyLock<[&'static str; 2]> = LazyLock::new(|| {
                [
                    gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str(),
                    gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT.as_str(),
                ]
            });
            OPTIONS.as_slice()
        }

        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let Some((Some(caps), size, min, max)) = config.params() else {
                gst::warning!(CAT, imp = self, "config without caps");
                return false;
            };
            let mut video_info = gst_video::VideoInfo::from_caps(&caps).ok();
            let mut alignment = None;
            if let Some(info) = &mut video_info
                && config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT.as_str())
                && let Some(mut align) = config.video_alignment()
            {
                if info.align(&mut align).is_err() {
                    gst::warning!(CAT, imp = self, "cannot apply video alignment {align:?}");
                    return false;
                }
                config.set_video_alignment(&align);
                alignment = Some(align);
            }
            let size = video_info
                .as_ref()
                .map_or(size as usize, |info| info.size().max(size as usize));
            if size == 0 {
                gst::warning!(CAT, imp = self, "config with buffer size 0");
                return false;
            }
            let add_video_meta =
                config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str());
            config.set_params(Some(&caps), size as u32, min, max);
            gst::debug!(
                CAT,
                imp = self,
                "size {size}, buffers {min}..{max}, video meta {add_video_meta}, caps {caps}"
            );
            *self.config.lock().unwrap() = Config {
                size,
                video_info,
                add_video_meta,
                alignment,
            };
            self.parent_set_config(config)
        }

        fn alloc_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let (size, info, add_meta, alignment) = {
                let c = self.config.lock().unwrap();
                (c.size, c.video_info.clone(), c.add_video_meta, c.alignment)
            };
            let mem = self.allocator.alloc(size, None).map_err(|e| {
                gst::error!(CAT, imp = self, "cannot allocate a {size}-byte memfd: {e}");
                gst::FlowError::Error
            })?;
            let mut buffer = gst::Buffer::new();
            {
                let b = buffer.get_mut().unwrap();
                b.append_memory(mem);
                if let (true, Some(info)) = (add_meta, info) {
                    let mut meta = gst_video::VideoMeta::add_full(
                        b,
                        gst_video::VideoFrameFlags::empty(),
                        info.format(),
                        info.width(),
                        info.height(),
                        info.offset(),
                        info.stride(),
                    )
                    .map_err(|e| {
                        gst::error!(CAT, imp = self, "cannot add video meta: {e}");
                        gst::FlowError::Error
                    })?;
                    if let Some(align) = alignment {
                        let _ = meta.set_alignment(&align);
                    }
                }
            }
            Ok(buffer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{fd_lock, open_fds};

    /// Fds per pool buffer: its memfd and the read-only one for consumers.
    const FDS: usize = 2;

    fn bytes_pool(size: u32, min: u32, max: u32) -> MemfdBufferPool {
        let caps = gst::Caps::new_empty_simple("application/x-test");
        MemfdBufferPool::new_configured(&caps, size, min, max, false).unwrap()
    }

    #[test]
    fn the_buffer_released_last_is_acquired_first() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let before = open_fds();
        let pool = bytes_pool(4096, 3, 0);
        // The pool's own fds (GstBufferPool's wake-up pair), without its buffers.
        pool.set_active(false).unwrap();
        let idle_pool = open_fds();
        pool.set_active(true).unwrap();
        assert_eq!(
            open_fds(),
            idle_pool + 3 * FDS,
            "the pool's minimum, allocated at start"
        );
        let [a, b, c] = [(); 3].map(|_| pool.acquire_buffer(None).unwrap());
        let (pa, pb, pc) = (a.as_ptr(), b.as_ptr(), c.as_ptr());
        drop(b);
        drop(a);
        drop(c);
        let order = [(); 3].map(|_| pool.acquire_buffer(None).unwrap());
        assert_eq!(order.each_ref().map(|b| b.as_ptr()), [pc, pa, pb]);
        assert_eq!(
            open_fds(),
            idle_pool + 3 * FDS,
            "no buffer allocated beyond the three"
        );
        // Deactivated while buffers are out: they are freed as they come back.
        pool.set_active(false).unwrap();
        drop(order);
        assert_eq!(open_fds(), idle_pool, "stopping frees every buffer");
        pool.set_active(true).unwrap();
        assert_eq!(open_fds(), idle_pool + 3 * FDS);
        drop(pool);
        assert_eq!(
            open_fds(),
            before,
            "a pool dropped while active frees its buffers"
        );
    }

    #[test]
    fn at_its_max_the_pool_waits_for_a_release_or_a_flush() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let pool = bytes_pool(4096, 0, 1);
        let held = pool.acquire_buffer(None).unwrap();
        let held_ptr = held.as_ptr() as usize;
        let dont_wait =
            gst::BufferPoolAcquireParams::with_flags(gst::BufferPoolAcquireFlags::DONTWAIT);
        assert_eq!(
            pool.acquire_buffer(Some(&dont_wait)).unwrap_err(),
            gst::FlowError::Eos
        );

        let waiting = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.acquire_buffer(None).map(|b| b.as_ptr() as usize))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiting.is_finished(), "acquire returned at the pool's max");
        drop(held);
        assert_eq!(waiting.join().unwrap(), Ok(held_ptr), "the released buffer");

        let held = pool.acquire_buffer(None).unwrap();
        let waiting = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.acquire_buffer(None).map(|b| b.as_ptr() as usize))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiting.is_finished());
        pool.set_flushing(true);
        assert_eq!(waiting.join().unwrap(), Err(gst::FlowError::Flushing));
        pool.set_flushing(false);
        drop(held);
        assert!(pool.acquire_buffer(None).is_ok());
    }

    /// The fd of a buffer's only memory, a memfd of the pool's allocator.
    fn memfd_of(b: &gst::BufferRef) -> i32 {
        let mem = b.peek_memory(0);
        assert!(mem.allocator().unwrap().is::<MemfdAllocator>());
        mem.downcast_memory_ref::<gst_allocators::FdMemory>()
            .expect("fd memory")
            .fd()
    }

    #[test]
    fn released_buffers_unfit_for_reuse_are_freed_and_their_memfds_reused() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let pool = bytes_pool(4096, 1, 0);
        pool.set_active(false).unwrap();
        let idle_pool = open_fds();
        pool.set_active(true).unwrap();
        let mut b = pool.acquire_buffer(None).unwrap();
        let fd = memfd_of(&b);
        // Memory swapped for other memory: GstBufferPool tags the buffer and frees it.
        b.get_mut()
            .unwrap()
            .replace_all_memory(gst::Memory::with_size(4096));
        drop(b);
        assert_eq!(
            open_fds(),
            idle_pool + FDS,
            "its memfd kept by the allocator"
        );
        let fresh = pool.acquire_buffer(None).unwrap();
        assert_eq!(memfd_of(&fresh), fd, "the kept memfd in the new buffer");
        assert_eq!(open_fds(), idle_pool + FDS);
        drop(fresh);
        pool.set_active(false).unwrap();
        assert_eq!(open_fds(), idle_pool, "stopping closes the kept memfds");
    }

    /// GstVideoDecoder makes a frame writable while libav, keeping it as a reference, holds
    /// it mapped for writing (avdec_* with direct rendering): GStreamer copies the memory, and
    /// the copy is a memfd of the same allocator, not system memory.
    #[test]
    fn a_memory_copy_is_a_memfd_too() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let before = open_fds();
        let pool = bytes_pool(4096, 1, 0);
        let mut frame = pool.acquire_buffer(None).unwrap();
        frame
            .get_mut()
            .unwrap()
            .map_writable()
            .unwrap()
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8);
        let original = memfd_of(&frame);
        // The decoder's mapping, as libav's reference holds it.
        let mut map = std::mem::MaybeUninit::uninit();
        // SAFETY: `frame` is a live buffer, unmapped below before it is dropped.
        let mapped = unsafe {
            gst::ffi::gst_buffer_map(
                frame.as_mut_ptr(),
                map.as_mut_ptr(),
                gst::ffi::GST_MAP_READWRITE,
            )
        };
        assert_ne!(mapped, glib::ffi::GFALSE);
        let mut pushed = frame.clone();
        pushed.make_mut();
        assert_ne!(memfd_of(&pushed), original, "copied");
        let bytes = pushed.map_readable().unwrap().to_vec();
        assert!(bytes.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        // SAFETY: mapped above.
        unsafe { gst::ffi::gst_buffer_unmap(frame.as_mut_ptr(), map.as_mut_ptr()) };
        drop((frame, pushed, pool));
        assert_eq!(open_fds(), before);
    }

    /// With GST_BUFFER_POOL_OPTION_VIDEO_ALIGNMENT (what avdec_* asks for), frames are laid out
    /// exactly as GstVideoBufferPool lays them out, or decoders refuse the pool.
    #[test]
    fn alignment_matches_video_buffer_pool() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("width", 630)
            .field("height", 470)
            .field("framerate", gst::Fraction::new(30, 1))
            .build();
        let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
        let layout = |pool: gst::BufferPool| {
            let mut c = pool.config();
            c.set_params(Some(&caps), info.size() as u32, 2, 0);
            c.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str());
            c.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT.as_str());
            c.set_video_alignment(&gst_video::VideoAlignment::new(
                2,
                5,
                8,
                3,
                &[63, 63, 63, 63],
            ));
            pool.set_config(c).unwrap();
            assert!(pool.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT.as_str()));
            pool.set_active(true).unwrap();
            let b = pool.acquire_buffer(None).unwrap();
            let m = b.meta::<gst_video::VideoMeta>().unwrap();
            (b.size(), m.offset().to_vec(), m.stride().to_vec())
        };
        let ours = layout(MemfdBufferPool::new().upcast());
        let reference = layout(gst_video::VideoBufferPool::new().upcast());
        assert_eq!(ours, reference);
        assert!(
            ours.2.iter().all(|s| s % 64 == 0),
            "strides not aligned: {ours:?}"
        );
    }
}
