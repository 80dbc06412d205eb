use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use super::hub::{
    Frame, Hub, HubEvent, Limits, PassThrough, PrerollWait, Request, SlowPolicy, StickyKind,
    SyncMethod,
};
use super::requests::RequestPool;
use crate::clock;
use crate::control;
use crate::memory::{self, FdList, MemfdBufferPool};
use crate::session::{self, BusWatch, Mode, Reposted};
use fdlink::protocol::{BufferHeader, MemoryList, Packet, TIME_NONE};
use fdlink::transport::Listener;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "fdlinksink",
        gst::DebugColorFlags::empty(),
        Some("fdlink producer: serves buffers to other processes"),
    )
});

const DEFAULT_MAX_HELD: u32 = 8;
const DEFAULT_MAX_QUEUED: u32 = 8;

/// The `slow-policy` property.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstFdlinkSlowPolicy")]
pub enum SlowPolicyProp {
    #[default]
    #[enum_value(
        name = "Auto: drop when upstream is live; otherwise wait up to 1 s, then skip that consumer until it releases",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "Drop: skip frames for that consumer", nick = "drop")]
    Drop = 1,
    #[enum_value(
        name = "Block: wait until every consumer has room (lossless, for recording)",
        nick = "block"
    )]
    Block = 2,
    #[enum_value(name = "Disconnect: remove that consumer", nick = "disconnect")]
    Disconnect = 3,
    #[enum_value(
        name = "Copy: send that consumer a copy in the memfd pool, so upstream's pool keeps its buffers",
        nick = "copy"
    )]
    Copy = 4,
}

/// The `sync-method` property.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstFdlinkSyncMethod")]
pub enum SyncMethodProp {
    #[default]
    #[enum_value(name = "Latest: start with the next buffer", nick = "latest")]
    Latest = 0,
    #[enum_value(
        name = "Next keyframe: skip delta units until the next keyframe",
        nick = "next-keyframe"
    )]
    NextKeyframe = 1,
    #[enum_value(
        name = "Latest keyframe: start with the latest keyframe and the buffers since",
        nick = "latest-keyframe"
    )]
    LatestKeyframe = 2,
}

impl From<SyncMethodProp> for SyncMethod {
    fn from(p: SyncMethodProp) -> Self {
        match p {
            SyncMethodProp::Latest => SyncMethod::Latest,
            SyncMethodProp::NextKeyframe => SyncMethod::NextKeyframe,
            SyncMethodProp::LatestKeyframe => SyncMethod::LatestKeyframe,
        }
    }
}

impl From<SlowPolicyProp> for SlowPolicy {
    fn from(p: SlowPolicyProp) -> Self {
        match p {
            SlowPolicyProp::Auto => SlowPolicy::Auto,
            SlowPolicyProp::Drop => SlowPolicy::Drop,
            SlowPolicyProp::Block => SlowPolicy::Block,
            SlowPolicyProp::Disconnect => SlowPolicy::Disconnect,
            SlowPolicyProp::Copy => SlowPolicy::Copy,
        }
    }
}
/// Default `ack-timeout`: caps queries wait this long for consumers, so it stays short.
const DEFAULT_ACK_TIMEOUT_MS: u32 = 1_000;
/// How long a frame waits for a consumer at its `max-held` limit before that consumer skips it.
const SLOW_CONSUMER_WAIT: Duration = Duration::from_secs(1);
/// How long EOS waits for queued packets (the EOS itself among them) to reach consumers. An
/// AF_UNIX receiver queues only net.unix.max_dgram_qlen (10) datagrams, so a slow consumer
/// can leave the EOS queued here; past this the producer stops anyway.
const EOS_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffers the proposed memfd pool keeps at least.
const POOL_MIN_BUFFERS: u32 = 2;
/// Memory kinds that cross as fds. Anything else (VAMemory, GLMemory, ...) would be copied, so
/// the caps query does not offer it: a VA decoder then picks DMABuf output.
const SHAREABLE_FEATURES: [&str; 2] = ["memory:SystemMemory", "memory:DMABuf"];

/// The sticky slot an event fills on the hub (replayed to consumers that join), or None.
fn sticky_kind(event: &gst::EventRef) -> StickyKind {
    match event.view() {
        gst::EventView::StreamStart(_) => StickyKind::StreamStart,
        gst::EventView::Segment(_) => StickyKind::Segment,
        gst::EventView::Tag(_) => StickyKind::Tags,
        gst::EventView::Eos(_) => StickyKind::Eos,
        gst::EventView::FlushStop(_) => StickyKind::FlushStop,
        _ => StickyKind::None,
    }
}

/// `caps` without the structures whose memory cannot cross as an fd.
fn shareable_caps(caps: &gst::CapsRef) -> gst::Caps {
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

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<String>,
    /// An already-connected socket to serve one consumer on, instead of listening.
    fd: i32,
    max_held: u32,
    wait_for_connection: bool,
    forward_messages: bool,
    mode: Mode,
    ack_timeout_ms: u32,
    max_held_total: u32,
    max_queued: u32,
    slow_policy: SlowPolicyProp,
    sync_method: SyncMethodProp,
    register_fds: bool,
    yield_after_send: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_path: None,
            fd: -1,
            max_held: DEFAULT_MAX_HELD,
            wait_for_connection: false,
            forward_messages: true,
            mode: Mode::Independent,
            ack_timeout_ms: DEFAULT_ACK_TIMEOUT_MS,
            max_held_total: 0,
            max_queued: DEFAULT_MAX_QUEUED,
            slow_policy: SlowPolicyProp::Auto,
            sync_method: SyncMethodProp::Latest,
            register_fds: true,
            yield_after_send: true,
        }
    }
}

/// Per-stream resources of the streaming thread.
#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started {
        control: JoinHandle<()>,
        copy_pool: Option<MemfdBufferPool>,
        /// The per-frame memory list, reused so that a frame allocates nothing.
        memories: MemoryList,
        /// Whether upstream is live, asked once per stream: a live stream never waits for a
        /// slow consumer (that consumer skips frames instead).
        upstream_live: Option<bool>,
        /// `yield-after-send`, as set when the stream started.
        yield_after_send: bool,
        /// The buffer sent from `preroll()`, which `render()` then gets again and must not
        /// send twice.
        prerolled: Option<PrerolledBuffer>,
    },
}

