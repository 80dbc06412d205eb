//! Consumers' requests to fdlinksink: upstream events and queries run against this pipeline,
//! bus messages posted on its bus (an independent consumer's error as a warning, and that
//! consumer dropped), State packets followed (mode=follow).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_base::prelude::*;

use super::CAT;
use super::hub::{Hub, Request};
use super::requests::RequestPool;
use crate::control;
use crate::session::{self, Mode, Reposted};
use fdlink::hub::Removal;
use fdlink::protocol::{MessagePacket, Packet, QueryReplyPacket};

/// How many failed consumers [`Server`] remembers (a consumer's errors come together).
const FAILED_KEEP: usize = 64;

/// The settings a request is served with, read when it arrives.
#[derive(Clone, Copy, Debug)]
pub(super) struct Serving {
    /// `forward-messages`.
    pub forward_messages: bool,
    /// `mode`.
    pub mode: Mode,
}

impl Serving {
    /// Whether a consumer's error stops this pipeline: only when the two pipelines run as one
    /// session, either following the other's state (the consumer's fdlinksrc or this
    /// fdlinksink in mode=follow). Otherwise the error is that consumer's alone.
    fn shares_errors(&self, from_follower: bool) -> bool {
        from_follower || self.mode == Mode::Follow
    }
}

/// Runs consumers' requests for one fdlinksink.
#[derive(Default)]
pub(super) struct Server {
    /// Runs upstream events and queries.
    requests: RequestPool,
    /// Consumers' messages posted here: the bus watch does not send them back.
    reposted: Arc<Reposted>,
    /// The latest consumers dropped for their error: the errors that follow from the first
    /// (a source's "Internal data stream error") are not posted again.
    failed: Mutex<VecDeque<u64>>,
    /// The latency the consumers were last told this pipeline configured.
    latency_sent: Mutex<Option<gst::ClockTime>>,
}

impl Server {
    pub(super) fn reposted(&self) -> &Arc<Reposted> {
        &self.reposted
    }

    /// Whether the consumers are to be told of `latency`, which this pipeline just configured:
    /// only when it differs from the last they were told of (a consumer that connects asks
    /// for itself). A pipeline configures its latency again at every latency message, also
    /// the ones its peers' latency messages cause; telling the consumers each time would make
    /// two pipelines with links both ways recompute each other's latency without end.
    pub(super) fn latency_changed(&self, latency: gst::ClockTime) -> bool {
        self.latency_sent.lock().unwrap().replace(latency) != Some(latency)
    }

    /// An independent consumer's pipeline failed: its first error goes on this bus as a
    /// warning naming it (with forward-messages), and the consumer is dropped, its held
    /// buffers released. This pipeline and the other consumers carry on.
    fn drop_failed(
        &self,
        element: &gst_base::BaseSink,
        serving: Serving,
        (id, who): (u64, &str),
        hub: &Hub,
        packet: &MessagePacket,
    ) {
        {
            let mut failed = self.failed.lock().unwrap();
            if failed.contains(&id) {
                gst::debug!(CAT, obj = element, "{who} failed again: {packet:?}");
                return;
            }
            if failed.len() == FAILED_KEEP {
                failed.pop_front();
            }
            failed.push_back(id);
        }
        let fate = format!("{who} is disconnected: its pipeline failed in");
        match session::error_as_warning(packet, element.upcast_ref(), &fate) {
            Some(warning) => {
                if let gst::MessageView::Warning(w) = warning.view() {
                    gst::warning!(CAT, obj = element, "{}", w.error());
                }
                if serving.forward_messages {
                    self.reposted.post_message(element.upcast_ref(), warning);
                }
            }
            None => gst::warning!(CAT, obj = element, "{fate} (an unreadable error)"),
        }
        let reason = Removal::Error("its pipeline posted an error".into());
        if !hub.disconnect(id, reason) {
            gst::debug!(CAT, obj = element, "{who} had already gone");
        }
    }

