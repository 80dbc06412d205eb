//! A source whose frames the CPU writes once per pool buffer, not once per frame (see the
//! crate docs).

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

pub const NAME: &str = "harnessprefilledsrc";

glib::wrapper! {
    pub struct PrefilledSrc(ObjectSubclass<imp::PrefilledSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register() {
    gst::Element::register(None, NAME, gst::Rank::NONE, PrefilledSrc::static_type())
        .expect("register the prefilled source");
}

mod imp {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    #[derive(Default)]
    struct State {
        /// The memories written so far (pool buffers keep theirs from frame to frame).
        written: HashSet<usize>,
        frame: u64,
        duration: Option<gst::ClockTime>,
    }

    #[derive(Default)]
    pub struct PrefilledSrc {
        state: Mutex<State>,
    }

    impl PrefilledSrc {
        /// Writes every byte of `buffer` if the source has not written its memory before.
        fn write_once(&self, buffer: &mut gst::BufferRef) -> Result<(), gst::FlowError> {
            let first_use = {
                let mut st = self.state.lock().unwrap();
                (0..buffer.n_memory())
                    .any(|i| st.written.insert(buffer.peek_memory(i).as_ptr() as usize))
            };
            if first_use {
                // Real pages, so that a copying transport reads memory, not the zero page.
                let mut map = buffer.map_writable().map_err(|_| gst::FlowError::Error)?;
                map.as_mut_slice().fill(0x80);
            }
            Ok(())
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for PrefilledSrc {
        const NAME: &'static str = "FdlinkHarnessPrefilledSrc";
        type Type = super::PrefilledSrc;
        type ParentType = gst_base::PushSrc;
    }

    impl ObjectImpl for PrefilledSrc {
        fn constructed(&self) {
            self.parent_constructed();
            self.obj().set_format(gst::Format::Time);
        }
    }

    impl GstObjectImpl for PrefilledSrc {}

    impl ElementImpl for PrefilledSrc {
        fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
            static META: std::sync::LazyLock<gst::subclass::ElementMetadata> =
                std::sync::LazyLock::new(|| {
                    gst::subclass::ElementMetadata::new(
                        "Prefilled frames",
                        "Source/Video",
                        "Frames from the negotiated pool, each buffer written once",
                        "fdlink",
                    )
                });
            Some(&META)
        }

        fn pad_templates() -> &'static [gst::PadTemplate] {
            static TEMPLATES: std::sync::LazyLock<Vec<gst::PadTemplate>> =
                std::sync::LazyLock::new(|| {
                    vec![
                        gst::PadTemplate::new(
                            "src",
                            gst::PadDirection::Src,
                            gst::PadPresence::Always,
                            &gst::Caps::new_empty_simple("video/x-raw"),
                        )
                        .unwrap(),
                    ]
                });
            TEMPLATES.as_ref()
        }
    }

    impl BaseSrcImpl for PrefilledSrc {
        /// As videotestsrc decides: downstream's pool (the first proposed) or a video
        /// buffer pool of its own, with VideoMeta where downstream takes it.
        fn decide_allocation(
            &self,
            query: &mut gst::query::Allocation,
        ) -> Result<(), gst::LoggableError> {
            let caps = query
                .get_owned()
                .0
                .ok_or_else(|| gst::loggable_error!(gst::CAT_RUST, "allocation without caps"))?;
            let info = gst_video::VideoInfo::from_caps(&caps)
                .map_err(|_| gst::loggable_error!(gst::CAT_RUST, "not video: {caps}"))?;
            let proposed = query.allocation_pools().next();
            let (pool, size, min, max) = match proposed {
                Some((Some(pool), size, min, max)) => {
                    (pool, size.max(info.size() as u32), min, max)
                }
                Some((None, size, min, max)) => (
                    gst_video::VideoBufferPool::new().upcast(),
                    size.max(info.size() as u32),
                    min,
                    max,
                ),
                None => (
                    gst_video::VideoBufferPool::new().upcast(),
                    info.size() as u32,
                    0,
                    0,
                ),
            };
            let mut config = pool.config();
            config.set_params(Some(&caps), size, min, max);
            // The allocator downstream asks for (unixfdsink's shm allocator), as BaseSrc
            // and videotestsrc take it.
            if let Some((allocator, params)) = query.allocation_params().next() {
                config.set_allocator(allocator.as_ref(), Some(&params));
            }
            if query
                .find_allocation_meta::<gst_video::VideoMeta>()
                .is_some()
            {
                config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str());
            }
            pool.set_config(config)
                .map_err(|e| gst::loggable_error!(gst::CAT_RUST, "pool config: {e}"))?;
            if query.allocation_pools().len() == 0 {
                query.add_allocation_pool(Some(&pool), size, min, max);
            } else {
                query.set_nth_allocation_pool(0, Some(&pool), size, min, max);
            }
            // The pool's first buffers written now, while the producer prerolls and
            // before anything is measured; buffers the pool adds later are written at
            // their first use.
            if min > 0 {
                pool.set_active(true)
                    .map_err(|e| gst::loggable_error!(gst::CAT_RUST, "pool: {e}"))?;
                let dont_wait =
                    gst::BufferPoolAcquireParams::with_flags(gst::BufferPoolAcquireFlags::DONTWAIT);
                let mut held = Vec::new();
                while held.len() < min as usize {
                    let Ok(mut buffer) = pool.acquire_buffer(Some(&dont_wait)) else {
                        break;
                    };
                    self.write_once(buffer.get_mut().unwrap())
                        .map_err(|e| gst::loggable_error!(gst::CAT_RUST, "fill: {e:?}"))?;
                    held.push(buffer);
                }
            }
            Ok(())
        }

        /// Live (the harness sets it for rate= runs): BaseSrc waits for each frame's
        /// timestamp on the clock, so frames leave at the stream's rate, as from a camera.
        fn times(
            &self,
            buffer: &gst::BufferRef,
        ) -> (Option<gst::ClockTime>, Option<gst::ClockTime>) {
            if !self.obj().is_live() {
                return (None, None);
            }
            let start = buffer.pts();
            (start, start.zip(buffer.duration()).map(|(s, d)| s + d))
        }

        fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
            let info = gst_video::VideoInfo::from_caps(caps)
                .map_err(|_| gst::loggable_error!(gst::CAT_RUST, "not video: {caps}"))?;
            let fps = info.fps();
            let mut st = self.state.lock().unwrap();
            st.duration = (fps.numer() > 0).then(|| {
                gst::ClockTime::SECOND
                    .mul_div_floor(fps.denom() as u64, fps.numer() as u64)
                    .unwrap()
            });
            Ok(())
        }
    }

    impl PushSrcImpl for PrefilledSrc {
        fn create(
            &self,
            _buffer: Option<&mut gst::BufferRef>,
        ) -> Result<gst_base::subclass::base_src::CreateSuccess, gst::FlowError> {
            // BaseSrc's default allocation: from the pool it negotiated downstream.
            let pool = self
                .obj()
                .buffer_pool()
                .ok_or(gst::FlowError::NotNegotiated)?;
            let mut buffer = pool.acquire_buffer(None)?;
            let b = buffer.get_mut().ok_or(gst::FlowError::Error)?;
            self.write_once(b)?;
            let mut st = self.state.lock().unwrap();
            if let Some(d) = st.duration {
                b.set_pts(d * st.frame);
                b.set_duration(d);
            }
            st.frame += 1;
            Ok(gst_base::subclass::base_src::CreateSuccess::NewBuffer(
                buffer,
            ))
        }
    }
}