/// Which buffer went out as the preroll frame. Pool buffers come back with the same address,
/// so the timestamp tells a recycled buffer from the prerolled one.
#[derive(Clone, Copy, PartialEq, Eq)]
struct PrerolledBuffer {
    address: usize,
    pts: Option<gst::ClockTime>,
}

impl PrerolledBuffer {
    fn of(buffer: &gst::BufferRef) -> PrerolledBuffer {
        PrerolledBuffer {
            address: buffer.as_ptr() as usize,
            pts: buffer.pts(),
        }
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

#[derive(Default)]
pub struct FdlinkSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// Kept apart from `state` so `unlock()` never waits for the streaming thread.
    hub: Mutex<Option<Arc<Hub>>>,
    /// Forwards this pipeline's messages to the consumers while started.
    bus_watch: Mutex<Option<BusWatch>>,
    /// Consumers' messages this element posted: not sent back to them.
    reposted: Arc<Reposted>,
    /// Set at a preroll barrier (going to PAUSED, a flush), cleared when BaseSink prerolls:
    /// meanwhile frames pass straight through while followers have not prerolled.
    awaiting_preroll: AtomicBool,
    /// Runs consumers' upstream events and queries.
    requests: RequestPool,
    /// Nanoseconds spent making the fallback copies (those `bytes-copied` counts) since
    /// start: with it the stats tell the copy's bandwidth.
    copy_ns: AtomicU64,
}

/// Why a frame goes out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// Rendered in PLAYING.
    Playing,
    /// The frame this pipeline prerolls on (kept for consumers that join while paused).
    Preroll,
    /// Passed through, not prerolled on, while following consumers preroll.
    PassThrough,
}

