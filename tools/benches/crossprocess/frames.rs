//! The frames the producer pushes: the paths (memfd, dmabuf, copy, raw), the sizes, the pools.

use std::os::fd::{AsFd, OwnedFd};

use fdlink::protocol::{BufferHeader, MemoryDesc, MemoryKind};
use fdlink::protocol::{Packet, VideoLayout};
use gst::glib;
use gst::prelude::*;
use gstfdlink::clock::monotonic_now;

use crate::dmabuf_sources;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Kind {
    Raw,
    /// The raw baseline through io_uring (benches/crossprocess/uring.rs).
    RawUring,
    Memfd,
    /// The memfd path with `register-fds=false`: every buffer packet carries its fd (what
    /// register-once fds save is this row minus the memfd row).
    MemfdFdEachFrame,
    DmabufStandin,
    /// Real kernel dmabufs from the dma-heap system heap (`/dev/dma_heap/system`).
    DmabufHeap,
    /// Real kernel dmabufs from udmabuf (`/dev/udmabuf`, pages of a sealed memfd).
    Udmabuf,
    Copy,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Raw => "raw-scm-rights",
            Kind::RawUring => "raw-io-uring",
            Kind::Memfd => "memfd",
            Kind::MemfdFdEachFrame => "memfd-fd-each-frame",
            Kind::DmabufStandin => "dmabuf-standin",
            Kind::DmabufHeap => "dmabuf-heap",
            Kind::Udmabuf => "dmabuf-udmabuf",
            Kind::Copy => "copy",
        }
    }

    /// The kernel exporter of a real dmabuf path.
    fn exporter(self) -> Option<dmabuf_sources::Source> {
        match self {
            Kind::DmabufHeap => Some(dmabuf_sources::Source::DmaHeap),
            Kind::Udmabuf => Some(dmabuf_sources::Source::Udmabuf),
            _ => None,
        }
    }

    /// Whether this machine can run the path: the real dmabuf paths need their exporter's
    /// device node (the project's test VM has both; this development host has neither).
    pub(crate) fn runs_here(self) -> bool {
        self.exporter()
            .is_none_or(|e| dmabuf_sources::Allocator::open(e).is_ok())
    }
}

pub(crate) const SIZES: [(&str, u32, u32); 4] = [
    ("480p", 640, 480),
    ("1080p", 1920, 1080),
    ("4K", 3840, 2160),
    ("8K", 7680, 4320),
];

pub(crate) fn nv12_caps(w: u32, h: u32) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "NV12")
        .field("width", w as i32)
        .field("height", h as i32)
        .field("framerate", gst::Fraction::new(30, 1))
        .build()
}

fn add_video_meta(b: &mut gst::BufferRef, info: &gst_video::VideoInfo) {
    gst_video::VideoMeta::add_full(
        b,
        gst_video::VideoFrameFlags::empty(),
        info.format(),
        info.width(),
        info.height(),
        info.offset(),
        info.stride(),
    )
    .expect("video meta");
}

/// The buffer packet fdlinksink sends for one frame of `info` (for the raw baseline's size).
pub(crate) fn buffer_packet(info: &gst_video::VideoInfo, frame: &OwnedFd) -> Vec<u8> {
    use glib::translate::IntoGlib;
    let mut offsets = [0u64; 4];
    let mut strides = [0i32; 4];
    for i in 0..info.n_planes() as usize {
        offsets[i] = info.offset()[i] as u64;
        strides[i] = info.stride()[i];
    }
    let header = BufferHeader {
        buffer_id: 1,
        pts: monotonic_now(),
        dts: u64::MAX,
        duration: 33_333_333,
        offset: 0,
        offset_end: u64::MAX,
        flags: 0,
        sent_at: monotonic_now(),
        base_time: monotonic_now(),
        memories: smallvec::smallvec![MemoryDesc {
            kind: MemoryKind::Memfd,
            fd_index: 0,
            file_id: 0,
            offset: 0,
            size: info.size() as u64,
        }],
        video: Some(VideoLayout {
            format: info.format().into_glib() as u32,
            flags: 0,
            width: info.width(),
            height: info.height(),
            n_planes: info.n_planes(),
            offsets,
            strides,
        }),
        metas: Default::default(),
    };
    let mut v = Vec::new();
    Packet::Buffer(header, smallvec::smallvec![frame.as_fd()])
        .encode(&mut v)
        .unwrap();
    v
}

/// A decoder-like pool of sealed memfds wrapped by GstDmaBufAllocator: the only "dmabuf" this
/// host can make. fdlinksink sees DmaBufMemory, finds a regular file behind it and sends it as
/// a memfd, so on the wire and in the consumer it is the memfd path.
/// A small pool of `DmaBufMemory` buffers, as a hardware decoder's: sealed memfds wrapped by
/// `GstDmaBufAllocator` (the stand-in), or real kernel dmabufs from an exporter.
mod dmabuf_pool {
    use crate::dmabuf_sources::{Allocator, Source};
    use gst::glib;
    use gst::subclass::prelude::*;
    use std::sync::Mutex;

