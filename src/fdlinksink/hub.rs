//! Consumers of one fdlinksink: accepting them, greeting them, fanning packets out, holding
//! each buffer until every consumer that got it has released it.
//!
//! Two threads touch the hub: the streaming thread (`send_buffer`, `send_event`) and the
//! control thread (`run_control`), which accepts connections and reads releases. All socket
//! writes are non-blocking, so no consumer can stall the streaming thread beyond the bounded
//! wait for `max-held`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use crate::control::PendingQueries;
use crate::memory::{FdList, FileRegistry};
use fdlink::protocol::{
    self, BufferHeader, FileSend, Hello, MAX_PACKET_SIZE, MAX_REGISTERED_FILES, Packet,
    QueryReplyPacket, Role,
};
use fdlink::transport::{Connection, Listener, PollSet, TransportError, Waker};

/// A consumer that has not completed the hello by then is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Control packets queued for one consumer whose socket is full; past this it is dropped.
const MAX_PENDING_PACKETS: usize = 1024;

/// Something the hub reports to the element (which logs it with its debug category).
pub enum HubEvent {
    ConsumerAdded {
        id: u64,
        pid: Option<i32>,
    },
    ConsumerRemoved {
        id: u64,
        reason: Removal,
    },
    Warning(String),
    /// A following consumer's pipeline prerolled (for the logs).
    Prerolled {
        id: u64,
        buffer_id: u64,
        barriers: u32,
    },
    /// A consumer's upstream event, query or bus message, for the producer's pipeline. Sent
    /// outside the hub's lock; replies go out on `conn`.
    Request {
        id: u64,
        pid: Option<i32>,
        conn: Arc<Connection>,
        request: Request,
    },
}

/// Why a consumer was removed (the `client-removed` signal's reason is `kind()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// It closed the connection (or its process died).
    Closed,
    /// It fell behind past what `slow-policy` allows.
    Slow(String),
    /// A send to it failed, or it reported an error.
    Error(String),
    /// It broke the protocol.
    Protocol(String),
    /// The application removed it (`remove` action signal).
    Removed,
}

impl Removal {
    pub fn kind(&self) -> &'static str {
        match self {
            Removal::Closed => "closed",
            Removal::Slow(_) => "slow",
            Removal::Error(_) => "error",
            Removal::Protocol(_) => "protocol",
            Removal::Removed => "removed",
        }
    }
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Removal::Closed => write!(f, "closed: consumer closed the connection"),
            Removal::Removed => write!(f, "removed by the application"),
            Removal::Slow(d) | Removal::Error(d) | Removal::Protocol(d) => {
                write!(f, "{}: {d}", self.kind())
            }
        }
    }
}

/// What the producer does with a consumer that is at `max-held` or whose socket is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowPolicy {
    /// Live upstream: Drop. Otherwise: Block, but a consumer still full after a bounded wait
    /// is skipped until it releases something.
    Auto,
    /// Skip the frame for that consumer.
    Drop,
    /// Wait until every consumer has room (lossless; one stuck consumer stops the producer).
    Block,
    /// Remove that consumer.
    Disconnect,
    /// A consumer at `max-held` gets the frame as a copy in the memfd pool, so it loses
    /// nothing while upstream's pool loses at most `max-held` buffers to it.
    Copy,
}

/// Where a new consumer's stream starts (multisocketsink's sync-method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMethod {
    /// The next buffer, whatever it is.
    Latest,
    /// The next keyframe (a buffer without DELTA_UNIT); delta units before it are skipped.
    NextKeyframe,
    /// The latest keyframe and the buffers after it, sent at once from a backlog; the next
    /// keyframe when there is no backlog yet.
    LatestKeyframe,
}

/// Buffers the latest-keyframe backlog keeps at most; a longer GOP empties it, and joiners
/// wait for the next keyframe instead.
const BACKLOG_MAX: usize = 256;

/// One consumer's counters, for the `stats` property.
#[derive(Debug, Clone)]
pub struct ConsumerStats {
    pub id: u64,
    pub pid: i32,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    /// Frames sent to it as slow-policy=copy copies.
    pub frames_copied: u64,
    pub held: u32,
    /// Buffers waiting in its queue for room in its socket.
    pub queued: u32,
    pub releases: u64,
    pub bytes_sent: u64,
    pub idle_ms: u64,
    /// Mean time from sending a buffer to its release, in µs (0 before the first release).
    pub release_avg_us: u64,
    /// Fds sent with its buffer packets (register-once fds: about one per pool buffer).
    pub fds_sent: u64,
    /// Files it has registered now.
    pub files_registered: u32,
}

/// What a consumer asks of the producer's pipeline.
pub enum Request {
    UpstreamEvent(protocol::EventPacket),
    Query(protocol::QueryPacket),
    Message(protocol::MessagePacket),
    State(protocol::StatePacket),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingHello { since: Instant },
    Ready,
}

/// A packet waiting for room in one consumer's socket.
enum Outbound {
    Control(Vec<u8>),
    /// A buffer packet, encoded when it leaves (which files cross as fds depends on what the
    /// consumer has registered by then); the buffer itself stays in the hub's `held` until
    /// the consumer releases it.
    Buffer {
        id: u64,
        frame: Arc<WaitingFrame>,
        size: u64,
    },
}

/// A frame that waits (in a consumer's queue, in the backlog) with its own duplicates of the
/// fds: the originals belong to the buffer, which may be held longer or shorter.
struct WaitingFrame {
    header: BufferHeader,
    fds: Vec<OwnedFd>,
}

impl WaitingFrame {
    fn new(f: &Frame<'_>) -> Result<Arc<WaitingFrame>, Removal> {
        Ok(Arc::new(WaitingFrame {
            header: f.header.clone(),
            fds: dup_fds(f.fds)?,
        }))
    }
}

/// A buffer a consumer was given (sent, or queued for it) and has not released.
struct Held {
    since: Instant,
    kind: HoldKind,
}

/// What a consumer's hold on a buffer costs upstream, for max-held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldKind {
    /// Upstream's buffer: counts toward max-held.
    Original,
    /// A slow-policy=copy copy, not upstream's memory.
    Copy,
    /// A buffer the hub keeps anyway for joiners (latest-keyframe backlog, preroll frame),
    /// given to one that just joined: it pins nothing more, so it does not count toward
    /// max-held. (A joiner's burst of a whole GOP so far would otherwise make the policy skip
    /// the very next frame, which its decoder needs.)
    Kept,
}

/// One frame as offered to the consumers: its header (each memory's `fd_index` picks one of
/// `fds`, its `file_id` is that file's id in the hub's registry, 0 for none) and its fds.
pub struct Frame<'a> {
    pub id: u64,
    pub header: &'a BufferHeader,
    pub fds: &'a [BorrowedFd<'a>],
    pub size: u64,
    /// Not a DELTA_UNIT: a consumer may start here (sync-method).
    pub keyframe: bool,
    /// A slow-policy=copy copy of a frame, for consumers at max-held.
    pub slow_copy: bool,
    /// The frame the producer prerolls on: kept for consumers that join before it plays,
    /// and given to following consumers even past max-held (they are paused, prerolled on
    /// what they hold, and release nothing until they play).
    pub preroll: bool,
    /// The streaming thread reads the consumers' releases itself while frames keep coming
    /// (see `RELEASE_GRACE`): a non-live stream that plays. A live one comes back only a
    /// frame period later, so its releases are read by the control thread at once.
    pub reads_releases: bool,
}

/// What became of a frame for one consumer.
enum Offer {
    Sent,
    /// Waits in its queue for room in its socket.
    Queued,
    /// Skipped per the slow policy.
    Dropped,
    /// sync-method: it waits for a keyframe.
    NotYet,
    /// slow-policy=copy: it is at max-held and gets a copy instead.
    WantsCopy,
}

struct Consumer {
    id: u64,
    conn: Arc<Connection>,
    pid: Option<i32>,
    phase: Phase,
    /// Packets waiting for room in the socket, in stream order: control packets, and up to
    /// `max-queued` buffers.
    queue: VecDeque<Outbound>,
    /// Buffers among `queue`.
    queued_buffers: usize,
    /// Buffers it was given and has not released, queued ones included.
    held: HashMap<u64, Held>,
    /// Among `held`, those of upstream's memory (not copies).
    originals_held: usize,
    /// Stayed at max-held through a whole wait: not waited for again until it releases.
    stalled: bool,
    /// sync-method: skips frames until a keyframe.
    awaiting_keyframe: bool,
    /// Its fdlinksrc has mode=follow (hello capability): prerolls wait for it.
    follows: bool,
    /// Preroll barriers (State packets saying PAUSED, flush-stops) sent to it.
    barriers_sent: u32,
    /// File ids it has registered (it keeps those files open until they are retired).
    files: HashSet<u32>,
    fds_sent: u64,
    /// Files it was asked to register, all told.
    registrations: u64,
    /// Reused for its buffer packets.
    packet: Vec<u8>,
    /// The barriers its latest Prerolled packet counted: it prerolled after all of those.
    barriers_prerolled: u32,
    frames_sent: u64,
    frames_dropped: u64,
    frames_copied: u64,
    releases: u64,
    bytes_sent: u64,
    release_wait: Duration,
    last_activity: Instant,
}

