use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use crate::clock;
use crate::control;

use super::link::{Inbound, Leaky, Link, LinkPeer, QueueCounters, QueueLimit};
use crate::memory::Importer;
use crate::session::{self, BusWatch, Mode, Reposted};
use crate::wire_event::{self, WireEvent};
use fdlink::protocol::{self, Hello, MAX_PACKET_SIZE, Packet, Role, TIME_NONE};
use fdlink::transport::{Connection, TransportError, Waker};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "fdlinksrc",
        gst::DebugColorFlags::empty(),
        Some("fdlink consumer: receives buffers from another process"),
    )
});

const DEFAULT_TIMEOUT_MS: u32 = 10_000;
const DEFAULT_RETRY_TIMEOUT_MS: u32 = 10_000;
/// As fdlinksink's default max-held: with default settings the producer never sends more.
const DEFAULT_MAX_QUEUED: u32 = 8;
/// The first wait between reconnect attempts; it doubles up to RECONNECT_BACKOFF_MAX.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(500);
const DEFAULT_ACK_TIMEOUT_MS: u32 = 5_000;
/// Default `link-latency`: what the link adds to the producer's latency (the handoff itself
/// takes microseconds; this covers scheduling delays of a loaded machine).
const DEFAULT_LINK_LATENCY: u64 = 2_000_000;
/// The producer's timeline moved against ours by more than this: send a new segment.
const RESYNC_THRESHOLD_NS: i128 = 1_000_000;
/// How often a missing producer is looked for again while waiting for it.
const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// How long the producer has to answer our hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a release may wait for room in the socket before it is given up.
const RELEASE_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Latency samples kept for the percentiles in `stats`.
const LATENCY_WINDOW: usize = 1024;

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<String>,
    /// An already-connected socket to the producer, instead of socket-path.
    fd: i32,
    timeout_ms: u32,
    ack_timeout_ms: u32,
    mode: Mode,
    link_latency: u64,
    forward_messages: bool,
    reconnect: bool,
    /// 0: keep trying forever.
    retry_timeout_ms: u32,
    max_queued: u32,
    leaky: Leaky,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_path: None,
            fd: -1,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            ack_timeout_ms: DEFAULT_ACK_TIMEOUT_MS,
            mode: Mode::Independent,
            link_latency: DEFAULT_LINK_LATENCY,
            forward_messages: true,
            reconnect: false,
            retry_timeout_ms: DEFAULT_RETRY_TIMEOUT_MS,
            max_queued: DEFAULT_MAX_QUEUED,
            leaky: Leaky::None,
        }
    }
}

#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started(Box<Stream>),
}

/// The connection and what the streaming thread knows about the producer's stream.
struct Stream {
    /// The socket path, or a description of the inherited fd (for messages).
    path: PathBuf,
    inherited_fd: Option<i32>,
    timeout: Duration,
    reconnect: bool,
    /// None: no limit.
    retry_timeout: Option<Duration>,
    /// Set while looking for a new producer after the last one went away (reconnect=true).
    lost: Option<Lost>,
    /// A new producer took over: its first buffer is DISCONT and its caps go downstream even
    /// if they equal the old ones.
    new_producer: bool,
    queue_limit: QueueLimit,
    link: Option<Arc<Link>>,
    importer: Importer,
    packet: Vec<u8>,
    eos: bool,
    /// The producer's current segment, as it sent it.
    producer_segment: Option<gst::Segment>,
    /// The running-time shift of the segment that went downstream (None: none went since the
    /// last flush or segment). Our running time of a frame is the producer's plus this.
    segment_delta: Option<i128>,
    /// The last shift used, kept across segments: a segment needed before the next buffer
    /// says where the producer is uses it.
    last_delta: Option<i128>,
    /// Caps downstream refused, and when this source asked the producer to renegotiate.
    refused_caps: Option<(gst::Caps, Instant)>,
    /// Serialized events (tags, custom, ...) that came after the producer's segment but
    /// before anything said where the producer is: they go downstream after that segment,
    /// shifted by the next buffer or gap.
    held_events: Vec<gst::Event>,
}

/// The producer went away without EOS, and `reconnect=true`: the reconnect attempts so far.
struct Lost {
    since: Instant,
    /// What happened to the last producer.
    why: String,
    attempts: u32,
    next_attempt: Instant,
    backoff: Duration,
    /// Why the last attempt failed.
    last_failure: String,
}

#[derive(Default)]
struct Stats {
    frames: u64,
    reconnects: u64,
    latencies_us: Vec<u32>,
    next_sample: usize,
    last_us: u32,
    max_us: u32,
    sum_us: u64,
}

#[derive(Default)]
pub struct FdlinkSrc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// Apart from `state`: `unlock()` wakes the streaming thread out of its poll.
    waker: Mutex<Option<Arc<Waker>>>,
    /// Apart from `state`: caps queries must not wait for a blocked streaming thread.
    caps: Mutex<Option<gst::Caps>>,
    stats: Mutex<Stats>,
    /// Releases, frames dropped and copied by the link's queue: kept across reconnects.
    counters: Arc<QueueCounters>,
    link: Mutex<Option<Arc<Link>>>,
    /// Forwards this pipeline's messages to the producer.
    bus_watch: Mutex<Option<BusWatch>>,
    /// The producer's messages this element posted: not sent back.
    reposted: Arc<Reposted>,
    /// The id of the last buffer that left for downstream (what a Prerolled packet names).
    last_output_id: AtomicU64,
    /// The element is PLAYING (see set_link_streaming).
    playing: AtomicBool,
    /// The running-time shift of the segment downstream has (ns, ours minus the
    /// producer's), apart from `state`: QoS events going upstream are moved back by it.
    running_time_shift: AtomicI64,
    /// Set while the producer's stream-start is pushed: the src pad's probe drops any other
    /// (BaseSrc pushes one of its own before the first buffer).
    pushing_producer_stream_start: Arc<AtomicBool>,
    /// A segment this source pushed itself, ahead of BaseSrc's push of the same one before
    /// the next buffer: the src pad's probe drops that copy when it is still equal.
    pushed_segment: Arc<Mutex<Option<gst::Segment>>>,
}

/// What ends `create()` early.
enum Stop {
    Flushing,
    Eos,
    Error(gst::ErrorMessage),
    /// The producer went away without EOS (the connection closed or its socket failed); the
    /// text says how. `receive()` reconnects, or turns it into an error.
    Lost(String),
}

impl From<Stop> for gst::FlowError {
    fn from(s: Stop) -> Self {
        match s {
            Stop::Flushing => gst::FlowError::Flushing,
            Stop::Eos => gst::FlowError::Eos,
            Stop::Error(_) | Stop::Lost(_) => gst::FlowError::Error,
        }
    }
}

impl FdlinkSrc {
    fn waker(&self) -> Option<Arc<Waker>> {
        self.waker.lock().unwrap().clone()
    }

    fn stats_structure(&self) -> gst::Structure {
        let (queued, files_registered) = self.link.lock().unwrap().as_ref().map_or((0, 0), |l| {
            (
                l.queued() as u64,
                l.files_registered.load(Ordering::Relaxed),
            )
        });
        let s = self.stats.lock().unwrap();
        let mut sorted = s.latencies_us.clone();
        sorted.sort_unstable();
        let pct = |p: usize| -> u32 {
            if sorted.is_empty() {
                0
            } else {
                sorted[(sorted.len() - 1) * p / 100]
            }
        };
        gst::Structure::builder("application/x-fdlinksrc-stats")
            .field("frames-received", s.frames)
            .field(
                "releases-sent",
                self.counters.releases.load(Ordering::Relaxed),
            )
            .field("reconnects", s.reconnects)
            .field(
                "frames-dropped",
                self.counters.dropped.load(Ordering::Relaxed),
            )
            .field(
                "frames-copied",
                self.counters.copied.load(Ordering::Relaxed),
            )
            .field("frames-queued", queued)
            .field("files-registered", files_registered)
            .field("latency-last-us", s.last_us)
            .field(
                "latency-avg-us",
                s.sum_us.checked_div(s.frames).unwrap_or(0),
            )
            .field("latency-p50-us", pct(50))
            .field("latency-p99-us", pct(99))
            .field("latency-max-us", s.max_us)
            .build()
    }

