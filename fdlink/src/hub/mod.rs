//! The fan-out hub: one producer's consumers, accepting them, greeting them, fanning packets
//! out, holding each frame's item (the GStreamer plugin holds the `gst::Buffer`) until every
//! consumer that got the frame has released it.
//!
//! Two threads touch the hub: the streaming thread (`send_buffer`, `send_control`) and the
//! control thread (`run_control`), which accepts connections and reads releases. All socket
//! writes are non-blocking, so no consumer can stall the streaming thread beyond the bounded
//! wait for `max-held`.
//!
//! Its parts: `admission` (`max-clients` and the fd reserve, at accept); `consumer` (one
//! consumer, its queue and its sends); `policy` (limits, the slow-consumer policy, and the
//! waits for room and prerolls); `backlog` (what a joiner gets first: sticky packets, the
//! latest-keyframe backlog, the preroll frame); `joining` (what a frame with no ready consumer
//! waits for: consumers in their hello or just connecting); `control` (the control thread: accept, hello,
//! the poll loop, reading consumers); `release_grace` (the streaming thread reading releases
//! itself for a while after a frame of a non-live stream); `stats` (counters).

mod admission;
mod backlog;
mod consumer;
mod control;
mod joining;
mod policy;
mod release_grace;
mod stats;
#[cfg(test)]
mod test_rig;

pub use backlog::StickyKind;
pub use joining::Joining;
pub use policy::{Limits, PassThrough, PrerollWait, SlowPolicy, SyncMethod};
pub use release_grace::RELEASE_GRACE_ENV;
pub use stats::{ConsumerStats, HubStats};

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::file_ids::FileIds;
use crate::pending::PendingQueries;
use crate::protocol::{self, BufferHeader, Packet, QueryReplyPacket};
use crate::transport::{TransportError, Waker};
use backlog::{BacklogEntry, Sticky};
use consumer::{Consumer, Phase};
use policy::Offer;
use release_grace::Grace;

/// Something the hub reports to its owner (the element logs it with its debug category).
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
    /// For the logs at INFO: each connection accepted or refused, with its credentials.
    Info(String),
    /// A following consumer's pipeline prerolled (for the logs).
    Prerolled {
        id: u64,
        buffer_id: u64,
        barriers: u32,
    },
    /// For the logs at DEBUG, made only when [`Hub::set_log_level`] asked for them: files
    /// registered, frames skipped, the slow policy's decisions.
    Debug(String),
    /// For the logs at LOG (per frame), likewise: each release.
    Log(String),
    /// A consumer's upstream event, query or bus message, for the producer's pipeline. Sent
    /// outside the hub's lock; a query's answer goes back through [`Hub::reply`].
    Request {
        id: u64,
        pid: Option<i32>,
        request: Request,
    },
}

/// Which of the hub's log events ([`HubEvent::Debug`], [`HubEvent::Log`]) are made: their
/// texts cost a format each, per frame for `Log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum HubLog {
    Quiet = 0,
    Debug = 1,
    Log = 2,
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

/// What a consumer asks of the producer's pipeline.
pub enum Request {
    UpstreamEvent(protocol::EventPacket),
    Query(protocol::QueryPacket),
    Message {
        packet: protocol::MessagePacket,
        /// Its fdlinksrc follows the producer's state (mode=follow): the two pipelines run as
        /// one, so its error is the producer's too. Read when the packet arrived: the
        /// consumer may be gone by the time the message is served.
        from_follower: bool,
    },
    State(protocol::StatePacket),
}

/// One frame as offered to the consumers: its header (each memory's `fd_index` picks one of
/// `fds`, its `file_id` is that file's id in the hub's file ids, 0 for none) and its fds.
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
    /// (see the `release_grace` module): a non-live stream that plays. A live one comes back only a
    /// frame period later, so its releases are read by the control thread at once.
    pub reads_releases: bool,
}

