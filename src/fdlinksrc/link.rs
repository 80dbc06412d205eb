//! The consumer's side of a connection. A reader thread takes every packet off the socket:
//! query replies go straight to the thread waiting for them; queries, state changes and
//! messages from the producer are handled here, whatever the streaming thread is doing
//! (downstream elements ask their questions from the streaming thread itself, and a paused
//! live source runs no streaming thread at all); everything else waits, in order, in an inbox
//! that `create()` takes from.
//!
//! While the streaming thread waits in [`Link::next`] with nothing in the inbox, it reads the
//! socket itself and the reader thread stands aside: a frame then wakes one thread, not a
//! reader that wakes the streaming thread in turn (that second wake-up was half the one-way
//! latency of a 30 fps stream). The socket goes back to the reader as `next()` returns, before
//! the frame goes downstream, where the streaming thread may block for a long time; the reader
//! takes it up only after [`READER_GRACE`], so a streaming thread that is back by then (the
//! next frame of a flowing stream) finds it free without waking anybody. The parked reader is
//! not woken by that return either: it looks on a timer of its own (5-40 ms, longer while the
//! streaming thread stays in one wait), so no futex wake lies on a frame's way downstream.
//!
//! The inbox holds at most `max-queued` buffer packets (frames whose producer buffers this
//! consumer pins); what happens to one more is the `leaky` policy (see [`Leaky`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::glib;

use crate::control::PendingQueries;
use crate::memory::{FileTable, FrameFile, Importer, ReleaseTokens};
use fdlink::protocol::{
    self, BufferHeader, MAX_PACKET_SIZE, MessagePacket, Packet, QueryPacket, QueryReplyPacket,
    StatePacket,
};
use fdlink::transport::{Connection, Received, TransportError, Waker};

/// How long a reply, a release or an error packet may wait for room in the socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the reader thread stays aside after the streaming thread left `next()`. A
/// streaming thread back within it (the next frame of a stream that flows) finds the socket
/// still its own: no wake-up on either side, where handing the socket back and forth cost
/// each frame an eventfd write and read and two futex wake-ups. Past it, the reader reads
/// again, so control packets wait at most this long while the streaming thread is blocked
/// downstream (a query reply waits not at all: see `wait_for_socket()`). Only with
/// `leaky=none`: `oldest` and `copy` act on frames as they arrive, which needs the reader
/// thread to keep the socket drained whenever the streaming thread is away, however briefly.
const READER_GRACE: Duration = Duration::from_millis(5);

/// The longest a parked reader thread waits before it looks whether the streaming thread
/// left the socket (see `Link::wait_for_socket`): it may take the socket up this much later
/// than READER_GRACE after the streaming thread left.
const PARKED_PERIOD_MAX: Duration = Duration::from_millis(40);

/// Tells the producer this consumer is done with `buffer_id` (counted in `releases` once
/// sent). The packet is encoded on the stack: one goes out per frame.
fn send_release(conn: &Connection, releases: &AtomicU64, buffer_id: u64) {
    let packet = protocol::encode_release(buffer_id);
    if conn.send_timeout(&packet, &[], SEND_TIMEOUT).is_ok() {
        releases.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the reader does with a frame that arrives while `max-queued` frames wait.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstFdlinkLeaky")]
pub enum Leaky {
    /// Stop reading the socket until downstream takes a frame: the producer's slow-policy
    /// decides (it waits, skips frames for this consumer or drops it).
    #[default]
    #[enum_value(
        name = "None: stop reading until downstream takes a frame (the producer's slow-policy applies)",
        nick = "none"
    )]
    None = 0,
    /// Drop the oldest queued frame and release it to the producer at once.
    #[enum_value(
        name = "Oldest: drop the oldest queued frame, releasing it to the producer",
        nick = "oldest"
    )]
    Oldest = 1,
    /// Copy the oldest queued frame into system memory and release the original at once.
    #[enum_value(
        name = "Copy: copy the oldest queued frame into system memory, releasing the original to the producer",
        nick = "copy"
    )]
    Copy = 2,
}

/// The inbox's limit and what happens at it.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimit {
    /// Buffer packets (producer buffers pinned) the inbox holds at most; with `Leaky::Copy`,
    /// copies are held up to the same number besides.
    pub max_queued: usize,
    pub leaky: Leaky,
}

/// Counters that outlive a connection (reconnects keep counting).
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Frames dropped from the inbox (`Leaky::Oldest`).
    pub dropped: AtomicU64,
    /// Frames copied out of their producer buffer (`Leaky::Copy`).
    pub copied: AtomicU64,
    /// Releases sent to the producer, by buffers' `ReleaseToken`s and by the reader.
    pub releases: Arc<AtomicU64>,
}

