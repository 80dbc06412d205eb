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

mod base_sink_preroll;
mod dma_drm;
mod hub;
mod imp;
mod negotiation;
mod properties;
mod requests;
mod seeks;
mod send;
mod serve;
mod skips;
mod stats;
mod to_consumers;

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

use hub::{SlowPolicy, SyncMethod};

/// The `slow-policy` property.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstFdlinkSlowPolicy")]
pub enum SlowPolicyProp {
    #[default]
    #[enum_value(
        name = "Auto: drop when upstream is live; otherwise wait up to 1 s, then skip that consumer until it releases",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "Drop: skip frames for that consumer", nick = "drop")]
    Drop = 1,
    #[enum_value(
        name = "Block: wait until every consumer has room (lossless, for recording)",
        nick = "block"
    )]
    Block = 2,
    #[enum_value(name = "Disconnect: remove that consumer", nick = "disconnect")]
    Disconnect = 3,
    #[enum_value(
        name = "Copy: send that consumer a copy in the memfd pool, so upstream's pool keeps its buffers",
        nick = "copy"
    )]
    Copy = 4,
}

/// The `sync-method` property.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstFdlinkSyncMethod")]
pub enum SyncMethodProp {
    #[enum_value(name = "Latest: start with the next buffer", nick = "latest")]
    Latest = 0,
    #[enum_value(
        name = "Next keyframe: skip delta units until the next keyframe",
        nick = "next-keyframe"
    )]
    NextKeyframe = 1,
    #[enum_value(
        name = "Latest keyframe: start with the latest keyframe and the buffers since",
        nick = "latest-keyframe"
    )]
    LatestKeyframe = 2,
    #[default]
    #[enum_value(
        name = "Auto: latest for raw media, latest-keyframe for encoded media",
        nick = "auto"
    )]
    Auto = 3,
}

/// Whether `caps` are of encoded media, whose delta units a consumer cannot start on (for
/// sync-method=auto), nor drop: anything but raw audio, video and text, and Bayer video.
pub(crate) fn is_encoded(caps: &gst::CapsRef) -> bool {
    caps.structure(0).is_some_and(|s| {
        let name = s.name().as_str();
        !name.ends_with("/x-raw") && name != "video/x-bayer"
    })
}

impl From<SyncMethodProp> for SyncMethod {
    fn from(p: SyncMethodProp) -> Self {
        match p {
            SyncMethodProp::Latest => SyncMethod::Latest,
            SyncMethodProp::NextKeyframe => SyncMethod::NextKeyframe,
            SyncMethodProp::LatestKeyframe => SyncMethod::LatestKeyframe,
            SyncMethodProp::Auto => SyncMethod::Auto,
        }
    }
}

impl From<SlowPolicyProp> for SlowPolicy {
    fn from(p: SlowPolicyProp) -> Self {
        match p {
            SlowPolicyProp::Auto => SlowPolicy::Auto,
            SlowPolicyProp::Drop => SlowPolicy::Drop,
            SlowPolicyProp::Block => SlowPolicy::Block,
            SlowPolicyProp::Disconnect => SlowPolicy::Disconnect,
            SlowPolicyProp::Copy => SlowPolicy::Copy,
        }
    }
}

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "fdlinksink",
        gst::DebugColorFlags::empty(),
        Some("fdlink producer: serves buffers to other processes"),
    )
});

glib::wrapper! {
    pub struct FdlinkSink(ObjectSubclass<imp::FdlinkSink>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // Property enums, so documentation tools list their values.
    SlowPolicyProp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    SyncMethodProp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "fdlinksink",
        gst::Rank::NONE,
        FdlinkSink::static_type(),
    )
}
