//! The fdlinksrc element: settings, state, properties, and the BaseSrc/PushSrc virtual
//! methods. What they call lives beside it: `connection.rs` (connect, hello, reconnect),
//! `stream.rs` (packets into buffers and events), `timeline.rs` (the segment shift),
//! `peer.rs` (queries, upstream events, messages and states across the link), `stats.rs` and
//! `link.rs` (the reader thread and its inbox).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use super::connection::Connector;
use super::link::{Leaky, Link, QueueCounters, QueueLimit};
use super::stats::Stats;
use super::stream::Stream;
use crate::peer_access::{self, Access};
use crate::session::{self, BusWatch, Mode, Reposted};
use fdlink::transport::Waker;

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
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
const DEFAULT_ACK_TIMEOUT_MS: u32 = 5_000;
/// Default `link-latency`: what the link adds to the producer's latency (the handoff itself
/// takes microseconds; this covers scheduling delays of a loaded machine).
const DEFAULT_LINK_LATENCY: u64 = 2_000_000;

#[derive(Debug, Clone)]
pub(super) struct Settings {
    socket_path: Option<String>,
    /// An already-connected socket to the producer, instead of socket-path.
    fd: i32,
    timeout_ms: u32,
    ack_timeout_ms: u32,
    pub(super) mode: Mode,
    pub(super) link_latency: u64,
    pub(super) forward_messages: bool,
    reconnect: bool,
    /// 0: keep trying forever.
    retry_timeout_ms: u32,
    max_queued: u32,
    leaky: Leaky,
    /// allowed-uids, allowed-gids.
    access: Access,
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
            access: Access::default(),
        }
    }
}

#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started(Box<Stream>),
}

#[derive(Default)]
pub struct FdlinkSrc {
    pub(super) settings: Mutex<Settings>,
    state: Mutex<State>,
    /// Apart from `state`: `unlock()` wakes the streaming thread out of its poll.
    waker: Mutex<Option<Arc<Waker>>>,
    /// Apart from `state`: caps queries must not wait for a blocked streaming thread.
    pub(super) caps: Mutex<Option<gst::Caps>>,
    pub(super) stats: Mutex<Stats>,
    /// Releases, frames dropped and copied by the link's queue: kept across reconnects.
    pub(super) counters: Arc<QueueCounters>,
    pub(super) link: Mutex<Option<Arc<Link>>>,
    /// Forwards this pipeline's messages to the producer.
    pub(super) bus_watch: Mutex<Option<BusWatch>>,
    /// The producer's messages this element posted: not sent back.
    pub(super) reposted: Arc<Reposted>,
    /// The id of the last buffer that left for downstream (what a Prerolled packet names).
    pub(super) last_output_id: AtomicU64,
    /// The element is PLAYING (see set_link_streaming).
    pub(super) playing: AtomicBool,
    /// The running-time shift of the segment downstream has (ns, ours minus the
    /// producer's), apart from `state`: QoS events going upstream are moved back by it.
    pub(super) running_time_shift: AtomicI64,
    /// Set while the producer's stream-start is pushed: the src pad's probe drops any other
    /// (BaseSrc pushes one of its own before the first buffer).
    pub(super) pushing_producer_stream_start: Arc<AtomicBool>,
    /// A segment this source pushed itself, ahead of BaseSrc's push of the same one before
    /// the next buffer: the src pad's probe drops that copy when it is still equal.
    pub(super) pushed_segment: Arc<Mutex<Option<gst::Segment>>>,
    /// What the buffer `create()` returned last must leave with (see `OutputStamp`): the src
    /// pad's probe puts it back on the buffer.
    pub(super) output_stamp: Arc<Mutex<Option<super::stream::OutputStamp>>>,
    /// The producer's segment when it is not in TIME (BaseSrc's format, fixed once started):
    /// the src pad's probe puts it in place of BaseSrc's next TIME segment, and drops the
    /// TIME segments after it.
    pub(super) foreign_segment: Arc<Mutex<super::stream::ForeignSegment>>,
    /// Posts the stats as element messages while started (`stats-interval`).
    stats_interval: crate::stats_interval::StatsInterval,
}

