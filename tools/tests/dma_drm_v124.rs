//! DMA_DRM caps (GStreamer >= 1.24: `video/x-raw(memory:DMABuf), format=DMA_DRM,
//! drm-format=FOURCC:0xMODIFIER`) with the `v1_24` feature: fdlinksink's answer to the
//! ALLOCATION query keeps the pool minimum (and the frame size of a linear modifier) and
//! VideoMeta; drm-format and modifier reach the consumer's caps, and its frames keep their
//! VideoMeta; a consumer that takes only plain raw video fails with a negotiation error naming
//! the DMA_DRM caps. Built and run on GStreamer 1.26 and 1.28 by scripts/gst-versions.sh.
//!
//! Without a DMA_DRM producer (hardware decoders), an appsrc in this process sends DMA_DRM caps
//! over memfd frames (`capssetter` cannot add the memory:DMABuf feature), and the query test
//! asks fdlinksink with DMA_DRM caps itself (videotestsrc's query would carry its own caps).
#![cfg(feature = "v1_24")]

mod common;

use std::time::Duration;

use common::*;
use gst::prelude::*;

const T: Duration = Duration::from_secs(60);

const LINEAR: &str =
    "video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format=NV12,width=320,height=240,framerate=30/1";
const TILED: &str = "video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format=NV12:0x0100000000000002,width=320,height=240,framerate=30/1";
/// DRM_FORMAT_MOD_VIVANTE_TILED (fourcc_mod_code(VIVANTE, 2)).
const TILED_MODIFIER: u64 = 0x0100000000000002;
/// NV12 320x240 in its default layout.
const NV12_SIZE: u32 = 320 * 240 * 3 / 2;

fn init() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    init_gst();
    REGISTERED.call_once(|| gstfdlink::plugin_register_static().unwrap());
}

/// fdlinksink's answer to an ALLOCATION query for `caps` (need-pool): its pool entries
/// (whether a pool, size, min, max) and whether it takes VideoMeta.
fn allocation(sink: &gst::Element, caps: &str) -> (Vec<(bool, u32, u32, u32)>, bool) {
    let caps: gst::Caps = caps.parse().unwrap();
    let mut query = gst::query::Allocation::new(Some(&caps), true);
    assert!(sink.static_pad("sink").unwrap().query(&mut query));
    let pools = query
        .allocation_pools()
        .map(|(pool, size, min, max)| (pool.is_some(), size, min, max))
        .collect();
    let video_meta = query
        .find_allocation_meta::<gst_video::VideoMeta>()
        .is_some();
    (pools, video_meta)
}

/// DMA_DRM caps get the pool minimum plain NV12 gets (min(max-held, 4) + 1), the frame size
/// where the modifier is linear (0, unknown, where it is tiled), no memfd pool, and VideoMeta.
#[test]
fn allocation_query_keeps_pool_minimum_and_video_meta_for_dma_drm() {
    init();
    let sink = gst::ElementFactory::make("fdlinksink")
        .property("max-held", 20u32)
        .build()
        .unwrap();
    let (nv12, meta) = allocation(&sink, "video/x-raw,format=NV12,width=320,height=240");
    assert!(meta);
    assert_eq!(nv12.len(), 1, "{nv12:?}");
    let (has_pool, size, min, _) = nv12[0];
    assert!(has_pool && size == NV12_SIZE && min == 5, "{nv12:?}");

    let (linear, meta) = allocation(&sink, LINEAR);
    assert_eq!(linear, vec![(false, NV12_SIZE, min, 0)], "linear DMA_DRM");
    assert!(meta, "VideoMeta for linear DMA_DRM");
    let (tiled, meta) = allocation(&sink, TILED);
    assert_eq!(tiled, vec![(false, 0, min, 0)], "tiled DMA_DRM");
    assert!(meta, "VideoMeta for tiled DMA_DRM");
}

/// A padded NV12 frame's layout: 384-byte strides, the chroma plane 16 rows below the luma.
const STRIDE: usize = 384;
const UV_OFFSET: usize = STRIDE * 256;
const FRAME_SIZE: usize = UV_OFFSET + STRIDE * 120;

/// A producer pipeline in this process: appsrc with `caps` (DMA_DRM, memory:DMABuf, as a
/// hardware decoder's; capssetter cannot add the caps feature) into fdlinksink, playing.
fn producer(sock: &str, caps: &str) -> (gst::Element, gst_app::AppSrc) {
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps={caps} ! fdlinksink socket-path={sock} \
         wait-for-connection=true sync=false async=false"
    ))
    .unwrap();
    assert_eq!(
        pipeline.set_state(gst::State::Playing),
        Ok(gst::StateChangeSuccess::Success)
    );
    let src = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    (pipeline, src)
}

