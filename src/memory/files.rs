//! Register-once fds: each file behind a producer's memories crosses as an fd once per
//! consumer, then by a small id (PipeWire does the same with its buffer pools).
//!
//! Producer side, [`FileRegistry`]: gives each file (a dmabuf or memfd, told apart by its
//! device and inode) an id, and remembers it on the memories that wrap it (GstMiniObject
//! qdata), so a pooled memory costs no syscall after its first frame. When the last memory
//! wrapping a file is freed (its pool was flushed or replaced at a caps change), the id is
//! retired: the producer tells its consumers to close the file.
//!
//! Consumer side, [`FileTable`]: the files a producer registered, each checked once when it
//! arrives and kept wrapped as one base memory (memfds stay mapped), which every buffer
//! packet naming it shares.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use glib::translate::IntoGlib;

use super::ImportError;
use super::views::{FileFd, ViewPool};
pub use fdlink::protocol::MAX_REGISTERED_FILES;
use fdlink::protocol::MemoryKind;
use gst::glib;

// ---------------------------------------------------------------------------------------------
// Producer

/// A file's identity while it is open: (st_dev, st_ino).
type FileKey = (u64, u64);

#[derive(Default)]
struct Registered {
    by_file: HashMap<FileKey, RegisteredEntry>,
    next_id: u32,
    /// Ids whose last memory was freed, for the hub to retire with its consumers.
    retired: Vec<u32>,
}

struct RegisteredEntry {
    id: u32,
    /// Live memories tagged with this file.
    memories: usize,
}

/// The producer's ids for the files behind its memories (see the module docs).
pub struct FileRegistry {
    /// Per registry, so two fdlinksinks in one process tag a shared memory independently.
    quark: glib::Quark,
    inner: Arc<Mutex<Registered>>,
}

/// What a memory's qdata keeps: its file's id and how it crosses, so the next frame needs
/// neither fstat nor F_GET_SEALS (a file's kind and its seals cannot change).
struct MemoryTag {
    id: u32,
    kind: MemoryKind,
    key: FileKey,
    registry: Weak<Mutex<Registered>>,
}

impl Drop for MemoryTag {
    fn drop(&mut self) {
        // The memory is being freed, on whatever thread: the registry lock is a leaf lock.
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let mut r = registry.lock().unwrap();
        if let Some(e) = r.by_file.get_mut(&self.key) {
            e.memories -= 1;
            if e.memories == 0 {
                r.by_file.remove(&self.key);
                r.retired.push(self.id);
            }
        }
    }
}

unsafe extern "C" fn drop_memory_tag(data: glib::ffi::gpointer) {
    // SAFETY: `data` is the Box<MemoryTag> leaked in FileRegistry::file_id; GStreamer calls
    // this destroy notify once, when the memory is freed or the qdata replaced.
    drop(unsafe { Box::from_raw(data as *mut MemoryTag) });
}

/// The memory that owns the fd: a share's parent, or the memory itself.
fn root_memory(mem: &gst::MemoryRef) -> *mut gst::ffi::GstMemory {
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
            inner: Arc::default(),
        }
    }
}

impl FileRegistry {
    /// The file id and kind `mem` was tagged with, if it was.
    pub fn tagged(&self, mem: &gst::MemoryRef) -> Option<(u32, MemoryKind)> {
        // SAFETY: the root memory is valid while `mem` is; the qdata, if set, is a MemoryTag
        // we set under this registry's own quark and stays valid while the memory lives.
        unsafe {
            let data = gst::ffi::gst_mini_object_get_qdata(
                root_memory(mem) as *mut gst::ffi::GstMiniObject,
                self.quark.into_glib(),
            ) as *const MemoryTag;
            data.as_ref().map(|t| (t.id, t.kind))
        }
    }

