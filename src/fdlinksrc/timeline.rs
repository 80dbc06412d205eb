//! Where the producer's frames fall on this pipeline's timeline. Frames keep the producer's
//! timestamps; what moves is the segment: fdlinksrc sends the producer's segment downstream
//! with its running time shifted by
//!
//! ```text
//! delta = producer base time (mono) − (our base time + our clock → mono offset)
//! ```
//!
//! so that a frame's running time here is its running time on the producer plus delta, and
//! both pipelines have it due at the same CLOCK_MONOTONIC instant. Stream times are unchanged,
//! so position queries answered downstream are the producer's positions.

use fdlink::protocol::TIME_NONE;

/// The producer's timeline moved against ours by more than this (ns): send a new segment.
const RESYNC_THRESHOLD_NS: i128 = 1_000_000;

/// This pipeline's clock, as a shift needs it.
#[derive(Debug, Clone, Copy)]
pub struct OurClock {
    /// Our base time on CLOCK_MONOTONIC (ns): the pipeline's base time plus its clock's offset
    /// to CLOCK_MONOTONIC.
    pub base_mono: i128,
}

/// The producer's segment and the shift of the one that went downstream.
#[derive(Debug, Default)]
pub struct Timeline {
    /// The producer's current segment, as it sent it.
    producer_segment: Option<gst::Segment>,
    /// The shift of the segment that went downstream (None: none went since the last flush
    /// or producer segment).
    segment_delta: Option<i128>,
    /// The last shift used, kept across segments: a segment needed before the next buffer
    /// says where the producer is uses it.
    last_delta: Option<i128>,
    /// The shift a new segment of the producer's keeps (until a flush): one constant for the
    /// connection, so a segment change moves running time here exactly as it does there.
    carried_delta: Option<i128>,
}

impl Timeline {
    /// A new segment from the producer: it goes downstream once the next buffer or gap says
    /// where the producer is.
    pub fn set_producer_segment(&mut self, segment: gst::Segment) {
        self.producer_segment = Some(segment);
        self.segment_delta = None;
    }

    /// The producer flushed: its next segment replaces this one, with a shift of its own.
    pub fn flush_stop(&mut self) {
        self.producer_segment = None;
        self.segment_delta = None;
        self.carried_delta = None;
    }

    /// Another producer: nothing of the last one's timeline applies.
    pub fn reset(&mut self) {
        *self = Timeline::default();
    }

    /// A shifted segment went downstream since the producer's last segment or flush.
    pub fn segment_sent(&self) -> bool {
        self.segment_delta.is_some()
    }

    /// The last shift used, if any.
    pub fn last_delta(&self) -> Option<i128> {
        self.last_delta
    }

    /// A frame at `pts` (lasting `duration`, TIME_NONE if unknown) ends before the start of
    /// the segment downstream has, though the producer's own segment keeps it: a negative
    /// shift past the segment's base moved that start, so the frame is older than this
    /// pipeline's start (frames a producer made while it waited for this consumer).
    /// Downstream would clip it.
    pub fn cut_by_shift(&self, pts: u64, duration: u64) -> bool {
        let (Some(producer), Some(delta)) = (&self.producer_segment, self.segment_delta) else {
            return false;
        };
        let Some(theirs) = producer.downcast_ref::<gst::ClockTime>() else {
            return false;
        };
        if pts == TIME_NONE || theirs.rate() < 0.0 {
            return false;
        }
        let shifted = shift_segment(producer, delta);
        let ours = shifted
            .downcast_ref::<gst::ClockTime>()
            .expect("a TIME segment shifts into one");
        let start =
            |s: &gst::FormattedSegment<gst::ClockTime>| s.start().map_or(0, |t| t.nseconds());
        let end = if duration == TIME_NONE {
            pts.saturating_add(1)
        } else {
            pts.saturating_add(duration)
        };
        end <= start(ours) && end > start(theirs)
    }

    /// `delta` differs from the shift downstream has by more than the resync threshold (or
    /// downstream has none).
    pub fn needs_segment(&self, delta: i128) -> bool {
        self.segment_delta
            .is_none_or(|d| (d - delta).abs() > RESYNC_THRESHOLD_NS)
    }

