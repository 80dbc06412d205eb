//! The consumer's side of a connection. A reader thread takes every packet off the socket:
//! query replies go straight to the thread waiting for them; queries, state changes and
//! messages from the producer are handled here, whatever the streaming thread is doing
//! (downstream elements ask their questions from the streaming thread itself, and a paused
//! live source runs no streaming thread at all); everything else waits, in order, in an inbox
//! that `create()` takes from.
//!
//! While the streaming thread waits in [`Link::next`] with nothing in the inbox, it reads the
//! socket itself and the reader thread stands aside, so a frame wakes one thread; how the
//! socket passes between them, and what that buys, is `reader_handoff`.
//!
//! The inbox holds at most `max-queued` buffer packets (frames whose producer buffers this
//! consumer pins); what happens to one more is the `leaky` policy (see [`Leaky`]). Of the
//! other packets (events, State packets) it holds [`MAX_QUEUED_PACKETS`] or
//! [`MAX_QUEUED_PACKET_BYTES`] before the reader stops, and four times that before the
//! producer is dropped (see [`PACKET_FLOOD_FACTOR`]).

mod inbox;
mod reader_handoff;

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::memory::{FileTable, FrameFile, Importer, ReleaseTokens};
use fdlink::pending::PendingQueries;
use fdlink::protocol::{
    self, MAX_PACKET_SIZE, MessagePacket, Packet, QueryPacket, QueryReplyPacket, StatePacket,
};
use fdlink::transport::{Connection, Received, TransportError, Waker};
pub use inbox::{
    Inbound, Leaky, MAX_QUEUED_PACKET_BYTES, MAX_QUEUED_PACKETS, PACKET_FLOOD_FACTOR,
    QueueCounters, QueueLimit,
};
use inbox::{Inbox, Queued};
use reader_handoff::{Handoff, ReaderStep, ReaderWait, StreamingStep};

