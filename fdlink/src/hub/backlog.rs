//! What a consumer that joins gets first: the sticky packets (state, stream-start, caps,
//! segment, tags, EOS), then, per sync-method, the latest-keyframe backlog, and a paused
//! producer's preroll frame.
//!
//! The backlog's frames reach a joiner after the moment they were due: its decoder needs them
//! to decode what follows, but none should be shown (else the joiner shows the GOP so far at
//! once, or its sinks drop the late frames and show the keyframe alone, long stale). So the
//! joiner gets them DECODE_ONLY (GStreamer 1.26's decoders drop what they decode from such a
//! buffer; 1.22's ignore the flag), after the producer's segment with its start moved to the
//! end of the backlog (`Hub::set_joiner_segment`): every decoder, and every sink, clips what
//! lies before a segment's start.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use super::consumer::{Consumer, HoldKind, Phase, WaitingFrame};
use super::{Frame, HeldItem, Hub, HubEvent, Inner, Removal, RetiredFiles, SyncMethod};
use crate::protocol::{BufferHeader, TIME_NONE};

/// Frames the latest-keyframe backlog keeps at most; a longer GOP empties it, and joiners
/// wait for the next keyframe instead.
const BACKLOG_MAX: usize = crate::protocol::MAX_JOIN_BACKLOG;

/// GST_BUFFER_FLAG_DECODE_ONLY, among the GstBufferFlags bits a buffer packet carries.
const DECODE_ONLY: u32 = 1 << 5;

/// Which sticky slot an event packet fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyKind {
    StreamStart,
    Segment,
    Tags,
    Eos,
    /// flush-stop: clears segment and EOS, like GStreamer's own sticky events.
    FlushStop,
    /// A State packet: the latest one is replayed to late joiners.
    State,
    /// A State packet saying PAUSED: also a preroll barrier (see `wait_prerolled`).
    PausedState,
    None,
}

/// Encodes the producer's current segment (an Event packet) with its start moved to the given
/// time, its running times unchanged; None when that start would clip nothing.
type JoinerSegment = Box<dyn Fn(u64) -> Option<Vec<u8>> + Send>;

/// The control packets a joiner is sent before anything else.
#[derive(Default)]
pub(super) struct Sticky {
    stream_start: Option<Vec<u8>>,
    caps: Option<Vec<u8>>,
    segment: Option<Vec<u8>>,
    tags: Option<Vec<u8>>,
    eos: Option<Vec<u8>>,
    /// The producer's last State packet (not a stream event: kept across streams).
    state: Option<Vec<u8>>,
    /// That State packet says PAUSED: a preroll barrier for the consumer it is replayed to.
    state_is_barrier: bool,
    /// The caps are of encoded media, not raw (`Hub::set_encoded`; sync-method=auto).
    encoded: bool,
    /// The segment a joiner given the backlog gets (see the module docs).
    joiner_segment: Option<JoinerSegment>,
}

impl Sticky {
    fn replay(&self) -> impl Iterator<Item = &Vec<u8>> {
        [
            &self.state,
            &self.stream_start,
            &self.caps,
            &self.segment,
            &self.tags,
            &self.eos,
        ]
        .into_iter()
        .flatten()
    }

    /// Keeps a control packet the stream sends (`is_caps`, or the kind of event it is) for
    /// late joiners.
    pub(super) fn store(&mut self, bytes: &[u8], sticky: StickyKind, is_caps: bool) {
        match (is_caps, sticky) {
            (true, _) => self.caps = Some(bytes.to_vec()),
            (_, StickyKind::StreamStart) => {
                // A new stream: the old one's segment, tags and EOS no longer apply.
                *self = Sticky {
                    stream_start: Some(bytes.to_vec()),
                    caps: self.caps.take(),
                    state: self.state.take(),
                    state_is_barrier: self.state_is_barrier,
                    encoded: self.encoded,
                    ..Default::default()
                };
            }
            (_, StickyKind::Segment) => self.segment = Some(bytes.to_vec()),
            (_, StickyKind::Tags) => self.tags = Some(bytes.to_vec()),
            (_, StickyKind::Eos) => self.eos = Some(bytes.to_vec()),
            (_, StickyKind::State | StickyKind::PausedState) => {
                self.state = Some(bytes.to_vec());
                self.state_is_barrier = sticky == StickyKind::PausedState;
            }
            (_, StickyKind::FlushStop) => {
                self.segment = None;
                self.joiner_segment = None;
                self.eos = None;
            }
            (_, StickyKind::None) => {}
        }
    }
}

