//! A buffer pool whose buffers live in sealed memfds, so they cross processes as fds.
//!
//! fdlinksink offers it to upstream in the ALLOCATION query (videotestsrc and software decoders
//! then write straight into shareable memory) and uses it for the one copy of the system-memory
//! fallback. At GStreamer 1.22 there is no GstShmAllocator, so this pool is ours.

use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_video::prelude::*;
use std::sync::LazyLock;

use super::create_sealed_memfd;

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
}

impl Default for MemfdBufferPool {
    fn default() -> Self {
        Self::new()
    }
}

mod imp {
    use super::*;
    use gst_allocators::prelude::*;
    use std::os::fd::IntoRawFd;
    use std::sync::Mutex;

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
        allocator: gst_allocators::FdAllocator,
    }

    impl Default for MemfdBufferPool {
        fn default() -> Self {
            MemfdBufferPool {
                config: Mutex::new(Config::default()),
                allocator: gst_allocators::FdAllocator::new(),
            }
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
            let fd = create_sealed_memfd("fdlink-pool", size).map_err(|e| {
                gst::error!(CAT, imp = self, "cannot create memfd of {size} bytes: {e}");
                gst::FlowError::Error
            })?;
            // SAFETY: alloc_fd takes ownership of the fd we release here; on failure the C
            // side did not store it, so we close it ourselves.
            let raw = fd.into_raw_fd();
            let mem = unsafe {
                self.allocator
                    .alloc_fd(raw, size, gst_allocators::FdMemoryFlags::KEEP_MAPPED)
            }
            .map_err(|e| {
                // SAFETY: allocation failed, so `raw` is still ours alone.
                drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
                gst::error!(CAT, imp = self, "FdAllocator failed: {e}");
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

    /// With GST_BUFFER_POOL_OPTION_VIDEO_ALIGNMENT (what avdec_* asks for), frames are laid out
    /// exactly as GstVideoBufferPool lays them out, or decoders refuse the pool.
    #[test]
    fn alignment_matches_video_buffer_pool() {
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
