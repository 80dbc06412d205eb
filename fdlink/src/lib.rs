//! fdlink's core, without GStreamer: the wire protocol, the socket transport and the checks
//! every received fd passes. The GStreamer plugin (`gst-plugin-fdlink`) and applications that
//! are not pipelines build on it and speak the same protocol.
//!
//! Layers, each using only those above it in this list: [`protocol`] (bytes only: packet
//! types, encode and decode), [`fdkind`] (memfd and dmabuf checks), [`transport`] (the only
//! socket I/O), [`peer_check`] (whose credentials pass), [`endpoint`] (the hello, connect and
//! reconnect with backoff), [`file_ids`] (register-once file ids), [`pending`] (queries
//! waiting for a reply), [`hub`] (the producer's fan-out to its consumers), [`mapping`]
//! (read-only mappings of received files), [`consumer`] and [`producer`] (frames for
//! applications, the producer on the hub, with [`memfd_pool`] for plain bytes).
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod consumer;
pub mod drm_format;
pub mod endpoint;
pub mod fdkind;
pub mod file_ids;
pub mod hub;
pub mod mapping;
pub mod memfd_pool;
pub mod peer_check;
pub mod pending;
pub mod producer;
pub mod protocol;
pub mod registered_files;
pub mod structure_limits;
pub mod transport;
pub mod warning_gate;

/// Helpers for unit tests: fd counts are per process and tests run on parallel threads, so
/// every test that opens fds holds this lock while it counts.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::{Mutex, MutexGuard};

    static FD_LOCK: Mutex<()> = Mutex::new(());

    pub fn fd_lock() -> MutexGuard<'static, ()> {
        FD_LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }
}
