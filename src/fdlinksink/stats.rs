//! fdlinksink's `stats` property.

use gst::glib;
use gst::prelude::*;

use super::hub::Hub;

/// The `stats` structure: the hub's counters (zero before start), `copy_ns` (time spent
/// copying unshareable buffers) and one `client` structure per consumer in `clients` (absent
/// while there is none).
pub(super) fn structure(hub: Option<&Hub>, copy_ns: u64) -> gst::Structure {
    let (stats, consumers, held) = hub.map(Hub::stats).unwrap_or_default();
    let clients: Vec<glib::SendValue> = hub
        .map(Hub::consumer_stats)
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            gst::Structure::builder("client")
                .field("id", c.id)
                .field("pid", c.pid)
                .field("frames-sent", c.frames_sent)
                .field("frames-dropped", c.frames_dropped)
                .field("frames-copied", c.frames_copied)
                .field("buffers-held", c.held)
                .field("buffers-queued", c.queued)
                .field("releases", c.releases)
                .field("bytes-sent", c.bytes_sent)
                .field("idle-ms", c.idle_ms)
                .field("release-avg-us", c.release_avg_us)
                .field("fds-sent", c.fds_sent)
                .field("files-registered", c.files_registered)
                .build()
                .to_send_value()
        })
        .collect();
    let mut s = gst::Structure::builder("application/x-fdlinksink-stats")
        .field("frames-in", stats.frames_in)
        .field("frames-sent", stats.frames_sent)
        .field("frames-zero-copy", stats.frames_zero_copy)
        .field("frames-copied", stats.frames_copied)
        .field("frames-empty", stats.frames_empty)
        .field("bytes-copied", stats.bytes_copied)
        .field("copy-time-us", copy_ns / 1000)
        .field("frames-dropped", stats.frames_dropped)
        .field("slow-copies", stats.slow_copies)
        .field("frames-without-consumer", stats.frames_without_consumer)
        .field("releases", stats.releases)
        .field("consumers", consumers)
        .field("consumers-total", stats.consumers_total)
        .field("consumers-refused", stats.consumers_refused)
        .field("buffers-held", held)
        .field("fds-sent", stats.fds_sent)
        .field("files-registered", stats.files_registered)
        .field("files-retired", stats.files_retired)
        .build();
    // Left out while there is no consumer: GStreamer prints an empty array as
    // `clients=(int)< >`, an element type it cannot know.
    if !clients.is_empty() {
        s.set("clients", gst::Array::from_values(clients));
    }
    s
}
