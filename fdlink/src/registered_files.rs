//! A consumer's table of the files a producer registered (register-once fds): one entry per
//! id until the producer retires it, at most [`MAX_REGISTERED_FILES`] of them, so a producer
//! cannot make a consumer keep files without bound.
//!
//! What an entry keeps (a mapping, recycled GStreamer memories) is its own; [`Retire`] tells
//! it that the table let go, at the producer's retire or when the table goes. Frames that
//! still use a retired file keep it until they go.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::fdkind::ImportError;
use crate::protocol::MAX_REGISTERED_FILES;

/// An entry of [`RegisteredFiles`], told when the table lets go of it.
pub trait Retire {
    /// The producer retired the file, or the table went: release what only the table needs
    /// (frames using the file keep their own hold on it).
    fn retire(&self);
}

impl<T: Retire> Retire for Arc<T> {
    fn retire(&self) {
        T::retire(self)
    }
}

/// The files one producer registered with this consumer, by file id.
pub struct RegisteredFiles<F: Retire> {
    files: HashMap<u32, F>,
}

impl<F: Retire> Default for RegisteredFiles<F> {
    fn default() -> Self {
        RegisteredFiles {
            files: HashMap::new(),
        }
    }
}

impl<F: Retire> RegisteredFiles<F> {
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The file registered under `id`.
    pub fn get(&self, id: u32) -> Result<&F, ImportError> {
        self.files.get(&id).ok_or(ImportError::UnknownFile { id })
    }

    /// Registers `file` under `id`, which must not be registered already, within the bound.
    pub fn insert(&mut self, id: u32, file: F) -> Result<&F, ImportError> {
        let full = self.files.len() >= MAX_REGISTERED_FILES;
        match self.files.entry(id) {
            Entry::Occupied(_) => Err(ImportError::RegisteredTwice { id }),
            Entry::Vacant(_) if full => Err(ImportError::TooManyFiles {
                max: MAX_REGISTERED_FILES,
            }),
            Entry::Vacant(slot) => Ok(slot.insert(file)),
        }
    }

    /// Retires the file registered under `id`.
    pub fn retire(&mut self, id: u32) -> Result<(), ImportError> {
        self.files
            .remove(&id)
            .ok_or(ImportError::RetiredUnknown { id })?
            .retire();
        Ok(())
    }
}

impl<F: Retire> Drop for RegisteredFiles<F> {
    fn drop(&mut self) {
        for file in self.files.values() {
            file.retire();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Counted(AtomicUsize);

    impl Retire for Counted {
        fn retire(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn entries_are_bounded_unique_and_retired_once() {
        let mut table = RegisteredFiles::<Arc<Counted>>::default();
        let first = Arc::new(Counted::default());
        table.insert(7, first.clone()).unwrap();
        assert_eq!(
            table.insert(7, Arc::default()).unwrap_err(),
            ImportError::RegisteredTwice { id: 7 }
        );
        assert_eq!(
            table.get(8).unwrap_err(),
            ImportError::UnknownFile { id: 8 }
        );
        table.retire(7).unwrap();
        assert_eq!(first.0.load(Ordering::Relaxed), 1);
        assert_eq!(
            table.retire(7).unwrap_err(),
            ImportError::RetiredUnknown { id: 7 }
        );

        let kept = Arc::new(Counted::default());
        for id in 0..MAX_REGISTERED_FILES as u32 {
            table.insert(id, kept.clone()).unwrap();
        }
        assert_eq!(
            table.insert(u32::MAX, Arc::default()).unwrap_err(),
            ImportError::TooManyFiles {
                max: MAX_REGISTERED_FILES
            }
        );
        drop(table);
        assert_eq!(
            kept.0.load(Ordering::Relaxed),
            MAX_REGISTERED_FILES,
            "the table retires what it holds when it goes"
        );
    }
}
