//! fdlinksink's send path: a buffer described as fd windows (or copied once into the sink's
//! memfd pool), encoded as a buffer packet and offered to the consumers through the hub. A
//! buffer without bytes goes without memories (and without copy); its metas go in the packet,
//! or in a sealed memfd sent beside it when they do not fit there.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use gst::prelude::*;
use gst_base::prelude::*;

use super::CAT;
use super::hub::{Frame, Hub};
use super::skips::Skips;
use crate::clock;
use crate::memory::{self, FdList, MemfdBufferPool};
use crate::metas;
use fdlink::protocol::{
    BufferHeader, MAX_FDS, MAX_PACKET_SIZE, MemoryList, MetaEntry, Metas, TIME_NONE,
};

/// Why a frame goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sending {
    /// Rendered in PLAYING.
    Playing,
    /// The frame this pipeline prerolls on (kept for consumers that join while paused).
    Preroll,
    /// Passed through, not prerolled on, while following consumers preroll.
    PassThrough,
}

/// What the streaming thread keeps from one frame to the next to send them.
pub(super) struct Sender {
    copy_pool: Option<MemfdBufferPool>,
    /// The per-frame memory list, reused so that a frame allocates nothing.
    memories: MemoryList,
    /// Whether upstream is live, asked once per stream: a live stream never waits for a
    /// slow consumer (that consumer skips frames instead).
    upstream_live: Option<bool>,
    /// `yield-after-send`, as set when the stream started.
    yield_after_send: bool,
    /// Frames skipped for consumers, announced.
    skips: Skips,
}

/// A frame that went out.
#[must_use]
pub(super) struct Sent {
    buffer_id: u64,
    yield_cpu: bool,
}

impl Sent {
    /// Gives up the CPU if this frame calls for it (call it with no lock held) and returns
    /// the frame's buffer id.
    ///
    /// A unix socket wakes its reader "synchronously": the kernel may put the consumer on this
    /// CPU, expecting the sender to sleep now. A live source does not sleep but makes its next
    /// frame first (videotestsrc, a software decoder), and the consumer would wait for that;
    /// yielding lets it take the frame now.
    pub(super) fn finish(self) -> u64 {
        if self.yield_cpu {
            std::thread::yield_now();
        }
        self.buffer_id
    }
}

/// A frame ready to go out: the buffer whose memories cross (the upstream buffer, or its
/// memfd copy) described as fd windows.
struct Outgoing<'a> {
    wire: &'a gst::Buffer,
    memories: MemoryList,
    fds: FdList<'a>,
    /// Bytes copied to make this frame shareable; None when it crosses zero-copy.
    copied_bytes: Option<usize>,
}

impl Sender {
    pub(super) fn new(yield_after_send: bool) -> Sender {
        Sender {
            copy_pool: None,
            memories: MemoryList::new(),
            upstream_live: None,
            yield_after_send,
            skips: Skips::default(),
        }
    }

    /// Lets go of the copy pool's memory.
    pub(super) fn stop(self) {
        if let Some(pool) = self.copy_pool {
            let _ = pool.set_active(false);
        }
    }

    /// Sends `buffer` to the consumers: its fd windows, or a copy in the memfd pool when it is
    /// not shareable; consumers that `slow-policy=copy` left at their limit get one more copy.
    /// `copy_ns` counts the time spent copying unshareable buffers.
    pub(super) fn send(
        &mut self,
        element: &gst_base::BaseSink,
        hub: &Hub,
        copy_ns: &AtomicU64,
        buffer: &gst::Buffer,
        sending: Sending,
    ) -> Result<Sent, gst::FlowError> {
        let live = *self.upstream_live.get_or_insert_with(|| {
            let mut q = gst::query::Latency::new();
            let live = element.sink_pad().peer_query(&mut q) && q.result().0;
            gst::debug!(CAT, obj = element, "upstream is live: {live}");
            live
        });
        // Passing through, wait_pass_through waited for the followers' room; the preroll
        // frame goes to followers past max-held (Frame::preroll). The others skip what they
        // have no room for: a paused pipeline has nothing to wait for.
        if sending == Sending::Playing && !hub.wait_for_room(live) {
            return Err(gst::FlowError::Flushing);
        }
        let mut metas = metas::collect(element.upcast_ref(), buffer);
        let mut descs = self.take_memories();
        let mut fds = FdList::new();
        let registry = hub.file_registry();
        let (buffer_id, wants_copy, mut skipped) =
            match memory::describe_buffer(buffer, registry, &mut descs, &mut fds) {
                Ok(()) => {
                    let out = Outgoing {
                        wire: buffer,
                        memories: descs,
                        fds,
                        copied_bytes: None,
                    };
                    self.send_frame(element, hub, buffer, out, &mut metas, None, sending)?
                }
                Err(reason) => {
                    drop(fds);
                    gst::log!(
                        CAT,
                        obj = element,
                        "copying buffer into the memfd pool: {}",
                        match reason {
                            memory::CopyReason::NotFdMemory => "a memory is not fd-backed",
                            memory::CopyReason::UnsealedFd =>
                                "a memory's fd is not sealed against shrinking",
                            memory::CopyReason::TooManyFds => "more fds than a packet carries",
                            memory::CopyReason::TooManyMemories =>
                                "more memories than a packet carries",
                        }
                    );
                    let mut copy = None;
                    let out = self.copy_out(element, registry, buffer, descs, &mut copy)?;
                    copy_ns.fetch_add(out.copy_ns, Ordering::Relaxed);
                    self.send_frame(element, hub, buffer, out.frame, &mut metas, None, sending)?
                }
            };
        if !wants_copy.is_empty() {
            // slow-policy=copy: consumers at max-held get the frame in the memfd pool.
            let mut copy = None;
            let memories = self.take_memories();
            let mut out = self.copy_out(element, registry, buffer, memories, &mut copy)?;
            // Not an unshareable buffer: bytes-copied and copy-time-us leave it out.
            out.frame.copied_bytes = None;
            let (_, _, more) = self.send_frame(
                element,
                hub,
                buffer,
                out.frame,
                &mut metas,
                Some(&wants_copy),
                sending,
            )?;
            skipped += more;
        }
        self.skips
            .count(element, buffer, (skipped, wants_copy.len() as u64), live);
        Ok(Sent {
            buffer_id,
            yield_cpu: live && self.yield_after_send && sending == Sending::Playing,
        })
    }

