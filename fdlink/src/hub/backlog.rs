//! What a consumer that joins gets first: the sticky packets (state, stream-start, caps,
//! segment, tags, EOS), then, per sync-method, the latest-keyframe backlog, and a paused
//! producer's preroll frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::consumer::{Consumer, HoldKind, Phase, WaitingFrame};
use super::{Frame, HeldItem, Hub, HubEvent, Inner, Removal, RetiredFiles, SyncMethod};

/// Frames the latest-keyframe backlog keeps at most; a longer GOP empties it, and joiners
/// wait for the next keyframe instead.
const BACKLOG_MAX: usize = 256;

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
                self.eos = None;
            }
            (_, StickyKind::None) => {}
        }
    }
}

/// A frame kept for consumers that join later: the latest-keyframe backlog (joiners
/// mid-GOP) and the preroll frame (joiners while the producer is paused).
pub(super) struct BacklogEntry {
    pub(super) id: u64,
    frame: Arc<WaitingFrame>,
    size: u64,
    keyframe: bool,
    /// Counted in `frames-sent` (given to a consumer when it was offered, or to a joiner).
    pub(super) counted: bool,
    pub(super) zero_copy: bool,
}

impl BacklogEntry {
    fn new(f: &Frame<'_>) -> Result<BacklogEntry, Removal> {
        Ok(BacklogEntry {
            id: f.id,
            frame: WaitingFrame::new(f)?,
            size: f.size,
            keyframe: f.keyframe,
            counted: true,
            zero_copy: true,
        })
    }
}

impl<H: Send + 'static, F: RetiredFiles> Hub<H, F> {
    /// The producer plays (or flushed): joiners no longer get the preroll frame.
    pub fn end_preroll(&self) {
        clear_preroll_frame(&mut self.lock());
    }

    /// sync-method=latest-keyframe: keeps the frame in the backlog that late joiners get
    /// first (a keyframe starts it anew). Returns the hold the backlog takes on it (0 or 1).
    pub(super) fn keep_in_backlog(&self, inner: &mut Inner<H>, f: &Frame<'_>) -> u32 {
        if self.limits.sync_method != SyncMethod::LatestKeyframe || f.slow_copy {
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
        let Inner {
            consumers,
            backlog,
            preroll_frame,
            held,
            stats,
            ..
        } = inner;
        let c = &mut consumers[pos];
        match self.limits.sync_method {
            SyncMethod::Latest => {}
            SyncMethod::NextKeyframe => c.awaiting_keyframe = true,
            SyncMethod::LatestKeyframe if backlog.is_empty() => c.awaiting_keyframe = true,
            SyncMethod::LatestKeyframe => {
                for e in backlog.iter() {
                    enqueue_kept(c, held, e)?;
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
            enqueue_kept(c, held, p)?;
            if !p.counted {
                p.counted = true;
                stats.frames_sent += 1;
                stats.frames_zero_copy += u64::from(p.zero_copy);
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
) -> Result<(), Removal> {
    c.enqueue(
        e.id,
        e.frame.clone(),
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
