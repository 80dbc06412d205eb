//! DMA_DRM caps (GStreamer >= 1.24: `video/x-raw(memory:DMABuf), format=DMA_DRM,
//! drm-format=FOURCC:0xMODIFIER`) in upstream's ALLOCATION query. `VideoInfo` does not read
//! them, so they need their own answer: the pool minimum (what a consumer usually holds, see
//! `negotiation::upstream_pool_min`), which a hardware decoder adds to its own surfaces, and
//! the frame size where the modifier's layout is known. No memfd pool: a DMA_DRM producer
//! allocates its dmabufs itself.

use super::CAT;

#[cfg(feature = "v1_24")]
const DRM_FORMAT_MOD_LINEAR: u64 = 0;

/// The size of one frame of `caps` if they are DMA_DRM caps: 0 when the layout of the
/// modifier is not known here (tiled, compressed: only the producer knows the size); None for
/// other caps.
#[cfg(feature = "v1_24")]
fn frame_size(caps: &gst::CapsRef) -> Option<u32> {
    if !is_dma_drm(caps) {
        return None;
    }
    // Unfixed or unreadable DMA_DRM caps (without memory:DMABuf too) still get the minimum.
    let Ok(info) = gst_video::VideoInfoDmaDrm::from_caps(caps) else {
        return Some(0);
    };
    // Only a linear modifier has the plain format's default layout (a tiled one pads).
    if info.modifier() != DRM_FORMAT_MOD_LINEAR {
        return Some(0);
    }
    Some(info.to_video_info().map_or(0, |v| v.size() as u32))
}

/// Without the 1.24 API: DMA_DRM caps, size unknown.
#[cfg(not(feature = "v1_24"))]
fn frame_size(caps: &gst::CapsRef) -> Option<u32> {
    is_dma_drm(caps).then_some(0)
}

/// Raw video in format DMA_DRM (read as a structure, so 1.22 builds see it too).
fn is_dma_drm(caps: &gst::CapsRef) -> bool {
    caps.structure(0)
        .filter(|s| s.name() == "video/x-raw")
        .and_then(|s| s.get::<&str>("format").ok())
        .is_some_and(|f| f == "DMA_DRM")
}

/// For DMA_DRM `caps`: adds to `query` a pool entry without a pool, of at least `min_buffers`
/// buffers and no maximum (a decoder's pool that can grow grows while consumers hold more),
/// and returns true (the caller adds VideoMeta as for any raw video). False for
/// other caps.
pub(super) fn propose_pool(
    element: &gst::Element,
    query: &mut gst::query::Allocation,
    caps: Option<&gst::Caps>,
    min_buffers: u32,
) -> bool {
    let Some(size) = caps.and_then(|c| frame_size(c)) else {
        return false;
    };
    query.add_allocation_pool(None::<&gst::BufferPool>, size, min_buffers, 0);
    gst::debug!(
        CAT,
        obj = element,
        "DMA_DRM caps: proposing at least {min_buffers} buffers of {size} bytes (0: unknown)"
    );
    true
}
