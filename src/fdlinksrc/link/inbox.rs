//! The inbox: what the reader took off the socket for the streaming thread, in order, and
//! its limits (see the `link` module docs).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use gst::glib;

use super::reader_handoff::Handoff;
use crate::memory::FrameFile;
use fdlink::protocol::{BufferHeader, Packet};

/// Packets other than frames (events, State packets) the inbox holds before the reader stops
/// taking more off the socket while the element plays, as it does for frames under
/// `leaky=none`: the producer's own limit on what waits for this consumer then applies (an
/// fdlinksink drops a consumer with 1024 packets queued). An honest producer sends a few such
/// packets per frame, so this many wait only behind a frame that waits long downstream.
pub const MAX_QUEUED_PACKETS: usize = 256;
/// Bytes of those packets the inbox holds before the reader stops (as above).
pub const MAX_QUEUED_PACKET_BYTES: usize = 4 * 1024 * 1024;
/// The reader must read on while the element does not play (a follower hears the producer's
/// State packets) and while a query waits for its reply (it may be behind), so the inbox can
/// pass the limits above, and `max-queued` frames. At this many times them (frames: times the
/// larger of `max-queued` and the producer's `max-held`, past which an honest producer sends
/// none) the producer is flooding this consumer, which disconnects with an error naming the
/// limit rather than grow: dropping packets instead would lose serialized events (segments,
/// caps, EOS) the stream depends on, and no honest producer sends thousands of them ahead of
/// one frame.
pub const PACKET_FLOOD_FACTOR: usize = 4;

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
    /// The producer's `max-held` for this consumer, from its hello (0: no limit).
    pub hold_limit: usize,
}

impl QueueLimit {
    /// Producer buffers this consumer pins (queued here and held downstream): half the
    /// producer's limit, so that frames still in the socket and releases on their way fit
    /// under it too. Past it, the reader waits for the streaming thread to take what is
    /// queued (a slow downstream), and the streaming thread copies frames out while
    /// downstream holds that many (a downstream that keeps buffers: see
    /// [`Link::copy_if_held_downstream`]).
    pub(super) fn hold_budget(&self) -> Option<usize> {
        (self.hold_limit > 0).then(|| self.hold_limit.div_ceil(2))
    }
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
    /// Buffer packets without memory received (buffers without bytes).
    pub empty: AtomicU64,
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

pub(super) enum Queued {
    /// A buffer packet.
    Packet(Packet<FrameFile>),
    /// Any other packet, and the size of its datagram.
    Other(Packet<FrameFile>, usize),
    Copied(BufferHeader, gst::Buffer),
    /// A buffer packet that could not be copied: its fds do not import (why).
    Invalid(String),
}

#[derive(Default)]
pub(super) struct Inbox {
    pub(super) items: VecDeque<Queued>,
    /// Buffer packets among `items`: each pins a producer buffer.
    pub(super) originals: usize,
    /// Copies among `items`.
    pub(super) copies: usize,
    /// `Queued::Other` packets among `items`, and their bytes.
    pub(super) others: usize,
    pub(super) other_bytes: usize,
    pub(super) end: Option<Inbound>,
    pub(super) flushing: bool,
    /// The element is PLAYING: only then does a full inbox stop the reader (a paused live
    /// source takes nothing, and a follower must still hear the producer's State packets).
    pub(super) streaming: bool,
    /// Threads waiting for a reply to their query: the reply may be behind frames in the
    /// socket, so a full inbox does not stop the reader meanwhile.
    pub(super) awaiting_replies: usize,
    pub(super) stopping: bool,
    /// Who reads the socket: the reader thread or the waiting streaming thread.
    pub(super) handoff: Handoff,
    /// No more packets will be read: the end is in `end`, or the link is stopping.
    pub(super) reading_ended: bool,
    /// Threads waiting on `arrived` / `room` now: a notify with nobody waiting is a futex
    /// call for nothing, and the per-frame ones are skipped then. The reader thread's timed
    /// waits (see `reader_handoff`) are not counted: they need no signal.
    pub(super) arrived_waiters: usize,
    pub(super) room_waiters: usize,
    /// Signals `signal_room` sent: what the tests count.
    pub(super) room_signals: u64,
}

impl Inbox {
    /// The reader must not take another packet off the socket now; `held_downstream`: the
    /// producer's buffers downstream holds.
    pub(super) fn full(&self, limit: QueueLimit, held_downstream: usize) -> bool {
        if !self.streaming || self.awaiting_replies > 0 {
            return false;
        }
        if self.others >= MAX_QUEUED_PACKETS || self.other_bytes >= MAX_QUEUED_PACKET_BYTES {
            return true;
        }
        match limit.leaky {
            // Past the hold budget the reader waits for the streaming thread to take the
            // frames queued (and copy those downstream would hold beyond it).
            Leaky::None => {
                self.originals >= limit.max_queued
                    || limit.hold_budget().is_some_and(|budget| {
                        self.originals > 0 && self.originals + held_downstream >= budget
                    })
            }
            Leaky::Oldest => false,
            Leaky::Copy => self.originals >= limit.max_queued && self.copies >= limit.max_queued,
        }
    }

    /// Index of the oldest buffer packet.
    pub(super) fn oldest_original(&self) -> Option<usize> {
        self.items
            .iter()
            .position(|q| matches!(q, Queued::Packet(Packet::Buffer(..))))
    }

    pub(super) fn pop(&mut self) -> Option<Queued> {
        let item = self.items.pop_front()?;
        match &item {
            Queued::Packet(Packet::Buffer(..)) => self.originals -= 1,
            Queued::Copied(..) => self.copies -= 1,
            Queued::Other(_, bytes) => {
                self.others -= 1;
                self.other_bytes -= bytes;
            }
            Queued::Packet(_) | Queued::Invalid(_) => {}
        }
        Some(item)
    }
}