impl Consumer {
    fn new(id: u64, conn: Connection) -> Consumer {
        let now = Instant::now();
        Consumer {
            id,
            pid: conn.peer_pid(),
            conn: Arc::new(conn),
            phase: Phase::AwaitingHello { since: now },
            queue: VecDeque::new(),
            queued_buffers: 0,
            held: HashMap::new(),
            originals_held: 0,
            stalled: false,
            awaiting_keyframe: false,
            follows: false,
            barriers_sent: 0,
            files: HashSet::new(),
            fds_sent: 0,
            registrations: 0,
            packet: Vec::with_capacity(1024),
            barriers_prerolled: 0,
            frames_sent: 0,
            frames_dropped: 0,
            frames_copied: 0,
            releases: 0,
            bytes_sent: 0,
            release_wait: Duration::ZERO,
            last_activity: now,
        }
    }

    /// It was given a buffer (sent, or queued for it).
    fn hold(&mut self, buffer_id: u64, since: Instant, kind: HoldKind) {
        self.held.insert(buffer_id, Held { since, kind });
        match kind {
            HoldKind::Original => self.originals_held += 1,
            HoldKind::Copy => self.frames_copied += 1,
            HoldKind::Kept => {}
        }
    }

    /// A following consumer that has not prerolled since the last preroll barrier it was
    /// sent: a prerolling producer waits for it.
    fn preroll_pending(&self) -> bool {
        self.phase == Phase::Ready && self.follows && self.barriers_prerolled < self.barriers_sent
    }

    fn unhold(&mut self, buffer_id: u64) -> Option<Held> {
        let h = self.held.remove(&buffer_id)?;
        if h.kind == HoldKind::Original {
            self.originals_held -= 1;
        }
        Some(h)
    }

    fn copies_held(&self) -> usize {
        self.held
            .values()
            .filter(|h| h.kind == HoldKind::Copy)
            .count()
    }

    /// Counts a buffer packet that left for its socket.
    fn sent(&mut self, size: u64) {
        self.frames_sent += 1;
        self.bytes_sent += size;
    }

    /// Takes the oldest buffer out of its queue (the policy dropped it); returns its id.
    fn drop_oldest_queued(&mut self) -> Option<u64> {
        let pos = self
            .queue
            .iter()
            .position(|p| matches!(p, Outbound::Buffer { .. }))?;
        let Some(Outbound::Buffer { id, .. }) = self.queue.remove(pos) else {
            unreachable!("position() found a buffer there");
        };
        self.queued_buffers -= 1;
        self.unhold(id);
        self.frames_dropped += 1;
        Some(id)
    }

    /// Queues a buffer packet behind what waits for its socket; it holds the buffer from now.
    fn enqueue(
        &mut self,
        id: u64,
        frame: Arc<WaitingFrame>,
        size: u64,
        kind: HoldKind,
        now: Instant,
    ) {
        self.queue.push_back(Outbound::Buffer { id, frame, size });
        self.queued_buffers += 1;
        self.hold(id, now, kind);
    }
}

struct HeldBuffer {
    _buffer: gst::Buffer,
    /// Consumers that hold it, plus one while the latest-keyframe backlog keeps it.
    holders: u32,
    copy: bool,
}

/// A buffer kept for consumers that join later: the latest-keyframe backlog (joiners
/// mid-GOP) and the preroll frame (joiners while the producer is paused).
struct BacklogEntry {
    id: u64,
    frame: Arc<WaitingFrame>,
    size: u64,
    keyframe: bool,
    /// Counted in `frames-sent` (given to a consumer when it was offered, or to a joiner).
    counted: bool,
    zero_copy: bool,
}

impl BacklogEntry {
    fn new(f: &Frame<'_>) -> Result<BacklogEntry, Removal> {
        Ok(BacklogEntry {
            id: f.id,
            frame: WaitingFrame::new(f)?,
            size: f.size,
            keyframe: f.keyframe,
            counted: true,
            zero_copy: true,
        })
    }
}

/// What a prerolling producer does with its next frame (`wait_pass_through`).
#[derive(Debug, PartialEq, Eq)]
pub enum PassThrough {
    /// Send it on: a following consumer still prerolls.
    Send,
    /// Preroll on it: every following consumer prerolled.
    Preroll,
    /// Preroll on it: this following consumer stayed at max-held, not prerolled, through
    /// the whole wait.
    GaveUp(u64),
    Flushing,
}

/// How waiting for the following consumers to preroll ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PrerollWait {
    /// Every following consumer given the frame prerolled on it (or later), or let it go.
    Done,
    /// These consumers had not prerolled when the time ran out.
    TimedOut(Vec<u64>),
    Flushing,
}

/// Counters exposed in the `stats` property.
#[derive(Debug, Default, Clone)]
pub struct HubStats {
    pub frames_in: u64,
    pub frames_sent: u64,
    pub frames_zero_copy: u64,
    pub frames_copied: u64,
    pub bytes_copied: u64,
    pub frames_dropped: u64,
    /// Frames copied into the memfd pool for consumers at max-held (slow-policy=copy).
    pub slow_copies: u64,
    pub frames_without_consumer: u64,
    pub releases: u64,
    pub consumers_total: u64,
    /// Fds sent with buffer packets, to all consumers.
    pub fds_sent: u64,
    /// Files registered with a consumer (one per file and consumer).
    pub files_registered: u64,
    /// Registered files retired (their memories were freed), per consumer that had them.
    pub files_retired: u64,
}

#[derive(Default)]
struct Sticky {
    stream_start: Option<Vec<u8>>,
    caps: Option<Vec<u8>>,
    segment: Option<Vec<u8>>,
    tags: Option<Vec<u8>>,
    eos: Option<Vec<u8>>,
    /// The element's last State packet (not a stream event: kept across streams).
    state: Option<Vec<u8>>,
    /// That State packet says PAUSED: a preroll barrier for the consumer it is replayed to.
    state_is_barrier: bool,
}

impl Sticky {
    fn replay(&self) -> impl Iterator<Item = &Vec<u8>> {
        [
            &self.state,
            &self.stream_start,
            &self.caps,
            &self.segment,
            &self.tags,
            &self.eos,
        ]
        .into_iter()
        .flatten()
    }
}

#[derive(Default)]
struct Inner {
    consumers: Vec<Consumer>,
    held: HashMap<u64, HeldBuffer>,
    /// Among `held`, buffers of upstream's memory (what max-held-total limits).
    originals_held: usize,
    /// sync-method=latest-keyframe: the latest keyframe and the buffers since.
    backlog: Vec<BacklogEntry>,
    /// The frame the producer prerolled on, until it plays, flushes or stops.
    preroll_frame: Option<BacklogEntry>,
    sticky: Sticky,
    next_consumer_id: u64,
    flushing: bool,
    stats: HubStats,
    /// Events to report once the lock is released.
    deferred: Vec<HubEvent>,
    /// When the streaming thread last offered a frame that reads releases: within
    /// `release_grace` of it the control thread does not watch the consumers' sockets.
    grace_from: Option<Instant>,
    /// Frames to send without a grace: one ran out with buffers still held, and the
    /// streaming thread may have been waiting in a pool for one of them (see `grace_end`).
    frames_without_grace: u32,
    /// Consumers' requests the streaming thread read, for the control thread to serve.
    requests: Vec<HubEvent>,
    /// The streaming thread's receive buffer and consumer list (kept, not reallocated).
    drain_buf: Vec<u8>,
    drain_list: Vec<(u64, Arc<Connection>)>,
    /// The control thread's last round left the ready consumers' sockets alone.
    control_aside: bool,
}

/// Which sticky slot an event packet fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyKind {
    StreamStart,
    Segment,
    Tags,
    Eos,
    /// flush-stop: clears segment and EOS, like GStreamer's own sticky events.
    FlushStop,
    /// A State packet: the latest one is replayed to late joiners.
    State,
    /// A State packet saying PAUSED: also a preroll barrier (see `wait_prerolled`).
    PausedState,
    None,
}

/// How long after a frame the control thread leaves the consumers' sockets to the streaming
/// thread (non-live streams). A release wakes the thread that polls for it; in a fast stream
/// that was one control-thread wake-up per frame, taking the hub's lock while the streaming
/// thread sends and preempting it on its CPU (mid-copy on the copy path). The streaming
/// thread now reads the releases before each frame; the control thread takes them over when
/// the stream pauses longer than this, and at once whenever the streaming thread waits.
const RELEASE_GRACE: Duration = Duration::from_millis(2);
/// Frames without a grace after one ran out with buffers held (see `Hub::grace_end`).
const GRACE_BACKOFF_FRAMES: u32 = 100;

pub struct Hub {
    inner: Mutex<Inner>,
    room: Condvar,
    /// Threads waiting on `room`, counted under `inner`'s lock: a notify with nobody waiting
    /// is a futex syscall for nothing, and the control thread would make one per release.
    room_waiters: AtomicUsize,
    waker: Waker,
    stop: AtomicBool,
    /// Ids for buffer packets, taken without the lock.
    next_buffer_id: AtomicU64,
    limits: Limits,
    /// Queries this producer asked its consumers, waiting for replies.
    pending: PendingQueries,
    /// File ids for register-once fds; None sends every fd with every buffer.
    files: Option<FileRegistry>,
    /// `RELEASE_GRACE` (tests set other values), in µs.
    release_grace_us: AtomicU64,
    on_event: Box<dyn Fn(HubEvent) + Send + Sync>,
}