    /// The producer's segment (an empty TIME segment if it sent none) shifted by `delta`,
    /// remembered as the shift downstream now has.
    pub fn shift(&mut self, delta: i128) -> gst::Segment {
        let producer = self
            .producer_segment
            .clone()
            .unwrap_or_else(|| gst::FormattedSegment::<gst::ClockTime>::new().upcast());
        self.segment_delta = Some(delta);
        self.last_delta = Some(delta);
        self.carried_delta = Some(delta);
        shift_segment(&producer, delta)
    }

    /// How far our running time is ahead of the producer's, from a buffer's header (or a
    /// gap's timestamp and its packet's base time): both pipelines' base times on
    /// CLOCK_MONOTONIC. A producer without a clock (or prerolling, so with no base time
    /// yet): the frame is due as it arrives, `running_now` being our running time now (read
    /// only then). Without a clock here (`ours` None: prerolling, or a pipeline that runs
    /// without one), the shift downstream has, or none.
    pub fn delta(
        &self,
        ours: Option<OurClock>,
        base_time: u64,
        pts: u64,
        running_now: impl FnOnce() -> i128,
    ) -> Option<i128> {
        let Some(ours) = ours else {
            return Some(self.segment_delta.unwrap_or(0));
        };
        if self
            .producer_segment
            .as_ref()
            .is_some_and(|s| s.format() != gst::Format::Time)
        {
            // No running time to shift (BYTES, say): the segment goes out as it is.
            return Some(self.segment_delta.unwrap_or(0));
        }
        if base_time != TIME_NONE {
            // Both base times read on CLOCK_MONOTONIC through clock offsets that wobble by
            // nanoseconds: a shift within the resync threshold of the carried one is that one.
            let delta = base_time as i128 - ours.base_mono;
            return Some(
                self.carried_delta
                    .filter(|d| (d - delta).abs() <= RESYNC_THRESHOLD_NS)
                    .unwrap_or(delta),
            );
        }
        if let Some(d) = self.segment_delta.or(self.carried_delta) {
            return Some(d);
        }
        let segment = self
            .producer_segment
            .as_ref()?
            .downcast_ref::<gst::ClockTime>()?;
        let theirs = segment.to_running_time(gst::ClockTime::from_nseconds(
            (pts != TIME_NONE).then_some(pts)?,
        ))?;
        Some(running_now() - theirs.nseconds() as i128)
    }
}

