//! Limits and the slow-consumer policy: what one consumer's share of a frame is, and the
//! streaming thread's waits for room (`max-held`, `max-held-total`, `max-queued`) and for the
//! following consumers' prerolls.

use std::time::{Duration, Instant};

use super::consumer::{Consumer, HoldKind, WaitingFrame};
use super::{Frame, Hub, HubEvent, HubLog, Inner, Removal, RetiredFiles};

/// Buffers a consumer may hold and still be given frames once all together hold
/// `max-held-total`: the frame on screen and the next, what a consumer that keeps up holds.
pub(super) const SHARE_PAST_TOTAL: usize = 2;

/// What the producer does with a consumer that is at `max-held` or whose socket is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowPolicy {
    /// Live upstream: Drop. Otherwise: Block, but a consumer still full after a bounded wait
    /// is skipped until it releases something.
    Auto,
    /// Skip the frame for that consumer.
    Drop,
    /// Wait until every consumer has room (lossless; one stuck consumer stops the producer).
    Block,
    /// Remove that consumer.
    Disconnect,
    /// A consumer at `max-held` gets the frame as a copy in the memfd pool, so it loses
    /// nothing while upstream's pool loses at most `max-held` buffers to it.
    Copy,
}

impl SlowPolicy {
    /// The `slow-policy` property's nick, for log lines.
    pub fn name(self) -> &'static str {
        match self {
            SlowPolicy::Auto => "auto",
            SlowPolicy::Drop => "drop",
            SlowPolicy::Block => "block",
            SlowPolicy::Disconnect => "disconnect",
            SlowPolicy::Copy => "copy",
        }
    }
}

/// Where a new consumer's stream starts (multisocketsink's sync-method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMethod {
    /// The next buffer, whatever it is.
    Latest,
    /// The next keyframe (a buffer without DELTA_UNIT); delta units before it are skipped.
    NextKeyframe,
    /// The latest keyframe and the buffers after it, sent at once from a backlog; the next
    /// keyframe when there is no backlog yet.
    LatestKeyframe,
    /// Per the stream (`Hub::set_encoded`): raw media, whose every buffer stands alone, as
    /// Latest; encoded media as LatestKeyframe, so a joiner never starts on a delta unit it
    /// cannot decode, but with no keyframe kept (none yet, or a GOP longer than the backlog)
    /// from the next buffer, as Latest: a stream whose first buffers, or all, are delta units
    /// still reaches its consumers.
    Auto,
}

impl SyncMethod {
    /// What this sync-method does on a stream of encoded (or raw) media.
    pub(super) fn resolve(self, encoded: bool) -> SyncMethod {
        match self {
            SyncMethod::Auto if encoded => SyncMethod::LatestKeyframe,
            SyncMethod::Auto => SyncMethod::Latest,
            m => m,
        }
    }
}

/// Limits and policies for consumers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Buffers of upstream's memory one consumer may hold.
    pub max_held: u32,
    /// Buffers of upstream's memory all consumers together may hold (0: no limit). At it, a
    /// consumer holding its share (`Hub::total_share`) or more skips frames, one below it
    /// still gets them: consumers that never release cannot starve the others, and what all
    /// hold stays under twice this.
    pub max_held_total: u32,
    /// Buffers queued in the producer for one consumer whose socket is full.
    pub max_queued: u32,
    pub policy: SlowPolicy,
    pub sync_method: SyncMethod,
    /// How long Auto waits for a full consumer before skipping it.
    pub slow_wait: Duration,
    /// Connections served at once, in the hello or past it (0: no limit); more are refused
    /// at accept.
    pub max_clients: u32,
}

/// What became of a frame for one consumer.
pub(super) enum Offer {
    Sent,
    /// Waits in its queue for room in its socket.
    Queued,
    /// Skipped per the slow policy.
    Dropped,
    /// sync-method: it waits for a keyframe.
    NotYet,
    /// slow-policy=copy: it is at max-held and gets a copy instead.
    WantsCopy,
}

/// What a prerolling producer does with its next frame (`wait_pass_through`).
#[derive(Debug, PartialEq, Eq)]
pub enum PassThrough {
    /// Send it on: a following consumer still prerolls.
    Send,
    /// Preroll on it: every following consumer prerolled.
    Preroll,
    /// Preroll on it: this following consumer stayed at max-held, not prerolled, through
    /// the whole wait.
    GaveUp(u64),
    Flushing,
}

/// How waiting for the following consumers to preroll ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PrerollWait {
    /// Every following consumer given the frame prerolled on it (or later), or let it go.
    Done,
    /// These consumers had not prerolled when the time ran out.
    TimedOut(Vec<u64>),
    Flushing,
}

