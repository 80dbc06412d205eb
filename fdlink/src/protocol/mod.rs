//! The fdlink wire protocol, version [`VERSION`]: pure encoding and decoding.
//!
//! This module knows neither GStreamer nor syscalls. It turns packets into bytes and bytes
//! (plus the file descriptors that arrived beside them) back into packets, checking every
//! length and count before use. `docs/protocol.md` describes every byte.
//!
//! Packets are generic over the file descriptor type: the producer encodes packets holding
//! `BorrowedFd`s, the consumer decodes into packets holding `OwnedFd`s, and tests use plain
//! integers.
//!
//! This file holds the limits, the [`Packet`] enum and the 8-byte header that frames every
//! packet; `hello` the first datagram, `buffer` the frame packets, `control` the
//! event, query, message and state packets, `errors` what can go wrong.

mod buffer;
mod control;
mod errors;
mod hello;
mod metas;
mod reader;

pub use buffer::{
    BufferHeader, FileSend, MemoryDesc, MemoryKind, MemoryList, RELEASE_PACKET_SIZE, VideoLayout,
    buffer_packet_size, encode_buffer_packet, encode_release,
};
pub use control::{EventPacket, MessagePacket, QueryPacket, QueryReplyPacket, StatePacket};
pub use errors::{DecodeError, EncodeError};
pub use hello::{CAP_FOLLOWS, HELLO_SIZE, Hello, Role, decode_hello, encode_hello};
pub use metas::{
    MAX_META_SIZE, MAX_METAS, MAX_METAS_SIZE, MetaEntry, Metas, check_meta_list, decode_metas,
    encode_meta_list, meta_list_size,
};

use crate::structure_limits::check_structure_text;
use reader::{Reader, put_str};

/// First four bytes of a hello: "FDLK".
pub const MAGIC: [u8; 4] = *b"FDLK";
/// The protocol version this build speaks.
pub const VERSION: u16 = 7;
/// Largest datagram either side sends or accepts.
pub const MAX_PACKET_SIZE: usize = 64 * 1024;
/// Frames a consumer that joins may be sent at once from the producer's latest-keyframe
/// backlog, besides what its `max-held` allows.
pub const MAX_JOIN_BACKLOG: usize = 256;
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
/// Size of the header that starts every packet after the hello.
pub const HEADER_SIZE: usize = 8;