/// Outcome of offering one buffer to the consumers.
pub struct SendOutcome {
    /// Consumers that were given it (sent now or queued).
    pub sent_to: usize,
    /// slow-policy=copy: consumers at max-held that want the frame as a copy
    /// (`send_copy`).
    pub wants_copy: Vec<u64>,
}

/// Limits and policies for consumers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Buffers of upstream's memory one consumer may hold.
    pub max_held: u32,
    /// Buffers of upstream's memory all consumers together may hold (0: no limit).
    pub max_held_total: u32,
    /// Buffers queued in the producer for one consumer whose socket is full.
    pub max_queued: u32,
    pub policy: SlowPolicy,
    pub sync_method: SyncMethod,
    /// How long Auto waits for a full consumer before skipping it.
    pub slow_wait: Duration,
}

impl Hub {
    pub fn new(
        limits: Limits,
        register_files: bool,
        on_event: impl Fn(HubEvent) + Send + Sync + 'static,
    ) -> Result<Arc<Hub>, TransportError> {
        Ok(Arc::new(Hub {
            inner: Mutex::new(Inner {
                next_consumer_id: 1,
                ..Default::default()
            }),
            room: Condvar::new(),
            room_waiters: AtomicUsize::new(0),
            waker: Waker::new()?,
            stop: AtomicBool::new(false),
            next_buffer_id: AtomicU64::new(1),
            limits,
            pending: PendingQueries::default(),
            files: register_files.then(FileRegistry::default),
            release_grace_us: AtomicU64::new(RELEASE_GRACE.as_micros() as u64),
            on_event: Box::new(on_event),
        }))
    }

    /// The registry that gives files their ids, when fds are registered once.
    pub fn file_registry(&self) -> Option<&FileRegistry> {
        self.files.as_ref()
    }

    /// Tells each consumer to close the registered files whose memories are all gone (their
    /// pool was flushed or replaced), behind what is queued for it.
    fn retire_files(&self, inner: &mut Inner, removed: &mut Vec<(u64, Removal)>) {
        let Some(registry) = &self.files else { return };
        let retired = registry.take_retired();
        if retired.is_empty() {
            return;
        }
        let mut bytes = Vec::new();
        for c in inner.consumers.iter_mut() {
            let file_ids: Vec<u32> = retired
                .iter()
                .copied()
                .filter(|id| c.files.remove(id))
                .collect();
            if file_ids.is_empty() {
                continue;
            }
            inner.stats.files_retired += file_ids.len() as u64;
            let packet = Packet::<OwnedFd>::Retire { file_ids };
            if let Err(e) = packet.encode(&mut bytes) {
                removed.push((c.id, Removal::Error(format!("cannot encode retire: {e}"))));
                continue;
            }
            if let Err(reason) = queue_or_send(c, &bytes) {
                removed.push((c.id, reason));
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits on `room` (releases, removals, Prerolled packets, flushing) for at most `wait`.
    fn wait_room<'a>(
        &self,
        mut inner: MutexGuard<'a, Inner>,
        wait: Duration,
    ) -> MutexGuard<'a, Inner> {
        if inner.grace_from.is_some() {
            // Whatever this thread waits for may be a release: the control thread must
            // watch the sockets again. What has come already is read here, and the caller
            // looks again before it waits.
            self.end_grace(&mut inner);
            return inner;
        }
        // Counted while the lock is held: a thread that changes what waiters wait for takes
        // the lock, so when it reads the count afterwards (`notify_room`) it sees this one.
        self.room_waiters.fetch_add(1, Ordering::SeqCst);
        let inner = self
            .room
            .wait_timeout(inner, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        self.room_waiters.fetch_sub(1, Ordering::SeqCst);
        inner
    }

    fn release_grace(&self) -> Duration {
        Duration::from_micros(self.release_grace_us.load(Ordering::Relaxed))
    }

    #[cfg(test)]
    fn set_release_grace(&self, grace: Duration) {
        self.release_grace_us
            .store(grace.as_micros() as u64, Ordering::Relaxed);
    }

    /// Ends the release grace: reads what the consumers sent meanwhile, and wakes the
    /// control thread so that it watches their sockets again.
    fn end_grace(&self, inner: &mut Inner) {
        inner.grace_from = None;
        let mut removed = Vec::new();
        self.read_consumers_here(inner, &mut removed);
        self.waker.wake();
    }

    /// The streaming thread's share of the control thread's reading, during a release
    /// grace: reads everything each ready consumer sent. Releases are done here; requests
    /// (events, queries, messages) go to the control thread, which serves them outside the
    /// streaming thread (a flushing seek waits for it). Consumers that failed are removed.
    fn read_consumers_here(&self, inner: &mut Inner, removed: &mut Vec<(u64, Removal)>) {
        let mut list = std::mem::take(&mut inner.drain_list);
        list.extend(
            inner
                .consumers
                .iter()
                .filter(|c| c.phase == Phase::Ready)
                .map(|c| (c.id, c.conn.clone())),
        );
        let mut buf = std::mem::take(&mut inner.drain_buf);
        buf.resize(MAX_PACKET_SIZE, 0);
        let mut requests = std::mem::take(&mut inner.requests);
        let had_requests = requests.len();
        let mut released = 0;
        for (id, conn) in &list {
            if let Err(reason) =
                self.read_consumer(inner, (*id, conn), &mut buf, &mut released, &mut requests)
            {
                self.remove_consumer(inner, *id, reason.clone());
                removed.push((*id, reason));
            }
        }
        list.clear();
        inner.drain_list = list;
        inner.drain_buf = buf;
        if requests.len() > had_requests {
            self.waker.wake();
        }
        inner.requests = requests;
        if released > 0 || !removed.is_empty() {
            self.notify_room();
        }
    }

    /// Wakes the threads waiting on `room`, if any. Call it after the change they wait for
    /// was made under the lock (with the lock held or after it was released).
    fn notify_room(&self) {
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_all();
        }
    }

    pub fn stats(&self) -> (HubStats, u32, u32) {
        let inner = self.lock();
        let ready = inner
            .consumers
            .iter()
            .filter(|c| c.phase == Phase::Ready)
            .count() as u32;
        let mut stats = inner.stats.clone();
        for c in &inner.consumers {
            stats.fds_sent += c.fds_sent;
            stats.files_registered += c.registrations;
        }
        (stats, ready, inner.held.len() as u32)
    }

    pub fn num_consumers(&self) -> u32 {
        self.stats().1
    }

    pub fn has_ready_consumer(&self) -> bool {
        self.lock()
            .consumers
            .iter()
            .any(|c| c.phase == Phase::Ready)
    }

    /// sync-method=latest-keyframe: every frame goes through `send_buffer`, consumers or not.
    pub fn keeps_backlog(&self) -> bool {
        self.limits.sync_method == SyncMethod::LatestKeyframe
    }

    pub fn count_frame_without_consumer(&self) {
        let mut inner = self.lock();
        inner.stats.frames_in += 1;
        inner.stats.frames_without_consumer += 1;
    }

    pub fn set_flushing(&self, flushing: bool) {
        self.lock().flushing = flushing;
        self.notify_room();
    }

    /// Stores a control packet (caps or event) for late joiners and sends it to every ready
    /// consumer, in stream order behind anything already queued for it.
    pub fn send_control(&self, bytes: Vec<u8>, sticky: StickyKind, is_caps: bool) {
        let mut removed = Vec::new();
        let events = {
            let mut inner = self.lock();
            // Retires go first: a consumer's files close as soon as the stream says anything.
            self.retire_files(&mut inner, &mut removed);
            let s = &mut inner.sticky;
            match (is_caps, sticky) {
                (true, _) => s.caps = Some(bytes.clone()),
                (_, StickyKind::StreamStart) => {
                    // A new stream: the old one's segment, tags and EOS no longer apply.
                    *s = Sticky {
                        stream_start: Some(bytes.clone()),
                        caps: s.caps.take(),
                        state: s.state.take(),
                        state_is_barrier: s.state_is_barrier,
                        ..Default::default()
                    };
                }
                (_, StickyKind::Segment) => s.segment = Some(bytes.clone()),
                (_, StickyKind::Tags) => s.tags = Some(bytes.clone()),
                (_, StickyKind::Eos) => s.eos = Some(bytes.clone()),
                (_, StickyKind::State | StickyKind::PausedState) => {
                    s.state = Some(bytes.clone());
                    s.state_is_barrier = sticky == StickyKind::PausedState;
                }
                (_, StickyKind::FlushStop) => {
                    s.segment = None;
                    s.eos = None;
                }
                (_, StickyKind::None) => {}
            }
            // A flush or a new stream: the buffers of the backlog no longer lead anywhere.
            if matches!(sticky, StickyKind::FlushStop | StickyKind::StreamStart) {
                inner.frames_without_grace = 0;
                clear_backlog(&mut inner);
                clear_preroll_frame(&mut inner);
            }
            let barrier = matches!(sticky, StickyKind::PausedState | StickyKind::FlushStop);
            for c in inner
                .consumers
                .iter_mut()
                .filter(|c| c.phase == Phase::Ready)
            {
                match queue_or_send(c, &bytes) {
                    Ok(()) => c.barriers_sent += u32::from(barrier),
                    Err(reason) => removed.push((c.id, reason)),
                }
            }
            for (id, reason) in &removed {
                self.remove_consumer(&mut inner, *id, reason.clone());
            }
            std::mem::take(&mut inner.deferred)
        };
        self.after_removals(removed, events);
    }

    /// Sends a query (`encode` builds its packet from the id) to every ready consumer that is
    /// not stalled and has room in its socket, and waits up to `timeout` for the replies.
    /// Returns the replies that came, answered or not.
    pub fn ask_consumers(
        &self,
        encode: impl Fn(u32) -> Option<Vec<u8>>,
        timeout: Duration,
    ) -> Vec<QueryReplyPacket> {
        let mut asked = Vec::new();
        {
            let mut inner = self.lock();
            if inner.grace_from.is_some() {
                // The replies must be read now, not when the grace runs out.
                self.end_grace(&mut inner);
            }
            for c in inner
                .consumers
                .iter()
                .filter(|c| c.phase == Phase::Ready && !c.stalled && c.queue.is_empty())
            {
                let id = self.pending.register();
                match encode(id).map(|bytes| c.conn.try_send(&bytes, &[])) {
                    Some(Ok(())) => asked.push(id),
                    _ => self.pending.forget(id),
                }
            }
        }
        let deadline = Instant::now() + timeout;
        asked
            .into_iter()
            .filter_map(|id| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.pending.wait(id, left)
            })
            .collect()
    }

