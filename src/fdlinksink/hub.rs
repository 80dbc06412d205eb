//! Consumers of one fdlinksink: accepting them, greeting them, fanning packets out, holding
//! each buffer until every consumer that got it has released it.
//!
//! Two threads touch the hub: the streaming thread (`send_buffer`, `send_event`) and the
//! control thread (`run_control`), which accepts connections and reads releases. All socket
//! writes are non-blocking, so no consumer can stall the streaming thread beyond the bounded
//! wait for `max-held`.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use crate::control::PendingQueries;
use crate::protocol::{self, Hello, MAX_PACKET_SIZE, Packet, QueryReplyPacket, Role};
use crate::transport::{Connection, Listener, TransportError, Waker, poll_many};

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
}

/// One consumer's counters, for the `stats` property.
#[derive(Debug, Clone)]
pub struct ConsumerStats {
    pub id: u64,
    pub pid: i32,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub held: u32,
    pub releases: u64,
    pub bytes_sent: u64,
    pub idle_ms: u64,
    /// Mean time from sending a buffer to its release, in µs (0 before the first release).
    pub release_avg_us: u64,
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

struct Consumer {
    id: u64,
    conn: Arc<Connection>,
    pid: Option<i32>,
    phase: Phase,
    /// Control packets (never buffers) waiting for room in the socket, in order.
    pending: VecDeque<Vec<u8>>,
    /// Buffers it holds, with when each was sent.
    held: HashMap<u64, Instant>,
    /// Stayed at max-held through a whole wait: not waited for again until it releases.
    stalled: bool,
    frames_sent: u64,
    frames_dropped: u64,
    releases: u64,
    bytes_sent: u64,
    release_wait: Duration,
    last_activity: Instant,
}

impl Consumer {
    /// Counts a buffer packet that went out to this consumer, which now holds the buffer.
    fn took(&mut self, buffer_id: u64, now: Instant, size: u64) {
        self.held.insert(buffer_id, now);
        self.frames_sent += 1;
        self.bytes_sent += size;
    }
}

struct HeldBuffer {
    _buffer: gst::Buffer,
    holders: u32,
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
    pub frames_without_consumer: u64,
    pub releases: u64,
    pub consumers_total: u64,
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
    sticky: Sticky,
    next_consumer_id: u64,
    flushing: bool,
    stats: HubStats,
    /// Events to report once the lock is released.
    deferred: Vec<HubEvent>,
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
    None,
}

pub struct Hub {
    inner: Mutex<Inner>,
    room: Condvar,
    waker: Waker,
    stop: AtomicBool,
    /// Ids for buffer packets, taken without the lock.
    next_buffer_id: AtomicU64,
    max_held: u32,
    /// Buffers all consumers together may hold (0: no limit).
    max_held_total: u32,
    policy: SlowPolicy,
    slow_wait: Duration,
    /// Queries this producer asked its consumers, waiting for replies.
    pending: PendingQueries,
    on_event: Box<dyn Fn(HubEvent) + Send + Sync>,
}

/// Outcome of offering one buffer to the consumers.
pub struct SendOutcome {
    pub sent_to: usize,
}

/// Limits and policy for slow consumers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_held: u32,
    pub max_held_total: u32,
    pub policy: SlowPolicy,
    /// How long Auto waits for a full consumer before skipping it.
    pub slow_wait: Duration,
}

