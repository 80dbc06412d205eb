//! fdlink: join GStreamer pipelines in different processes, zero-copy.
//!
//! `fdlinksink` serves its input over an AF_UNIX SOCK_SEQPACKET socket; `fdlinksrc` in another
//! process receives it. Frames cross as file descriptors (dmabuf, memfd) with SCM_RIGHTS beside
//! small control packets; system memory is copied once into a sealed memfd pool.
//!
//! Layers: the `fdlink` core crate below (wire protocol, socket transport, fd checks: no
//! GStreamer), [`memory`] (the only fd <-> gst::Memory code), and the two elements on top.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod clock;
pub mod control;
pub mod drm_format;
mod fdlinksink;
mod fdlinksrc;
pub mod memory;
pub mod metas;
mod peer_access;
pub mod peer_fields;
pub mod peer_names;
pub mod session;
pub mod stats_interval;
pub mod wire_event;

pub use fdlinksink::FdlinkSink;
pub use fdlinksrc::FdlinkSrc;

use gst::glib;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    fdlinksink::register(plugin)?;
    fdlinksrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    fdlink,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);

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