    glib::wrapper! {
        pub struct DmabufPool(ObjectSubclass<imp::DmabufPool>)
            @extends gst::BufferPool, gst::Object;
    }

    impl DmabufPool {
        /// `exporter` None: the memfd stand-in.
        pub fn new(exporter: Option<Source>) -> Self {
            let pool: Self = glib::Object::new();
            *pool.imp().allocator.lock().unwrap() =
                exporter.map(|e| Allocator::open(e).expect("dmabuf exporter opens"));
            pool
        }
    }

    mod imp {
        use super::*;

        #[derive(Default)]
        pub struct DmabufPool {
            info: Mutex<Option<gst_video::VideoInfo>>,
            pub(super) allocator: Mutex<Option<Allocator>>,
        }

        #[glib::object_subclass]
        impl ObjectSubclass for DmabufPool {
            const NAME: &'static str = "FdlinkBenchDmabufPool";
            type Type = super::DmabufPool;
            type ParentType = gst::BufferPool;
        }

        impl ObjectImpl for DmabufPool {}
        impl GstObjectImpl for DmabufPool {}

        impl BufferPoolImpl for DmabufPool {
            fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
                let Some((Some(caps), ..)) = config.params() else {
                    return false;
                };
                *self.info.lock().unwrap() = gst_video::VideoInfo::from_caps(&caps).ok();
                self.parent_set_config(config)
            }

            fn alloc_buffer(
                &self,
                _params: Option<&gst::BufferPoolAcquireParams>,
            ) -> Result<gst::Buffer, gst::FlowError> {
                let info = self
                    .info
                    .lock()
                    .unwrap()
                    .clone()
                    .ok_or(gst::FlowError::Error)?;
                let fd = match &*self.allocator.lock().unwrap() {
                    Some(allocator) => allocator.alloc(info.size()).map(|(fd, _)| fd),
                    None => {
                        fdlink::fdkind::create_sealed_memfd("bench-dmabuf-standin", info.size())
                    }
                }
                .map_err(|_| gst::FlowError::Error)?;
                let mem = gstfdlink::memory::wrap_dmabuf(fd, info.size())
                    .map_err(|_| gst::FlowError::Error)?;
                assert!(mem.is_memory_type::<gst_allocators::DmaBufMemory>());
                let mut buffer = gst::Buffer::new();
                {
                    let b = buffer.get_mut().unwrap();
                    b.append_memory(mem);
                    super::super::add_video_meta(b, &info);
                }
                Ok(buffer)
            }
        }
    }
}

pub(crate) enum Frames {
    Pool(gst::BufferPool),
    /// System-memory buffers, reused: each is back to one reference once its push returned.
    Ring(Vec<gst::Buffer>),
}

impl Frames {
    pub(crate) fn new(
        kind: Kind,
        caps: &gst::Caps,
        info: &gst_video::VideoInfo,
        count: u32,
    ) -> Frames {
        let size = info.size() as u32;
        match kind {
            Kind::Memfd | Kind::MemfdFdEachFrame => Frames::Pool(
                gstfdlink::memory::MemfdBufferPool::new_configured(caps, size, count, count, true)
                    .unwrap()
                    .upcast(),
            ),
            Kind::DmabufStandin | Kind::DmabufHeap | Kind::Udmabuf => {
                let pool = dmabuf_pool::DmabufPool::new(kind.exporter());
                let mut c = pool.config();
                c.set_params(Some(caps), size, count, count);
                pool.set_config(c).unwrap();
                pool.set_active(true).unwrap();
                Frames::Pool(pool.upcast())
            }
            Kind::Copy => Frames::Ring(
                (0..2)
                    .map(|_| {
                        let mut b = gst::Buffer::with_size(info.size()).unwrap();
                        let bm = b.get_mut().unwrap();
                        // Written once, as a decoder writes its frames: untouched, the pages
                        // would all read as the kernel's one zero page, which stays in cache
                        // and makes the copy look faster than any memcpy of real frames.
                        bm.map_writable().unwrap().as_mut_slice().fill(0x80);
                        add_video_meta(bm, info);
                        b
                    })
                    .collect(),
            ),
            Kind::Raw | Kind::RawUring => unreachable!("raw frames are plain memfds"),
        }
    }

    pub(crate) fn next(&mut self, seq: u64) -> gst::Buffer {
        let set = |m: &mut gst::BufferRef| {
            m.set_offset(seq);
            m.set_pts(gst::ClockTime::from_nseconds(seq * 33_333_333));
        };
        match self {
            Frames::Pool(p) => {
                let mut b = p.acquire_buffer(None).expect("pool buffer");
                set(b.get_mut().expect("a pool buffer is ours alone"));
                b
            }
            Frames::Ring(r) => {
                let len = r.len();
                let slot = &mut r[seq as usize % len];
                // Copies only if fdlinksink still held it (it does not: it copies in render).
                set(slot.make_mut());
                slot.clone()
            }
        }
    }
}
