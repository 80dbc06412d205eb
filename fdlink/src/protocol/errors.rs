//! Why a packet could not be encoded or decoded.

use std::fmt;

use super::MAX_PACKET_SIZE;
use crate::structure_limits::StructureLimitError;

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
    /// A text with a NUL byte.
    NulInText {
        what: &'static str,
    },
    /// Reserved bytes must be zero, so a later version can give them a meaning.
    NonZeroReserved {
        what: &'static str,
    },
    /// A structure text past the limits GStreamer's parser is kept within.
    StructureLimit {
        what: &'static str,
        error: StructureLimitError,
    },
    /// A buffer's metas section is malformed (see docs/protocol.md, Buffer metas).
    BadMetas {
        reason: &'static str,
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
            NulInText { what } => write!(f, "{what} contains a NUL byte"),
            NonZeroReserved { what } => write!(f, "{what} has nonzero reserved bytes"),
            StructureLimit { what, error } => write!(f, "{what} packet refused: {error}"),
            BadMetas { reason } => write!(f, "buffer metas malformed: {reason}"),
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
    /// A buffer's metas cannot be encoded as given.
    BadMetas {
        reason: &'static str,
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
            EncodeError::BadMetas { reason } => write!(f, "buffer metas: {reason}"),
        }
    }
}

impl std::error::Error for EncodeError {}