impl<H: Send + 'static, F: RetiredFiles> Hub<H, F> {
    /// One consumer's share of `offer_frame`. Buffers of the queue that the policy dropped
    /// go to `dropped_queued`, for the caller to release.
    pub(super) fn offer(
        &self,
        c: &mut Consumer,
        f: &Frame<'_>,
        total_share: Option<usize>,
        now: Instant,
        dropped_queued: &mut Vec<u64>,
    ) -> Result<Offer, Removal> {
        if c.awaiting_keyframe {
            if !f.keyframe {
                return Ok(Offer::NotYet);
            }
            c.awaiting_keyframe = false;
        }
        let max_held = self.limits.max_held as usize;
        let max_queued = self.limits.max_queued as usize;
        let policy = self.limits.policy;
        let at_limit = if f.slow_copy {
            c.copies_held() >= max_held + max_queued
        } else if f.preroll && c.follows {
            false
        } else {
            c.originals_held >= max_held || total_share.is_some_and(|s| c.originals_held >= s)
        };
        if at_limit {
            return match policy {
                SlowPolicy::Disconnect if c.originals_held >= max_held => Err(Removal::Slow(
                    format!("holds {} buffers (max-held {max_held})", c.originals_held),
                )),
                SlowPolicy::Copy if !f.slow_copy => Ok(Offer::WantsCopy),
                _ => {
                    c.frames_dropped += 1;
                    Ok(Offer::Dropped)
                }
            };
        }
        // What waits for its socket goes first, so the stream stays in order.
        c.flush_queue()?;
        if c.queue.is_empty() && c.try_send_frame(f.header, f.fds)? {
            c.hold(f.id, now, HoldKind::of(f));
            c.sent(f.size);
            return Ok(Offer::Sent);
        }
        // Its socket is full: the frame waits in its queue, within max-queued (Block queues
        // regardless and then waits for the queue to shrink).
        if policy != SlowPolicy::Block && c.queued_buffers >= max_queued {
            if policy == SlowPolicy::Disconnect {
                return Err(Removal::Slow(format!(
                    "its socket is full and {} buffers wait for it (max-queued {max_queued})",
                    c.queued_buffers
                )));
            }
            // The oldest queued frame makes way (fresher frames for a consumer that is
            // behind); with no queue at all, this frame is the one skipped.
            match c.drop_oldest_queued() {
                Some(id) => dropped_queued.push(id),
                None => {
                    c.frames_dropped += 1;
                    return Ok(Offer::Dropped);
                }
            }
        }
        c.enqueue(f.id, WaitingFrame::new(f)?, f.size, HoldKind::of(f), now);
        Ok(Offer::Queued)
    }

    /// The DEBUG lines about one consumer's share of `offer_frame`: what `outcome` was when it
    /// was not sent (skipped, a copy, waiting for a keyframe), the queued frames dropped to
    /// make way (`made_way`), and the files registered with it (it had `registered` before).
    pub(super) fn log_offer(
        &self,
        c: &Consumer,
        f: &Frame<'_>,
        outcome: &Result<Offer, Removal>,
        registered: usize,
        made_way: &[u64],
        events: &mut Vec<HubEvent>,
    ) {
        let (id, buffer) = (c.id, f.id);
        let line = match outcome {
            Ok(Offer::Dropped) => Some(format!(
                "consumer {id}: buffer {buffer} skipped, it holds {} buffers (max-held {}; slow-policy {})",
                c.held.len(),
                self.limits.max_held,
                self.limits.policy.name()
            )),
            Ok(Offer::WantsCopy) => Some(format!(
                "consumer {id}: at max-held, buffer {buffer} goes to it as a copy (slow-policy copy)"
            )),
            Ok(Offer::NotYet) => Some(format!(
                "consumer {id}: buffer {buffer} skipped, it waits for a keyframe (sync-method)"
            )),
            _ => None,
        };
        events.extend(line.map(HubEvent::Debug));
        for old in made_way {
            events.push(HubEvent::Debug(format!(
                "consumer {id}: its socket is full with max-queued buffers waiting: the oldest, buffer {old}, makes way for buffer {buffer}"
            )));
        }
        if c.files.len() > registered {
            events.push(HubEvent::Debug(format!(
                "consumer {id}: {} files registered with buffer {buffer} ({} in all)",
                c.files.len() - registered,
                c.files.len()
            )));
        }
    }

    /// When all consumers together hold `max-held-total` buffers of upstream's memory: what a
    /// ready consumer may hold and still be given frames, [`SHARE_PAST_TOTAL`] or its share of
    /// the total if less (0 with more consumers than the total: none is). None below the
    /// limit. Each consumer then holds at most that much more, so what all hold stays under
    /// `max-held-total` + min(2 × consumers, `max-held-total`), however many never release.
    pub(super) fn total_share(&self, inner: &Inner<H>) -> Option<usize> {
        let max = self.limits.max_held_total as usize;
        if max == 0 || inner.originals_held < max {
            return None;
        }
        // What the hub keeps for joiners (the latest-keyframe backlog, the preroll frame)
        // pins upstream's memory by design, within limits of its own: consumers' holds count.
        if inner.originals_held.saturating_sub(inner.kept_originals()) < max {
            return None;
        }
        let ready = inner.consumers.iter().filter(|c| c.is_ready()).count();
        Some((max / ready.max(1)).min(SHARE_PAST_TOTAL))
    }

    /// Waits until a consumer is ready. Returns false when flushing.
    pub fn wait_for_consumer(&self) -> bool {
        let mut inner = self.lock();
        loop {
            if inner.flushing {
                return false;
            }
            if inner.has_ready_consumer() {
                return true;
            }
            inner = self.wait_room(inner, Duration::from_millis(500));
        }
    }

    /// Before a frame, under the Block policy (and Auto with a non-live upstream): waits until
    /// every ready consumer has room under `max-held` and in its queue (`max-queued`, when
    /// not 0), and all together under `max-held-total`. Auto waits at most `slow_wait`, then
    /// marks the consumers still full as stalled and does not wait for them again until they
    /// release something. Returns false when flushing.
    pub fn wait_for_room(&self, live: bool) -> bool {
        let bounded = match self.limits.policy {
            SlowPolicy::Block => false,
            SlowPolicy::Auto if !live => true,
            _ => return true,
        };
        let deadline = Instant::now() + self.limits.slow_wait;
        let max = self.limits.max_held as usize;
        let max_queued = self.limits.max_queued as usize;
        // A queue at max-queued would drop its oldest frame: a non-live stream waits instead.
        let at_limit = |c: &Consumer, share: Option<usize>| {
            c.originals_held >= max
                || (max_queued > 0 && c.queued_buffers >= max_queued)
                || share.is_some_and(|s| c.originals_held >= s)
        };
        let mut inner = self.lock();
        loop {
            if inner.flushing {
                return false;
            }
            let share = self.total_share(&inner);
            let full = inner
                .consumers
                .iter()
                .any(|c| c.is_ready() && !c.stalled && at_limit(c, share));
            if !full {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if bounded && left.is_zero() {
                let log = self.logs(HubLog::Debug);
                let mut stalled = Vec::new();
                for c in inner.consumers.iter_mut() {
                    if c.is_ready() && at_limit(c, share) {
                        c.stalled = true;
                        if log {
                            stalled.push(HubEvent::Debug(format!(
                                "consumer {}: still full after {} ms (it holds {} buffers, {} queued): slow-policy auto stops waiting for it until it releases one",
                                c.id,
                                self.limits.slow_wait.as_millis(),
                                c.originals_held,
                                c.queued_buffers
                            )));
                        }
                    }
                }
                inner.deferred.append(&mut stalled);
                return true;
            }
            let wait = if bounded {
                left
            } else {
                Duration::from_millis(100)
            };
            inner = self.wait_room(inner, wait);
        }
    }

    /// Block: waits until no consumer has more than max-queued buffers queued (the control
    /// thread sends them as their sockets get room).
    pub(super) fn wait_for_queues(&self) {
        let max = self.limits.max_queued as usize;
        let mut inner = self.lock();
        while !inner.flushing && inner.consumers.iter().any(|c| c.queued_buffers > max) {
            inner = self.wait_room(inner, Duration::from_millis(100));
        }
    }

    /// Waits up to `timeout` until every following consumer (mode=follow) has prerolled
    /// after the last preroll barrier it was sent (this producer pausing, or flushing), so
    /// this producer's preroll completes with theirs.
    pub fn wait_prerolled(&self, timeout: Duration) -> PrerollWait {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if inner.flushing {
                return PrerollWait::Flushing;
            }
            let waiting: Vec<u64> = inner
                .consumers
                .iter()
                .filter(|c| c.preroll_pending())
                .map(|c| c.id)
                .collect();
            if waiting.is_empty() {
                return PrerollWait::Done;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return PrerollWait::TimedOut(waiting);
            }
            inner = self.wait_room(inner, left.min(Duration::from_millis(100)));
        }
    }

    /// While this producer prerolls: whether the next frame passes straight through to the
    /// consumers, because a following consumer has not prerolled since the last preroll
    /// barrier it was sent (its decoder may need more frames before its sink has one).
    /// Waits while such a consumer is at `max-held` (it releases nothing until its sinks
    /// preroll), up to `timeout`, after which this producer prerolls without it.
    pub fn wait_pass_through(&self, timeout: Duration) -> PassThrough {
        let deadline = Instant::now() + timeout;
        let max = self.limits.max_held as usize;
        let mut inner = self.lock();
        loop {
            if inner.flushing {
                return PassThrough::Flushing;
            }
            if !inner.consumers.iter().any(Consumer::preroll_pending) {
                return PassThrough::Preroll;
            }
            let full = inner
                .consumers
                .iter()
                .find(|c| c.preroll_pending() && c.originals_held >= max)
                .map(|c| c.id);
            let Some(full) = full else {
                return PassThrough::Send;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return PassThrough::GaveUp(full);
            }
            inner = self.wait_room(inner, left.min(Duration::from_millis(100)));
        }
    }
}