/// `segment` with every running time moved by `delta` ns, stream times unchanged (so position
/// queries downstream see the producer's positions). A negative shift past the segment's base
/// moves its start (rate > 0) or stop (rate < 0) instead, and its time with the start.
pub fn shift_segment(segment: &gst::Segment, delta: i128) -> gst::Segment {
    let Some(seg) = segment.downcast_ref::<gst::ClockTime>() else {
        return segment.clone();
    };
    let mut out = seg.clone();
    let base = seg.base().map_or(0, |b| b.nseconds()) as i128;
    let shifted = base + delta;
    if shifted >= 0 {
        out.set_base(gst::ClockTime::from_nseconds(
            u64::try_from(shifted).unwrap_or(u64::MAX - 1),
        ));
        return out.upcast();
    }
    out.set_base(gst::ClockTime::ZERO);
    // What remains to take off, in stream time units.
    let cut = ((-shifted) as f64 * seg.rate().abs()) as u64;
    if seg.rate() > 0.0 {
        let start = seg.start().map_or(0, |s| s.nseconds()).saturating_add(cut);
        out.set_start(gst::ClockTime::from_nseconds(start.min(u64::MAX - 1)));
        if let Some(time) = seg.time() {
            out.set_time(time.saturating_add(gst::ClockTime::from_nseconds(cut)));
        }
        if let Some(pos) = seg.position() {
            out.set_position(pos.max(out.start().unwrap_or(pos)));
        }
    } else if let Some(stop) = seg.stop() {
        out.set_stop(stop.saturating_sub(gst::ClockTime::from_nseconds(cut)));
    }
    out.upcast()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn segment(base: u64, start: u64, rate: f64) -> gst::FormattedSegment<gst::ClockTime> {
        gst::init().unwrap();
        let mut s = gst::FormattedSegment::<gst::ClockTime>::new();
        s.set_rate(rate);
        s.set_base(gst::ClockTime::from_nseconds(base));
        s.set_start(gst::ClockTime::from_nseconds(start));
        s.set_time(gst::ClockTime::from_nseconds(start));
        s.set_position(gst::ClockTime::from_nseconds(start));
        s
    }

    fn shifted(
        seg: &gst::FormattedSegment<gst::ClockTime>,
        delta: i128,
    ) -> gst::FormattedSegment<gst::ClockTime> {
        shift_segment(&seg.clone().upcast(), delta)
            .downcast::<gst::ClockTime>()
            .unwrap()
    }

    fn ns(t: Option<gst::ClockTime>) -> u64 {
        t.unwrap().nseconds()
    }

    #[test]
    fn a_shift_moves_the_base_only() {
        let seg = segment(100 * MS, 40 * MS, 1.0);
        let later = shifted(&seg, 250 * MS as i128);
        assert_eq!(ns(later.base()), 350 * MS);
        assert_eq!(ns(later.start()), 40 * MS);
        assert_eq!(ns(later.time()), 40 * MS);
        let earlier = shifted(&seg, -60 * MS as i128);
        assert_eq!(ns(earlier.base()), 40 * MS);
        assert_eq!(ns(earlier.start()), 40 * MS);
        // The running time of a position moves by exactly the shift.
        let pts = gst::ClockTime::from_nseconds(90 * MS);
        assert_eq!(
            ns(later.to_running_time(pts)),
            ns(seg.to_running_time(pts)) + 250 * MS
        );
    }

    #[test]
    fn a_negative_shift_past_the_base_moves_start_and_time() {
        let seg = segment(10 * MS, 40 * MS, 1.0);
        let out = shifted(&seg, -30 * MS as i128);
        assert_eq!(ns(out.base()), 0);
        assert_eq!(ns(out.start()), 60 * MS);
        assert_eq!(ns(out.time()), 60 * MS);
        assert_eq!(ns(out.position()), 60 * MS);
        // A position past the new start keeps its running time minus the shift.
        let pts = gst::ClockTime::from_nseconds(100 * MS);
        assert_eq!(
            ns(out.to_running_time(pts)),
            ns(seg.to_running_time(pts)) - 30 * MS
        );

        // At twice the speed, running time is half the stream time: twice as much is cut.
        let fast = shifted(&segment(0, 0, 2.0), -10 * MS as i128);
        assert_eq!(ns(fast.start()), 20 * MS);
    }

    #[test]
    fn a_negative_shift_past_the_base_of_a_reverse_segment_moves_stop() {
        let mut seg = segment(0, 0, -1.0);
        seg.set_stop(gst::ClockTime::from_nseconds(500 * MS));
        let out = shifted(&seg, -20 * MS as i128);
        assert_eq!(ns(out.base()), 0);
        assert_eq!(ns(out.start()), 0);
        assert_eq!(ns(out.stop()), 480 * MS);
    }

    #[test]
    fn a_segment_in_another_format_is_left_alone() {
        gst::init().unwrap();
        let bytes = gst::FormattedSegment::<gst::format::Bytes>::new().upcast();
        assert_eq!(shift_segment(&bytes, 5), bytes);
    }

    #[test]
    fn frames_before_a_start_the_shift_moved_are_cut() {
        let mut t = Timeline::default();
        assert!(!t.cut_by_shift(0, 33 * MS), "no segment yet");
        t.set_producer_segment(segment(0, 0, 1.0).upcast());
        // Our pipeline started 1 s after the producer's: its first second is before our start.
        t.shift(-1_000 * MS as i128);
        assert!(t.cut_by_shift(0, 33 * MS));
        assert!(t.cut_by_shift(900 * MS, 100 * MS), "ends at our start");
        assert!(!t.cut_by_shift(990 * MS, 33 * MS), "overlaps our start");
        assert!(!t.cut_by_shift(2_000 * MS, TIME_NONE));
        assert!(!t.cut_by_shift(TIME_NONE, 33 * MS));
        // A positive shift cuts nothing; nor does the producer's own segment start.
        t.set_producer_segment(segment(0, 500 * MS, 1.0).upcast());
        t.shift(10 * MS as i128);
        assert!(!t.cut_by_shift(0, 33 * MS), "the producer's own clipping");
    }

    #[test]
    fn delta_from_base_times_or_from_the_arrival() {
        let mut t = Timeline::default();
        let ours = OurClock {
            base_mono: 1_000 * MS as i128,
        };
        let no_clock_read = || -> i128 { panic!("the clock is read only without a base time") };
        // Both base times known: their difference, whatever else is known.
        assert_eq!(
            t.delta(Some(ours), 1_500 * MS, 0, no_clock_read),
            Some(500 * MS as i128)
        );
        // No clock here: the shift downstream has, or none.
        assert_eq!(t.delta(None, 1_500 * MS, 0, no_clock_read), Some(0));

        // No base time from the producer, nor a producer segment: no answer.
        assert_eq!(t.delta(Some(ours), TIME_NONE, 10 * MS, || 0), None);
        // With its segment: the frame is due now, at our running time.
        t.set_producer_segment(segment(0, 0, 1.0).upcast());
        assert_eq!(
            t.delta(Some(ours), TIME_NONE, 10 * MS, || 70 * MS as i128),
            Some(60 * MS as i128)
        );
        assert_eq!(t.delta(Some(ours), TIME_NONE, TIME_NONE, || 0), None);
        // Once a shifted segment went out, it stands.
        t.shift(7);
        assert_eq!(
            t.delta(Some(ours), TIME_NONE, 10 * MS, no_clock_read),
            Some(7)
        );
        assert_eq!(t.delta(None, TIME_NONE, 10 * MS, no_clock_read), Some(7));
    }

    #[test]
    fn a_segment_change_keeps_the_shift_until_a_flush() {
        let mut t = Timeline::default();
        let ours = OurClock {
            base_mono: 1_000 * MS as i128,
        };
        t.set_producer_segment(segment(0, 0, 1.0).upcast());
        assert_eq!(
            t.delta(Some(ours), 1_500 * MS, 0, || 0),
            Some(500 * MS as i128)
        );
        t.shift(500 * MS as i128);
        // A new segment: a shift a few ns off (the clocks' offsets wobble) is the same one.
        t.set_producer_segment(segment(0, 30_000 * MS, 1.0).upcast());
        assert_eq!(
            t.delta(Some(ours), 1_500 * MS + 40, 0, || 0),
            Some(500 * MS as i128)
        );
        // Frames without a base time (a prerolling producer) keep it too...
        assert_eq!(
            t.delta(Some(ours), TIME_NONE, 10 * MS, || 0),
            Some(500 * MS as i128)
        );
        // ...until a flush, after which a frame is due as it arrives.
        t.flush_stop();
        t.set_producer_segment(segment(0, 0, 1.0).upcast());
        assert_eq!(
            t.delta(Some(ours), TIME_NONE, 10 * MS, || 70 * MS as i128),
            Some(60 * MS as i128)
        );
        // A real move of the producer's base time (it paused) is a new shift.
        assert_eq!(
            t.delta(Some(ours), 2_500 * MS, 0, || 0),
            Some(1_500 * MS as i128)
        );
    }

    #[test]
    fn new_segments_flushes_and_resyncs() {
        let mut t = Timeline::default();
        assert!(!t.segment_sent());
        assert!(t.needs_segment(0));
        // Without a producer segment the shift applies to an empty TIME segment.
        let out = t.shift(5 * MS as i128);
        assert_eq!(
            ns(out.downcast_ref::<gst::ClockTime>().unwrap().base()),
            5 * MS
        );
        assert!(t.segment_sent());
        assert!(!t.needs_segment(5 * MS as i128 + RESYNC_THRESHOLD_NS));
        assert!(t.needs_segment(5 * MS as i128 + RESYNC_THRESHOLD_NS + 1));
        assert!(t.needs_segment(5 * MS as i128 - RESYNC_THRESHOLD_NS - 1));

        // A new producer segment waits for its own shift; the last one is kept for it.
        t.set_producer_segment(segment(0, 0, 1.0).upcast());
        assert!(!t.segment_sent());
        assert_eq!(t.last_delta(), Some(5 * MS as i128));
        t.shift(6 * MS as i128);
        t.flush_stop();
        assert!(!t.segment_sent());
        assert_eq!(t.last_delta(), Some(6 * MS as i128));
        t.reset();
        assert_eq!(t.last_delta(), None);
        assert!(!t.segment_sent());
    }
}