    fn record_latency(&self, sent_at: u64) {
        let us =
            (clock::monotonic_now().saturating_sub(sent_at) / 1000).min(u32::MAX as u64) as u32;
        let mut s = self.stats.lock().unwrap();
        s.frames += 1;
        s.last_us = us;
        s.max_us = s.max_us.max(us);
        s.sum_us += us as u64;
        if s.latencies_us.len() < LATENCY_WINDOW {
            s.latencies_us.push(us);
        } else {
            let i = s.next_sample;
            s.latencies_us[i] = us;
        }
        s.next_sample = (s.next_sample + 1) % LATENCY_WINDOW;
    }

    /// Connects (waiting up to `timeout` for a producer to appear) and runs the hello.
    fn connect(&self, stream: &mut Stream, waker: &Waker) -> Result<(Arc<Connection>, u32), Stop> {
        let deadline = Instant::now() + stream.timeout;
        let conn = if let Some(fd) = stream.inherited_fd {
            Connection::inherit(fd)
                .map_err(|e| Stop::Error(gst::error_msg!(gst::ResourceError::OpenRead, ("{e}"))))?
        } else {
            self.connect_path(stream, waker, deadline)?
        };
        self.hello(stream, waker, conn)
    }

    /// Connects to socket-path, waiting up to `timeout` for a producer to appear there.
    fn connect_path(
        &self,
        stream: &Stream,
        waker: &Waker,
        deadline: Instant,
    ) -> Result<Connection, Stop> {
        Ok(loop {
            match Connection::connect(&stream.path) {
                Ok(c) => break c,
                Err(
                    e @ (TransportError::NoSuchPath { .. } | TransportError::NotListening { .. }),
                ) => {
                    if Instant::now() >= deadline {
                        return Err(Stop::Error(gst::error_msg!(
                            gst::ResourceError::OpenRead,
                            (
                                "no fdlink producer at {} after waiting {} ms: {e}",
                                stream.path.display(),
                                stream.timeout.as_millis()
                            )
                        )));
                    }
                    if fdlink::transport::wait_fd(
                        std::os::fd::AsFd::as_fd(waker),
                        nix::poll::PollFlags::POLLIN,
                        CONNECT_RETRY,
                    )
                    .is_ok()
                        && self.is_woken(waker)
                    {
                        return Err(Stop::Flushing);
                    }
                }
                Err(e) => {
                    return Err(Stop::Error(gst::error_msg!(
                        gst::ResourceError::OpenRead,
                        ("cannot connect to {}: {e}", stream.path.display())
                    )));
                }
            }
        })
    }

    /// Runs the hello on a fresh connection; returns it with the producer's pid.
    fn hello(
        &self,
        stream: &mut Stream,
        waker: &Waker,
        conn: Connection,
    ) -> Result<(Arc<Connection>, u32), Stop> {
        let mut hello = Hello::new(Role::Consumer, std::process::id());
        if self.settings.lock().unwrap().mode == Mode::Follow {
            hello.capabilities |= protocol::CAP_FOLLOWS;
        }
        let hello = protocol::encode_hello(&hello);
        conn.send_timeout(&hello, &[], HELLO_TIMEOUT)
            .map_err(|e| self.link_error(&stream.path, "sending hello", e))?;
        let got = match conn.recv_wait(&mut stream.packet, Some(waker), Some(HELLO_TIMEOUT)) {
            Ok(Some(got)) => got,
            Ok(None) => return Err(Stop::Flushing),
            Err(e) => {
                return Err(self.link_error(&stream.path, "waiting for the producer's hello", e));
            }
        };
        let bytes = &stream.packet[..got.len];
        let peer = match protocol::decode_hello(bytes) {
            Ok(h) => h,
            Err(e) => {
                // A producer that refused us says why in an error packet.
                if let Ok(Packet::Error(msg)) = Packet::decode(bytes, got.fds) {
                    return Err(protocol_error(
                        &stream.path,
                        format!("producer refused us: {msg}"),
                    ));
                }
                conn.send_error(&format!("bad hello: {e}"));
                return Err(protocol_error(&stream.path, e.to_string()));
            }
        };
        if peer.role != Role::Producer {
            conn.send_error("peer is not a producer (two fdlinksrcs on one socket?)");
            return Err(protocol_error(
                &stream.path,
                "peer is not a producer".into(),
            ));
        }
        gst::info!(
            CAT,
            imp = self,
            "connected to producer pid {} at {}",
            peer.pid,
            stream.path.display()
        );
        Ok((Arc::new(conn), peer.pid))
    }

