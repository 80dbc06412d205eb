//! The only module that turns file descriptors into `gst::Memory` and back.
//!
//! Sending: [`describe_buffer`] lists a buffer's memories as fd windows when every memory is
//! fd-backed (dmabuf, or a memfd sealed against shrinking), and [`copy_into`] makes the one
//! copy of the system-memory fallback into a [`MemfdBufferPool`] buffer.
//!
//! Receiving: [`Importer::import`] checks each received fd (what kind of file it is, that a
//! memfd is sealed so the producer cannot truncate it under us, that the window fits), wraps it
//! read-only with GstFdAllocator or GstDmaBufAllocator, attaches the video meta, and ties a
//! [`ReleaseToken`] to the memories so the producer is told when the last reference goes.

pub mod file_registry;
pub mod file_table;
pub mod pool;
pub mod read_only;
pub mod release;
pub mod views;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

pub use fdlink::fdkind::{ImportError, create_sealed_memfd};
use fdlink::fdkind::{check_fd, check_windows, is_regular_file, is_sealed_against_shrink};
use gst_allocators::prelude::*;

pub use file_registry::FileRegistry;
pub use file_table::{FileTable, FrameFile, RegisteredFile};
pub use pool::MemfdBufferPool;
pub use release::{ReleaseToken, ReleaseTokens};

use fdlink::protocol::{
    BufferHeader, FD_REGISTERED, MAX_FDS, MAX_PLANES, MemoryDesc, MemoryKind, MemoryList, Metas,
    PacketFds, VideoLayout,
};
use gst::glib;

// ---------------------------------------------------------------------------------------------
// Sending

/// Why a buffer cannot go out zero-copy (it is then copied once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyReason {
    /// A memory is not fd-backed (plain system memory).
    NotFdMemory,
    /// A memory is an fd that is not sealed against shrinking, which a consumer cannot trust.
    UnsealedFd,
    /// More distinct fds than one packet carries.
    TooManyFds,
    /// More memories than one packet carries.
    TooManyMemories,
}

/// The fds of one buffer packet; a frame's usual one to four stay off the heap.
pub type FdList<'a> = smallvec::SmallVec<[BorrowedFd<'a>; 4]>;

/// Describes every memory of `buffer` as a window into an fd, filling `descs` and `fds`
/// (distinct fds, in first-use order, a memfd as its read-only reopening; each memory's
/// `fd_index` is its fd's place there). With a `registry`, each memory's `file_id` is its
/// file's id there (register-once fds), and a memory tagged on an earlier frame is described
/// without a syscall. Fails when any memory has to be copied. A buffer without bytes (no
/// memory, or only zero-sized ones) is described as no memory at all: it has nothing to map.
pub fn describe_buffer<'a>(
    buffer: &'a gst::BufferRef,
    registry: Option<&FileRegistry>,
    descs: &mut MemoryList,
    fds: &mut FdList<'a>,
) -> Result<(), CopyReason> {
    descs.clear();
    fds.clear();
    if buffer.size() == 0 {
        return Ok(());
    }
    if buffer.n_memory() > fdlink::protocol::MAX_MEMORIES {
        return Err(CopyReason::TooManyMemories);
    }
    for mem in buffer.iter_memories() {
        let (raw, kind) = if let Some(d) = mem.downcast_memory_ref::<gst_allocators::DmaBufMemory>()
        {
            (d.fd(), MemoryKind::DmaBuf)
        } else if let Some(f) = mem.downcast_memory_ref::<gst_allocators::FdMemory>() {
            (f.fd(), MemoryKind::Memfd)
        } else {
            return Err(CopyReason::NotFdMemory);
        };
        if raw < 0 {
            return Err(CopyReason::NotFdMemory);
        }
        // SAFETY: the memory owns this fd and `buffer` (borrowed for 'a) keeps the memory alive.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        // `sent`: what crosses, a memfd's read-only reopening kept on the memory (read_only.rs).
        let (kind, file_id, sent) = match registry.and_then(|r| r.tagged(mem)) {
            Some((id, kind, sent)) => (kind, id, sent),
            None => {
                // A regular file wrapped by GstDmaBufAllocator (a memfd) is not a dmabuf: the
                // consumer would rightly refuse it as one, so it crosses as what it is.
                let kind = match kind {
                    MemoryKind::DmaBuf if is_regular_file(fd) => MemoryKind::Memfd,
                    k => k,
                };
                if kind == MemoryKind::Memfd && !is_sealed_against_shrink(fd) {
                    return Err(CopyReason::UnsealedFd);
                }
                // Without an id (fstat failed) the file crosses as a one-shot fd.
                match registry.map(|r| r.file_id(mem, fd, kind)) {
                    Some(Ok((id, sent))) => (kind, id, sent),
                    _ => (kind, 0, read_only::sent_fd(mem, fd, kind)),
                }
            }
        };
        let (fd, raw) = (sent, sent.as_raw_fd());
        // One slot per file: the same fd, or (registered) another fd of the same file, which
        // the consumer must not be sent twice under one id.
        let same_file = |i: usize, f: &BorrowedFd<'_>| {
            f.as_raw_fd() == raw
                || (file_id != 0
                    && descs
                        .iter()
                        .any(|m| m.fd_index as usize == i && m.file_id == file_id))
        };
        let fd_index = match fds.iter().enumerate().position(|(i, f)| same_file(i, f)) {
            Some(i) => i,
            None if fds.len() == MAX_FDS => return Err(CopyReason::TooManyFds),
            None => {
                fds.push(fd);
                fds.len() - 1
            }
        };
        descs.push(MemoryDesc {
            kind,
            fd_index: fd_index as u8,
            file_id,
            offset: mem.offset() as u64,
            size: mem.size() as u64,
        });
    }
    if descs.is_empty() {
        return Err(CopyReason::NotFdMemory);
    }
    Ok(())
}

