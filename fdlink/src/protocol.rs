//! fdlink wire protocol, version 4: pure encoding and decoding.
//!
//! This module knows neither GStreamer nor syscalls. It turns packets into bytes and bytes
//! (plus the file descriptors that arrived beside them) back into packets, checking every
//! length and count before use. `docs/protocol.md` describes every byte.
//!
//! Packets are generic over the file descriptor type: the producer encodes packets holding
//! `BorrowedFd`s, the consumer decodes into packets holding `OwnedFd`s, and tests use plain
//! integers.

use std::fmt;

/// First four bytes of a hello: "FDLK".
pub const MAGIC: [u8; 4] = *b"FDLK";
/// The protocol version this build speaks.
pub const VERSION: u16 = 5;
/// Largest datagram either side sends or accepts.
pub const MAX_PACKET_SIZE: usize = 64 * 1024;
/// Most memories (and so fds) in one buffer packet: GStreamer's own limit per buffer.
pub const MAX_MEMORIES: usize = 16;
/// Most file descriptors attached to one packet.
pub const MAX_FDS: usize = MAX_MEMORIES;
/// Most planes in a video meta (GST_VIDEO_MAX_PLANES).
pub const MAX_PLANES: usize = 4;
/// `fd_index` of a memory whose file travels without an fd: the consumer has it registered
/// under the memory's `file_id`.
pub const FD_REGISTERED: u8 = 0xff;
/// Files one consumer keeps registered at most; a producer sends further files as one-shot
/// fds (file id 0) until it retires some.
pub const MAX_REGISTERED_FILES: usize = 64;
/// Timestamps use this value for "none" (GST_CLOCK_TIME_NONE).
pub const TIME_NONE: u64 = u64::MAX;

/// Hello capability of a consumer: its fdlinksrc has `mode=follow`, so a producer that
/// prerolls waits for its Prerolled packet.
pub const CAP_FOLLOWS: u32 = 1;

/// Size of the hello datagram.
pub const HELLO_SIZE: usize = 16;
/// Size of the header that starts every packet after the hello.
pub const HEADER_SIZE: usize = 8;
const BUFFER_FIXED_SIZE: usize = 8 * 8 + 4 + 4;
const MEMORY_DESC_SIZE: usize = 24;
const VIDEO_META_SIZE: usize = 4 * 5 + 8 * MAX_PLANES + 4 * MAX_PLANES;

/// Which end of the link a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// fdlinksink: listens, sends frames.
    Producer = 1,
    /// fdlinksrc: connects, receives frames, sends releases.
    Consumer = 2,
}

/// The first datagram each side sends after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub role: Role,
    /// Capability bits (`CAP_*`); unknown bits are ignored.
    pub capabilities: u32,
    /// Process id of the sender, for logs only.
    pub pid: u32,
}

impl Hello {
    pub fn new(role: Role, pid: u32) -> Self {
        Hello {
            version: VERSION,
            role,
            capabilities: 0,
            pid,
        }
    }
}

/// How the consumer must treat a memory's fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// A sealed memfd (or other mappable shared file).
    Memfd = 1,
    /// A kernel dmabuf.
    DmaBuf = 2,
}

/// One memory of a buffer: a window `[offset, offset + size)` into a file. The file is the
/// fd `fd_index` of the packet (several memories may share one fd), or, when `fd_index` is
/// [`FD_REGISTERED`], the file the consumer has registered under `file_id`.
///
/// `file_id` 0 means the file is not registered: its fd is the consumer's for this buffer
/// only. A nonzero `file_id` beside an fd registers that fd: the consumer keeps it (and its
/// mapping) under that id until the producer retires it, and later packets name the file by
/// its id alone (register-once fds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryDesc {
    pub kind: MemoryKind,
    pub fd_index: u8,
    pub file_id: u32,
    pub offset: u64,
    pub size: u64,
}

/// Video frame layout, as GstVideoMeta carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VideoLayout {
    /// GstVideoFormat value (stable across GStreamer versions).
    pub format: u32,
    pub flags: u32,
    pub width: u32,
    pub height: u32,
    pub n_planes: u32,
    pub offsets: [u64; MAX_PLANES],
    pub strides: [i32; MAX_PLANES],
}

/// A buffer's memories: most buffers have one to four, which the list holds without a heap
/// allocation.
pub type MemoryList = smallvec::SmallVec<[MemoryDesc; 4]>;

/// The fds that travel with a packet: inline up to four, so receiving does not allocate.
pub type PacketFds<Fd> = smallvec::SmallVec<[Fd; 4]>;

/// Everything about a buffer except its file descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BufferHeader {
    /// Producer-chosen id, echoed back in `Release`.
    pub buffer_id: u64,
    /// Presentation time in the producer's segment (the last Segment event), or TIME_NONE.
    pub pts: u64,
    /// Decoding time in the producer's segment, or TIME_NONE.
    pub dts: u64,
    pub duration: u64,
    pub offset: u64,
    pub offset_end: u64,
    /// GstBufferFlags bits.
    pub flags: u32,
    /// CLOCK_MONOTONIC nanoseconds when the producer sent the packet (latency statistics).
    pub sent_at: u64,
    /// CLOCK_MONOTONIC nanoseconds at which the producer's running time was zero (its
    /// pipeline's base time on CLOCK_MONOTONIC), or TIME_NONE when it has no clock. A
    /// buffer's running time plus this is the moment it is due, on a clock both sides share.
    pub base_time: u64,
    pub memories: MemoryList,
    pub video: Option<VideoLayout>,
}

/// A serialized event: the GstEventType value and its structure as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPacket {
    pub event_type: u32,
    pub seqnum: u32,
    /// `gst_structure_to_string` of the event's structure, empty when it has none.
    pub structure: String,
}

/// A packet after the hello.
// A buffer packet is the large one, and the common one: boxing its header would cost a heap
// allocation per frame, where moving a few hundred bytes costs nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<Fd> {
    /// Producer -> consumer: caps as a string.
    Caps(String),
    /// Producer -> consumer: a downstream event in stream order. `base_time` is the producer
    /// pipeline's base time on CLOCK_MONOTONIC when it sent the event (TIME_NONE without a
    /// clock), as in a buffer header: it places a gap's timestamp on the consumer's timeline
    /// as a buffer's PTS would be.
    Event { event: EventPacket, base_time: u64 },
    /// Producer -> consumer: a buffer, with one fd per distinct file that travels as an fd in
    /// `fds` (files the consumer has registered travel as ids in the header).
    Buffer(BufferHeader, PacketFds<Fd>),
    /// Producer -> consumer: the consumer closes the files registered under these ids (the
    /// producer's memories of them are gone: pool flushed, caps changed).
    Retire { file_ids: Vec<u32> },
    /// Consumer -> producer: the consumer dropped its last reference to a buffer.
    Release { buffer_id: u64 },
    /// Either way: a fatal error, sent just before closing.
    Error(String),
    /// Consumer -> producer: an upstream event (seek, QoS, navigation, ...).
    UpstreamEvent(EventPacket),
    /// Either way: a query for the other pipeline to answer; `id` pairs it with its reply.
    Query(QueryPacket),
    /// The answer to the query with the same `id`.
    QueryReply(QueryReplyPacket),
    /// Either way: a message posted on the sender's bus.
    Message(MessagePacket),
    /// Either way: the sender's element reached `state`; a peer in `mode=follow` takes its
    /// pipeline there.
    State(StatePacket),
    /// Consumer -> producer: the consumer's pipeline finished prerolling (ASYNC_DONE) after
    /// taking `barriers` preroll barriers in stream order (State packets saying PAUSED and
    /// flush-stop events); `buffer_id` is the last buffer it had pushed downstream by then.
    /// A producer prerolling in front of a `mode=follow` consumer waits for the report that
    /// counts every barrier it sent.
    Prerolled { buffer_id: u64, barriers: u32 },
}