    /// Asks the producer's pipeline `query`. None when there is no link (not connected yet, or
    /// gone); Some(false) when the producer could not answer or did not in `ack-timeout`.
    fn ask_producer(&self, query: &mut gst::QueryRef) -> Option<bool> {
        let link = self.link.lock().unwrap().clone()?;
        let timeout = Duration::from_millis(self.settings.lock().unwrap().ack_timeout_ms as u64);
        // The reply may be behind frames in the socket: the reader must read on meanwhile.
        let _awaiting = link.awaiting_reply();
        let id = link.pending.register();
        let packet = Packet::Query(control::query_to_packet(id, query));
        if let Err(e) = link.conn.send_packet(&packet, Some(timeout)) {
            link.pending.forget(id);
            gst::debug!(
                CAT,
                imp = self,
                "cannot send {:?} query: {e}",
                query.type_()
            );
            return Some(false);
        }
        match link.pending.wait(id, timeout) {
            Some(reply) => Some(control::apply_reply(query, &reply)),
            None => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "no answer to {:?} query from the producer within {timeout:?}",
                    query.type_()
                );
                Some(false)
            }
        }
    }

    /// Sends a packet to the producer; false when there is no link or it failed.
    fn send_to_producer(&self, packet: &Packet<std::os::fd::BorrowedFd<'_>>) -> bool {
        let Some(link) = self.link.lock().unwrap().clone() else {
            gst::debug!(CAT, imp = self, "no producer for {packet:?}");
            return false;
        };
        link.conn
            .send_packet(packet, Some(RELEASE_SEND_TIMEOUT))
            .is_ok()
    }

    /// Sends an upstream event to the producer's pipeline; false when there is no link.
    fn tell_producer(&self, event: &gst::Event) -> bool {
        self.send_to_producer(&Packet::UpstreamEvent(control::event_to_packet(
            event,
            |_| {},
        )))
    }

    /// A QoS event from downstream with its timestamp moved back onto the producer's running
    /// time (ours is shifted by the segment we sent, see set_segment).
    fn qos_for_producer(&self, q: &gst::event::Qos) -> gst::Event {
        let (ty, proportion, diff, timestamp) = q.get();
        let shift = self.running_time_shift.load(Ordering::Relaxed) as i128;
        let timestamp = timestamp.map(|t| {
            let theirs = (t.nseconds() as i128 - shift).clamp(0, i64::MAX as i128);
            gst::ClockTime::from_nseconds(theirs as u64)
        });
        gst::event::Qos::builder(ty, proportion, diff)
            .timestamp(timestamp)
            .seqnum(q.event().seqnum())
            .build()
    }

    /// Tells the producer the state this element reached (a producer in mode=follow takes it).
    fn send_state(&self, state: gst::State) {
        let mode = self.settings.lock().unwrap().mode;
        self.send_to_producer(&Packet::State(session::state_packet(state, mode)));
    }

    /// Whether a full queue stops the link's reader: only while PLAYING (see link.rs).
    fn set_link_streaming(&self, streaming: bool) {
        // Under the `link` lock, so a link being opened (open_link) sees the latest value.
        let link = self.link.lock().unwrap();
        self.playing.store(streaming, Ordering::SeqCst);
        if let Some(link) = link.as_ref() {
            link.set_streaming(streaming);
        }
    }

    /// Forwards this pipeline's messages (errors, warnings, infos, element messages, EOS,
    /// latency, buffering, request-state) to the producer.
    fn watch_bus(&self) {
        let weak = self.obj().downgrade();
        let reposted = self.reposted.clone();
        let watch = BusWatch::new(self.obj().upcast_ref(), move |message| {
            let Some(obj) = weak.upgrade() else { return };
            let imp = obj.imp();
            if let Some(p) = session::crossing_packet(message, &reposted, control::forwards) {
                imp.send_to_producer(&Packet::Message(p));
            } else if session::is_pipeline_async_done(obj.upcast_ref(), message) {
                imp.report_prerolled();
            }
        });
        *self.bus_watch.lock().unwrap() = watch;
    }

    /// A State packet from the producer (on the link's reader thread).
    fn on_producer_state(&self, st: protocol::StatePacket) {
        let mode = self.settings.lock().unwrap().mode;
        if !session::follow_peer(self.obj().upcast_ref(), mode, &st) {
            gst::element_imp_error!(
                self,
                gst::CoreError::StateChange,
                ("fdlinksrc mode=follow and the producer's fdlinksink mode=follow: each would follow the other; set one of them to mode=independent")
            );
            return;
        }
        // The producer paused and this pipeline is paused and prerolled already: no
        // ASYNC_DONE follows, so report now.
        let pipeline = session::top_level(self.obj().upcast_ref());
        if st.state == protocol::StatePacket::PAUSED
            && pipeline.current_state() == gst::State::Paused
            && pipeline.pending_state() == gst::State::VoidPending
        {
            self.report_prerolled();
        }
    }

    /// A follower tells the producer its pipeline prerolled (a producer prerolling waits
    /// for its followers).
    fn report_prerolled(&self) {
        if self.settings.lock().unwrap().mode != Mode::Follow {
            return;
        }
        let Some(link) = self.link.lock().unwrap().clone() else {
            return;
        };
        let buffer_id = self.last_output_id.load(Ordering::Relaxed);
        let barriers = link.barriers.load(Ordering::SeqCst);
        gst::debug!(
            CAT,
            imp = self,
            "prerolled at buffer {buffer_id}, after {barriers} preroll barriers"
        );
        let _ = link.conn.send_packet(
            &Packet::Prerolled {
                buffer_id,
                barriers,
            },
            Some(RELEASE_SEND_TIMEOUT),
        );
    }

    /// A follower (mode=follow) at the producer's State packet in stream order: when the
    /// producer paused, what comes next is its preroll frame, which must reach our sinks
    /// once they are paused too (the reader thread set this pipeline to PAUSED
    /// asynchronously), or they would play it and have nothing left to preroll on.
    fn pause_with_producer(
        &self,
        st: &protocol::StatePacket,
        link: &Link,
        waker: &Waker,
    ) -> Result<(), Stop> {
        let mode = self.settings.lock().unwrap().mode;
        if session::follow(mode, st) != session::Follow::Go(gst::State::Paused) {
            return Ok(());
        }
        let deadline = Instant::now() + self.ack_timeout();
        // Only while the producer is still paused: this packet may be an old one, taken
        // after the producer (and so this pipeline) played again.
        while link.producer_state.load(Ordering::SeqCst) == protocol::StatePacket::PAUSED
            && self.obj().current_state() == gst::State::Playing
        {
            if Instant::now() >= deadline {
                gst::warning!(
                    CAT,
                    imp = self,
                    "the producer paused but this pipeline did not within ack-timeout; going on"
                );
                break;
            }
            if self.sleep_unless_woken(waker, Duration::from_millis(5)) {
                return Err(Stop::Flushing);
            }
        }
        Ok(())
    }

    /// A message from the producer's bus (on the link's reader thread).
    fn on_producer_message(&self, m: protocol::MessagePacket, producer_pid: u32) {
        // A new latency is not the application's business but the pipeline's: always posted.
        if !self.settings.lock().unwrap().forward_messages
            && m.message_type != gst::ffi::GST_MESSAGE_LATENCY
        {
            return;
        }
        let who = format!("producer (pid {producer_pid})");
        if !self.reposted.post(self.obj().upcast_ref(), &m, &who) {
            gst::debug!(CAT, imp = self, "dropping unreadable message from {who}");
        }
    }

    fn is_woken(&self, waker: &Waker) -> bool {
        fdlink::transport::poll_many(
            &[(
                std::os::fd::AsFd::as_fd(waker),
                nix::poll::PollFlags::POLLIN,
            )],
            Some(Duration::ZERO),
        )
        .is_ok_and(|r| r[0].contains(nix::poll::PollFlags::POLLIN))
    }

    fn link_error(&self, path: &Path, doing: &str, e: TransportError) -> Stop {
        use nix::errno::Errno;
        if let TransportError::Closed
        | TransportError::Sys {
            errno: Errno::EPIPE | Errno::ECONNRESET,
            ..
        } = e
        {
            return Stop::Lost(format!("{e} while {doing}"));
        }
        Stop::Error(gst::error_msg!(
            gst::ResourceError::Read,
            (
                "fdlink producer at {} failed while {doing}: {e}",
                path.display()
            )
        ))
    }

    /// The producer's segment shifted by `delta`, as BaseSrc's segment: it goes downstream
    /// ahead of the next buffer.
    fn set_segment(&self, stream: &mut Stream, delta: i128) {
        let producer = stream
            .producer_segment
            .clone()
            .unwrap_or_else(|| gst::FormattedSegment::<gst::ClockTime>::new().upcast());
        let segment = shift_segment(&producer, delta);
        gst::debug!(
            CAT,
            imp = self,
            "segment {segment:?} (running time shift {delta} ns)"
        );
        if let Err(e) = self.obj().new_segment(&segment) {
            gst::warning!(CAT, imp = self, "cannot set segment: {e}");
        }
        stream.segment_delta = Some(delta);
        stream.last_delta = Some(delta);
        self.running_time_shift.store(
            delta.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            Ordering::Relaxed,
        );
    }

    /// Events that must follow a segment before any buffer (held ones at EOS, a gap whose
    /// time says nothing): push one now, with the last known shift.
    fn ensure_segment(&self, stream: &mut Stream) {
        if stream.segment_delta.is_none() {
            self.push_segment_now(stream, stream.last_delta.unwrap_or(0));
        }
    }

    /// Sets the segment shifted by `delta` and pushes it at once, ahead of events that must
    /// follow it; BaseSrc's own push of it before the next buffer is then dropped by the pad
    /// probe.
    fn push_segment_now(&self, stream: &mut Stream, delta: i128) {
        self.set_segment(stream, delta);
        // Never drop this push itself, even if it equals an earlier one.
        self.pushed_segment.lock().unwrap().take();
        let segment = self.obj().segment();
        self.obj()
            .src_pad()
            .push_event(gst::event::Segment::new(&segment));
        *self.pushed_segment.lock().unwrap() = Some(segment);
    }

    /// Pushes the events held for want of a shift, after the segment they follow (shifted by
    /// the last shift used if nothing set one since).
    fn release_held_events(&self, stream: &mut Stream) {
        if stream.held_events.is_empty() {
            return;
        }
        self.ensure_segment(stream);
        let obj = self.obj();
        let pad = obj.src_pad();
        for event in stream.held_events.drain(..) {
            pad.push_event(event);
        }
    }

    /// How far our running time is ahead of the producer's, from a buffer's header: both
    /// pipelines' base times on CLOCK_MONOTONIC. A producer without a clock (or prerolling,
    /// so with no base time yet): the frame is due as it arrives. Without a clock here
    /// (prerolling, or a pipeline that runs without one), no shift. A non-live source
    /// (mode=follow) has no latency for its sinks to wait: frames are due `link-latency`
    /// after the producer rendered them.
    /// `base_time` and `pts` are a buffer's (or a gap's: its timestamp and its packet's base
    /// time).
    fn running_time_delta(&self, stream: &Stream, base_time: u64, pts: u64) -> Option<i128> {
        let obj = self.obj();
        let (Some(clock), Some(base)) = (obj.clock(), obj.base_time()) else {
            return Some(stream.segment_delta.unwrap_or(0));
        };
        let later = if obj.is_live() {
            0
        } else {
            self.settings.lock().unwrap().link_latency as i128
        };
        let offset = clock::clock_to_monotonic_offset(&clock);
        let ours = base.nseconds() as i128 + offset;
        if base_time != TIME_NONE {
            return Some(base_time as i128 - ours + later);
        }
        if let Some(d) = stream.segment_delta {
            return Some(d);
        }
        let segment = stream
            .producer_segment
            .as_ref()?
            .downcast_ref::<gst::ClockTime>()?;
        let theirs = segment.to_running_time(gst::ClockTime::from_nseconds(
            (pts != TIME_NONE).then_some(pts)?,
        ))?;
        let now = clock.time().nseconds() as i128 - base.nseconds() as i128;
        Some(now - theirs.nseconds() as i128 + later)
    }

    fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.lock().unwrap().ack_timeout_ms as u64)
    }

    /// Fails once caps downstream refused have waited `ack-timeout` for the producer to offer
    /// others.
    fn check_refused_caps(&self, stream: &Stream) -> Result<(), Stop> {
        let Some((refused, since)) = &stream.refused_caps else {
            return Ok(());
        };
        let waited = since.elapsed();
        if waited <= self.ack_timeout() {
            return Ok(());
        }
        Err(Stop::Error(gst::error_msg!(
            gst::CoreError::Negotiation,
            (
                "downstream does not accept the producer's caps {refused}, and the producer offered no other caps within {} ms of being asked to renegotiate",
                waited.as_millis()
            )
        )))
    }

    /// New caps from the producer: downstream takes them, or the producer is asked to
    /// renegotiate (it asks us for our caps), and frames are dropped until caps we can take
    /// arrive or `ack-timeout` runs out.
    fn take_caps(&self, stream: &mut Stream, caps: gst::Caps) -> Result<(), Stop> {
        if self.caps.lock().unwrap().as_ref() == Some(&caps)
            && stream.refused_caps.is_none()
            && !stream.new_producer
        {
            return Ok(());
        }
        gst::info!(CAT, imp = self, "caps from producer: {caps}");
        let drm = crate::drm_format::describe_caps(&caps);
        if !drm.is_empty() {
            gst::info!(CAT, imp = self, "DMA_DRM format: {drm}");
        }
        let pad = self.obj().src_pad().clone();
        if pad.is_linked() && !pad.peer_query_accept_caps(&caps) {
            if let Some((_, since)) = stream.refused_caps {
                stream.refused_caps = Some((caps, since));
                self.check_refused_caps(stream)?;
            } else {
                gst::info!(
                    CAT,
                    imp = self,
                    "downstream does not accept {caps}: asking the producer to renegotiate"
                );
                stream.refused_caps = Some((caps, Instant::now()));
                self.tell_producer(&gst::event::Reconfigure::new());
            }
            return Ok(());
        }
        stream.refused_caps = None;
        *self.caps.lock().unwrap() = Some(caps.clone());
        if stream.new_producer && pad.current_caps().as_ref() == Some(&caps) {
            // BaseSrc skips caps equal to the current ones; after the new producer's
            // stream-start, downstream still gets its caps event.
            if !pad.push_event(gst::event::Caps::new(&caps)) {
                return Err(Stop::Error(gst::error_msg!(
                    gst::CoreError::Negotiation,
                    ("downstream does not accept the new producer's caps {caps}")
                )));
            }
            return Ok(());
        }
        if self.obj().set_caps(&caps).is_err() {
            return Err(Stop::Error(gst::error_msg!(
                gst::CoreError::Negotiation,
                ("downstream does not accept the producer's caps {caps}")
            )));
        }
        Ok(())
    }

    /// The answer to a latency query: the producer's pipeline latency plus `link-latency`.
    fn latency(&self, query: &mut gst::QueryRef) -> bool {
        let link_latency =
            gst::ClockTime::from_nseconds(self.settings.lock().unwrap().link_latency);
        let mut theirs = gst::query::Latency::new();
        let (min, max) = match self.ask_producer(&mut theirs) {
            Some(true) => {
                let (_, min, max) = theirs.result();
                (min + link_latency, max.map(|m| m + link_latency))
            }
            // Not connected yet (asked again once connected) or no answer: the link's own.
            _ => (link_latency, None),
        };
        gst::debug!(CAT, imp = self, "latency: min {min}, max {max:?}");
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            q.set(self.obj().is_live(), min, max);
        }
        true
    }

    /// Acts on one event packet. Returns Some(stop) when the stream ends here.
    fn handle_event(
        &self,
        stream: &mut Stream,
        p: &protocol::EventPacket,
        base_time: u64,
    ) -> Option<Stop> {
        let ev = match wire_event::decode(p) {
            Ok(ev) => ev,
            Err(e) => {
                gst::warning!(CAT, imp = self, "ignoring event: {e}");
                return None;
            }
        };
        gst::debug!(CAT, imp = self, "event from producer: {ev:?}");
        let obj = self.obj();
        let pad = obj.src_pad();
        match ev {
            WireEvent::Segment(segment) => {
                stream.producer_segment = Some(segment);
                // Shifted onto our timeline when the next buffer tells where the producer is.
                stream.segment_delta = None;
            }
            WireEvent::Eos => {
                if let Some((refused, _)) = &stream.refused_caps {
                    return Some(Stop::Error(gst::error_msg!(
                        gst::CoreError::Negotiation,
                        ("downstream does not accept the producer's caps {refused}, and the stream ended before the producer offered others")
                    )));
                }
                // Held events still go out, before BaseSrc's EOS.
                self.release_held_events(stream);
                stream.eos = true;
                return Some(Stop::Eos);
            }
            WireEvent::FlushStart => {
                // Events held before the flush: sticky ones (tags) stay on the pad across a
                // flush, so they still go out after the next segment; the others are
                // flushed away.
                stream.held_events.retain(|ev| ev.is_sticky());
                let mut flush_start = gst::event::FlushStart::new();
                control::set_seqnum(&mut flush_start, p.seqnum);
                pad.push_event(flush_start);
            }
            WireEvent::FlushStop => {
                // Our running time stays continuous: the new segment's shift takes the
                // producer's reset into account.
                let mut flush_stop = gst::event::FlushStop::new(false);
                control::set_seqnum(&mut flush_stop, p.seqnum);
                pad.push_event(flush_stop);
                stream.producer_segment = None;
                stream.segment_delta = None;
                // After a flush, downstream needs the next segment, even if it equals the
                // one this source pushed itself before.
                self.pushed_segment.lock().unwrap().take();
            }
            WireEvent::Other(ty) => {
                // Everything else is rebuilt as it was sent: stream-start, tags, gaps,
                // protection, custom, stream-group-done, instant-rate-change, ...
                let Some(event) = control::event_from_packet(p) else {
                    gst::debug!(CAT, imp = self, "dropping unreadable {ty:?} event");
                    return None;
                };
                if ty == gst::EventType::StreamStart {
                    self.pushing_producer_stream_start
                        .store(true, Ordering::Release);
                    pad.push_event(event);
                    self.pushing_producer_stream_start
                        .store(false, Ordering::Release);
                    return None;
                }
                if !event.is_serialized() || stream.segment_delta.is_some() {
                    pad.push_event(event);
                    return None;
                }
                // After the producer's segment, before anything said where the producer is.
                let gst::EventView::Gap(gap) = event.view() else {
                    // Tags and the like: they wait for the shift the next buffer gives.
                    stream.held_events.push(event);
                    return None;
                };
                // A gap says where the producer is itself, as a buffer's PTS would, and must
                // not wait for a buffer (it is what lets downstream preroll without one).
                let (timestamp, _) = gap.get();
                let delta = self
                    .running_time_delta(stream, base_time, timestamp.nseconds())
                    .or(stream.last_delta)
                    .unwrap_or(0);
                self.push_segment_now(stream, delta);
                self.release_held_events(stream);
                pad.push_event(event);
            }
        }
        None
    }

    /// The next buffer; a producer that went away is reconnected to (reconnect=true) or is an
    /// error.
    fn receive(&self, stream: &mut Stream, waker: &Waker) -> Result<gst::Buffer, Stop> {
        loop {
            match self.receive_from_producer(stream, waker) {
                Err(Stop::Lost(why)) => self.producer_lost(stream, why)?,
                other => return other,
            }
        }
    }

    /// The producer went away without EOS: lets go of its connection, and starts looking for
    /// a new producer (reconnect=true) or fails.
    fn producer_lost(&self, stream: &mut Stream, why: String) -> Result<(), Stop> {
        // Not under the `link` lock: see stop().
        let link = self.link.lock().unwrap().take();
        if let Some(link) = link {
            link.shutdown();
        }
        // The last reference to the connection goes with the link (and its queued packets'
        // fds with it): buffers still downstream hold only a Weak, so their releases become
        // no-ops and never reach the next producer.
        stream.link = None;
        if !stream.reconnect {
            return Err(Stop::Error(gst::error_msg!(
                gst::ResourceError::Read,
                (
                    "producer disconnected from {} without EOS ({why}); reconnect=false, so this stream ends here",
                    stream.path.display()
                )
            )));
        }
        if let Some(lost) = &mut stream.lost {
            // A producer that went away during the hello of a reconnect: keep trying.
            gst::info!(CAT, imp = self, "reconnect attempt failed: {why}");
            lost.last_failure = why;
            return Ok(());
        }
        gst::warning!(
            CAT,
            imp = self,
            "producer at {} went away without EOS ({why}): reconnecting",
            stream.path.display()
        );
        let now = Instant::now();
        stream.lost = Some(Lost {
            since: now,
            why: why.clone(),
            attempts: 0,
            next_attempt: now,
            backoff: RECONNECT_BACKOFF_MIN,
            last_failure: why.clone(),
        });
        // What the next producer says replaces all of this.
        stream.producer_segment = None;
        stream.segment_delta = None;
        stream.last_delta = None;
        stream.refused_caps = None;
        stream.held_events.clear();
        let s = gst::Structure::builder("fdlink-disconnected")
            .field("socket-path", stream.path.display().to_string())
            .field("reason", why)
            .build();
        self.post_local_message(s);
        Ok(())
    }

    /// Posts an element message for this pipeline's application only: the bus watch does
    /// not forward it to the producer.
    fn post_local_message(&self, s: gst::Structure) {
        let msg = gst::message::Element::builder(s).src(&*self.obj()).build();
        self.reposted.remember(msg.seqnum());
        let _ = self.obj().post_message(msg);
    }

    /// Waits until `wait` passed; true when `unlock()` woke us first.
    fn sleep_unless_woken(&self, waker: &Waker, wait: Duration) -> bool {
        fdlink::transport::wait_fd(
            std::os::fd::AsFd::as_fd(waker),
            nix::poll::PollFlags::POLLIN,
            wait,
        )
        .is_ok()
            && self.is_woken(waker)
    }

    /// Connects to socket-path again after the producer went away, with backoff, until
    /// `retry-timeout` passes; runs the hello.
    fn reconnect(
        &self,
        stream: &mut Stream,
        waker: &Waker,
    ) -> Result<(Arc<Connection>, u32), Stop> {
        loop {
            let Some(lost) = stream.lost.as_mut() else {
                unreachable!("reconnect() runs only while a producer is lost");
            };
            let now = Instant::now();
            let deadline = stream.retry_timeout.map(|t| lost.since + t);
            if let Some(deadline) = deadline
                && now >= deadline
            {
                return Err(Stop::Error(gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    (
                        "fdlink producer at {} went away without EOS ({}) and no producer came back within retry-timeout={} ms ({} connection attempts; the last one: {})",
                        stream.path.display(),
                        lost.why,
                        stream.retry_timeout.unwrap_or_default().as_millis(),
                        lost.attempts,
                        lost.last_failure
                    )
                )));
            }
            let next = deadline.map_or(lost.next_attempt, |d| d.min(lost.next_attempt));
            if next > now {
                if self.sleep_unless_woken(waker, next - now) {
                    return Err(Stop::Flushing);
                }
                continue;
            }
            lost.attempts += 1;
            lost.next_attempt = now + lost.backoff;
            lost.backoff = (lost.backoff * 2).min(RECONNECT_BACKOFF_MAX);
            match Connection::connect(&stream.path) {
                Ok(conn) => return self.hello(stream, waker, conn),
                Err(
                    e @ (TransportError::NoSuchPath { .. } | TransportError::NotListening { .. }),
                ) => {
                    gst::trace!(CAT, imp = self, "attempt {}: {e}", lost.attempts);
                    lost.last_failure = e.to_string();
                }
                Err(e) => {
                    return Err(Stop::Error(gst::error_msg!(
                        gst::ResourceError::OpenRead,
                        (
                            "cannot reconnect to {} after the producer went away: {e}",
                            stream.path.display()
                        )
                    )));
                }
            }
        }
    }

    /// Connects (the first time, or again after the producer went away) and starts the
    /// reader.
    fn open_link(&self, stream: &mut Stream, waker: &Waker) -> Result<Arc<Link>, Stop> {
        let (conn, producer_pid) = if stream.lost.is_some() {
            self.reconnect(stream, waker)?
        } else {
            self.connect(stream, waker)?
        };
        let peer = ProducerPeer {
            obj: self.obj().downgrade(),
            producer_pid,
        };
        let link = Link::start(conn, peer, stream.queue_limit, self.counters.clone())
            .map_err(|e| self.link_error(&stream.path, "starting the reader", e))?;
        stream.link = Some(link.clone());
        if let Some(lost) = stream.lost.take() {
            stream.new_producer = true;
            let reconnects = {
                let mut stats = self.stats.lock().unwrap();
                stats.reconnects += 1;
                stats.reconnects
            };
            let down = lost.since.elapsed();
            gst::info!(
                CAT,
                imp = self,
                "reconnected to producer pid {producer_pid} at {} after {} attempts, {} ms",
                stream.path.display(),
                lost.attempts,
                down.as_millis()
            );
            let s = gst::Structure::builder("fdlink-reconnected")
                .field("socket-path", stream.path.display().to_string())
                .field("attempts", lost.attempts)
                .field("downtime-ms", down.as_millis() as u64)
                .field("reconnects", reconnects)
                .field("producer-pid", producer_pid)
                .build();
            self.post_local_message(s);
        }
        {
            // A follower (not live) connects in PAUSED, where a full queue must not stop
            // the reader; a live source, only once PLAYING.
            let mut slot = self.link.lock().unwrap();
            link.set_streaming(self.playing.load(Ordering::SeqCst));
            *slot = Some(link.clone());
        }
        // The producer learns where we are (it may follow us), and this pipeline asks for its
        // latency again, now that the producer can answer.
        self.send_state(self.obj().current_state());
        let _ = self
            .obj()
            .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
        Ok(link)
    }

    /// A received frame (imported, or copied by the reader) with the producer's timestamps,
    /// after the segment it needs; None when it is dropped because downstream refused the
    /// caps.
    fn output_buffer(
        &self,
        stream: &mut Stream,
        header: &protocol::BufferHeader,
        mut buffer: gst::Buffer,
    ) -> Result<Option<gst::Buffer>, Stop> {
        self.record_latency(header.sent_at);
        if stream.refused_caps.is_some() {
            // Dropped (and so released): downstream cannot take it.
            self.check_refused_caps(stream)?;
            return Ok(None);
        }
        self.last_output_id
            .store(header.buffer_id, Ordering::Relaxed);
        let time = |t: u64| (t != TIME_NONE).then(|| gst::ClockTime::from_nseconds(t));
        {
            let b = buffer.get_mut().expect("fresh buffer");
            b.set_pts(time(header.pts));
            b.set_dts(time(header.dts));
            b.set_duration(time(header.duration));
            if stream.new_producer {
                // Another producer's stream: nothing continues from the last one. (BaseSrc
                // marks the buffer after a new segment DISCONT too, but no segment goes out
                // when the pipeline has no clock.)
                b.set_flags(gst::BufferFlags::DISCONT);
                stream.new_producer = false;
            }
        }
        if let Some(delta) = self.running_time_delta(stream, header.base_time, header.pts)
            && stream
                .segment_delta
                .is_none_or(|d| (d - delta).abs() > RESYNC_THRESHOLD_NS)
        {
            if stream.held_events.is_empty() {
                // BaseSrc pushes it ahead of this buffer.
                self.set_segment(stream, delta);
            } else {
                // Held events go between the segment and this buffer.
                self.push_segment_now(stream, delta);
            }
        }
        self.release_held_events(stream);
        Ok(Some(buffer))
    }

    fn receive_from_producer(
        &self,
        stream: &mut Stream,
        waker: &Waker,
    ) -> Result<gst::Buffer, Stop> {
        let link = match &stream.link {
            Some(l) => l.clone(),
            None => self.open_link(stream, waker)?,
        };
        let conn = link.conn.clone();
        loop {
            // While downstream refuses the producer's caps, waiting ends at ack-timeout even
            // if the producer sends nothing more.
            let deadline = stream
                .refused_caps
                .as_ref()
                .map(|(_, since)| *since + self.ack_timeout() + Duration::from_millis(1));
            let packet = match link.next(deadline) {
                None => return Err(Stop::Flushing),
                Some(Inbound::TimedOut) => {
                    self.check_refused_caps(stream)?;
                    continue;
                }
                Some(Inbound::Packet(p)) => p,
                Some(Inbound::Copied(header, buffer)) => {
                    if let Some(buffer) = self.output_buffer(stream, &header, buffer)? {
                        return Ok(buffer);
                    }
                    continue;
                }
                Some(Inbound::Closed) if stream.eos => return Err(Stop::Eos),
                Some(Inbound::Closed) => return Err(Stop::Lost("connection closed".into())),
                Some(Inbound::Lost(why)) => return Err(Stop::Lost(why)),
                Some(Inbound::Failed(why)) => return Err(protocol_error(&stream.path, why)),
            };
            match packet {
                Packet::Caps(s) => {
                    let caps = s.parse::<gst::Caps>().map_err(|_| {
                        let msg = format!("unparsable caps {s:?}");
                        conn.send_error(&msg);
                        protocol_error(&stream.path, msg)
                    })?;
                    self.take_caps(stream, caps)?;
                }
                Packet::Event {
                    event: ev,
                    base_time,
                } => {
                    if let Some(stop) = self.handle_event(stream, &ev, base_time) {
                        return Err(stop);
                    }
                }
                Packet::Buffer(header, fds) => {
                    let buffer_id = header.buffer_id;
                    let token = link.release_tokens.issue(buffer_id);
                    let buffer = match stream.importer.import(&header, fds, Some(&token)) {
                        Ok(b) => b,
                        Err(e) => {
                            let msg = format!("invalid buffer {buffer_id}: {e}");
                            conn.send_error(&msg);
                            return Err(protocol_error(&stream.path, msg));
                        }
                    };
                    drop(token);
                    if let Some(buffer) = self.output_buffer(stream, &header, buffer)? {
                        return Ok(buffer);
                    }
                }
                Packet::Error(msg) => {
                    return Err(Stop::Error(gst::error_msg!(
                        gst::ResourceError::Read,
                        (
                            "producer at {} reported an error: {msg}",
                            stream.path.display()
                        )
                    )));
                }
                Packet::State(st) => self.pause_with_producer(&st, &link, waker)?,
                Packet::QueryReply(_)
                | Packet::Query(_)
                | Packet::Message(_)
                | Packet::Retire { .. } => {
                    unreachable!("the link's reader takes queries, replies, messages and retires")
                }
                Packet::Release { .. } | Packet::UpstreamEvent(_) | Packet::Prerolled { .. } => {
                    let msg = "producer sent a consumer-only packet (release, upstream event or prerolled)"
                        .to_string();
                    conn.send_error(&msg);
                    return Err(protocol_error(&stream.path, msg));
                }
            }
        }
    }
}