    /// Runs consumer `id`'s request against `element`'s pipeline. Events and queries go
    /// upstream from the request threads (see `requests`): they may wait on the streaming
    /// thread (a flushing seek), which may wait on releases that only the control thread, the
    /// one calling this, reads.
    pub(super) fn serve(
        &self,
        element: &gst_base::BaseSink,
        serving: Serving,
        id: u64,
        pid: Option<i32>,
        hub: Arc<Hub>,
        request: Request,
    ) {
        match request {
            Request::Message {
                packet,
                from_follower,
            } => {
                let who = format!("consumer {id} (pid {})", pid.unwrap_or(0));
                if packet.message_type == gst::ffi::GST_MESSAGE_ERROR
                    && !serving.shares_errors(from_follower)
                {
                    self.drop_failed(element, serving, (id, &who), &hub, &packet);
                    return;
                }
                if !serving.forward_messages {
                    return;
                }
                if !self.reposted.post(element.upcast_ref(), &packet, &who) {
                    gst::debug!(CAT, obj = element, "dropping unreadable message from {who}");
                }
            }
            Request::UpstreamEvent(p) => {
                let Some(event) = control::event_from_packet(&p) else {
                    gst::debug!(
                        CAT,
                        obj = element,
                        "dropping unreadable event from consumer {id}"
                    );
                    return;
                };
                gst::debug!(
                    CAT,
                    obj = element,
                    "consumer {id} sends {:?} upstream",
                    event.type_()
                );
                let ty = event.type_();
                let sink = element.clone();
                if let Err(e) = self.requests.submit(id, move || {
                    super::seeks::push_upstream(sink.sink_pad().upcast_ref(), event);
                }) {
                    gst::warning!(
                        CAT,
                        obj = element,
                        "dropping consumer {id}'s {ty} event: {e}"
                    );
                }
            }
            Request::State(st) => {
                if !session::follow_peer(element.upcast_ref(), serving.mode, &st) {
                    gst::element_error!(
                        element,
                        gst::CoreError::StateChange,
                        ("fdlinksink mode=follow and consumer {id}'s fdlinksrc mode=follow: each would follow the other; set one of them to mode=independent")
                    );
                }
            }
            Request::Query(p) => {
                let (query_id, refused_hub) = (p.id, hub.clone());
                let sink = element.clone();
                let submitted = self.requests.submit(id, move || {
                    let (answered, structure) = match control::query_from_packet(&p) {
                        Some(mut q) => {
                            let answered = sink.sink_pad().peer_query(q.get_mut().unwrap());
                            if answered
                                && let gst::QueryViewMut::Latency(l) =
                                    q.get_mut().unwrap().view_mut()
                            {
                                // A syncing sink holds each frame for the latency this
                                // pipeline renders with, which may exceed what its
                                // upstream alone needs. With sync=false frames leave at
                                // once: the upstream's latency is all, and two pipelines
                                // with links both ways do not raise each other's without
                                // end.
                                let (live, min, max) = l.result();
                                if sink.is_sync() {
                                    l.set(live, min.max(sink.latency()), max);
                                }
                            }
                            control::reply_structure(answered, &q)
                        }
                        None => (false, String::new()),
                    };
                    send_query_reply(&hub, id, p.id, answered, structure);
                });
                if let Err(e) = submitted {
                    // Answered at once, so the consumer's query fails now, not at its
                    // ack-timeout.
                    gst::warning!(CAT, obj = element, "refusing consumer {id}'s query: {e}");
                    send_query_reply(&refused_hub, id, query_id, false, String::new());
                }
            }
        }
    }
}

/// Answers consumer `consumer`'s query `id` (`answered` false: this pipeline could not).
fn send_query_reply(hub: &Hub, consumer: u64, id: u32, answered: bool, structure: String) {
    let reply = Packet::QueryReply(QueryReplyPacket {
        id,
        answered,
        structure,
    });
    hub.reply(consumer, &reply);
}
