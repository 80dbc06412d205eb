//! What makes two pipelines behave as one, shared by both elements: the `mode` property
//! (whose state follows whose), taking a pipeline to the state its peer reached, and watching a
//! bus for the messages that cross to the other side.

use std::collections::VecDeque;
use std::sync::Mutex;

use gst::glib;
use gst::prelude::*;

use crate::control;
use fdlink::protocol::{MessagePacket, StatePacket};

/// Whose state a pipeline follows.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstFdlinkMode")]
pub enum Mode {
    /// Each pipeline runs its own state (like shmsrc and unixfdsrc).
    #[default]
    #[enum_value(
        name = "Independent: each pipeline runs its own state",
        nick = "independent"
    )]
    Independent = 0,
    /// This element's pipeline goes to the PAUSED and PLAYING states the peer element reaches.
    #[enum_value(
        name = "Follow: this pipeline takes the PAUSED/PLAYING state of the pipeline at the other end",
        nick = "follow"
    )]
    Follow = 1,
}

/// The State packet for `state`, from an element in `mode`.
pub fn state_packet(state: gst::State, mode: Mode) -> StatePacket {
    use glib::translate::IntoGlib;
    StatePacket {
        state: state.into_glib() as u8,
        sender_follows: mode == Mode::Follow,
    }
}

/// What a State packet from the peer asks of an element in `mode`.
#[derive(Debug, PartialEq, Eq)]
pub enum Follow {
    /// Take the pipeline to this state.
    Go(gst::State),
    /// Nothing to do (independent mode, or a state the peer is only passing through).
    Ignore,
    /// Both ends follow each other: a configuration error.
    BothFollow,
}

pub fn follow(mode: Mode, p: &StatePacket) -> Follow {
    if mode != Mode::Follow {
        return Follow::Ignore;
    }
    if p.sender_follows {
        return Follow::BothFollow;
    }
    // READY and NULL close the link right after: the end of the stream says it all.
    match p.state {
        StatePacket::PAUSED => Follow::Go(gst::State::Paused),
        StatePacket::PLAYING => Follow::Go(gst::State::Playing),
        _ => Follow::Ignore,
    }
}

/// Where the pipeline of `element` is going when the element passes through PAUSED: PAUSED
/// itself, or READY/NULL when it is on its way down (a follower must not pause a peer that is
/// only shutting down, it would hold back that peer's EOS). Bins move their children one step
/// at a time, so only the top-level bin knows the destination.
pub fn destination(element: &gst::Element) -> gst::State {
    match top_level(element).pending_state() {
        s @ (gst::State::Ready | gst::State::Null) => s,
        _ => gst::State::Paused,
    }
}

/// Acts on the peer's State packet: takes the pipeline of `element` where the peer went, when
/// `mode` is follow. False when both ends follow each other (the caller reports it).
pub fn follow_peer(element: &gst::Element, mode: Mode, p: &StatePacket) -> bool {
    match follow(mode, p) {
        Follow::Go(state) => set_pipeline_state(element, state),
        Follow::Ignore => {}
        Follow::BothFollow => return false,
    }
    true
}

/// The top-level bin `element` is in (itself when it has no parent).
pub fn top_level(element: &gst::Element) -> gst::Element {
    let mut top: gst::Object = element.clone().upcast();
    while let Some(parent) = top.parent() {
        top = parent;
    }
    top.downcast().unwrap_or_else(|_| element.clone())
}

/// Takes the pipeline of `element` to `state` from GStreamer's async thread (a state change
/// must not run on the thread that reads the link, nor on a streaming thread).
pub fn set_pipeline_state(element: &gst::Element, state: gst::State) {
    let pipeline = top_level(element);
    element.call_async(move |element| {
        let current = pipeline.current_state();
        let pending = pipeline.pending_state();
        if (current == state && pending == gst::State::VoidPending) || pending == state {
            return;
        }
        gst::info!(
            gst::CAT_DEFAULT,
            obj = element,
            "following the peer: {} to {state:?}",
            pipeline.name()
        );
        if let Err(e) = pipeline.set_state(state) {
            gst::warning!(
                gst::CAT_DEFAULT,
                obj = element,
                "following the peer to {state:?} failed: {e}"
            );
        }
    });
}

/// Messages this element posted on behalf of its peer: the bus watch must not send them back.
#[derive(Default)]
pub struct Reposted(Mutex<VecDeque<gst::Seqnum>>);

impl Reposted {
    const KEEP: usize = 64;

    pub fn remember(&self, seqnum: gst::Seqnum) {
        let mut q = self.0.lock().unwrap();
        if q.len() == Self::KEEP {
            q.pop_front();
        }
        q.push_back(seqnum);
    }

    pub fn contains(&self, seqnum: gst::Seqnum) -> bool {
        self.0.lock().unwrap().contains(&seqnum)
    }

    /// Posts the peer's message on the bus of `element`, named after `peer`, and remembers it
    /// so the bus watch does not send it back. False when the packet does not make a message.
    pub fn post(&self, element: &gst::Element, p: &MessagePacket, peer: &str) -> bool {
        let Some(msg) = control::message_from_packet(p, element, peer) else {
            return false;
        };
        self.post_message(element, msg);
        true
    }

