//! The streaming thread's work in `create()`: the packets the link's inbox hands it, in
//! order, become caps, events and buffers downstream. The producer's segment goes out shifted
//! onto this pipeline's running time (see `timeline.rs`) ahead of the buffer or gap that says
//! where the producer is, with the serialized events that came between held until then.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;

use super::connection::Connector;
use super::imp::{CAT, FdlinkSrc, Stop, protocol_error};
use super::link::{Inbound, Link, MAX_QUEUED_PACKET_BYTES, MAX_QUEUED_PACKETS, QueueLimit};
use super::stats;
use super::timeline::{OurClock, Timeline};
use super::video_layout::{self, DownstreamLayout};
use crate::clock;
use crate::control;
use crate::memory::Importer;
use crate::wire_event::{self, WireEvent};
use fdlink::protocol::{self, Packet, TIME_NONE};
use fdlink::transport::Waker;

/// The connection and what the streaming thread knows about the producer's stream.
pub struct Stream {
    pub connector: Connector,
    /// A new producer took over: its first buffer is DISCONT and its caps go downstream even
    /// if they equal the old ones.
    pub new_producer: bool,
    pub queue_limit: QueueLimit,
    pub link: Option<Arc<Link>>,
    importer: Importer,
    eos: bool,
    timeline: Timeline,
    /// Caps downstream refused, and when this source asked the producer to renegotiate.
    refused_caps: Option<(gst::Caps, Instant)>,
    /// The producer's caps, not yet set because the pad was flushing when they came: they
    /// are set before anything else goes downstream once it streams again.
    unset_caps: Option<gst::Caps>,
    /// Serialized events (tags, custom, ...) that came after the producer's segment but
    /// before anything said where the producer is: they go downstream after that segment,
    /// shifted by the next buffer or gap. Each with the size of its structure text; at most
    /// `MAX_QUEUED_PACKETS` of them or `MAX_QUEUED_PACKET_BYTES`, as the link's inbox holds.
    held_events: Vec<(gst::Event, usize)>,
    /// Frames that went downstream from this connection's producer.
    pub frames_from_link: u64,
    /// Frames dropped on this side (`frames-dropped`) when the last one went downstream.
    drops_at_output: Option<u64>,
    /// Whether downstream reads GstVideoMeta, learnt as caps are set.
    downstream_layout: Option<DownstreamLayout>,
    /// The producer's current segment is not in TIME and went downstream: it goes once (no
    /// shift applies to it, and a BYTES segment again would send a filesink back to its start).
    foreign_segment_sent: bool,
}

/// The producer's segment when it is not in TIME, for the src pad's probe.
#[derive(Debug, Default)]
pub struct ForeignSegment {
    /// The producer's current segment is not in TIME.
    pub active: bool,
    /// Goes out in place of BaseSrc's next TIME segment.
    pub pending: Option<gst::Segment>,
}

/// The timestamps and flags the buffer `create()` returns must leave with: BaseSrc marks
/// the first buffer after a start or a new segment DISCONT and gives a first buffer without
/// timestamps some, which the src pad's probe undoes. DISCONT is kept where the producer set
/// it, and added for the first frame of a new producer or of a join, and after frames dropped
/// on this side.
#[derive(Debug, Clone, Copy)]
pub struct OutputStamp {
    pub pts: Option<gst::ClockTime>,
    pub dts: Option<gst::ClockTime>,
    /// All flag bits (`memory::buffer_flag_bits`).
    pub flags: u32,
}

impl Stream {
    pub fn new(connector: Connector, queue_limit: QueueLimit) -> Stream {
        Stream {
            connector,
            new_producer: false,
            queue_limit,
            link: None,
            importer: Importer::default(),
            eos: false,
            timeline: Timeline::default(),
            refused_caps: None,
            unset_caps: None,
            held_events: Vec::new(),
            frames_from_link: 0,
            drops_at_output: None,
            downstream_layout: None,
            foreign_segment_sent: false,
        }
    }

