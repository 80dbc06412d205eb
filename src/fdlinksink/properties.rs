//! fdlinksink's properties: their specs, with one-sentence descriptions and units (the
//! README's property table explains each further).

use gst::glib;
use gst::prelude::*;

use super::{SlowPolicyProp, SyncMethodProp};
use crate::peer_access;
use crate::session::Mode;

pub(super) const DEFAULT_MAX_HELD: u32 = 8;
pub(super) const DEFAULT_MAX_QUEUED: u32 = 8;
/// Default `max-clients`: far more consumers than a producer serves in practice, far fewer
/// connections than a flood makes.
pub(super) const DEFAULT_MAX_CLIENTS: u32 = 64;

/// `max-held-total` when it is not set: twice `max-held`, so consumers that never release
/// grow upstream's pool by at most that much (see the README), while a single consumer (at
/// most max-held) or a few fast ones never reach it.
pub(super) fn default_max_held_total(max_held: u32) -> u32 {
    max_held.saturating_mul(2)
}
/// Default `ack-timeout`: caps queries wait this long for consumers, so it stays short.
pub(super) const DEFAULT_ACK_TIMEOUT_MS: u32 = 1_000;

/// Every property of fdlinksink.
pub(super) fn specs() -> Vec<glib::ParamSpec> {
    let mut properties = vec![
        glib::ParamSpecString::builder("socket-path")
            .nick("Socket path")
            .blurb("Path of the AF_UNIX socket consumers connect to; a stale socket file left by a dead producer is replaced")
            .mutable_ready()
            .build(),
        glib::ParamSpecInt::builder("fd")
            .nick("Inherited socket")
            .blurb("An already-connected AF_UNIX SOCK_SEQPACKET socket to serve one consumer on instead of socket-path (-1: listen on socket-path). The element uses a duplicate")
            .minimum(-1)
            .default_value(-1)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("max-held")
            .nick("Max held buffers per consumer")
            .blurb("Buffers one consumer may hold unreleased; what happens at the limit is slow-policy. Upstream is asked for pools of at least min(max-held, 4) + 1 buffers")
            .minimum(1)
            .maximum(1024)
            .default_value(DEFAULT_MAX_HELD)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("max-held-total")
            .nick("Max held buffers, all consumers")
            .blurb("Buffers all consumers together may hold unreleased (default: twice max-held; 0 = no limit); at the limit frames are skipped for the consumers holding their share of it (block: the producer waits)")
            .maximum(65536)
            .default_value(default_max_held_total(DEFAULT_MAX_HELD))
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder::<SlowPolicyProp>("slow-policy")
            .nick("Slow consumer policy")
            .blurb("What happens to a consumer at max-held, or with max-queued buffers waiting for its socket")
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("max-queued")
            .nick("Max queued buffers per consumer")
            .blurb("Buffers that may wait in the producer for room in one consumer's socket before slow-policy applies; they count as held")
            .maximum(4096)
            .default_value(DEFAULT_MAX_QUEUED)
            .mutable_ready()
            .build(),
        glib::ParamSpecEnum::builder::<SyncMethodProp>("sync-method")
            .nick("Sync method")
            .blurb("Where a consumer that joins starts (auto: latest for raw media, latest-keyframe for encoded media)")
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("register-fds")
            .nick("Register fds once")
            .blurb("Send each memfd or dmabuf to a consumer once, then name it by an id (false: every buffer packet carries its fds)")
            .default_value(true)
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("yield-after-send")
            .nick("Yield after send")
            .blurb("With a live upstream, give up the CPU (sched_yield) after sending each frame, so that a consumer woken on this CPU takes the frame at once")
            .default_value(true)
            .mutable_ready()
            .build(),
        glib::ParamSpecBoolean::builder("wait-for-connection")
            .nick("Wait for connection")
            .blurb("Until the first consumer connects, wait for it (true) or drop frames (false; a frame still waits, bounded, for consumers that are connecting: see the README)")
            .default_value(false)
            .mutable_playing()
            .build(),
        glib::ParamSpecBoolean::builder("forward-messages")
            .nick("Forward consumer messages")
            .blurb("Post consumers' warnings, infos and element messages on this pipeline's bus, naming the consumer; an independent consumer's error comes as a warning and that consumer is disconnected")
            .default_value(true)
            .mutable_playing()
            .build(),
        glib::ParamSpecEnum::builder::<Mode>("mode")
            .nick("State mode")
            .blurb("independent: this pipeline runs its own state; follow: it goes to the PAUSED/PLAYING states of its consumers' pipelines")
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("ack-timeout")
            .nick("Ack timeout (ms)")
            .blurb("How long, in ms, a caps or accept-caps query waits for the consumers' answers; a consumer that does not answer in time is left out")
            .minimum(1)
            .default_value(DEFAULT_ACK_TIMEOUT_MS)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("max-clients")
            .nick("Max clients")
            .blurb("Connections served at once (0 = no limit); one more is refused at accept, with an error naming this property")
            .default_value(DEFAULT_MAX_CLIENTS)
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("num-clients")
            .nick("Number of clients")
            .blurb("Consumers connected now (handshake done)")
            .read_only()
            .build(),
        glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
            .nick("Statistics")
            .blurb("Frame, copy, release and fd counters, and one structure per consumer in clients (see the README)")
            .read_only()
            .build(),
    ];
    properties.push(crate::stats_interval::param_spec());
    properties.extend(peer_access::peer_properties("consumer"));
    properties.extend(peer_access::socket_properties());
    properties
}