/// What `next()` hands the streaming thread.
pub enum Inbound {
    /// A packet in stream order; a buffer packet's files are resolved already (see
    /// `Importer::resolve`).
    Packet(Packet<FrameFile>),
    /// A frame the reader copied into system memory (`Leaky::Copy`); the producer's buffer is
    /// released already. The header is the packet's.
    Copied(BufferHeader, gst::Buffer),
    /// The producer closed the connection.
    Closed,
    /// The socket failed (the producer is gone or unreachable); the text says how.
    Lost(String),
    /// The producer broke the protocol; the text says how.
    Failed(String),
    /// Nothing arrived before the deadline given to `next()`.
    TimedOut,
}

enum Queued {
    Packet(Packet<FrameFile>),
    Copied(BufferHeader, gst::Buffer),
    /// A buffer packet that could not be copied: its fds do not import (why).
    Invalid(String),
}

#[derive(Default)]
struct Inbox {
    items: VecDeque<Queued>,
    /// Buffer packets among `items`: each pins a producer buffer.
    originals: usize,
    /// Copies among `items`.
    copies: usize,
    end: Option<Inbound>,
    flushing: bool,
    /// The element is PLAYING: only then does a full inbox stop the reader (a paused live
    /// source takes nothing, and a follower must still hear the producer's State packets).
    streaming: bool,
    /// Threads waiting for a reply to their query: the reply may be behind frames in the
    /// socket, so a full inbox does not stop the reader meanwhile.
    awaiting_replies: usize,
    stopping: bool,
    /// The streaming thread waits in `next()` with nothing queued and wants the socket.
    streaming_reads: bool,
    /// The reader thread has stood aside: while this and `streaming_reads` hold, only the
    /// streaming thread touches the socket.
    reader_parked: bool,
    /// The reader thread was asked (through its waker) to stand aside and has not yet.
    reader_asked: bool,
    /// Times the streaming thread came to read the socket: the reader thread, standing aside
    /// through its grace, sees from it whether the streaming thread came back meanwhile.
    streaming_visits: u64,
    /// `READER_GRACE` (tests set other values).
    reader_grace: Duration,
    /// No more packets will be read: the end is in `end`, or the link is stopping.
    reading_ended: bool,
    /// Threads waiting on `arrived` / `room` now: a notify with nobody waiting is a futex
    /// call for nothing, and the per-frame ones are skipped then. The reader thread's timed
    /// waits (parked, and through `READER_GRACE`) are not counted: they need no signal.
    arrived_waiters: usize,
    room_waiters: usize,
    /// Signals `signal_room` sent, and the times a parked reader thread woke to look at the
    /// socket's owner: what the tests count.
    room_signals: u64,
    parked_looks: u64,
}

impl Inbox {
    /// The reader must not take another packet off the socket now.
    fn full(&self, limit: QueueLimit) -> bool {
        if !self.streaming || self.awaiting_replies > 0 {
            return false;
        }
        match limit.leaky {
            Leaky::None => self.originals >= limit.max_queued,
            Leaky::Oldest => false,
            Leaky::Copy => self.originals >= limit.max_queued && self.copies >= limit.max_queued,
        }
    }

    /// Index of the oldest buffer packet.
    fn oldest_original(&self) -> Option<usize> {
        self.items
            .iter()
            .position(|q| matches!(q, Queued::Packet(Packet::Buffer(..))))
    }

    fn pop(&mut self) -> Option<Queued> {
        let item = self.items.pop_front()?;
        match &item {
            Queued::Packet(Packet::Buffer(..)) => self.originals -= 1,
            Queued::Copied(..) => self.copies -= 1,
            Queued::Packet(_) | Queued::Invalid(_) => {}
        }
        Some(item)
    }
}

/// How one read of the socket ended.
enum ReadOutcome {
    /// A packet was taken and handled.
    Taken,
    /// The thread's waker woke it: the inbox's flags say why.
    Woken,
    TimedOut,
    /// The connection ended (closed, failed or broken by the producer): boxed, as it
    /// happens once.
    End(Box<Inbound>),
}

/// What the reader thread (or the streaming thread, when it reads) does with the producer's
/// out-of-band packets.
pub trait LinkPeer: Send + 'static {
    /// Answers a query from the producer.
    fn answer(&self, query: &QueryPacket) -> QueryReplyPacket;
    /// The producer's element reached a state.
    fn state(&self, state: StatePacket);
    /// A message from the producer's bus.
    fn message(&self, message: MessagePacket);
}

/// What reading the socket needs, held by whichever thread reads it.
struct SocketReader {
    buf: Vec<u8>,
    importer: Importer,
    /// The producer's registered files: changed only by the packets read, in stream order.
    /// Emptied (the files closed) when the reader thread ends; buffers still out keep theirs.
    files: FileTable,
    peer: Box<dyn LinkPeer>,
}