impl Hub {
    pub fn new(
        limits: Limits,
        on_event: impl Fn(HubEvent) + Send + Sync + 'static,
    ) -> Result<Arc<Hub>, TransportError> {
        Ok(Arc::new(Hub {
            inner: Mutex::new(Inner {
                next_consumer_id: 1,
                ..Default::default()
            }),
            room: Condvar::new(),
            waker: Waker::new()?,
            stop: AtomicBool::new(false),
            next_buffer_id: AtomicU64::new(1),
            max_held: limits.max_held,
            max_held_total: limits.max_held_total,
            policy: limits.policy,
            slow_wait: limits.slow_wait,
            pending: PendingQueries::default(),
            on_event: Box::new(on_event),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> (HubStats, u32, u32) {
        let inner = self.lock();
        let ready = inner
            .consumers
            .iter()
            .filter(|c| c.phase == Phase::Ready)
            .count() as u32;
        (inner.stats.clone(), ready, inner.held.len() as u32)
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

    pub fn count_frame_without_consumer(&self) {
        let mut inner = self.lock();
        inner.stats.frames_in += 1;
        inner.stats.frames_without_consumer += 1;
    }

    pub fn set_flushing(&self, flushing: bool) {
        self.lock().flushing = flushing;
        self.room.notify_all();
    }

    /// Stores a control packet (caps or event) for late joiners and sends it to every ready
    /// consumer, in stream order behind anything already queued for it.
    pub fn send_control(&self, bytes: Vec<u8>, sticky: StickyKind, is_caps: bool) {
        let mut removed = Vec::new();
        {
            let mut inner = self.lock();
            let s = &mut inner.sticky;
            match (is_caps, sticky) {
                (true, _) => s.caps = Some(bytes.clone()),
                (_, StickyKind::StreamStart) => {
                    // A new stream: the old one's segment, tags and EOS no longer apply.
                    *s = Sticky {
                        stream_start: Some(bytes.clone()),
                        caps: s.caps.take(),
                        state: s.state.take(),
                        ..Default::default()
                    };
                }
                (_, StickyKind::Segment) => s.segment = Some(bytes.clone()),
                (_, StickyKind::Tags) => s.tags = Some(bytes.clone()),
                (_, StickyKind::Eos) => s.eos = Some(bytes.clone()),
                (_, StickyKind::State) => s.state = Some(bytes.clone()),
                (_, StickyKind::FlushStop) => {
                    s.segment = None;
                    s.eos = None;
                }
                (_, StickyKind::None) => {}
            }
            for c in inner
                .consumers
                .iter_mut()
                .filter(|c| c.phase == Phase::Ready)
            {
                if let Err(reason) = queue_or_send(c, &bytes) {
                    removed.push((c.id, reason));
                }
            }
            for (id, reason) in &removed {
                self.remove_consumer(&mut inner, *id, reason.clone());
            }
        }
        self.after_removals(removed);
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
            let inner = self.lock();
            for c in inner
                .consumers
                .iter()
                .filter(|c| c.phase == Phase::Ready && !c.stalled && c.pending.is_empty())
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
            inner = self.room.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether sending a frame would leave all consumers together over `max-held-total`.
    fn over_total(&self, inner: &Inner) -> bool {
        self.max_held_total > 0 && inner.held.len() >= self.max_held_total as usize
    }

    /// Before a frame, under the Block policy (and Auto with a non-live upstream): waits until
    /// every ready consumer has room under `max-held` and all together under
    /// `max-held-total`. Auto waits at most `slow_wait`, then marks the consumers still full
    /// as stalled and does not wait for them again until they release something.
    /// Returns false when flushing.
    pub fn wait_for_room(&self, live: bool) -> bool {
        let bounded = match self.policy {
            SlowPolicy::Block => false,
            SlowPolicy::Auto if !live => true,
            _ => return true,
        };
        let deadline = Instant::now() + self.slow_wait;
        let mut inner = self.lock();
        loop {
            if inner.flushing {
                return false;
            }
            let max = self.max_held as usize;
            let full = inner
                .consumers
                .iter()
                .any(|c| c.phase == Phase::Ready && !c.stalled && c.held.len() >= max)
                || self.over_total(&inner);
            if !full {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if bounded && left.is_zero() {
                for c in inner.consumers.iter_mut() {
                    if c.phase == Phase::Ready && c.held.len() >= max {
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
            inner = self
                .room
                .wait_timeout(inner, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Allocates the id for the next buffer packet.
    pub fn next_buffer_id(&self) -> u64 {
        self.next_buffer_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a frame that came in (`copied_bytes` when it was copied into a memfd), sends its
    /// encoded packet and fds to every ready consumer with room, and keeps `buffer` (which owns
    /// the fds) until each of them released it.
    pub fn send_buffer(
        &self,
        buffer_id: u64,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        buffer: gst::Buffer,
        copied_bytes: Option<usize>,
    ) -> SendOutcome {
        let size = buffer.size() as u64;
        // Keeps the frame's memory out of its pool while sends are still under way, even if
        // the consumers that have it already released it.
        let keep = buffer.clone();
        let mut removed = Vec::new();
        let mut holders = 0u32;
        let mut blocked: Vec<u64> = Vec::new();
        {
            let mut inner = self.lock();
            inner.stats.frames_in += 1;
            if let Some(n) = copied_bytes {
                inner.stats.frames_copied += 1;
                inner.stats.bytes_copied += n as u64;
            }
            let max_held = self.max_held as usize;
            let over_total = self.over_total(&inner);
            let policy = self.policy;
            let mut dropped = 0;
            let now = Instant::now();
            for c in inner
                .consumers
                .iter_mut()
                .filter(|c| c.phase == Phase::Ready)
            {
                // A consumer behind on control packets or at its hold limit is handled per
                // policy rather than stalling the others; max-held-total skips everyone.
                let full = !c.pending.is_empty() || c.held.len() >= max_held;
                if full && policy == SlowPolicy::Disconnect {
                    removed.push((
                        c.id,
                        Removal::Slow(format!(
                            "holds {} buffers (max-held {max_held}), {} control packets queued",
                            c.held.len(),
                            c.pending.len()
                        )),
                    ));
                    continue;
                }
                if full || over_total {
                    c.frames_dropped += 1;
                    dropped += 1;
                    continue;
                }
                match c.conn.try_send(bytes, fds) {
                    Ok(()) => {
                        c.took(buffer_id, now, size);
                        holders += 1;
                    }
                    Err(TransportError::WouldBlock) => match policy {
                        SlowPolicy::Block => blocked.push(c.id),
                        SlowPolicy::Disconnect => removed.push((
                            c.id,
                            Removal::Slow("its socket is full (it stopped reading)".into()),
                        )),
                        SlowPolicy::Drop | SlowPolicy::Auto => {
                            c.frames_dropped += 1;
                            dropped += 1;
                        }
                    },
                    Err(e) => removed.push((c.id, Removal::Error(format!("send failed: {e}")))),
                }
            }
            inner.stats.frames_dropped += dropped;
            inner.held.insert(
                buffer_id,
                HeldBuffer {
                    _buffer: buffer,
                    holders,
                },
            );
            for (id, reason) in &removed {
                self.remove_consumer(&mut inner, *id, reason.clone());
            }
        }
        self.after_removals(removed);
        // Block: wait for room in each full socket, without the lock (the control thread
        // keeps reading releases meanwhile).
        while !blocked.is_empty() {
            let conns: Vec<(u64, Arc<Connection>)> = {
                let inner = self.lock();
                if inner.flushing {
                    break;
                }
                inner
                    .consumers
                    .iter()
                    .filter(|c| blocked.contains(&c.id))
                    .map(|c| (c.id, c.conn.clone()))
                    .collect()
            };
            if conns.is_empty() {
                break;
            }
            let watch: Vec<(BorrowedFd<'_>, PollFlags)> = conns
                .iter()
                .map(|(_, c)| (c.as_fd(), PollFlags::POLLOUT))
                .collect();
            let _ = poll_many(&watch, Some(Duration::from_millis(50)));
            drop(watch);
            let mut inner = self.lock();
            let now = Instant::now();
            let mut sent_now = 0;
            let mut failed = Vec::new();
            let mut done = Vec::new();
            for c in inner
                .consumers
                .iter_mut()
                .filter(|c| blocked.contains(&c.id))
            {
                match c.conn.try_send(bytes, fds) {
                    Ok(()) => {
                        c.took(buffer_id, now, size);
                        sent_now += 1;
                        done.push(c.id);
                    }
                    Err(TransportError::WouldBlock) => {}
                    Err(e) => failed.push((c.id, Removal::Error(format!("send failed: {e}")))),
                }
            }
            // Consumers served now, or gone meanwhile, are no longer waited for.
            blocked.retain(|id| !done.contains(id) && inner.consumers.iter().any(|c| c.id == *id));
            if sent_now > 0 {
                inner
                    .held
                    .entry(buffer_id)
                    .or_insert_with(|| HeldBuffer {
                        _buffer: keep.clone(),
                        holders: 0,
                    })
                    .holders += sent_now;
            }
            holders += sent_now;
            for (id, reason) in &failed {
                blocked.retain(|b| b != id);
                self.remove_consumer(&mut inner, *id, reason.clone());
            }
        }
        let mut inner = self.lock();
        if holders == 0 {
            inner.held.remove(&buffer_id);
        }
        if holders > 0 {
            inner.stats.frames_sent += 1;
            if copied_bytes.is_none() {
                inner.stats.frames_zero_copy += 1;
            }
        }
        SendOutcome {
            sent_to: holders as usize,
        }
    }

    /// Waits up to `timeout` until no control packet is queued for any consumer (used at EOS
    /// so consumers see everything before the producer goes away).
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let busy = self.lock().consumers.iter().any(|c| !c.pending.is_empty());
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

    fn after_removals(&self, removed: Vec<(u64, Removal)>) {
        if !removed.is_empty() {
            self.room.notify_all();
        }
        self.emit_deferred();
    }

    /// Reports what happened under the lock, now that it is not held (the element emits
    /// signals whose handlers may call back into it).
    fn emit_deferred(&self) {
        let events = std::mem::take(&mut self.lock().deferred);
        for e in events {
            (self.on_event)(e);
        }
    }

    /// Removes a consumer on the application's request. False when there is no such consumer.
    pub fn remove(&self, id: u64) -> bool {
        let found = {
            let mut inner = self.lock();
            let found = inner
                .consumers
                .iter()
                .any(|c| c.id == id && c.phase == Phase::Ready);
            if found {
                self.remove_consumer(&mut inner, id, Removal::Removed);
            }
            found
        };
        if found {
            self.room.notify_all();
            self.waker.wake();
        }
        self.emit_deferred();
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
                held: c.held.len() as u32,
                releases: c.releases,
                bytes_sent: c.bytes_sent,
                idle_ms: now.duration_since(c.last_activity).as_millis() as u64,
                release_avg_us: (c.release_wait.as_micros() as u64)
                    .checked_div(c.releases)
                    .unwrap_or(0),
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
        inner.held.clear();
    }

    /// The control thread: accepts consumers, runs the hello, reads releases.
    /// `listener` is None for an inherited, already-connected socket (`inherited`).
    pub fn run_control(&self, listener: Option<&Listener>, inherited: Option<Connection>) {
        let mut buf = vec![0u8; MAX_PACKET_SIZE];
        let our_hello = protocol::encode_hello(&Hello::new(Role::Producer, std::process::id()));
        if let Some(conn) = inherited {
            self.adopt(conn, &our_hello);
        }
        while !self.stop.load(Ordering::SeqCst) {
            let conns: Vec<(u64, Arc<Connection>, bool)> = self
                .lock()
                .consumers
                .iter()
                .map(|c| (c.id, c.conn.clone(), !c.pending.is_empty()))
                .collect();
            let mut watch: Vec<(BorrowedFd<'_>, PollFlags)> =
                vec![(self.waker.as_fd(), PollFlags::POLLIN)];
            if let Some(l) = listener {
                watch.push((l.as_fd(), PollFlags::POLLIN));
            }
            let first_consumer = watch.len();
            for (_, conn, want_out) in &conns {
                let mut ev = PollFlags::POLLIN;
                if *want_out {
                    ev |= PollFlags::POLLOUT;
                }
                watch.push((conn.as_fd(), ev));
            }
            let revents = match poll_many(&watch, Some(Duration::from_millis(500))) {
                Ok(r) => r,
                Err(e) => {
                    (self.on_event)(HubEvent::Warning(format!("poll failed: {e}")));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            drop(watch);
            if revents[0].contains(PollFlags::POLLIN) {
                self.waker.reset();
            }
            if let Some(l) = listener
                && revents[1].contains(PollFlags::POLLIN)
            {
                self.accept_all(l, &our_hello);
            }
            let mut released = Vec::new();
            let mut removed = Vec::new();
            let mut requests = Vec::new();
            {
                let mut inner = self.lock();
                for ((id, conn, _), ev) in conns.iter().zip(&revents[first_consumer..]) {
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
                        && let Err(reason) = flush_pending(c)
                    {
                        removed.push((*id, reason));
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
            }
            if !released.is_empty() || !removed.is_empty() {
                self.room.notify_all();
            }
            self.emit_deferred();
            for event in requests {
                (self.on_event)(event);
            }
        }
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
        let pid = conn.peer_pid();
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
        inner.consumers.push(Consumer {
            id,
            conn: Arc::new(conn),
            pid,
            phase: Phase::AwaitingHello {
                since: Instant::now(),
            },
            pending: VecDeque::new(),
            held: HashMap::new(),
            stalled: false,
            frames_sent: 0,
            frames_dropped: 0,
            releases: 0,
            bytes_sent: 0,
            release_wait: Duration::ZERO,
            last_activity: Instant::now(),
        });
    }

    /// Reads everything pending from one consumer. An error means: drop it, for this reason.
    fn read_consumer(
        &self,
        inner: &mut Inner,
        (id, conn): (u64, &Arc<Connection>),
        buf: &mut [u8],
        released: &mut Vec<u64>,
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
                let c = &mut inner.consumers[pos];
                c.phase = Phase::Ready;
                for p in replay {
                    queue_or_send(c, &p)?;
                }
                inner.stats.consumers_total += 1;
                let pid = inner.consumers[pos].pid;
                inner.deferred.push(HubEvent::ConsumerAdded { id, pid });
                self.room.notify_all();
                continue;
            }
            inner.consumers[pos].last_activity = Instant::now();
            match Packet::decode(bytes, got.fds) {
                Ok(Packet::Release { buffer_id }) => {
                    let c = &mut inner.consumers[pos];
                    let Some(sent) = c.held.remove(&buffer_id) else {
                        return Err(refuse(format!(
                            "release of buffer {buffer_id} it does not hold"
                        )));
                    };
                    c.releases += 1;
                    c.release_wait += sent.elapsed();
                    c.stalled = false;
                    release_one(inner, buffer_id);
                    inner.stats.releases += 1;
                    released.push(buffer_id);
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
                    requests.push(self.request(inner, pos, conn, Request::State(st)))
                }
                Ok(Packet::QueryReply(reply)) => self.pending.deliver(reply),
                Ok(_) => {
                    return Err(refuse(
                        "consumer sent a producer-only packet (caps, event or buffer)".into(),
                    ));
                }
                Err(e) => return Err(refuse(e.to_string())),
            }
        }
    }
}

impl Hub {
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

fn release_one(inner: &mut Inner, buffer_id: u64) {
    if let Some(h) = inner.held.get_mut(&buffer_id) {
        h.holders -= 1;
        if h.holders == 0 {
            inner.held.remove(&buffer_id);
        }
    }
}

/// Sends a control packet now, or queues it behind earlier ones when the socket is full.
fn queue_or_send(c: &mut Consumer, bytes: &[u8]) -> Result<(), Removal> {
    if c.pending.is_empty() {
        match c.conn.try_send(bytes, &[]) {
            Ok(()) => return Ok(()),
            Err(TransportError::WouldBlock) => {}
            Err(e) => return Err(Removal::Error(format!("send failed: {e}"))),
        }
    }
    if c.pending.len() >= MAX_PENDING_PACKETS {
        return Err(Removal::Slow(format!(
            "{MAX_PENDING_PACKETS} control packets queued"
        )));
    }
    c.pending.push_back(bytes.to_vec());
    Ok(())
}

fn flush_pending(c: &mut Consumer) -> Result<(), Removal> {
    while let Some(p) = c.pending.front() {
        match c.conn.try_send(p, &[]) {
            Ok(()) => {
                c.pending.pop_front();
            }
            Err(TransportError::WouldBlock) => return Ok(()),
            Err(e) => return Err(Removal::Error(format!("send failed: {e}"))),
        }
    }
    Ok(())
}