    /// Waits until a consumer is ready. Returns false when flushing.
    pub fn wait_for_consumer(&self) -> bool {
        let mut inner = self.lock();
        loop {
            if inner.flushing {
                return false;
            }
            if inner.consumers.iter().any(|c| c.phase == Phase::Ready) {
                return true;
            }
            inner = self.wait_room(inner, Duration::from_millis(500));
        }
    }

    /// Whether all consumers together hold `max-held-total` buffers of upstream's memory.
    fn over_total(&self, inner: &Inner) -> bool {
        let max = self.limits.max_held_total as usize;
        max > 0 && inner.originals_held >= max
    }

    /// Before a frame, under the Block policy (and Auto with a non-live upstream): waits until
    /// every ready consumer has room under `max-held` and all together under
    /// `max-held-total`. Auto waits at most `slow_wait`, then marks the consumers still full
    /// as stalled and does not wait for them again until they release something.
    /// Returns false when flushing.
    pub fn wait_for_room(&self, live: bool) -> bool {
        let bounded = match self.limits.policy {
            SlowPolicy::Block => false,
            SlowPolicy::Auto if !live => true,
            _ => return true,
        };
        let deadline = Instant::now() + self.limits.slow_wait;
        let max = self.limits.max_held as usize;
        let mut inner = self.lock();
        loop {
            if inner.flushing {
                return false;
            }
            let full = inner
                .consumers
                .iter()
                .any(|c| c.phase == Phase::Ready && !c.stalled && c.originals_held >= max)
                || self.over_total(&inner);
            if !full {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if bounded && left.is_zero() {
                for c in inner.consumers.iter_mut() {
                    if c.phase == Phase::Ready && c.originals_held >= max {
                        c.stalled = true;
                    }
                }
                return true;
            }
            let wait = if bounded {
                left
            } else {
                Duration::from_millis(100)
            };
            inner = self.wait_room(inner, wait);
        }
    }

    /// Waits up to `timeout` until every following consumer (mode=follow) has prerolled
    /// after the last preroll barrier it was sent (this producer pausing, or flushing), so
    /// this producer's preroll completes with theirs.
    pub fn wait_prerolled(&self, timeout: Duration) -> PrerollWait {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if inner.flushing {
                return PrerollWait::Flushing;
            }
            let waiting: Vec<u64> = inner
                .consumers
                .iter()
                .filter(|c| c.preroll_pending())
                .map(|c| c.id)
                .collect();
            if waiting.is_empty() {
                return PrerollWait::Done;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return PrerollWait::TimedOut(waiting);
            }
            inner = self.wait_room(inner, left.min(Duration::from_millis(100)));
        }
    }

    /// While this producer prerolls: whether the next frame passes straight through to the
    /// consumers, because a following consumer has not prerolled since the last preroll
    /// barrier it was sent (its decoder may need more frames before its sink has one).
    /// Waits while such a consumer is at `max-held` (it releases nothing until its sinks
    /// preroll), up to `timeout`, after which this producer prerolls without it.
    pub fn wait_pass_through(&self, timeout: Duration) -> PassThrough {
        let deadline = Instant::now() + timeout;
        let max = self.limits.max_held as usize;
        let mut inner = self.lock();
        loop {
            if inner.flushing {
                return PassThrough::Flushing;
            }
            if !inner.consumers.iter().any(Consumer::preroll_pending) {
                return PassThrough::Preroll;
            }
            let full = inner
                .consumers
                .iter()
                .find(|c| c.preroll_pending() && c.originals_held >= max)
                .map(|c| c.id);
            let Some(full) = full else {
                return PassThrough::Send;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return PassThrough::GaveUp(full);
            }
            inner = self.wait_room(inner, left.min(Duration::from_millis(100)));
        }
    }

    /// The producer plays (or flushed): joiners no longer get the preroll frame.
    pub fn end_preroll(&self) {
        clear_preroll_frame(&mut self.lock());
    }

    /// Allocates the id for the next buffer packet.
    pub fn next_buffer_id(&self) -> u64 {
        self.next_buffer_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Offers a frame to every ready consumer, each per its limits and the slow policy: sent
    /// now, queued behind what waits for its socket, skipped, or (slow-policy=copy) left for
    /// `send_copy`. Keeps `buffer` (which owns the fds) until every consumer given it
    /// released it. `copied_bytes`: the frame was copied into a memfd to be shareable.
    pub fn send_buffer(
        &self,
        frame: &Frame<'_>,
        buffer: gst::Buffer,
        copied_bytes: Option<usize>,
    ) -> SendOutcome {
        self.offer_frame(frame, buffer, copied_bytes, None)
    }

    /// Sends a slow-policy=copy copy of a frame (`frame.slow_copy`, with its own id) to the
    /// consumers `send_buffer` left for it.
    pub fn send_copy(&self, consumers: &[u64], frame: &Frame<'_>, buffer: gst::Buffer) {
        self.offer_frame(frame, buffer, None, Some(consumers));
    }

    fn offer_frame(
        &self,
        f: &Frame<'_>,
        buffer: gst::Buffer,
        copied_bytes: Option<usize>,
        only: Option<&[u64]>,
    ) -> SendOutcome {
        let mut removed = Vec::new();
        let mut wants_copy = Vec::new();
        let mut holders = 0u32;
        let mut queued = false;
        let events;
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if inner.grace_from.is_some() {
                self.read_consumers_here(inner, &mut removed);
            }
            self.retire_files(inner, &mut removed);
            if only.is_none() {
                inner.stats.frames_in += 1;
                if !inner.consumers.iter().any(|c| c.phase == Phase::Ready) {
                    inner.stats.frames_without_consumer += 1;
                }
            }
            if let Some(n) = copied_bytes {
                inner.stats.frames_copied += 1;
                inner.stats.bytes_copied += n as u64;
            }
            let over_total = self.over_total(inner);
            let now = Instant::now();
            let mut dropped_queued = Vec::new();
            let mut dropped = 0;
            for c in inner
                .consumers
                .iter_mut()
                .filter(|c| c.phase == Phase::Ready && only.is_none_or(|ids| ids.contains(&c.id)))
            {
                match self.offer(c, f, over_total, now, &mut dropped_queued) {
                    Ok(Offer::Sent) => holders += 1,
                    Ok(Offer::Queued) => {
                        holders += 1;
                        queued = true;
                    }
                    Ok(Offer::Dropped) => dropped += 1,
                    Ok(Offer::NotYet) => {}
                    Ok(Offer::WantsCopy) => wants_copy.push(c.id),
                    Err(reason) => removed.push((c.id, reason)),
                }
            }
            dropped += dropped_queued.len() as u64;
            for id in dropped_queued {
                release_one(inner, id);
            }
            inner.stats.frames_dropped += dropped;
            if f.slow_copy {
                inner.stats.slow_copies += 1;
            }
            let kept = self.keep_in_backlog(inner, f) + keep_preroll_frame(inner, f);
            if holders + kept > 0 {
                inner.held.insert(
                    f.id,
                    HeldBuffer {
                        _buffer: buffer,
                        holders: holders + kept,
                        copy: f.slow_copy,
                    },
                );
                if !f.slow_copy {
                    inner.originals_held += 1;
                }
            }
            if let Some(p) = inner.preroll_frame.as_mut()
                && p.id == f.id
            {
                // A preroll frame nobody got yet is counted sent when a joiner gets it.
                p.counted = holders > 0;
                p.zero_copy = copied_bytes.is_none();
            }
            if holders > 0 && only.is_none() {
                inner.stats.frames_sent += 1;
                if copied_bytes.is_none() {
                    inner.stats.frames_zero_copy += 1;
                }
            }
            for (id, reason) in &removed {
                self.remove_consumer(inner, *id, reason.clone());
            }
            if f.reads_releases && !self.release_grace().is_zero() {
                if inner.frames_without_grace > 0 {
                    inner.frames_without_grace -= 1;
                } else if inner.grace_from.replace(now).is_none() {
                    // The control thread polls the consumers' sockets: tell it to stop.
                    self.waker.wake();
                }
            }
            events = std::mem::take(&mut inner.deferred);
        }
        self.after_removals(removed, events);
        if queued {
            // The control thread sends queued packets when their sockets have room.
            self.waker.wake();
            if self.limits.policy == SlowPolicy::Block {
                self.wait_for_queues();
            }
        }
        SendOutcome {
            sent_to: holders as usize,
            wants_copy,
        }
    }

