//! A producer for programs that are not GStreamer pipelines: serves frames the caller owns
//! (memfds or dmabufs, or plain bytes copied once into a pool of sealed memfds) to any number
//! of fdlinksrc elements and [`crate::consumer`]s, with the fan-out, slow-consumer policies,
//! limits and stats of fdlinksink, from the same hub. The caller learns through a callback
//! when every consumer released a frame, so it can reuse the buffer.
//!
//! ```no_run
//! use fdlink::producer::{Producer, ProducerOptions, Timing};
//! let mut producer = Producer::bind("/tmp/fdlink.sock".as_ref(), ProducerOptions::default())?;
//! producer.set_caps("video/x-raw, format=(string)GRAY8, width=(int)64, height=(int)64, framerate=(fraction)30/1");
//! let frame = vec![128u8; 64 * 64];
//! for n in 0..100u64 {
//!     producer.publish_bytes(&frame, Timing::at_frame(n, 30))?;
//! }
//! producer.end_of_stream();
//! # Ok::<(), fdlink::producer::ProducerError>(())
//! ```

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::hub::{
    Hub, HubEvent, HubStats, Joining, Limits, Request, SlowPolicy, StickyKind, SyncMethod,
};
use crate::memfd_pool::{MemfdPool, PoolFile};
use crate::peer_check::PeerPolicy;
use crate::protocol::{
    BufferHeader, EventPacket, MAX_MEMORIES, MemoryDesc, MemoryKind, MemoryList, Packet,
    QueryReplyPacket, TIME_NONE, VideoLayout,
};
use crate::transport::{Connection, Listener, TransportError};

/// The segment every stream of this producer plays in: TIME, from 0, rate 1 (GStreamer's
/// text of it, as fdlinksink sends a default segment).
pub const SEGMENT_TEXT: &str = "GstEventSegment, segment=(GstSegment)\"segment, flags=(GstSegmentFlags)GST_SEGMENT_FLAG_NONE, rate=(double)1, applied-rate=(double)1, format=(GstFormat)time, base=(guint64)0, offset=(guint64)0, start=(guint64)0, stop=(guint64)18446744073709551615, time=(guint64)0, position=(guint64)0, duration=(guint64)18446744073709551615;\"";
const EVENT_STREAM_START: u32 = 10254;
const EVENT_SEGMENT: u32 = 17934;
const EVENT_EOS: u32 = 28174;
/// GST_BUFFER_FLAG_DELTA_UNIT.
const FLAG_DELTA_UNIT: u32 = 1 << 13;

/// How the producer treats its consumers; the defaults are fdlinksink's.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Frames one consumer may hold.
    pub max_held: u32,
    /// Frames all consumers together may hold (0: no limit).
    pub max_held_total: u32,
    /// Frames queued for one consumer whose socket is full.
    pub max_queued: u32,
    /// What a consumer at `max_held` gets: see fdlinksink's `slow-policy`.
    pub slow_policy: SlowPolicy,
    /// Connections served at once.
    pub max_clients: u32,
    /// A live source (a camera): frames are never waited for, a full consumer skips them.
    pub live: bool,
    /// Memfds kept by [`Producer::publish_bytes`] (each the size of a frame).
    pub pool_files: usize,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            max_held: 8,
            max_held_total: 16,
            max_queued: 16,
            slow_policy: SlowPolicy::Auto,
            max_clients: 64,
            live: false,
            pool_files: 32,
        }
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: String,
        source: TransportError,
    },
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("no caps set: call set_caps before publishing")]
    NoCaps,
    #[error("a frame has {0} memories; at most 16")]
    TooManyMemories(usize),
    #[error("memfd pool: {0}")]
    Pool(#[from] std::io::Error),
}

/// When a frame is due, in the stream's time (its segment starts at 0).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub pts: Option<Duration>,
    pub dts: Option<Duration>,
    pub duration: Option<Duration>,
}