    /// Encodes a buffer packet for `out.wire` (timestamps, flags and layout from `meta_src`,
    /// its metas collected in `metas`, which are left there for another copy) and offers it to
    /// the consumers: all of them, or only `slow_copy_for`.
    #[allow(clippy::too_many_arguments)]
    fn send_frame(
        &mut self,
        element: &gst_base::BaseSink,
        hub: &Hub,
        meta_src: &gst::BufferRef,
        out: Outgoing<'_>,
        metas: &mut Vec<MetaEntry>,
        slow_copy_for: Option<&[u64]>,
        sending: Sending,
    ) -> Result<(u64, Vec<u64>, u64), gst::FlowError> {
        let live = self.upstream_live.unwrap_or(true);
        let buffer_id = hub.next_buffer_id();
        let time = |t: Option<gst::ClockTime>| t.map_or(TIME_NONE, |t| t.nseconds());
        let mut header = BufferHeader {
            buffer_id,
            pts: time(meta_src.pts()),
            dts: time(meta_src.dts()),
            duration: time(meta_src.duration()),
            offset: meta_src.offset(),
            offset_end: meta_src.offset_end(),
            flags: memory::buffer_flag_bits(meta_src),
            sent_at: clock::monotonic_now(),
            // Prerolling, the pipeline has no base time yet (it gets one when it plays): the
            // consumer shows the frame as it arrives. A sink that does not wait for preroll
            // (async=false) prerolls on its first buffer in PLAYING, with its base time; one
            // on its way from PLAYING to PAUSED is still PLAYING with PAUSED pending, and
            // prerolls for that pause.
            base_time: if sending == Sending::Playing
                || (sending == Sending::Preroll
                    && element.current_state() == gst::State::Playing
                    && element.pending_state() == gst::State::VoidPending)
            {
                base_time_monotonic(element.upcast_ref())
            } else {
                TIME_NONE
            },
            memories: out.memories,
            video: memory::video_layout(meta_src),
            metas: Metas::default(),
        };
        let metas_file = place_metas(element, &mut header, metas, out.fds.len());
        // The metas memfd goes last, after the memories' fds.
        let with_metas_fd: FdList<'_>;
        let fds = match &metas_file {
            Some(file) => {
                with_metas_fd = out.fds.iter().copied().chain([file.as_fd()]).collect();
                &with_metas_fd[..]
            }
            None => &out.fds[..],
        };
        let frame = Frame {
            id: buffer_id,
            header: &header,
            fds,
            size: out.wire.size() as u64,
            keyframe: !meta_src.flags().contains(gst::BufferFlags::DELTA_UNIT),
            slow_copy: slow_copy_for.is_some(),
            preroll: sending == Sending::Preroll,
            reads_releases: !live && sending == Sending::Playing,
        };
        let sent = if let Some(consumers) = slow_copy_for {
            let sent = hub.send_copy(consumers, &frame, out.wire.clone());
            gst::log!(
                CAT,
                obj = element,
                "buffer {buffer_id}: slow-policy=copy copy for {} consumers at max-held, {}, {} fds",
                consumers.len(),
                crate::stats_interval::describe_memories(&header.memories),
                fds.len()
            );
            sent
        } else {
            let sent = hub.send_buffer(&frame, out.wire.clone(), out.copied_bytes);
            gst::log!(
                CAT,
                obj = element,
                "buffer {buffer_id}: {}, {}, {} fds, to {} consumers",
                match out.copied_bytes {
                    Some(n) => format!("copied ({n} bytes into the memfd pool)"),
                    None => "zero-copy".into(),
                },
                crate::stats_interval::describe_memories(&header.memories),
                fds.len(),
                sent.sent_to
            );
            sent
        };
        // The memory list goes back for the next frame, the metas for another copy.
        self.memories = header.memories;
        if let Metas::Inline(list) = header.metas
            && !list.is_empty()
        {
            *metas = list;
        }
        Ok((buffer_id, sent.wants_copy, sent.skipped))
    }

