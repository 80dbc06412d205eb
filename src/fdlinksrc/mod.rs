//! `fdlinksrc`: receives the stream of an fdlinksink in another process, zero-copy.
//!
//! It connects to `socket-path` (waiting up to `timeout` for a producer), and outputs buffers
//! whose memories wrap the received file descriptors read-only (GstFdMemory for memfds,
//! GstDmaBufMemory for dmabufs), with the producer's caps and video meta. When the last
//! reference to such a buffer goes, from whatever thread, the producer is told so it can reuse
//! the memory. It is a live source: timestamps are translated through CLOCK_MONOTONIC so that
//! a sink with `sync=true` shows each frame when the producer meant it to be shown.
//!
//! A producer that goes away without EOS is an error, or with `reconnect=true` the pipeline
//! keeps running while the element connects to `socket-path` again (up to `retry-timeout`),
//! posting `fdlink-disconnected` and `fdlink-reconnected` element messages.
//!
//! At most `max-queued` received frames wait for a slow downstream; `leaky` says what happens
//! to one more: stop reading (the producer's slow-policy decides), drop the oldest, or copy
//! the oldest into system memory so the producer gets its buffer back.
//!
//! ```text
//! gst-launch-1.0 fdlinksrc socket-path=/tmp/fdlink.sock ! videoconvert ! autovideosink
//! ```

mod connection;
mod imp;
mod link;
mod peer;
mod request_pads;
mod stats;
mod stream;
mod timeline;
mod video_layout;

use gst::glib;
use gst::prelude::*;

glib::wrapper! {
    pub struct FdlinkSrc(ObjectSubclass<imp::FdlinkSrc>)
        @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    link::Leaky::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    crate::session::Mode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "fdlinksrc",
        gst::Rank::NONE,
        FdlinkSrc::static_type(),
    )
}
