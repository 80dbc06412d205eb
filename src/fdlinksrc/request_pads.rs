//! A muxer's request pad picked for the wrong media type. gst-launch links `fdlinksrc ! avimux`
//! (or `fdlinksrc ! queue ! avimux`, `fdlinksrc ! tee ! queue ! avimux`) when the source's caps
//! are still ANY: the producer's caps come only once it connects, after the pipeline is built.
//! avimux then gives a pad of its first request template that takes ANY (`audio_%u`), where in
//! one process the source's caps would have picked `video_%u`. Once the caps are known (the
//! producer's, or the filter of its caps query), the link moves to a pad of the right
//! template, as one process would have linked it.

use std::sync::Mutex;
use std::sync::mpsc;

use gst::prelude::*;
use gst::subclass::prelude::*;

use super::imp::{CAT, FdlinkSrc};

/// Elements passed through between this source and the request pads after them (queues,
/// tees).
const MAX_PASS_THROUGH: usize = 16;

impl FdlinkSrc {
    /// For each request pad downstream (see `request_pads_downstream`) whose template has
    /// none of the media types of `caps`, links the pad feeding it to a new pad of a request
    /// template of the same element that has one (a template that takes `caps` as they are
    /// first) and releases the old pad. The caps may still need the producer to renegotiate
    /// for the new pad (H.264 in avc for a pad that takes byte-stream). True if it relinked.
    pub(super) fn relink_request_pad(&self, pad: &gst::Pad, caps: &gst::CapsRef) -> bool {
        if caps.is_any() || caps.is_empty() {
            return false;
        }
        // The streaming thread (new caps) and the reader (a caps query) may both get here.
        let _one_at_a_time = RELINKING.lock().unwrap();
        let mut relinked = false;
        for (feeder, peer) in request_pads_downstream(pad) {
            relinked |= self.relink_one(&feeder, &peer, caps);
        }
        relinked
    }

    /// `relink_request_pad` for the request pad `peer`, linked to `feeder`.
    fn relink_one(&self, feeder: &gst::Pad, peer: &gst::Pad, caps: &gst::CapsRef) -> bool {
        let has_media = |c: &gst::CapsRef| {
            c.is_any()
                || c.iter()
                    .any(|s| caps.iter().any(|ours| ours.name() == s.name()))
        };
        let Some(element) = peer.parent_element() else {
            return false;
        };
        match peer.pad_template() {
            Some(t) if !has_media(t.caps()) => {}
            _ => return false,
        }
        let mut candidates: Vec<gst::PadTemplate> = element
            .pad_template_list()
            .into_iter()
            .filter(|t| {
                t.direction() == gst::PadDirection::Sink
                    && t.presence() == gst::PadPresence::Request
                    && has_media(t.caps())
            })
            .collect();
        candidates.sort_by_key(|t| !t.caps().can_intersect(caps));
        let name = |p: &gst::Pad| format!("{}:{}", element.name(), p.name());
        for template in candidates {
            let Some(new_peer) = element.request_pad(&template, None, Some(&caps.to_owned()))
            else {
                continue;
            };
            if let Err(e) = self.move_link(feeder, peer, &new_peer) {
                gst::warning!(
                    CAT,
                    imp = self,
                    "cannot link {} to {}: {e}",
                    feeder.path_string(),
                    name(&new_peer)
                );
                element.release_request_pad(&new_peer);
                return false;
            }
            element.release_request_pad(peer);
            gst::info!(
                CAT,
                imp = self,
                "{} takes none of {caps}: {} linked to {} instead",
                name(peer),
                feeder.path_string(),
                name(&new_peer)
            );
            forget_released_pad(&element);
            return true;
        }
        false
    }