    /// The producer went away: what the next one says replaces all it said.
    pub fn forget_producer(&mut self) {
        self.timeline.reset();
        self.foreign_segment_sent = false;
        self.refused_caps = None;
        self.unset_caps = None;
        self.held_events.clear();
    }
}

impl FdlinkSrc {
    /// The next buffer; a producer that went away is reconnected to (reconnect=true) or is an
    /// error.
    pub(super) fn receive(&self, stream: &mut Stream, waker: &Waker) -> Result<gst::Buffer, Stop> {
        loop {
            match self.receive_from_producer(stream, waker) {
                Err(Stop::Lost(why)) => self.producer_lost(stream, why)?,
                other => return other,
            }
        }
    }

    fn receive_from_producer(
        &self,
        stream: &mut Stream,
        waker: &Waker,
    ) -> Result<gst::Buffer, Stop> {
        let link = match &stream.link {
            Some(l) => l.clone(),
            None => self.open_link(stream, waker)?,
        };
        let conn = link.conn.clone();
        if let Some(caps) = stream.unset_caps.take() {
            self.take_caps(stream, caps)?;
        }
        loop {
            // While downstream refuses the producer's caps, waiting ends at ack-timeout even
            // if the producer sends nothing more.
            let deadline = stream
                .refused_caps
                .as_ref()
                .map(|(_, since)| *since + self.ack_timeout() + Duration::from_millis(1));
            let packet = match link.next(deadline) {
                None => return Err(Stop::Flushing),
                Some(Inbound::TimedOut) => {
                    self.check_refused_caps(stream)?;
                    continue;
                }
                Some(Inbound::Packet(p)) => p,
                Some(Inbound::Copied(header, buffer)) => {
                    gst::log!(
                        CAT,
                        imp = self,
                        "buffer {}: copied by the link's queue (leaky=copy)",
                        header.buffer_id
                    );
                    if let Some(buffer) = self.output_buffer(stream, &header, buffer)? {
                        return Ok(buffer);
                    }
                    continue;
                }
                // The stream ended and its EOS went downstream already: however the
                // connection ends now, BaseSrc just ends its task.
                Some(Inbound::Closed | Inbound::Lost(_)) if stream.eos => return Err(Stop::Eos),
                Some(Inbound::Closed) => return Err(Stop::Lost("connection closed".into())),
                Some(Inbound::Lost(why)) => return Err(Stop::Lost(why)),
                Some(Inbound::Failed(why)) => {
                    return Err(protocol_error(&stream.connector.path, why));
                }
            };
            match packet {
                Packet::Caps(s) => {
                    let caps = control::caps_from_peer(&s).map_err(|msg| {
                        conn.send_error(&msg);
                        protocol_error(&stream.connector.path, msg)
                    })?;
                    self.take_caps(stream, caps)?;
                }
                Packet::Event {
                    event: ev,
                    base_time,
                } => {
                    if let Some(stop) = self.handle_event(stream, &ev, base_time) {
                        return Err(stop);
                    }
                }
                Packet::Buffer(header, fds) => {
                    let buffer_id = header.buffer_id;
                    let files = fds.len();
                    let token = link.release_tokens.issue(buffer_id);
                    let buffer = match stream.importer.import(&header, fds, Some(&token)) {
                        Ok(b) => b,
                        Err(e) => {
                            let msg = format!("invalid buffer {buffer_id}: {e}");
                            conn.send_error(&msg);
                            return Err(protocol_error(&stream.connector.path, msg));
                        }
                    };
                    drop(token);
                    let imported = buffer.as_ptr();
                    let buffer = link.copy_if_held_downstream(buffer);
                    gst::log!(
                        CAT,
                        imp = self,
                        "buffer {buffer_id}: {}, {}, {files} files",
                        if buffer.as_ptr() == imported {
                            "zero-copy"
                        } else {
                            "copied: downstream holds this consumer's share of the producer's buffers"
                        },
                        crate::stats_interval::describe_memories(&header.memories)
                    );
                    if let Some(buffer) = self.output_buffer(stream, &header, buffer)? {
                        return Ok(buffer);
                    }
                }
                Packet::Error(msg) => {
                    // Its pipeline's error, or why it dropped this consumer.
                    let pid = conn
                        .peer_pid()
                        .map_or_else(String::new, |p| format!(" (pid {p})"));
                    return Err(Stop::Error(gst::error_msg!(
                        gst::ResourceError::Read,
                        (
                            "producer{pid} at {} reported an error: {msg}",
                            stream.connector.path.display()
                        )
                    )));
                }
                Packet::State(st) => self.pause_with_producer(&st, &link, waker)?,
                Packet::QueryReply(_)
                | Packet::Query(_)
                | Packet::Message(_)
                | Packet::Retire { .. } => {
                    unreachable!("the link's reader takes queries, replies, messages and retires")
                }
                Packet::Release { .. } | Packet::UpstreamEvent(_) | Packet::Prerolled { .. } => {
                    let msg = "producer sent a consumer-only packet (release, upstream event or prerolled)"
                        .to_string();
                    conn.send_error(&msg);
                    return Err(protocol_error(&stream.connector.path, msg));
                }
            }
        }
    }