/// Copies the bytes of `src` (all memories, in order, so VideoMeta offsets stay valid) into
/// `dst`, a buffer from the memfd pool, and returns it. Taking `dst` from the pool is the
/// caller's, so that the time of the copy alone can be told from a wait for a free buffer.
pub fn copy_into(
    src: &gst::BufferRef,
    mut dst: gst::Buffer,
) -> Result<gst::Buffer, gst::FlowError> {
    {
        let dst = dst.get_mut().ok_or(gst::FlowError::Error)?;
        let total = src.size();
        if dst.size() < total {
            return Err(gst::FlowError::NotNegotiated);
        }
        dst.set_size(total);
        let mut map = dst.map_writable().map_err(|_| gst::FlowError::Error)?;
        let out = map.as_mut_slice();
        let mut at = 0;
        for mem in src.iter_memories() {
            let m = mem.map_readable().map_err(|_| gst::FlowError::Error)?;
            out[at..at + m.size()].copy_from_slice(m.as_slice());
            at += m.size();
        }
    }
    Ok(dst)
}

/// Wraps a dmabuf fd (owned from here on) as GstDmaBufMemory of `size` bytes, for producers
/// that allocate dmabufs themselves (udmabuf, dma-heap, DRM dumb buffers).
pub fn wrap_dmabuf(fd: OwnedFd, size: usize) -> Result<gst::Memory, glib::BoolError> {
    let allocator = gst_allocators::DmaBufAllocator::new();
    adopt_fd(fd, |raw| {
        // SAFETY: the allocator takes ownership of `raw` on success (adopt_fd's contract).
        unsafe { allocator.alloc_dmabuf_with_flags(raw, size, gst_allocators::FdMemoryFlags::NONE) }
    })
}