/// Frame `i`: padded NV12 in one memfd (dmabuf memory, so it crosses zero-copy), with its
/// VideoMeta.
fn frame(i: u64) -> gst::Buffer {
    let fd = gstfdlink::memory::create_sealed_memfd("drm", FRAME_SIZE).unwrap();
    let mut buffer = gst::Buffer::new();
    {
        let b = buffer.get_mut().unwrap();
        b.append_memory(gstfdlink::memory::wrap_dmabuf(fd, FRAME_SIZE).unwrap());
        // No timestamps: the consumer, started after the producer, would drop the first
        // frames as older than its own start.
        b.set_offset(i);
        gst_video::VideoMeta::add_full(
            b,
            gst_video::VideoFrameFlags::empty(),
            gst_video::VideoFormat::Nv12,
            320,
            240,
            &[0, UV_OFFSET],
            &[STRIDE as i32, STRIDE as i32],
        )
        .unwrap();
    }
    buffer
}

/// Tiled DMA_DRM frames in memfds with a padded layout cross to a consumer (here, into an
/// appsink): its caps are DMA_DRM with the same drm-format and modifier, and each frame keeps
/// the producer's VideoMeta (strides and offsets) and arrives in fd memory.
#[test]
fn drm_format_modifier_and_video_meta_reach_the_consumer() {
    init();
    let dir = TempDir::new("drm124");
    let sock = dir.socket();
    let (service, src) = producer(&sock, TILED);
    let client = gst::parse::launch(&format!(
        "fdlinksrc socket-path={sock} ! appsink name=sink sync=false"
    ))
    .unwrap();
    client.set_state(gst::State::Playing).unwrap();
    let appsink = client
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let nv12 = gst_video::dma_drm_fourcc_from_format(gst_video::VideoFormat::Nv12).unwrap();
    // One frame at a time, each pulled before the next goes: past its share of the
    // producer's buffers held downstream (an appsink's queue) a consumer copies frames.
    for i in 0..5 {
        src.push_buffer(frame(i)).unwrap();
        let sample = appsink
            .try_pull_sample(gst::ClockTime::from_seconds(30))
            .unwrap_or_else(|| panic!("frame {i} within 30 s"));
        let caps = sample.caps().expect("caps");
        assert!(gst_video::is_dma_drm_caps(caps), "{caps}");
        let info = gst_video::VideoInfoDmaDrm::from_caps(caps).unwrap();
        assert_eq!(
            (info.fourcc(), info.modifier(), info.width(), info.height()),
            (nv12, TILED_MODIFIER, 320, 240),
            "{caps}"
        );
        let buffer = sample.buffer().unwrap();
        assert_eq!(buffer.offset(), i);
        let meta = buffer
            .meta::<gst_video::VideoMeta>()
            .expect("the producer's VideoMeta");
        assert_eq!(
            (meta.format(), meta.width(), meta.height(), meta.n_planes()),
            (gst_video::VideoFormat::Nv12, 320, 240, 2)
        );
        assert_eq!(meta.offset()[..2], [0, UV_OFFSET]);
        assert_eq!(meta.stride()[..2], [STRIDE as i32, STRIDE as i32]);
        assert!(
            buffer.iter_memories().all(|m| m
                .downcast_memory_ref::<gst_allocators::FdMemory>()
                .is_some()),
            "frame {i}: fd memory, not {:?}",
            buffer
                .iter_memories()
                .map(|m| m.allocator().map(|a| a.type_().name()))
                .collect::<Vec<_>>()
        );
    }
    src.end_of_stream().unwrap();
    assert!(
        appsink
            .try_pull_sample(gst::ClockTime::from_seconds(30))
            .is_none()
    );
    assert!(appsink.is_eos());
    client.set_state(gst::State::Null).unwrap();
    service.set_state(gst::State::Null).unwrap();
}

/// A consumer process whose downstream takes only plain raw video fails with a negotiation
/// error that names the producer's DMA_DRM caps (the producer has no other caps to offer) and
/// the caps downstream accepts.
#[test]
fn consumer_without_dma_drm_fails_naming_the_caps() {
    init();
    let dir = TempDir::new("drm124no");
    let sock = dir.socket();
    let (service, src) = producer(&sock, LINEAR);
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!(
            "fdlinksrc socket-path={sock} ack-timeout=500 ! video/x-raw,format=NV12 ! fakesink"
        ),
    ]);
    for i in 0..3 {
        src.push_buffer(frame(i)).unwrap();
    }
    assert_eq!(consumer.wait(T).code(), Some(1), "{}", consumer.errors());
    let errors = consumer.errors();
    assert!(
        errors.contains("downstream does not accept")
            && errors.contains("video/x-raw(memory:DMABuf), format=(string)DMA_DRM")
            && errors.contains("drm-format=(string)NV12")
            && errors.contains("downstream accepts video/x-raw, format=(string)NV12"),
        "{errors}"
    );
    service.set_state(gst::State::Null).unwrap();
}