    /// A received frame (imported, or copied by the reader) with the producer's timestamps,
    /// after the segment it needs; None when it is dropped (counted in `stats`) because
    /// downstream refused the caps.
    fn output_buffer(
        &self,
        stream: &mut Stream,
        header: &protocol::BufferHeader,
        mut buffer: gst::Buffer,
    ) -> Result<Option<gst::Buffer>, Stop> {
        let copies = {
            let mut stats = self.stats.lock().unwrap();
            stats.record_frame(stats::latency_us(header.sent_at));
            stats.copies_to_announce(&self.counters)
        };
        if let Some((copies, total)) = copies {
            crate::stats_interval::post_copies(
                self.obj().upcast_ref(),
                copies,
                total,
                "leaky=copy, or downstream holds this consumer's share of the producer's buffers (half its max-held): frames are copied into system memory and the producer's buffers released",
            );
        }
        if stream.refused_caps.is_some() {
            // Dropped (and so released): downstream cannot take it.
            self.stats.lock().unwrap().record_dropped_for_caps();
            self.check_refused_caps(stream)?;
            return Ok(None);
        }
        self.last_output_id
            .store(header.buffer_id, Ordering::Relaxed);
        let time = |t: u64| (t != TIME_NONE).then(|| gst::ClockTime::from_nseconds(t));
        {
            let b = buffer.get_mut().expect("fresh buffer");
            b.set_pts(time(header.pts));
            b.set_dts(time(header.dts));
            b.set_duration(time(header.duration));
            // Another producer's stream, a join (its first frame is not the producer's
            // first), or frames dropped here since the last one: nothing continues from what
            // went before.
            let drops = self.frames_dropped_here();
            if stream.new_producer
                || (stream.frames_from_link == 0 && header.buffer_id != 1)
                || stream.drops_at_output.is_some_and(|d| d != drops)
            {
                b.set_flags(gst::BufferFlags::DISCONT);
            }
            stream.new_producer = false;
            stream.drops_at_output = Some(drops);
        }
        if let Some(delta) = self.running_time_delta(stream, header.base_time, header.pts)
            && stream.timeline.needs_segment(delta)
        {
            if stream.held_events.is_empty() {
                // BaseSrc pushes it ahead of this buffer.
                self.set_segment(stream, delta);
            } else {
                // Held events go between the segment and this buffer.
                self.push_segment_now(stream, delta);
            }
        }
        self.release_held_events(stream);
        if stream.timeline.cut_by_shift(header.pts, header.duration)
            && !self
                .obj()
                .src_pad()
                .current_caps()
                .is_some_and(|c| crate::fdlinksink::is_encoded(&c))
        {
            // Older than this pipeline's start: downstream would clip it unseen. Counted.
            // A frame of encoded media goes on: the decoder needs it for the ones after it,
            // and clips it itself.
            self.stats.lock().unwrap().record_dropped_late();
            return Ok(None);
        }
        if let Some(downstream) = &stream.downstream_layout {
            buffer = video_layout::readable_by_downstream(buffer, downstream);
        }
        stream.frames_from_link += 1;
        *self.output_stamp.lock().unwrap() = Some(OutputStamp {
            pts: buffer.pts(),
            dts: buffer.dts(),
            flags: crate::memory::buffer_flag_bits(&buffer),
        });
        Ok(Some(buffer))
    }

