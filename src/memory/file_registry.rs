//! The producer's register-once file ids on GStreamer memories: the ids themselves come from
//! the core's [`FileIds`] (by the file's device and inode); this keeps each memory's id, with
//! its file's kind, in GstMiniObject qdata, so a pooled memory costs no syscall after its
//! first frame. The qdata holds the memory's [`FileUse`]: when the last memory wrapping a
//! file is freed (its pool was flushed or replaced at a caps change), the id is retired and
//! the hub tells its consumers to close the file. The tag also keeps the number of the fd the
//! consumers are sent for the file (a memfd's read-only reopening, [`super::read_only`]).

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use glib::translate::IntoGlib;

use fdlink::file_ids::{FileIds, FileUse};
use fdlink::hub::RetiredFiles;
use fdlink::protocol::MemoryKind;
use gst::glib;

/// The producer's ids for the files behind its memories (see the module docs).
pub struct FileRegistry {
    /// Per registry, so two fdlinksinks in one process tag a shared memory independently.
    quark: glib::Quark,
    ids: FileIds,
}

/// What a memory's qdata keeps: its file's id (a use of it), how it crosses and the fd its
/// consumers are sent, so the next frame needs neither fstat nor F_GET_SEALS (a file's kind
/// and its seals cannot change) nor another qdata lookup.
struct MemoryTag {
    file: FileUse,
    kind: MemoryKind,
    /// The memory's own fd, or its read-only reopening in the memory's qdata: either is open
    /// while the memory lives.
    sent: RawFd,
}

unsafe extern "C" fn drop_memory_tag(data: glib::ffi::gpointer) {
    // SAFETY: `data` is the Box<MemoryTag> leaked in FileRegistry::file_id; GStreamer calls
    // this destroy notify once, when the memory is freed or the qdata replaced. Dropping the
    // tag ends its use of the file, on whatever thread frees the memory.
    drop(unsafe { Box::from_raw(data as *mut MemoryTag) });
}

/// The memory that owns the fd: a share's parent, or the memory itself.
pub(super) fn root_memory(mem: &gst::MemoryRef) -> *mut gst::ffi::GstMemory {
    let ptr = mem.as_ptr() as *mut gst::ffi::GstMemory;
    // SAFETY: `mem` is a valid memory; its parent, when set, is kept alive by it.
    let parent = unsafe { (*ptr).parent };
    if parent.is_null() { ptr } else { parent }
}

impl Default for FileRegistry {
    fn default() -> Self {
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        FileRegistry {
            quark: glib::Quark::from_str(format!("fdlink-file-id-{n}")),
            ids: FileIds::default(),
        }
    }
}