/// Hands `fd` to a GStreamer allocator: `alloc` takes ownership of the raw fd when it returns
/// a memory; when it fails the fd is still ours, and is closed here.
fn adopt_fd(
    fd: OwnedFd,
    alloc: impl FnOnce(RawFd) -> Result<gst::Memory, glib::BoolError>,
) -> Result<gst::Memory, glib::BoolError> {
    let raw = fd.into_raw_fd();
    let mem = alloc(raw);
    if mem.is_err() {
        // SAFETY: allocation failed, so `raw` is still ours alone; close it.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    mem
}

/// The mini-object flag bits below GstBufferFlags' own (GST_MINI_OBJECT_FLAG_LAST is 1 << 4):
/// the object's locking state, never a buffer's meaning.
const MINI_OBJECT_BITS: u32 = 0xf;

/// All of `buffer`'s flags as sent: GstBufferFlags and the flags of its media past
/// GST_BUFFER_FLAG_LAST (video field order, interlacing, multiview), which
/// `gst::BufferFlags` does not name and `flags()` leaves out.
pub fn buffer_flag_bits(buffer: &gst::BufferRef) -> u32 {
    // SAFETY: `buffer` is a valid GstBuffer; reading its flags word is what
    // GST_MINI_OBJECT_FLAGS does.
    unsafe { (*buffer.as_ptr()).mini_object.flags & !MINI_OBJECT_BITS }
}

/// Gives `buffer` exactly the flags `bits` (from [`buffer_flag_bits`]): appending memories
/// set TAG_MEMORY, which the producer's buffer may not have had.
pub fn set_buffer_flag_bits(buffer: &mut gst::BufferRef, bits: u32) {
    buffer.unset_flags(gst::BufferFlags::from_bits_retain(!MINI_OBJECT_BITS));
    buffer.set_flags(gst::BufferFlags::from_bits_retain(bits & !MINI_OBJECT_BITS));
}

/// The video layout of `buffer`'s GstVideoMeta, if it has one.
pub fn video_layout(buffer: &gst::BufferRef) -> Option<VideoLayout> {
    let meta = buffer.meta::<gst_video::VideoMeta>()?;
    let n = meta.n_planes() as usize;
    let mut layout = VideoLayout {
        format: glib::translate::IntoGlib::into_glib(meta.format()) as u32,
        flags: meta.video_frame_flags().bits(),
        width: meta.width(),
        height: meta.height(),
        n_planes: n as u32,
        ..Default::default()
    };
    for i in 0..n.min(4) {
        layout.offsets[i] = meta.offset()[i] as u64;
        layout.strides[i] = meta.stride()[i];
    }
    Some(layout)
}

// ---------------------------------------------------------------------------------------------
// Receiving

fn set_readonly(mem: &mut gst::MemoryRef) {
    // SAFETY: `mem` is valid and exclusively ours; setting a flag bit on a fresh memory is
    // what GST_MINI_OBJECT_FLAG_SET does.
    unsafe {
        (*mem.as_mut_ptr()).mini_object.flags |= gst::ffi::GST_MEMORY_FLAG_READONLY;
    }
}

/// Where a buffer's memories on one file come from.
enum Base {
    /// A one-shot fd's memory, and whether one memory alone uses it (then it is that memory).
    Fresh(Option<gst::Memory>, bool),
    Registered(RegisteredFile),
}

/// Wraps received fds into GStreamer memories.
#[derive(Debug)]
pub struct Importer {
    fd_allocator: gst_allocators::FdAllocator,
    dmabuf_allocator: gst_allocators::DmaBufAllocator,
}

impl Default for Importer {
    fn default() -> Self {
        Importer {
            fd_allocator: gst_allocators::FdAllocator::new(),
            dmabuf_allocator: gst_allocators::DmaBufAllocator::new(),
        }
    }
}

impl Importer {
    /// Wraps `raw` as one memory of `size` bytes: GstDmaBufAllocator for dmabufs,
    /// GstFdAllocator for memfds.
    ///
    /// # Safety
    /// Without `DONT_CLOSE` in `flags`, the memory owns `raw` once this succeeds; with it,
    /// the caller keeps `raw` open for as long as the memory lives.
    unsafe fn alloc(
        &self,
        raw: RawFd,
        kind: MemoryKind,
        size: u64,
        flags: gst_allocators::FdMemoryFlags,
    ) -> Result<gst::Memory, glib::BoolError> {
        let size = size as usize;
        // SAFETY: the caller's contract.
        unsafe {
            match kind {
                MemoryKind::DmaBuf => self
                    .dmabuf_allocator
                    .alloc_dmabuf_with_flags(raw, size, flags),
                MemoryKind::Memfd => self.fd_allocator.alloc_fd(raw, size, flags),
            }
        }
    }

    /// Wraps a checked one-shot fd (owned by the memory from here on).
    fn wrap(&self, fd: OwnedFd, kind: MemoryKind, size: u64) -> Option<gst::Memory> {
        adopt_fd(fd, |raw| {
            // SAFETY: without DONT_CLOSE the memory takes ownership of `raw` on success,
            // which is adopt_fd's contract.
            unsafe { self.alloc(raw, kind, size, gst_allocators::FdMemoryFlags::NONE) }
        })
        .ok()
    }

    /// Wraps a registered file for a view: the whole file, the fd staying the file's (memfds
    /// keep their mapping while the view lives).
    fn wrap_view(&self, raw: RawFd, kind: MemoryKind, size: u64) -> Option<gst::Memory> {
        let mut flags = gst_allocators::FdMemoryFlags::DONT_CLOSE;
        if kind == MemoryKind::Memfd {
            flags |= gst_allocators::FdMemoryFlags::KEEP_MAPPED;
        }
        // SAFETY: with DONT_CLOSE the memory only uses `raw`; the view keeps the file's fd
        // open for as long as the memory lives (views::ViewState).
        unsafe { self.alloc(raw, kind, size, flags) }.ok()
    }

    /// Makes a fresh memory read-only and holding the frame's release token.
    fn hold_token(&self, mut mem: gst::Memory, token: Option<&ReleaseToken>) -> gst::Memory {
        let mref = mem.get_mut().expect("fresh memory");
        set_readonly(mref);
        if let Some(token) = token {
            token.attach(mref);
        }
        mem
    }

    /// Turns a buffer packet's fds into its files, on the thread that reads the packets, in
    /// their order: fds that come with a file id are checked, wrapped and registered in `table`
    /// now; memories sent by id alone get the file registered under it. Each memory's
    /// `fd_index` becomes the index of its file in the result (one-shot fds keep theirs,
    /// files by id follow them). On error every fd not registered is closed.
    pub fn resolve(
        &self,
        table: &mut FileTable,
        header: &mut BufferHeader,
        mut fds: PacketFds<OwnedFd>,
    ) -> Result<PacketFds<FrameFile>, ImportError> {
        // Metas in a memfd (the packet's last fd): read now, so the frame carries the list.
        if let Metas::Memfd { size } = header.metas {
            let index = fds.len().saturating_sub(1);
            let fd = fds
                .pop()
                .ok_or_else(|| ImportError::Metas("the metas memfd did not come".into()))?;
            header.metas = Metas::Inline(crate::metas::read_metas_memfd(fd, size, index)?);
        }
        let n_fds = fds.len();
        let mut files = PacketFds::with_capacity(n_fds);
        for (i, fd) in fds.into_iter().enumerate() {
            let first = header
                .memories
                .iter()
                .find(|m| m.fd_index as usize == i)
                .ok_or(ImportError::Alloc { index: i })?;
            let (kind, id) = (first.kind, first.file_id);
            if id == 0 {
                files.push(FrameFile::Fresh(fd));
                continue;
            }
            if header
                .memories
                .iter()
                .any(|m| m.fd_index as usize == i && m.kind != kind)
            {
                return Err(ImportError::MixedKinds { index: i });
            }
            let windows = header
                .memories
                .iter()
                .filter(|m| m.fd_index as usize == i)
                .map(|m| (m.offset, m.size));
            let size = check_fd(i, fd.as_fd(), kind, windows)?;
            let file = RegisteredFile {
                kind,
                size,
                fd: views::FileFd::new(fd),
                views: views::ViewPool::new(),
            };
            let file = table.insert(id, file)?.clone();
            files.push(FrameFile::Registered(file));
        }
        // Memories by id: their file after the packet's own, once per id.
        let mut by_id: smallvec::SmallVec<[u32; 4]> = smallvec::SmallVec::new();
        for m in header.memories.iter_mut() {
            if m.fd_index != FD_REGISTERED {
                continue;
            }
            let slot = match by_id.iter().position(|&id| id == m.file_id) {
                Some(k) => n_fds + k,
                None => {
                    files.push(FrameFile::Registered(table.get(m.file_id)?.clone()));
                    by_id.push(m.file_id);
                    files.len() - 1
                }
            };
            m.fd_index = slot as u8;
        }
        Ok(files)
    }

    /// Builds a read-only buffer from a received buffer packet whose files [`Self::resolve`]
    /// gave: memories, flags, offsets and the video meta (timestamps are the caller's
    /// business). Every memory holds `token` (None: nobody is told when they are freed). On
    /// error every one-shot fd is closed.
    pub fn import(
        &self,
        header: &BufferHeader,
        files: PacketFds<FrameFile>,
        token: Option<&ReleaseToken>,
    ) -> Result<gst::Buffer, ImportError> {
        let mut kinds: [Option<MemoryKind>; MAX_FDS] = [None; MAX_FDS];
        let mut uses = [0usize; MAX_FDS];
        for m in &header.memories {
            let i = m.fd_index as usize;
            if i >= files.len() {
                return Err(ImportError::Alloc { index: i });
            }
            match kinds[i] {
                Some(k) if k != m.kind => return Err(ImportError::MixedKinds { index: i }),
                _ => kinds[i] = Some(m.kind),
            }
            uses[i] += 1;
        }
        let mut sizes = [0u64; MAX_FDS];
        for (i, file) in files.iter().enumerate() {
            let kind = kinds[i].ok_or(ImportError::Alloc { index: i })?;
            let windows = header
                .memories
                .iter()
                .filter(|m| m.fd_index as usize == i)
                .map(|m| (m.offset, m.size));
            sizes[i] = match file {
                FrameFile::Fresh(fd) => check_fd(i, fd.as_fd(), kind, windows)?,
                FrameFile::Registered(r) => {
                    if r.kind != kind {
                        let id = header
                            .memories
                            .iter()
                            .find(|m| m.fd_index as usize == i)
                            .map_or(0, |m| m.file_id);
                        return Err(ImportError::RegisteredKind {
                            id,
                            registered: r.kind,
                            sent: kind,
                        });
                    }
                    check_windows(i, r.size, windows)?;
                    r.size
                }
            };
        }

        // A one-shot fd becomes one memory, which a memory that alone uses it becomes (`true`)
        // and several memories share. A registered file's memories are its recycled views.
        let mut bases: smallvec::SmallVec<[Base; 4]> =
            smallvec::SmallVec::with_capacity(files.len());
        for (i, file) in files.into_iter().enumerate() {
            bases.push(match file {
                FrameFile::Fresh(fd) => {
                    let kind = kinds[i].unwrap_or(MemoryKind::Memfd);
                    let mem = self
                        .wrap(fd, kind, sizes[i])
                        .ok_or(ImportError::Alloc { index: i })?;
                    Base::Fresh(Some(mem), uses[i] == 1)
                }
                FrameFile::Registered(r) => Base::Registered(r),
            });
        }

        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().expect("new buffer is writable");
        for m in &header.memories {
            let i = m.fd_index as usize;
            let range = m.offset as usize..(m.offset + m.size) as usize;
            let mem = match &mut bases[i] {
                Base::Fresh(own, true) => {
                    let mut mem = own
                        .take()
                        .expect("a memory that owns its file is used once");
                    mem.get_mut().expect("fresh memory").resize(range);
                    self.hold_token(mem, token)
                }
                Base::Fresh(Some(base), false) => self.hold_token(base.share(range), token),
                Base::Fresh(None, false) => unreachable!("a shared one-shot memory is kept"),
                Base::Registered(r) => r
                    .views
                    .take(&r.fd, range.start, range.len(), token, |raw| {
                        self.wrap_view(raw, r.kind, r.size)
                    })
                    .ok_or(ImportError::Alloc { index: i })?,
            };
            b.append_memory(mem);
        }
        b.set_offset(header.offset);
        b.set_offset_end(header.offset_end);
        set_buffer_flag_bits(b, header.flags);
        if let Some(v) = &header.video {
            check_video_layout(v, b.size())?;
            add_video_meta(b, v)?;
        }
        let metas = header.metas.entries().ok_or_else(|| {
            ImportError::Metas("the metas memfd was not read (resolve first)".into())
        })?;
        crate::metas::attach(b, metas).map_err(ImportError::Metas)?;
        Ok(buffer)
    }
}

fn video_format(v: &VideoLayout) -> gst_video::VideoFormat {
    use glib::translate::FromGlib;
    // SAFETY: any i32 is accepted by from_glib; unknown values map to VideoFormat::__Unknown.
    unsafe { gst_video::VideoFormat::from_glib(v.format as i32) }
}

/// Checks that every plane of `v` lies inside the `total` bytes of the buffer, as a consumer
/// mapping the frame will assume: a lying producer must not make it read out of bounds.
fn check_video_layout(v: &VideoLayout, total: usize) -> Result<(), ImportError> {
    let bad = |why: String| Err(ImportError::BadVideoLayout(why));
    let format = video_format(v);
    // Out-of-range values are __Unknown(n), on which to_str() panics: reject them first.
    if matches!(
        format,
        gst_video::VideoFormat::Unknown
            | gst_video::VideoFormat::Encoded
            | gst_video::VideoFormat::__Unknown(_)
    ) {
        return bad(format!("has unknown format {}", v.format));
    }
    let finfo = gst_video::VideoFormatInfo::from_format(format);
    if v.n_planes != finfo.n_planes() {
        return bad(format!(
            "has {} planes, {} has {}",
            v.n_planes,
            format.to_str(),
            finfo.n_planes()
        ));
    }
    if v.width == 0 || v.height == 0 || v.width > 1 << 16 || v.height > 1 << 16 {
        return bad(format!("has size {}x{}", v.width, v.height));
    }
    if finfo.flags().contains(gst_video::VideoFormatFlags::TILED) {
        // Tiled layouts have their own stride encoding; their planes are checked by
        // GStreamer when mapped.
        return Ok(());
    }
    for c in 0..finfo.n_components() as u8 {
        let ci = c as usize;
        let p = finfo.plane()[ci] as usize;
        let stride = v.strides[p];
        let pixel_stride = finfo.pixel_stride()[ci];
        if pixel_stride <= 0 {
            // Packed formats without a per-pixel stride (v210, ...): GStreamer checks them.
            continue;
        }
        let width = finfo.scale_width(c, v.width) as u64;
        let rows = finfo.scale_height(c, v.height) as u64;
        let row_bytes = pixel_stride as u64 * width;
        if stride <= 0 || (stride as u64) < row_bytes {
            return bad(format!(
                "plane {p} stride {stride} is under its row of {row_bytes} bytes"
            ));
        }
        // The last byte of this component: its last row, its last pixel, its last sample byte.
        let sample_bytes = (finfo.depth()[ci] as u64).div_ceil(8).max(1);
        let end = v.offsets[p]
            .checked_add(finfo.poffset()[ci] as u64)
            .and_then(|x| x.checked_add((rows - 1) * stride as u64))
            .and_then(|x| x.checked_add((width - 1) * pixel_stride as u64 + sample_bytes));
        if end.is_none_or(|e| e > total as u64) {
            return bad(format!(
                "plane {p} (offset {}, stride {stride}, {rows} rows) overruns the {total}-byte buffer",
                v.offsets[p]
            ));
        }
    }
    Ok(())
}

fn add_video_meta(b: &mut gst::BufferRef, v: &VideoLayout) -> Result<(), ImportError> {
    let format = video_format(v);
    let n = v.n_planes as usize;
    let offsets: [usize; MAX_PLANES] = v.offsets.map(|o| o as usize);
    gst_video::VideoMeta::add_full(
        b,
        gst_video::VideoFrameFlags::from_bits_truncate(v.flags),
        format,
        v.width,
        v.height,
        &offsets[..n],
        &v.strides[..n],
    )
    .map(|_| ())
    .map_err(|e| ImportError::VideoMeta(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn init() {
        gst::init().unwrap();
    }

    use crate::test_support::{fd_lock, open_fds};

    pub(super) fn header(memories: Vec<MemoryDesc>) -> BufferHeader {
        BufferHeader {
            memories: memories.into(),
            ..Default::default()
        }
    }

    /// A memfd of `size` bytes without seals (a producer's mistake the importer refuses).
    pub(super) fn unsealed_memfd(size: i64) -> OwnedFd {
        let fd = OwnedFd::from(
            memfd::MemfdOptions::default()
                .create("u")
                .unwrap()
                .into_file(),
        );
        nix::unistd::ftruncate(&fd, size).unwrap();
        fd
    }

    pub(super) fn desc(kind: MemoryKind, fd_index: u8, offset: u64, size: u64) -> MemoryDesc {
        MemoryDesc {
            kind,
            fd_index,
            file_id: 0,
            offset,
            size,
        }
    }

    #[test]
    fn import_wraps_same_file_and_releases_once() {
        let _fds = fd_lock();
        init();
        let before = open_fds();
        let fd = create_sealed_memfd("t", 8192).unwrap();
        nix::sys::uio::pwrite(&fd, b"abcdefgh", 4096).unwrap();
        let ident = fdlink::fdkind::file_identity(fd.as_fd()).unwrap();
        let released = Arc::new(AtomicUsize::new(0));
        let r = released.clone();
        let tokens = ReleaseTokens::new(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let token = tokens.issue(1);
        let h = header(vec![
            desc(MemoryKind::Memfd, 0, 4096, 4),
            desc(MemoryKind::Memfd, 0, 4100, 4),
        ]);
        let buf = Importer::default()
            .import(&h, smallvec::smallvec![FrameFile::Fresh(fd)], Some(&token))
            .unwrap();
        drop(token);
        assert_eq!(buf.n_memory(), 2);
        let m0 = buf.peek_memory(0);
        assert!(m0.is_memory_type::<gst_allocators::FdMemory>());
        let raw = m0
            .downcast_memory_ref::<gst_allocators::FdMemory>()
            .unwrap()
            .fd();
        // SAFETY: the buffer keeps the memory and so the fd alive for this borrow.
        let got = unsafe { BorrowedFd::borrow_raw(raw) };
        assert_eq!(fdlink::fdkind::file_identity(got).unwrap(), ident);
        for (i, want) in [b"abcd", b"efgh"].iter().enumerate() {
            let mem = buf.peek_memory(i);
            assert!(mem.flags().contains(gst::MemoryFlags::READONLY));
            assert_eq!(mem.map_readable().unwrap().as_slice(), &want[..]);
        }
        let copy = buf.copy();
        drop(buf);
        assert_eq!(
            released.load(Ordering::SeqCst),
            0,
            "released while a copy lives"
        );
        drop(copy);
        assert_eq!(released.load(Ordering::SeqCst), 1);
        assert_eq!(open_fds(), before, "fd leaked");
    }

    #[test]
    fn import_rejects_bad_fds_without_leaking() {
        let _fds = fd_lock();
        init();
        let before = open_fds();
        let imp = Importer::default();

        let h = header(vec![desc(MemoryKind::Memfd, 0, 0, 10)]);
        assert_eq!(
            imp.import(
                &h,
                smallvec::smallvec![FrameFile::Fresh(unsealed_memfd(100))],
                None
            )
            .unwrap_err(),
            ImportError::NotSealed { index: 0 }
        );

        let small = create_sealed_memfd("s", 100).unwrap();
        let h = header(vec![desc(MemoryKind::Memfd, 0, 90, 20)]);
        assert!(matches!(
            imp.import(&h, smallvec::smallvec![FrameFile::Fresh(small)], None)
                .unwrap_err(),
            ImportError::WindowOutOfBounds { .. }
        ));

        let file = create_sealed_memfd("f", 100).unwrap();
        let h = header(vec![desc(MemoryKind::DmaBuf, 0, 0, 10)]);
        assert_eq!(
            imp.import(&h, smallvec::smallvec![FrameFile::Fresh(file)], None)
                .unwrap_err(),
            ImportError::NotADmabuf { index: 0 }
        );

        let (a, _b) = nix::unistd::pipe().unwrap();
        let h = header(vec![desc(MemoryKind::Memfd, 0, 0, 10)]);
        assert_eq!(
            imp.import(&h, smallvec::smallvec![FrameFile::Fresh(a)], None)
                .unwrap_err(),
            ImportError::NotAFile { index: 0 }
        );
        drop(_b);
        assert_eq!(open_fds(), before, "fds leaked on rejected imports");
    }

    #[test]
    fn video_layouts_that_overrun_the_buffer_are_refused() {
        let _fds = fd_lock();
        init();
        use glib::translate::IntoGlib;
        let nv12 = gst_video::VideoFormat::Nv12.into_glib() as u32;
        let good = VideoLayout {
            format: nv12,
            flags: 0,
            width: 64,
            height: 48,
            n_planes: 2,
            offsets: [0, 64 * 48, 0, 0],
            strides: [64, 64, 0, 0],
        };
        let size = 64 * 48 * 3 / 2;
        assert_eq!(check_video_layout(&good, size), Ok(()));
        let cases = [
            (
                VideoLayout {
                    n_planes: 1,
                    ..good
                },
                "planes",
            ),
            (
                VideoLayout {
                    format: 9999,
                    ..good
                },
                "format",
            ),
            (
                VideoLayout {
                    strides: [32, 64, 0, 0],
                    ..good
                },
                "stride",
            ),
            (
                VideoLayout {
                    strides: [-64, 64, 0, 0],
                    ..good
                },
                "stride",
            ),
            (
                VideoLayout {
                    offsets: [0, 64 * 48 + 1, 0, 0],
                    ..good
                },
                "overruns",
            ),
            (
                VideoLayout {
                    offsets: [0, u64::MAX - 10, 0, 0],
                    ..good
                },
                "overruns",
            ),
            (
                VideoLayout {
                    height: 1 << 20,
                    ..good
                },
                "size",
            ),
        ];
        for (layout, want) in cases {
            let err = check_video_layout(&layout, size).unwrap_err().to_string();
            assert!(err.contains(want), "{layout:?}: {err}");
        }
        // Padded strides with room for them are fine.
        let padded = VideoLayout {
            strides: [128, 128, 0, 0],
            offsets: [0, 128 * 48, 0, 0],
            ..good
        };
        assert_eq!(check_video_layout(&padded, 128 * 72), Ok(()));
    }

    #[test]
    fn describe_and_copy() {
        let _fds = fd_lock();
        init();
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", "NV12")
            .field("width", 64)
            .field("height", 48)
            .field("framerate", gst::Fraction::new(30, 1))
            .build();
        let pool = MemfdBufferPool::new_configured(&caps, 0, 1, 0, true).unwrap();
        let buf = pool.acquire_buffer(None).unwrap();
        assert!(buf.meta::<gst_video::VideoMeta>().is_some());
        let mut descs = MemoryList::new();
        let mut fds = FdList::new();
        describe_buffer(&buf, None, &mut descs, &mut fds).unwrap();
        assert_eq!(descs[..], [desc(MemoryKind::Memfd, 0, 0, 64 * 48 * 3 / 2)]);
        assert_eq!(fds.len(), 1);
        drop(fds);

        let sys = gst::Buffer::from_slice(vec![5u8; 64 * 48 * 3 / 2]);
        let mut fds = FdList::new();
        assert_eq!(
            describe_buffer(&sys, None, &mut descs, &mut fds),
            Err(CopyReason::NotFdMemory)
        );
        let copy = copy_into(&sys, pool.acquire_buffer(None).unwrap()).unwrap();
        assert_eq!(
            copy.map_readable().unwrap().as_slice(),
            &vec![5u8; 64 * 48 * 3 / 2][..]
        );
        let mut fds = FdList::new();
        describe_buffer(&copy, None, &mut descs, &mut fds).unwrap();
    }
}
