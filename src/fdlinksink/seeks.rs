//! Seeks from consumers, one at a time in the process and each once. A consumer pipeline with
//! two links (video and audio of one demuxer) sends its one seek over both, and both arrive at
//! this process's fdlinksinks on request threads of their own: run together, the demuxer
//! handles two flushing seeks at once and its streams go on without a segment (GStreamer's
//! "data flow before segment event"), which stalled the split player after a seek in about 1
//! run of 10. In one process the pipeline sends the seek to its sinks one after the other,
//! and a demuxer answers the second copy (same seqnum) without seeking again; here the second
//! copy is answered as done.

use std::sync::Mutex;

use gst::prelude::*;

/// The seqnum of the last seek sent upstream in this process.
static LAST_SEEK: Mutex<Option<gst::Seqnum>> = Mutex::new(None);

/// Sends a consumer's upstream `event` up through `pad`; a seek waits for any other seek in
/// the process to be done, and one with the seqnum of the last is not sent again.
pub fn push_upstream(pad: &gst::Pad, event: gst::Event) -> bool {
    if event.type_() != gst::EventType::Seek {
        return pad.push_event(event);
    }
    let mut last = LAST_SEEK.lock().unwrap_or_else(|e| e.into_inner());
    if *last == Some(event.seqnum()) {
        return true;
    }
    *last = Some(event.seqnum());
    pad.push_event(event)
}