/// The fds that travel with a packet: inline up to four, so receiving does not allocate.
pub type PacketFds<Fd> = smallvec::SmallVec<[Fd; 4]>;

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

    /// The packet's name in error messages.
    fn name(self) -> &'static str {
        match self {
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
        }
    }
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
            Packet::Event { event, base_time } => {
                control::encode_event(event, *base_time, out);
                (PacketType::Event, 0)
            }
            Packet::Buffer(header, fds) => {
                buffer::encode_buffer(header, fds.len(), out, |m| Ok((m.fd_index, m.file_id)))?;
                (PacketType::Buffer, fds.len())
            }
            Packet::Release { buffer_id } => {
                out.extend_from_slice(&buffer_id.to_le_bytes());
                (PacketType::Release, 0)
            }
            Packet::Retire { file_ids } => {
                buffer::encode_retire(file_ids, out);
                (PacketType::Retire, 0)
            }
            Packet::Prerolled {
                buffer_id,
                barriers,
            } => {
                control::encode_prerolled(*buffer_id, *barriers, out);
                (PacketType::Prerolled, 0)
            }
            Packet::Error(msg) => {
                put_str(out, msg);
                (PacketType::Error, 0)
            }
            Packet::UpstreamEvent(ev) => {
                control::encode_upstream_event(ev, out);
                (PacketType::UpstreamEvent, 0)
            }
            Packet::Query(q) => {
                control::encode_query(q, out);
                (PacketType::Query, 0)
            }
            Packet::QueryReply(reply) => {
                control::encode_query_reply(reply, out);
                (PacketType::QueryReply, 0)
            }
            Packet::Message(m) => {
                control::encode_message(m, out)?;
                (PacketType::Message, 0)
            }
            Packet::State(st) => {
                control::encode_state(st, out);
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
        let what = ty.name();
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
                let (event, base_time) = control::decode_event(&mut r)?;
                Packet::Event { event, base_time }
            }
            PacketType::Buffer => {
                let header = buffer::decode_buffer(&mut r, fds.len())?;
                Packet::Buffer(header, fds)
            }
            PacketType::Release => Packet::Release {
                buffer_id: r.u64()?,
            },
            PacketType::Retire => Packet::Retire {
                file_ids: buffer::decode_retire(&mut r)?,
            },
            PacketType::Prerolled => {
                let (buffer_id, barriers) = control::decode_prerolled(&mut r)?;
                Packet::Prerolled {
                    buffer_id,
                    barriers,
                }
            }
            PacketType::Error => Packet::Error(r.string()?),
            PacketType::UpstreamEvent => {
                Packet::UpstreamEvent(control::decode_upstream_event(&mut r)?)
            }
            PacketType::Query => Packet::Query(control::decode_query(&mut r)?),
            PacketType::QueryReply => Packet::QueryReply(control::decode_query_reply(&mut r)?),
            PacketType::Message => Packet::Message(control::decode_message(&mut r)?),
            PacketType::State => Packet::State(control::decode_state(&mut r)?),
        };
        r.finish()?;
        if let Some(text) = packet.structure_text() {
            check_structure_text(text)
                .map_err(|error| DecodeError::StructureLimit { what, error })?;
        }
        Ok(packet)
    }

    /// The GStreamer structure (or caps) text a packet carries, which the receiver parses.
    fn structure_text(&self) -> Option<&str> {
        match self {
            Packet::Caps(text) => Some(text),
            Packet::Event { event, .. } | Packet::UpstreamEvent(event) => Some(&event.structure),
            Packet::Query(q) => Some(&q.structure),
            Packet::QueryReply(reply) => Some(&reply.structure),
            Packet::Message(m) => Some(&m.structure),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::smallvec;

    pub(super) fn sample_buffer() -> BufferHeader {
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
            metas: Metas::default(),
        }
    }

    /// 20 000 packets made from `seeds` with 1 to `max_changes` random bytes changed (an
    /// xorshift from `seed`): none panics the decoder, each that decodes re-encodes to the
    /// same bytes, and each is also given to `also`.
    pub(super) fn mutate_and_decode(
        seeds: &[Vec<u8>],
        seed: u64,
        max_changes: u64,
        mut also: impl FnMut(&[u8]),
    ) {
        let mut state = seed;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..20_000 {
            let mut b = seeds[i % seeds.len()].clone();
            for _ in 0..(next() % max_changes + 1) {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
            let n_fds = u16::from_le_bytes([b[2], b[3]]) as usize;
            let fds: PacketFds<i32> = (0..n_fds.min(20) as i32).collect();
            if let Ok(p) = Packet::decode(&b, fds) {
                assert_eq!(encoded(&p), b);
            }
            also(&b);
        }
    }

    pub(super) fn encoded(p: &Packet<i32>) -> Vec<u8> {
        let mut out = Vec::new();
        p.encode(&mut out).unwrap();
        out
    }

    pub(super) fn roundtrip(p: Packet<i32>) {
        let bytes = encoded(&p);
        let fds = p.fds().into();
        assert_eq!(Packet::decode(&bytes, fds).unwrap(), p);
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
    fn strings_must_have_no_nul() {
        let t = encoded(&Packet::<i32>::Caps("video/x-raw\0, width=(int)1".into()));
        assert_eq!(
            Packet::<i32>::decode(&t, smallvec![]),
            Err(DecodeError::NulInText { what: "caps" })
        );
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
        h.memories = (0..=MAX_MEMORIES).map(|_| h.memories[0]).collect();
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
        mutate_and_decode(&seeds, 0x9E37_79B9_7F4A_7C15, 4, |b| {
            let _ = decode_hello(b);
        });
    }

    /// Every packet that carries a structure text is refused past the structure limits,
    /// before any receiver hands the text to GStreamer's parser.
    #[test]
    fn deep_structures_are_refused() {
        let deep = format!("{}x{}", "a, b=[".repeat(4000), "]".repeat(4000));
        let ev = EventPacket {
            event_type: 1,
            seqnum: 2,
            structure: deep.clone(),
        };
        let q = QueryPacket {
            id: 1,
            query_type: 2,
            structure: deep.clone(),
        };
        for p in [
            Packet::<i32>::Caps(deep.clone()),
            Packet::Event {
                event: ev.clone(),
                base_time: 0,
            },
            Packet::UpstreamEvent(ev),
            Packet::Query(q),
            Packet::QueryReply(QueryReplyPacket {
                id: 1,
                answered: true,
                structure: deep.clone(),
            }),
            Packet::Message(MessagePacket {
                message_type: 2,
                source: String::new(),
                structure: deep.clone(),
            }),
        ] {
            let err = Packet::<i32>::decode(&encoded(&p), PacketFds::new()).unwrap_err();
            assert!(matches!(err, DecodeError::StructureLimit { .. }), "{err:?}");
            assert!(err.to_string().contains("deeper than 32 levels"), "{err}");
        }
        // The error packet's text is not a structure: any text goes.
        roundtrip(Packet::Error(deep));
    }
}
