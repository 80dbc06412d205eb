//! What makes two pipelines behave as one, shared by both elements: the `mode` property
//! (whose state follows whose), taking a pipeline to the state its peer reached (`Follower`,
//! which also tells a following consumer's own pauses and plays from those it took), and
//! watching a bus for the messages that cross to the other side.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex};

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

/// Which end of a link an element is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// fdlinksink.
    Producer,
    /// fdlinksrc.
    Consumer,
}

impl End {
    /// fdlinksink is a BaseSink, fdlinksrc is not.
    pub fn of(element: &gst::Element) -> End {
        if element.is::<gst_base::BaseSink>() {
            End::Producer
        } else {
            End::Consumer
        }
    }
}

/// What a State packet from the peer asks of an element in `mode` at end `at`.
#[derive(Debug, PartialEq, Eq)]
pub enum Follow {
    /// Take the pipeline to this state.
    Go(gst::State),
    /// Nothing to do (independent mode, or a state the peer is only passing through).
    Ignore,
    /// Both ends follow each other: a configuration error.
    BothFollow,
}

/// A follower (`mode=follow`) takes the states of the peer's pipeline. A following fdlinksrc
/// makes its pipeline and the producer's one pipeline: it sends only the states its own
/// application set (see [`Follower::own_change`]), and an independent fdlinksink takes those,
/// as a pipeline pauses whole when its application pauses it. A following fdlinksink's states
/// are for its own pipeline only: independent consumers ignore them.
pub fn follow(mode: Mode, p: &StatePacket, at: End) -> Follow {
    match (mode, p.sender_follows, at) {
        (Mode::Follow, true, _) => return Follow::BothFollow,
        (Mode::Follow, false, _) | (Mode::Independent, true, End::Producer) => {}
        (Mode::Independent, _, _) => return Follow::Ignore,
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
/// [`follow`] says so. False when both ends follow each other (the caller reports it).
pub fn follow_peer(element: &gst::Element, mode: Mode, p: &StatePacket) -> bool {
    match follow(mode, p, End::of(element)) {
        Follow::Go(state) => Follower::of(element).go(element, state),
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

/// Takes the pipeline of an element to the states its peer asks, and tells the state changes
/// the pipeline's own application made from those it took from the peer.
///
/// The peer's states are set from GStreamer's async call thread (a state change must not run
/// on the thread that reads the link, nor on a streaming thread), one call at a time draining
/// the latest wanted state: the pool behind `gst_element_call_async` runs calls on several
/// threads in no set order, and a PAUSED set after the PLAYING that followed it would leave the
/// pipeline paused for good. Each is decided and set under the pipeline's state lock, so an
/// application's own set_state (or a bin's continuation of one) comes wholly before or after:
/// the decision sees the target that state change left.
#[derive(Default)]
pub struct Follower(Mutex<FollowerState>);

#[derive(Default)]
struct FollowerState {
    /// The peer's latest state, not set yet.
    wanted: Option<gst::State>,
    /// A call on the async thread is draining `wanted`.
    draining: bool,
    /// That call is setting the pipeline's state, with the pipeline's state lock held.
    applying: bool,
    /// The state this pipeline and the peer's agree on: the peer's latest, or the latest this
    /// pipeline's application set and the peer was told. None until the peer said one.
    agreed: Option<gst::State>,
}

impl Follower {
    /// The follower of `element` (one per element, kept on it).
    pub fn of(element: &gst::Element) -> Arc<Follower> {
        static CREATING: Mutex<()> = Mutex::new(());
        let quark = glib::Quark::from_str("fdlink-follower");
        let _creating = CREATING.lock().unwrap();
        // SAFETY: this quark is only ever set below, to an `Arc<Follower>`, and qdata lives
        // until the element is finalized; we hold a reference to the element.
        if let Some(f) = unsafe { element.qdata::<Arc<Follower>>(quark) } {
            // SAFETY: as above, the pointer is to a live `Arc<Follower>`.
            return unsafe { f.as_ref() }.clone();
        }
        let f = Arc::new(Follower::default());
        // SAFETY: the type stored is the one read above; `CREATING` keeps two threads from
        // both storing one.
        unsafe { element.set_qdata(quark, f.clone()) };
        f
    }

    /// Takes the pipeline of `element` to `state`, the peer's latest.
    pub fn go(self: &Arc<Self>, element: &gst::Element, state: gst::State) {
        let mut s = self.0.lock().unwrap();
        s.agreed = Some(state);
        s.wanted = Some(state);
        if s.draining {
            return;
        }
        s.draining = true;
        drop(s);
        let this = self.clone();
        element.call_async(move |element| this.drain(element));
    }

    fn drain(&self, element: &gst::Element) {
        let pipeline = top_level(element);
        loop {
            let _lock = StateLock::acquire(&pipeline);
            let state = {
                let mut s = self.0.lock().unwrap();
                let Some(state) = s.wanted.take() else {
                    s.draining = false;
                    return;
                };
                s.applying = true;
                state
            };
            take_to(element, &pipeline, state);
            self.0.lock().unwrap().applying = false;
        }
    }

    /// At a PAUSED ↔ PLAYING change of `element` (from its `change_state`, which runs with the
    /// pipeline's state lock held): the state the pipeline's application set on its own,
    /// which the peer did not ask for and must be told. None when the pipeline takes the
    /// peer's state (or is about to), is going down, or the peer's state is not known yet
    /// (it will be taken when it is).
    pub fn own_change(&self, element: &gst::Element) -> Option<gst::State> {
        let mut s = self.0.lock().unwrap();
        if s.applying || s.wanted.is_some() {
            return None;
        }
        let target = target_state(&top_level(element));
        if !matches!(target, gst::State::Paused | gst::State::Playing)
            || s.agreed.is_none()
            || s.agreed == Some(target)
        {
            return None;
        }
        s.agreed = Some(target);
        Some(target)
    }

    /// The link closed: what the peer said no longer holds.
    pub fn forget_peer(&self) {
        self.0.lock().unwrap().agreed = None;
    }
}

/// Sets `pipeline` to the peer's `state` (for `element`'s follower, with the pipeline's state
/// lock held), unless it is going there already, or its application stops it or has not
/// started it.
fn take_to(element: &gst::Element, pipeline: &gst::Element, state: gst::State) {
    let target = target_state(pipeline);
    if target == state {
        return;
    }
    if target <= gst::State::Ready {
        gst::debug!(
            gst::CAT_DEFAULT,
            obj = element,
            "not following the peer to {state:?}: {} is going to {target:?}",
            pipeline.name()
        );
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
            "following the peer to {state} failed: {e}"
        );
    } else if stranded(pipeline, state) {
        // Its elements are all in `state` already: what is left is to commit it.
        gst::info!(
            gst::CAT_DEFAULT,
            obj = element,
            "{} was left going to {state} with nothing to get it there: committing it",
            pipeline.name()
        );
        let _ = pipeline.continue_state(gst::StateChangeSuccess::Success);
    }
}

/// Whether `pipeline`, just set to `state`, was left in a change nothing will complete: its
/// current, next and pending states are all `state`, the change is marked asynchronous, and
/// no element in it has a state change pending (none will post the ASYNC_DONE that would
/// complete it; a sink that lost its preroll, at a flush, has one pending).
///
/// In GStreamer 1.22 that is what a set_state does when it comes while a bin that has just
/// prerolled on its way to PLAYING has committed PAUSED (its next state still PAUSED, as
/// `bin_handle_async_done` leaves it) and queued the continuation to PLAYING, which has not
/// run: the set_state to PAUSED is taken for a change already under way ("element was busy")
/// and aborts that continuation ("state continue aborted due to intervening change"). The
/// pipeline would stay PAUSED with its state pending for good, and every later set_state
/// upwards would be taken for a change under way too. The preroll's ASYNC_DONE does not take
/// the state lock, so holding it does not keep the preroll from coming between.
fn stranded(pipeline: &gst::Element, state: gst::State) -> bool {
    use glib::translate::IntoGlib;
    let stuck = {
        let _lock = pipeline.object_lock();
        // SAFETY: `pipeline` is a live GstElement; these public fields of its instance struct
        // are written with the object lock held, which we hold.
        let (current, next, pending, last_return) = unsafe {
            let e = pipeline.as_ptr();
            (
                (*e).current_state,
                (*e).next_state,
                (*e).pending_state,
                (*e).last_return,
            )
        };
        let s = state.into_glib();
        current == s && next == s && pending == s && last_return == gst::ffi::GST_STATE_CHANGE_ASYNC
    };
    let Some(bin) = pipeline.downcast_ref::<gst::Bin>() else {
        return false;
    };
    stuck
        && bin
            .iterate_recurse()
            .into_iter()
            .flatten()
            .all(|e| e.pending_state() == gst::State::VoidPending)
}

/// The state `element` was last set to (GST_STATE_TARGET): where it is, or is going.
fn target_state(element: &gst::Element) -> gst::State {
    use glib::translate::FromGlib;
    let _lock = element.object_lock();
    // SAFETY: `element` is a live GstElement; `target_state` is a public field of its
    // instance struct, written by gst_element_set_state with the object lock held, which we
    // hold; `from_glib` maps values it does not know to `__Unknown`.
    unsafe { gst::State::from_glib((*element.as_ptr()).target_state) }
}

/// The state lock of an element (GST_STATE_LOCK), held while a follower decides and sets its
/// state; released on drop.
struct StateLock<'a>(&'a gst::Element);

impl<'a> StateLock<'a> {
    fn acquire(element: &'a gst::Element) -> StateLock<'a> {
        // SAFETY: `element` is a live GstElement, so its `state_lock`, a GRecMutex initialized
        // with the instance, is valid until it is finalized, after this guard (which borrows
        // it) is gone. It is recursive: gst_element_set_state takes it again on this thread.
        unsafe {
            glib::ffi::g_rec_mutex_lock(std::ptr::addr_of_mut!((*element.as_ptr()).state_lock))
        };
        StateLock(element)
    }
}

impl Drop for StateLock<'_> {
    fn drop(&mut self) {
        // SAFETY: this thread took the lock in `acquire`; the element is still alive (borrowed).
        unsafe {
            glib::ffi::g_rec_mutex_unlock(std::ptr::addr_of_mut!((*self.0.as_ptr()).state_lock))
        };
    }
}

/// The qdata key that marks a message an fdlink element posted on behalf of its peer.
static REPOSTED_MARK: LazyLock<glib::Quark> =
    LazyLock::new(|| glib::Quark::from_str("fdlink-reposted"));

/// The seqnums of the messages elements posted for their own pipeline only (`remember`), for
/// the whole process: a message is seen by every link element of its pipeline, and seqnums
/// are unique in a process.
static LOCAL: Mutex<VecDeque<gst::Seqnum>> = Mutex::new(VecDeque::new());

/// Messages fdlink elements post for their peers, which no link forwards. Each reposted
/// message is marked (qdata on the message itself), so the bus watch of every link element of
/// the pipeline sees the mark, not only the element that posted it: with two links between the
/// same two pipelines, a message that crossed one must not come back over the other. A
/// message crosses one link, once; one reposted for a peer goes no further.
#[derive(Default)]
pub struct Reposted;

impl Reposted {
    const KEEP: usize = 64;

    /// Keeps the message with `seqnum`, about to be posted for this pipeline's application
    /// only, from every link.
    pub fn remember(&self, seqnum: gst::Seqnum) {
        let mut q = LOCAL.lock().unwrap();
        if q.len() == Self::KEEP {
            q.pop_front();
        }
        q.push_back(seqnum);
    }

    /// Whether `message` was posted for a peer, or for this pipeline only: no link sends it.
    pub fn contains(&self, message: &gst::MessageRef) -> bool {
        is_marked(message) || LOCAL.lock().unwrap().contains(&message.seqnum())
    }

    /// Posts the peer's message on the bus of `element`, named after `peer`, marked so that no
    /// link sends it on. False when the packet does not make a message.
    pub fn post(&self, element: &gst::Element, p: &MessagePacket, peer: &str) -> bool {
        let Some(msg) = control::message_from_packet(p, element, peer) else {
            return false;
        };
        self.post_message(element, msg);
        true
    }

    /// Posts a message made for the peer (see [`error_as_warning`]), marked.
    pub fn post_message(&self, element: &gst::Element, msg: gst::Message) {
        mark(&msg);
        let _ = element.post_message(msg);
    }
}

/// Marks `msg` as posted for a peer (before it is posted: bus watches run as it is).
fn mark(msg: &gst::MessageRef) {
    // SAFETY: the message is a valid GstMiniObject for the call; qdata takes its own lock, so
    // it may be set on a message others hold; the data is a non-null tag that is never
    // dereferenced and needs no destroy function.
    unsafe {
        gst::ffi::gst_mini_object_set_qdata(
            msg.as_ptr() as *mut gst::ffi::GstMiniObject,
            glib::translate::IntoGlib::into_glib(*REPOSTED_MARK),
            std::ptr::NonNull::<u8>::dangling().as_ptr() as glib::ffi::gpointer,
            None,
        );
    }
}

/// Whether `msg` was posted by an fdlink element for its peer.
fn is_marked(msg: &gst::MessageRef) -> bool {
    // SAFETY: the message is a valid GstMiniObject for the call; the result is only compared
    // with NULL.
    unsafe {
        !gst::ffi::gst_mini_object_get_qdata(
            msg.as_ptr() as *mut gst::ffi::GstMiniObject,
            glib::translate::IntoGlib::into_glib(*REPOSTED_MARK),
        )
        .is_null()
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

/// The packet for a bus message that `crosses` to the peer, unless `reposted` says a peer
/// (over this link or another) sent it, or it is for this pipeline only.
pub fn crossing_packet(
    message: &gst::MessageRef,
    reposted: &Reposted,
    crosses: fn(&gst::MessageRef) -> bool,
) -> Option<MessagePacket> {
    if crosses(message) && !reposted.contains(message) {
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
    fn a_message_reposted_by_one_link_crosses_no_other() {
        gst::init().unwrap();
        let pipeline = gst::Pipeline::new();
        let (one, other) = (
            gst::ElementFactory::make("fakesink").build().unwrap(),
            gst::ElementFactory::make("fakesink").build().unwrap(),
        );
        pipeline.add_many([&one, &other]).unwrap();
        let bus = pipeline.bus().unwrap();
        let (mine, theirs) = (Reposted, Reposted);
        let s = gst::Structure::builder("fdlink-test").build();
        let own = gst::message::Element::builder(s).src(&one).build();
        let p = control::message_to_packet(&own).unwrap();
        // The element's own message crosses; the peer's, reposted by `one`, crosses neither
        // `one`'s link nor `other`'s.
        assert!(crossing_packet(&own, &theirs, control::forwards).is_some());
        assert!(mine.post(&one, &p, "producer (pid 1)"));
        let reposted = bus.pop_filtered(&[gst::MessageType::Element]).unwrap();
        assert!(crossing_packet(&reposted, &mine, control::forwards).is_none());
        assert!(crossing_packet(&reposted, &theirs, control::forwards).is_none());
        // A message for this pipeline only crosses no link either.
        let local = gst::message::Element::builder(gst::Structure::new_empty("local"))
            .src(&other)
            .build();
        theirs.remember(local.seqnum());
        assert!(crossing_packet(&local, &mine, control::forwards).is_none());
    }

    #[test]
    fn follow_decisions() {
        use End::{Consumer, Producer};
        let playing = state_packet(gst::State::Playing, Mode::Independent);
        assert_eq!(playing.state, 4);
        for at in [Producer, Consumer] {
            assert_eq!(
                follow(Mode::Follow, &playing, at),
                Follow::Go(gst::State::Playing)
            );
            assert_eq!(follow(Mode::Independent, &playing, at), Follow::Ignore);
        }
        let paused = state_packet(gst::State::Paused, Mode::Independent);
        assert_eq!(
            follow(Mode::Follow, &paused, Consumer),
            Follow::Go(gst::State::Paused)
        );
        let ready = state_packet(gst::State::Ready, Mode::Independent);
        assert_eq!(follow(Mode::Follow, &ready, Consumer), Follow::Ignore);
        let from_follower = state_packet(gst::State::Paused, Mode::Follow);
        for at in [Producer, Consumer] {
            assert_eq!(follow(Mode::Follow, &from_follower, at), Follow::BothFollow);
        }
        // A following consumer's own pause is the producer's pipeline's too; a following
        // producer's states are its own pipeline's only.
        assert_eq!(
            follow(Mode::Independent, &from_follower, Producer),
            Follow::Go(gst::State::Paused)
        );
        assert_eq!(
            follow(Mode::Independent, &from_follower, Consumer),
            Follow::Ignore
        );
        let ready_from_follower = state_packet(gst::State::Ready, Mode::Follow);
        assert_eq!(
            follow(Mode::Independent, &ready_from_follower, Producer),
            Follow::Ignore
        );
    }
}