impl FdlinkSink {
    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.lock().unwrap().clone()
    }

    fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.lock().unwrap().ack_timeout_ms as u64)
    }

    /// wait-for-connection: waits for the first consumer only, so a stream never blocks
    /// forever because the last consumer left. False when there was nothing to wait for.
    fn wait_for_first_consumer(&self, hub: &Hub) -> Result<bool, gst::FlowError> {
        if !self.settings.lock().unwrap().wait_for_connection || hub.stats().0.consumers_total > 0 {
            return Ok(false);
        }
        gst::debug!(CAT, imp = self, "waiting for the first consumer");
        if hub.wait_for_consumer() {
            Ok(true)
        } else {
            Err(gst::FlowError::Flushing)
        }
    }

    fn stats_structure(&self) -> gst::Structure {
        let mut s = gst::Structure::builder("application/x-fdlinksink-stats");
        let (stats, consumers, held) = match self.hub() {
            Some(hub) => hub.stats(),
            None => Default::default(),
        };
        s = s
            .field("frames-in", stats.frames_in)
            .field("frames-sent", stats.frames_sent)
            .field("frames-zero-copy", stats.frames_zero_copy)
            .field("frames-copied", stats.frames_copied)
            .field("bytes-copied", stats.bytes_copied)
            .field("copy-time-us", self.copy_ns.load(Ordering::Relaxed) / 1000)
            .field("frames-dropped", stats.frames_dropped)
            .field("slow-copies", stats.slow_copies)
            .field("frames-without-consumer", stats.frames_without_consumer)
            .field("releases", stats.releases)
            .field("consumers", consumers)
            .field("consumers-total", stats.consumers_total)
            .field("buffers-held", held)
            .field("fds-sent", stats.fds_sent)
            .field("files-registered", stats.files_registered)
            .field("files-retired", stats.files_retired);
        let clients = self.hub().map(|h| h.consumer_stats()).unwrap_or_default();
        let clients: Vec<glib::SendValue> = clients
            .into_iter()
            .map(|c| {
                gst::Structure::builder("client")
                    .field("id", c.id)
                    .field("pid", c.pid)
                    .field("frames-sent", c.frames_sent)
                    .field("frames-dropped", c.frames_dropped)
                    .field("frames-copied", c.frames_copied)
                    .field("buffers-held", c.held)
                    .field("buffers-queued", c.queued)
                    .field("releases", c.releases)
                    .field("bytes-sent", c.bytes_sent)
                    .field("idle-ms", c.idle_ms)
                    .field("release-avg-us", c.release_avg_us)
                    .field("fds-sent", c.fds_sent)
                    .field("files-registered", c.files_registered)
                    .build()
                    .to_send_value()
            })
            .collect();
        s = s.field("clients", gst::Array::from_values(clients));
        s.build()
    }

    /// This pipeline's base time on CLOCK_MONOTONIC: where its running time 0 is on the clock
    /// both processes share (one clock sample per call).
    fn base_time_monotonic(&self) -> u64 {
        let obj = self.obj();
        let (Some(clock), Some(base)) = (obj.clock(), obj.base_time()) else {
            return TIME_NONE;
        };
        let offset = clock::clock_to_monotonic_offset(&clock);
        clock::running_to_monotonic(gst::ClockTime::ZERO, base, offset).unwrap_or(TIME_NONE)
    }

    /// Encodes a buffer packet for `wire` (timestamps, flags and layout from `meta_src`) into
    /// the state's packet buffer and offers it to the consumers.
    fn send_frame(
        &self,
        hub: &Hub,
        state: &mut State,
        meta_src: &gst::BufferRef,
        out: Outgoing<'_>,
        slow_copy_for: Option<&[u64]>,
        sending: Sending,
    ) -> Result<(u64, Vec<u64>), gst::FlowError> {
        let State::Started {
            memories,
            upstream_live,
            ..
        } = state
        else {
            return Err(gst::FlowError::Flushing);
        };
        let live = upstream_live.unwrap_or(true);
        let buffer_id = hub.next_buffer_id();
        let time = |t: Option<gst::ClockTime>| t.map_or(TIME_NONE, |t| t.nseconds());
        let header = BufferHeader {
            buffer_id,
            pts: time(meta_src.pts()),
            dts: time(meta_src.dts()),
            duration: time(meta_src.duration()),
            offset: meta_src.offset(),
            offset_end: meta_src.offset_end(),
            flags: meta_src.flags().bits(),
            sent_at: clock::monotonic_now(),
            // Prerolling, the pipeline has no base time yet (it gets one when it plays): the
            // consumer shows the frame as it arrives.
            base_time: if sending != Sending::Playing {
                TIME_NONE
            } else {
                self.base_time_monotonic()
            },
            memories: out.memories,
            video: memory::video_layout(meta_src),
        };
        let frame = Frame {
            id: buffer_id,
            header: &header,
            fds: &out.fds,
            size: out.wire.size() as u64,
            keyframe: !meta_src.flags().contains(gst::BufferFlags::DELTA_UNIT),
            slow_copy: slow_copy_for.is_some(),
            preroll: sending == Sending::Preroll,
            reads_releases: !live && sending == Sending::Playing,
        };
        let wants_copy = if let Some(consumers) = slow_copy_for {
            hub.send_copy(consumers, &frame, out.wire.clone());
            gst::trace!(
                CAT,
                imp = self,
                "buffer {buffer_id}: copy for {consumers:?}"
            );
            Vec::new()
        } else {
            let sent = hub.send_buffer(&frame, out.wire.clone(), out.copied_bytes);
            gst::trace!(
                CAT,
                imp = self,
                "buffer {buffer_id} sent to {} consumers",
                sent.sent_to
            );
            sent.wants_copy
        };
        // The memory list goes back for the next frame.
        *memories = header.memories;
        Ok((buffer_id, wants_copy))
    }

    /// The reused memory list of the state (empty, with its capacity).
    fn take_memories(&self, state: &mut State) -> MemoryList {
        match state {
            State::Started { memories, .. } => {
                let mut m = std::mem::take(memories);
                m.clear();
                m
            }
            State::Stopped => MemoryList::new(),
        }
    }

    /// Copies `buffer` into the memfd pool: it is not shareable as it is, or slow-policy=copy
    /// wants a copy. `copied_bytes` of the result says which. The copy is described in
    /// `memories` (the state's reused list).
    fn copy_out<'a>(
        &self,
        state: &mut State,
        registry: Option<&memory::FileRegistry>,
        buffer: &gst::BufferRef,
        mut memories: MemoryList,
        copy: &'a mut Option<gst::Buffer>,
        for_slow_consumer: bool,
    ) -> Result<Outgoing<'a>, gst::FlowError> {
        let pool = self.copy_pool(state, buffer.size())?;
        // May wait until a consumer releases a pool buffer: not part of the copy's time.
        let dst = pool.acquire_buffer(None)?;
        let started = std::time::Instant::now();
        let copy = copy.insert(memory::copy_into(buffer, dst)?);
        if !for_slow_consumer {
            self.copy_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        let mut fds = FdList::new();
        if let Err(r) = memory::describe_buffer(copy, registry, &mut memories, &mut fds) {
            gst::element_imp_error!(
                self,
                gst::ResourceError::Failed,
                ("memfd copy is not shareable: {r:?}")
            );
            return Err(gst::FlowError::Error);
        }
        Ok(Outgoing {
            wire: copy,
            memories,
            fds,
            copied_bytes: (!for_slow_consumer).then_some(buffer.size()),
        })
    }

    fn copy_pool(&self, state: &mut State, size: usize) -> Result<MemfdBufferPool, gst::FlowError> {
        let State::Started { copy_pool, .. } = state else {
            return Err(gst::FlowError::Flushing);
        };
        if let Some(pool) = copy_pool
            && pool
                .config()
                .params()
                .is_some_and(|(_, s, _, _)| s as usize >= size)
        {
            return Ok(pool.clone());
        }
        if let Some(old) = copy_pool.take() {
            let _ = old.set_active(false);
        }
        let caps = gst::Caps::new_empty_simple("application/x-fdlink-copy");
        let pool =
            MemfdBufferPool::new_configured(&caps, size as u32, 2, 0, false).map_err(|e| {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::NoSpaceLeft,
                    ("cannot create memfd copy pool of {size}-byte buffers: {e}")
                );
                gst::FlowError::Error
            })?;
        *copy_pool = Some(pool.clone());
        Ok(pool)
    }

    fn forward_event(&self, event: &gst::Event) {
        let Some(hub) = self.hub() else { return };
        let sticky = sticky_kind(event);
        let p = control::event_to_packet(event, |field| {
            gst::debug!(
                CAT,
                imp = self,
                "{:?} event: dropping field {field}, it has no string form",
                event.type_()
            );
        });
        let base_time = self.base_time_monotonic();
        self.send_to_consumers(
            &hub,
            Packet::Event {
                event: p,
                base_time,
            },
            sticky,
        );
    }

    /// Encodes a control packet and sends it to every consumer, in stream order.
    fn send_to_consumers(&self, hub: &Hub, packet: Packet<BorrowedFd<'_>>, sticky: StickyKind) {
        let mut bytes = Vec::new();
        match packet.encode(&mut bytes) {
            Ok(()) => hub.send_control(bytes, sticky, false),
            Err(e) => gst::warning!(CAT, imp = self, "not sending {packet:?}: {e}"),
        }
    }

    /// Sends this pipeline's error, warning, info and element messages to the consumers.
    fn watch_bus(&self) {
        let weak = self.obj().downgrade();
        let reposted = self.reposted.clone();
        let watch = BusWatch::new(self.obj().upcast_ref(), move |message| {
            let Some(p) =
                session::crossing_packet(message, &reposted, control::forwards_to_consumers)
            else {
                return;
            };
            let Some(obj) = weak.upgrade() else { return };
            let imp = obj.imp();
            if let Some(hub) = imp.hub() {
                imp.send_to_consumers(&hub, Packet::Message(p), StickyKind::None);
            }
        });
        *self.bus_watch.lock().unwrap() = watch;
    }

    /// The caps every consumer's pipeline can take, intersected with `caps`. A consumer whose
    /// answer would leave nothing is left out (it fails on its own when the caps come), so one
    /// consumer cannot make the producer fail to negotiate.
    fn consumers_caps(&self, hub: &Hub, caps: gst::Caps) -> gst::Caps {
        let timeout = self.ack_timeout();
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
                    imp = self,
                    "a consumer takes only {theirs}, nothing of {result}: leaving it out"
                );
            } else {
                result = both;
            }
        }
        result
    }
}