/// The producer's side of the link as the reader thread sees it.
struct ProducerPeer {
    obj: glib::WeakRef<super::FdlinkSrc>,
    producer_pid: u32,
}

impl LinkPeer for ProducerPeer {
    /// Answers by asking this pipeline downstream of the source (caps, accept-caps, ...).
    fn answer(&self, q: &protocol::QueryPacket) -> protocol::QueryReplyPacket {
        let answer =
            self.obj
                .upgrade()
                .zip(control::query_from_packet(q))
                .map(|(obj, mut query)| {
                    let answered = obj.src_pad().peer_query(query.get_mut().unwrap());
                    (answered, query)
                });
        match answer {
            Some((answered, query)) => protocol::QueryReplyPacket {
                id: q.id,
                answered,
                structure: query
                    .structure()
                    .map_or_else(String::new, |s| s.to_string()),
            },
            None => protocol::QueryReplyPacket {
                id: q.id,
                answered: false,
                structure: String::new(),
            },
        }
    }

    fn state(&self, state: protocol::StatePacket) {
        if let Some(obj) = self.obj.upgrade() {
            obj.imp().on_producer_state(state);
        }
    }

    fn message(&self, message: protocol::MessagePacket) {
        if let Some(obj) = self.obj.upgrade() {
            obj.imp().on_producer_message(message, self.producer_pid);
        }
    }
}

