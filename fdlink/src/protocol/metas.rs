//! A buffer's metas on the wire: a list of (kind, bytes) entries, GStreamer-free. What a kind
//! means and how its bytes are laid out is the plugin's (`src/metas/`); the core encodes,
//! decodes and bounds the list. It travels in the buffer packet, or, when it does not fit
//! there, in a sealed memfd sent as the packet's last fd.

use super::reader::Reader;
use super::{DecodeError, EncodeError};

/// Most metas one buffer carries across.
pub const MAX_METAS: usize = 64;
/// Largest meta entry, in bytes (a 1 MB payload in a custom meta fits, with room).
pub const MAX_META_SIZE: usize = 8 * 1024 * 1024;
/// Largest encoded metas list, in bytes: the most a consumer reads from a metas memfd.
pub const MAX_METAS_SIZE: usize = 16 * 1024 * 1024;

/// Bytes of the list's own header: count and reserved.
const LIST_HEADER_SIZE: usize = 4;
/// Bytes of each entry's header: kind, reserved, length.
const ENTRY_HEADER_SIZE: usize = 8;

/// One meta of a buffer: its kind (nonzero, the plugin's numbering) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaEntry {
    pub kind: u16,
    pub bytes: Vec<u8>,
}

/// Where a buffer's metas travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metas {
    /// In the packet (an empty list: the buffer has none that cross).
    Inline(Vec<MetaEntry>),
    /// In a sealed memfd, the packet's last fd (which no memory uses): `size` bytes from
    /// offset 0 hold the encoded list ([`encode_meta_list`]). The consumer reads it and
    /// replaces this with the list (`Inline`) before the buffer is built.
    Memfd { size: u64 },
}

impl Default for Metas {
    fn default() -> Self {
        Metas::Inline(Vec::new())
    }
}

impl Metas {
    /// No metas at all.
    pub fn is_empty(&self) -> bool {
        matches!(self, Metas::Inline(list) if list.is_empty())
    }

    /// The list, once it is in hand (None: still in its memfd).
    pub fn entries(&self) -> Option<&[MetaEntry]> {
        match self {
            Metas::Inline(list) => Some(list),
            Metas::Memfd { .. } => None,
        }
    }
}

/// The encoded size of `entries` as a list.
pub fn meta_list_size(entries: &[MetaEntry]) -> usize {
    LIST_HEADER_SIZE
        + entries
            .iter()
            .map(|e| ENTRY_HEADER_SIZE + e.bytes.len())
            .sum::<usize>()
}

/// Checks `entries` against the limits: 1 ..= [`MAX_METAS`] entries of kind > 0, each at
/// most [`MAX_META_SIZE`] bytes, at most [`MAX_METAS_SIZE`] encoded.
pub fn check_meta_list(entries: &[MetaEntry]) -> Result<(), EncodeError> {
    if entries.is_empty() || entries.len() > MAX_METAS {
        return Err(EncodeError::TooMany {
            what: "metas",
            count: entries.len(),
            max: MAX_METAS,
        });
    }
    if let Some(e) = entries.iter().find(|e| e.bytes.len() > MAX_META_SIZE) {
        return Err(EncodeError::TooMany {
            what: "bytes in one meta",
            count: e.bytes.len(),
            max: MAX_META_SIZE,
        });
    }
    if entries.iter().any(|e| e.kind == 0) {
        return Err(EncodeError::BadMetas {
            reason: "a meta of kind 0",
        });
    }
    let size = meta_list_size(entries);
    if size > MAX_METAS_SIZE {
        return Err(EncodeError::TooMany {
            what: "bytes of metas",
            count: size,
            max: MAX_METAS_SIZE,
        });
    }
    Ok(())
}