impl FileRegistry {
    /// The file id and kind `mem` was tagged with, if it was, and the fd its consumers are
    /// sent.
    pub fn tagged<'a>(&self, mem: &'a gst::MemoryRef) -> Option<(u32, MemoryKind, BorrowedFd<'a>)> {
        // SAFETY: the root memory is valid while `mem` is; the qdata, if set, is a MemoryTag
        // we set under this registry's own quark and stays valid while the memory lives, and
        // so does the fd it names (MemoryTag::sent).
        unsafe {
            let data = gst::ffi::gst_mini_object_get_qdata(
                root_memory(mem) as *mut gst::ffi::GstMiniObject,
                self.quark.into_glib(),
            ) as *const MemoryTag;
            data.as_ref()
                .map(|t| (t.file.id(), t.kind, BorrowedFd::borrow_raw(t.sent)))
        }
    }

    /// Gives the file behind `mem` (its fd `fd`, checked to cross as `kind`) an id, tags the
    /// memory with it and returns it, with the fd its consumers are sent
    /// ([`super::read_only::sent_fd`]).
    pub fn file_id<'a>(
        &self,
        mem: &'a gst::MemoryRef,
        fd: BorrowedFd<'a>,
        kind: MemoryKind,
    ) -> std::io::Result<(u32, BorrowedFd<'a>)> {
        let file = self.ids.register_fd(fd)?;
        let id = file.id();
        let sent = super::read_only::sent_fd(mem, fd, kind);
        let tag = Box::new(MemoryTag {
            file,
            kind,
            sent: sent.as_raw_fd(),
        });
        // SAFETY: the root memory is valid; qdata takes ownership of the tag and frees it
        // through drop_memory_tag when the memory is freed.
        unsafe {
            gst::ffi::gst_mini_object_set_qdata(
                root_memory(mem) as *mut gst::ffi::GstMiniObject,
                self.quark.into_glib(),
                Box::into_raw(tag) as glib::ffi::gpointer,
                Some(drop_memory_tag),
            );
        }
        Ok((id, sent))
    }

    /// Ids whose files no memory wraps any more, since the last call.
    pub fn take_retired(&self) -> Vec<u32> {
        self.ids.take_retired()
    }

    /// Files with an id now.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl RetiredFiles for FileRegistry {
    fn take_retired(&self) -> Vec<u32> {
        self.ids.take_retired()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;

    use gst::prelude::*;

    use super::super::{FdList, Importer, describe_buffer};
    use super::*;
    use crate::test_support::fd_lock;
    use fdlink::protocol::MemoryList;

    fn nv12_pool(min: u32, max: u32) -> super::super::MemfdBufferPool {
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", "NV12")
            .field("width", 64)
            .field("height", 48)
            .field("framerate", gst::Fraction::new(30, 1))
            .build();
        super::super::MemfdBufferPool::new_configured(&caps, 0, min, max, true).unwrap()
    }

    fn file_ids(registry: &FileRegistry, buf: &gst::BufferRef) -> Vec<u32> {
        let mut descs = MemoryList::new();
        let mut fds = FdList::new();
        describe_buffer(buf, Some(registry), &mut descs, &mut fds).unwrap();
        descs.iter().map(|m| m.file_id).collect()
    }

    #[test]
    fn pooled_memories_keep_their_file_id_until_the_pool_goes() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let registry = FileRegistry::default();
        let pool = nv12_pool(2, 2);
        let a = pool.acquire_buffer(None).unwrap();
        let b = pool.acquire_buffer(None).unwrap();
        let (ida, idb) = (file_ids(&registry, &a)[0], file_ids(&registry, &b)[0]);
        assert!(ida != 0 && idb != 0 && ida != idb, "{ida} {idb}");
        let ptr_a = a.as_ptr();
        drop(a);
        // The pool hands the same buffer back: same memory, same id, from its tag.
        let again = pool.acquire_buffer(None).unwrap();
        assert_eq!(again.as_ptr(), ptr_a);
        assert_eq!(
            registry.tagged(again.peek_memory(0)).map(|t| t.0),
            Some(ida)
        );
        assert_eq!(file_ids(&registry, &again), [ida]);
        assert_eq!(registry.len(), 2);
        assert!(registry.take_retired().is_empty());
        // A second memory object wrapping the same file (a duplicated fd) is the same file.
        let raw = again
            .peek_memory(0)
            .downcast_memory_ref::<gst_allocators::FdMemory>()
            .unwrap()
            .fd();
        // SAFETY: `again` keeps the memory and its fd alive for this borrow.
        let dup = unsafe { BorrowedFd::borrow_raw(raw) }
            .try_clone_to_owned()
            .unwrap();
        let size = again.size() as u64;
        let other = Importer::default()
            .wrap(dup, MemoryKind::Memfd, size)
            .unwrap();
        // In one buffer beside the pool's own memory of that file: one fd slot, one id.
        let mut wrapped = gst::Buffer::new();
        wrapped
            .get_mut()
            .unwrap()
            .append_memory(again.memory(0).unwrap());
        wrapped.get_mut().unwrap().append_memory(other);
        let mut descs = MemoryList::new();
        let mut fds = FdList::new();
        describe_buffer(&wrapped, Some(&registry), &mut descs, &mut fds).unwrap();
        assert_eq!(fds.len(), 1, "one fd for one file");
        assert_eq!(
            descs
                .iter()
                .map(|m| (m.fd_index, m.file_id))
                .collect::<Vec<_>>(),
            [(0, ida), (0, ida)]
        );
        drop(fds);
        drop(wrapped);
        assert!(
            registry.take_retired().is_empty(),
            "the pool's memory still wraps the file"
        );
        // The pool goes (caps change, flush): both files are retired, once.
        drop((again, b));
        pool.set_active(false).unwrap();
        drop(pool);
        let mut retired = registry.take_retired();
        retired.sort_unstable();
        let mut want = vec![ida, idb];
        want.sort_unstable();
        assert_eq!(retired, want);
        assert!(registry.is_empty());
        assert!(registry.take_retired().is_empty());
    }
}