pub struct Link {
    pub conn: Arc<Connection>,
    pub pending: PendingQueries,
    inbox: Mutex<Inbox>,
    socket_reader: Mutex<SocketReader>,
    /// Signalled when a packet (or the end) is queued.
    arrived: Condvar,
    /// Signalled when the reader may be able to read on (a frame taken, a query waiting,
    /// streaming again, stopping).
    room: Condvar,
    limit: QueueLimit,
    counters: Arc<QueueCounters>,
    /// Wakes the reader thread out of its poll: to stop, or to stand aside.
    reader_waker: Waker,
    /// Wakes the streaming thread out of its poll: flushing or stopping.
    streaming_waker: Waker,
    reader: Mutex<Option<JoinHandle<()>>>,
    /// Preroll barriers received (State packets saying PAUSED, flush-stop events): what a
    /// Prerolled packet counts. Counted as they arrive, as the producer counts them when it
    /// sends them: a follower's sinks may preroll (and so block the streaming thread)
    /// before the streaming thread takes the barrier from the inbox.
    pub barriers: AtomicU32,
    /// The state of the producer's latest State packet, as the reader took it (0: none).
    pub producer_state: AtomicU8,
    /// Files the producer has registered with this consumer now (register-once fds).
    pub files_registered: AtomicU32,
    /// The tokens that send a frame's release once its last memory is freed.
    pub release_tokens: ReleaseTokens,
}

/// While it lives, a full inbox does not stop the reader: see [`Link::awaiting_reply`].
pub struct AwaitingReply<'a>(&'a Link);

impl Drop for AwaitingReply<'_> {
    fn drop(&mut self) {
        self.0.inbox.lock().unwrap().awaiting_replies -= 1;
        self.0.room.notify_all();
    }
}

impl Link {
    /// Starts the reader thread on a connection whose hello is done; `peer` handles the
    /// producer's queries, states and messages on that thread.
    pub fn start(
        conn: Arc<Connection>,
        peer: impl LinkPeer,
        limit: QueueLimit,
        counters: Arc<QueueCounters>,
    ) -> Result<Arc<Link>, TransportError> {
        // A frame may outlive its connection: its release then goes nowhere.
        let weak_conn = Arc::downgrade(&conn);
        let releases = counters.releases.clone();
        let release_tokens = ReleaseTokens::new(move |buffer_id| {
            if let Some(conn) = weak_conn.upgrade() {
                send_release(&conn, &releases, buffer_id);
            }
        });
        let link = Arc::new(Link {
            conn,
            pending: PendingQueries::default(),
            inbox: Mutex::new(Inbox {
                streaming: true,
                reader_grace: READER_GRACE,
                ..Inbox::default()
            }),
            socket_reader: Mutex::new(SocketReader {
                buf: vec![0u8; MAX_PACKET_SIZE],
                importer: Importer::default(),
                files: FileTable::default(),
                peer: Box::new(peer),
            }),
            arrived: Condvar::new(),
            room: Condvar::new(),
            limit,
            counters,
            reader_waker: Waker::new()?,
            streaming_waker: Waker::new()?,
            reader: Mutex::new(None),
            barriers: AtomicU32::new(0),
            producer_state: AtomicU8::new(0),
            files_registered: AtomicU32::new(0),
            release_tokens,
        });
        let reader = link.clone();
        let handle = std::thread::Builder::new()
            .name("fdlinksrc-read".into())
            .spawn(move || reader.read_loop())
            .map_err(|e| TransportError::Sys {
                op: "spawn",
                what: format!("reader thread: {e}"),
                errno: nix::errno::Errno::EAGAIN,
            })?;
        *link.reader.lock().unwrap() = Some(handle);
        Ok(link)
    }

    fn read_loop(&self) {
        let mut end = None;
        while self.wait_for_socket() {
            if let ReadOutcome::End(why) = self.read_one(&self.reader_waker, None) {
                end = Some(*why);
                break;
            }
        }
        self.end_reading(end);
        self.socket_reader.lock().unwrap().files = FileTable::default();
    }

    /// Takes one packet off the socket and handles it, unless `waker` wakes the caller first
    /// or `timeout` passes.
    fn read_one(&self, waker: &Waker, timeout: Option<Duration>) -> ReadOutcome {
        let mut reader = self.socket_reader.lock().unwrap();
        let reader = &mut *reader;
        let got = match self.conn.recv_wait(&mut reader.buf, Some(waker), timeout) {
            Ok(Some(got)) => Ok(got),
            // Whoever wakes a reader sets a flag first, and the caller looks at the flags
            // after this reset: no request is lost.
            Ok(None) => {
                waker.reset();
                return ReadOutcome::Woken;
            }
            Err(TransportError::TimedOut(_)) if timeout.is_some() => {
                return ReadOutcome::TimedOut;
            }
            Err(e) => Err(e),
        };
        match self.take_packet(reader, got) {
            Some(end) => ReadOutcome::End(Box::new(end)),
            None => ReadOutcome::Taken,
        }
    }

