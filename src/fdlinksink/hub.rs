//! The fan-out hub of the core crate (`fdlink::hub`) as fdlinksink holds it: each frame's item
//! is its `gst::Buffer` (a pool buffer goes back upstream when every consumer released it),
//! and files get their ids from [`FileRegistry`], which keeps them on the memories.

use crate::memory::FileRegistry;

pub use fdlink::hub::{
    Frame, HubEvent, Limits, PassThrough, PrerollWait, Request, SlowPolicy, StickyKind, SyncMethod,
};

/// fdlinksink's hub.
pub type Hub = fdlink::hub::Hub<gst::Buffer, FileRegistry>;