impl Timing {
    /// Frame `n` of a stream at `fps` frames a second.
    pub fn at_frame(n: u64, fps: u32) -> Timing {
        let at = |n: u64| Duration::from_nanos(n * 1_000_000_000 / u64::from(fps.max(1)));
        Timing {
            pts: Some(at(n)),
            dts: None,
            duration: Some(at(n + 1) - at(n)),
        }
    }
}

/// A frame to publish: windows of files the caller owns.
#[derive(Default)]
pub struct OutFrame {
    memories: Vec<(MemoryKind, Arc<OwnedFd>, u64, u64)>,
    timing: Timing,
    flags: u32,
    video: Option<VideoLayout>,
}

impl OutFrame {
    pub fn new(timing: Timing) -> OutFrame {
        OutFrame {
            timing,
            ..OutFrame::default()
        }
    }
    /// Adds `size` bytes of `fd` from `offset`: a memfd sealed against shrinking (consumers
    /// refuse one that is not), or a dmabuf. Seal it against writes too
    /// (`fdkind::seal_future_writes`) so no consumer can write into it.
    pub fn memory(mut self, kind: MemoryKind, fd: Arc<OwnedFd>, offset: u64, size: u64) -> Self {
        self.memories.push((kind, fd, offset, size));
        self
    }
    /// GstBufferFlags bits (a delta unit is not a keyframe: joiners of encoded streams start
    /// at a keyframe).
    pub fn flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }
    /// The video layout consumers map planes by.
    pub fn video(mut self, layout: VideoLayout) -> Self {
        self.video = Some(layout);
        self
    }
}

/// Bytes copied into a memfd of the producer's pool, to publish.
pub struct PreparedFrame {
    frame: OutFrame,
    on_release: Box<dyn FnOnce() + Send>,
}

impl PreparedFrame {
    /// Sets the frame's flags (GstBufferFlags bits).
    pub fn flags(mut self, flags: u32) -> Self {
        self.frame = self.frame.flags(flags);
        self
    }
}

/// What the hub holds for a frame until every consumer released it.
struct Held {
    _files: Vec<Arc<OwnedFd>>,
    on_release: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(f) = self.on_release.take() {
            f();
        }
    }
}

/// A consumer's upstream event (a seek, EOS from the consumer...), as GStreamer's event type
/// code and structure text.
pub type UpstreamEvent = EventPacket;

/// Serves frames to consumers on a socket (see the module docs).
pub struct Producer {
    hub: Arc<Hub<Held>>,
    control: Option<JoinHandle<()>>,
    options: ProducerOptions,
    caps: Option<String>,
    started: bool,
    events: mpsc::Receiver<UpstreamEvent>,
    pool: Option<Arc<Mutex<MemfdPool>>>,
}

impl Producer {
    /// Listens on `path` (removed when the producer goes) and serves consumers from now on.
    pub fn bind(path: &Path, options: ProducerOptions) -> Result<Producer, ProducerError> {
        let listener = Listener::bind(path).map_err(|source| ProducerError::Bind {
            path: path.display().to_string(),
            source,
        })?;
        Producer::serve(Some(listener), None, options)
    }

    /// Serves the one consumer at the other end of `fd` (a socketpair, an inherited fd).
    pub fn from_fd(fd: OwnedFd, options: ProducerOptions) -> Result<Producer, ProducerError> {
        Producer::serve(None, Some(Connection::from_owned(fd)?), options)
    }