/// A frame kept for consumers that join later: the latest-keyframe backlog (joiners
/// mid-GOP) and the preroll frame (joiners while the producer is paused). Each joiner gets a
/// packet of its own (`waiting`): the backlog's headers change for it.
pub(super) struct BacklogEntry {
    pub(super) id: u64,
    header: BufferHeader,
    /// Duplicates of the frame's fds: the held item may go before the entry. Shared with the
    /// packets joiners are sent, so a joiner's burst of up to `BACKLOG_MAX` frames costs no
    /// fds of its own.
    fds: Arc<[OwnedFd]>,
    size: u64,
    keyframe: bool,
    /// Counted in `frames-sent` (given to a consumer when it was offered, or to a joiner).
    pub(super) counted: bool,
    pub(super) zero_copy: bool,
}

impl BacklogEntry {
    fn new(f: &Frame<'_>) -> Result<BacklogEntry, Removal> {
        let fds = f
            .fds
            .iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<Result<Arc<[OwnedFd]>, _>>()
            .map_err(|e| Removal::Error(format!("cannot duplicate a frame's fd: {e}")))?;
        Ok(BacklogEntry {
            id: f.id,
            header: f.header.clone(),
            fds,
            size: f.size,
            keyframe: f.keyframe,
            counted: true,
            zero_copy: true,
        })
    }

    /// Where the frame ends (its PTS plus duration): None without a PTS.
    fn end(&self) -> Option<u64> {
        let h = &self.header;
        (h.pts != TIME_NONE).then(|| {
            h.pts.saturating_add(if h.duration == TIME_NONE {
                1
            } else {
                h.duration
            })
        })
    }

    /// The frame as a joiner is sent it, with `header`.
    fn waiting(&self, header: &BufferHeader) -> Result<Arc<WaitingFrame>, Removal> {
        Ok(WaitingFrame::sharing(header.clone(), self.fds.clone()))
    }

    /// The header a joiner gets the frame with from the backlog: DECODE_ONLY, and with the
    /// producer's `base_time` if the frame had none (sent while the producer prerolled),
    /// so the joiner places it on the same timeline as the frames after it.
    fn backlog_header(&self, base_time: u64) -> BufferHeader {
        let mut h = self.header.clone();
        h.flags |= DECODE_ONLY;
        if h.base_time == TIME_NONE {
            h.base_time = base_time;
        }
        h
    }
}