/// Outcome of offering one frame to the consumers.
pub struct SendOutcome {
    /// Consumers that were given it (sent now or queued).
    pub sent_to: usize,
    /// slow-policy=copy: consumers at max-held that want the frame as a copy
    /// (`send_copy`).
    pub wants_copy: Vec<u64>,
    /// Frames skipped for a consumer by its slow policy in this offer: this frame, or frames
    /// that waited for its socket and made way for it.
    pub skipped: u64,
}

/// Where the hub takes the ids of files that went (register-once fds), to retire them with
/// its consumers: [`FileIds`], or a producer's own registry built on it.
pub trait RetiredFiles: Send + Sync {
    /// Ids whose files nothing uses any more, since the last call.
    fn take_retired(&self) -> Vec<u32>;
}

impl RetiredFiles for FileIds {
    fn take_retired(&self) -> Vec<u32> {
        FileIds::take_retired(self)
    }
}

/// A frame's item (the producer's buffer), kept until every holder released it.
struct HeldItem<H> {
    _item: H,
    /// Consumers that hold it, plus one while the latest-keyframe backlog keeps it.
    holders: u32,
    copy: bool,
}

struct Inner<H> {
    consumers: Vec<Consumer>,
    held: HashMap<u64, HeldItem<H>>,
    /// Among `held`, items of upstream's memory (what max-held-total limits).
    originals_held: usize,
    /// sync-method=latest-keyframe: the latest keyframe and the frames since.
    backlog: Vec<BacklogEntry>,
    /// The frame the producer prerolled on, until it plays, flushes or stops.
    preroll_frame: Option<BacklogEntry>,
    sticky: Sticky,
    next_consumer_id: u64,
    flushing: bool,
    stats: HubStats,
    /// Events to report once the lock is released.
    deferred: Vec<HubEvent>,
    grace: Grace,
}

impl<H> Default for Inner<H> {
    fn default() -> Self {
        Inner {
            consumers: Vec::new(),
            held: HashMap::new(),
            originals_held: 0,
            backlog: Vec::new(),
            preroll_frame: None,
            sticky: Sticky::default(),
            next_consumer_id: 1,
            flushing: false,
            stats: HubStats::default(),
            deferred: Vec::new(),
            grace: Grace::default(),
        }
    }
}

impl<H> Inner<H> {
    fn has_ready_consumer(&self) -> bool {
        self.consumers.iter().any(Consumer::is_ready)
    }

    /// Items of upstream's memory the hub keeps for joiners: the latest-keyframe backlog's and
    /// the preroll frame.
    fn kept_originals(&self) -> usize {
        let preroll = self
            .preroll_frame
            .as_ref()
            .map(|p| p.id)
            .filter(|id| !self.backlog.iter().any(|e| e.id == *id));
        self.backlog
            .iter()
            .map(|e| e.id)
            .chain(preroll)
            .filter(|id| self.held.get(id).is_some_and(|h| !h.copy))
            .count()
    }

    /// A holder let go of frame `buffer_id`; its item goes with the last one.
    fn release_one(&mut self, buffer_id: u64) {
        if let Some(h) = self.held.get_mut(&buffer_id) {
            h.holders -= 1;
            if h.holders == 0
                && let Some(h) = self.held.remove(&buffer_id)
                && !h.copy
            {
                self.originals_held -= 1;
            }
        }
    }
}

/// The fan-out hub, holding an `H` per frame (see the module docs). `F` gives the ids of
/// register-once files and says which went.
pub struct Hub<H: Send + 'static, F: RetiredFiles = FileIds> {
    inner: Mutex<Inner<H>>,
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
    files: Option<F>,
    /// The release grace, in µs (0: none; see `release_grace`).
    release_grace_us: AtomicU64,
    /// Whose connections are served (see `control`).
    peers: Mutex<control::PeerGate>,
    /// How many connections are served (see `admission`).
    admission: Mutex<admission::Admission>,
    /// Consumers on their way in, for a frame with none ready (see `joining`).
    arrivals: joining::Arrivals,
    /// Which log events are made (a `HubLog`).
    log_level: std::sync::atomic::AtomicU8,
    on_event: Box<dyn Fn(HubEvent) + Send + Sync>,
}

