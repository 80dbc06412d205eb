//! One consumer of the hub: its connection, what it holds, the packets waiting for room in its
//! socket, and the non-blocking sends to it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Frame, Removal};
use crate::protocol::{self, BufferHeader, FileSend, MAX_REGISTERED_FILES};
use crate::transport::{Connection, TransportError};

/// Control packets queued for one consumer whose socket is full; past this it is dropped.
pub(super) const MAX_PENDING_PACKETS: usize = 1024;
/// Bytes of control packets queued for one consumer whose socket is full; past this it is
/// dropped. Sixteen full-size packets, the most an honest stream piles up (caps, tags and
/// the replies to its own queries), many times over.
pub(super) const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;
/// Requests (upstream events, queries, messages, State packets) one consumer may send in a
/// second; a consumer that sends more is dropped. Each costs the control thread a parse, and
/// a request thread or a bus message: an honest consumer sends a few per frame at most (a
/// video sink's QoS events), a flood tens of thousands.
pub(super) const MAX_REQUESTS_PER_SECOND: u32 = 5000;

/// The fds of one buffer packet; a frame's usual one to four stay off the heap.
type FdList<'a> = smallvec::SmallVec<[BorrowedFd<'a>; 4]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    AwaitingHello { since: Instant },
    Ready,
}

/// A packet waiting for room in one consumer's socket.
pub(super) enum Outbound {
    Control(Vec<u8>),
    /// A buffer packet, encoded when it leaves (which files cross as fds depends on what the
    /// consumer has registered by then); the held item itself stays in the hub's `held`
    /// until the consumer releases it.
    Buffer {
        id: u64,
        frame: Arc<WaitingFrame>,
        size: u64,
    },
}

/// A frame that waits (in a consumer's queue, in the backlog) with its own duplicates of the
/// fds: the originals belong to the held item, which may be held longer or shorter.
pub(super) struct WaitingFrame {
    header: BufferHeader,
    fds: Arc<[OwnedFd]>,
}

impl WaitingFrame {
    pub(super) fn new(f: &Frame<'_>) -> Result<Arc<WaitingFrame>, Removal> {
        Ok(Arc::new(WaitingFrame {
            header: f.header.clone(),
            fds: dup_fds(f.fds)?,
        }))
    }

    /// A packet of a kept frame (the backlog's), with that frame's duplicates of its fds.
    pub(super) fn sharing(header: BufferHeader, fds: Arc<[OwnedFd]>) -> Arc<WaitingFrame> {
        Arc::new(WaitingFrame { header, fds })
    }
}

/// A buffer a consumer was given (sent, or queued for it) and has not released.
pub(super) struct Held {
    pub(super) since: Instant,
    kind: HoldKind,
}

/// What a consumer's hold on a buffer costs upstream, for max-held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HoldKind {
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

impl HoldKind {
    pub(super) fn of(f: &Frame<'_>) -> HoldKind {
        if f.slow_copy {
            HoldKind::Copy
        } else {
            HoldKind::Original
        }
    }
}

pub(super) struct Consumer {
    pub(super) id: u64,
    pub(super) conn: Arc<Connection>,
    pub(super) pid: Option<i32>,
    pub(super) phase: Phase,
    /// Packets waiting for room in the socket, in stream order: control packets, and up to
    /// `max-queued` buffers.
    pub(super) queue: VecDeque<Outbound>,
    /// Buffers among `queue`.
    pub(super) queued_buffers: usize,
    /// Bytes of the control packets among `queue`.
    queued_control_bytes: usize,
    /// Requests it sent in the current second, and when that second began.
    requests_in_second: (u32, Instant),
    /// Buffers it was given and has not released, queued ones included.
    pub(super) held: HashMap<u64, Held>,
    /// Among `held`, those of upstream's memory (not copies).
    pub(super) originals_held: usize,
    /// Stayed at max-held through a whole wait: not waited for again until it releases.
    pub(super) stalled: bool,
    /// sync-method: skips frames until a keyframe.
    pub(super) awaiting_keyframe: bool,
    /// Its fdlinksrc has mode=follow (hello capability): prerolls wait for it.
    pub(super) follows: bool,
    /// Preroll barriers (State packets saying PAUSED, flush-stops) sent to it.
    pub(super) barriers_sent: u32,
    /// File ids it has registered (it keeps those files open until they are retired).
    pub(super) files: HashSet<u32>,
    pub(super) fds_sent: u64,
    /// Files it was asked to register, all told.
    pub(super) registrations: u64,
    /// Reused for its buffer packets.
    packet: Vec<u8>,
    /// The barriers its latest Prerolled packet counted: it prerolled after all of those.
    pub(super) barriers_prerolled: u32,
    pub(super) frames_sent: u64,
    pub(super) frames_dropped: u64,
    pub(super) frames_copied: u64,
    pub(super) releases: u64,
    pub(super) bytes_sent: u64,
    pub(super) release_wait: Duration,
    pub(super) last_activity: Instant,
}

