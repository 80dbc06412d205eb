//! Frames whose layout downstream cannot read. fdlinksink accepts GstVideoMeta (so padded and
//! strided frames, a hardware decoder's, cross zero-copy), and a producer's source then adds
//! one even where a downstream in one process, without VideoMeta support, would have been
//! given plain frames. This side asks its own downstream (an allocation query at each caps)
//! and, where it does not say it reads VideoMeta, gives it what it would have had in one
//! process: the meta removed when the layout is the caps' default (the caps say all it says).
//! A frame in another layout is copied into the default one for a downstream that answers
//! without VideoMeta support; one that answers no allocation query (fakesink, a tee with such
//! a branch) gets it as it is, with its meta: copying for a sink that reads no layout would
//! undo zero-copy.

use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;

use super::imp::{CAT, FdlinkSrc};

/// What downstream of this source reads, for the caps set last.
#[derive(Debug, Clone)]
pub struct DownstreamLayout {
    /// The caps' video info; None for caps that are not raw video.
    info: Option<gst_video::VideoInfo>,
    /// Downstream answered the allocation query with GstVideoMeta support.
    video_meta: bool,
    /// Downstream answered the allocation query (with or without VideoMeta support).
    answered: bool,
}

impl FdlinkSrc {
    /// Asks downstream, after `caps` were set, whether it reads GstVideoMeta.
    pub(super) fn learn_downstream_layout(&self, caps: &gst::Caps) -> DownstreamLayout {
        // Raw video caps only: VideoInfo logs an error for anything else.
        let raw_video = caps.is_fixed()
            && caps
                .structure(0)
                .is_some_and(|s| s.name() == "video/x-raw" && s.has_field("format"));
        let info = raw_video
            .then(|| gst_video::VideoInfo::from_caps(caps).ok())
            .flatten();
        let mut query = gst::query::Allocation::new(Some(caps), false);
        let answered = info.is_some() && self.obj().src_pad().peer_query(&mut query);
        let video_meta = info.is_none()
            || answered
                && query
                    .find_allocation_meta::<gst_video::VideoMeta>()
                    .is_some();
        gst::debug!(
            CAT,
            imp = self,
            "downstream reads GstVideoMeta for {caps}: {video_meta} (answered the allocation query: {answered})"
        );
        DownstreamLayout {
            info,
            video_meta,
            answered,
        }
    }
}

/// `buffer` as downstream can read it (see the module comment); the same buffer in every
/// other case.
pub fn readable_by_downstream(buffer: gst::Buffer, downstream: &DownstreamLayout) -> gst::Buffer {
    let Some(info) = downstream.info.as_ref().filter(|_| !downstream.video_meta) else {
        return buffer;
    };
    let Some(meta) = buffer.meta::<gst_video::VideoMeta>() else {
        return buffer;
    };
    let planes = meta.n_planes() as usize;
    let default_layout = meta.format() == info.format()
        && meta.width() == info.width()
        && meta.height() == info.height()
        && planes == info.n_planes() as usize
        && meta.offset()[..planes] == info.offset()[..planes]
        && meta.stride()[..planes] == info.stride()[..planes];
    if !default_layout && !downstream.answered {
        return buffer;
    }
    if default_layout {
        let mut buffer = buffer;
        let b = buffer.make_mut();
        while let Some(meta) = b.meta_mut::<gst_video::VideoMeta>() {
            if meta.remove().is_err() {
                break;
            }
        }
        return buffer;
    }
    copy_to_default_layout(buffer, info)
}

/// A copy of `buffer` in `info`'s default layout, with its timestamps, flags and other metas;
/// `buffer` itself if it cannot be mapped (downstream then gets it as it is).
fn copy_to_default_layout(buffer: gst::Buffer, info: &gst_video::VideoInfo) -> gst::Buffer {
    match copy_frame(&buffer, info) {
        Some(out) => out,
        None => buffer,
    }
}

fn copy_frame(buffer: &gst::Buffer, info: &gst_video::VideoInfo) -> Option<gst::Buffer> {
    let mut out = gst::Buffer::with_size(info.size()).ok()?;
    {
        let src = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info).ok()?;
        let o = out.get_mut().expect("a new buffer");
        let mut dst = gst_video::VideoFrameRef::from_buffer_ref_writable(o, info).ok()?;
        src.copy(&mut dst).ok()?;
    }
    let o = out.get_mut().expect("a new buffer");
    buffer
        .copy_into(
            o,
            gst::BufferCopyFlags::FLAGS
                | gst::BufferCopyFlags::TIMESTAMPS
                | gst::BufferCopyFlags::META,
            ..,
        )
        .ok()?;
    while let Some(meta) = o.meta_mut::<gst_video::VideoMeta>() {
        if meta.remove().is_err() {
            break;
        }
    }
    Some(out)
}