impl<H: Send + 'static, F: RetiredFiles> Hub<H, F> {
    /// The producer plays (or flushed): joiners no longer get the preroll frame.
    pub fn end_preroll(&self) {
        clear_preroll_frame(&mut self.lock());
    }

    /// Says whether the stream's caps are of encoded media (or raw), for sync-method=auto.
    pub fn set_encoded(&self, encoded: bool) {
        let mut inner = self.lock();
        inner.sticky.encoded = encoded;
        if self.sync_method(&inner) != SyncMethod::LatestKeyframe {
            clear_backlog(&mut inner);
        }
    }

    /// Sets how the producer's current segment is encoded for a joiner given the backlog
    /// (see the module docs); a flush or a new stream forgets it.
    pub fn set_joiner_segment(&self, segment: impl Fn(u64) -> Option<Vec<u8>> + Send + 'static) {
        self.lock().sticky.joiner_segment = Some(Box::new(segment));
    }

    /// The sync-method in effect for the stream now (auto resolved).
    pub(super) fn sync_method(&self, inner: &Inner<H>) -> SyncMethod {
        self.limits.sync_method.resolve(inner.sticky.encoded)
    }

    /// sync-method=latest-keyframe: keeps the frame in the backlog that late joiners get
    /// first (a keyframe starts it anew). Returns the hold the backlog takes on it (0 or 1).
    pub(super) fn keep_in_backlog(&self, inner: &mut Inner<H>, f: &Frame<'_>) -> u32 {
        if self.sync_method(inner) != SyncMethod::LatestKeyframe || f.slow_copy {
            return 0;
        }
        if f.keyframe || inner.backlog.len() >= BACKLOG_MAX {
            clear_backlog(inner);
        }
        if !f.keyframe && inner.backlog.is_empty() {
            // No keyframe since the backlog was emptied: joiners wait for the next one.
            return 0;
        }
        match BacklogEntry::new(f) {
            Ok(entry) => {
                inner.backlog.push(entry);
                1
            }
            Err(reason) => {
                inner.deferred.push(HubEvent::Warning(format!(
                    "latest-keyframe backlog emptied: {reason}"
                )));
                clear_backlog(inner);
                0
            }
        }
    }

    /// A consumer (at `pos`) finished its hello: it is ready, and is sent the sticky packets,
    /// then what starts its stream (`start_stream`).
    pub(super) fn welcome(
        &self,
        inner: &mut Inner<H>,
        pos: usize,
        follows: bool,
    ) -> Result<(), Removal> {
        let sticky = &inner.sticky;
        let c = &mut inner.consumers[pos];
        c.phase = Phase::Ready;
        c.follows = follows;
        for p in sticky.replay() {
            c.queue_or_send(p)?;
        }
        c.barriers_sent += u32::from(sticky.state_is_barrier && sticky.state.is_some());
        self.start_stream(inner, pos)
    }

    /// Where a consumer that just finished its hello starts, per sync-method: the next
    /// frame, the next keyframe, or the backlog from the latest keyframe (queued at once).
    fn start_stream(&self, inner: &mut Inner<H>, pos: usize) -> Result<(), Removal> {
        let method = self.sync_method(inner);
        let Inner {
            consumers,
            backlog,
            preroll_frame,
            held,
            stats,
            sticky,
            ..
        } = inner;
        let c = &mut consumers[pos];
        match method {
            SyncMethod::Latest | SyncMethod::Auto => {}
            SyncMethod::NextKeyframe => c.awaiting_keyframe = true,
            SyncMethod::LatestKeyframe if backlog.is_empty() => {
                // Auto: no keyframe kept, the next buffer (see SyncMethod::Auto).
                c.awaiting_keyframe = self.limits.sync_method != SyncMethod::Auto;
            }
            SyncMethod::LatestKeyframe => {
                // A paused producer's preroll frame goes below, as it is: the joiner shows
                // it, as the producer's sink does.
                let preroll_id = preroll_frame.as_ref().map(|p| p.id);
                let past: Vec<&BacklogEntry> = backlog
                    .iter()
                    .filter(|e| Some(e.id) != preroll_id)
                    .collect();
                let live = past.iter().filter_map(|e| e.end()).max();
                if let (Some(live), Some(segment), None) =
                    (live, &sticky.joiner_segment, &sticky.eos)
                    && let Some(bytes) = segment(live)
                {
                    c.queue_or_send(&bytes)?;
                }
                let base_time = backlog
                    .iter()
                    .rev()
                    .map(|e| e.header.base_time)
                    .find(|&t| t != TIME_NONE)
                    .unwrap_or(TIME_NONE);
                for e in past {
                    enqueue_kept(c, held, e, &e.backlog_header(base_time))?;
                }
                self.waker.wake();
            }
        }
        // A paused producer's preroll frame, unless the backlog gave it already.
        if let Some(p) = preroll_frame
            && !c.held.contains_key(&p.id)
            && (!c.awaiting_keyframe || p.keyframe)
        {
            c.awaiting_keyframe = false;
            enqueue_kept(c, held, p, &p.header)?;
            if !p.counted {
                p.counted = true;
                stats.frames_sent += 1;
                stats.frames_zero_copy += u64::from(p.zero_copy);
                stats.frames_empty += u64::from(p.header.memories.is_empty());
                stats.frames_without_consumer = stats.frames_without_consumer.saturating_sub(1);
            }
            self.waker.wake();
        }
        Ok(())
    }
}

/// Queues a kept frame (backlog, preroll frame) for a consumer that just joined.
fn enqueue_kept<H>(
    c: &mut Consumer,
    held: &mut HashMap<u64, HeldItem<H>>,
    e: &BacklogEntry,
    header: &BufferHeader,
) -> Result<(), Removal> {
    c.enqueue(
        e.id,
        e.waiting(header)?,
        e.size,
        HoldKind::Kept,
        Instant::now(),
    );
    if let Some(h) = held.get_mut(&e.id) {
        h.holders += 1;
    }
    Ok(())
}

/// Keeps the frame the producer prerolled on for consumers that join while it is paused.
/// Returns the hold that takes on it (0 or 1).
pub(super) fn keep_preroll_frame<H>(inner: &mut Inner<H>, f: &Frame<'_>) -> u32 {
    if !f.preroll {
        return 0;
    }
    clear_preroll_frame(inner);
    match BacklogEntry::new(f) {
        Ok(entry) => {
            inner.preroll_frame = Some(entry);
            1
        }
        Err(reason) => {
            inner.deferred.push(HubEvent::Warning(format!(
                "preroll frame not kept for joiners: {reason}"
            )));
            0
        }
    }
}

/// Lets go of the preroll frame (the producer plays, flushes or stops).
pub(super) fn clear_preroll_frame<H>(inner: &mut Inner<H>) {
    if let Some(e) = inner.preroll_frame.take() {
        inner.release_one(e.id);
    }
}

/// Empties the latest-keyframe backlog, dropping its hold on each frame.
pub(super) fn clear_backlog<H>(inner: &mut Inner<H>) {
    let ids: Vec<u64> = inner.backlog.drain(..).map(|e| e.id).collect();
    for id in ids {
        inner.release_one(id);
    }
}