    /// One consumer's share of `offer_frame`. Buffers of the queue that the policy dropped
    /// go to `dropped_queued`, for the caller to release.
    fn offer(
        &self,
        c: &mut Consumer,
        f: &Frame<'_>,
        over_total: bool,
        now: Instant,
        dropped_queued: &mut Vec<u64>,
    ) -> Result<Offer, Removal> {
        if c.awaiting_keyframe {
            if !f.keyframe {
                return Ok(Offer::NotYet);
            }
            c.awaiting_keyframe = false;
        }
        let max_held = self.limits.max_held as usize;
        let max_queued = self.limits.max_queued as usize;
        let policy = self.limits.policy;
        let at_limit = if f.slow_copy {
            c.copies_held() >= max_held + max_queued
        } else if f.preroll && c.follows {
            false
        } else {
            c.originals_held >= max_held || over_total
        };
        if at_limit {
            return match policy {
                SlowPolicy::Disconnect if c.originals_held >= max_held => Err(Removal::Slow(
                    format!("holds {} buffers (max-held {max_held})", c.originals_held),
                )),
                SlowPolicy::Copy if !f.slow_copy => Ok(Offer::WantsCopy),
                _ => {
                    c.frames_dropped += 1;
                    Ok(Offer::Dropped)
                }
            };
        }
        // What waits for its socket goes first, so the stream stays in order.
        flush_queue(c)?;
        if c.queue.is_empty() && try_send_frame(c, f.header, f.fds)? {
            c.hold(f.id, now, hold_kind(f));
            c.sent(f.size);
            return Ok(Offer::Sent);
        }
        // Its socket is full: the frame waits in its queue, within max-queued (Block queues
        // regardless and then waits for the queue to shrink).
        if policy != SlowPolicy::Block && c.queued_buffers >= max_queued {
            if policy == SlowPolicy::Disconnect {
                return Err(Removal::Slow(format!(
                    "its socket is full and {} buffers wait for it (max-queued {max_queued})",
                    c.queued_buffers
                )));
            }
            // The oldest queued frame makes way (fresher frames for a consumer that is
            // behind); with no queue at all, this frame is the one skipped.
            match c.drop_oldest_queued() {
                Some(id) => dropped_queued.push(id),
                None => {
                    c.frames_dropped += 1;
                    return Ok(Offer::Dropped);
                }
            }
        }
        c.enqueue(f.id, WaitingFrame::new(f)?, f.size, hold_kind(f), now);
        Ok(Offer::Queued)
    }

    /// sync-method=latest-keyframe: keeps the frame in the backlog that late joiners get
    /// first (a keyframe starts it anew). Returns the hold the backlog takes on it (0 or 1).
    fn keep_in_backlog(&self, inner: &mut Inner, f: &Frame<'_>) -> u32 {
        if self.limits.sync_method != SyncMethod::LatestKeyframe || f.slow_copy {
            return 0;
        }
        if f.keyframe || inner.backlog.len() >= BACKLOG_MAX {
            clear_backlog(inner);
        }
        if !f.keyframe && inner.backlog.is_empty() {
            // No keyframe since the backlog was emptied: joiners wait for the next one.
            return 0;
        }
        match BacklogEntry::new(f) {
            Ok(entry) => {
                inner.backlog.push(entry);
                1
            }
            Err(reason) => {
                inner.deferred.push(HubEvent::Warning(format!(
                    "latest-keyframe backlog emptied: {reason}"
                )));
                clear_backlog(inner);
                0
            }
        }
    }

    /// Block: waits until no consumer has more than max-queued buffers queued (the control
    /// thread sends them as their sockets get room).
    fn wait_for_queues(&self) {
        let max = self.limits.max_queued as usize;
        let mut inner = self.lock();
        while !inner.flushing && inner.consumers.iter().any(|c| c.queued_buffers > max) {
            inner = self.wait_room(inner, Duration::from_millis(100));
        }
    }

    /// Waits up to `timeout` until nothing is queued for any consumer (used at EOS so
    /// consumers see everything before the producer goes away).
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let busy = self.lock().consumers.iter().any(|c| !c.queue.is_empty());
            if !busy || Instant::now() >= deadline {
                return;
            }
            self.waker.wake();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn remove_consumer(&self, inner: &mut Inner, id: u64, reason: Removal) {
        let Some(pos) = inner.consumers.iter().position(|c| c.id == id) else {
            return;
        };
        let c = inner.consumers.swap_remove(pos);
        inner.stats.fds_sent += c.fds_sent;
        inner.stats.files_registered += c.registrations;
        for buffer_id in c.held.into_keys() {
            release_one(inner, buffer_id);
        }
        inner.deferred.push(if c.phase == Phase::Ready {
            HubEvent::ConsumerRemoved { id, reason }
        } else {
            HubEvent::Warning(format!(
                "rejected connection {id} (pid {:?}): {reason}",
                c.pid
            ))
        });
    }

    /// After the lock was released: wakes the waiters if consumers were removed, and reports
    /// `events` (taken from `Inner::deferred` under that lock).
    fn after_removals(&self, removed: Vec<(u64, Removal)>, events: Vec<HubEvent>) {
        if !removed.is_empty() {
            self.notify_room();
        }
        self.emit(events);
    }

    /// Reports what happened under the lock, now that it is not held (the element emits
    /// signals whose handlers may call back into it). The events are taken from
    /// `Inner::deferred` in the same locked section that made them: taking the lock again
    /// only for them would be one more meeting with the other thread per frame.
    fn emit(&self, events: Vec<HubEvent>) {
        for e in events {
            (self.on_event)(e);
        }
    }

    /// Removes a consumer on the application's request. False when there is no such consumer.
    pub fn remove(&self, id: u64) -> bool {
        let (found, events) = {
            let mut inner = self.lock();
            let found = inner
                .consumers
                .iter()
                .any(|c| c.id == id && c.phase == Phase::Ready);
            if found {
                self.remove_consumer(&mut inner, id, Removal::Removed);
            }
            (found, std::mem::take(&mut inner.deferred))
        };
        if found {
            self.notify_room();
            self.waker.wake();
        }
        self.emit(events);
        found
    }