/// A state change of the sending element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatePacket {
    /// GstState value: 1 NULL, 2 READY, 3 PAUSED, 4 PLAYING.
    pub state: u8,
    /// Whether the sender itself follows its peer (both sides following is refused).
    pub sender_follows: bool,
}

impl StatePacket {
    /// GstState PAUSED: the sender paused, a preroll barrier.
    pub const PAUSED: u8 = 3;
    /// GstState PLAYING.
    pub const PLAYING: u8 = 4;
}

/// A serialized query: its GstQueryType value and its structure as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPacket {
    pub id: u32,
    pub query_type: u32,
    pub structure: String,
}

/// The answer to a query: whether the other side answered it, and the filled-in structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryReplyPacket {
    pub id: u32,
    pub answered: bool,
    pub structure: String,
}

/// A serialized bus message: its GstMessageType bits, the path of the element that posted it,
/// and its structure as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePacket {
    pub message_type: u32,
    pub source: String,
    pub structure: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
enum PacketType {
    Caps = 2,
    Event = 3,
    Buffer = 4,
    Release = 5,
    Error = 6,
    UpstreamEvent = 7,
    Query = 8,
    QueryReply = 9,
    Message = 10,
    State = 11,
    Prerolled = 12,
    Retire = 13,
}

impl PacketType {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            2 => PacketType::Caps,
            3 => PacketType::Event,
            4 => PacketType::Buffer,
            5 => PacketType::Release,
            6 => PacketType::Error,
            7 => PacketType::UpstreamEvent,
            8 => PacketType::Query,
            9 => PacketType::QueryReply,
            10 => PacketType::Message,
            11 => PacketType::State,
            12 => PacketType::Prerolled,
            13 => PacketType::Retire,
            _ => return None,
        })
    }
}

/// Why bytes could not be decoded. Every variant names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The peer's hello does not start with "FDLK": it is not fdlink.
    NotFdlink,
    /// The peer speaks another protocol version.
    VersionMismatch {
        ours: u16,
        theirs: u16,
    },
    /// A hello carried an unknown role.
    BadRole(u8),
    /// The datagram is shorter than what it announces or needs.
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// The datagram has bytes past the end of its content.
    TrailingBytes {
        what: &'static str,
        extra: usize,
    },
    /// The datagram is larger than MAX_PACKET_SIZE.
    TooLarge {
        size: usize,
    },
    UnknownPacketType(u16),
    /// The header announces a different number of fds than arrived.
    FdCountMismatch {
        declared: usize,
        received: usize,
    },
    /// A packet type that never carries fds came with some.
    UnexpectedFds {
        what: &'static str,
        count: usize,
    },
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    BadMemoryKind(u8),
    /// A State packet names no GstState between NULL (1) and PLAYING (4).
    BadState(u8),
    /// A memory refers to an fd that is not in the packet.
    BadFdIndex {
        index: u8,
        fds: usize,
    },
    /// An fd arrived that no memory uses.
    UnusedFd {
        index: usize,
    },
    /// A memory names its file neither by fd nor by a registered id.
    NoFile,
    /// Memories of one fd give it different file ids, or two fds the same one.
    FileIdConflict {
        file_id: u32,
    },
    /// A memory window overflows u64.
    BadMemoryWindow {
        offset: u64,
        size: u64,
    },
    InvalidUtf8 {
        what: &'static str,
    },
    /// Reserved bytes must be zero, so a later version can give them a meaning.
    NonZeroReserved {
        what: &'static str,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeError::*;
        match self {
            NotFdlink => write!(f, "peer is not fdlink (bad magic in hello)"),
            VersionMismatch { ours, theirs } => write!(
                f,
                "protocol version mismatch: this side speaks version {ours}, the peer speaks version {theirs}"
            ),
            BadRole(r) => write!(f, "hello carries unknown role {r}"),
            Truncated { what, need, have } => {
                write!(f, "{what} truncated: need {need} bytes, have {have}")
            }
            TrailingBytes { what, extra } => write!(f, "{what} has {extra} trailing bytes"),
            TooLarge { size } => {
                write!(
                    f,
                    "packet of {size} bytes exceeds the limit of {MAX_PACKET_SIZE}"
                )
            }
            UnknownPacketType(t) => write!(f, "unknown packet type {t}"),
            FdCountMismatch { declared, received } => {
                write!(f, "packet declares {declared} fds but {received} arrived")
            }
            UnexpectedFds { what, count } => write!(f, "{what} packet carries {count} fds"),
            TooMany { what, count, max } => write!(f, "{count} {what} exceed the limit of {max}"),
            BadMemoryKind(k) => write!(f, "unknown memory kind {k}"),
            BadState(v) => write!(f, "unknown state {v}"),
            BadFdIndex { index, fds } => {
                write!(
                    f,
                    "memory refers to fd {index} but the packet has {fds} fds"
                )
            }
            UnusedFd { index } => write!(f, "fd {index} of the packet is used by no memory"),
            NoFile => write!(f, "memory has neither an fd nor a registered file id"),
            FileIdConflict { file_id } => write!(
                f,
                "file id {file_id} conflicts: one fd given two ids, or two fds one id"
            ),
            BadMemoryWindow { offset, size } => {
                write!(f, "memory window offset {offset} + size {size} overflows")
            }
            InvalidUtf8 { what } => write!(f, "{what} is not valid UTF-8"),
            NonZeroReserved { what } => write!(f, "{what} has nonzero reserved bytes"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    TooLarge {
        what: &'static str,
        size: usize,
    },
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    BadFdIndex {
        index: u8,
        fds: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge { what, size } => write!(
                f,
                "{what} of {size} bytes does not fit in a {MAX_PACKET_SIZE}-byte packet"
            ),
            EncodeError::TooMany { what, count, max } => {
                write!(f, "{count} {what} exceed the limit of {max}")
            }
            EncodeError::BadFdIndex { index, fds } => {
                write!(
                    f,
                    "memory refers to fd {index} but only {fds} fds are attached"
                )
            }
        }
    }
}

impl std::error::Error for EncodeError {}

// ---------------------------------------------------------------------------------------------
// Hello

/// Encodes a hello datagram.
pub fn encode_hello(hello: &Hello) -> [u8; HELLO_SIZE] {
    let mut out = [0u8; HELLO_SIZE];
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&hello.version.to_le_bytes());
    out[6] = hello.role as u8;
    out[7] = 0;
    out[8..12].copy_from_slice(&hello.capabilities.to_le_bytes());
    out[12..16].copy_from_slice(&hello.pid.to_le_bytes());
    out
}

