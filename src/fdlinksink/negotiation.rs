//! What fdlinksink offers upstream: caps of memory that crosses as an fd and that its
//! consumers' pipelines take, and in the ALLOCATION query a memfd allocator, and for raw video
//! a memfd pool with VideoMeta.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use gst::prelude::*;

use super::CAT;
use super::hub::Hub;
use crate::control;
use crate::memory::MemfdBufferPool;
use fdlink::protocol::Packet;

/// Memory kinds that cross as fds. Anything else (VAMemory, GLMemory, ...) would be copied, so
/// the caps query does not offer it: a VA decoder then picks DMABuf output.
const SHAREABLE_FEATURES: [&str; 2] = ["memory:SystemMemory", "memory:DMABuf"];

/// `caps` without the structures whose memory cannot cross as an fd.
pub(super) fn shareable_caps(caps: &gst::CapsRef) -> gst::Caps {
    if caps.is_any() {
        return caps.to_owned();
    }
    let mut out = gst::Caps::new_empty();
    let out_mut = out.get_mut().expect("new caps");
    for (s, features) in caps.iter_with_features() {
        let ok = features.is_any()
            || features
                .iter()
                .all(|f| SHAREABLE_FEATURES.contains(&f.as_str()) || f.starts_with("meta:"));
        if ok {
            out_mut.append_structure_full(s.to_owned(), Some(features.to_owned()));
        }
    }
    out
}

/// The caps every consumer's pipeline can take, intersected with `caps`; each consumer has
/// `timeout` to answer. A consumer whose answer would leave nothing is left out (it fails on
/// its own when the caps come), so one consumer cannot make the producer fail to negotiate.
///
/// `wait_first` (wait-for-connection, and no caps set yet): while no consumer has ever
/// connected, this waits for the first one (or a flush) and asks it. The stream then starts
/// in caps the first consumer takes, rather than in caps picked alone that it would refuse,
/// dropping frames until the producer renegotiates (by then a non-live stream may be over).
pub(super) fn consumers_caps(
    element: &gst::Element,
    hub: &Hub,
    caps: gst::Caps,
    timeout: Duration,
    wait_first: bool,
) -> gst::Caps {
    if wait_first && hub.stats().0.consumers_total == 0 {
        gst::debug!(
            CAT,
            obj = element,
            "wait-for-connection: the first caps wait for the first consumer"
        );
        if !hub.wait_for_consumer() {
            return caps;
        }
    }
    if hub.num_consumers() == 0 {
        return caps;
    }
    let query = gst::query::Caps::new(Some(&caps));
    let replies = hub.ask_consumers(
        |id| {
            let mut bytes = Vec::new();
            Packet::<BorrowedFd<'_>>::Query(control::query_to_packet(id, &query))
                .encode(&mut bytes)
                .ok()
                .map(|()| bytes)
        },
        timeout,
    );
    let mut result = caps;
    for reply in replies {
        let mut q = gst::query::Caps::new(None);
        if !control::apply_reply(&mut q, &reply) {
            continue;
        }
        let Some(theirs) = q.result() else { continue };
        let both = result.intersect_with_mode(theirs, gst::CapsIntersectMode::First);
        if both.is_empty() {
            gst::warning!(
                CAT,
                obj = element,
                "a consumer takes only {theirs}, nothing of {result}: leaving it out"
            );
        } else {
            result = both;
        }
    }
    result
}

/// Buffers of upstream's pool a consumer is counted as holding in the ALLOCATION answer: the
/// frame its sink shows and the few its pipeline's latency keeps queued (a syncing consumer
/// holds the producer's latency in frames: 6 behind v4l2slh264dec at 30 fps in the VM).
const USUALLY_HELD: u32 = 4;

/// The pool minimum fdlinksink proposes for consumers that may hold `held` buffers (max-held,
/// or max-held-total when set): what a consumer usually holds, capped at `held`, plus the
/// frame being sent. Decoders add it to their own surfaces, which cost memory whether used or
/// not, so it is not the most consumers may hold: pools that can grow (GStreamer's, the memfd
/// pool, VA, v4l2videodec with CREATE_BUFS) grow when consumers hold more, fixed ones
/// (v4l2codecs) make the decoder wait for a release.
pub(super) fn upstream_pool_min(held: u32) -> u32 {
    held.min(USUALLY_HELD) + 1
}

/// Answers upstream's ALLOCATION query: for any caps a memfd allocator (sources, encoders and
/// parsers that allocate with `gst_buffer_new_allocate` then write into shareable memory);
/// for raw video also a memfd pool (if upstream wants one) of at least `min_buffers` buffers
/// and no maximum, or only that minimum; VideoMeta in any case. Upstream decoders that keep
/// their own pool (v4l2videodec) read `min_buffers` from the memfd pool's entry too.
///
/// Only raw video gets a pool: a pool's buffers have one size, which the query does not carry
/// for other caps (an audio source's block, an encoder's frame), and too small a buffer breaks
/// the source that fills it, too big a one sends what it did not fill.
pub(super) fn propose_allocation(
    element: &gst::Element,
    query: &mut gst::query::Allocation,
    min_buffers: u32,
) {
    let (caps, need_pool) = query.get_owned();
    // Not for caps of other memory (memory:DMABuf): upstream allocates that itself.
    let system_memory = caps
        .as_ref()
        .and_then(|c| c.features(0))
        .is_none_or(|f| f.is_empty() || f.contains(gst::CAPS_FEATURE_MEMORY_SYSTEM_MEMORY));
    if system_memory {
        query.add_allocation_param(
            Some(&MemfdBufferPool::upstream_allocator()),
            gst::AllocationParams::default(),
        );
        gst::debug!(CAT, obj = element, "proposing the memfd allocator");
    }
    let dma_drm = super::dma_drm::propose_pool(element, query, caps.as_ref(), min_buffers);
    if !dma_drm
        && let Some(caps) = &caps
        && let Ok(info) = gst_video::VideoInfo::from_caps(caps)
    {
        let size = info.size() as u32;
        if need_pool {
            match MemfdBufferPool::new_configured(caps, size, min_buffers, 0, true) {
                Ok(pool) => {
                    // Hand it over inactive: upstream configures and activates it.
                    let _ = pool.set_active(false);
                    query.add_allocation_pool(Some(&pool), size, min_buffers, 0);
                    gst::debug!(
                        CAT,
                        obj = element,
                        "proposing memfd pool of {size}-byte buffers, at least {min_buffers}"
                    );
                }
                Err(e) => gst::warning!(CAT, obj = element, "cannot make memfd pool: {e}"),
            }
        } else {
            query.add_allocation_pool(None::<&gst::BufferPool>, size, min_buffers, 0);
        }
    }
    query.add_allocation_meta::<gst_video::VideoMeta>(None);
}

#[cfg(test)]
mod tests {
    use super::upstream_pool_min;

    /// Upstream is asked for what a consumer usually holds plus the frame being sent, never
    /// more than max-held + 1.
    #[test]
    fn pool_minimum_is_small_and_bounded_by_max_held() {
        assert_eq!(upstream_pool_min(1), 2);
        assert_eq!(upstream_pool_min(3), 4);
        assert_eq!(upstream_pool_min(8), 5);
        assert_eq!(upstream_pool_min(1024), 5);
    }
}
