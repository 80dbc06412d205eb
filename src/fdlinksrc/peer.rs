//! What crosses to and from the producer beside the stream: queries answered by the
//! producer's pipeline, upstream events, bus messages both ways, and states (`mode=follow`,
//! prerolling together).

use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;

use super::imp::{CAT, FdlinkSrc, Stop};
use super::link::{Link, LinkPeer};
use crate::control;
use crate::session::{self, BusWatch, Mode};
use fdlink::endpoint;
use fdlink::protocol::{self, Packet};
use fdlink::transport::Waker;

/// How long a packet to the producer may wait for room in the socket before it is given up.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

impl FdlinkSrc {
    /// Asks the producer's pipeline `query`. None when there is no link (not connected yet, or
    /// gone); Some(false) when the producer could not answer or did not in `ack-timeout`.
    pub(super) fn ask_producer(&self, query: &mut gst::QueryRef) -> Option<bool> {
        let link = self.link.lock().unwrap().clone()?;
        let timeout = self.ack_timeout();
        // The reply may be behind frames in the socket: the reader must read on meanwhile.
        let _awaiting = link.awaiting_reply();
        let id = link.pending.register();
        let packet = Packet::Query(control::query_to_packet(id, query));
        if let Err(e) = link.conn.send_packet(&packet, Some(timeout)) {
            link.pending.forget(id);
            gst::debug!(
                CAT,
                imp = self,
                "cannot send {} query: {e}",
                query.type_().name()
            );
            return Some(false);
        }
        match link.pending.wait(id, timeout) {
            Some(reply) => Some(control::apply_reply(query, &reply)),
            None => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "no answer to {} query from the producer within {} ms",
                    query.type_(),
                    timeout.as_millis()
                );
                Some(false)
            }
        }
    }

    /// The answer to a latency query: the producer's pipeline latency plus `link-latency`,
    /// live in both modes. A follower is no live source (it prerolls with the producer), but its
    /// frames come when the producer renders them, as a live source's do: answered live, its
    /// sinks add this latency and the latency of the elements between (decoders), the same
    /// for every sink, and audio and video stay in sync.
    pub(super) fn latency(&self, query: &mut gst::QueryRef) -> bool {
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
            q.set(true, min, max);
        }
        true
    }

    /// Sends a packet to the producer; false when there is no link or it failed.
    fn send_to_producer(&self, packet: &Packet<BorrowedFd<'_>>) -> bool {
        let Some(link) = self.link.lock().unwrap().clone() else {
            gst::debug!(CAT, imp = self, "no producer for {packet:?}");
            return false;
        };
        link.conn.send_packet(packet, Some(SEND_TIMEOUT)).is_ok()
    }

    /// Sends an upstream event to the producer's pipeline; false when there is no link.
    pub(super) fn tell_producer(&self, event: &gst::Event) -> bool {
        self.send_to_producer(&Packet::UpstreamEvent(control::event_to_packet(
            event,
            |_| {},
        )))
    }

    /// A QoS event from downstream with its timestamp moved back onto the producer's running
    /// time (ours is shifted by the segment we sent, see `timeline.rs`).
    pub(super) fn qos_for_producer(&self, q: &gst::event::Qos) -> gst::Event {
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
    /// A follower tells only what its own application did (`lead_producer`).
    pub(super) fn send_state(&self, state: gst::State) {
        let mode = self.settings.lock().unwrap().mode;
        if mode == Mode::Follow {
            return;
        }
        self.send_to_producer(&Packet::State(session::state_packet(state, mode)));
    }

    /// A follower at PAUSED <-> PLAYING: when its application, not the producer, changed this
    /// pipeline's state, the producer's pipeline takes it too (the two are one pipeline: a
    /// pause here pauses the producer, and the play after it plays it again).
    pub(super) fn lead_producer(&self) {
        if self.settings.lock().unwrap().mode != Mode::Follow {
            return;
        }
        let obj = self.obj();
        let element: &gst::Element = obj.upcast_ref();
        let Some(state) = session::Follower::of(element).own_change(element) else {
            return;
        };
        gst::info!(
            CAT,
            imp = self,
            "this pipeline's application set it to {state}: the producer's pipeline follows"
        );
        if !self.send_to_producer(&Packet::State(session::state_packet(state, Mode::Follow))) {
            gst::warning!(
                CAT,
                imp = self,
                "cannot tell the producer this pipeline went to {state}: it stays where it is"
            );
        }
    }

    /// Whether a full queue stops the link's reader: only while PLAYING (see link.rs).
    pub(super) fn set_link_streaming(&self, streaming: bool) {
        // Under the `link` lock, so a link being opened (open_link) sees the latest value.
        let link = self.link.lock().unwrap();
        self.playing.store(streaming, Ordering::SeqCst);
        if let Some(link) = link.as_ref() {
            link.set_streaming(streaming);
        }
    }

    /// Forwards this pipeline's messages (errors, warnings, infos, element messages, EOS,
    /// latency, buffering, request-state) to the producer.
    pub(super) fn watch_bus(&self) {
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
            Some(SEND_TIMEOUT),
        );
    }

    /// A follower (mode=follow) at the producer's State packet in stream order: when the
    /// producer paused, what comes next is its preroll frame, which must reach our sinks
    /// once they are paused too (the reader thread set this pipeline to PAUSED
    /// asynchronously), or they would play it and have nothing left to preroll on.
    pub(super) fn pause_with_producer(
        &self,
        st: &protocol::StatePacket,
        link: &Link,
        waker: &Waker,
    ) -> Result<(), Stop> {
        let mode = self.settings.lock().unwrap().mode;
        if session::follow(mode, st, session::End::Consumer)
            != session::Follow::Go(gst::State::Paused)
        {
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
            if endpoint::sleep_unless_woken(waker, Duration::from_millis(5)) {
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
}

/// The producer's side of the link as the reader thread sees it.
pub struct ProducerPeer {
    pub obj: glib::WeakRef<super::FdlinkSrc>,
    pub producer_pid: u32,
}

impl LinkPeer for ProducerPeer {
    /// Answers by asking this pipeline downstream of the source (caps, accept-caps, ...).
    fn answer(&self, q: &protocol::QueryPacket) -> protocol::QueryReplyPacket {
        let answer =
            self.obj
                .upgrade()
                .zip(control::query_from_packet(q))
                .map(|(obj, mut query)| {
                    let pad = obj.src_pad();
                    if let gst::QueryView::Caps(c) = query.view()
                        && let Some(filter) = c.filter()
                    {
                        // Before the producer picks caps, a request pad downstream picked
                        // for another media type moves to one for this.
                        obj.imp().relink_request_pad(pad, filter);
                    }
                    let answered = pad.peer_query(query.get_mut().unwrap());
                    (answered, query)
                });
        match answer {
            Some((answered, query)) => {
                let (answered, structure) = control::reply_structure(answered, &query);
                protocol::QueryReplyPacket {
                    id: q.id,
                    answered,
                    structure,
                }
            }
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