    /// Frames dropped on this side so far: by `leaky`, for refused caps, as too late.
    fn frames_dropped_here(&self) -> u64 {
        let stats = self.stats.lock().unwrap();
        self.counters.dropped.load(Ordering::Relaxed) + stats.dropped_here()
    }

    /// The shift for a frame (or gap) with the producer's `base_time` and `pts`: see
    /// `Timeline::delta`.
    fn running_time_delta(&self, stream: &Stream, base_time: u64, pts: u64) -> Option<i128> {
        let obj = self.obj();
        // Going to PLAYING, a pipeline gives all its elements its clock, then each element its
        // new base time just before that element's own change, sources last: until then ours
        // is the old one (0 the first time), and a shift from it would put the frame hours
        // away. A follower meets that window whenever it plays with the producer.
        let pipeline_base = crate::session::top_level(obj.upcast_ref()).base_time();
        let (Some(clock), Some(base)) = (obj.clock(), obj.base_time()) else {
            return stream.timeline.delta(None, base_time, pts, || 0);
        };
        if Some(base) != pipeline_base {
            return stream.timeline.delta(None, base_time, pts, || 0);
        }
        let ours = OurClock {
            base_mono: base.nseconds() as i128 + clock::clock_to_monotonic_offset(&clock),
        };
        stream.timeline.delta(Some(ours), base_time, pts, || {
            clock.time().nseconds() as i128 - base.nseconds() as i128
        })
    }

    /// The producer's segment shifted by `delta`, as BaseSrc's segment: it goes downstream
    /// ahead of the next buffer.
    fn set_segment(&self, stream: &mut Stream, delta: i128) {
        let segment = stream.timeline.shift(delta);
        gst::debug!(
            CAT,
            imp = self,
            "segment {} (running time shift {delta} ns)",
            segment_text(&segment)
        );
        let foreign = segment.format() != gst::Format::Time;
        self.foreign_segment.lock().unwrap().active = foreign;
        if foreign {
            // The producer's format (BYTES from a filesrc, say) stays. BaseSrc takes segments
            // in its own format only (TIME, fixed once started): it is given a TIME one, which
            // makes it push a segment right before the next buffer, and the src pad's probe
            // puts the producer's in its place. Once per producer segment: no shift applies to
            // it, and a BYTES segment again would send a filesink back to its start.
            if !stream.foreign_segment_sent {
                stream.foreign_segment_sent = true;
                self.foreign_segment.lock().unwrap().pending = Some(segment);
                let _ = self
                    .obj()
                    .new_segment(&gst::FormattedSegment::<gst::ClockTime>::new().upcast());
            }
        } else if let Err(e) = self.obj().new_segment(&segment) {
            gst::warning!(CAT, imp = self, "cannot set segment: {e}");
        }
        self.running_time_shift.store(
            delta.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            Ordering::Relaxed,
        );
    }

    /// Events that must follow a segment before any buffer (held ones at EOS, a gap whose
    /// time says nothing): push one now, with the last known shift.
    fn ensure_segment(&self, stream: &mut Stream) {
        if !stream.timeline.segment_sent() {
            let delta = stream.timeline.last_delta().unwrap_or(0);
            self.push_segment_now(stream, delta);
        }
    }