impl FdlinkSink {
    /// Tells the consumers the state this pipeline reached (or, PLAYING → PAUSED, is going
    /// to).
    fn send_state(&self, state: gst::State) {
        let Some(hub) = self.hub() else { return };
        let mode = self.settings.lock().unwrap().mode;
        let p = Packet::State(session::state_packet(state, mode));
        // PAUSED is a preroll barrier: a follower that prerolls after it lets this
        // pipeline's own preroll complete (wait_prerolled).
        let kind = if state == gst::State::Paused {
            StickyKind::PausedState
        } else {
            StickyKind::State
        };
        self.send_to_consumers(&hub, p, kind);
    }

    /// BaseSink's `preroll` (which gstreamer-rs does not wrap, see `class_init`): the
    /// first buffer of a paused pipeline, and of every preroll after a flush.
    fn preroll(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(hub) = self.hub() else {
            return Err(gst::FlowError::Flushing);
        };
        // Like a video sink showing its preroll frame: consumers see where a paused producer
        // stands, and consumers that join while it is paused get this frame too.
        self.awaiting_preroll.store(false, Ordering::SeqCst);
        let sent = self.send(&hub, buffer, Sending::Preroll)?;
        if let State::Started { prerolled, .. } = &mut *self.state.lock().unwrap() {
            *prerolled = Some(PrerolledBuffer::of(buffer));
        }
        let Some(buffer_id) = sent else {
            return Ok(gst::FlowSuccess::Ok);
        };
        // This pipeline's preroll (its ASYNC_DONE) completes once the consumers that follow
        // it (mode=follow) have prerolled on this frame too.
        let timeout = self.ack_timeout();
        match hub.wait_prerolled(timeout) {
            PrerollWait::Done => Ok(gst::FlowSuccess::Ok),
            PrerollWait::Flushing => Err(gst::FlowError::Flushing),
            PrerollWait::TimedOut(ids) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "following consumers {ids:?} did not preroll on buffer {buffer_id} within ack-timeout ({} ms); prerolling without them",
                    timeout.as_millis()
                );
                Ok(gst::FlowSuccess::Ok)
            }
        }
    }

    /// A buffer probe on the sink pad: while this pipeline prerolls and a following
    /// consumer has not, the buffer goes straight to the consumers and BaseSink does not see
    /// it, as a pipeline keeps flowing until its last sink prerolled: the consumer's
    /// decoder may need several frames before its sink has one to preroll on.
    fn pass_through(&self, info: &mut gst::PadProbeInfo) -> gst::PadProbeReturn {
        if !self.awaiting_preroll.load(Ordering::SeqCst) {
            return gst::PadProbeReturn::Ok;
        }
        let Some(hub) = self.hub() else {
            return gst::PadProbeReturn::Ok;
        };
        // The first consumer may be a follower: it decides whether this frame prerolls here.
        if let Err(e) = self.wait_for_first_consumer(&hub) {
            info.flow_res = Err(e);
            return gst::PadProbeReturn::Handled;
        }
        let timeout = self.ack_timeout();
        match hub.wait_pass_through(timeout) {
            PassThrough::Preroll => return gst::PadProbeReturn::Ok,
            PassThrough::GaveUp(id) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "following consumer {id} holds max-held buffers and has not prerolled after ack-timeout ({} ms); prerolling without it",
                    timeout.as_millis()
                );
                return gst::PadProbeReturn::Ok;
            }
            PassThrough::Flushing => {
                info.flow_res = Err(gst::FlowError::Flushing);
                return gst::PadProbeReturn::Handled;
            }
            PassThrough::Send => {}
        }
        let Some(gst::PadProbeData::Buffer(buffer)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        gst::log!(
            CAT,
            imp = self,
            "passing {:?} through while following consumers preroll",
            buffer.pts()
        );
        if let Err(e) = self.send(&hub, buffer, Sending::PassThrough) {
            info.flow_res = Err(e);
        }
        gst::PadProbeReturn::Handled
    }

    /// Sends a buffer to the consumers; returns its buffer id, None when it went nowhere.
    fn send(
        &self,
        hub: &Hub,
        buffer: &gst::Buffer,
        sending: Sending,
    ) -> Result<Option<u64>, gst::FlowError> {
        // latest-keyframe: the frame goes into the backlog for consumers to come; the
        // preroll frame is kept for consumers that join while this pipeline is paused.
        if !hub.has_ready_consumer()
            && !self.wait_for_first_consumer(hub)?
            && !hub.keeps_backlog()
            && sending != Sending::Preroll
        {
            hub.count_frame_without_consumer();
            return Ok(None);
        }
        let mut state = self.state.lock().unwrap();
        let (live, yield_after_send) = match &mut *state {
            State::Started {
                upstream_live,
                yield_after_send,
                ..
            } => (
                *upstream_live.get_or_insert_with(|| {
                    let mut q = gst::query::Latency::new();
                    let live = self.obj().sink_pad().peer_query(&mut q) && q.result().0;
                    gst::debug!(CAT, imp = self, "upstream is live: {live}");
                    live
                }),
                *yield_after_send,
            ),
            State::Stopped => return Err(gst::FlowError::Flushing),
        };
        // Passing through, wait_pass_through waited for the followers' room; the preroll
        // frame goes to followers past max-held (Frame::preroll). The others skip what they
        // have no room for: a paused pipeline has nothing to wait for.
        if sending == Sending::Playing && !hub.wait_for_room(live) {
            return Err(gst::FlowError::Flushing);
        }
        let mut descs = self.take_memories(&mut state);
        let mut fds = FdList::new();
        let registry = hub.file_registry();
        let (buffer_id, wants_copy) =
            match memory::describe_buffer(buffer, registry, &mut descs, &mut fds) {
                Ok(()) => {
                    let out = Outgoing {
                        wire: buffer,
                        memories: descs,
                        fds,
                        copied_bytes: None,
                    };
                    self.send_frame(hub, &mut state, buffer, out, None, sending)?
                }
                Err(reason) => {
                    drop(fds);
                    gst::trace!(CAT, imp = self, "copying buffer: {reason:?}");
                    let mut copy = None;
                    let out =
                        self.copy_out(&mut state, registry, buffer, descs, &mut copy, false)?;
                    self.send_frame(hub, &mut state, buffer, out, None, sending)?
                }
            };
        if !wants_copy.is_empty() {
            // slow-policy=copy: consumers at max-held get the frame in the memfd pool.
            let mut copy = None;
            let memories = self.take_memories(&mut state);
            let out = self.copy_out(&mut state, registry, buffer, memories, &mut copy, true)?;
            self.send_frame(hub, &mut state, buffer, out, Some(&wants_copy), sending)?;
        }
        drop(state);
        if live && yield_after_send && sending == Sending::Playing {
            // A unix socket wakes its reader "synchronously": the kernel may put the
            // consumer on this CPU, expecting the sender to sleep now. A live source does
            // not sleep but makes its next frame first (videotestsrc, a software decoder),
            // and the consumer would wait for that; yielding lets it take the frame now.
            std::thread::yield_now();
        }
        Ok(Some(buffer_id))
    }

    /// Runs a consumer's request against this pipeline. Events and queries go upstream from
    /// the request threads (see `requests`): they may wait on the streaming thread (a
    /// flushing seek), which may wait on releases that only the control thread reads.
    fn serve(
        &self,
        id: u64,
        pid: Option<i32>,
        conn: Arc<fdlink::transport::Connection>,
        request: Request,
    ) {
        let obj = self.obj().clone();
        match request {
            Request::Message(m) => {
                if !self.settings.lock().unwrap().forward_messages {
                    return;
                }
                let who = format!("consumer {id} (pid {})", pid.unwrap_or(0));
                if !self.reposted.post(obj.upcast_ref(), &m, &who) {
                    gst::debug!(CAT, imp = self, "dropping unreadable message from {who}");
                }
            }
            Request::UpstreamEvent(p) => {
                let Some(event) = control::event_from_packet(&p) else {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "dropping unreadable event from consumer {id}"
                    );
                    return;
                };
                gst::debug!(
                    CAT,
                    imp = self,
                    "consumer {id} sends {:?} upstream",
                    event.type_()
                );
                let ty = event.type_();
                if let Err(e) = self.requests.submit(id, move || {
                    obj.sink_pad().push_event(event);
                }) {
                    gst::warning!(
                        CAT,
                        imp = self,
                        "dropping consumer {id}'s {ty:?} event: {e}"
                    );
                }
            }
            Request::State(st) => {
                let mode = self.settings.lock().unwrap().mode;
                if !session::follow_peer(obj.upcast_ref(), mode, &st) {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::StateChange,
                        ("fdlinksink mode=follow and consumer {id}'s fdlinksrc mode=follow: each would follow the other; set one of them to mode=independent")
                    );
                }
            }
            Request::Query(p) => {
                let (query_id, refused_conn) = (p.id, conn.clone());
                let submitted = self.requests.submit(id, move || {
                    let (answered, structure) = match control::query_from_packet(&p) {
                        Some(mut q) => {
                            let answered = obj.sink_pad().peer_query(q.get_mut().unwrap());
                            if answered
                                && let gst::QueryViewMut::Latency(l) =
                                    q.get_mut().unwrap().view_mut()
                            {
                                // The latency this pipeline renders with, which may exceed
                                // what its upstream alone needs.
                                let (live, min, max) = l.result();
                                l.set(live, min.max(obj.latency()), max);
                            }
                            (
                                answered,
                                q.structure().map_or_else(String::new, |s| s.to_string()),
                            )
                        }
                        None => (false, String::new()),
                    };
                    send_query_reply(&conn, p.id, answered, structure);
                });
                if let Err(e) = submitted {
                    // Answered at once, so the consumer's query fails now, not at its
                    // ack-timeout.
                    gst::warning!(CAT, imp = self, "refusing consumer {id}'s query: {e}");
                    send_query_reply(&refused_conn, query_id, false, String::new());
                }
            }
        }
    }
}