    fn serve(
        listener: Option<Listener>,
        inherited: Option<Connection>,
        options: ProducerOptions,
    ) -> Result<Producer, ProducerError> {
        let limits = Limits {
            max_held: options.max_held,
            max_held_total: options.max_held_total,
            max_queued: options.max_queued,
            policy: options.slow_policy,
            sync_method: SyncMethod::Auto,
            slow_wait: Duration::from_secs(1),
            max_clients: options.max_clients,
        };
        let (events_tx, events) = mpsc::sync_channel(256);
        // The hub's events need the hub (to answer queries): it is set once made.
        let hub_slot: Arc<std::sync::OnceLock<std::sync::Weak<Hub<Held>>>> = Arc::default();
        let slot = hub_slot.clone();
        let hub = Hub::new(limits, false, move |ev| {
            if let HubEvent::Request { id, request, .. } = ev {
                match request {
                    // No pipeline answers here: the consumer's query is answered false.
                    Request::Query(q) => {
                        if let Some(hub) = slot.get().and_then(std::sync::Weak::upgrade) {
                            hub.reply(
                                id,
                                &Packet::QueryReply(QueryReplyPacket {
                                    id: q.id,
                                    answered: false,
                                    structure: String::new(),
                                }),
                            );
                        }
                    }
                    // Bounded: events past 256 unread are dropped.
                    Request::UpstreamEvent(e) => drop(events_tx.try_send(e)),
                    Request::Message { .. } | Request::State(_) => {}
                }
            }
        })?;
        let _ = hub_slot.set(Arc::downgrade(&hub));
        hub.set_peer_policy(PeerPolicy::own_uid_only("fdlink producer"));
        let control_hub = hub.clone();
        let control = std::thread::Builder::new()
            .name("fdlink-producer".into())
            .spawn(move || control_hub.run_control(listener.as_ref(), inherited))
            .map_err(ProducerError::Pool)?;
        Ok(Producer {
            hub,
            control: Some(control),
            options,
            caps: None,
            started: false,
            events,
            pool: None,
        })
    }

    /// Sets the stream's caps (GStreamer's caps text), sent to every consumer and to those
    /// that join later.
    pub fn set_caps(&mut self, caps: &str) {
        self.start();
        if self.caps.as_deref() != Some(caps) {
            self.caps = Some(caps.to_owned());
            self.send(Packet::Caps(caps.to_owned()), StickyKind::None, true);
            self.send_event(EVENT_SEGMENT, SEGMENT_TEXT, StickyKind::Segment);
        }
    }

    fn start(&mut self) {
        if !self.started {
            self.started = true;
            let text = format!(
                "GstEventStreamStart, stream-id=(gchararray)\"fdlink-app-{}\", flags=(GstStreamFlags)GST_STREAM_FLAG_NONE, group-id=(guint)1",
                std::process::id()
            );
            self.send_event(EVENT_STREAM_START, &text, StickyKind::StreamStart);
        }
    }

    fn send_event(&self, event_type: u32, structure: &str, sticky: StickyKind) {
        let event = EventPacket {
            event_type,
            seqnum: 0,
            structure: structure.to_owned(),
        };
        self.send(
            Packet::Event {
                event,
                base_time: TIME_NONE,
            },
            sticky,
            false,
        );
    }

    fn send(&self, packet: Packet<BorrowedFd<'_>>, sticky: StickyKind, is_caps: bool) {
        let mut bytes = Vec::new();
        if packet.encode(&mut bytes).is_ok() {
            self.hub.send_control(bytes, sticky, is_caps);
        }
    }

    /// Publishes `frame` to every consumer (waiting, as fdlinksink does, for consumers in
    /// their handshake, and per the slow policy for room); `on_release` runs once every
    /// consumer given it has released it (at once if none was). Returns how many consumers
    /// were given it.
    pub fn publish(
        &mut self,
        frame: OutFrame,
        on_release: impl FnOnce() + Send + 'static,
    ) -> Result<usize, ProducerError> {
        if self.caps.is_none() {
            return Err(ProducerError::NoCaps);
        }
        if frame.memories.len() > MAX_MEMORIES {
            return Err(ProducerError::TooManyMemories(frame.memories.len()));
        }
        let held = Held {
            _files: frame.memories.iter().map(|m| m.1.clone()).collect(),
            on_release: Some(Box::new(on_release)),
        };
        let live = self.options.live;
        if !self.hub.has_ready_consumer() && self.hub.wait_for_joining(live) != Joining::Ready {
            self.hub.count_frame_without_consumer();
            return Ok(0);
        }
        self.hub.wait_for_room(live);
        // One fd per distinct file, in order of first use.
        let mut files: Vec<&Arc<OwnedFd>> = Vec::new();
        let mut memories = MemoryList::new();
        for (kind, fd, offset, size) in &frame.memories {
            let index = match files.iter().position(|f| Arc::ptr_eq(f, fd)) {
                Some(i) => i,
                None => {
                    files.push(fd);
                    files.len() - 1
                }
            };
            memories.push(MemoryDesc {
                kind: *kind,
                fd_index: index as u8,
                file_id: 0,
                offset: *offset,
                size: *size,
            });
        }
        let ns = |d: Option<Duration>| d.map_or(TIME_NONE, |d| d.as_nanos() as u64);
        let id = self.hub.next_buffer_id();
        let header = BufferHeader {
            buffer_id: id,
            pts: ns(frame.timing.pts),
            dts: ns(frame.timing.dts),
            duration: ns(frame.timing.duration),
            offset: TIME_NONE,
            offset_end: TIME_NONE,
            flags: frame.flags,
            sent_at: monotonic_ns(),
            // No clock: each consumer takes the shift that makes the first frame due when it
            // arrives.
            base_time: TIME_NONE,
            memories,
            video: frame.video,
            metas: Default::default(),
        };
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
        let out = crate::hub::Frame {
            id,
            header: &header,
            fds: &fds,
            size: frame.memories.iter().map(|m| m.3).sum(),
            keyframe: frame.flags & FLAG_DELTA_UNIT == 0,
            slow_copy: false,
            preroll: false,
            reads_releases: false,
        };
        Ok(self.hub.send_buffer(&out, held, None).sent_to)
    }