    /// Sets the segment shifted by `delta` and pushes it at once, ahead of events that must
    /// follow it; BaseSrc's own push of it before the next buffer is then dropped by the pad
    /// probe.
    fn push_segment_now(&self, stream: &mut Stream, delta: i128) {
        self.set_segment(stream, delta);
        if self.foreign_segment.lock().unwrap().active {
            let pending = self.foreign_segment.lock().unwrap().pending.take();
            if let Some(segment) = pending {
                self.obj()
                    .src_pad()
                    .push_event(gst::event::Segment::new(&segment));
            }
            return;
        }
        // Never drop this push itself, even if it equals an earlier one.
        self.pushed_segment.lock().unwrap().take();
        let segment = self.obj().segment();
        self.obj()
            .src_pad()
            .push_event(gst::event::Segment::new(&segment));
        *self.pushed_segment.lock().unwrap() = Some(segment);
    }

    /// Pushes the events held for want of a shift, after the segment they follow (shifted by
    /// the last shift used if nothing set one since).
    fn release_held_events(&self, stream: &mut Stream) {
        if stream.held_events.is_empty() {
            return;
        }
        self.ensure_segment(stream);
        let obj = self.obj();
        let pad = obj.src_pad();
        for (event, _) in stream.held_events.drain(..) {
            pad.push_event(event);
        }
    }

    /// Fails once caps downstream refused have waited `ack-timeout` for the producer to offer
    /// others.
    fn check_refused_caps(&self, stream: &Stream) -> Result<(), Stop> {
        let Some((refused, since)) = &stream.refused_caps else {
            return Ok(());
        };
        let waited = since.elapsed();
        if waited <= self.ack_timeout() {
            return Ok(());
        }
        Err(Stop::Error(gst::error_msg!(
            gst::CoreError::Negotiation,
            (
                "downstream does not accept the producer's caps {refused}, and the producer offered no other caps within {} ms of being asked to renegotiate; downstream accepts {}",
                waited.as_millis(),
                self.downstream_caps()
            )
        )))
    }

    /// What downstream accepts, for an error that names both sides of a failed negotiation.
    fn downstream_caps(&self) -> gst::Caps {
        self.obj().src_pad().peer_query_caps(None)
    }

    /// New caps from the producer: downstream takes them, or the producer is asked to
    /// renegotiate (it asks us for our caps), and frames are dropped until caps we can take
    /// arrive or `ack-timeout` runs out. A flushing pad (a flush, or the element going down)
    /// refuses nothing: the caps wait in `unset_caps` and `create()` stops with FLUSHING.
    fn take_caps(&self, stream: &mut Stream, caps: gst::Caps) -> Result<(), Stop> {
        if self.caps.lock().unwrap().as_ref() == Some(&caps)
            && stream.refused_caps.is_none()
            && !stream.new_producer
        {
            return Ok(());
        }
        gst::info!(CAT, imp = self, "caps from producer: {caps}");
        let drm = crate::drm_format::describe_caps(&caps);
        if !drm.is_empty() {
            gst::info!(CAT, imp = self, "DMA_DRM format: {drm}");
        }
        let pad = self.obj().src_pad().clone();
        if pad.is_linked() && !self.downstream_accepts(&pad, &caps) {
            if is_flushing(&pad) {
                return self.caps_when_streaming(stream, caps);
            }
            if let Some((_, since)) = stream.refused_caps {
                stream.refused_caps = Some((caps, since));
                self.check_refused_caps(stream)?;
            } else {
                gst::info!(
                    CAT,
                    imp = self,
                    "downstream does not accept {caps}: asking the producer to renegotiate"
                );
                stream.refused_caps = Some((caps, Instant::now()));
                self.tell_producer(&gst::event::Reconfigure::new());
            }
            return Ok(());
        }
        stream.refused_caps = None;
        let previous = self.caps.lock().unwrap().replace(caps.clone());
        // A sticky event's push fails only when this pad is flushing or has seen EOS:
        // whether downstream takes the caps shows in the data flow, as in any pipeline.
        let set = if stream.new_producer && pad.current_caps().as_ref() == Some(&caps) {
            // BaseSrc skips caps equal to the current ones; after the new producer's
            // stream-start, downstream still gets its caps event.
            pad.push_event(gst::event::Caps::new(&caps))
        } else {
            self.obj().set_caps(&caps).is_ok()
        };
        if set {
            stream.downstream_layout = Some(self.learn_downstream_layout(&caps));
            return Ok(());
        }
        *self.caps.lock().unwrap() = previous;
        if is_flushing(&pad) {
            return self.caps_when_streaming(stream, caps);
        }
        Err(Stop::Error(gst::error_msg!(
            gst::CoreError::Negotiation,
            (
                "cannot set the producer's caps {caps} on {}: the pad is past EOS",
                pad.path_string()
            )
        )))
    }