/// Answers a consumer's query (`answered` false: this pipeline could not).
fn send_query_reply(
    conn: &fdlink::transport::Connection,
    id: u32,
    answered: bool,
    structure: String,
) {
    let reply = Packet::QueryReply(fdlink::protocol::QueryReplyPacket {
        id,
        answered,
        structure,
    });
    let _ = conn.send_packet(&reply, Some(Duration::from_secs(1)));
}

#[glib::object_subclass]
impl ObjectSubclass for FdlinkSink {
    const NAME: &'static str = "GstFdlinkSink";
    type Type = super::FdlinkSink;
    type ParentType = gst_base::BaseSink;

    fn class_init(klass: &mut Self::Class) {
        // SAFETY: the class struct of a BaseSink subclass starts with GstBaseSinkClass
        // (glib's ClassStruct is repr(C) with the parent class first), and class_init runs
        // once, before any instance exists.
        let base =
            unsafe { &mut *(klass as *mut Self::Class as *mut gst_base::ffi::GstBaseSinkClass) };
        base.preroll = Some(preroll_trampoline);
    }
}

/// BaseSink's `preroll` virtual method, calling `FdlinkSink::preroll`.
unsafe extern "C" fn preroll_trampoline(
    sink: *mut gst_base::ffi::GstBaseSink,
    buffer: *mut gst::ffi::GstBuffer,
) -> gst::ffi::GstFlowReturn {
    use glib::translate::IntoGlib;
    // SAFETY: BaseSink calls this on an instance of our type (the only class it is set on)
    // with a buffer it holds a reference to for the duration of the call.
    let (imp, buffer) = unsafe {
        let instance = &*(sink as *mut <FdlinkSink as ObjectSubclass>::Instance);
        (instance.imp(), gst::Buffer::from_glib_borrow(buffer))
    };
    let ret: gst::FlowReturn = imp.preroll(&buffer).into();
    ret.into_glib()
}