    /// Publishes `bytes` copied once into a sealed memfd of the producer's pool (consumers
    /// cannot write into it); the memfd goes back to the pool once every consumer released it.
    pub fn publish_bytes(&mut self, bytes: &[u8], timing: Timing) -> Result<usize, ProducerError> {
        let prepared = self.prepare_bytes(bytes, timing)?;
        self.publish_prepared(prepared)
    }

    /// The copy half of [`Producer::publish_bytes`]: `bytes` in a memfd of the pool, ready
    /// to publish (a caller that must not block while it holds `bytes`, such as Python with
    /// the GIL, copies first and publishes after).
    pub fn prepare_bytes(
        &mut self,
        bytes: &[u8],
        timing: Timing,
    ) -> Result<PreparedFrame, ProducerError> {
        let pool = self
            .pool
            .get_or_insert_with(|| Arc::new(Mutex::new(MemfdPool::new(self.options.pool_files))))
            .clone();
        let file: PoolFile = pool.lock().unwrap().take(bytes.len())?;
        file.write(bytes);
        // No layout: consumers read it from the caps.
        let frame =
            OutFrame::new(timing).memory(MemoryKind::Memfd, file.fd(), 0, bytes.len() as u64);
        Ok(PreparedFrame {
            frame,
            on_release: Box::new(move || pool.lock().unwrap().give_back(file)),
        })
    }

    /// Publishes a frame [`Producer::prepare_bytes`] made.
    pub fn publish_prepared(&mut self, prepared: PreparedFrame) -> Result<usize, ProducerError> {
        self.publish(prepared.frame, prepared.on_release)
    }

    /// Ends the stream: consumers get EOS after every frame before it, waited for up to 5 s.
    pub fn end_of_stream(&mut self) {
        self.start();
        self.send_event(EVENT_EOS, "", StickyKind::Eos);
        self.hub.drain(Duration::from_secs(5));
    }

    /// Upstream events consumers sent (seeks and the like), oldest first, without waiting.
    pub fn upstream_events(&self) -> Vec<UpstreamEvent> {
        self.events.try_iter().collect()
    }

    /// Counters, as fdlinksink's `stats`: the hub's, consumers now, buffers held now.
    pub fn stats(&self) -> (HubStats, u32, u32) {
        self.hub.stats()
    }

    /// Whether a consumer is connected and past its handshake.
    pub fn has_consumer(&self) -> bool {
        self.hub.has_ready_consumer()
    }

    /// Waits up to `timeout` for a consumer past its handshake; whether one is.
    pub fn wait_for_consumer(&self, timeout: Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        while !self.hub.has_ready_consumer() {
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.hub.shutdown();
        if let Some(t) = self.control.take() {
            let _ = t.join();
        }
        self.hub.clear();
    }
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}