/// How long a reply, a release or an error packet may wait for room in the socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Tells the producer this consumer is done with `buffer_id` (counted in `releases` once
/// sent). The packet is encoded on the stack: one goes out per frame.
fn send_release(conn: &Connection, releases: &AtomicU64, buffer_id: u64) {
    let packet = protocol::encode_release(buffer_id);
    match conn.send_timeout(&packet, &[], SEND_TIMEOUT) {
        Ok(()) => {
            releases.fetch_add(1, Ordering::Relaxed);
            gst::log!(super::imp::CAT, "buffer {buffer_id} released");
        }
        Err(e) => gst::debug!(
            super::imp::CAT,
            "release of buffer {buffer_id} not sent: {e}"
        ),
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
                handoff: Handoff::new(limit.leaky == Leaky::None),
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
    /// streaming thread reads or stays within its grace (see `reader_handoff`); false once
    /// reading has ended.
    fn wait_for_socket(&self) -> bool {
        let mut inbox = self.inbox.lock().unwrap();
        let mut wait = ReaderWait::default();
        loop {
            if inbox.stopping || inbox.reading_ended {
                return false;
            }
            let awaiting_replies = inbox.awaiting_replies;
            let (step, parked_now) = inbox.handoff.reader_step(&mut wait, awaiting_replies);
            if parked_now {
                self.arrived.notify_all();
            }
            match step {
                ReaderStep::Parked(period) => {
                    inbox = self.room.wait_timeout(inbox, period).unwrap().0;
                    inbox.handoff.parked_look();
                    continue;
                }
                ReaderStep::Grace(left) => {
                    inbox = self.room.wait_timeout(inbox, left).unwrap().0;
                    continue;
                }
                ReaderStep::Free if !inbox.full(self.limit, self.release_tokens.outstanding()) => {
                    inbox.handoff.reader_reads();
                    return true;
                }
                ReaderStep::Free | ReaderStep::AwaitSignal => {}
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
        let len = got.len;
        match Packet::decode(&reader.buf[..len], got.fds) {
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
                if let Err(msg) = self.queue_packet(Packet::State(st), len) {
                    self.conn.send_error(&msg);
                    return Some(Inbound::Failed(msg));
                }
            }
            Ok(Packet::Message(m)) => reader.peer.message(m),
            Ok(Packet::Buffer(mut header, fds)) => {
                if header.memories.is_empty() {
                    self.counters.empty.fetch_add(1, Ordering::Relaxed);
                }
                let registered = reader.files.len();
                match reader.importer.resolve(&mut reader.files, &mut header, fds) {
                    Ok(frame_files) => {
                        if reader.files.len() > registered {
                            gst::debug!(
                                super::imp::CAT,
                                "buffer {}: {} files registered ({} in all)",
                                header.buffer_id,
                                reader.files.len() - registered,
                                reader.files.len()
                            );
                        }
                        let frame = Packet::Buffer(header, frame_files);
                        if let Err(msg) = self.queue_frame(frame, &reader.importer) {
                            self.conn.send_error(&msg);
                            return Some(Inbound::Failed(msg));
                        }
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
                gst::debug!(
                    super::imp::CAT,
                    "the producer retired {} registered files ({} registered before)",
                    file_ids.len(),
                    reader.files.len()
                );
                if let Err(e) = file_ids.iter().try_for_each(|&id| reader.files.retire(id)) {
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
                if let Err(msg) = self.queue_packet(packet, len) {
                    self.conn.send_error(&msg);
                    return Some(Inbound::Failed(msg));
                }
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

    /// Queues a packet that is not a frame (`bytes`: its datagram's size) for `create()`.
    /// An error (for the producer and the element) when the producer floods the inbox: see
    /// [`PACKET_FLOOD_FACTOR`].
    fn queue_packet(&self, packet: Packet<FrameFile>, bytes: usize) -> Result<(), String> {
        let mut inbox = self.inbox.lock().unwrap();
        if inbox.others >= MAX_QUEUED_PACKETS * PACKET_FLOOD_FACTOR
            || inbox.other_bytes + bytes > MAX_QUEUED_PACKET_BYTES * PACKET_FLOOD_FACTOR
        {
            return Err(format!(
                "the producer sent {} packets ({} bytes) that wait behind frames not yet played; the limit is {} packets or {} MiB: it floods this consumer",
                inbox.others + 1,
                inbox.other_bytes + bytes,
                MAX_QUEUED_PACKETS * PACKET_FLOOD_FACTOR,
                MAX_QUEUED_PACKET_BYTES * PACKET_FLOOD_FACTOR / (1024 * 1024)
            ));
        }
        inbox.others += 1;
        inbox.other_bytes += bytes;
        inbox.items.push_back(Queued::Other(packet, bytes));
        self.signal_arrived(inbox);
        Ok(())
    }

    /// Queues a buffer packet; past `max-queued`, drops or copies the oldest one.
    /// An error (for the producer and the element) when the producer sends frames far past
    /// what it may have unreleased: each holds fds here, see [`PACKET_FLOOD_FACTOR`].
    fn queue_frame(&self, packet: Packet<FrameFile>, importer: &Importer) -> Result<(), String> {
        let limit = self.limit;
        let mut inbox = self.inbox.lock().unwrap();
        // A joiner's backlog comes at once, past max-held.
        let most = limit.max_queued.max(limit.hold_limit) * PACKET_FLOOD_FACTOR
            + protocol::MAX_JOIN_BACKLOG;
        if inbox.originals >= most {
            return Err(format!(
                "the producer sent {} frames that wait here unreleased; the limit is {most} (four times the larger of max-queued and the producer's max-held, plus a joiner's backlog of {}): it floods this consumer",
                inbox.originals + 1,
                protocol::MAX_JOIN_BACKLOG
            ));
        }
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
            gst::debug!(
                super::imp::CAT,
                "leaky=oldest: {} frames queued (max-queued {}): dropping buffer {}, released to the producer",
                limit.max_queued + 1,
                limit.max_queued,
                header.buffer_id
            );
            // Our fds go first: the producer may reuse the buffer once it has the release.
            drop(fds);
            self.release(header.buffer_id);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
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
                gst::debug!(
                    super::imp::CAT,
                    "leaky=copy: max-queued frames queued: buffer {buffer_id} copied into system memory, released to the producer"
                );
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

    /// `buffer`, an imported frame, or its copy in system memory when downstream already
    /// holds this consumer's share of the producer's buffers (a filesink that writes 64 KiB
    /// at a time, an encoder's lookahead, a queue): downstream must not pin more of them, or
    /// the producer would reach its limit and stall or skip frames while downstream waits for
    /// more. The original is released as it goes.
    pub fn copy_if_held_downstream(&self, buffer: gst::Buffer) -> gst::Buffer {
        // This frame's own token counts: downstream holds the others.
        let held = self.release_tokens.outstanding().saturating_sub(1);
        if self.limit.hold_budget().is_none_or(|budget| held < budget) {
            return buffer;
        }
        match buffer.copy_deep() {
            Ok(copy) => {
                self.counters.copied.fetch_add(1, Ordering::Relaxed);
                copy
            }
            Err(_) => buffer,
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
                    Queued::Packet(p) | Queued::Other(p, _) => Inbound::Packet(p),
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
                match inbox.handoff.streaming_wants() {
                    StreamingStep::Read => {
                        drop(inbox);
                        let timed_out = self.read_on_streaming_thread(deadline);
                        inbox = self.inbox.lock().unwrap();
                        if timed_out {
                            break Some(Inbound::TimedOut);
                        }
                        continue;
                    }
                    StreamingStep::AskReader => self.reader_waker.wake(),
                    StreamingStep::Wait => {}
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
        // takes it after its grace), and a frame taken leaves room in the inbox: either may
        // let the reader read on. A reader parked or in its grace needs no signal, unless it
        // sleeps through an idle stream.
        if inbox.handoff.streaming_leaves() {
            inbox.room_signals += 1;
            self.room.notify_all();
        }
        self.signal_room(inbox);
        next
    }

    /// `unlock()`/`unlock_stop()`: make `next()` return None, or wait again.
    /// Tells the producer why this consumer ends the link (an Error packet), for a fault the
    /// streaming thread finds rather than the reader.
    pub fn send_error(&self, why: &str) {
        self.conn.send_error(why);
    }

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