/// Decodes a hello datagram. Magic and version are checked first, so a peer of another
/// version (whatever the rest of its hello looks like) gets a message naming both versions.
pub fn decode_hello(bytes: &[u8]) -> Result<Hello, DecodeError> {
    if bytes.len() < 4 || bytes[0..4] != MAGIC {
        return Err(DecodeError::NotFdlink);
    }
    if bytes.len() < 6 {
        return Err(DecodeError::Truncated {
            what: "hello",
            need: HELLO_SIZE,
            have: bytes.len(),
        });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(DecodeError::VersionMismatch {
            ours: VERSION,
            theirs: version,
        });
    }
    let mut r = Reader::new(bytes, "hello");
    r.skip(6)?;
    let role = match r.u8()? {
        1 => Role::Producer,
        2 => Role::Consumer,
        other => return Err(DecodeError::BadRole(other)),
    };
    r.reserved(1)?;
    let capabilities = r.u32()?;
    let pid = r.u32()?;
    r.finish()?;
    Ok(Hello {
        version,
        role,
        capabilities,
        pid,
    })
}

// ---------------------------------------------------------------------------------------------
// Packets

/// How one of a frame's files travels in one consumer's buffer packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSend {
    /// As the fd at `index` of the packet's fd list, registered under `file_id` (0: for this
    /// buffer only).
    Fd { index: u8, file_id: u32 },
    /// Without an fd: the consumer has the file registered under this id.
    Registered(u32),
}

/// Encodes a buffer packet straight from its header, into `out` (cleared first), for a sender
/// whose per-frame path keeps its fds in a list of its own rather than a `Packet`'s Vec. Each
/// memory's `fd_index` picks its file in `files`, which says how that file travels (the
/// memories' own `file_id`s are not used); the packet carries the `FileSend::Fd` ones.
pub fn encode_buffer_packet(
    header: &BufferHeader,
    files: &[FileSend],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let n_fds = files
        .iter()
        .filter(|f| matches!(f, FileSend::Fd { .. }))
        .count();
    out.clear();
    out.extend_from_slice(&[0u8; HEADER_SIZE]);
    encode_buffer(header, n_fds, out, |m| {
        match files.get(m.fd_index as usize) {
            Some(FileSend::Fd { index, file_id }) => Ok((*index, *file_id)),
            Some(FileSend::Registered(id)) => Ok((FD_REGISTERED, *id)),
            None => Err(EncodeError::BadFdIndex {
                index: m.fd_index,
                fds: files.len(),
            }),
        }
    })?;
    finish_packet(out, PacketType::Buffer, n_fds)
}

/// Size of an encoded release packet.
pub const RELEASE_PACKET_SIZE: usize = HEADER_SIZE + 8;

/// Encodes a release packet on the stack: a consumer sends one per frame, from whichever
/// thread drops the frame's last memory.
pub fn encode_release(buffer_id: u64) -> [u8; RELEASE_PACKET_SIZE] {
    let mut out = [0u8; RELEASE_PACKET_SIZE];
    out[HEADER_SIZE..].copy_from_slice(&buffer_id.to_le_bytes());
    finish_packet(&mut out, PacketType::Release, 0).expect("a release packet is within limits");
    out
}

/// Fills in the fixed header of a packet whose payload follows it in `out`.
fn finish_packet(out: &mut [u8], ty: PacketType, n_fds: usize) -> Result<(), EncodeError> {
    let payload = out.len() - HEADER_SIZE;
    if out.len() > MAX_PACKET_SIZE {
        return Err(EncodeError::TooLarge {
            what: "packet",
            size: out.len(),
        });
    }
    out[0..2].copy_from_slice(&(ty as u16).to_le_bytes());
    out[2..4].copy_from_slice(&(n_fds as u16).to_le_bytes());
    out[4..8].copy_from_slice(&(payload as u32).to_le_bytes());
    Ok(())
}

impl<Fd> Packet<Fd> {
    /// The fds that travel with this packet.
    pub fn fds(&self) -> &[Fd] {
        match self {
            Packet::Buffer(_, fds) => fds,
            _ => &[],
        }
    }

    /// The same packet with another fd type, for any packet but a buffer packet (None: it is
    /// dropped, its fds closed).
    pub fn without_fds<G>(self) -> Option<Packet<G>> {
        Some(match self {
            Packet::Buffer(..) => return None,
            Packet::Caps(c) => Packet::Caps(c),
            Packet::Event { event, base_time } => Packet::Event { event, base_time },
            Packet::Retire { file_ids } => Packet::Retire { file_ids },
            Packet::Release { buffer_id } => Packet::Release { buffer_id },
            Packet::Error(e) => Packet::Error(e),
            Packet::UpstreamEvent(e) => Packet::UpstreamEvent(e),
            Packet::Query(q) => Packet::Query(q),
            Packet::QueryReply(r) => Packet::QueryReply(r),
            Packet::Message(m) => Packet::Message(m),
            Packet::State(st) => Packet::State(st),
            Packet::Prerolled {
                buffer_id,
                barriers,
            } => Packet::Prerolled {
                buffer_id,
                barriers,
            },
        })
    }