    /// Caps that came while the pad was flushing: set before anything else goes downstream
    /// once it streams again (the next `create()`), or forgotten if the element stops.
    fn caps_when_streaming(&self, stream: &mut Stream, caps: gst::Caps) -> Result<(), Stop> {
        gst::debug!(
            CAT,
            imp = self,
            "pad flushing: caps {caps} wait until it streams again"
        );
        stream.unset_caps = Some(caps);
        Err(Stop::Flushing)
    }

    /// Whether downstream accepts `caps`, after moving the link to another request pad of
    /// the same element if the linked one is for another media type (see
    /// `request_pads.rs`).
    fn downstream_accepts(&self, pad: &gst::Pad, caps: &gst::Caps) -> bool {
        pad.peer_query_accept_caps(caps)
            || (self.relink_request_pad(pad, caps) && pad.peer_query_accept_caps(caps))
    }

    /// Acts on one event packet. Returns Some(stop) when the stream ends here.
    fn handle_event(
        &self,
        stream: &mut Stream,
        p: &protocol::EventPacket,
        base_time: u64,
    ) -> Option<Stop> {
        let ev = match wire_event::decode(p) {
            Ok(ev) => ev,
            Err(e) => {
                gst::warning!(CAT, imp = self, "ignoring event: {e}");
                return None;
            }
        };
        gst::debug!(
            CAT,
            imp = self,
            "event from producer: {}",
            match &ev {
                WireEvent::Segment(s) => format!("segment {}", segment_text(s)),
                WireEvent::Eos => "eos".into(),
                WireEvent::FlushStart => "flush-start".into(),
                WireEvent::FlushStop => "flush-stop".into(),
                WireEvent::Other(ty) => ty.name().to_string(),
            }
        );
        let obj = self.obj();
        let pad = obj.src_pad();
        match ev {
            WireEvent::Segment(segment) => {
                // Shifted onto our timeline when the next buffer tells where the producer is.
                stream.timeline.set_producer_segment(segment);
                stream.foreign_segment_sent = false;
            }
            WireEvent::Eos => {
                if let Some((refused, _)) = &stream.refused_caps {
                    return Some(Stop::Error(gst::error_msg!(
                        gst::CoreError::Negotiation,
                        (
                            "downstream does not accept the producer's caps {refused}, and the stream ended before the producer offered others; downstream accepts {}",
                            self.downstream_caps()
                        )
                    )));
                }
                // Held events still go out, before the EOS.
                self.release_held_events(stream);
                stream.eos = true;
                // Pushed here rather than returned to BaseSrc, which would pause its task
                // for good: the producer may still flush (a seek after EOS) and stream on,
                // and only this streaming thread takes its packets. At the producer's
                // close BaseSrc's own EOS follows, refused by the pad already at EOS.
                gst::info!(CAT, imp = self, "producer sent EOS");
                let mut eos = gst::event::Eos::new();
                control::set_seqnum(&mut eos, p.seqnum);
                pad.push_event(eos);
            }
            WireEvent::FlushStart => {
                // Events held before the flush: sticky ones (tags) stay on the pad across a
                // flush, so they still go out after the next segment; the others are
                // flushed away.
                stream.held_events.retain(|(ev, _)| ev.is_sticky());
                let mut flush_start = gst::event::FlushStart::new();
                control::set_seqnum(&mut flush_start, p.seqnum);
                pad.push_event(flush_start);
            }
            WireEvent::FlushStop => {
                // Our running time stays continuous: the new segment's shift takes the
                // producer's reset into account.
                let mut flush_stop = gst::event::FlushStop::new(false);
                control::set_seqnum(&mut flush_stop, p.seqnum);
                pad.push_event(flush_stop);
                // An EOS before the flush is flushed away: the producer has more to send.
                stream.eos = false;
                stream.timeline.flush_stop();
                stream.foreign_segment_sent = false;
                // After a flush, downstream needs the next segment, even if it equals the
                // one this source pushed itself before.
                self.pushed_segment.lock().unwrap().take();
            }
            WireEvent::Other(ty) => {
                // Everything else is rebuilt as it was sent: stream-start, tags, gaps,
                // protection, custom, stream-group-done, instant-rate-change, ...
                let Some(event) = control::event_from_packet(p) else {
                    gst::debug!(CAT, imp = self, "dropping unreadable {ty:?} event");
                    return None;
                };
                if ty == gst::EventType::StreamStart {
                    self.pushing_producer_stream_start
                        .store(true, Ordering::Release);
                    pad.push_event(event);
                    self.pushing_producer_stream_start
                        .store(false, Ordering::Release);
                    return None;
                }
                if !event.is_serialized() || stream.timeline.segment_sent() {
                    pad.push_event(event);
                    return None;
                }
                // After the producer's segment, before anything said where the producer is.
                let gst::EventView::Gap(gap) = event.view() else {
                    // Tags and the like: they wait for the shift the next buffer gives,
                    // bounded as the inbox is: a producer that sends events without end
                    // before any buffer floods this consumer.
                    let held_bytes: usize = stream.held_events.iter().map(|(_, b)| b).sum();
                    if stream.held_events.len() >= MAX_QUEUED_PACKETS
                        || held_bytes + p.structure.len() > MAX_QUEUED_PACKET_BYTES
                    {
                        let why = format!(
                            "the producer sent {} events ({held_bytes} bytes) after its segment \
                                 and before any buffer or gap; the limit is {MAX_QUEUED_PACKETS} \
                                 events or {} MiB: it floods this consumer",
                            stream.held_events.len() + 1,
                            MAX_QUEUED_PACKET_BYTES >> 20
                        );
                        if let Some(link) = &stream.link {
                            link.send_error(&format!("protocol error: {why}"));
                        }
                        return Some(protocol_error(&stream.connector.path, why));
                    }
                    stream.held_events.push((event, p.structure.len()));
                    return None;
                };
                // A gap says where the producer is itself, as a buffer's PTS would, and must
                // not wait for a buffer (it is what lets downstream preroll without one).
                let (timestamp, _) = gap.get();
                let delta = self
                    .running_time_delta(stream, base_time, timestamp.nseconds())
                    .or(stream.timeline.last_delta())
                    .unwrap_or(0);
                self.push_segment_now(stream, delta);
                self.release_held_events(stream);
                pad.push_event(event);
            }
        }
        None
    }
}

/// The pad is flushing: a flush, or its element going down (a deactivated pad flushes).
fn is_flushing(pad: &gst::Pad) -> bool {
    pad.pad_flags().contains(gst::PadFlags::FLUSHING)
}

/// A segment for log lines: "time, start 0:00:01.000000000, stop none, rate 1, base ...".
fn segment_text(s: &gst::Segment) -> String {
    let t = |v: gst::GenericFormattedValue| -> String {
        match v.value() {
            -1 => "none".into(),
            n => match s.format() {
                gst::Format::Time => gst::ClockTime::from_nseconds(n as u64).to_string(),
                _ => n.to_string(),
            },
        }
    };
    format!(
        "{}, start {}, stop {}, time {}, base {}, rate {}",
        s.format(),
        t(s.start()),
        t(s.stop()),
        t(s.time()),
        t(s.base()),
        s.rate()
    )
}
