//! `fdlinksink`: serves its input to fdlinksrc elements in other processes, zero-copy.
//!
//! It listens on `socket-path`. Every consumer that connects gets the current caps and sticky
//! events, then every buffer from the next one on: fd-backed memories (memfd, dmabuf) travel
//! as file descriptors, anything else is copied once into a sealed memfd. Upstream is offered
//! a memfd buffer pool with GstVideoMeta so that, usually, nothing is copied at all. A buffer
//! goes back upstream only when every consumer that received it has released it.
//!
//! ```text
//! gst-launch-1.0 videotestsrc ! video/x-raw,format=NV12 ! fdlinksink socket-path=/tmp/fdlink.sock
//! ```

mod hub;
mod imp;
mod requests;

use gst::glib;
use gst::prelude::*;

glib::wrapper! {
    pub struct FdlinkSink(ObjectSubclass<imp::FdlinkSink>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // Property enums, so documentation tools list their values.
    imp::SlowPolicyProp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    imp::SyncMethodProp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "fdlinksink",
        gst::Rank::NONE,
        FdlinkSink::static_type(),
    )
}