    /// Posts a message made for the peer (see [`error_as_warning`]) and remembers it.
    pub fn post_message(&self, element: &gst::Element, msg: gst::Message) {
        self.remember(msg.seqnum());
        let _ = element.post_message(msg);
    }
}

/// The peer's error message as a warning for the bus of `element`: the error stopped the
/// peer's pipeline only, and an error here would stop this one too (gst-launch-1.0 and most
/// applications stop on any). `peer` names the peer and says what became of it; the text is
/// "PEER SOURCE: TEXT", with the error's own domain and code. None when `p` is not an error
/// or does not make a message.
pub fn error_as_warning(
    p: &MessagePacket,
    element: &gst::Element,
    peer: &str,
) -> Option<gst::Message> {
    if p.message_type != gst::ffi::GST_MESSAGE_ERROR {
        return None;
    }
    let warning = MessagePacket {
        message_type: gst::ffi::GST_MESSAGE_WARNING,
        source: p.source.clone(),
        structure: p.structure.clone(),
    };
    control::message_from_packet(&warning, element, peer)
}

/// The packet for a bus message that `crosses` to the peer, unless `reposted` says the peer
/// sent it in the first place.
pub fn crossing_packet(
    message: &gst::MessageRef,
    reposted: &Reposted,
    crosses: fn(&gst::MessageRef) -> bool,
) -> Option<MessagePacket> {
    if crosses(message) && !reposted.contains(message.seqnum()) {
        control::message_to_packet(message)
    } else {
        None
    }
}

/// Whether `message` is the ASYNC_DONE of the top-level pipeline `element` is in: that
/// pipeline finished prerolling.
pub fn is_pipeline_async_done(element: &gst::Element, message: &gst::MessageRef) -> bool {
    message.type_() == gst::MessageType::AsyncDone
        && message.src() == Some(top_level(element).upcast_ref())
}

/// A sync-message handler on the bus of `element`'s top-level pipeline; disconnects on drop.
pub struct BusWatch {
    bus: gst::Bus,
    handler: Option<glib::SignalHandlerId>,
}

impl BusWatch {
    /// Calls `on_message` from the posting thread with every message on the pipeline's bus
    /// (bus sync-message emission works alongside whatever sync handler the application
    /// set).
    pub fn new(
        element: &gst::Element,
        on_message: impl Fn(&gst::MessageRef) + Send + Sync + 'static,
    ) -> Option<BusWatch> {
        let bus = top_level(element).bus()?;
        bus.enable_sync_message_emission();
        let handler = bus.connect_sync_message(None, move |_, message| on_message(message));
        Some(BusWatch {
            bus,
            handler: Some(handler),
        })
    }
}

impl Drop for BusWatch {
    fn drop(&mut self) {
        if let Some(h) = self.handler.take() {
            self.bus.disconnect(h);
            self.bus.disable_sync_message_emission();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_error_becomes_a_warning_naming_it() {
        gst::init().unwrap();
        let sink = gst::ElementFactory::make("fakesink").build().unwrap();
        let error = gst::message::Error::builder(gst::StreamError::Decode, "bad bitstream")
            .debug("details")
            .src(&sink)
            .build();
        let p = control::message_to_packet(&error).unwrap();
        let msg = error_as_warning(&p, &sink, "consumer 3 (pid 7) is disconnected").unwrap();
        let gst::MessageView::Warning(w) = msg.view() else {
            panic!("not a warning: {msg:?}");
        };
        let text = w.error().message().to_string();
        assert!(
            text.starts_with("consumer 3 (pid 7) is disconnected")
                && text.ends_with("bad bitstream"),
            "{text}"
        );
        assert!(w.error().matches(gst::StreamError::Decode));
        // Anything else is not an error to turn into a warning.
        let warning = control::message_to_packet(&msg).unwrap();
        assert!(error_as_warning(&warning, &sink, "consumer 3").is_none());
    }

    #[test]
    fn follow_decisions() {
        let playing = state_packet(gst::State::Playing, Mode::Independent);
        assert_eq!(playing.state, 4);
        assert_eq!(
            follow(Mode::Follow, &playing),
            Follow::Go(gst::State::Playing)
        );
        assert_eq!(follow(Mode::Independent, &playing), Follow::Ignore);
        let paused = state_packet(gst::State::Paused, Mode::Independent);
        assert_eq!(
            follow(Mode::Follow, &paused),
            Follow::Go(gst::State::Paused)
        );
        let ready = state_packet(gst::State::Ready, Mode::Independent);
        assert_eq!(follow(Mode::Follow, &ready), Follow::Ignore);
        let from_follower = state_packet(gst::State::Playing, Mode::Follow);
        assert_eq!(follow(Mode::Follow, &from_follower), Follow::BothFollow);
        assert_eq!(follow(Mode::Independent, &from_follower), Follow::Ignore);
    }
}