impl Consumer {
    pub(super) fn new(id: u64, conn: Connection) -> Consumer {
        let now = Instant::now();
        Consumer {
            id,
            pid: conn.peer_pid(),
            conn: Arc::new(conn),
            phase: Phase::AwaitingHello { since: now },
            queue: VecDeque::new(),
            queued_buffers: 0,
            queued_control_bytes: 0,
            requests_in_second: (0, now),
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

    pub(super) fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// It was given a buffer (sent, or queued for it).
    pub(super) fn hold(&mut self, buffer_id: u64, since: Instant, kind: HoldKind) {
        self.held.insert(buffer_id, Held { since, kind });
        match kind {
            HoldKind::Original => self.originals_held += 1,
            HoldKind::Copy => self.frames_copied += 1,
            HoldKind::Kept => {}
        }
    }

    /// A following consumer that has not prerolled since the last preroll barrier it was
    /// sent: a prerolling producer waits for it.
    pub(super) fn preroll_pending(&self) -> bool {
        self.phase == Phase::Ready && self.follows && self.barriers_prerolled < self.barriers_sent
    }

    pub(super) fn unhold(&mut self, buffer_id: u64) -> Option<Held> {
        let h = self.held.remove(&buffer_id)?;
        if h.kind == HoldKind::Original {
            self.originals_held -= 1;
        }
        Some(h)
    }

    pub(super) fn copies_held(&self) -> usize {
        self.held
            .values()
            .filter(|h| h.kind == HoldKind::Copy)
            .count()
    }

    /// Counts a buffer packet that left for its socket.
    pub(super) fn sent(&mut self, size: u64) {
        self.frames_sent += 1;
        self.bytes_sent += size;
    }

    /// Takes the oldest buffer out of its queue (the policy dropped it); returns its id.
    pub(super) fn drop_oldest_queued(&mut self) -> Option<u64> {
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
    pub(super) fn enqueue(
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

    /// Whether buffer `buffer_id` still waits in its queue (not sent yet).
    pub(super) fn has_queued(&self, buffer_id: u64) -> bool {
        self.queued_buffers > 0
            && self
                .queue
                .iter()
                .any(|p| matches!(p, Outbound::Buffer { id, .. } if *id == buffer_id))
    }

    /// Sends a control packet now, or queues it behind what waits when the socket is full.
    pub(super) fn queue_or_send(&mut self, bytes: &[u8]) -> Result<(), Removal> {
        if self.queue.is_empty() {
            match self.conn.try_send(bytes, &[]) {
                Ok(()) => return Ok(()),
                Err(TransportError::WouldBlock) => {}
                Err(e) => return Err(Removal::Error(format!("send failed: {e}"))),
            }
        }
        if self.queue.len() - self.queued_buffers >= MAX_PENDING_PACKETS {
            return Err(Removal::Slow(format!(
                "{MAX_PENDING_PACKETS} control packets queued"
            )));
        }
        if self.queued_control_bytes + bytes.len() > MAX_PENDING_BYTES {
            return Err(Removal::Slow(format!(
                "{} bytes of control packets queued (the limit is {MAX_PENDING_BYTES})",
                self.queued_control_bytes
            )));
        }
        self.queued_control_bytes += bytes.len();
        self.queue.push_back(Outbound::Control(bytes.to_vec()));
        Ok(())
    }

    /// Counts a request it sent; past [`MAX_REQUESTS_PER_SECOND`] in one second it is to be
    /// dropped, for the reason returned.
    pub(super) fn count_request(&mut self, now: Instant) -> Result<(), String> {
        let (count, since) = &mut self.requests_in_second;
        if now.duration_since(*since) >= Duration::from_secs(1) {
            *count = 0;
            *since = now;
        }
        *count += 1;
        if *count > MAX_REQUESTS_PER_SECOND {
            return Err(format!(
                "it sent more than {MAX_REQUESTS_PER_SECOND} requests (upstream events, queries, messages, states) within a second"
            ));
        }
        Ok(())
    }

    /// Sends a buffer packet now, if its socket has room (false if not): the files it has
    /// registered go by id, the others as fds, registered with it as they go while it has
    /// room for them.
    pub(super) fn try_send_frame(
        &mut self,
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
            if id != 0 && self.files.contains(&id) {
                plan.push(FileSend::Registered(id));
                continue;
            }
            // Past the consumer's limit a file crosses for this buffer only.
            let register = id != 0 && self.files.len() + registering.len() < MAX_REGISTERED_FILES;
            plan.push(FileSend::Fd {
                index: attached.len() as u8,
                file_id: if register { id } else { 0 },
            });
            attached.push(*fd);
            if register {
                registering.push(id);
            }
        }
        protocol::encode_buffer_packet(header, &plan, &mut self.packet).map_err(|e| {
            Removal::Error(format!("cannot encode buffer {}: {e}", header.buffer_id))
        })?;
        match self.conn.try_send(&self.packet, &attached) {
            Ok(()) => {
                self.fds_sent += attached.len() as u64;
                self.registrations += registering.len() as u64;
                self.files.extend(registering.iter().copied());
                Ok(true)
            }
            Err(TransportError::WouldBlock) => Ok(false),
            Err(e) => Err(Removal::Error(format!("send failed: {e}"))),
        }
    }

    /// Sends what waits in its queue, in order, until its socket is full. Returns whether a
    /// buffer left.
    pub(super) fn flush_queue(&mut self) -> Result<bool, Removal> {
        let mut sent_buffer = false;
        while let Some(p) = self.queue.front() {
            let sent = match p {
                Outbound::Control(bytes) => match self.conn.try_send(bytes, &[]) {
                    Ok(()) => true,
                    Err(TransportError::WouldBlock) => false,
                    Err(e) => return Err(Removal::Error(format!("send failed: {e}"))),
                },
                Outbound::Buffer { frame, .. } => {
                    let frame = frame.clone();
                    let fds: FdList<'_> = frame.fds.iter().map(|f| f.as_fd()).collect();
                    self.try_send_frame(&frame.header, &fds)?
                }
            };
            if !sent {
                break;
            }
            match self.queue.pop_front() {
                Some(Outbound::Buffer { size, .. }) => {
                    self.queued_buffers -= 1;
                    self.sent(size);
                    sent_buffer = true;
                }
                Some(Outbound::Control(bytes)) => self.queued_control_bytes -= bytes.len(),
                None => {}
            }
        }
        Ok(sent_buffer)
    }
}

/// Duplicates a frame's fds for a packet that waits (queue, backlog): the originals belong to
/// the held item, which may be held longer or shorter than the packet waits.
fn dup_fds(fds: &[BorrowedFd<'_>]) -> Result<Arc<[OwnedFd]>, Removal> {
    fds.iter()
        .map(|fd| fd.try_clone_to_owned())
        .collect::<Result<Arc<[OwnedFd]>, _>>()
        .map_err(|e| Removal::Error(format!("cannot duplicate a frame's fd: {e}")))
}