    /// Waits until the reader thread may read: not while the inbox is full, nor while the
    /// streaming thread reads, nor within `READER_GRACE` of its leaving (with `leaky=none`,
    /// and unless a query reply is awaited); false once reading has ended.
    fn wait_for_socket(&self) -> bool {
        let mut inbox = self.inbox.lock().unwrap();
        // The grace running now: the streaming thread's visits when it began (another visit
        // starts a new one) and its end.
        let mut grace: Option<(u64, Instant)> = None;
        // While parked: the streaming thread's visits at the last look, and the wait since.
        let mut visits_at_last_look: Option<u64> = None;
        let mut period = Duration::ZERO;
        loop {
            if inbox.stopping || inbox.reading_ended {
                return false;
            }
            if inbox.streaming_reads {
                if !inbox.reader_parked {
                    inbox.reader_parked = true;
                    inbox.reader_asked = false;
                    self.arrived.notify_all();
                }
                grace = None;
                if self.limit.leaky == Leaky::None {
                    // A timed wait, not counted in `room_waiters`: the streaming thread
                    // leaves the socket without a futex wake on every frame's way downstream
                    // (about 20 µs of a 30 fps frame's latency on the test VM); this thread
                    // looks again after `period` instead. The period doubles while the
                    // streaming thread stays in one wait (an idle stream), so an idle
                    // consumer wakes rarely. With a leaky policy the reader must read again
                    // as soon as the streaming thread leaves, so it waits for the signal.
                    let visits = inbox.streaming_visits;
                    period = match visits_at_last_look {
                        Some(v) if v == visits => (period * 2).min(PARKED_PERIOD_MAX),
                        _ => inbox
                            .reader_grace
                            .clamp(Duration::from_millis(1), PARKED_PERIOD_MAX),
                    };
                    visits_at_last_look = Some(visits);
                    inbox = self.room.wait_timeout(inbox, period).unwrap().0;
                    inbox.parked_looks += 1;
                    continue;
                }
            } else {
                if inbox.reader_parked
                    && inbox.awaiting_replies == 0
                    && self.limit.leaky == Leaky::None
                {
                    let visits = inbox.streaming_visits;
                    let end = match grace {
                        Some((v, end)) if v == visits => end,
                        _ => {
                            grace
                                .insert((visits, Instant::now() + inbox.reader_grace))
                                .1
                        }
                    };
                    let left = end.saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        inbox = self.room.wait_timeout(inbox, left).unwrap().0;
                        continue;
                    }
                }
                if !inbox.full(self.limit) {
                    inbox.reader_parked = false;
                    inbox.reader_asked = false;
                    return true;
                }
            }
            inbox.room_waiters += 1;
            inbox = self.room.wait(inbox).unwrap();
            inbox.room_waiters -= 1;
        }
    }

    /// Handles one packet (or a failed read) taken off the socket; returns the end of the
    /// stream if it is one.
    fn take_packet(
        &self,
        reader: &mut SocketReader,
        got: Result<Received, TransportError>,
    ) -> Option<Inbound> {
        let got = match got {
            Ok(got) => got,
            Err(TransportError::Closed) => return Some(Inbound::Closed),
            Err(e @ (TransportError::Truncated | TransportError::FdsTruncated)) => {
                self.conn.send_error(&e.to_string());
                return Some(Inbound::Failed(e.to_string()));
            }
            Err(e) => return Some(Inbound::Lost(e.to_string())),
        };
        match Packet::decode(&reader.buf[..got.len], got.fds) {
            Ok(Packet::QueryReply(reply)) => self.pending.deliver(reply),
            Ok(Packet::Query(q)) => {
                let reply = Packet::QueryReply(reader.peer.answer(&q));
                let _ = self.conn.send_packet(&reply, Some(SEND_TIMEOUT));
            }
            Ok(Packet::State(st)) => {
                if st.state == StatePacket::PAUSED {
                    self.barriers.fetch_add(1, Ordering::SeqCst);
                }
                self.producer_state.store(st.state, Ordering::SeqCst);
                reader.peer.state(st);
                // In stream order too: a follower lets the producer's preroll frame
                // through only once it paused as well (see `create()`).
                self.queue_packet(Packet::State(st));
            }
            Ok(Packet::Message(m)) => reader.peer.message(m),
            Ok(Packet::Buffer(mut header, fds)) => {
                match reader.importer.resolve(&mut reader.files, &mut header, fds) {
                    Ok(frame_files) => {
                        self.queue_frame(Packet::Buffer(header, frame_files), &reader.importer)
                    }
                    Err(e) => {
                        let msg = format!("invalid buffer {}: {e}", header.buffer_id);
                        self.conn.send_error(&msg);
                        return Some(Inbound::Failed(msg));
                    }
                }
                self.files_registered
                    .store(reader.files.len() as u32, Ordering::Relaxed);
            }
            Ok(Packet::Retire { file_ids }) => {
                if let Err(e) = reader.files.retire(&file_ids) {
                    let msg = format!("malformed packet: {e}");
                    self.conn.send_error(&msg);
                    return Some(Inbound::Failed(msg));
                }
                self.files_registered
                    .store(reader.files.len() as u32, Ordering::Relaxed);
            }
            Ok(packet) => {
                let packet = packet
                    .without_fds()
                    .expect("buffer packets are taken above");
                if let Packet::Event { event: ev, .. } = &packet {
                    if ev.event_type == gst::ffi::GST_EVENT_FLUSH_START as u32 {
                        self.flush_queued_frames();
                    } else if ev.event_type == gst::ffi::GST_EVENT_FLUSH_STOP as u32 {
                        self.barriers.fetch_add(1, Ordering::SeqCst);
                    }
                }
                self.queue_packet(packet);
            }
            Err(e) => {
                let msg = format!("malformed packet: {e}");
                self.conn.send_error(&msg);
                return Some(Inbound::Failed(msg));
            }
        }
        None
    }

    /// No more packets will be read (`end`: why, if the socket said so). Fails the queries
    /// still waiting and lets whichever thread is waiting see the end.
    fn end_reading(&self, end: Option<Inbound>) {
        self.pending.close();
        let mut inbox = self.inbox.lock().unwrap();
        inbox.reading_ended = true;
        if end.is_some() {
            inbox.end = end;
        }
        drop(inbox);
        self.arrived.notify_all();
        self.room.notify_all();
    }

    /// The streaming thread's read, in `next()`, while the reader thread stands aside: one
    /// packet, or nothing if woken (flushing, stopping) or at `deadline` (true).
    fn read_on_streaming_thread(&self, deadline: Option<Instant>) -> bool {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match self.read_one(&self.streaming_waker, timeout) {
            ReadOutcome::TimedOut => true,
            ReadOutcome::End(why) => {
                self.end_reading(Some(*why));
                false
            }
            ReadOutcome::Taken | ReadOutcome::Woken => false,
        }
    }

    /// Signals `arrived`, if anybody waits on it, once `inbox` is unlocked.
    fn signal_arrived(&self, inbox: MutexGuard<'_, Inbox>) {
        let waiting = inbox.arrived_waiters > 0;
        drop(inbox);
        if waiting {
            self.arrived.notify_all();
        }
    }

    /// Signals `room`, if anybody waits on it, once `inbox` is unlocked.
    fn signal_room(&self, mut inbox: MutexGuard<'_, Inbox>) {
        let waiting = inbox.room_waiters > 0;
        if waiting {
            inbox.room_signals += 1;
        }
        drop(inbox);
        if waiting {
            self.room.notify_all();
        }
    }

    /// Queues a packet that is not a frame (no limit applies) for `create()`.
    fn queue_packet(&self, packet: Packet<FrameFile>) {
        let mut inbox = self.inbox.lock().unwrap();
        inbox.items.push_back(Queued::Packet(packet));
        self.signal_arrived(inbox);
    }

    /// Queues a buffer packet; past `max-queued`, drops or copies the oldest one.
    fn queue_frame(&self, packet: Packet<FrameFile>, importer: &Importer) {
        let limit = self.limit;
        let mut inbox = self.inbox.lock().unwrap();
        inbox.items.push_back(Queued::Packet(packet));
        inbox.originals += 1;
        let mut dropped = None;
        if inbox.originals > limit.max_queued
            && let Some(i) = inbox.oldest_original()
        {
            match limit.leaky {
                Leaky::Oldest => {
                    dropped = inbox.items.remove(i);
                    inbox.originals -= 1;
                }
                Leaky::Copy if inbox.copies < limit.max_queued => {
                    // Under the lock, so the copy takes the original's place in the order
                    // before `create()` can take it.
                    let copy = self.copy_frame(&mut inbox.items[i], importer);
                    if matches!(copy, Queued::Copied(..)) {
                        inbox.copies += 1;
                    }
                    inbox.items[i] = copy;
                    inbox.originals -= 1;
                }
                // Leaky::None stops reading at the limit; past it only while not streaming
                // or a reply is awaited. Leaky::Copy with max_queued copies waits likewise.
                _ => {}
            }
        }
        self.signal_arrived(inbox);
        if let Some(Queued::Packet(Packet::Buffer(header, fds))) = dropped {
            // Our fds go first: the producer may reuse the buffer once it has the release.
            drop(fds);
            self.release(header.buffer_id);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Copies a queued buffer packet into system memory and releases the producer's buffer.
    fn copy_frame(&self, item: &mut Queued, importer: &Importer) -> Queued {
        let Queued::Packet(Packet::Buffer(header, fds)) = item else {
            unreachable!("copy_frame() is given a buffer packet");
        };
        let buffer_id = header.buffer_id;
        // Released below, once the imported buffer (and with it our fds) is gone.
        let copy = match importer.import(header, std::mem::take(fds), None) {
            Ok(original) => original
                .copy_deep()
                .map_err(|e| format!("cannot copy buffer {buffer_id}: {e}")),
            Err(e) => Err(format!("invalid buffer {buffer_id}: {e}")),
        };
        match copy {
            Ok(copy) => {
                self.release(buffer_id);
                self.counters.copied.fetch_add(1, Ordering::Relaxed);
                Queued::Copied(header.clone(), copy)
            }
            Err(msg) => {
                self.conn.send_error(&msg);
                Queued::Invalid(msg)
            }
        }
    }

    /// The producer flushes: the frames waiting in the inbox would be flushed away
    /// downstream anyway, so they go now (released) and the flush reaches downstream without
    /// waiting for them to play out (flush-start itself keeps its place in the stream: only
    /// the streaming thread pushes downstream).
    fn flush_queued_frames(&self) {
        let mut inbox = self.inbox.lock().unwrap();
        let items = std::mem::take(&mut inbox.items);
        let mut flushed = Vec::new();
        for item in items {
            match item {
                Queued::Packet(Packet::Buffer(header, fds)) => {
                    drop(fds);
                    flushed.push(header.buffer_id);
                }
                Queued::Copied(..) | Queued::Invalid(_) => {}
                other => inbox.items.push_back(other),
            }
        }
        inbox.originals = 0;
        inbox.copies = 0;
        self.signal_room(inbox);
        for buffer_id in flushed {
            self.release(buffer_id);
        }
    }

    fn release(&self, buffer_id: u64) {
        send_release(&self.conn, &self.counters.releases, buffer_id);
    }

    /// The next packet (or the end), or TimedOut at `deadline`; None while flushing.
    pub fn next(&self, deadline: Option<Instant>) -> Option<Inbound> {
        let mut inbox = self.inbox.lock().unwrap();
        let next = loop {
            if inbox.flushing {
                break None;
            }
            if let Some(item) = inbox.pop() {
                break Some(match item {
                    Queued::Packet(p) => Inbound::Packet(p),
                    Queued::Copied(header, buffer) => Inbound::Copied(header, buffer),
                    Queued::Invalid(why) => Inbound::Failed(why),
                });
            }
            if let Some(end) = inbox.end.take() {
                // Stays ended for later calls.
                inbox.end = Some(match &end {
                    Inbound::Closed => Inbound::Closed,
                    Inbound::Lost(m) => Inbound::Lost(m.clone()),
                    Inbound::Failed(m) => Inbound::Failed(m.clone()),
                    Inbound::Packet(_) | Inbound::Copied(..) | Inbound::TimedOut => {
                        unreachable!("only ends are stored")
                    }
                });
                break Some(end);
            }
            if !inbox.stopping && !inbox.reading_ended {
                if !inbox.streaming_reads {
                    inbox.streaming_visits += 1;
                }
                inbox.streaming_reads = true;
                if inbox.reader_parked {
                    drop(inbox);
                    let timed_out = self.read_on_streaming_thread(deadline);
                    inbox = self.inbox.lock().unwrap();
                    if timed_out {
                        break Some(Inbound::TimedOut);
                    }
                    continue;
                }
                if !inbox.reader_asked {
                    inbox.reader_asked = true;
                    self.reader_waker.wake();
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                break Some(Inbound::TimedOut);
            }
            inbox.arrived_waiters += 1;
            inbox = match left {
                None => self.arrived.wait(inbox).unwrap(),
                Some(left) => self.arrived.wait_timeout(inbox, left).unwrap().0,
            };
            inbox.arrived_waiters -= 1;
        };
        // The socket goes back to the reader thread before the frame goes downstream (it
        // takes it after READER_GRACE), and a frame taken leaves room in the inbox: either
        // may let the reader read on. A reader parked or in its grace needs no signal.
        inbox.streaming_reads = false;
        self.signal_room(inbox);
        next
    }

    /// `unlock()`/`unlock_stop()`: make `next()` return None, or wait again.
    pub fn set_flushing(&self, flushing: bool) {
        self.inbox.lock().unwrap().flushing = flushing;
        self.arrived.notify_all();
        if flushing {
            self.streaming_waker.wake();
        }
    }

    /// Frames queued now (buffer packets and copies).
    pub fn queued(&self) -> usize {
        let inbox = self.inbox.lock().unwrap();
        inbox.originals + inbox.copies
    }

    /// The element is PLAYING (true) or not: a full inbox stops the reader only while it is.
    pub fn set_streaming(&self, streaming: bool) {
        self.inbox.lock().unwrap().streaming = streaming;
        self.room.notify_all();
    }

    /// A query was sent and its reply is awaited: until the guard goes, the reader reads on
    /// past a full inbox (the reply may be behind frames in the socket).
    pub fn awaiting_reply(&self) -> AwaitingReply<'_> {
        self.inbox.lock().unwrap().awaiting_replies += 1;
        self.room.notify_all();
        AwaitingReply(self)
    }

    /// Stops the reader and fails every waiting query. Packets not taken are dropped (their fds
    /// closed); the producer frees what this consumer held when the socket closes.
    pub fn shutdown(&self) {
        self.inbox.lock().unwrap().stopping = true;
        self.room.notify_all();
        self.reader_waker.wake();
        self.streaming_waker.wake();
        if let Some(handle) = self.reader.lock().unwrap().take() {
            let _ = handle.join();
        }
        self.pending.close();
        self.set_flushing(true);
    }
}

#[cfg(test)]
impl Link {
    /// The reader thread stands aside for the streaming thread now.
    fn reader_parked(&self) -> bool {
        self.inbox.lock().unwrap().reader_parked
    }

    /// The streaming thread asked the reader thread (through its waker) to stand aside, and
    /// it has not stood aside since.
    fn reader_asked(&self) -> bool {
        self.inbox.lock().unwrap().reader_asked
    }

    fn set_reader_grace(&self, grace: Duration) {
        self.inbox.lock().unwrap().reader_grace = grace;
    }

    /// (`room` signals sent, looks of the parked reader thread) so far.
    fn reader_wakes(&self) -> (u64, u64) {
        let inbox = self.inbox.lock().unwrap();
        (inbox.room_signals, inbox.parked_looks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread::ThreadId;

    /// Records which thread took each State packet off the socket.
    struct StateThreads(mpsc::Sender<ThreadId>);

    impl LinkPeer for StateThreads {
        fn answer(&self, query: &QueryPacket) -> QueryReplyPacket {
            QueryReplyPacket {
                id: query.id,
                answered: false,
                structure: String::new(),
            }
        }
        fn state(&self, _state: StatePacket) {
            let _ = self.0.send(std::thread::current().id());
        }
        fn message(&self, _message: MessagePacket) {}
    }

    const PLAYING: Packet<std::os::fd::BorrowedFd<'static>> = Packet::State(StatePacket {
        state: StatePacket::PLAYING,
        sender_follows: false,
    });

    fn start() -> (Arc<Link>, Connection, mpsc::Receiver<ThreadId>) {
        start_leaky(Leaky::None)
    }

    fn start_leaky(leaky: Leaky) -> (Arc<Link>, Connection, mpsc::Receiver<ThreadId>) {
        gst::init().unwrap();
        let (consumer, producer) = Connection::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let limit = QueueLimit {
            max_queued: 4,
            leaky,
        };
        let link =
            Link::start(Arc::new(consumer), StateThreads(tx), limit, Arc::default()).unwrap();
        (link, producer, rx)
    }

    /// Waits (up to 5 s) until the streaming thread, inside `next()`, has the socket.
    fn wait_parked(link: &Link) {
        let until = Instant::now() + Duration::from_secs(5);
        while !link.reader_parked() {
            assert!(
                Instant::now() < until,
                "the reader thread never stood aside"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn is_playing(next: Option<Inbound>) -> bool {
        matches!(next, Some(Inbound::Packet(Packet::State(st))) if st.state == StatePacket::PLAYING)
    }

    /// Sends a State packet and asserts that the reader thread takes it off the socket (within
    /// 5 s): neither `streaming_id` nor this thread. `why` names the failure.
    fn reader_reads_next(
        producer: &Connection,
        threads: &mpsc::Receiver<ThreadId>,
        streaming_id: ThreadId,
        why: &str,
    ) {
        producer.send_packet(&PLAYING, None).unwrap();
        let reader_id = threads
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{why}"));
        assert_ne!(reader_id, streaming_id);
        assert_ne!(reader_id, std::thread::current().id());
    }

    #[test]
    fn waiting_streaming_thread_reads_the_socket_itself() {
        let (link, producer, threads) = start();
        let waiter = link.clone();
        let streaming = std::thread::spawn(move || {
            (
                std::thread::current().id(),
                waiter.next(Some(Instant::now() + Duration::from_secs(10))),
            )
        });
        wait_parked(&link);
        producer.send_packet(&PLAYING, None).unwrap();
        let (streaming_id, next) = streaming.join().unwrap();
        assert!(is_playing(next));
        assert_eq!(
            threads.recv().unwrap(),
            streaming_id,
            "read on the streaming thread"
        );

        // Outside `next()` the reader thread has the socket again, once READER_GRACE has
        // passed without the streaming thread coming back.
        reader_reads_next(
            &producer,
            &threads,
            streaming_id,
            "the reader never took the socket back",
        );
        // The reader reports the State packet before it queues it: wait for the queue.
        assert!(is_playing(
            link.next(Some(Instant::now() + Duration::from_secs(5)))
        ));
        link.shutdown();
    }

    /// The streaming thread takes one packet itself, on a thread of its own, so the reader
    /// thread has stood aside once; returns that thread's id.
    fn first_read_on_a_streaming_thread(
        link: &Arc<Link>,
        producer: &Connection,
        threads: &mpsc::Receiver<ThreadId>,
    ) -> ThreadId {
        let waiter = link.clone();
        let streaming = std::thread::spawn(move || {
            (
                std::thread::current().id(),
                waiter.next(Some(Instant::now() + Duration::from_secs(10))),
            )
        });
        wait_parked(link);
        producer.send_packet(&PLAYING, None).unwrap();
        let (streaming_id, next) = streaming.join().unwrap();
        assert!(is_playing(next));
        assert_eq!(threads.recv().unwrap(), streaming_id);
        streaming_id
    }

    #[test]
    fn streaming_thread_back_within_the_grace_finds_the_socket_free() {
        let (link, producer, threads) = start();
        link.set_reader_grace(Duration::from_secs(60));
        first_read_on_a_streaming_thread(&link, &producer, &threads);
        for _ in 0..3 {
            // The reader thread stayed aside: this thread reads, and never had to ask.
            assert!(link.reader_parked());
            producer.send_packet(&PLAYING, None).unwrap();
            assert!(is_playing(
                link.next(Some(Instant::now() + Duration::from_secs(10)))
            ));
            assert_eq!(threads.recv().unwrap(), std::thread::current().id());
            assert!(
                !link.reader_asked(),
                "the reader thread was woken to stand aside"
            );
        }
        // Stopping does not wait for the grace to end.
        let started = Instant::now();
        link.shutdown();
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn leaving_streaming_thread_wakes_nobody_and_the_reader_still_takes_over() {
        let (link, producer, threads) = start();
        let streaming_id = first_read_on_a_streaming_thread(&link, &producer, &threads);
        // Once more on this thread, now that the reader is parked; the packet comes after
        // the reader's grace, so the reader is back to its parked wait meanwhile. next()
        // returns (the frame would go downstream now) without signalling the reader thread.
        let (signals_before, _) = link.reader_wakes();
        let producer = Arc::new(producer);
        let sender = producer.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(READER_GRACE * 10);
            sender.send_packet(&PLAYING, None).unwrap();
        });
        assert!(is_playing(
            link.next(Some(Instant::now() + Duration::from_secs(10)))
        ));
        late.join().unwrap();
        assert_eq!(threads.recv().unwrap(), std::thread::current().id());
        assert_eq!(
            link.reader_wakes().0,
            signals_before,
            "next() woke the parked reader thread on its way out"
        );
        // The reader looks on its own timer and takes the socket back after the grace.
        reader_reads_next(
            &producer,
            &threads,
            streaming_id,
            "the parked reader never took the socket back",
        );
        link.shutdown();
    }

    #[test]
    fn parked_reader_looks_less_often_while_the_streaming_thread_waits() {
        let (link, _producer, _threads) = start();
        let waiter = link.clone();
        let streaming = std::thread::spawn(move || {
            waiter.next(Some(Instant::now() + Duration::from_millis(600)))
        });
        wait_parked(&link);
        let (_, looks_before) = link.reader_wakes();
        assert!(matches!(streaming.join().unwrap(), Some(Inbound::TimedOut)));
        // Nothing came for up to 600 ms: the parked reader's waits went 5, 10, 20, 40, 40 ...
        // ms, about 18 looks; every READER_GRACE would have been about 120.
        let looks = link.reader_wakes().1 - looks_before;
        assert!(
            looks <= 25,
            "the parked reader looked {looks} times in 600 ms"
        );
        link.shutdown();
    }

    #[test]
    fn leaky_policies_have_no_grace() {
        for leaky in [Leaky::Oldest, Leaky::Copy] {
            let (link, producer, threads) = start_leaky(leaky);
            link.set_reader_grace(Duration::from_secs(60));
            let streaming_id = first_read_on_a_streaming_thread(&link, &producer, &threads);
            // Frames must meet the policy as they arrive, not when the streaming thread
            // comes back: the reader thread reads again at once.
            reader_reads_next(
                &producer,
                &threads,
                streaming_id,
                &format!("leaky={leaky:?}: the reader thread waited"),
            );
            link.shutdown();
        }
    }

    #[test]
    fn awaited_query_reply_ends_the_grace_at_once() {
        let (link, producer, threads) = start();
        link.set_reader_grace(Duration::from_secs(60));
        let streaming_id = first_read_on_a_streaming_thread(&link, &producer, &threads);
        // A query waits for its reply while the streaming thread is away (downstream): the
        // reader thread reads again now, not after the grace.
        let awaiting = link.awaiting_reply();
        reader_reads_next(
            &producer,
            &threads,
            streaming_id,
            "the reader waited out its grace with a reply awaited",
        );
        drop(awaiting);
        link.shutdown();
    }

    #[test]
    fn flushing_and_deadline_end_a_read_on_the_streaming_thread() {
        let (link, producer, _threads) = start();
        let started = Instant::now();
        let next = link.next(Some(started + Duration::from_millis(100)));
        assert!(matches!(next, Some(Inbound::TimedOut)));
        assert!(started.elapsed() >= Duration::from_millis(100));

        let waiter = link.clone();
        let streaming = std::thread::spawn(move || waiter.next(None));
        wait_parked(&link);
        link.set_flushing(true);
        assert!(streaming.join().unwrap().is_none(), "flushing returns None");

        // After the flush, reading goes on where it stopped.
        link.set_flushing(false);
        producer.send_packet(&PLAYING, None).unwrap();
        assert!(is_playing(
            link.next(Some(Instant::now() + Duration::from_secs(10)))
        ));
        link.shutdown();
    }

    #[test]
    fn producer_closing_ends_a_read_on_the_streaming_thread() {
        let (link, producer, _threads) = start();
        let waiter = link.clone();
        let streaming = std::thread::spawn(move || waiter.next(None));
        wait_parked(&link);
        drop(producer);
        assert!(matches!(streaming.join().unwrap(), Some(Inbound::Closed)));
        // The end stays, and the reader thread has ended: shutdown() does not wait.
        assert!(matches!(link.next(None), Some(Inbound::Closed)));
        let started = Instant::now();
        link.shutdown();
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
