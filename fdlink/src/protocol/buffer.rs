//! Buffer packets: a frame's timestamps and flags, one description per memory (a window into a
//! file that travels as an fd or, once registered, as an id; none for a buffer without
//! bytes), its video layout and its metas (`metas`). Also the
//! packets of a frame's files after it: Release (the consumer is done with a buffer) and
//! Retire (the consumer closes registered files).

use super::metas::{self, Metas};
use super::reader::Reader;
use super::{
    DecodeError, EncodeError, FD_REGISTERED, HEADER_SIZE, MAX_FDS, MAX_MEMORIES, MAX_PLANES,
    PacketType, finish_packet,
};

pub(super) const BUFFER_FIXED_SIZE: usize = 8 * 8 + 4 + 4;
pub(super) const MEMORY_DESC_SIZE: usize = 24;
const VIDEO_META_SIZE: usize = 4 * 5 + 8 * MAX_PLANES + 4 * MAX_PLANES;

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
    /// The buffer's memories; none for a buffer without bytes (no memory, or only
    /// zero-sized ones).
    pub memories: MemoryList,
    pub video: Option<VideoLayout>,
    /// The metas that cross, in the packet or in a memfd (the packet's last fd).
    pub metas: Metas,
}

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
    // The metas memfd is the last file, sent as the packet's last fd, never registered.
    if matches!(header.metas, Metas::Memfd { .. })
        && !matches!(files.last(), Some(FileSend::Fd { index, file_id: 0 })
            if *index as usize + 1 == n_fds)
    {
        return Err(EncodeError::BadMetas {
            reason: "the metas memfd is not the packet's last fd",
        });
    }
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

/// The size of `h` encoded as a buffer packet, its header included: whether its metas fit
/// in the packet (`MAX_PACKET_SIZE`), or go in a memfd.
pub fn buffer_packet_size(h: &BufferHeader) -> usize {
    HEADER_SIZE
        + BUFFER_FIXED_SIZE
        + h.memories.len() * MEMORY_DESC_SIZE
        + if h.video.is_some() {
            VIDEO_META_SIZE
        } else {
            0
        }
        + match &h.metas {
            Metas::Inline(list) if list.is_empty() => 0,
            Metas::Inline(list) => metas::meta_list_size(list),
            Metas::Memfd { .. } => 8,
        }
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

/// Appends a retire payload: the file ids, four bytes each.
pub(super) fn encode_retire(file_ids: &[u32], out: &mut Vec<u8>) {
    for id in file_ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// Reads a retire payload: at least one file id, none of them 0.
pub(super) fn decode_retire(r: &mut Reader<'_>) -> Result<Vec<u32>, DecodeError> {
    let n = r.remaining() / 4;
    if n == 0 {
        return Err(DecodeError::Truncated {
            what: r.what(),
            need: HEADER_SIZE + 4,
            have: HEADER_SIZE + r.remaining(),
        });
    }
    let mut file_ids = Vec::with_capacity(n);
    for _ in 0..n {
        match r.u32()? {
            0 => return Err(DecodeError::NoFile),
            id => file_ids.push(id),
        }
    }
    Ok(file_ids)
}

/// Appends a buffer payload; `file_of` gives each memory's wire `fd_index` and `file_id`.
pub(super) fn encode_buffer(
    h: &BufferHeader,
    n_fds: usize,
    out: &mut Vec<u8>,
    file_of: impl Fn(&MemoryDesc) -> Result<(u8, u32), EncodeError>,
) -> Result<(), EncodeError> {
    if h.memories.len() > MAX_MEMORIES {
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
    // Where the metas go: 0 none, 1 in the packet, 2 in a memfd (the packet's last fd).
    let (metas_mode, metas_fd) = match &h.metas {
        Metas::Inline(list) if list.is_empty() => (0, None),
        Metas::Inline(_) => (1, None),
        Metas::Memfd { .. } if n_fds == 0 => {
            return Err(EncodeError::BadMetas {
                reason: "metas in a memfd, but the packet has no fd",
            });
        }
        Metas::Memfd { .. } => (2, Some(n_fds - 1)),
    };
    out.push(h.memories.len() as u8);
    out.push(h.video.is_some() as u8);
    out.extend_from_slice(&[metas_mode, 0]);
    for m in &h.memories {
        let (fd_index, file_id) = file_of(m)?;
        let by_id = fd_index == FD_REGISTERED && file_id != 0;
        if metas_fd == Some(fd_index as usize) {
            return Err(EncodeError::BadMetas {
                reason: "a memory uses the metas memfd",
            });
        }
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
    match &h.metas {
        Metas::Inline(list) if list.is_empty() => {}
        Metas::Inline(list) => metas::encode_meta_list(list, out)?,
        Metas::Memfd { size } => {
            if *size == 0 || *size > metas::MAX_METAS_SIZE as u64 {
                return Err(EncodeError::TooMany {
                    what: "bytes of metas",
                    count: *size as usize,
                    max: metas::MAX_METAS_SIZE,
                });
            }
            out.extend_from_slice(&size.to_le_bytes());
        }
    }
    Ok(())
}

/// Reads a buffer payload whose packet carries `n_fds` fds: every memory names a file, every
/// fd is used, and no file id names two files.
pub(super) fn decode_buffer(r: &mut Reader<'_>, n_fds: usize) -> Result<BufferHeader, DecodeError> {
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
    let metas_mode = r.u8()?;
    r.reserved(1)?;
    if n_memories > MAX_MEMORIES {
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
    // The metas memfd: the packet's last fd, which no memory may use.
    let metas_fd = match metas_mode {
        0 | 1 => None,
        2 if n_fds == 0 => {
            return Err(DecodeError::BadMetas {
                reason: "metas in a memfd, but the packet has no fd",
            });
        }
        2 => Some(n_fds - 1),
        _ => {
            return Err(DecodeError::NonZeroReserved {
                what: "buffer metas flag",
            });
        }
    };
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
        } else if metas_fd == Some(fd_index as usize) {
            return Err(DecodeError::BadMetas {
                reason: "a memory uses the metas memfd (the packet's last fd)",
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
    if let Some(index) = (0..n_fds).find(|&i| !used[i] && metas_fd != Some(i)) {
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
    let metas = match metas_mode {
        0 => Metas::default(),
        1 => Metas::Inline(metas::decode_meta_list(r)?),
        _ => {
            let size = r.u64()?;
            if size == 0 || size > metas::MAX_METAS_SIZE as u64 {
                return Err(DecodeError::TooMany {
                    what: "bytes of metas",
                    count: size.min(usize::MAX as u64) as usize,
                    max: metas::MAX_METAS_SIZE,
                });
            }
            Metas::Memfd { size }
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
        metas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{encoded, roundtrip, sample_buffer};
    use crate::protocol::{Packet, PacketFds};
    use smallvec::smallvec;

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
        // No memory (a buffer without bytes), yet fds: nothing uses them.
        let mut t = good.clone();
        t[n_mem_at] = 0;
        assert!(matches!(
            decode(&t, smallvec![1, 2]),
            Err(DecodeError::Truncated { .. } | DecodeError::UnusedFd { .. })
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
