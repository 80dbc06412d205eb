use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use super::base_sink_preroll::{self, PrerollSent};
use super::hub::{Hub, HubEvent, PassThrough, PrerollWait, StickyKind};
use super::negotiation;
use super::send::{Sender, Sending};
use super::serve::{Server, Serving};
use super::stats;
use super::to_consumers;
use super::{CAT, SlowPolicyProp, SyncMethodProp};
use crate::control;
use crate::peer_access::Access;
use crate::session::{self, BusWatch, Mode};
use fdlink::hub::Joining;
use fdlink::protocol::Packet;

use super::properties::{
    self, DEFAULT_ACK_TIMEOUT_MS, DEFAULT_MAX_CLIENTS, DEFAULT_MAX_HELD, DEFAULT_MAX_QUEUED,
    default_max_held_total,
};

mod start;

/// How long a frame waits for a consumer at its `max-held` limit before that consumer skips it.
const SLOW_CONSUMER_WAIT: Duration = Duration::from_secs(1);
/// How long EOS waits for queued packets (the EOS itself among them) to reach consumers. An
/// AF_UNIX receiver queues only net.unix.max_dgram_qlen (10) datagrams, so a slow consumer
/// can leave the EOS queued here; past this the producer stops anyway.
const EOS_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffers the proposed memfd pool keeps at least.
const POOL_MIN_BUFFERS: u32 = 2;

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<String>,
    /// An already-connected socket to serve one consumer on, instead of listening.
    fd: i32,
    max_held: u32,
    wait_for_connection: bool,
    forward_messages: bool,
    mode: Mode,
    ack_timeout_ms: u32,
    /// None: not set, twice max-held (`default_max_held_total`).
    max_held_total: Option<u32>,
    max_queued: u32,
    max_clients: u32,
    slow_policy: SlowPolicyProp,
    sync_method: SyncMethodProp,
    register_fds: bool,
    yield_after_send: bool,
    /// allowed-uids, allowed-gids, socket-mode, socket-group.
    access: Access,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_path: None,
            fd: -1,
            max_held: DEFAULT_MAX_HELD,
            wait_for_connection: false,
            forward_messages: true,
            mode: Mode::Independent,
            ack_timeout_ms: DEFAULT_ACK_TIMEOUT_MS,
            max_held_total: None,
            max_queued: DEFAULT_MAX_QUEUED,
            max_clients: DEFAULT_MAX_CLIENTS,
            slow_policy: SlowPolicyProp::Auto,
            sync_method: SyncMethodProp::Auto,
            register_fds: true,
            yield_after_send: true,
            access: Access::default(),
        }
    }
}

/// Per-stream resources of the streaming thread.
#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started {
        control: JoinHandle<()>,
        // Boxed: the largest part of the state by far.
        sender: Box<Sender>,
        /// The buffer BaseSink prerolled on went out from `prepare`: its `render` must not
        /// send it again.
        preroll_sent: Option<PrerollSent>,
    },
}

#[derive(Default)]
pub struct FdlinkSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// Kept apart from `state` so `unlock()` never waits for the streaming thread.
    hub: Mutex<Option<Arc<Hub>>>,
    /// Forwards this pipeline's messages to the consumers while started.
    bus_watch: Mutex<Option<BusWatch>>,
    /// This pipeline's first error, told to the consumers as the sink stops.
    pipeline_error: to_consumers::PipelineError,
    /// Runs consumers' requests.
    server: Server,
    /// Set at a preroll barrier (going to PAUSED, a flush), cleared when BaseSink prerolls:
    /// meanwhile frames pass straight through while followers have not prerolled.
    awaiting_preroll: AtomicBool,
    /// Nanoseconds spent making the fallback copies (those `bytes-copied` counts) since
    /// start: with it the stats tell the copy's bandwidth.
    copy_ns: AtomicU64,
    /// Posts the stats as element messages while started (`stats-interval`).
    stats_interval: crate::stats_interval::StatsInterval,
}