/// `segment` with every running time moved by `delta` ns, stream times unchanged (so position
/// queries downstream see the producer's positions). A negative shift past the segment's base
/// moves its start (rate > 0) or stop (rate < 0) instead, and its time with the start.
fn shift_segment(segment: &gst::Segment, delta: i128) -> gst::Segment {
    let Some(seg) = segment.downcast_ref::<gst::ClockTime>() else {
        return segment.clone();
    };
    let mut out = seg.clone();
    let base = seg.base().map_or(0, |b| b.nseconds()) as i128;
    let shifted = base + delta;
    if shifted >= 0 {
        out.set_base(gst::ClockTime::from_nseconds(
            u64::try_from(shifted).unwrap_or(u64::MAX - 1),
        ));
        return out.upcast();
    }
    out.set_base(gst::ClockTime::ZERO);
    // What remains to take off, in stream time units.
    let cut = ((-shifted) as f64 * seg.rate().abs()) as u64;
    if seg.rate() > 0.0 {
        let start = seg.start().map_or(0, |s| s.nseconds()).saturating_add(cut);
        out.set_start(gst::ClockTime::from_nseconds(start.min(u64::MAX - 1)));
        if let Some(time) = seg.time() {
            out.set_time(time.saturating_add(gst::ClockTime::from_nseconds(cut)));
        }
        if let Some(pos) = seg.position() {
            out.set_position(pos.max(out.start().unwrap_or(pos)));
        }
    } else if let Some(stop) = seg.stop() {
        out.set_stop(stop.saturating_sub(gst::ClockTime::from_nseconds(cut)));
    }
    out.upcast()
}