    /// Moves `feeder`'s link from `old` to `new` while no data crosses `feeder` (an idle
    /// probe: a queue's streaming thread may be pushing into `old`); `feeder` stays linked to
    /// `old` if `new` refuses the link.
    fn move_link(&self, feeder: &gst::Pad, old: &gst::Pad, new: &gst::Pad) -> Result<(), String> {
        let (tx, rx) = mpsc::sync_channel(1);
        let tx = Mutex::new(Some(tx));
        let (old_peer, new_peer) = (old.clone(), new.clone());
        let probe = feeder.add_probe(gst::PadProbeType::IDLE, move |feeder, _| {
            // An idle probe runs once; the take() makes a second call do nothing.
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = feeder.unlink(&old_peer);
                let linked = feeder.link(&new_peer).map(drop).map_err(|e| {
                    let _ = feeder.link(&old_peer);
                    e.to_string()
                });
                let _ = tx.send(linked);
            }
            gst::PadProbeReturn::Remove
        });
        match rx.recv_timeout(self.ack_timeout()) {
            Ok(linked) => linked,
            Err(_) => {
                if let Some(id) = probe {
                    feeder.remove_probe(id);
                }
                // It may have run between the timeout and the removal.
                rx.try_recv().unwrap_or_else(|_| {
                    Err(format!(
                        "{} stayed busy for ack-timeout",
                        feeder.path_string()
                    ))
                })
            }
        }
    }
}

/// The request pads this source's data reaches first, each with the pad linked to it (`pad`
/// itself, or a src pad of an element passed through): the peer of `pad`, or those reached
/// through elements that give their caps as they take them (see `pass_through_srcs`).
fn request_pads_downstream(pad: &gst::Pad) -> Vec<(gst::Pad, gst::Pad)> {
    let mut found = Vec::new();
    let mut feeders = vec![pad.clone()];
    let mut passed = 0;
    while let Some(feeder) = feeders.pop() {
        let Some(peer) = feeder.peer() else {
            continue;
        };
        if peer
            .pad_template()
            .is_some_and(|t| t.presence() == gst::PadPresence::Request)
        {
            found.push((feeder, peer));
        } else if passed < MAX_PASS_THROUGH {
            passed += 1;
            feeders.extend(pass_through_srcs(&peer));
        }
    }
    found
}

/// The src pads of the element of `sink_pad` when that is its one sink pad, always there,
/// and every pad template it has takes ANY caps (identity, queue, valve, tee): gst-launch
/// linked those src pads with ANY caps too, so a request pad after them was picked as blindly
/// as one after this source. An element with other template caps (a converter, a parser, a
/// visualizer) made the choice for its own media type, which stays.
fn pass_through_srcs(sink_pad: &gst::Pad) -> Vec<gst::Pad> {
    let Some(element) = sink_pad.parent_element() else {
        return Vec::new();
    };
    let one_sink = sink_pad
        .pad_template()
        .is_some_and(|t| t.presence() == gst::PadPresence::Always)
        && element.sink_pads().len() == 1;
    let takes_any = element
        .pad_template_list()
        .iter()
        .all(|t| t.caps().is_any() && t.presence() != gst::PadPresence::Sometimes);
    if one_sink && takes_any {
        element.src_pads()
    } else {
        Vec::new()
    }
}

/// qtmux and its kin (mp4mux, ...) add a track for each pad they give out and drop a released
/// pad's track only when they stop, so the released pad would leave an empty track that makes
/// the file unreadable. Nothing has reached such a muxer yet (it refused our caps), so it is
/// taken through READY, which rebuilds its tracks from the pads it has, and back.
fn forget_released_pad(element: &gst::Element) {
    let Some(qtmux) = gst::glib::Type::from_name("GstBaseQTMux") else {
        return;
    };
    if !element.type_().is_a(qtmux) {
        return;
    }
    let _ = element.set_state(gst::State::Ready);
    let _ = element.sync_state_with_parent();
}

/// Held while a request pad downstream is swapped (`relink_request_pad`).
static RELINKING: Mutex<()> = Mutex::new(());
