//! The consumer's register-once files: the files a producer registered, each checked once
//! when it arrives and kept with a pool of recycled memories (views, see [`super::views`]),
//! which every buffer packet naming it shares.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::views::{FileFd, ViewPool};
use fdlink::protocol::MemoryKind;
use fdlink::registered_files::{RegisteredFiles, Retire};

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

impl Retire for RegisteredFile {
    /// Closes the idle views, and with the last of them the fd (buffers that use the file
    /// keep it until freed).
    fn retire(&self) {
        self.views.close();
    }
}

/// The files one producer registered with this consumer.
pub type FileTable = RegisteredFiles<RegisteredFile>;

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, BorrowedFd};

    use super::super::tests::{desc, header, unsealed_memfd};
    use super::super::{ImportError, Importer, ReleaseTokens, create_sealed_memfd};
    use super::*;
    use crate::test_support::{fd_lock, open_fds};
    use fdlink::protocol::MAX_REGISTERED_FILES;
    use fdlink::protocol::{FD_REGISTERED, MemoryDesc, PacketFds};
    use std::sync::Mutex;

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
        table.retire(5).unwrap();
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
        table.retire(5).unwrap();
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
            table.retire(9).unwrap_err(),
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