/// Appends `entries` as a list (checked first): u16 count, two reserved bytes, then per
/// entry u16 kind, two reserved bytes, u32 length and the bytes.
pub fn encode_meta_list(entries: &[MetaEntry], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_meta_list(entries)?;
    out.reserve(meta_list_size(entries));
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    for e in entries {
        out.extend_from_slice(&e.kind.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(e.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.bytes);
    }
    Ok(())
}

/// Reads a list, every count and length checked against the limits before use.
pub(super) fn decode_meta_list(r: &mut Reader<'_>) -> Result<Vec<MetaEntry>, DecodeError> {
    let count = r.u16()? as usize;
    r.reserved(2)?;
    if count == 0 {
        return Err(DecodeError::BadMetas {
            reason: "a metas list with no meta",
        });
    }
    if count > MAX_METAS {
        return Err(DecodeError::TooMany {
            what: "metas",
            count,
            max: MAX_METAS,
        });
    }
    let mut total = LIST_HEADER_SIZE;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = r.u16()?;
        r.reserved(2)?;
        let len = r.u32()? as usize;
        if kind == 0 {
            return Err(DecodeError::BadMetas {
                reason: "a meta of kind 0",
            });
        }
        if len > MAX_META_SIZE {
            return Err(DecodeError::TooMany {
                what: "bytes in one meta",
                count: len,
                max: MAX_META_SIZE,
            });
        }
        total += ENTRY_HEADER_SIZE + len;
        if total > MAX_METAS_SIZE {
            return Err(DecodeError::TooMany {
                what: "bytes of metas",
                count: total,
                max: MAX_METAS_SIZE,
            });
        }
        entries.push(MetaEntry {
            kind,
            bytes: r.bytes(len)?.to_vec(),
        });
    }
    Ok(entries)
}