    /// Appends the encoded packet to `out` (cleared first). The caller sends `self.fds()`
    /// beside it.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.clear();
        out.extend_from_slice(&[0u8; HEADER_SIZE]);
        let (ty, n_fds) = match self {
            Packet::Caps(caps) => {
                put_str(out, caps);
                (PacketType::Caps, 0)
            }
            Packet::Event {
                event: ev,
                base_time,
            } => {
                out.extend_from_slice(&ev.event_type.to_le_bytes());
                out.extend_from_slice(&ev.seqnum.to_le_bytes());
                out.extend_from_slice(&base_time.to_le_bytes());
                put_str(out, &ev.structure);
                (PacketType::Event, 0)
            }
            Packet::Buffer(header, fds) => {
                encode_buffer(header, fds.len(), out, |m| Ok((m.fd_index, m.file_id)))?;
                (PacketType::Buffer, fds.len())
            }
            Packet::Release { buffer_id } => {
                out.extend_from_slice(&buffer_id.to_le_bytes());
                (PacketType::Release, 0)
            }
            Packet::Retire { file_ids } => {
                for id in file_ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
                (PacketType::Retire, 0)
            }
            Packet::Prerolled {
                buffer_id,
                barriers,
            } => {
                out.extend_from_slice(&buffer_id.to_le_bytes());
                out.extend_from_slice(&barriers.to_le_bytes());
                out.extend_from_slice(&[0; 4]);
                (PacketType::Prerolled, 0)
            }
            Packet::Error(msg) => {
                put_str(out, msg);
                (PacketType::Error, 0)
            }
            Packet::UpstreamEvent(ev) => {
                out.extend_from_slice(&ev.event_type.to_le_bytes());
                out.extend_from_slice(&ev.seqnum.to_le_bytes());
                put_str(out, &ev.structure);
                (PacketType::UpstreamEvent, 0)
            }
            Packet::Query(q) => {
                out.extend_from_slice(&q.id.to_le_bytes());
                out.extend_from_slice(&q.query_type.to_le_bytes());
                put_str(out, &q.structure);
                (PacketType::Query, 0)
            }
            Packet::QueryReply(r) => {
                out.extend_from_slice(&r.id.to_le_bytes());
                out.push(r.answered as u8);
                out.extend_from_slice(&[0, 0, 0]);
                put_str(out, &r.structure);
                (PacketType::QueryReply, 0)
            }
            Packet::Message(m) => {
                if m.source.len() > u16::MAX as usize {
                    return Err(EncodeError::TooLarge {
                        what: "message source",
                        size: m.source.len(),
                    });
                }
                out.extend_from_slice(&m.message_type.to_le_bytes());
                out.extend_from_slice(&(m.source.len() as u16).to_le_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(m.source.as_bytes());
                put_str(out, &m.structure);
                (PacketType::Message, 0)
            }
            Packet::State(st) => {
                out.push(st.state);
                out.push(st.sender_follows as u8);
                out.extend_from_slice(&[0, 0]);
                (PacketType::State, 0)
            }
        };
        finish_packet(out, ty, n_fds)
    }

    /// Decodes one datagram and the fds that arrived with it. On error the fds are dropped
    /// (for `OwnedFd`, closed).
    pub fn decode(bytes: &[u8], fds: PacketFds<Fd>) -> Result<Packet<Fd>, DecodeError> {
        if bytes.len() > MAX_PACKET_SIZE {
            return Err(DecodeError::TooLarge { size: bytes.len() });
        }
        let mut r = Reader::new(bytes, "packet header");
        let ty = r.u16()?;
        let n_fds = r.u16()? as usize;
        let payload = r.u32()? as usize;
        if payload != bytes.len() - HEADER_SIZE {
            return Err(if payload > bytes.len() - HEADER_SIZE {
                DecodeError::Truncated {
                    what: "packet",
                    need: HEADER_SIZE + payload,
                    have: bytes.len(),
                }
            } else {
                DecodeError::TrailingBytes {
                    what: "packet",
                    extra: bytes.len() - HEADER_SIZE - payload,
                }
            });
        }
        if n_fds != fds.len() {
            return Err(DecodeError::FdCountMismatch {
                declared: n_fds,
                received: fds.len(),
            });
        }
        let ty = PacketType::from_u16(ty).ok_or(DecodeError::UnknownPacketType(ty))?;
        let what = match ty {
            PacketType::Caps => "caps",
            PacketType::Event => "event",
            PacketType::Buffer => "buffer",
            PacketType::Release => "release",
            PacketType::Error => "error",
            PacketType::UpstreamEvent => "upstream event",
            PacketType::Query => "query",
            PacketType::QueryReply => "query reply",
            PacketType::Message => "message",
            PacketType::State => "state",
            PacketType::Prerolled => "prerolled",
            PacketType::Retire => "retire",
        };
        if ty != PacketType::Buffer && !fds.is_empty() {
            return Err(DecodeError::UnexpectedFds {
                what,
                count: fds.len(),
            });
        }
        let mut r = Reader::new(&bytes[HEADER_SIZE..], what);
        let packet = match ty {
            PacketType::Caps => Packet::Caps(r.string()?),
            PacketType::Event => {
                let event_type = r.u32()?;
                let seqnum = r.u32()?;
                let base_time = r.u64()?;
                let structure = r.string()?;
                Packet::Event {
                    event: EventPacket {
                        event_type,
                        seqnum,
                        structure,
                    },
                    base_time,
                }
            }
            PacketType::Buffer => {
                let header = decode_buffer(&mut r, fds.len())?;
                Packet::Buffer(header, fds)
            }
            PacketType::Release => Packet::Release {
                buffer_id: r.u64()?,
            },
            PacketType::Retire => {
                let n = (bytes.len() - HEADER_SIZE) / 4;
                if n == 0 {
                    return Err(DecodeError::Truncated {
                        what,
                        need: HEADER_SIZE + 4,
                        have: bytes.len(),
                    });
                }
                let mut file_ids = Vec::with_capacity(n);
                for _ in 0..n {
                    match r.u32()? {
                        0 => return Err(DecodeError::NoFile),
                        id => file_ids.push(id),
                    }
                }
                Packet::Retire { file_ids }
            }
            PacketType::Prerolled => {
                let buffer_id = r.u64()?;
                let barriers = r.u32()?;
                r.reserved(4)?;
                Packet::Prerolled {
                    buffer_id,
                    barriers,
                }
            }
            PacketType::Error => Packet::Error(r.string()?),
            PacketType::UpstreamEvent => {
                let event_type = r.u32()?;
                let seqnum = r.u32()?;
                let structure = r.string()?;
                Packet::UpstreamEvent(EventPacket {
                    event_type,
                    seqnum,
                    structure,
                })
            }
            PacketType::Query => {
                let id = r.u32()?;
                let query_type = r.u32()?;
                let structure = r.string()?;
                Packet::Query(QueryPacket {
                    id,
                    query_type,
                    structure,
                })
            }
            PacketType::QueryReply => {
                let id = r.u32()?;
                let answered = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::NonZeroReserved { what }),
                };
                r.reserved(3)?;
                let structure = r.string()?;
                Packet::QueryReply(QueryReplyPacket {
                    id,
                    answered,
                    structure,
                })
            }
            PacketType::Message => {
                let message_type = r.u32()?;
                let source_len = r.u16()? as usize;
                r.reserved(2)?;
                let source = r.str_of(source_len)?;
                let structure = r.string()?;
                Packet::Message(MessagePacket {
                    message_type,
                    source,
                    structure,
                })
            }
            PacketType::State => {
                let state = r.u8()?;
                if !(1..=4).contains(&state) {
                    return Err(DecodeError::BadState(state));
                }
                let sender_follows = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::NonZeroReserved { what }),
                };
                r.reserved(2)?;
                Packet::State(StatePacket {
                    state,
                    sender_follows,
                })
            }
        };
        r.finish()?;
        Ok(packet)
    }
}