    /// The reused memory list (empty, with its capacity).
    fn take_memories(&mut self) -> MemoryList {
        let mut m = std::mem::take(&mut self.memories);
        m.clear();
        m
    }

    /// Copies `buffer` into the memfd pool, described in `memories` (the reused list).
    fn copy_out<'a>(
        &mut self,
        element: &gst_base::BaseSink,
        registry: Option<&memory::FileRegistry>,
        buffer: &gst::BufferRef,
        mut memories: MemoryList,
        copy: &'a mut Option<gst::Buffer>,
    ) -> Result<Copied<'a>, gst::FlowError> {
        let pool = self.copy_pool(element, buffer.size())?;
        // May wait until a consumer releases a pool buffer: not part of the copy's time.
        let dst = pool.acquire_buffer(None)?;
        let started = std::time::Instant::now();
        let copy = copy.insert(memory::copy_into(buffer, dst)?);
        let copy_ns = started.elapsed().as_nanos() as u64;
        let mut fds = FdList::new();
        if let Err(r) = memory::describe_buffer(copy, registry, &mut memories, &mut fds) {
            gst::element_error!(
                element,
                gst::ResourceError::Failed,
                ("memfd copy is not shareable: {r:?}")
            );
            return Err(gst::FlowError::Error);
        }
        Ok(Copied {
            frame: Outgoing {
                wire: copy,
                memories,
                fds,
                copied_bytes: Some(buffer.size()),
            },
            copy_ns,
        })
    }

    /// The copy pool, made (again) for buffers of at least `size` bytes.
    fn copy_pool(
        &mut self,
        element: &gst_base::BaseSink,
        size: usize,
    ) -> Result<MemfdBufferPool, gst::FlowError> {
        if let Some(pool) = &self.copy_pool
            && pool
                .config()
                .params()
                .is_some_and(|(_, s, _, _)| s as usize >= size)
        {
            return Ok(pool.clone());
        }
        if let Some(old) = self.copy_pool.take() {
            let _ = old.set_active(false);
        }
        let caps = gst::Caps::new_empty_simple("application/x-fdlink-copy");
        let pool =
            MemfdBufferPool::new_configured(&caps, size as u32, 2, 0, false).map_err(|e| {
                gst::element_error!(
                    element,
                    gst::ResourceError::NoSpaceLeft,
                    ("cannot create memfd copy pool of {size}-byte buffers: {e}")
                );
                gst::FlowError::Error
            })?;
        self.copy_pool = Some(pool.clone());
        Ok(pool)
    }
}

/// Puts `metas` into `header`: in the packet when they fit, else into a sealed memfd, returned,
/// which goes as the packet's last fd (`n_fds`: the memories' fds). Metas that cannot go (no
/// fd left, no memfd) are left out with a warning. The list stays in `metas` unless it went
/// into the header.
fn place_metas(
    element: &gst_base::BaseSink,
    header: &mut BufferHeader,
    metas: &mut Vec<MetaEntry>,
    n_fds: usize,
) -> Option<OwnedFd> {
    if metas.is_empty() {
        return None;
    }
    header.metas = Metas::Inline(std::mem::take(metas));
    if fdlink::protocol::buffer_packet_size(header) <= MAX_PACKET_SIZE {
        return None;
    }
    let Metas::Inline(list) = std::mem::take(&mut header.metas) else {
        unreachable!("set just above");
    };
    *metas = list;
    if n_fds >= MAX_FDS {
        gst::warning!(
            CAT,
            obj = element,
            "not sending this buffer's metas: they need a memfd, and its {n_fds} memories' fds \
             leave no room in the packet's {MAX_FDS}"
        );
        return None;
    }
    let mut encoded = Vec::new();
    let file = fdlink::protocol::encode_meta_list(metas, &mut encoded)
        .map_err(|e| e.to_string())
        .and_then(|()| metas::metas_memfd(&encoded).map_err(|e| e.to_string()));
    match file {
        Ok(file) => {
            header.metas = Metas::Memfd {
                size: encoded.len() as u64,
            };
            Some(file)
        }
        Err(e) => {
            gst::warning!(
                CAT,
                obj = element,
                "not sending this buffer's {} metas: cannot put them in a memfd: {e}",
                metas.len()
            );
            None
        }
    }
}

/// A frame copied into the memfd pool, and how long the copy took.
struct Copied<'a> {
    frame: Outgoing<'a>,
    copy_ns: u64,
}

/// `element`'s pipeline base time on CLOCK_MONOTONIC: where its running time 0 is on the
/// clock both processes share (one clock sample per call). TIME_NONE without a clock.
pub(super) fn base_time_monotonic(element: &gst::Element) -> u64 {
    let (Some(clock), Some(base)) = (element.clock(), element.base_time()) else {
        return TIME_NONE;
    };
    let offset = clock::clock_to_monotonic_offset(&clock);
    clock::running_to_monotonic(gst::ClockTime::ZERO, base, offset).unwrap_or(TIME_NONE)
}
