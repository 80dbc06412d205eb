//! The producer's ids for register-once fds: each file behind its frames (a dmabuf or memfd,
//! told apart by its device and inode) gets a small id, which a consumer that has the file
//! registered is sent instead of the fd (PipeWire does the same with its buffer pools).
//!
//! Whoever wraps a file in a buffer holds a [`FileUse`] for it (the GStreamer plugin keeps one
//! on each memory, in its qdata). When the last use of a file goes (its pool was flushed or
//! replaced), its id is retired: the fan-out hub takes the retired ids before its next packet
//! and tells the consumers that have the file to close it.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::fdkind::file_identity;

/// A file's identity while it is open: (st_dev, st_ino).
pub type FileIdentity = (u64, u64);

#[derive(Default)]
struct Registered {
    by_file: HashMap<FileIdentity, Entry>,
    next_id: u32,
    /// Ids whose last use went, for the hub to retire with its consumers.
    retired: Vec<u32>,
}

struct Entry {
    id: u32,
    /// Live [`FileUse`]s of this file.
    uses: usize,
}

/// The ids of the files a producer sends (see the module docs). Clones share one table.
#[derive(Clone, Default)]
pub struct FileIds {
    inner: Arc<Mutex<Registered>>,
}

/// One use of a registered file (a memory that wraps it): the file keeps its id while any use
/// of it lives.
pub struct FileUse {
    id: u32,
    identity: FileIdentity,
    ids: Weak<Mutex<Registered>>,
}

impl FileUse {
    /// The file's id: never 0, which means "not registered" on the wire.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for FileUse {
    fn drop(&mut self) {
        // Runs wherever the use ends (a memory freed on any thread): the table's lock is a
        // leaf lock.
        let Some(ids) = self.ids.upgrade() else {
            return;
        };
        let mut r = lock(&ids);
        if let Some(e) = r.by_file.get_mut(&self.identity) {
            e.uses -= 1;
            if e.uses == 0 {
                r.by_file.remove(&self.identity);
                r.retired.push(self.id);
            }
        }
    }
}

fn lock(m: &Mutex<Registered>) -> MutexGuard<'_, Registered> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FileIds {
    /// A use of the file `identity`: its id, given now if it has none.
    pub fn register(&self, identity: FileIdentity) -> FileUse {
        let id = {
            let mut r = lock(&self.inner);
            let r = &mut *r;
            let next_id = &mut r.next_id;
            let e = r.by_file.entry(identity).or_insert_with(|| {
                // 0 means "not registered" on the wire.
                *next_id = next_id.checked_add(1).unwrap_or(1);
                Entry {
                    id: *next_id,
                    uses: 0,
                }
            });
            e.uses += 1;
            e.id
        };
        FileUse {
            id,
            identity,
            ids: Arc::downgrade(&self.inner),
        }
    }

    /// [`Self::register`] for the file `fd` refers to (one `fstat`).
    pub fn register_fd(&self, fd: BorrowedFd<'_>) -> std::io::Result<FileUse> {
        Ok(self.register(file_identity(fd)?))
    }

    /// Ids whose files nothing uses any more, since the last call.
    pub fn take_retired(&self) -> Vec<u32> {
        std::mem::take(&mut lock(&self.inner).retired)
    }

    /// Files with an id now.
    pub fn len(&self) -> usize {
        lock(&self.inner).by_file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_keeps_its_id_while_it_is_used_and_is_retired_once() {
        let ids = FileIds::default();
        let a = ids.register((1, 10));
        let a2 = ids.register((1, 10));
        let b = ids.register((1, 11));
        assert!(a.id() != 0 && b.id() != 0 && a.id() != b.id());
        assert_eq!(a.id(), a2.id(), "one file, one id");
        assert_eq!(ids.len(), 2);
        drop(a);
        assert!(ids.take_retired().is_empty(), "a2 still uses the file");
        let (ida, idb) = (a2.id(), b.id());
        drop((a2, b));
        let mut retired = ids.take_retired();
        retired.sort_unstable();
        assert_eq!(retired, [ida.min(idb), ida.max(idb)]);
        assert!(ids.is_empty());
        assert!(ids.take_retired().is_empty());
        // Registered again, the file gets a new id.
        assert!(![ida, idb].contains(&ids.register((1, 10)).id()));
    }

    #[test]
    fn a_use_outliving_its_table_is_dropped_quietly() {
        let ids = FileIds::default();
        let u = ids.register((2, 20));
        drop(ids);
        drop(u);
    }

    #[test]
    fn the_same_file_through_two_fds_is_one_file() {
        let _fds = crate::test_support::fd_lock();
        let ids = FileIds::default();
        let fd = crate::fdkind::create_sealed_memfd("ids", 4096).unwrap();
        let dup = fd.try_clone().unwrap();
        let a = ids.register_fd(std::os::fd::AsFd::as_fd(&fd)).unwrap();
        let b = ids.register_fd(std::os::fd::AsFd::as_fd(&dup)).unwrap();
        assert_eq!(a.id(), b.id());
    }
}