impl ObjectImpl for FdlinkSink {
    fn constructed(&self) {
        self.parent_constructed();
        // The last sample would pin one more upstream buffer (a decoder surface) for nothing.
        self.obj().set_enable_last_sample(false);
        let weak = self.obj().downgrade();
        self.obj()
            .sink_pad()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                weak.upgrade()
                    .map_or(gst::PadProbeReturn::Ok, |obj| obj.imp().pass_through(info))
            });
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            vec![
                glib::subclass::Signal::builder("client-added")
                    .param_types([u64::static_type(), i32::static_type()])
                    .build(),
                glib::subclass::Signal::builder("client-removed")
                    .param_types([u64::static_type(), String::static_type()])
                    .build(),
                glib::subclass::Signal::builder("remove")
                    .param_types([u64::static_type()])
                    .return_type::<bool>()
                    .action()
                    .class_handler(|args| {
                        let obj = args[0].get::<super::FdlinkSink>().expect("signal arg");
                        let id = args[1].get::<u64>().expect("signal arg");
                        Some(obj.imp().hub().is_some_and(|h| h.remove(id)).to_value())
                    })
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("Path of the AF_UNIX socket consumers connect to (a stale file left by a dead producer is replaced; one a live process listens on is not)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("fd")
                    .nick("Inherited socket")
                    .blurb("An already-connected AF_UNIX SOCK_SEQPACKET socket (e.g. one end of a socketpair a launcher made before dropping privileges) to serve one consumer on, instead of socket-path; -1: listen on socket-path. The element works on a duplicate; the fd stays the caller's")
                    .minimum(-1)
                    .default_value(-1)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-held")
                    .nick("Max held buffers per consumer")
                    .blurb("Buffers one consumer may hold unreleased. At the limit, a live stream skips the frame for that consumer; a non-live one first waits up to 1 s for a release. Upstream is asked for pools of at least max-held + 1 buffers")
                    .minimum(1)
                    .maximum(1024)
                    .default_value(DEFAULT_MAX_HELD)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-held-total")
                    .nick("Max held buffers, all consumers")
                    .blurb("Buffers all consumers together may hold unreleased (0 = no limit). At the limit frames are skipped for everyone (block: the producer waits), so upstream's pool never runs dry because of consumers. When set, upstream is asked for pools of at least max-held-total + 1 buffers")
                    .maximum(65536)
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder::<SlowPolicyProp>("slow-policy")
                    .nick("Slow consumer policy")
                    .blurb("What to do with a consumer at max-held, or with max-queued buffers waiting for its socket: auto (drop for live upstream, otherwise wait up to 1 s then skip it until it releases), drop (skip the frame; a full queue drops its oldest), block (lossless: the producer waits), disconnect, or copy (at max-held it gets the frame copied into the memfd pool, so upstream's pool keeps its buffers and the consumer loses nothing until max-held + max-queued copies)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-queued")
                    .nick("Max queued buffers per consumer")
                    .blurb("Buffers that may wait in the producer for room in one consumer's socket (beyond the kernel's own queue of net.unix.max_dgram_qlen datagrams); past it slow-policy applies (drop: the oldest queued is dropped). Queued buffers count as held")
                    .maximum(4096)
                    .default_value(DEFAULT_MAX_QUEUED)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder::<SyncMethodProp>("sync-method")
                    .nick("Sync method")
                    .blurb("Where a new consumer starts, for encoded streams: latest (next buffer), next-keyframe (skip delta units until a keyframe), latest-keyframe (the latest keyframe and the buffers since, at once, from a backlog of up to 256 buffers that the producer keeps)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("register-fds")
                    .nick("Register fds once")
                    .blurb("Send each memfd or dmabuf to a consumer once, then name it by an id (register-once fds, as PipeWire does): pooled buffers cross without SCM_RIGHTS and the consumer keeps them mapped. A file is retired when upstream frees its last memory of it. false: every buffer packet carries its fds")
                    .default_value(true)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("yield-after-send")
                    .nick("Yield after send")
                    .blurb("With a live upstream, give up the CPU (sched_yield) after sending each frame, so that a consumer the kernel woke on this CPU (a unix socket wakes its reader there, expecting the sender to sleep) takes the frame at once rather than after upstream has made its next one. One syscall per frame; never with a non-live upstream, whose throughput comes first")
                    .default_value(true)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("wait-for-connection")
                    .nick("Wait for connection")
                    .blurb("Without any consumer, wait for one (true) or drop frames (false); once consumers came and went, frames are dropped again until the next one")
                    .default_value(false)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("forward-messages")
                    .nick("Forward consumer messages")
                    .blurb("Post the errors, warnings, infos and element messages of consumer pipelines on this pipeline's bus, naming the consumer and the original source")
                    .default_value(true)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder::<Mode>("mode")
                    .nick("State mode")
                    .blurb("independent: this pipeline runs its own state; follow: this (producer) pipeline goes to the PAUSED/PLAYING state of the consumer pipelines (the latest change of any consumer wins)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("ack-timeout")
                    .nick("Ack timeout (ms)")
                    .blurb("How long a query this producer asks its consumers (caps, accept-caps) waits for their replies; a consumer that does not answer in time is left out of the answer")
                    .minimum(1)
                    .default_value(DEFAULT_ACK_TIMEOUT_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("num-clients")
                    .nick("Number of clients")
                    .blurb("Consumers connected now (handshake done)")
                    .read_only()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames-in, frames-sent, frames-zero-copy, frames-copied, bytes-copied, copy-time-us (time spent copying those frames, not counting a wait for a free pool buffer: bytes-copied / copy-time-us is the copy's bandwidth), frames-dropped, slow-copies, frames-without-consumer, releases, consumers, consumers-total, buffers-held, fds-sent (fds sent with buffer packets, all consumers), files-registered (files registered with a consumer, one per file and consumer), files-retired, and clients: one structure per consumer (id, pid, frames-sent, frames-dropped, frames-copied, buffers-held, buffers-queued, releases, bytes-sent, idle-ms, release-avg-us: mean time from send to release, fds-sent, files-registered: files it keeps registered now)")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => settings.socket_path = value.get().expect("type checked upstream"),
            "fd" => settings.fd = value.get().expect("type checked upstream"),
            "max-held" => settings.max_held = value.get().expect("type checked upstream"),
            "wait-for-connection" => {
                settings.wait_for_connection = value.get().expect("type checked upstream")
            }
            "forward-messages" => {
                settings.forward_messages = value.get().expect("type checked upstream")
            }
            "mode" => settings.mode = value.get().expect("type checked upstream"),
            "max-held-total" => {
                settings.max_held_total = value.get().expect("type checked upstream")
            }
            "slow-policy" => settings.slow_policy = value.get().expect("type checked upstream"),
            "max-queued" => settings.max_queued = value.get().expect("type checked upstream"),
            "sync-method" => settings.sync_method = value.get().expect("type checked upstream"),
            "ack-timeout" => settings.ack_timeout_ms = value.get().expect("type checked upstream"),
            "register-fds" => settings.register_fds = value.get().expect("type checked upstream"),
            "yield-after-send" => {
                settings.yield_after_send = value.get().expect("type checked upstream")
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "socket-path" => self.settings.lock().unwrap().socket_path.to_value(),
            "fd" => self.settings.lock().unwrap().fd.to_value(),
            "max-held" => self.settings.lock().unwrap().max_held.to_value(),
            "wait-for-connection" => self.settings.lock().unwrap().wait_for_connection.to_value(),
            "forward-messages" => self.settings.lock().unwrap().forward_messages.to_value(),
            "mode" => self.settings.lock().unwrap().mode.to_value(),
            "max-held-total" => self.settings.lock().unwrap().max_held_total.to_value(),
            "slow-policy" => self.settings.lock().unwrap().slow_policy.to_value(),
            "max-queued" => self.settings.lock().unwrap().max_queued.to_value(),
            "sync-method" => self.settings.lock().unwrap().sync_method.to_value(),
            "ack-timeout" => self.settings.lock().unwrap().ack_timeout_ms.to_value(),
            "register-fds" => self.settings.lock().unwrap().register_fds.to_value(),
            "yield-after-send" => self.settings.lock().unwrap().yield_after_send.to_value(),
            "num-clients" => self.hub().map_or(0, |h| h.num_consumers()).to_value(),
            "stats" => self.stats_structure().to_value(),
            _ => unimplemented!(),
        }
    }
}

impl GstObjectImpl for FdlinkSink {}

impl ElementImpl for FdlinkSink {
    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if matches!(
            transition,
            gst::StateChange::ReadyToPaused | gst::StateChange::PlayingToPaused
        ) {
            // A preroll barrier (see pass_through).
            self.awaiting_preroll.store(true, Ordering::SeqCst);
        }
        if transition == gst::StateChange::PlayingToPaused {
            // Before BaseSink's change: it wakes the streaming thread out of its clock wait
            // to preroll on the buffer it holds, and that preroll frame must follow the
            // barrier on the wire (a follower pauses first, then prerolls on it), and must
            // find it counted (or wait_prerolled would not wait for the followers).
            self.send_state(session::destination(self.obj().upcast_ref()));
        }
        let result = self.parent_change_state(transition)?;
        match transition {
            gst::StateChange::ReadyToPaused => {
                self.watch_bus();
                self.send_state(gst::State::Paused);
            }
            gst::StateChange::PausedToPlaying => self.send_state(gst::State::Playing),
            gst::StateChange::PausedToReady => *self.bus_watch.lock().unwrap() = None,
            _ => {}
        }
        Ok(result)
    }

    fn send_event(&self, event: gst::Event) -> bool {
        let latency = matches!(event.view(), gst::EventView::Latency(_));
        let handled = self.parent_send_event(event);
        // The pipeline configured a new latency: consumers ask for it again.
        if latency && let Some(hub) = self.hub() {
            let m = gst::message::Latency::builder().src(&*self.obj()).build();
            if let Some(p) = control::message_to_packet(&m) {
                self.send_to_consumers(&hub, Packet::Message(p), StickyKind::None);
            }
        }
        handled
    }

    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "fdlink sink",
                "Sink/Network",
                "Serves buffers zero-copy to fdlinksrc elements in other processes (memfd and dmabuf over SCM_RIGHTS)",
                "fdlink developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &gst::Caps::new_any(),
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for FdlinkSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        // The stats start again with the hub made below.
        self.copy_ns.store(0, Ordering::Relaxed);
        let (listener, inherited, endpoint) = if settings.fd >= 0 {
            let conn = fdlink::transport::Connection::inherit(settings.fd).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenReadWrite,
                    ("fd {}: {e}", settings.fd)
                )
            })?;
            (None, Some(conn), format!("inherited fd {}", settings.fd))
        } else {
            let Some(path) = settings.socket_path.map(PathBuf::from) else {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("socket-path is not set (nor fd)")
                ));
            };
            let listener = Listener::bind(&path).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenReadWrite,
                    ("cannot listen on {}: {e}", path.display())
                )
            })?;
            (Some(listener), None, path.display().to_string())
        };
        let obj = self.obj().downgrade();
        let limits = Limits {
            max_held: settings.max_held,
            max_held_total: settings.max_held_total,
            max_queued: settings.max_queued,
            policy: settings.slow_policy.into(),
            sync_method: settings.sync_method.into(),
            slow_wait: SLOW_CONSUMER_WAIT,
        };
        let hub = Hub::new(limits, settings.register_fds, move |ev| {
            let Some(obj) = obj.upgrade() else { return };
            match ev {
                HubEvent::ConsumerAdded { id, pid } => {
                    gst::info!(CAT, obj = obj, "consumer {id} connected (pid {pid:?})");
                    obj.notify("num-clients");
                    obj.emit_by_name::<()>("client-added", &[&id, &pid.unwrap_or(0)]);
                }
                HubEvent::ConsumerRemoved { id, reason } => {
                    gst::info!(CAT, obj = obj, "consumer {id} removed: {reason}");
                    obj.notify("num-clients");
                    obj.emit_by_name::<()>("client-removed", &[&id, &reason.kind()]);
                }
                HubEvent::Warning(msg) => gst::warning!(CAT, obj = obj, "{msg}"),
                HubEvent::Prerolled {
                    id,
                    buffer_id,
                    barriers,
                } => gst::debug!(
                    CAT,
                    obj = obj,
                    "consumer {id} prerolled at buffer {buffer_id}, after {barriers} preroll barriers"
                ),
                HubEvent::Request {
                    id,
                    pid,
                    conn,
                    request,
                } => obj.imp().serve(id, pid, conn, request),
            }
        })
        .map_err(|e| gst::error_msg!(gst::ResourceError::Failed, ("{e}")))?;
        let control_hub = hub.clone();
        let control = std::thread::Builder::new()
            .name("fdlinksink-ctl".into())
            .spawn(move || {
                control_hub.run_control(listener.as_ref(), inherited);
                // The listener drops here, unlinking the socket path.
            })
            .map_err(|e| {
                gst::error_msg!(gst::ResourceError::Failed, ("cannot spawn thread: {e}"))
            })?;
        gst::info!(CAT, imp = self, "serving consumers on {endpoint}");
        *self.hub.lock().unwrap() = Some(hub);
        *self.state.lock().unwrap() = State::Started {
            control,
            copy_pool: None,
            memories: MemoryList::new(),
            upstream_live: None,
            yield_after_send: settings.yield_after_send,
            prerolled: None,
        };
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let hub = self.hub.lock().unwrap().take();
        let state = std::mem::take(&mut *self.state.lock().unwrap());
        if let Some(hub) = &hub {
            hub.shutdown();
        }
        if let State::Started {
            control, copy_pool, ..
        } = state
        {
            let _ = control.join();
            if let Some(pool) = copy_pool {
                let _ = pool.set_active(false);
            }
        }
        if let Some(hub) = hub {
            hub.clear();
        }
        gst::info!(CAT, imp = self, "stopped");
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let Some(hub) = self.hub() else {
            return Err(gst::loggable_error!(CAT, "caps before start"));
        };
        let mut bytes = Vec::new();
        Packet::<BorrowedFd<'_>>::Caps(caps.to_string())
            .encode(&mut bytes)
            .map_err(|e| gst::loggable_error!(CAT, "caps do not fit a packet: {e}"))?;
        gst::debug!(CAT, imp = self, "caps {caps}");
        let drm = crate::drm_format::describe_caps(caps);
        if !drm.is_empty() {
            gst::info!(CAT, imp = self, "DMA_DRM format: {drm}");
        }
        hub.send_control(bytes, StickyKind::None, true);
        Ok(())
    }

    fn event(&self, event: gst::Event) -> bool {
        // wait-for-connection: a serialized event before the first frame that a consumer
        // joining later would not get replayed (a gap, custom events, ...) waits for the first
        // consumer as that frame would. Caps and sticky events are replayed to joiners; a
        // flush-stop (StickyKind::FlushStop) never waits, so a flushing seek before any
        // consumer cannot hang on it.
        if event.is_serialized()
            && event.type_() != gst::EventType::Caps
            && sticky_kind(&event) == StickyKind::None
            && let Some(hub) = self.hub()
            && self.wait_for_first_consumer(&hub).is_err()
        {
            return false;
        }
        if event.type_() != gst::EventType::Caps {
            self.forward_event(&event);
        }
        if event.type_() == gst::EventType::FlushStop
            && let State::Started { prerolled, .. } = &mut *self.state.lock().unwrap()
        {
            // The prerolled buffer was flushed away; the hub let go of it with the flush.
            *prerolled = None;
            // A preroll barrier: BaseSink prerolls again after a flush.
            self.awaiting_preroll.store(true, Ordering::SeqCst);
        }
        if let (gst::EventView::Eos(_), Some(hub)) = (event.view(), self.hub()) {
            hub.drain(EOS_DRAIN_TIMEOUT);
        }
        self.parent_event(event)
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let template = self.obj().sink_pad().pad_template_caps();
        let caps = match filter {
            Some(f) => f.intersect_with_mode(&template, gst::CapsIntersectMode::First),
            None => template,
        };
        let caps = shareable_caps(&caps);
        let caps = match self.hub() {
            Some(hub) if hub.num_consumers() > 0 => self.consumers_caps(&hub, caps),
            _ => caps,
        };
        gst::debug!(CAT, imp = self, "caps query (filter {filter:?}): {caps}");
        Some(caps)
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        // GStreamer's default asks for caps without a filter, so a consumer that takes none of
        // these caps would not be left out: ask with the caps themselves.
        if let gst::QueryViewMut::AcceptCaps(q) = query.view_mut() {
            let caps = q.caps_owned();
            let accepted =
                BaseSinkImpl::caps(self, Some(&caps)).is_some_and(|c| caps.is_subset(&c));
            q.set_result(accepted);
            return true;
        }
        BaseSinkImplExt::parent_query(self, query)
    }

    fn propose_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // Upstream pools (decoder surfaces) must have room for what one consumer may hold
        // without the decoder running dry; decoders add this minimum to their own needs.
        let min = {
            let s = self.settings.lock().unwrap();
            let held = if s.max_held_total > 0 {
                s.max_held_total
            } else {
                s.max_held
            };
            (held + 1).max(POOL_MIN_BUFFERS)
        };
        let (caps, need_pool) = query.get_owned();
        if let Some(caps) = &caps
            && let Ok(info) = gst_video::VideoInfo::from_caps(caps)
        {
            let size = info.size() as u32;
            if need_pool {
                match MemfdBufferPool::new_configured(caps, size, min, 0, true) {
                    Ok(pool) => {
                        // Hand it over inactive: upstream configures and activates it.
                        let _ = pool.set_active(false);
                        query.add_allocation_pool(Some(&pool), size, min, 0);
                        gst::debug!(
                            CAT,
                            imp = self,
                            "proposing memfd pool of {size}-byte buffers, at least {min}"
                        );
                    }
                    Err(e) => gst::warning!(CAT, imp = self, "cannot make memfd pool: {e}"),
                }
            } else {
                query.add_allocation_pool(None::<&gst::BufferPool>, size, min, 0);
            }
        }
        query.add_allocation_meta::<gst_video::VideoMeta>(None);
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(hub) = self.hub() else {
            return Err(gst::FlowError::Flushing);
        };
        let prerolled = match &mut *self.state.lock().unwrap() {
            State::Started { prerolled, .. } => prerolled.take(),
            State::Stopped => return Err(gst::FlowError::Flushing),
        };
        if let Some(p) = prerolled {
            // Playing from here: joiners no longer get the preroll frame.
            hub.end_preroll();
            if p == PrerolledBuffer::of(buffer) {
                return Ok(gst::FlowSuccess::Ok);
            }
        }
        self.send(&hub, buffer, Sending::Playing)?;
        Ok(gst::FlowSuccess::Ok)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(hub) = self.hub() {
            hub.set_flushing(true);
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(hub) = self.hub() {
            hub.set_flushing(false);
        }
        Ok(())
    }
}