    /// Per-consumer counters.
    pub fn consumer_stats(&self) -> Vec<ConsumerStats> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .consumers
            .iter()
            .filter(|c| c.phase == Phase::Ready)
            .map(|c| ConsumerStats {
                id: c.id,
                pid: c.pid.unwrap_or(0),
                frames_sent: c.frames_sent,
                frames_dropped: c.frames_dropped,
                frames_copied: c.frames_copied,
                held: c.held.len() as u32,
                queued: c.queued_buffers as u32,
                releases: c.releases,
                bytes_sent: c.bytes_sent,
                idle_ms: now.duration_since(c.last_activity).as_millis() as u64,
                release_avg_us: (c.release_wait.as_micros() as u64)
                    .checked_div(c.releases)
                    .unwrap_or(0),
                fds_sent: c.fds_sent,
                files_registered: c.files.len() as u32,
            })
            .collect()
    }

    /// Stops the control thread.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.pending.close();
        self.waker.wake();
        self.set_flushing(true);
    }

    /// Drops every consumer and every held buffer (after the control thread stopped). Unread
    /// releases are read first: closing a socket with unread datagrams makes the kernel report
    /// ECONNRESET to the consumer ahead of the packets (EOS among them) still queued for it.
    pub fn clear(&self) {
        let mut inner = self.lock();
        let mut buf = vec![0u8; MAX_PACKET_SIZE];
        for c in &inner.consumers {
            while c.conn.try_recv(&mut buf).is_ok() {}
        }
        inner.consumers.clear();
        inner.backlog.clear();
        inner.preroll_frame = None;
        inner.held.clear();
        inner.originals_held = 0;
    }

    /// The control thread: accepts consumers, runs the hello, reads releases.
    /// `listener` is None for an inherited, already-connected socket (`inherited`).
    pub fn run_control(&self, listener: Option<&Listener>, inherited: Option<Connection>) {
        let mut buf = vec![0u8; MAX_PACKET_SIZE];
        let our_hello = protocol::encode_hello(&Hello::new(Role::Producer, std::process::id()));
        if let Some(conn) = inherited {
            self.adopt(conn, &our_hello);
        }
        // The consumers to watch and whether each has packets queued (POLLOUT). Kept across
        // rounds (cleared, not freed), so a round allocates nothing. Each round refreshes it
        // at the end of its one locked section, so that a round takes the lock once: every
        // extra time is one more chance to meet the streaming thread on it. A packet queued
        // after that wakes `waker`, and the round it starts refreshes the list again.
        let mut conns: Vec<(u64, Arc<Connection>, bool)> = Vec::new();
        watch_list(&self.lock(), &mut conns, false);
        // While the streaming thread reads the releases (RELEASE_GRACE), until when.
        let mut aside_until: Option<Instant> = None;
        let mut watch = PollSet::default();
        while !self.stop.load(Ordering::SeqCst) {
            watch.clear();
            let waker = watch.push(self.waker.as_fd(), PollFlags::POLLIN);
            let accept = listener.map(|l| watch.push(l.as_fd(), PollFlags::POLLIN));
            let first_consumer = waker + 1 + usize::from(accept.is_some());
            for (_, conn, want_out) in &conns {
                let mut ev = PollFlags::POLLIN;
                if *want_out {
                    ev |= PollFlags::POLLOUT;
                }
                watch.push(conn.as_fd(), ev);
            }
            let timeout = aside_until.map_or(Duration::from_millis(500), |end| {
                end.saturating_duration_since(Instant::now())
            });
            if let Err(e) = watch.poll(Some(timeout)) {
                (self.on_event)(HubEvent::Warning(format!("poll failed: {e}")));
                std::thread::sleep(Duration::from_millis(50));
                watch_list(&self.lock(), &mut conns, false);
                aside_until = None;
                continue;
            }
            if watch.revents(waker).contains(PollFlags::POLLIN) {
                self.waker.reset();
            }
            if let (Some(l), Some(i)) = (listener, accept)
                && watch.revents(i).contains(PollFlags::POLLIN)
            {
                self.accept_all(l, &our_hello);
            }
            let mut released = 0usize;
            let mut flushed = false;
            let mut removed = Vec::new();
            let mut requests = Vec::new();
            let events = {
                let mut inner = self.lock();
                // What the streaming thread read in a grace came before anything read below
                // (both read under this lock): served first, so each consumer's requests run
                // in the order it sent them.
                requests.append(&mut inner.requests);
                for (i, (id, conn, _)) in conns.iter().enumerate() {
                    let ev = watch.revents(first_consumer + i);
                    if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                        && let Err(reason) = self.read_consumer(
                            &mut inner,
                            (*id, conn),
                            &mut buf,
                            &mut released,
                            &mut requests,
                        )
                    {
                        removed.push((*id, reason));
                        continue;
                    }
                    if ev.contains(PollFlags::POLLOUT)
                        && let Some(c) = inner.consumers.iter_mut().find(|c| c.id == *id)
                    {
                        match flush_queue(c) {
                            Ok(sent_buffer) => flushed |= sent_buffer,
                            Err(reason) => removed.push((*id, reason)),
                        }
                    }
                }
                let now = Instant::now();
                for c in &inner.consumers {
                    if let Phase::AwaitingHello { since } = c.phase
                        && now.duration_since(since) > HELLO_TIMEOUT
                    {
                        removed.push((c.id, Removal::Protocol("no hello within 5 s".into())));
                    }
                }
                for (id, reason) in &removed {
                    self.remove_consumer(&mut inner, *id, reason.clone());
                }
                aside_until = self.grace_end(&mut inner);
                inner.control_aside = aside_until.is_some();
                // Connections of consumers removed this round close here, not a round later.
                watch_list(&inner, &mut conns, aside_until.is_some());
                std::mem::take(&mut inner.deferred)
            };
            if released > 0 || !removed.is_empty() || flushed {
                self.notify_room();
            }
            self.emit(events);
            for event in requests {
                (self.on_event)(event);
            }
        }
    }

    /// When the running release grace ends, or None when there is none or it just ran out.
    /// A grace that runs out while consumers hold buffers may have kept a release from a
    /// streaming thread waiting for it in upstream's pool (one smaller than max-held plus
    /// one: fdlinksink's own waits end the grace at once). That cost it up to the grace, so
    /// the next GRACE_BACKOFF_FRAMES frames go without: at most one such wait per that many.
    /// A stream that merely paused loses nothing but those graces.
    fn grace_end(&self, inner: &mut Inner) -> Option<Instant> {
        let end = inner.grace_from? + self.release_grace();
        if Instant::now() < end {
            return Some(end);
        }
        inner.grace_from = None;
        if inner
            .consumers
            .iter()
            .any(|c| c.phase == Phase::Ready && !c.held.is_empty())
        {
            inner.frames_without_grace = GRACE_BACKOFF_FRAMES;
        }
        None
    }

    fn accept_all(&self, listener: &Listener, our_hello: &[u8]) {
        loop {
            match listener.accept() {
                Ok(Some(conn)) => self.adopt(conn, our_hello),
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on a readable listener.
                    (self.on_event)(HubEvent::Warning(format!("accept failed: {e}")));
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
            }
        }
    }

    /// Greets a new connection and waits for its hello (in the control loop).
    fn adopt(&self, conn: Connection, our_hello: &[u8]) {
        // The hello is the first datagram on a fresh socket: it always fits.
        if let Err(e) = conn.try_send(our_hello, &[]) {
            (self.on_event)(HubEvent::Warning(format!(
                "could not greet new connection: {e}"
            )));
            return;
        }
        let mut inner = self.lock();
        let id = inner.next_consumer_id;
        inner.next_consumer_id += 1;
        inner.consumers.push(Consumer::new(id, conn));
    }

    /// Reads everything pending from one consumer. An error means: drop it, for this reason.
    fn read_consumer(
        &self,
        inner: &mut Inner,
        (id, conn): (u64, &Arc<Connection>),
        buf: &mut [u8],
        released: &mut usize,
        requests: &mut Vec<HubEvent>,
    ) -> Result<(), Removal> {
        let refuse = |msg: String| {
            conn.send_error(&format!("protocol error: {msg}"));
            Removal::Protocol(msg)
        };
        loop {
            let got = match conn.try_recv(buf) {
                Ok(got) => got,
                Err(TransportError::WouldBlock) => return Ok(()),
                Err(TransportError::Closed) => return Err(Removal::Closed),
                Err(e) => return Err(refuse(e.to_string())),
            };
            let Some(pos) = inner.consumers.iter().position(|c| c.id == id) else {
                return Ok(());
            };
            let bytes = &buf[..got.len];
            if let Phase::AwaitingHello { .. } = inner.consumers[pos].phase {
                if !got.fds.is_empty() {
                    let msg = "hello carried file descriptors";
                    conn.send_error(msg);
                    return Err(Removal::Protocol(msg.into()));
                }
                let hello = protocol::decode_hello(bytes).map_err(|e| {
                    let msg = format!("bad hello: {e}");
                    conn.send_error(&msg);
                    Removal::Protocol(msg)
                })?;
                if hello.role != Role::Consumer {
                    let msg = "peer is not a consumer (two fdlinksinks on one socket?)";
                    conn.send_error(msg);
                    return Err(Removal::Protocol(msg.into()));
                }
                let replay: Vec<Vec<u8>> = inner.sticky.replay().cloned().collect();
                let barrier = inner.sticky.state_is_barrier && inner.sticky.state.is_some();
                let c = &mut inner.consumers[pos];
                c.phase = Phase::Ready;
                c.follows = hello.capabilities & protocol::CAP_FOLLOWS != 0;
                for p in replay {
                    queue_or_send(c, &p)?;
                }
                c.barriers_sent += u32::from(barrier);
                self.start_stream(inner, pos)?;
                inner.stats.consumers_total += 1;
                let pid = inner.consumers[pos].pid;
                inner.deferred.push(HubEvent::ConsumerAdded { id, pid });
                self.notify_room();
                continue;
            }
            inner.consumers[pos].last_activity = Instant::now();
            match Packet::decode(bytes, got.fds) {
                Ok(Packet::Release { buffer_id }) => {
                    let c = &mut inner.consumers[pos];
                    if c.queued_buffers > 0
                        && c.queue
                            .iter()
                            .any(|p| matches!(p, Outbound::Buffer { id, .. } if *id == buffer_id))
                    {
                        return Err(refuse(format!(
                            "release of buffer {buffer_id} it has not been sent yet"
                        )));
                    }
                    let Some(held) = c.unhold(buffer_id) else {
                        return Err(refuse(format!(
                            "release of buffer {buffer_id} it does not hold"
                        )));
                    };
                    c.releases += 1;
                    c.release_wait += held.since.elapsed();
                    c.stalled = false;
                    release_one(inner, buffer_id);
                    inner.stats.releases += 1;
                    *released += 1;
                }
                Ok(Packet::Error(msg)) => {
                    return Err(Removal::Error(format!("consumer reported: {msg}")));
                }
                Ok(Packet::UpstreamEvent(ev)) => {
                    requests.push(self.request(inner, pos, conn, Request::UpstreamEvent(ev)))
                }
                Ok(Packet::Query(q)) => {
                    requests.push(self.request(inner, pos, conn, Request::Query(q)))
                }
                Ok(Packet::Message(m)) => {
                    requests.push(self.request(inner, pos, conn, Request::Message(m)))
                }
                Ok(Packet::State(st)) => {
                    inner.consumers[pos].follows = st.sender_follows;
                    requests.push(self.request(inner, pos, conn, Request::State(st)))
                }
                Ok(Packet::Prerolled {
                    buffer_id,
                    barriers,
                }) => {
                    let c = &mut inner.consumers[pos];
                    if barriers > c.barriers_sent {
                        return Err(refuse(format!(
                            "prerolled after {barriers} preroll barriers, but it was sent {}",
                            c.barriers_sent
                        )));
                    }
                    c.barriers_prerolled = barriers;
                    inner.deferred.push(HubEvent::Prerolled {
                        id,
                        buffer_id,
                        barriers,
                    });
                    self.notify_room();
                }
                Ok(Packet::QueryReply(reply)) => self.pending.deliver(reply),
                Ok(_) => {
                    return Err(refuse(
                        "consumer sent a producer-only packet (caps, event, buffer or retire)"
                            .into(),
                    ));
                }
                Err(e) => return Err(refuse(e.to_string())),
            }
        }
    }
}