impl<H: Send + 'static, F: RetiredFiles> Hub<H, F> {
    /// A hub with no consumer yet; `run_control` then accepts them. `register_files`: files
    /// get ids from an `F` ([`Self::file_registry`]) and cross once per consumer. The release
    /// grace is on unless `FDLINK_RELEASE_GRACE=0` ([`RELEASE_GRACE_ENV`]).
    pub fn new(
        limits: Limits,
        register_files: bool,
        on_event: impl Fn(HubEvent) + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TransportError>
    where
        F: Default,
    {
        Ok(Arc::new(Hub {
            inner: Mutex::new(Inner::default()),
            room: Condvar::new(),
            room_waiters: AtomicUsize::new(0),
            waker: Waker::new()?,
            stop: AtomicBool::new(false),
            next_buffer_id: AtomicU64::new(1),
            limits,
            pending: PendingQueries::default(),
            files: register_files.then(F::default),
            release_grace_us: AtomicU64::new(release_grace::configured().as_micros() as u64),
            peers: Mutex::new(control::PeerGate::default()),
            admission: Mutex::new(admission::Admission::default()),
            arrivals: joining::Arrivals::default(),
            log_level: std::sync::atomic::AtomicU8::new(HubLog::Quiet as u8),
            on_event: Box::new(on_event),
        }))
    }

    /// Which log events to make from now on (the element asks for those its debug category
    /// prints).
    pub fn set_log_level(&self, level: HubLog) {
        self.log_level.store(level as u8, Ordering::Relaxed);
    }

    /// Whether log events of `level` are made.
    fn logs(&self, level: HubLog) -> bool {
        self.log_level.load(Ordering::Relaxed) >= level as u8
    }

    /// The registry that gives files their ids, when fds are registered once.
    pub fn file_registry(&self) -> Option<&F> {
        self.files.as_ref()
    }

    /// Tells each consumer to close the registered files whose memories are all gone (their
    /// pool was flushed or replaced), behind what is queued for it.
    fn retire_files(&self, inner: &mut Inner<H>, removed: &mut Vec<(u64, Removal)>) {
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
            if let Err(reason) = c.queue_or_send(&bytes) {
                removed.push((c.id, reason));
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<H>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits on `room` (releases, removals, Prerolled packets, flushing) for at most `wait`.
    fn wait_room<'a>(
        &self,
        mut inner: MutexGuard<'a, Inner<H>>,
        wait: Duration,
    ) -> MutexGuard<'a, Inner<H>> {
        if inner.grace.running() {
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

    /// Wakes the threads waiting on `room`, if any. Call it after the change they wait for
    /// was made under the lock (with the lock held or after it was released).
    fn notify_room(&self) {
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_all();
        }
    }

    pub fn has_ready_consumer(&self) -> bool {
        self.lock().has_ready_consumer()
    }

    /// sync-method=latest-keyframe (or auto on encoded media): every frame goes through
    /// `send_buffer`, consumers or not.
    pub fn keeps_backlog(&self) -> bool {
        self.sync_method(&self.lock()) == SyncMethod::LatestKeyframe
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
        let mut queued = false;
        let events = {
            let mut inner = self.lock();
            // Retires go first: a consumer's files close as soon as the stream says anything.
            self.retire_files(&mut inner, &mut removed);
            inner.sticky.store(&bytes, sticky, is_caps);
            // A flush or a new stream: the frames of the backlog no longer lead anywhere.
            if matches!(sticky, StickyKind::FlushStop | StickyKind::StreamStart) {
                inner.grace.reset_backoff();
                backlog::clear_backlog(&mut inner);
                backlog::clear_preroll_frame(&mut inner);
            }
            let barrier = matches!(sticky, StickyKind::PausedState | StickyKind::FlushStop);
            for c in inner.consumers.iter_mut().filter(|c| c.is_ready()) {
                match c.queue_or_send(&bytes) {
                    Ok(()) => {
                        c.barriers_sent += u32::from(barrier);
                        queued |= !c.queue.is_empty();
                    }
                    Err(reason) => removed.push((c.id, reason)),
                }
            }
            for (id, reason) in &removed {
                self.remove_consumer(&mut inner, *id, reason.clone());
            }
            std::mem::take(&mut inner.deferred)
        };
        self.after_removals(removed, events);
        if queued {
            // The control thread sends queued packets when their sockets have room.
            self.waker.wake();
        }
    }

    /// Sends consumer `id` the answer to one of its requests (a QueryReply), in order behind
    /// what already waits for it; nothing when that consumer is gone.
    pub fn reply(&self, id: u64, packet: &Packet<BorrowedFd<'_>>) {
        let mut bytes = Vec::with_capacity(64);
        if packet.encode(&mut bytes).is_err() {
            return;
        }
        let mut removed = Vec::new();
        let mut queued = false;
        let events = {
            let mut inner = self.lock();
            if let Some(c) = inner.consumers.iter_mut().find(|c| c.id == id) {
                match c.queue_or_send(&bytes) {
                    Ok(()) => queued = !c.queue.is_empty(),
                    Err(reason) => removed.push((id, reason)),
                }
            }
            for (id, reason) in &removed {
                self.remove_consumer(&mut inner, *id, reason.clone());
            }
            std::mem::take(&mut inner.deferred)
        };
        self.after_removals(removed, events);
        if queued {
            // The control thread sends queued packets when their sockets have room.
            self.waker.wake();
        }
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
            if inner.grace.running() {
                // The replies must be read now, not when the grace runs out.
                self.end_grace(&mut inner);
            }
            for c in inner
                .consumers
                .iter()
                .filter(|c| c.is_ready() && !c.stalled && c.queue.is_empty())
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

    /// Allocates the id for the next buffer packet.
    pub fn next_buffer_id(&self) -> u64 {
        self.next_buffer_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Offers a frame to every ready consumer, each per its limits and the slow policy: sent
    /// now, queued behind what waits for its socket, skipped, or (slow-policy=copy) left for
    /// `send_copy`. Keeps `item` (which owns the fds) until every consumer given it released
    /// it. `copied_bytes`: the frame was copied into a memfd to be shareable.
    pub fn send_buffer(
        &self,
        frame: &Frame<'_>,
        item: H,
        copied_bytes: Option<usize>,
    ) -> SendOutcome {
        self.offer_frame(frame, item, copied_bytes, None)
    }

    /// Sends a slow-policy=copy copy of a frame (`frame.slow_copy`, with its own id) to the
    /// consumers `send_buffer` left for it.
    pub fn send_copy(&self, consumers: &[u64], frame: &Frame<'_>, item: H) -> SendOutcome {
        self.offer_frame(frame, item, None, Some(consumers))
    }

    fn offer_frame(
        &self,
        f: &Frame<'_>,
        item: H,
        copied_bytes: Option<usize>,
        only: Option<&[u64]>,
    ) -> SendOutcome {
        let mut removed = Vec::new();
        let mut wants_copy = Vec::new();
        let mut holders = 0u32;
        let mut queued = false;
        let skipped;
        let events;
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if inner.grace.running() {
                self.read_consumers_here(inner, &mut removed);
            }
            self.retire_files(inner, &mut removed);
            if only.is_none() {
                inner.stats.frames_in += 1;
                if !inner.has_ready_consumer() {
                    inner.stats.frames_without_consumer += 1;
                }
            }
            if let Some(n) = copied_bytes {
                inner.stats.frames_copied += 1;
                inner.stats.bytes_copied += n as u64;
            }
            let total_share = self.total_share(inner);
            let now = Instant::now();
            let mut dropped_queued = Vec::new();
            let mut dropped = 0;
            for c in inner
                .consumers
                .iter_mut()
                .filter(|c| c.is_ready() && only.is_none_or(|ids| ids.contains(&c.id)))
            {
                let (registered, queue_drops) = (c.files.len(), dropped_queued.len());
                let outcome = self.offer(c, f, total_share, now, &mut dropped_queued);
                match outcome {
                    Ok(Offer::Sent) => holders += 1,
                    Ok(Offer::Queued) => {
                        holders += 1;
                        queued = true;
                    }
                    Ok(Offer::Dropped) => dropped += 1,
                    Ok(Offer::NotYet) => {}
                    Ok(Offer::WantsCopy) => wants_copy.push(c.id),
                    Err(ref reason) => removed.push((c.id, reason.clone())),
                }
                if self.logs(HubLog::Debug) {
                    let made = &dropped_queued[queue_drops..];
                    self.log_offer(c, f, &outcome, registered, made, &mut inner.deferred);
                }
            }
            dropped += dropped_queued.len() as u64;
            for id in dropped_queued {
                inner.release_one(id);
            }
            inner.stats.frames_dropped += dropped;
            skipped = dropped;
            if f.slow_copy {
                inner.stats.slow_copies += 1;
            }
            let kept = self.keep_in_backlog(inner, f) + backlog::keep_preroll_frame(inner, f);
            if holders + kept > 0 {
                inner.held.insert(
                    f.id,
                    HeldItem {
                        _item: item,
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
                p.zero_copy = copied_bytes.is_none() && !f.header.memories.is_empty();
            }
            if holders > 0 && only.is_none() {
                inner.stats.frames_sent += 1;
                if f.header.memories.is_empty() {
                    inner.stats.frames_empty += 1;
                } else if copied_bytes.is_none() {
                    inner.stats.frames_zero_copy += 1;
                }
            }
            for (id, reason) in &removed {
                self.remove_consumer(inner, *id, reason.clone());
            }
            if f.reads_releases {
                self.begin_grace(inner, now);
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
            skipped,
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

    fn remove_consumer(&self, inner: &mut Inner<H>, id: u64, reason: Removal) {
        let Some(pos) = inner.consumers.iter().position(|c| c.id == id) else {
            return;
        };
        let c = inner.consumers.swap_remove(pos);
        inner.stats.fds_sent += c.fds_sent;
        inner.stats.files_registered += c.registrations;
        for buffer_id in c.held.into_keys() {
            inner.release_one(buffer_id);
        }
        inner.deferred.push(if c.phase == Phase::Ready {
            HubEvent::ConsumerRemoved { id, reason }
        } else {
            HubEvent::Warning(format!(
                "rejected connection {id}{}: {reason}",
                c.pid.map_or_else(String::new, |p| format!(" (pid {p})"))
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
        self.disconnect(id, Removal::Removed)
    }

    /// Drops ready consumer `id` for `reason`: its socket closes and what it held is released,
    /// as for any consumer that goes. Unless the application removed it, it is first sent an
    /// error packet naming the reason, which its fdlinksrc reports instead of a bare
    /// disconnection. False when there is no such consumer.
    pub fn disconnect(&self, id: u64, reason: Removal) -> bool {
        let (found, events) = {
            let mut inner = self.lock();
            let found = inner.consumers.iter().find(|c| c.id == id && c.is_ready());
            if let Some(c) = found
                && reason != Removal::Removed
            {
                c.conn.send_error(&format!(
                    "the producer disconnected consumer {id}: {reason}"
                ));
            }
            let found = found.is_some();
            if found {
                self.remove_consumer(&mut inner, id, reason);
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

    /// Stops the control thread.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.pending.close();
        self.waker.wake();
        self.set_flushing(true);
    }

    /// Drops every consumer and every held item (after the control thread stopped). Unread
    /// releases are read first: closing a socket with unread datagrams makes the kernel report
    /// ECONNRESET to the consumer ahead of the packets (EOS among them) still queued for it.
    pub fn clear(&self) {
        let mut inner = self.lock();
        let mut buf = vec![0u8; protocol::MAX_PACKET_SIZE];
        for c in &inner.consumers {
            while c.conn.try_recv(&mut buf).is_ok() {}
        }
        inner.consumers.clear();
        inner.backlog.clear();
        inner.preroll_frame = None;
        inner.held.clear();
        inner.originals_held = 0;
    }
}