/// What ends `create()` early.
pub(super) enum Stop {
    Flushing,
    /// The producer closed after EOS (which went downstream when it came).
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

/// The producer broke the protocol: `what` says how.
pub(super) fn protocol_error(path: &Path, what: String) -> Stop {
    Stop::Error(gst::error_msg!(
        gst::StreamError::Decode,
        (
            "protocol error from fdlink producer at {}: {what}",
            path.display()
        )
    ))
}

impl FdlinkSrc {
    fn waker(&self) -> Option<Arc<Waker>> {
        self.waker.lock().unwrap().clone()
    }

    pub(super) fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.lock().unwrap().ack_timeout_ms as u64)
    }

    fn stats_structure(&self) -> gst::Structure {
        let (queued, files_registered) = self.link.lock().unwrap().as_ref().map_or((0, 0), |l| {
            (
                l.queued() as u64,
                l.files_registered.load(Ordering::Relaxed),
            )
        });
        self.stats
            .lock()
            .unwrap()
            .structure(&self.counters, queued, files_registered)
    }
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
        let foreign_segment = self.foreign_segment.clone();
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
                    Some(gst::EventView::Segment(ev))
                        if ev.segment().format() == gst::Format::Time
                            && foreign_segment.lock().unwrap().active =>
                    {
                        match foreign_segment.lock().unwrap().pending.take() {
                            Some(segment) => {
                                info.data = Some(gst::PadProbeData::Event(
                                    gst::event::Segment::new(&segment),
                                ));
                                gst::PadProbeReturn::Ok
                            }
                            None => gst::PadProbeReturn::Handled,
                        }
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
        let output_stamp = self.output_stamp.clone();
        obj.src_pad()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                let stamp = output_stamp.lock().unwrap().take();
                if let (Some(stamp), Some(gst::PadProbeData::Buffer(buffer))) =
                    (stamp, &mut info.data)
                {
                    let b = buffer.make_mut();
                    b.set_pts(stamp.pts);
                    b.set_dts(stamp.dts);
                    crate::memory::set_buffer_flag_bits(b, stamp.flags);
                }
                gst::PadProbeReturn::Ok
            });
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let mut properties = vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("Path of the AF_UNIX socket an fdlinksink listens on")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("fd")
                    .nick("Inherited socket")
                    .blurb("An already-connected SOCK_SEQPACKET socket to the producer, used instead of socket-path (-1: connect to socket-path). The element works on a duplicate")
                    .minimum(-1)
                    .default_value(-1)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("timeout")
                    .nick("Timeout (ms)")
                    .blurb("How long to wait for a producer to appear at socket-path, in ms (0: no limit, wait until one comes)")
                    .default_value(DEFAULT_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("ack-timeout")
                    .nick("Ack timeout (ms)")
                    .blurb("How long a query answered by the producer waits to be sent and then for the reply, in ms; also how long caps downstream refused wait for the producer to offer others")
                    .minimum(1)
                    .default_value(DEFAULT_ACK_TIMEOUT_MS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder::<Mode>("mode")
                    .nick("State mode")
                    .blurb("independent: this pipeline runs its own state; follow: it goes to the PAUSED/PLAYING states of the producer's pipeline and prerolls with it")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("link-latency")
                    .nick("Link latency (ns)")
                    .blurb("Added to the producer pipeline's latency in this element's latency answer, in ns")
                    .default_value(DEFAULT_LINK_LATENCY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("forward-messages")
                    .nick("Forward producer messages")
                    .blurb("Post the producer pipeline's errors, warnings, infos and element messages on this pipeline's bus")
                    .default_value(true)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("reconnect")
                    .nick("Reconnect")
                    .blurb("When the producer goes away without EOS, keep running and connect to socket-path again until retry-timeout passes (false: an error). Needs socket-path")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("retry-timeout")
                    .nick("Retry timeout (ms)")
                    .blurb("With reconnect=true, how long to look for a new producer before failing, in ms (0: forever)")
                    .default_value(DEFAULT_RETRY_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-queued")
                    .nick("Max queued frames")
                    .blurb("Received frames that may wait here for downstream, each pinning a producer buffer; leaky says what happens to one more")
                    .minimum(1)
                    .maximum(1024)
                    .default_value(DEFAULT_MAX_QUEUED)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder::<Leaky>("leaky")
                    .nick("Leaky")
                    .blurb("What happens, while PLAYING, to a frame that arrives with max-queued frames waiting")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Frames received, dropped and copied, releases, reconnects, files registered, and latencies in µs from the producer's send")
                    .read_only()
                    .build(),
            ];
            properties.push(crate::stats_interval::param_spec());
            properties.extend(peer_access::peer_properties("producer"));
            properties
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
            name @ ("allowed-uids" | "allowed-gids") => settings.access.set(name, value),
            "stats-interval" => self
                .stats_interval
                .set_interval_ms(value.get().expect("type checked upstream")),
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
            name @ ("allowed-uids" | "allowed-gids") => {
                self.settings.lock().unwrap().access.get(name)
            }
            "stats" => self.stats_structure().to_value(),
            "stats-interval" => self.stats_interval.interval_ms().to_value(),
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
            // BaseSrc starts in this change; settings it would refuse are refused here, with
            // one error: a start that fails makes BaseSrc post a second, generic one.
            let settings = self.settings.lock().unwrap().clone();
            if let Err(e) = endpoint(&settings).and(settings.access.policy("fdlinksrc").map(drop)) {
                self.post_error_message(e);
                *self.bus_watch.lock().unwrap() = None;
                return Err(gst::StateChangeError);
            }
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
                    self.send_state(session::destination(self.obj().upcast_ref()));
                    self.lead_producer();
                }
                gst::StateChange::PausedToPlaying => {
                    self.set_link_streaming(true);
                    self.send_state(gst::State::Playing);
                    self.lead_producer();
                }
                gst::StateChange::PausedToReady => {
                    session::Follower::of(self.obj().upcast_ref()).forget_peer()
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

/// Where the element connects: (`socket-path`, or the inherited `fd` described for
/// messages; that fd), or why the settings do not say.
fn endpoint(settings: &Settings) -> Result<(PathBuf, Option<i32>), gst::ErrorMessage> {
    let inherited_fd = (settings.fd >= 0).then_some(settings.fd);
    let path = match (&settings.socket_path, inherited_fd) {
        (_, Some(fd)) => PathBuf::from(format!("inherited fd {fd}")),
        (Some(p), None) => PathBuf::from(p),
        (None, None) => {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ("socket-path is not set (nor fd): set socket-path to where the producer's fdlinksink listens, or fd to an inherited socketpair end")
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
    Ok((path, inherited_fd))
}

impl BaseSrcImpl for FdlinkSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let (path, inherited_fd) = endpoint(&settings)?;
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
        let connector = Connector::new(
            path,
            inherited_fd,
            // 0: no limit, as retry-timeout's 0 and GStreamer's timeouts.
            (settings.timeout_ms > 0).then(|| Duration::from_millis(settings.timeout_ms as u64)),
            settings.reconnect,
            (settings.retry_timeout_ms > 0)
                .then(|| Duration::from_millis(settings.retry_timeout_ms as u64)),
        )
        .trusting(settings.access.policy("fdlinksrc")?);
        let queue_limit = QueueLimit {
            max_queued: settings.max_queued as usize,
            leaky: settings.leaky,
            // The producer's, from its hello.
            hold_limit: 0,
        };
        *self.state.lock().unwrap() = State::Started(Box::new(Stream::new(connector, queue_limit)));
        self.stats_interval.start(self.obj().upcast_ref());
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.stats_interval.stop();
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
                    gst::info!(CAT, imp = self, "producer closed after EOS");
                }
                Err(stop.into())
            }
        }
    }
}