impl Hub {
    /// Where a consumer that just finished its hello starts, per sync-method: the next
    /// frame, the next keyframe, or the backlog from the latest keyframe (queued at once).
    fn start_stream(&self, inner: &mut Inner, pos: usize) -> Result<(), Removal> {
        let Inner {
            consumers,
            backlog,
            preroll_frame,
            held,
            stats,
            ..
        } = inner;
        let c = &mut consumers[pos];
        match self.limits.sync_method {
            SyncMethod::Latest => {}
            SyncMethod::NextKeyframe => c.awaiting_keyframe = true,
            SyncMethod::LatestKeyframe if backlog.is_empty() => c.awaiting_keyframe = true,
            SyncMethod::LatestKeyframe => {
                for e in backlog.iter() {
                    enqueue_kept(c, held, e)?;
                }
                self.waker.wake();
            }
        }
        // A paused producer's preroll frame, unless the backlog gave it already.
        if let Some(p) = preroll_frame
            && !c.held.contains_key(&p.id)
            && (!c.awaiting_keyframe || p.keyframe)
        {
            c.awaiting_keyframe = false;
            enqueue_kept(c, held, p)?;
            if !p.counted {
                p.counted = true;
                stats.frames_sent += 1;
                stats.frames_zero_copy += u64::from(p.zero_copy);
                stats.frames_without_consumer = stats.frames_without_consumer.saturating_sub(1);
            }
            self.waker.wake();
        }
        Ok(())
    }

    fn request(
        &self,
        inner: &Inner,
        pos: usize,
        conn: &Arc<Connection>,
        request: Request,
    ) -> HubEvent {
        let c = &inner.consumers[pos];
        HubEvent::Request {
            id: c.id,
            pid: c.pid,
            conn: conn.clone(),
            request,
        }
    }
}

/// The control thread's watch list: the consumers' connections, and whether each has packets
/// queued for room in its socket. `aside` (a release grace): without the ready consumers that
/// have nothing queued, whose releases the streaming thread reads.
fn watch_list(inner: &Inner, conns: &mut Vec<(u64, Arc<Connection>, bool)>, aside: bool) {
    conns.clear();
    conns.extend(
        inner
            .consumers
            .iter()
            .filter(|c| !aside || c.phase != Phase::Ready || !c.queue.is_empty())
            .map(|c| (c.id, c.conn.clone(), !c.queue.is_empty())),
    );
}

fn release_one(inner: &mut Inner, buffer_id: u64) {
    if let Some(h) = inner.held.get_mut(&buffer_id) {
        h.holders -= 1;
        if h.holders == 0
            && let Some(h) = inner.held.remove(&buffer_id)
            && !h.copy
        {
            inner.originals_held -= 1;
        }
    }
}

fn hold_kind(f: &Frame<'_>) -> HoldKind {
    if f.slow_copy {
        HoldKind::Copy
    } else {
        HoldKind::Original
    }
}

/// Queues a kept frame (backlog, preroll frame) for a consumer that just joined.
fn enqueue_kept(
    c: &mut Consumer,
    held: &mut HashMap<u64, HeldBuffer>,
    e: &BacklogEntry,
) -> Result<(), Removal> {
    c.enqueue(
        e.id,
        e.frame.clone(),
        e.size,
        HoldKind::Kept,
        Instant::now(),
    );
    if let Some(h) = held.get_mut(&e.id) {
        h.holders += 1;
    }
    Ok(())
}

/// Keeps the frame the producer prerolled on for consumers that join while it is paused.
/// Returns the hold that takes on it (0 or 1).
fn keep_preroll_frame(inner: &mut Inner, f: &Frame<'_>) -> u32 {
    if !f.preroll {
        return 0;
    }
    clear_preroll_frame(inner);
    match BacklogEntry::new(f) {
        Ok(entry) => {
            inner.preroll_frame = Some(entry);
            1
        }
        Err(reason) => {
            inner.deferred.push(HubEvent::Warning(format!(
                "preroll frame not kept for joiners: {reason}"
            )));
            0
        }
    }
}

/// Lets go of the preroll frame (the producer plays, flushes or stops).
fn clear_preroll_frame(inner: &mut Inner) {
    if let Some(e) = inner.preroll_frame.take() {
        release_one(inner, e.id);
    }
}

/// Empties the latest-keyframe backlog, dropping its hold on each buffer.
fn clear_backlog(inner: &mut Inner) {
    let ids: Vec<u64> = inner.backlog.drain(..).map(|e| e.id).collect();
    for id in ids {
        release_one(inner, id);
    }
}