impl FdlinkSink {
    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.lock().unwrap().clone()
    }

    fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.lock().unwrap().ack_timeout_ms as u64)
    }

    /// wait-for-connection: waits for the first consumer only, so a stream never blocks
    /// forever because the last consumer left. False when there was nothing to wait for.
    fn wait_for_first_consumer(&self, hub: &Hub) -> Result<bool, gst::FlowError> {
        if !self.settings.lock().unwrap().wait_for_connection || hub.stats().0.consumers_total > 0 {
            return Ok(false);
        }
        gst::debug!(CAT, imp = self, "waiting for the first consumer");
        if hub.wait_for_consumer() {
            Ok(true)
        } else {
            Err(gst::FlowError::Flushing)
        }
    }

    /// With no ready consumer: waits for those on their way in (in their hello, just
    /// connecting, or about to: see `fdlink::hub::Joining`), so that one connected when this
    /// frame came gets it. True when a consumer is ready now.
    fn wait_for_joining(&self, hub: &Hub) -> Result<bool, gst::FlowError> {
        let started = std::time::Instant::now();
        // Whether upstream is live matters only to the waits as the sink starts (a consumer
        // started first is about to connect) and for an inherited socket: asked then only.
        let live = (hub.starting() || self.settings.lock().unwrap().fd >= 0) && {
            let mut q = gst::query::Latency::new();
            self.obj().sink_pad().peer_query(&mut q) && q.result().0
        };
        let joining = hub.wait_for_joining(live);
        let waited = started.elapsed();
        if waited >= Duration::from_micros(100) {
            let outcome = match joining {
                Joining::Ready => "a consumer is ready",
                Joining::Nobody => "none came",
                Joining::Flushing => "flushing",
            };
            gst::debug!(
                CAT,
                imp = self,
                "waited {} µs for joining consumers: {outcome}",
                waited.as_micros()
            );
        }
        match joining {
            Joining::Ready => Ok(true),
            Joining::Nobody => Ok(false),
            Joining::Flushing => Err(gst::FlowError::Flushing),
        }
    }

    /// Sends a buffer to the consumers; returns its buffer id, None when it went nowhere.
    fn send(
        &self,
        hub: &Hub,
        buffer: &gst::Buffer,
        sending: Sending,
    ) -> Result<Option<u64>, gst::FlowError> {
        // latest-keyframe: the frame goes into the backlog for consumers to come; the
        // preroll frame is kept for consumers that join while this pipeline is paused.
        if !hub.has_ready_consumer()
            && !self.wait_for_first_consumer(hub)?
            && !self.wait_for_joining(hub)?
            && !hub.keeps_backlog()
            && sending != Sending::Preroll
        {
            hub.count_frame_without_consumer();
            return Ok(None);
        }
        let mut state = self.state.lock().unwrap();
        let State::Started { sender, .. } = &mut *state else {
            return Err(gst::FlowError::Flushing);
        };
        let sent = sender.send(self.obj().upcast_ref(), hub, &self.copy_ns, buffer, sending)?;
        drop(state);
        Ok(Some(sent.finish()))
    }

    /// The frame BaseSink prerolls on, from `prepare`: the first buffer of a paused pipeline,
    /// and of every preroll after a flush or a pause.
    fn preroll(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(hub) = self.hub() else {
            return Err(gst::FlowError::Flushing);
        };
        // Like a video sink showing its preroll frame: consumers see where a paused producer
        // stands, and consumers that join while it is paused get this frame too.
        self.awaiting_preroll.store(false, Ordering::SeqCst);
        let sent = self.send(&hub, buffer, Sending::Preroll)?;
        let marker = PrerollSent::now(self.obj().upcast_ref());
        if let State::Started { preroll_sent, .. } = &mut *self.state.lock().unwrap() {
            *preroll_sent = Some(marker);
        }
        let Some(buffer_id) = sent else {
            return Ok(gst::FlowSuccess::Ok);
        };
        // This pipeline's preroll (its ASYNC_DONE) completes once the consumers that follow
        // it (mode=follow) have prerolled on this frame too.
        let timeout = self.ack_timeout();
        match hub.wait_prerolled(timeout) {
            PrerollWait::Done => Ok(gst::FlowSuccess::Ok),
            PrerollWait::Flushing => Err(gst::FlowError::Flushing),
            PrerollWait::TimedOut(ids) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "following consumers {} did not preroll on buffer {buffer_id} within ack-timeout ({} ms); prerolling without them",
                    ids.iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    timeout.as_millis()
                );
                Ok(gst::FlowSuccess::Ok)
            }
        }
    }

    /// A buffer probe on the sink pad: while this pipeline prerolls and a following
    /// consumer has not, the buffer goes straight to the consumers and BaseSink does not see
    /// it, as a pipeline keeps flowing until its last sink prerolled: the consumer's
    /// decoder may need several frames before its sink has one to preroll on.
    fn pass_through(&self, info: &mut gst::PadProbeInfo) -> gst::PadProbeReturn {
        if !self.awaiting_preroll.load(Ordering::SeqCst) {
            return gst::PadProbeReturn::Ok;
        }
        let Some(hub) = self.hub() else {
            return gst::PadProbeReturn::Ok;
        };
        // The first consumer may be a follower: it decides whether this frame prerolls here.
        if let Err(e) = self.wait_for_first_consumer(&hub) {
            info.flow_res = Err(e);
            return gst::PadProbeReturn::Handled;
        }
        let timeout = self.ack_timeout();
        match hub.wait_pass_through(timeout) {
            PassThrough::Preroll => return gst::PadProbeReturn::Ok,
            PassThrough::GaveUp(id) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "following consumer {id} holds max-held buffers and has not prerolled after ack-timeout ({} ms); prerolling without it",
                    timeout.as_millis()
                );
                return gst::PadProbeReturn::Ok;
            }
            PassThrough::Flushing => {
                info.flow_res = Err(gst::FlowError::Flushing);
                return gst::PadProbeReturn::Handled;
            }
            PassThrough::Send => {}
        }
        let Some(gst::PadProbeData::Buffer(buffer)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        gst::log!(
            CAT,
            imp = self,
            "passing {} through while following consumers preroll",
            buffer.pts().display()
        );
        if let Err(e) = self.send(&hub, buffer, Sending::PassThrough) {
            info.flow_res = Err(e);
        }
        gst::PadProbeReturn::Handled
    }

    /// Sends this pipeline's error, warning, info and element messages to the consumers.
    fn watch_bus(&self) {
        let weak = self.obj().downgrade();
        let reposted = self.server.reposted().clone();
        let watch = BusWatch::new(self.obj().upcast_ref(), move |message| {
            if let Some(obj) = weak.upgrade() {
                obj.imp().pipeline_error.note(message);
            }
            let Some(p) =
                session::crossing_packet(message, &reposted, control::forwards_to_consumers)
            else {
                return;
            };
            let Some(obj) = weak.upgrade() else { return };
            if let Some(hub) = obj.imp().hub() {
                to_consumers::send_packet(
                    obj.upcast_ref(),
                    &hub,
                    Packet::Message(p),
                    StickyKind::None,
                );
            }
        });
        *self.bus_watch.lock().unwrap() = watch;
    }

    /// Tells the consumers the state this pipeline reached (or, PLAYING → PAUSED, is going
    /// to).
    fn send_state(&self, state: gst::State) {
        let Some(hub) = self.hub() else { return };
        let mode = self.settings.lock().unwrap().mode;
        to_consumers::send_state(self.obj().upcast_ref(), &hub, state, mode);
    }

    /// What the hub reports, on the control thread (or the streaming thread for removals
    /// found while sending), outside the hub's lock.
    fn on_hub_event(&self, event: HubEvent) {
        let obj = self.obj();
        match event {
            HubEvent::ConsumerAdded { id, pid } => {
                gst::info!(
                    CAT,
                    imp = self,
                    "consumer {id} connected{}",
                    pid.map_or_else(String::new, |p| format!(" (pid {p})"))
                );
                obj.notify("num-clients");
                obj.emit_by_name::<()>("client-added", &[&id, &pid.unwrap_or(0)]);
            }
            HubEvent::ConsumerRemoved { id, reason } => {
                gst::info!(CAT, imp = self, "consumer {id} removed: {reason}");
                obj.notify("num-clients");
                obj.emit_by_name::<()>("client-removed", &[&id, &reason.kind()]);
            }
            HubEvent::Warning(msg) => gst::warning!(CAT, imp = self, "{msg}"),
            HubEvent::Info(msg) => gst::info!(CAT, imp = self, "{msg}"),
            HubEvent::Debug(msg) => gst::debug!(CAT, imp = self, "{msg}"),
            HubEvent::Log(msg) => gst::log!(CAT, imp = self, "{msg}"),
            HubEvent::Prerolled {
                id,
                buffer_id,
                barriers,
            } => gst::debug!(
                CAT,
                imp = self,
                "consumer {id} prerolled at buffer {buffer_id}, after {barriers} preroll barriers"
            ),
            HubEvent::Request { id, pid, request } => {
                let Some(hub) = self.hub() else { return };
                let serving = {
                    let s = self.settings.lock().unwrap();
                    Serving {
                        forward_messages: s.forward_messages,
                        mode: s.mode,
                    }
                };
                self.server
                    .serve(obj.upcast_ref(), serving, id, pid, hub, request);
            }
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for FdlinkSink {
    const NAME: &'static str = "GstFdlinkSink";
    type Type = super::FdlinkSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for FdlinkSink {
    fn constructed(&self) {
        self.parent_constructed();
        // The last sample would pin one more upstream buffer (a decoder surface) for nothing.
        self.obj().set_enable_last_sample(false);
        let weak = self.obj().downgrade();
        self.obj()
            .sink_pad()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                weak.upgrade()
                    .map_or(gst::PadProbeReturn::Ok, |obj| obj.imp().pass_through(info))
            });
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            vec![
                glib::subclass::Signal::builder("client-added")
                    .param_types([u64::static_type(), i32::static_type()])
                    .build(),
                glib::subclass::Signal::builder("client-removed")
                    .param_types([u64::static_type(), String::static_type()])
                    .build(),
                glib::subclass::Signal::builder("remove")
                    .param_types([u64::static_type()])
                    .return_type::<bool>()
                    .action()
                    .class_handler(|args| {
                        let obj = args[0].get::<super::FdlinkSink>().expect("signal arg");
                        let id = args[1].get::<u64>().expect("signal arg");
                        Some(obj.imp().hub().is_some_and(|h| h.remove(id)).to_value())
                    })
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(properties::specs);
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "socket-path" => settings.socket_path = value.get().expect("type checked upstream"),
            "fd" => settings.fd = value.get().expect("type checked upstream"),
            "max-held" => settings.max_held = value.get().expect("type checked upstream"),
            "wait-for-connection" => {
                settings.wait_for_connection = value.get().expect("type checked upstream")
            }
            "forward-messages" => {
                settings.forward_messages = value.get().expect("type checked upstream")
            }
            "mode" => settings.mode = value.get().expect("type checked upstream"),
            "max-held-total" => {
                settings.max_held_total = Some(value.get().expect("type checked upstream"))
            }
            "max-clients" => settings.max_clients = value.get().expect("type checked upstream"),
            "slow-policy" => settings.slow_policy = value.get().expect("type checked upstream"),
            "max-queued" => settings.max_queued = value.get().expect("type checked upstream"),
            "sync-method" => settings.sync_method = value.get().expect("type checked upstream"),
            "ack-timeout" => settings.ack_timeout_ms = value.get().expect("type checked upstream"),
            "register-fds" => settings.register_fds = value.get().expect("type checked upstream"),
            "yield-after-send" => {
                settings.yield_after_send = value.get().expect("type checked upstream")
            }
            name @ ("allowed-uids" | "allowed-gids" | "socket-mode" | "socket-group") => {
                settings.access.set(name, value)
            }
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
            "max-held" => self.settings.lock().unwrap().max_held.to_value(),
            "wait-for-connection" => self.settings.lock().unwrap().wait_for_connection.to_value(),
            "forward-messages" => self.settings.lock().unwrap().forward_messages.to_value(),
            "mode" => self.settings.lock().unwrap().mode.to_value(),
            "max-held-total" => {
                let s = self.settings.lock().unwrap();
                s.max_held_total
                    .unwrap_or_else(|| default_max_held_total(s.max_held))
                    .to_value()
            }
            "max-clients" => self.settings.lock().unwrap().max_clients.to_value(),
            "slow-policy" => self.settings.lock().unwrap().slow_policy.to_value(),
            "max-queued" => self.settings.lock().unwrap().max_queued.to_value(),
            "sync-method" => self.settings.lock().unwrap().sync_method.to_value(),
            "ack-timeout" => self.settings.lock().unwrap().ack_timeout_ms.to_value(),
            "register-fds" => self.settings.lock().unwrap().register_fds.to_value(),
            "yield-after-send" => self.settings.lock().unwrap().yield_after_send.to_value(),
            name @ ("allowed-uids" | "allowed-gids" | "socket-mode" | "socket-group") => {
                self.settings.lock().unwrap().access.get(name)
            }
            "num-clients" => self.hub().map_or(0, |h| h.num_consumers()).to_value(),
            "stats-interval" => self.stats_interval.interval_ms().to_value(),
            "stats" => {
                let copy_ns = self.copy_ns.load(Ordering::Relaxed);
                stats::structure(self.hub().as_deref(), copy_ns).to_value()
            }
            _ => unimplemented!(),
        }
    }
}

impl GstObjectImpl for FdlinkSink {}

impl ElementImpl for FdlinkSink {
    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady
            && let Err(e) = self.start_serving()
        {
            // The one error: BaseSink, whose start is not called, adds no generic one.
            self.post_error_message(e);
            return Err(gst::StateChangeError);
        }
        if matches!(
            transition,
            gst::StateChange::ReadyToPaused | gst::StateChange::PlayingToPaused
        ) {
            // A preroll barrier (see pass_through).
            self.awaiting_preroll.store(true, Ordering::SeqCst);
        }
        if transition == gst::StateChange::PlayingToPaused {
            // Before BaseSink's change: it wakes the streaming thread out of its clock wait
            // to preroll on the buffer it holds, and that preroll frame must follow the
            // barrier on the wire (a follower pauses first, then prerolls on it), and must
            // find it counted (or wait_prerolled would not wait for the followers).
            self.send_state(session::destination(self.obj().upcast_ref()));
        }
        let result = self.parent_change_state(transition).inspect_err(|_| {
            if transition == gst::StateChange::NullToReady {
                // Started above: nothing stops it once the element stays in NULL.
                let _ = BaseSinkImpl::stop(self);
            }
        })?;
        match transition {
            gst::StateChange::ReadyToPaused => {
                self.watch_bus();
                self.send_state(gst::State::Paused);
            }
            gst::StateChange::PausedToPlaying => self.send_state(gst::State::Playing),
            gst::StateChange::PausedToReady => *self.bus_watch.lock().unwrap() = None,
            _ => {}
        }
        Ok(result)
    }

    fn send_event(&self, event: gst::Event) -> bool {
        let latency = matches!(event.view(), gst::EventView::Latency(_));
        let handled = self.parent_send_event(event);
        // The pipeline configured a new latency: consumers ask for it again.
        if latency
            && let Some(hub) = self.hub()
            && self.server.latency_changed(self.obj().latency())
        {
            let m = gst::message::Latency::builder().src(&*self.obj()).build();
            to_consumers::send_message(self.obj().upcast_ref(), &hub, &m);
        }
        handled
    }

    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "fdlink sink",
                "Sink/Network",
                "Serves buffers zero-copy to fdlinksrc elements in other processes (memfd and dmabuf over SCM_RIGHTS)",
                "fdlink developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &gst::Caps::new_any(),
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for FdlinkSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        // Done in change_state (start_serving) before BaseSink's part: a start that fails
        // makes BaseSink post a second, generic error after the one that names the cause.
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.stats_interval.stop();
        let hub = self.hub.lock().unwrap().take();
        let state = std::mem::take(&mut *self.state.lock().unwrap());
        if let Some(hub) = &hub {
            // While the control thread still writes out the queues; as long as EOS would wait.
            self.pipeline_error
                .send_before_close(self.obj().upcast_ref(), hub, EOS_DRAIN_TIMEOUT);
            hub.shutdown();
        }
        if let State::Started {
            control, sender, ..
        } = state
        {
            let _ = control.join();
            sender.stop();
        }
        if let Some(hub) = hub {
            hub.clear();
        }
        gst::info!(CAT, imp = self, "stopped");
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let Some(hub) = self.hub() else {
            return Err(gst::loggable_error!(CAT, "caps before start"));
        };
        gst::debug!(CAT, imp = self, "caps {caps}");
        hub.set_encoded(super::is_encoded(caps));
        let drm = crate::drm_format::describe_caps(caps);
        if !drm.is_empty() {
            gst::info!(CAT, imp = self, "DMA_DRM format: {drm}");
        }
        to_consumers::send_caps(&hub, caps)
    }

    fn event(&self, event: gst::Event) -> bool {
        // wait-for-connection: a serialized event before the first frame that a consumer
        // joining later would not get replayed (a gap, custom events, ...) waits for the first
        // consumer as that frame would. Caps and sticky events are replayed to joiners; a
        // flush-stop (StickyKind::FlushStop) never waits, so a flushing seek before any
        // consumer cannot hang on it.
        if event.is_serialized()
            && event.type_() != gst::EventType::Caps
            && to_consumers::sticky_kind(&event) == StickyKind::None
            && let Some(hub) = self.hub()
            && self.wait_for_first_consumer(&hub).is_err()
        {
            return false;
        }
        if event.type_() != gst::EventType::Caps
            && let Some(hub) = self.hub()
        {
            to_consumers::send_event(self.obj().upcast_ref(), &hub, &event);
        }
        if event.type_() == gst::EventType::FlushStop
            && let State::Started { preroll_sent, .. } = &mut *self.state.lock().unwrap()
        {
            // The prerolled buffer was flushed away; the hub let go of it with the flush.
            *preroll_sent = None;
            // A preroll barrier: BaseSink prerolls again after a flush.
            self.awaiting_preroll.store(true, Ordering::SeqCst);
        }
        if let (gst::EventView::Eos(_), Some(hub)) = (event.view(), self.hub()) {
            hub.drain(EOS_DRAIN_TIMEOUT);
        }
        self.parent_event(event)
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let template = self.obj().sink_pad().pad_template_caps();
        let caps = match filter {
            Some(f) => f.intersect_with_mode(&template, gst::CapsIntersectMode::First),
            None => template,
        };
        let caps = negotiation::shareable_caps(&caps);
        let wait_first = self.settings.lock().unwrap().wait_for_connection
            && self.obj().sink_pad().current_caps().is_none();
        let caps = match self.hub() {
            Some(hub) => negotiation::consumers_caps(
                self.obj().upcast_ref(),
                &hub,
                caps,
                self.ack_timeout(),
                wait_first,
            ),
            None => caps,
        };
        gst::debug!(CAT, imp = self, "caps query (filter {filter:?}): {caps}");
        Some(caps)
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        // GStreamer's default asks for caps without a filter, so a consumer that takes none of
        // these caps would not be left out: ask with the caps themselves.
        if let gst::QueryViewMut::AcceptCaps(q) = query.view_mut() {
            let caps = q.caps_owned();
            let accepted =
                BaseSinkImpl::caps(self, Some(&caps)).is_some_and(|c| caps.is_subset(&c));
            q.set_result(accepted);
            return true;
        }
        BaseSinkImplExt::parent_query(self, query)
    }

    fn propose_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // Decoders add this minimum to their own surfaces, which are real (often scarce)
        // memory: it covers what a consumer usually holds, not the most it may hold.
        let min = {
            let s = self.settings.lock().unwrap();
            // The default total is for many consumers together; one holds at most max-held.
            let held = match s.max_held_total {
                Some(total) if total > 0 => total,
                _ => s.max_held,
            };
            negotiation::upstream_pool_min(held).max(POOL_MIN_BUFFERS)
        };
        negotiation::propose_allocation(self.obj().upcast_ref(), query, min);
        Ok(())
    }

    fn prepare(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        // SAFETY: this is prepare, which BaseSink calls (itself, or through prepare_list's
        // default) with its PREROLL_LOCK held.
        if unsafe { base_sink_preroll::prerolls(self.obj().upcast_ref()) } {
            self.preroll(buffer)
        } else {
            Ok(gst::FlowSuccess::Ok)
        }
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(hub) = self.hub() else {
            return Err(gst::FlowError::Flushing);
        };
        let preroll_sent = match &mut *self.state.lock().unwrap() {
            State::Started { preroll_sent, .. } => preroll_sent.take(),
            State::Stopped => return Err(gst::FlowError::Flushing),
        };
        if let Some(sent) = preroll_sent {
            // Playing from here: joiners no longer get the preroll frame.
            hub.end_preroll();
            if sent.is_rendered_now(self.obj().upcast_ref()) {
                return Ok(gst::FlowSuccess::Ok);
            }
        }
        self.send(&hub, buffer, Sending::Playing)?;
        Ok(gst::FlowSuccess::Ok)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(hub) = self.hub() {
            hub.set_flushing(true);
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let Some(hub) = self.hub() {
            hub.set_flushing(false);
        }
        Ok(())
    }
}