/// Appends a buffer payload; `file_of` gives each memory's wire `fd_index` and `file_id`.
fn encode_buffer(
    h: &BufferHeader,
    n_fds: usize,
    out: &mut Vec<u8>,
    file_of: impl Fn(&MemoryDesc) -> Result<(u8, u32), EncodeError>,
) -> Result<(), EncodeError> {
    if h.memories.is_empty() || h.memories.len() > MAX_MEMORIES {
        return Err(EncodeError::TooMany {
            what: "memories",
            count: h.memories.len(),
            max: MAX_MEMORIES,
        });
    }
    if n_fds > MAX_FDS {
        return Err(EncodeError::TooMany {
            what: "fds",
            count: n_fds,
            max: MAX_FDS,
        });
    }
    for v in [
        h.buffer_id,
        h.pts,
        h.dts,
        h.duration,
        h.offset,
        h.offset_end,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&h.flags.to_le_bytes());
    out.extend_from_slice(&h.sent_at.to_le_bytes());
    out.extend_from_slice(&h.base_time.to_le_bytes());
    out.push(h.memories.len() as u8);
    out.push(h.video.is_some() as u8);
    out.extend_from_slice(&[0, 0]);
    for m in &h.memories {
        let (fd_index, file_id) = file_of(m)?;
        let by_id = fd_index == FD_REGISTERED && file_id != 0;
        if !by_id && fd_index as usize >= n_fds {
            return Err(EncodeError::BadFdIndex {
                index: fd_index,
                fds: n_fds,
            });
        }
        out.push(m.kind as u8);
        out.push(fd_index);
        out.extend_from_slice(&[0u8; 2]);
        out.extend_from_slice(&file_id.to_le_bytes());
        out.extend_from_slice(&m.offset.to_le_bytes());
        out.extend_from_slice(&m.size.to_le_bytes());
    }
    if let Some(v) = &h.video {
        if v.n_planes as usize > MAX_PLANES {
            return Err(EncodeError::TooMany {
                what: "planes",
                count: v.n_planes as usize,
                max: MAX_PLANES,
            });
        }
        for x in [v.format, v.flags, v.width, v.height, v.n_planes] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for o in v.offsets {
            out.extend_from_slice(&o.to_le_bytes());
        }
        for s in v.strides {
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    Ok(())
}

fn decode_buffer(r: &mut Reader<'_>, n_fds: usize) -> Result<BufferHeader, DecodeError> {
    r.need(BUFFER_FIXED_SIZE)?;
    let buffer_id = r.u64()?;
    let pts = r.u64()?;
    let dts = r.u64()?;
    let duration = r.u64()?;
    let offset = r.u64()?;
    let offset_end = r.u64()?;
    let flags = r.u32()?;
    let sent_at = r.u64()?;
    let base_time = r.u64()?;
    let n_memories = r.u8()? as usize;
    let has_video = r.u8()?;
    r.reserved(2)?;
    if n_memories == 0 || n_memories > MAX_MEMORIES {
        return Err(DecodeError::TooMany {
            what: "memories",
            count: n_memories,
            max: MAX_MEMORIES,
        });
    }
    if n_fds > MAX_FDS {
        return Err(DecodeError::TooMany {
            what: "fds",
            count: n_fds,
            max: MAX_FDS,
        });
    }
    r.need(n_memories * MEMORY_DESC_SIZE)?;
    let mut used = [false; MAX_FDS];
    // The file id each fd was given (None: not seen yet).
    let mut fd_ids = [None::<u32>; MAX_FDS];
    let mut memories = MemoryList::with_capacity(n_memories);
    for _ in 0..n_memories {
        let kind = match r.u8()? {
            1 => MemoryKind::Memfd,
            2 => MemoryKind::DmaBuf,
            other => return Err(DecodeError::BadMemoryKind(other)),
        };
        let fd_index = r.u8()?;
        r.reserved(2)?;
        let file_id = r.u32()?;
        let offset = r.u64()?;
        let size = r.u64()?;
        if fd_index == FD_REGISTERED {
            if file_id == 0 {
                return Err(DecodeError::NoFile);
            }
            if fd_ids.contains(&Some(file_id)) {
                return Err(DecodeError::FileIdConflict { file_id });
            }
        } else if fd_index as usize >= n_fds {
            return Err(DecodeError::BadFdIndex {
                index: fd_index,
                fds: n_fds,
            });
        } else {
            let i = fd_index as usize;
            match fd_ids[i] {
                Some(id) if id != file_id => return Err(DecodeError::FileIdConflict { file_id }),
                Some(_) => {}
                None => {
                    let registered_elsewhere = file_id != 0
                        && (fd_ids.contains(&Some(file_id))
                            || memories.iter().any(|m: &MemoryDesc| {
                                m.fd_index == FD_REGISTERED && m.file_id == file_id
                            }));
                    if registered_elsewhere {
                        return Err(DecodeError::FileIdConflict { file_id });
                    }
                    fd_ids[i] = Some(file_id);
                }
            }
            used[i] = true;
        }
        if offset.checked_add(size).is_none() {
            return Err(DecodeError::BadMemoryWindow { offset, size });
        }
        memories.push(MemoryDesc {
            kind,
            fd_index,
            file_id,
            offset,
            size,
        });
    }
    if let Some(index) = (0..n_fds).find(|&i| !used[i]) {
        return Err(DecodeError::UnusedFd { index });
    }
    let video = match has_video {
        0 => None,
        1 => {
            r.need(VIDEO_META_SIZE)?;
            let format = r.u32()?;
            let flags = r.u32()?;
            let width = r.u32()?;
            let height = r.u32()?;
            let n_planes = r.u32()?;
            if n_planes as usize > MAX_PLANES {
                return Err(DecodeError::TooMany {
                    what: "planes",
                    count: n_planes as usize,
                    max: MAX_PLANES,
                });
            }
            let mut offsets = [0u64; MAX_PLANES];
            for o in &mut offsets {
                *o = r.u64()?;
            }
            let mut strides = [0i32; MAX_PLANES];
            for s in &mut strides {
                *s = r.u32()? as i32;
            }
            Some(VideoLayout {
                format,
                flags,
                width,
                height,
                n_planes,
                offsets,
                strides,
            })
        }
        _ => {
            return Err(DecodeError::NonZeroReserved {
                what: "buffer video flag",
            });
        }
    };
    Ok(BufferHeader {
        buffer_id,
        pts,
        dts,
        duration,
        offset,
        offset_end,
        flags,
        sent_at,
        base_time,
        memories,
        video,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Strings run to the end of the packet; the header's payload length bounds them.
    out.extend_from_slice(s.as_bytes());
}

/// Bounds-checked little-endian reader over one datagram.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            what,
        }
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        let have = self.bytes.len() - self.pos;
        if have < n {
            return Err(DecodeError::Truncated {
                what: self.what,
                need: self.pos + n,
                have: self.bytes.len(),
            });
        }
        Ok(())
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.bytes[self.pos..self.pos + N]);
        self.pos += N;
        Ok(a)
    }

    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.need(n)?;
        self.pos += n;
        Ok(())
    }

    fn reserved(&mut self, n: usize) -> Result<(), DecodeError> {
        self.need(n)?;
        if self.bytes[self.pos..self.pos + n].iter().any(|&b| b != 0) {
            return Err(DecodeError::NonZeroReserved { what: self.what });
        }
        self.pos += n;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    /// The next `n` bytes as UTF-8.
    fn str_of(&mut self, n: usize) -> Result<String, DecodeError> {
        self.need(n)?;
        let bytes = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { what: self.what })
    }

    /// The rest of the datagram as UTF-8.
    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        std::str::from_utf8(rest)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { what: self.what })
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos != self.bytes.len() {
            return Err(DecodeError::TrailingBytes {
                what: self.what,
                extra: self.bytes.len() - self.pos,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::smallvec;

    fn sample_buffer() -> BufferHeader {
        BufferHeader {
            buffer_id: 0x1122_3344_5566_7788,
            pts: 1_000_000,
            dts: TIME_NONE,
            duration: 16_666_666,
            offset: 7,
            offset_end: 8,
            flags: 0x40,
            sent_at: 42,
            base_time: 1_234_567_890,
            memories: smallvec![
                MemoryDesc {
                    kind: MemoryKind::Memfd,
                    fd_index: 0,
                    file_id: 0,
                    offset: 0,
                    size: 2_073_600,
                },
                MemoryDesc {
                    kind: MemoryKind::Memfd,
                    fd_index: 0,
                    file_id: 0,
                    offset: 2_073_600,
                    size: 1_036_800,
                },
                MemoryDesc {
                    kind: MemoryKind::DmaBuf,
                    fd_index: 1,
                    file_id: 0,
                    offset: 4096,
                    size: 100,
                },
            ],
            video: Some(VideoLayout {
                format: 23,
                flags: 0,
                width: 1920,
                height: 1080,
                n_planes: 2,
                offsets: [0, 2_073_600, 0, 0],
                strides: [1920, 1920, 0, 0],
            }),
        }
    }

    fn encoded(p: &Packet<i32>) -> Vec<u8> {
        let mut out = Vec::new();
        p.encode(&mut out).unwrap();
        out
    }

    fn roundtrip(p: Packet<i32>) {
        let bytes = encoded(&p);
        let fds = p.fds().into();
        assert_eq!(Packet::decode(&bytes, fds).unwrap(), p);
    }

    #[test]
    fn release_encoded_on_the_stack_is_the_release_packet() {
        for buffer_id in [0, 7, u64::MAX] {
            let bytes = encode_release(buffer_id);
            assert_eq!(bytes[..], encoded(&Packet::Release { buffer_id })[..]);
            assert_eq!(
                Packet::<i32>::decode(&bytes, PacketFds::new()).unwrap(),
                Packet::Release { buffer_id }
            );
        }
    }

    #[test]
    fn hello_roundtrip() {
        let h = Hello::new(Role::Consumer, 1234);
        assert_eq!(decode_hello(&encode_hello(&h)).unwrap(), h);
        let h = Hello::new(Role::Producer, u32::MAX);
        assert_eq!(decode_hello(&encode_hello(&h)).unwrap(), h);
    }

    #[test]
    fn hello_rejects_other_peers_and_versions() {
        assert_eq!(
            decode_hello(b"GET / HTTP/1.1\r\n"),
            Err(DecodeError::NotFdlink)
        );
        assert_eq!(decode_hello(b""), Err(DecodeError::NotFdlink));
        assert_eq!(decode_hello(b"FDL"), Err(DecodeError::NotFdlink));
        let mut b = encode_hello(&Hello::new(Role::Producer, 1));
        b[4..6].copy_from_slice(&2u16.to_le_bytes());
        let err = decode_hello(&b).unwrap_err();
        assert_eq!(
            err,
            DecodeError::VersionMismatch {
                ours: VERSION,
                theirs: 2
            }
        );
        assert!(
            err.to_string().contains(&format!("version {VERSION}"))
                && err.to_string().contains("version 2")
        );
        // A future version with a longer hello still gets the version error, not "trailing".
        let mut long = b.to_vec();
        long.extend_from_slice(&[0; 32]);
        assert!(matches!(
            decode_hello(&long),
            Err(DecodeError::VersionMismatch { .. })
        ));
        let mut b = encode_hello(&Hello::new(Role::Producer, 1));
        b[6] = 9;
        assert_eq!(decode_hello(&b), Err(DecodeError::BadRole(9)));
        let b = encode_hello(&Hello::new(Role::Producer, 1));
        assert!(matches!(
            decode_hello(&b[..10]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut long = b.to_vec();
        long.push(0);
        assert!(matches!(
            decode_hello(&long),
            Err(DecodeError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn packets_roundtrip() {
        roundtrip(Packet::Caps("video/x-raw, format=(string)NV12".into()));
        roundtrip(Packet::Caps(String::new()));
        roundtrip(Packet::Event {
            event: EventPacket {
                event_type: 0x2800 | 0x3,
                seqnum: 99,
                structure: "GstEventSegment, segment=(GstSegment)\"x\";".into(),
            },
            base_time: 1_234_567_890,
        });
        roundtrip(Packet::Event {
            event: EventPacket {
                event_type: 0xa006,
                seqnum: 1,
                structure: String::new(),
            },
            base_time: TIME_NONE,
        });
        roundtrip(Packet::Release {
            buffer_id: u64::MAX,
        });
        roundtrip(Packet::Error("producer is shutting down ✓".into()));
        roundtrip(Packet::Buffer(sample_buffer(), smallvec![10, 11]));
        let mut no_video = sample_buffer();
        no_video.video = None;
        roundtrip(Packet::Buffer(no_video, smallvec![3, 4]));
        roundtrip(Packet::UpstreamEvent(EventPacket {
            event_type: 0x3c1,
            seqnum: 7,
            structure: "GstEventSeek, rate=(double)1;".into(),
        }));
        roundtrip(Packet::Query(QueryPacket {
            id: 9,
            query_type: 0x0a03,
            structure: "GstQueryPosition, format=(GstFormat)time;".into(),
        }));
        roundtrip(Packet::QueryReply(QueryReplyPacket {
            id: 9,
            answered: true,
            structure: "GstQueryPosition, current=(gint64)5;".into(),
        }));
        roundtrip(Packet::QueryReply(QueryReplyPacket {
            id: u32::MAX,
            answered: false,
            structure: String::new(),
        }));
        roundtrip(Packet::Message(MessagePacket {
            message_type: 2,
            source: "/GstPipeline:pipeline0/GstFakeSink:fakesink0".into(),
            structure: "GstMessageError, gerror=(GError)NULL;".into(),
        }));
        roundtrip(Packet::Message(MessagePacket {
            message_type: 2,
            source: String::new(),
            structure: String::new(),
        }));
        roundtrip(Packet::Prerolled {
            buffer_id: 0,
            barriers: 0,
        });
        roundtrip(Packet::Prerolled {
            buffer_id: u64::MAX,
            barriers: u32::MAX,
        });
        for state in 1..=4 {
            roundtrip(Packet::State(StatePacket {
                state,
                sender_follows: state % 2 == 0,
            }));
        }
    }

    #[test]
    fn state_packet_malformed() {
        let good = encoded(&Packet::<i32>::State(StatePacket {
            state: 4,
            sender_follows: true,
        }));
        assert_eq!(good.len(), HEADER_SIZE + 4);
        for (at, value, want) in [
            (HEADER_SIZE, 0u8, DecodeError::BadState(0)),
            (HEADER_SIZE, 5, DecodeError::BadState(5)),
            (
                HEADER_SIZE + 1,
                2,
                DecodeError::NonZeroReserved { what: "state" },
            ),
            (
                HEADER_SIZE + 3,
                1,
                DecodeError::NonZeroReserved { what: "state" },
            ),
        ] {
            let mut b = good.clone();
            b[at] = value;
            assert_eq!(Packet::<i32>::decode(&b, smallvec![]), Err(want));
        }
        assert!(matches!(
            Packet::<i32>::decode(&good[..HEADER_SIZE + 3], smallvec![]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn control_packets_malformed() {
        let reply = encoded(&Packet::<i32>::QueryReply(QueryReplyPacket {
            id: 1,
            answered: true,
            structure: "x".into(),
        }));
        let mut t = reply.clone();
        t[HEADER_SIZE + 4] = 2;
        assert!(matches!(
            Packet::<i32>::decode(&t, smallvec![]),
            Err(DecodeError::NonZeroReserved { .. })
        ));
        let msg = encoded(&Packet::<i32>::Message(MessagePacket {
            message_type: 2,
            source: "abc".into(),
            structure: String::new(),
        }));
        // A source length past the end of the packet.
        let mut t = msg.clone();
        t[HEADER_SIZE + 4..HEADER_SIZE + 6].copy_from_slice(&100u16.to_le_bytes());
        assert!(matches!(
            Packet::<i32>::decode(&t, smallvec![]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut t = msg.clone();
        t[HEADER_SIZE + 8] = 0xff;
        assert!(matches!(
            Packet::<i32>::decode(&t, smallvec![]),
            Err(DecodeError::InvalidUtf8 { what: "message" })
        ));
    }

    #[test]
    fn header_checks() {
        let bytes = encoded(&Packet::<i32>::Release { buffer_id: 5 });
        assert!(matches!(
            Packet::<i32>::decode(&bytes[..4], smallvec![]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Packet::<i32>::decode(&bytes[..bytes.len() - 1], smallvec![]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            Packet::<i32>::decode(&long, smallvec![]),
            Err(DecodeError::TrailingBytes { .. })
        ));
        let mut t = bytes.clone();
        t[0..2].copy_from_slice(&77u16.to_le_bytes());
        assert_eq!(
            Packet::<i32>::decode(&t, smallvec![]),
            Err(DecodeError::UnknownPacketType(77))
        );
        // A release packet with an fd riding along: the fd is refused (and dropped).
        let mut t = bytes.clone();
        t[2..4].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(
            Packet::<i32>::decode(&t, smallvec![9]),
            Err(DecodeError::UnexpectedFds { count: 1, .. })
        ));
        // Fds arriving that the header does not declare.
        assert_eq!(
            Packet::<i32>::decode(&bytes, smallvec![9]),
            Err(DecodeError::FdCountMismatch {
                declared: 0,
                received: 1
            })
        );
        let huge = vec![0u8; MAX_PACKET_SIZE + 1];
        assert!(matches!(
            Packet::<i32>::decode(&huge, smallvec![]),
            Err(DecodeError::TooLarge { .. })
        ));
        // Release payload of the wrong size, with a consistent header.
        let mut t = bytes.clone();
        t.push(0);
        t[4..8].copy_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            Packet::<i32>::decode(&t, smallvec![]),
            Err(DecodeError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn buffer_malformed_cases() {
        let good = encoded(&Packet::Buffer(sample_buffer(), smallvec![1, 2]));
        let mem0 = HEADER_SIZE + BUFFER_FIXED_SIZE;
        let n_mem_at = HEADER_SIZE + 8 * 6 + 4 + 8 + 8;
        let decode = |b: &[u8], fds: PacketFds<i32>| Packet::<i32>::decode(b, fds);

        // fd count declared 2, one arrived (MSG_CTRUNC-like loss).
        assert_eq!(
            decode(&good, smallvec![1]),
            Err(DecodeError::FdCountMismatch {
                declared: 2,
                received: 1
            })
        );
        // Every truncation point is rejected, with consistent header lengths.
        for cut in HEADER_SIZE..good.len() {
            let mut t = good[..cut].to_vec();
            t[4..8].copy_from_slice(&((cut - HEADER_SIZE) as u32).to_le_bytes());
            assert!(
                matches!(
                    decode(&t, smallvec![1, 2]),
                    Err(DecodeError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut t = good.clone();
        t[n_mem_at] = 0;
        assert!(matches!(
            decode(&t, smallvec![1, 2]),
            Err(DecodeError::TooMany {
                what: "memories",
                ..
            })
        ));
        let mut t = good.clone();
        t[n_mem_at] = 17;
        assert!(matches!(
            decode(&t, smallvec![1, 2]),
            Err(DecodeError::TooMany {
                what: "memories",
                ..
            })
        ));
        let mut t = good.clone();
        t[mem0] = 7;
        assert_eq!(
            decode(&t, smallvec![1, 2]),
            Err(DecodeError::BadMemoryKind(7))
        );
        let mut t = good.clone();
        t[mem0 + 1] = 2;
        assert_eq!(
            decode(&t, smallvec![1, 2]),
            Err(DecodeError::BadFdIndex { index: 2, fds: 2 })
        );
        // Memory 2 pointed at fd 0: fd 1 arrives but nothing uses it.
        let mut t = good.clone();
        t[mem0 + 2 * MEMORY_DESC_SIZE + 1] = 0;
        assert_eq!(
            decode(&t, smallvec![1, 2]),
            Err(DecodeError::UnusedFd { index: 1 })
        );
        let mut t = good.clone();
        t[mem0 + 8..mem0 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(&t, smallvec![1, 2]),
            Err(DecodeError::BadMemoryWindow { .. })
        ));
        let planes_at = mem0 + 3 * MEMORY_DESC_SIZE + 16;
        let mut t = good.clone();
        t[planes_at..planes_at + 4].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(
            decode(&t, smallvec![1, 2]),
            Err(DecodeError::TooMany { what: "planes", .. })
        ));
        // Too many fds declared and delivered.
        let mut t = good.clone();
        t[2..4].copy_from_slice(&17u16.to_le_bytes());
        assert!(matches!(
            decode(&t, (0..17).collect()),
            Err(DecodeError::TooMany { what: "fds", .. })
        ));
    }

    #[test]
    fn strings_must_be_utf8() {
        let mut t = encoded(&Packet::<i32>::Caps("ab".into()));
        t[HEADER_SIZE] = 0xff;
        assert_eq!(
            Packet::<i32>::decode(&t, smallvec![]),
            Err(DecodeError::InvalidUtf8 { what: "caps" })
        );
    }

    #[test]
    fn encode_checks() {
        let mut out = Vec::new();
        let big = Packet::<i32>::Caps("x".repeat(MAX_PACKET_SIZE));
        assert!(matches!(
            big.encode(&mut out),
            Err(EncodeError::TooLarge { .. })
        ));
        let mut h = sample_buffer();
        assert!(matches!(
            Packet::Buffer(h.clone(), smallvec![1]).encode(&mut out),
            Err(EncodeError::BadFdIndex { .. })
        ));
        h.memories.clear();
        assert!(matches!(
            Packet::Buffer(h, smallvec![1]).encode(&mut out),
            Err(EncodeError::TooMany { .. })
        ));
    }

    /// Random bytes never panic the decoder, and when they decode they re-encode identically.
    #[test]
    fn fuzz_decode_never_panics() {
        let seeds = [
            encoded(&Packet::Buffer(sample_buffer(), smallvec![1, 2])),
            encoded(&Packet::<i32>::Caps("video/x-raw".into())),
            encoded(&Packet::<i32>::Release { buffer_id: 3 }),
            encoded(&Packet::<i32>::Prerolled {
                buffer_id: 3,
                barriers: 1,
            }),
            encoded(&Packet::<i32>::Message(MessagePacket {
                message_type: 2,
                source: "/a/b".into(),
                structure: "s".into(),
            })),
            encoded(&Packet::<i32>::QueryReply(QueryReplyPacket {
                id: 1,
                answered: true,
                structure: "q".into(),
            })),
            encoded(&Packet::<i32>::State(StatePacket {
                state: 3,
                sender_follows: false,
            })),
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..20_000 {
            let mut b = seeds[i % seeds.len()].clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
            let n_fds = u16::from_le_bytes([b[2], b[3]]) as usize;
            let fds: PacketFds<i32> = (0..n_fds.min(20) as i32).collect();
            if let Ok(p) = Packet::decode(&b, fds) {
                assert_eq!(encoded(&p), b);
            }
            let _ = decode_hello(&b);
        }
    }

    fn registered_sample() -> BufferHeader {
        let mut h = sample_buffer();
        // Plane memories of one registered memfd, and a dmabuf by id alone.
        h.memories[0].file_id = 7;
        h.memories[1].file_id = 7;
        h.memories[2].fd_index = FD_REGISTERED;
        h.memories[2].file_id = 9;
        h
    }

    #[test]
    fn register_once_files_roundtrip() {
        roundtrip(Packet::Buffer(registered_sample(), smallvec![3]));
        // Every file by id: a buffer packet without fds.
        let mut h = registered_sample();
        h.memories[0].fd_index = FD_REGISTERED;
        h.memories[1].fd_index = FD_REGISTERED;
        roundtrip(Packet::Buffer(h, smallvec![]));
        roundtrip(Packet::<i32>::Retire {
            file_ids: vec![1, 9, u32::MAX],
        });
    }

    #[test]
    fn per_consumer_encoding_picks_fds_and_ids() {
        // The sender's header: memories 0 and 1 in file slot 0, memory 2 in slot 1.
        let h = sample_buffer();
        let mut out = Vec::new();
        // Slot 0 registers as id 7 (fd 0 of the packet), slot 1 is known as id 9.
        encode_buffer_packet(
            &h,
            &[
                FileSend::Fd {
                    index: 0,
                    file_id: 7,
                },
                FileSend::Registered(9),
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            Packet::decode(&out, smallvec![5]).unwrap(),
            Packet::Buffer(registered_sample(), smallvec![5])
        );
        // Everything known: no fd at all.
        encode_buffer_packet(
            &h,
            &[FileSend::Registered(7), FileSend::Registered(9)],
            &mut out,
        )
        .unwrap();
        let Packet::Buffer(decoded, fds) = Packet::<i32>::decode(&out, smallvec![]).unwrap() else {
            panic!("not a buffer packet");
        };
        assert!(fds.is_empty());
        assert!(decoded.memories.iter().all(|m| m.fd_index == FD_REGISTERED));
        assert_eq!(
            decoded
                .memories
                .iter()
                .map(|m| m.file_id)
                .collect::<Vec<_>>(),
            [7, 7, 9]
        );
        // A memory whose slot is not in the plan is refused.
        assert!(matches!(
            encode_buffer_packet(&h, &[FileSend::Registered(7)], &mut out),
            Err(EncodeError::BadFdIndex { index: 1, fds: 1 })
        ));
    }

    #[test]
    fn register_once_malformed_cases() {
        let decode = |h: BufferHeader, fds: PacketFds<i32>| {
            let bytes = encoded(&Packet::Buffer(h, fds.clone()));
            Packet::<i32>::decode(&bytes, fds)
        };
        // By id, but id 0: no file at all.
        let mut bytes = encoded(&Packet::Buffer(registered_sample(), smallvec![3]));
        let mem2 = HEADER_SIZE + BUFFER_FIXED_SIZE + 2 * MEMORY_DESC_SIZE;
        bytes[mem2 + 4..mem2 + 8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            Packet::<i32>::decode(&bytes, smallvec![3]),
            Err(DecodeError::NoFile)
        );
        // One fd given two ids.
        let mut h = registered_sample();
        h.memories[1].file_id = 8;
        assert_eq!(
            decode(h, smallvec![3]),
            Err(DecodeError::FileIdConflict { file_id: 8 })
        );
        // One id on an fd and by id in the same packet.
        let mut h = registered_sample();
        h.memories[2].file_id = 7;
        assert_eq!(
            decode(h, smallvec![3]),
            Err(DecodeError::FileIdConflict { file_id: 7 })
        );
        // Two fds registering one id.
        let mut h = registered_sample();
        h.memories[2].fd_index = 1;
        h.memories[2].file_id = 7;
        assert_eq!(
            decode(h, smallvec![3, 4]),
            Err(DecodeError::FileIdConflict { file_id: 7 })
        );
        // Nonzero reserved bytes in a descriptor are still refused.
        let mut bytes = encoded(&Packet::Buffer(registered_sample(), smallvec![3]));
        bytes[HEADER_SIZE + BUFFER_FIXED_SIZE + 2] = 1;
        assert!(matches!(
            Packet::<i32>::decode(&bytes, smallvec![3]),
            Err(DecodeError::NonZeroReserved { .. })
        ));
        // Retire: empty, id 0, a ragged payload, fds riding along.
        let retire = encoded(&Packet::<i32>::Retire { file_ids: vec![4] });
        let mut empty = retire[..HEADER_SIZE].to_vec();
        empty[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            Packet::<i32>::decode(&empty, smallvec![]),
            Err(DecodeError::Truncated { what: "retire", .. })
        ));
        let zero = encoded(&Packet::<i32>::Retire { file_ids: vec![0] });
        assert_eq!(
            Packet::<i32>::decode(&zero, smallvec![]),
            Err(DecodeError::NoFile)
        );
        let mut ragged = retire.clone();
        ragged.push(0);
        ragged[4..8].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(
            Packet::<i32>::decode(&ragged, smallvec![]),
            Err(DecodeError::TrailingBytes { what: "retire", .. })
        ));
        let mut with_fd = retire.clone();
        with_fd[2..4].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(
            Packet::<i32>::decode(&with_fd, smallvec![9]),
            Err(DecodeError::UnexpectedFds { what: "retire", .. })
        ));
    }
}