    /// Gives the file behind `mem` (its fd `fd`, checked to cross as `kind`) an id, tags the
    /// memory with it and returns it.
    pub fn file_id(
        &self,
        mem: &gst::MemoryRef,
        fd: BorrowedFd<'_>,
        kind: MemoryKind,
    ) -> std::io::Result<u32> {
        let key = fdlink::fdkind::file_identity(fd)?;
        let id = {
            let mut r = self.inner.lock().unwrap();
            let r = &mut *r;
            let next_id = &mut r.next_id;
            let e = r.by_file.entry(key).or_insert_with(|| {
                // 0 means "not registered" on the wire.
                *next_id = next_id.checked_add(1).unwrap_or(1);
                RegisteredEntry {
                    id: *next_id,
                    memories: 0,
                }
            });
            e.memories += 1;
            e.id
        };
        let tag = Box::new(MemoryTag {
            id,
            kind,
            key,
            registry: Arc::downgrade(&self.inner),
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
        Ok(id)
    }

    /// Ids whose files no memory wraps any more, since the last call.
    pub fn take_retired(&self) -> Vec<u32> {
        std::mem::take(&mut self.inner.lock().unwrap().retired)
    }

    /// Files with an id now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().by_file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Consumer

/// A file the producer registered: checked once, its memories recycled (see
/// [`super::views`]).
#[derive(Debug, Clone)]
pub struct RegisteredFile {
    pub kind: MemoryKind,
    pub size: u64,
    pub fd: Arc<FileFd>,
    pub views: Arc<ViewPool>,
}

/// One file of a received buffer packet, ready for [`super::Importer::import`].
#[derive(Debug)]
pub enum FrameFile {
    /// An fd for this buffer only (file id 0), not checked yet.
    Fresh(OwnedFd),
    /// A registered file (registered by this very packet, or earlier).
    Registered(RegisteredFile),
}

/// The files one producer registered with this consumer.
#[derive(Debug, Default)]
pub struct FileTable {
    files: HashMap<u32, RegisteredFile>,
}

impl FileTable {
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub(super) fn get(&self, id: u32) -> Result<&RegisteredFile, ImportError> {
        self.files.get(&id).ok_or(ImportError::UnknownFile { id })
    }

    pub(super) fn insert(&mut self, id: u32, file: RegisteredFile) -> Result<(), ImportError> {
        if self.files.contains_key(&id) {
            return Err(ImportError::RegisteredTwice { id });
        }
        if self.files.len() >= MAX_REGISTERED_FILES {
            return Err(ImportError::TooManyFiles {
                max: MAX_REGISTERED_FILES,
            });
        }
        self.files.insert(id, file);
        Ok(())
    }

    /// Closes the files registered under `ids` (buffers that use them keep them until freed).
    pub fn retire(&mut self, ids: &[u32]) -> Result<(), ImportError> {
        for &id in ids {
            self.files
                .remove(&id)
                .ok_or(ImportError::RetiredUnknown { id })?
                .views
                .close();
        }
        Ok(())
    }
}

impl Drop for FileTable {
    fn drop(&mut self) {
        for file in self.files.values() {
            file.views.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use gst::prelude::*;

    use super::super::tests::{desc, header, unsealed_memfd};
    use super::super::{FdList, Importer, ReleaseTokens, create_sealed_memfd, describe_buffer};
    use super::*;
    use crate::test_support::{fd_lock, open_fds};
    use fdlink::protocol::{FD_REGISTERED, MemoryDesc, MemoryList, PacketFds};
    use std::sync::Mutex;

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

    fn mem(fd_index: u8, file_id: u32, offset: u64, size: u64) -> MemoryDesc {
        MemoryDesc {
            file_id,
            ..desc(MemoryKind::Memfd, fd_index, offset, size)
        }
    }

    #[test]
    fn registered_files_are_checked_once_and_shared_until_retired() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let before = open_fds();
        let imp = Importer::default();
        let mut table = FileTable::default();
        let fd = create_sealed_memfd("r", 8192).unwrap();
        nix::sys::uio::pwrite(&fd, b"abcdefgh", 4096).unwrap();
        let ident = fdlink::fdkind::file_identity(fd.as_fd()).unwrap();

        // The packet that registers file 5 (its fd comes along).
        let mut h = header(vec![mem(0, 5, 4096, 4)]);
        let files = imp
            .resolve(&mut table, &mut h, smallvec::smallvec![fd])
            .unwrap();
        assert_eq!(table.len(), 1);
        let first = imp.import(&h, files, None).unwrap();
        // A later packet names it by id alone: same file, no fd.
        let mut h = header(vec![mem(FD_REGISTERED, 5, 4100, 4)]);
        let files = imp.resolve(&mut table, &mut h, PacketFds::new()).unwrap();
        let second = imp.import(&h, files, None).unwrap();
        assert_eq!(second.map_readable().unwrap().as_slice(), b"efgh");
        assert_eq!(first.map_readable().unwrap().as_slice(), b"abcd");
        let fd_of = |b: &gst::Buffer| {
            b.peek_memory(0)
                .downcast_memory_ref::<gst_allocators::FdMemory>()
                .unwrap()
                .fd()
        };
        assert_eq!(fd_of(&first), fd_of(&second), "one fd for the file");
        // SAFETY: `second` keeps the memory and its fd alive for this borrow.
        let got = unsafe { BorrowedFd::borrow_raw(fd_of(&second)) };
        assert_eq!(fdlink::fdkind::file_identity(got).unwrap(), ident);
        assert_eq!(open_fds(), before + 1, "one fd for the registered file");

        // Retired while buffers still use it: the fd stays until they go.
        table.retire(&[5]).unwrap();
        assert!(table.is_empty());
        assert_eq!(open_fds(), before + 1);
        drop((first, second));
        assert_eq!(
            open_fds(),
            before,
            "retired file closed once its buffers went"
        );
    }

    /// Registers file 5 (a memfd holding "abcdefgh" at 4096) in `table`.
    fn register_file_5(imp: &Importer, table: &mut FileTable) -> gst::Buffer {
        let fd = create_sealed_memfd("v", 8192).unwrap();
        nix::sys::uio::pwrite(&fd, b"abcdefgh", 4096).unwrap();
        let mut h = header(vec![mem(0, 5, 4096, 4)]);
        let files = imp.resolve(table, &mut h, smallvec::smallvec![fd]).unwrap();
        imp.import(&h, files, None).unwrap()
    }

    #[test]
    fn a_window_used_again_gets_the_same_memory_and_mapping_back() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let before = open_fds();
        let imp = Importer::default();
        let mut table = FileTable::default();
        let released = Arc::new(Mutex::new(Vec::new()));
        let log = released.clone();
        let tokens = ReleaseTokens::new(move |id| log.lock().unwrap().push(id));
        let frame = |table: &mut FileTable, id: u64, offset: u64| {
            let mut h = header(vec![mem(FD_REGISTERED, 5, offset, 4)]);
            let files = imp.resolve(table, &mut h, PacketFds::new()).unwrap();
            let token = tokens.issue(id);
            imp.import(&h, files, Some(&token)).unwrap()
        };
        drop(register_file_5(&imp, &mut table));
        let views = table.get(5).unwrap().views.clone();
        assert_eq!(views.idle(), 1, "the registering frame's view came back");

        let one = frame(&mut table, 1, 4096);
        assert_eq!(views.idle(), 0, "frame 1 took it");
        let (mem_one, map_one) = {
            let m = one.peek_memory(0);
            (
                m.as_ptr() as usize,
                m.map_readable().unwrap().as_ptr() as usize,
            )
        };
        assert!(
            one.peek_memory(0)
                .flags()
                .contains(gst::MemoryFlags::READONLY)
        );
        drop(one);
        assert_eq!(*released.lock().unwrap(), vec![1]);
        assert_eq!(views.idle(), 1);

        let two = frame(&mut table, 2, 4096);
        let m = two.peek_memory(0);
        assert_eq!(m.as_ptr() as usize, mem_one, "the same memory, recycled");
        assert_eq!(
            m.map_readable().unwrap().as_ptr() as usize,
            map_one,
            "and its mapping"
        );
        assert_eq!(m.map_readable().unwrap().as_slice(), b"abcd");
        // Another window of the file is another view; both are recycled.
        let three = frame(&mut table, 3, 4100);
        assert_eq!(three.map_readable().unwrap().as_slice(), b"efgh");
        assert_ne!(three.peek_memory(0).as_ptr() as usize, mem_one);
        drop((two, three));
        assert_eq!(*released.lock().unwrap(), vec![1, 2, 3]);
        assert_eq!(views.idle(), 2);

        // A share downstream makes of a view keeps the frame from being released.
        let four = frame(&mut table, 4, 4096);
        let part = four.peek_memory(0).share(1..3);
        drop(four);
        assert_eq!(
            released.lock().unwrap().len(),
            3,
            "released under a live share"
        );
        assert_eq!(part.map_readable().unwrap().as_slice(), b"bc");
        drop(part);
        assert_eq!(*released.lock().unwrap(), vec![1, 2, 3, 4]);

        // Retired: the idle views go, and with them the fd.
        assert_eq!(open_fds(), before + 1);
        table.retire(&[5]).unwrap();
        assert_eq!(views.idle(), 0);
        assert_eq!(open_fds(), before, "fd closed at retire");
    }

    #[test]
    fn views_in_use_at_retire_are_freed_not_recycled() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let before = open_fds();
        let imp = Importer::default();
        let mut table = FileTable::default();
        let held = register_file_5(&imp, &mut table);
        let views = table.get(5).unwrap().views.clone();
        drop(table);
        assert_eq!(open_fds(), before + 1, "the buffer keeps the fd");
        assert_eq!(held.map_readable().unwrap().as_slice(), b"abcd");
        drop(held);
        assert_eq!(views.idle(), 0, "not taken back after the table went");
        assert_eq!(open_fds(), before);
    }

    #[test]
    fn register_once_mistakes_are_refused_without_leaking() {
        let _fds = fd_lock();
        gst::init().unwrap();
        let before = open_fds();
        let imp = Importer::default();
        let mut table = FileTable::default();
        let memfd = || create_sealed_memfd("e", 4096).unwrap();

        let mut h = header(vec![mem(FD_REGISTERED, 3, 0, 10)]);
        assert_eq!(
            imp.resolve(&mut table, &mut h, PacketFds::new())
                .unwrap_err(),
            ImportError::UnknownFile { id: 3 }
        );
        let mut h = header(vec![mem(0, 3, 0, 10)]);
        imp.resolve(&mut table, &mut h, smallvec::smallvec![memfd()])
            .unwrap();
        let mut h = header(vec![mem(0, 3, 0, 10)]);
        assert_eq!(
            imp.resolve(&mut table, &mut h, smallvec::smallvec![memfd()])
                .unwrap_err(),
            ImportError::RegisteredTwice { id: 3 }
        );
        // A window past the end of a registered file, named by id.
        let mut h = header(vec![mem(FD_REGISTERED, 3, 4000, 100)]);
        let files = imp.resolve(&mut table, &mut h, PacketFds::new()).unwrap();
        assert!(matches!(
            imp.import(&h, files, None).unwrap_err(),
            ImportError::WindowOutOfBounds {
                file_size: 4096,
                ..
            }
        ));
        // The same file sent as another kind.
        let mut h = header(vec![MemoryDesc {
            kind: MemoryKind::DmaBuf,
            ..mem(FD_REGISTERED, 3, 0, 10)
        }]);
        let files = imp.resolve(&mut table, &mut h, PacketFds::new()).unwrap();
        assert_eq!(
            imp.import(&h, files, None).unwrap_err(),
            ImportError::RegisteredKind {
                id: 3,
                registered: MemoryKind::Memfd,
                sent: MemoryKind::DmaBuf
            }
        );
        // An unsealed memfd is refused at registration, as a one-shot fd would be.
        let mut h = header(vec![mem(0, 4, 0, 10)]);
        assert_eq!(
            imp.resolve(&mut table, &mut h, smallvec::smallvec![unsealed_memfd(100)])
                .unwrap_err(),
            ImportError::NotSealed { index: 0 }
        );
        assert_eq!(
            table.retire(&[9]).unwrap_err(),
            ImportError::RetiredUnknown { id: 9 }
        );
        // The table holds MAX_REGISTERED_FILES files at most.
        for id in 100..100 + MAX_REGISTERED_FILES as u32 - 1 {
            let mut h = header(vec![mem(0, id, 0, 10)]);
            imp.resolve(&mut table, &mut h, smallvec::smallvec![memfd()])
                .unwrap();
        }
        assert_eq!(table.len(), MAX_REGISTERED_FILES);
        let mut h = header(vec![mem(0, 999, 0, 10)]);
        assert_eq!(
            imp.resolve(&mut table, &mut h, smallvec::smallvec![memfd()])
                .unwrap_err(),
            ImportError::TooManyFiles {
                max: MAX_REGISTERED_FILES
            }
        );
        drop(table);
        assert_eq!(open_fds(), before, "fds leaked");
    }
}