fn protocol_error(path: &Path, what: String) -> Stop {
    Stop::Error(gst::error_msg!(
        gst::StreamError::Decode,
        (
            "protocol error from fdlink producer at {}: {what}",
            path.display()
        )
    ))
}

#[glib::object_subclass]
impl ObjectSubclass for FdlinkSrc {
    const NAME: &'static str = "GstFdlinkSrc";
    type Type = super::FdlinkSrc;
    type ParentType = gst_base::PushSrc;
}

impl ObjectImpl for FdlinkSrc {
    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_live(true);
        obj.set_format(gst::Format::Time);
        obj.set_do_timestamp(false);
        // The producer ends the stream: a segment stop is its business.
        obj.set_automatic_eos(false);
        // BaseSrc starts each stream with a stream-start of its own, which downstream would
        // see right before the producer's: only the producer's goes out. (The dropped one
        // stays on the pad as sticky until the producer's replaces it, marked as sent.)
        // A segment this source had to push itself (to put events after it before the next
        // buffer) is pushed again by BaseSrc before that buffer: that copy is dropped too.
        let producer_stream_start = self.pushing_producer_stream_start.clone();
        let pushed_segment = self.pushed_segment.clone();
        obj.src_pad()
            .add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                // Handled, not Drop: with Drop, GStreamer 1.22 unrefs the event gstreamer-rs
                // already let go of (a CRITICAL on every start).
                match info.event().map(|ev| ev.view()) {
                    Some(gst::EventView::StreamStart(_))
                        if !producer_stream_start.load(Ordering::Acquire) =>
                    {
                        gst::PadProbeReturn::Handled
                    }
                    Some(gst::EventView::Segment(ev)) => {
                        let pushed = pushed_segment.lock().unwrap().take();
                        if pushed.as_ref() == Some(ev.segment()) {
                            gst::PadProbeReturn::Handled
                        } else {
                            gst::PadProbeReturn::Ok
                        }
                    }
                    _ => gst::PadProbeReturn::Ok,
                }
            });
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("Path of the AF_UNIX socket an fdlinksink listens on")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("fd")
                    .nick("Inherited socket")
                    .blurb("An already-connected AF_UNIX SOCK_SEQPACKET socket to the producer (e.g. one end of a socketpair a launcher made) instead of socket-path; -1: connect to socket-path. The element works on a duplicate; the fd stays the caller's")
                    .minimum(-1)
                    .default_value(-1)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("timeout")
                    .nick("Timeout (ms)")
                    .blurb("How long to wait for a producer to appear at socket-path before failing (0 = try once)")
                    .default_value(DEFAULT_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("ack-timeout")
                    .nick("Ack timeout (ms)")
                    .blurb("How long a query answered across the link (position, duration, seeking, ...) waits for the producer's reply before it fails")
                    .minimum(1)
                    .default_value(DEFAULT_ACK_TIMEOUT_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder::<Mode>("mode")
                    .nick("State mode")
                    .blurb("independent: this pipeline runs its own state; follow: this (consumer) pipeline goes to the PAUSED/PLAYING state of the producer pipeline (it must reach PLAYING once to connect)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("link-latency")
                    .nick("Link latency (ns)")
                    .blurb("Latency the link adds to the producer pipeline's own in latency queries: frames are rendered this long after the producer's sink would render them")
                    .default_value(DEFAULT_LINK_LATENCY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("forward-messages")
                    .nick("Forward producer messages")
                    .blurb("Post the errors, warnings, infos and element messages of the producer pipeline on this pipeline's bus, naming the producer and the original source")
                    .default_value(true)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("reconnect")
                    .nick("Reconnect")
                    .blurb("When the producer goes away without EOS, keep this pipeline running and connect to socket-path again (every 10 ms at first, backing off to every 500 ms) until a producer is back or retry-timeout passes; the new producer's stream-start, caps and segment follow, and its first buffer is DISCONT. Posts element messages fdlink-disconnected and fdlink-reconnected. Needs socket-path (not fd). false: the producer going away without EOS is an error")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("retry-timeout")
                    .nick("Retry timeout (ms)")
                    .blurb("With reconnect=true: how long after the producer went away to keep looking for a new one before failing (0 = forever)")
                    .default_value(DEFAULT_RETRY_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-queued")
                    .nick("Max queued frames")
                    .blurb("Frames received and not yet pushed downstream that may pin the producer's buffers; what happens to one more is leaky")
                    .minimum(1)
                    .maximum(1024)
                    .default_value(DEFAULT_MAX_QUEUED)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder::<Leaky>("leaky")
                    .nick("Leaky")
                    .blurb("With max-queued frames queued, while PLAYING: none: stop reading the socket until downstream takes one (the producer's slow-policy applies; its queries, messages and states wait behind the frames); oldest: drop the oldest queued frame, releasing it to the producer (frames-dropped); copy: copy the oldest into system memory and release the original at once (frames-copied), holding up to max-queued copies besides, then as none")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames-received (pushed downstream), releases-sent, reconnects, frames-dropped and frames-copied (by leaky), frames-queued (now), files-registered (files the producer registered with this consumer now: register-once fds), latency-{last,avg,p50,p99,max}-us (producer send to the frame leaving create(), time queued here included, over the last 1024 frames for percentiles)")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => settings.socket_path = value.get().expect("type checked upstream"),
            "fd" => settings.fd = value.get().expect("type checked upstream"),
            "timeout" => settings.timeout_ms = value.get().expect("type checked upstream"),
            "ack-timeout" => settings.ack_timeout_ms = value.get().expect("type checked upstream"),
            "mode" => settings.mode = value.get().expect("type checked upstream"),
            "link-latency" => settings.link_latency = value.get().expect("type checked upstream"),
            "forward-messages" => {
                settings.forward_messages = value.get().expect("type checked upstream")
            }
            "reconnect" => settings.reconnect = value.get().expect("type checked upstream"),
            "retry-timeout" => {
                settings.retry_timeout_ms = value.get().expect("type checked upstream")
            }
            "max-queued" => settings.max_queued = value.get().expect("type checked upstream"),
            "leaky" => settings.leaky = value.get().expect("type checked upstream"),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "socket-path" => self.settings.lock().unwrap().socket_path.to_value(),
            "fd" => self.settings.lock().unwrap().fd.to_value(),
            "timeout" => self.settings.lock().unwrap().timeout_ms.to_value(),
            "ack-timeout" => self.settings.lock().unwrap().ack_timeout_ms.to_value(),
            "mode" => self.settings.lock().unwrap().mode.to_value(),
            "link-latency" => self.settings.lock().unwrap().link_latency.to_value(),
            "forward-messages" => self.settings.lock().unwrap().forward_messages.to_value(),
            "reconnect" => self.settings.lock().unwrap().reconnect.to_value(),
            "retry-timeout" => self.settings.lock().unwrap().retry_timeout_ms.to_value(),
            "max-queued" => self.settings.lock().unwrap().max_queued.to_value(),
            "leaky" => self.settings.lock().unwrap().leaky.to_value(),
            "stats" => self.stats_structure().to_value(),
            _ => unimplemented!(),
        }
    }
}

impl GstObjectImpl for FdlinkSrc {}

impl ElementImpl for FdlinkSrc {
    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady {
            self.watch_bus();
        }
        if transition == gst::StateChange::ReadyToPaused {
            // A follower prerolls with the producer: it streams from PAUSED on, so its
            // sinks preroll on the producer's preroll frame.
            let follows = self.settings.lock().unwrap().mode == Mode::Follow;
            self.obj().set_live(!follows);
        }
        let result = self.parent_change_state(transition);
        if transition == gst::StateChange::ReadyToNull || result.is_err() {
            *self.bus_watch.lock().unwrap() = None;
        }
        if result.is_ok() {
            match transition {
                gst::StateChange::PlayingToPaused => {
                    self.set_link_streaming(false);
                    self.send_state(session::destination(self.obj().upcast_ref()))
                }
                gst::StateChange::PausedToPlaying => {
                    self.set_link_streaming(true);
                    self.send_state(gst::State::Playing)
                }
                _ => {}
            }
        }
        result
    }

    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "fdlink source",
                "Source/Network",
                "Receives buffers zero-copy from an fdlinksink in another process (memfd and dmabuf over SCM_RIGHTS)",
                "fdlink developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &gst::Caps::new_any(),
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for FdlinkSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let inherited_fd = (settings.fd >= 0).then_some(settings.fd);
        let path = match (&settings.socket_path, inherited_fd) {
            (_, Some(fd)) => PathBuf::from(format!("inherited fd {fd}")),
            (Some(p), None) => PathBuf::from(p),
            (None, None) => {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("socket-path is not set (nor fd)")
                ));
            }
        };
        if settings.reconnect
            && let Some(fd) = inherited_fd
        {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ("reconnect=true needs socket-path: an inherited socket (fd={fd}) cannot be connected again; unset fd or reconnect")
            ));
        }
        let waker =
            Waker::new().map_err(|e| gst::error_msg!(gst::ResourceError::Failed, ("{e}")))?;
        *self.waker.lock().unwrap() = Some(Arc::new(waker));
        *self.caps.lock().unwrap() = None;
        *self.stats.lock().unwrap() = Stats::default();
        for counter in [
            &*self.counters.releases,
            &self.counters.dropped,
            &self.counters.copied,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        *self.state.lock().unwrap() = State::Started(Box::new(Stream {
            path,
            inherited_fd,
            timeout: Duration::from_millis(settings.timeout_ms as u64),
            reconnect: settings.reconnect,
            retry_timeout: (settings.retry_timeout_ms > 0)
                .then(|| Duration::from_millis(settings.retry_timeout_ms as u64)),
            lost: None,
            new_producer: false,
            queue_limit: QueueLimit {
                max_queued: settings.max_queued as usize,
                leaky: settings.leaky,
            },
            link: None,
            importer: Importer::default(),
            packet: vec![0u8; MAX_PACKET_SIZE],
            eos: false,
            producer_segment: None,
            segment_delta: None,
            last_delta: None,
            refused_caps: None,
            held_events: Vec::new(),
        }));
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Dropping the connection makes later releases no-ops: the producer frees everything
        // this consumer held when it sees the socket close.
        // Not under the `link` lock: the reader thread being joined may be posting a message,
        // and the bus watch takes that lock to forward it.
        let link = self.link.lock().unwrap().take();
        if let Some(link) = link {
            link.shutdown();
        }
        *self.state.lock().unwrap() = State::Stopped;
        *self.waker.lock().unwrap() = None;
        Ok(())
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let caps = self
            .caps
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(gst::Caps::new_any);
        Some(match filter {
            Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
            None => caps,
        })
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        use gst::QueryViewMut::*;
        let across = matches!(
            query.view_mut(),
            Position(_)
                | Duration(_)
                | Seeking(_)
                | Segment(_)
                | Convert(_)
                | Formats(_)
                | Uri(_)
                | Custom(_)
        );
        if across && let Some(answered) = self.ask_producer(query) {
            return answered;
        }
        if query.type_() == gst::QueryType::Latency {
            return self.latency(query);
        }
        BaseSrcImplExt::parent_query(self, query)
    }

    fn event(&self, event: &gst::Event) -> bool {
        use gst::EventView::*;
        match event.view() {
            // Upstream events for the producer's pipeline: a seek here seeks the producer.
            Qos(q) => self.tell_producer(&self.qos_for_producer(q)),
            Seek(_) | Navigation(_) | Step(_) | CustomUpstream(_) => self.tell_producer(event),
            // Caps come from the producer only: renegotiation happens there, and it asks our
            // downstream for caps across the link.
            Reconfigure(_) => self.tell_producer(event),
            _ => self.parent_event(event),
        }
    }

    fn negotiate(&self) -> Result<(), gst::LoggableError> {
        // Caps are set when the producer sends them (take_caps), never picked here.
        Ok(())
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(w) = self.waker() {
            w.wake();
        }
        if let Some(link) = self.link.lock().unwrap().as_ref() {
            link.set_flushing(true);
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(w) = self.waker() {
            w.reset();
        }
        if let Some(link) = self.link.lock().unwrap().as_ref() {
            link.set_flushing(false);
        }
        Ok(())
    }
}

impl PushSrcImpl for FdlinkSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        let Some(waker) = self.waker() else {
            return Err(gst::FlowError::Flushing);
        };
        let mut state = self.state.lock().unwrap();
        let State::Started(stream) = &mut *state else {
            return Err(gst::FlowError::Flushing);
        };
        match self.receive(stream, &waker) {
            Ok(buffer) => Ok(CreateSuccess::NewBuffer(buffer)),
            Err(Stop::Error(msg)) => {
                self.post_error_message(msg);
                Err(gst::FlowError::Error)
            }
            Err(Stop::Lost(why)) => {
                // receive() reconnects or makes an error of it; this is only a safety net.
                self.post_error_message(gst::error_msg!(
                    gst::ResourceError::Read,
                    ("producer disconnected without EOS ({why})")
                ));
                Err(gst::FlowError::Error)
            }
            Err(stop) => {
                if matches!(stop, Stop::Eos) {
                    gst::info!(CAT, imp = self, "producer sent EOS");
                }
                Err(stop.into())
            }
        }
    }
}