/// Duplicates a frame's fds for a packet that waits (queue, backlog): the originals belong to
/// the buffer, which may be held longer or shorter than the packet waits.
fn dup_fds(fds: &[BorrowedFd<'_>]) -> Result<Vec<OwnedFd>, Removal> {
    fds.iter()
        .map(|fd| fd.try_clone_to_owned())
        .collect::<Result<Vec<OwnedFd>, _>>()
        .map_err(|e| Removal::Error(format!("cannot duplicate a frame's fd: {e}")))
}

/// Sends a control packet now, or queues it behind what waits when the socket is full.
fn queue_or_send(c: &mut Consumer, bytes: &[u8]) -> Result<(), Removal> {
    if c.queue.is_empty() {
        match c.conn.try_send(bytes, &[]) {
            Ok(()) => return Ok(()),
            Err(TransportError::WouldBlock) => {}
            Err(e) => return Err(Removal::Error(format!("send failed: {e}"))),
        }
    }
    if c.queue.len() - c.queued_buffers >= MAX_PENDING_PACKETS {
        return Err(Removal::Slow(format!(
            "{MAX_PENDING_PACKETS} control packets queued"
        )));
    }
    c.queue.push_back(Outbound::Control(bytes.to_vec()));
    Ok(())
}

/// Sends a buffer packet to `c` now, if its socket has room (false if not): the files it has
/// registered go by id, the others as fds, registered with it as they go while it has room
/// for them.
fn try_send_frame(
    c: &mut Consumer,
    header: &BufferHeader,
    fds: &[BorrowedFd<'_>],
) -> Result<bool, Removal> {
    let mut plan: smallvec::SmallVec<[FileSend; 4]> = smallvec::SmallVec::new();
    let mut attached = FdList::new();
    let mut registering: smallvec::SmallVec<[u32; 4]> = smallvec::SmallVec::new();
    for (slot, fd) in fds.iter().enumerate() {
        let id = header
            .memories
            .iter()
            .find(|m| m.fd_index as usize == slot)
            .map_or(0, |m| m.file_id);
        if id != 0 && c.files.contains(&id) {
            plan.push(FileSend::Registered(id));
            continue;
        }
        // Past the consumer's limit a file crosses for this buffer only.
        let register = id != 0 && c.files.len() + registering.len() < MAX_REGISTERED_FILES;
        plan.push(FileSend::Fd {
            index: attached.len() as u8,
            file_id: if register { id } else { 0 },
        });
        attached.push(*fd);
        if register {
            registering.push(id);
        }
    }
    protocol::encode_buffer_packet(header, &plan, &mut c.packet)
        .map_err(|e| Removal::Error(format!("cannot encode buffer {}: {e}", header.buffer_id)))?;
    match c.conn.try_send(&c.packet, &attached) {
        Ok(()) => {
            c.fds_sent += attached.len() as u64;
            c.registrations += registering.len() as u64;
            c.files.extend(registering.iter().copied());
            Ok(true)
        }
        Err(TransportError::WouldBlock) => Ok(false),
        Err(e) => Err(Removal::Error(format!("send failed: {e}"))),
    }
}

/// Sends what waits in a consumer's queue, in order, until its socket is full. Returns
/// whether a buffer left.
fn flush_queue(c: &mut Consumer) -> Result<bool, Removal> {
    let mut sent_buffer = false;
    while let Some(p) = c.queue.front() {
        let sent = match p {
            Outbound::Control(bytes) => match c.conn.try_send(bytes, &[]) {
                Ok(()) => true,
                Err(TransportError::WouldBlock) => false,
                Err(e) => return Err(Removal::Error(format!("send failed: {e}"))),
            },
            Outbound::Buffer { frame, .. } => {
                let frame = frame.clone();
                let fds: FdList<'_> = frame.fds.iter().map(|f| f.as_fd()).collect();
                try_send_frame(c, &frame.header, &fds)?
            }
        };
        if !sent {
            break;
        }
        if let Some(Outbound::Buffer { size, .. }) = c.queue.pop_front() {
            c.queued_buffers -= 1;
            c.sent(size);
            sent_buffer = true;
        }
    }
    Ok(sent_buffer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdlink::protocol::{EventPacket, Role};
    use std::sync::mpsc;

    /// A hub whose control thread serves one consumer over a socket pair; the test is the
    /// consumer (`consumer`) and the streaming thread (calls on `hub`).
    struct Rig {
        hub: Arc<Hub>,
        consumer: Connection,
        events: mpsc::Receiver<HubEvent>,
        control: Option<std::thread::JoinHandle<()>>,
        buf: Vec<u8>,
    }

    const LONG: Duration = Duration::from_secs(60);
    const WAIT: Duration = Duration::from_secs(5);

    impl Rig {
        fn new(grace: Duration, max_held: u32) -> Rig {
            gst::init().unwrap();
            let (consumer, producer) = Connection::pair().unwrap();
            let (tx, events) = mpsc::channel();
            let tx = Mutex::new(tx);
            let limits = Limits {
                max_held,
                max_held_total: 0,
                max_queued: 4,
                policy: SlowPolicy::Block,
                sync_method: SyncMethod::Latest,
                slow_wait: Duration::from_secs(1),
            };
            let hub = Hub::new(limits, true, move |ev| {
                let _ = tx.lock().unwrap().send(ev);
            })
            .unwrap();
            hub.set_release_grace(grace);
            let control = {
                let hub = hub.clone();
                std::thread::spawn(move || hub.run_control(None, Some(producer)))
            };
            let mut rig = Rig {
                hub,
                consumer,
                events,
                control: Some(control),
                buf: vec![0; MAX_PACKET_SIZE],
            };
            let got = rig.consumer.recv_wait(&mut rig.buf, None, Some(WAIT));
            assert!(matches!(got, Ok(Some(_))), "the producer's hello");
            let hello = protocol::encode_hello(&Hello::new(Role::Consumer, std::process::id()));
            rig.consumer.try_send(&hello, &[]).unwrap();
            match rig.events.recv_timeout(WAIT).unwrap() {
                HubEvent::ConsumerAdded { .. } => {}
                _ => panic!("expected the consumer to be added"),
            }
            rig
        }

        fn recv(&mut self) -> Option<Packet<OwnedFd>> {
            let got = self
                .consumer
                .recv_wait(&mut self.buf, None, Some(WAIT))
                .ok()??;
            Packet::decode(&self.buf[..got.len], got.fds).ok()
        }

        /// Offers frame `id` as the streaming thread does, non-live (`reads_releases`) or live.
        fn offer(&self, id: u64, reads_releases: bool) {
            // One memfd page: a buffer packet describes at least one memory.
            let memfd = crate::memory::create_sealed_memfd("hub-test", 4096).unwrap();
            let mut header = BufferHeader {
                buffer_id: id,
                ..Default::default()
            };
            header.memories.push(protocol::MemoryDesc {
                kind: protocol::MemoryKind::Memfd,
                fd_index: 0,
                file_id: 0,
                offset: 0,
                size: 4096,
            });
            let frame = Frame {
                id,
                header: &header,
                fds: &[memfd.as_fd()],
                size: 4096,
                keyframe: true,
                slow_copy: false,
                preroll: false,
                reads_releases,
            };
            let sent = self
                .hub
                .send_buffer(&frame, gst::Buffer::new(), None)
                .sent_to;
            if sent != 1 {
                while let Ok(ev) = self.events.try_recv() {
                    if let HubEvent::ConsumerRemoved { reason, .. } = ev {
                        panic!("consumer removed: {reason}");
                    }
                }
            }
            assert_eq!(sent, 1);
        }

        /// Takes the buffer packet of frame `id` off the socket and releases it.
        fn take_and_release(&mut self, id: u64) {
            match self.recv().expect("a buffer packet") {
                Packet::Buffer(header, _) => assert_eq!(header.buffer_id, id),
                _ => panic!("expected buffer {id}"),
            }
            self.consumer
                .try_send(&protocol::encode_release(id), &[])
                .unwrap();
        }

        fn releases(&self) -> u64 {
            self.hub.stats().0.releases
        }

        fn grace_running(&self) -> bool {
            self.hub.lock().grace_from.is_some()
        }

        /// Waits until the control thread has stood aside for the running grace.
        fn wait_control_aside(&self) {
            let deadline = Instant::now() + WAIT;
            while !self.hub.lock().control_aside {
                assert!(
                    Instant::now() < deadline,
                    "the control thread did not stand aside"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            self.hub.shutdown();
            if let Some(control) = self.control.take() {
                control.join().unwrap();
            }
            self.hub.clear();
        }
    }

    #[test]
    fn within_the_grace_the_streaming_thread_reads_the_releases() {
        let mut rig = Rig::new(LONG, 8);
        rig.offer(1, true);
        assert!(rig.grace_running());
        rig.wait_control_aside();
        rig.take_and_release(1);
        // The control thread stands aside: the release waits in the socket.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(rig.releases(), 0);
        // The next frame reads it first.
        rig.offer(2, true);
        assert_eq!(rig.releases(), 1);
        let (_, _, held) = rig.hub.stats();
        assert_eq!(held, 1, "only frame 2 is held");
    }

    #[test]
    fn a_live_stream_has_no_grace() {
        let mut rig = Rig::new(LONG, 8);
        rig.offer(1, false);
        assert!(!rig.grace_running());
        rig.take_and_release(1);
        let deadline = Instant::now() + WAIT;
        while rig.releases() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(rig.releases(), 1, "the control thread read the release");
    }

    #[test]
    fn a_streaming_thread_that_waits_ends_the_grace() {
        let mut rig = Rig::new(LONG, 1);
        rig.offer(1, true);
        let hub = rig.hub.clone();
        let waiter = std::thread::spawn(move || {
            let start = Instant::now();
            assert!(hub.wait_for_room(false));
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        rig.take_and_release(1);
        let waited = waiter.join().unwrap();
        assert!(waited < WAIT, "waited {waited:?} for a release");
        assert_eq!(rig.releases(), 1);
        assert!(!rig.grace_running());
    }

    #[test]
    fn requests_read_in_a_grace_go_to_the_control_thread() {
        let mut rig = Rig::new(LONG, 8);
        rig.offer(1, true);
        rig.wait_control_aside();
        let event = Packet::<BorrowedFd<'_>>::UpstreamEvent(EventPacket {
            event_type: gst::glib::translate::IntoGlib::into_glib(gst::EventType::CustomUpstream)
                as u32,
            seqnum: 7,
            structure: "test-request".into(),
        });
        rig.consumer.send_packet(&event, None).unwrap();
        rig.take_and_release(1);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            rig.events.try_recv().is_err(),
            "nothing read during the grace"
        );
        rig.offer(2, true);
        match rig.events.recv_timeout(WAIT).expect("the request") {
            HubEvent::Request {
                request: Request::UpstreamEvent(ev),
                ..
            } => assert_eq!(ev.seqnum, 7),
            _ => panic!("expected the upstream event"),
        }
        assert_eq!(rig.releases(), 1);
    }

    #[test]
    fn a_query_to_the_consumers_ends_the_grace() {
        let mut rig = Rig::new(LONG, 8);
        rig.offer(1, true);
        rig.wait_control_aside();
        let hub = rig.hub.clone();
        let asking = std::thread::spawn(move || {
            let query = fdlink::protocol::QueryPacket {
                id: 0,
                query_type: 0,
                structure: "test-query".into(),
            };
            hub.ask_consumers(
                |id| {
                    let mut bytes = Vec::new();
                    Packet::<BorrowedFd<'_>>::Query(fdlink::protocol::QueryPacket {
                        id,
                        ..query.clone()
                    })
                    .encode(&mut bytes)
                    .ok()?;
                    Some(bytes)
                },
                WAIT,
            )
        });
        rig.take_and_release(1);
        let id = match rig.recv().expect("the query") {
            Packet::Query(q) => q.id,
            _ => panic!("expected the query"),
        };
        let reply = Packet::<BorrowedFd<'_>>::QueryReply(fdlink::protocol::QueryReplyPacket {
            id,
            answered: true,
            structure: "test-reply".into(),
        });
        rig.consumer.send_packet(&reply, None).unwrap();
        let replies = asking.join().unwrap();
        assert_eq!(replies.len(), 1, "the reply was read before the timeout");
        assert!(!rig.grace_running());
    }

    #[test]
    fn a_grace_that_runs_out_with_buffers_held_backs_off() {
        let mut rig = Rig::new(Duration::from_millis(20), 8);
        rig.offer(1, true);
        // Not released: the grace runs out with frame 1 held, and the control thread takes
        // over the socket.
        let deadline = Instant::now() + WAIT;
        while rig.grace_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!rig.grace_running());
        assert_eq!(rig.hub.lock().frames_without_grace, GRACE_BACKOFF_FRAMES);
        rig.offer(2, true);
        assert!(!rig.grace_running());
        assert_eq!(
            rig.hub.lock().frames_without_grace,
            GRACE_BACKOFF_FRAMES - 1
        );
        // The control thread reads the releases at once again.
        rig.take_and_release(1);
        rig.take_and_release(2);
        let deadline = Instant::now() + WAIT;
        while rig.releases() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(rig.releases(), 2);
    }
}