/// Decodes a whole metas list read from a metas memfd: nothing may follow it.
pub fn decode_metas(bytes: &[u8]) -> Result<Vec<MetaEntry>, DecodeError> {
    if bytes.len() > MAX_METAS_SIZE {
        return Err(DecodeError::TooMany {
            what: "bytes of metas",
            count: bytes.len(),
            max: MAX_METAS_SIZE,
        });
    }
    let mut r = Reader::new(bytes, "metas memfd");
    let entries = decode_meta_list(&mut r)?;
    r.finish()?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::buffer::{
        BUFFER_FIXED_SIZE, BufferHeader, FileSend, MEMORY_DESC_SIZE, encode_buffer_packet,
    };
    use crate::protocol::tests::{encoded, mutate_and_decode, roundtrip, sample_buffer};
    use crate::protocol::{HEADER_SIZE, MAX_PACKET_SIZE, Packet, PacketFds};
    use smallvec::smallvec;

    fn entry(kind: u16, len: usize) -> MetaEntry {
        MetaEntry {
            kind,
            bytes: vec![kind as u8; len],
        }
    }

    #[test]
    fn lists_roundtrip_and_sizes_add_up() {
        let list = vec![entry(1, 0), entry(7, 300), entry(u16::MAX, 5)];
        let mut out = Vec::new();
        encode_meta_list(&list, &mut out).unwrap();
        assert_eq!(out.len(), meta_list_size(&list));
        assert_eq!(decode_metas(&out).unwrap(), list);
    }

    #[test]
    fn limits_are_refused_both_ways_naming_them() {
        let mut out = Vec::new();
        let many: Vec<_> = (0..MAX_METAS + 1).map(|_| entry(1, 1)).collect();
        let err = encode_meta_list(&many, &mut out).unwrap_err();
        assert_eq!(err.to_string(), "65 metas exceed the limit of 64");
        assert!(encode_meta_list(&[], &mut out).is_err());
        assert!(encode_meta_list(&[entry(0, 1)], &mut out).is_err());
        let big = encode_meta_list(&[entry(1, MAX_META_SIZE + 1)], &mut out).unwrap_err();
        assert!(big.to_string().contains("bytes in one meta"), "{big}");
        let three = vec![entry(1, MAX_META_SIZE), entry(2, MAX_META_SIZE)];
        let total = encode_meta_list(&three, &mut out).unwrap_err();
        assert!(total.to_string().contains("bytes of metas"), "{total}");

        // The decoder, on lists the encoder would not write.
        let mut good = Vec::new();
        encode_meta_list(&[entry(3, 4)], &mut good).unwrap();
        let mut t = good.clone();
        t[0..2].copy_from_slice(&65u16.to_le_bytes());
        let err = decode_metas(&t).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooMany {
                what: "metas",
                count: 65,
                max: 64
            }
        );
        let mut t = good.clone();
        t[0..2].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(
            decode_metas(&t),
            Err(DecodeError::BadMetas { .. })
        ));
        let mut t = good.clone();
        t[4..6].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(
            decode_metas(&t),
            Err(DecodeError::BadMetas { .. })
        ));
        let mut t = good.clone();
        t[8..12].copy_from_slice(&(MAX_META_SIZE as u32 + 1).to_le_bytes());
        assert!(matches!(
            decode_metas(&t),
            Err(DecodeError::TooMany {
                what: "bytes in one meta",
                ..
            })
        ));
        let mut t = good.clone();
        t[8..12].copy_from_slice(&5u32.to_le_bytes());
        assert!(matches!(
            decode_metas(&t),
            Err(DecodeError::Truncated { .. })
        ));
        let mut t = good.clone();
        t.push(0);
        assert!(matches!(
            decode_metas(&t),
            Err(DecodeError::TrailingBytes { .. })
        ));
        let mut t = good.clone();
        t[2] = 1;
        assert!(matches!(
            decode_metas(&t),
            Err(DecodeError::NonZeroReserved { .. })
        ));
    }

    fn with_metas(metas: Metas) -> BufferHeader {
        BufferHeader {
            metas,
            ..sample_buffer()
        }
    }

    fn entry_of(kind: u16, bytes: &[u8]) -> crate::protocol::MetaEntry {
        crate::protocol::MetaEntry {
            kind,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn empty_buffers_and_metas_roundtrip() {
        // A buffer without memory and without fds, with and without metas.
        let empty = BufferHeader {
            buffer_id: 3,
            pts: 5,
            flags: 0x40,
            ..Default::default()
        };
        roundtrip(Packet::Buffer(empty.clone(), smallvec![]));
        let mut with = empty.clone();
        with.metas = Metas::Inline(vec![entry_of(1, b"abc"), entry_of(9, b"")]);
        roundtrip(Packet::Buffer(with, smallvec![]));
        roundtrip(Packet::Buffer(
            with_metas(Metas::Inline(vec![entry_of(2, &[7; 300])])),
            smallvec![1, 2],
        ));
        // In a memfd: the last fd, which no memory uses; a buffer without memory has it alone.
        roundtrip(Packet::Buffer(
            with_metas(Metas::Memfd { size: 70_000 }),
            smallvec![1, 2, 3],
        ));
        let mut in_fd = empty.clone();
        in_fd.metas = Metas::Memfd { size: 12 };
        roundtrip(Packet::Buffer(in_fd.clone(), smallvec![8]));
        // The size the sender decides by is the encoded size.
        for (h, n_fds) in [
            (empty, 0),
            (in_fd, 1),
            (with_metas(Metas::Inline(vec![entry_of(2, &[7; 300])])), 2),
        ] {
            let size = crate::protocol::buffer_packet_size(&h);
            assert_eq!(
                size,
                encoded(&Packet::Buffer(h, (0..n_fds).collect())).len()
            );
        }
    }

    #[test]
    fn metas_malformed_cases() {
        let decode = |b: &[u8], fds: PacketFds<i32>| Packet::<i32>::decode(b, fds);
        let mode_at = HEADER_SIZE + 70;
        let good = encoded(&Packet::Buffer(
            with_metas(Metas::Memfd { size: 100 }),
            smallvec![1, 2, 3],
        ));
        // The metas memfd is missing: the memories' fds are all that came.
        let mut t = good.clone();
        t[2..4].copy_from_slice(&2u16.to_le_bytes());
        assert!(matches!(
            decode(&t, smallvec![1, 2]),
            Err(DecodeError::BadMetas { .. })
        ));
        // An unknown mode, and the reserved byte beside it.
        let mut t = good.clone();
        t[mode_at] = 3;
        assert!(matches!(
            decode(&t, smallvec![1, 2, 3]),
            Err(DecodeError::NonZeroReserved { .. })
        ));
        let mut t = good.clone();
        t[mode_at + 1] = 1;
        assert!(matches!(
            decode(&t, smallvec![1, 2, 3]),
            Err(DecodeError::NonZeroReserved { .. })
        ));
        // A memfd past the limit, and of no bytes.
        let size_at = good.len() - 8;
        for size in [0, MAX_METAS_SIZE as u64 + 1, u64::MAX] {
            let mut t = good.clone();
            t[size_at..].copy_from_slice(&size.to_le_bytes());
            assert!(
                matches!(
                    decode(&t, smallvec![1, 2, 3]),
                    Err(DecodeError::TooMany {
                        what: "bytes of metas",
                        ..
                    })
                ),
                "{size}"
            );
        }
        // A memory on the metas memfd.
        let mut t = good.clone();
        let mem2 = HEADER_SIZE + BUFFER_FIXED_SIZE + 2 * MEMORY_DESC_SIZE;
        t[mem2 + 1] = 2;
        assert!(matches!(
            decode(&t, smallvec![1, 2, 3]),
            Err(DecodeError::BadMetas { .. })
        ));
        // The encoder refuses what the decoder would.
        let mut out = Vec::new();
        assert!(matches!(
            Packet::Buffer(with_metas(Metas::Memfd { size: 9 }), smallvec![1, 2]).encode(&mut out),
            Err(EncodeError::BadMetas { .. })
        ));
        let mut no_fd = with_metas(Metas::Memfd { size: 9 });
        no_fd.memories.clear();
        assert!(matches!(
            Packet::<i32>::Buffer(no_fd, smallvec![]).encode(&mut out),
            Err(EncodeError::BadMetas { .. })
        ));
        let many = (0..65).map(|_| entry_of(1, b"x")).collect();
        let err = Packet::Buffer(with_metas(Metas::Inline(many)), smallvec![1, 2])
            .encode(&mut out)
            .unwrap_err();
        assert_eq!(err.to_string(), "65 metas exceed the limit of 64");
        // Inline metas past the packet: the sender puts them in a memfd instead.
        let big = Metas::Inline(vec![entry_of(1, &vec![0; MAX_PACKET_SIZE])]);
        assert!(matches!(
            Packet::Buffer(with_metas(big), smallvec![1, 2]).encode(&mut out),
            Err(EncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn per_consumer_encoding_sends_the_metas_memfd_last() {
        let h = with_metas(Metas::Memfd { size: 64 });
        let mut out = Vec::new();
        // Slot 0 by id, slot 1 as fd 0, the metas memfd (slot 2) as fd 1.
        encode_buffer_packet(
            &h,
            &[
                FileSend::Registered(7),
                FileSend::Fd {
                    index: 0,
                    file_id: 0,
                },
                FileSend::Fd {
                    index: 1,
                    file_id: 0,
                },
            ],
            &mut out,
        )
        .unwrap();
        let Packet::Buffer(decoded, fds) = Packet::<i32>::decode(&out, smallvec![4, 5]).unwrap()
        else {
            panic!("not a buffer packet");
        };
        assert_eq!(fds[..], [4, 5]);
        assert_eq!(decoded.metas, Metas::Memfd { size: 64 });
        // A metas memfd that would register, or not come last, is refused.
        for last in [
            FileSend::Registered(9),
            FileSend::Fd {
                index: 1,
                file_id: 3,
            },
        ] {
            assert!(matches!(
                encode_buffer_packet(
                    &h,
                    &[
                        FileSend::Registered(7),
                        FileSend::Fd {
                            index: 0,
                            file_id: 0
                        },
                        last
                    ],
                    &mut out
                ),
                Err(EncodeError::BadMetas { .. })
            ));
        }
    }

    /// Random bytes over packets with metas never panic the decoder, and what decodes
    /// re-encodes identically.
    #[test]
    fn fuzz_metas_never_panics() {
        let seeds = [
            encoded(&Packet::Buffer(
                with_metas(Metas::Inline(vec![entry_of(1, b"abcd"), entry_of(2, b"")])),
                smallvec![1, 2],
            )),
            encoded(&Packet::Buffer(
                with_metas(Metas::Memfd { size: 99 }),
                smallvec![1, 2, 3],
            )),
            encoded(&Packet::Buffer(
                BufferHeader {
                    metas: Metas::Inline(vec![entry_of(5, b"z")]),
                    ..Default::default()
                },
                smallvec![],
            )),
        ];
        mutate_and_decode(&seeds, 0x2545_F491_4F6C_DD1D, 3, |_| {});
    }
}
