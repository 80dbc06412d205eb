//! Pad probes on the fdlink element: per-frame lines and checks, event and message logs,
//! and the application actions (seek, query, pause, caps, posts) after N frames.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gst::prelude::*;

use crate::Opts;
use crate::dmabuf_sources;
use crate::report::print_line;

/// The fdlink element of a pipeline (the first fdlinksink or fdlinksrc).
pub(crate) fn fdlink_element(pipeline: &gst::Bin) -> Option<gst::Element> {
    pipeline.iterate_recurse().into_iter().flatten().find(|e| {
        e.factory()
            .is_some_and(|f| f.name() == "fdlinksink" || f.name() == "fdlinksrc")
    })
}

fn buffer_crc(buffer: &gst::BufferRef) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for mem in buffer.iter_memories() {
        if let Ok(m) = mem.map_readable() {
            h.update(m.as_slice());
        }
    }
    h.finalize()
}

/// The buffer's GstVideoMeta as `FORMAT:WxH:offsets:strides`, or `-`.
fn video_meta_text(buffer: &gst::BufferRef) -> String {
    match buffer.meta::<gst_video::VideoMeta>() {
        Some(m) => layout_line(m.format(), m.width(), m.height(), m.offset(), m.stride()),
        None => "-".into(),
    }
}

/// A frame layout as the `frame` lines print it: `FORMAT:WxH:[offsets]:[strides]`.
pub(crate) fn layout_line(
    format: gst_video::VideoFormat,
    width: u32,
    height: u32,
    offsets: &[usize],
    strides: &[i32],
) -> String {
    format!(
        "{}:{width}x{height}:{offsets:?}:{strides:?}",
        format.to_str()
    )
    .replace(' ', "")
}

/// The layout the buffer's bytes are in, in `video_meta_text`'s form: its GstVideoMeta's, or
/// without one the default layout of the pad's raw video caps (what a reader without the meta
/// assumes); `-` for other caps.
fn layout_text(pad: &gst::Pad, buffer: &gst::BufferRef) -> String {
    if buffer.meta::<gst_video::VideoMeta>().is_some() {
        return video_meta_text(buffer);
    }
    let Some(info) = pad
        .current_caps()
        .and_then(|c| gst_video::VideoInfo::from_caps(&c).ok())
    else {
        return "-".into();
    };
    layout_line(
        info.format(),
        info.width(),
        info.height(),
        info.offset(),
        info.stride(),
    )
}

fn buffer_files(buffer: &gst::BufferRef) -> String {
    let mut files = Vec::new();
    for mem in buffer.iter_memories() {
        if let Some(f) = mem.downcast_memory_ref::<gst_allocators::FdMemory>() {
            // SAFETY: the buffer (borrowed here) keeps the memory and its fd open.
            let fd = unsafe { BorrowedFd::borrow_raw(f.fd()) };
            if let Ok((dev, ino)) = fdlink::fdkind::file_identity(fd) {
                let exp = dmabuf_sources::exporter(f.fd()).unwrap_or_else(|| "file".into());
                files.push(format!("{dev}:{ino}:{exp}"));
            }
        }
    }
    if files.is_empty() {
        "-".into()
    } else {
        files.join(",")
    }
}

/// Checks the produce-pattern fill: sampled bytes all equal `offset % 251`.
fn pattern_ok(buffer: &gst::BufferRef) -> bool {
    let want = (buffer.offset() % 251) as u8;
    buffer.iter_memories().all(|mem| {
        mem.map_readable().is_ok_and(|m| {
            let s = m.as_slice();
            s.iter().step_by(4093).all(|&b| b == want) && s.last().is_none_or(|&b| b == want)
        })
    })
}

pub(crate) fn add_probe(pipeline: &gst::Bin, element: &gst::Element, o: &Opts) {
    let (target, pad) = match pipeline.by_name("check") {
        Some(check) => (check.clone(), check.static_pad("sink")),
        None => {
            let is_src = element.factory().is_some_and(|f| f.name() == "fdlinksrc");
            let pad = if is_src {
                element.static_pad("src")
            } else {
                element.static_pad("sink")
            };
            (element.clone(), pad)
        }
    };
    let Some(pad) = pad else {
        eprintln!("error: no pad to probe on {}", target.name());
        std::process::exit(2);
    };
    if o.running_time_log {
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            if let Some(buffer) = info.buffer() {
                print_line(&running_time_line(pad, &target, buffer));
            }
            gst::PadProbeReturn::Ok
        });
    }
    let (frames_log, slow, pattern) = (o.frames_log, o.slow_ms, o.pattern);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let crc = (frames_log || slow > 0).then(|| buffer_crc(buffer));
        if pattern && !pattern_ok(buffer) {
            print_line(&format!("pattern-mismatch offset={}", buffer.offset()));
        }
        if let Some(crc) = crc {
            if frames_log {
                print_line(&format!(
                    "frame offset={} pts={} size={} crc={crc:08x} files={} vmeta={} layout={} mems={} delta={}",
                    buffer.offset(),
                    buffer.pts().map_or(-1i64, |t| t.nseconds() as i64),
                    buffer.size(),
                    buffer_files(buffer),
                    video_meta_text(buffer),
                    layout_text(pad, buffer),
                    buffer.n_memory(),
                    u8::from(buffer.flags().contains(gst::BufferFlags::DELTA_UNIT))
                ));
            }
            if slow > 0 {
                std::thread::sleep(Duration::from_millis(slow));
                let after = buffer_crc(buffer);
                if after != crc || (pattern && !pattern_ok(buffer)) {
                    print_line(&format!(
                        "overwritten offset={} crc-before={crc:08x} crc-after={after:08x}",
                        buffer.offset()
                    ));
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// `running-time pts=P rt=R base-mono=B playing=0|1`: the buffer's running time in `pad`'s
/// segment, the base time of `element`'s pipeline on CLOCK_MONOTONIC (ns, -1 if unknown), so
/// running times of two processes compare, and whether `element` is PLAYING (no state change
/// pending).
fn running_time_line(pad: &gst::Pad, element: &gst::Element, buffer: &gst::BufferRef) -> String {
    let rt = pad
        .sticky_event::<gst::event::Segment>(0)
        .and_then(|ev| {
            let seg = ev.segment().downcast_ref::<gst::ClockTime>()?.clone();
            seg.to_running_time(buffer.pts()?)
        })
        .map_or(-1, |t| t.nseconds() as i64);
    let base_mono = match (element.clock(), element.base_time()) {
        (Some(clock), Some(base)) => {
            let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                .map_or(0, |t| t.tv_sec() * 1_000_000_000 + t.tv_nsec());
            base.nseconds() as i64 + mono - clock.time().nseconds() as i64
        }
        _ => -1,
    };
    // Prerolling (after a flush too) the pipeline's base time is not the one the buffer will
    // play with: fdlinksink sends no base time then.
    let playing = element.current_state() == gst::State::Playing
        && element.pending_state() == gst::State::VoidPending;
    format!(
        "running-time pts={} rt={rt} base-mono={base_mono} playing={}",
        buffer.pts().map_or(-1i64, |t| t.nseconds() as i64),
        u8::from(playing)
    )
}

/// The pad of an fdlink element that buffers cross: an fdlinksrc's src, an fdlinksink's sink.
pub(crate) fn fdlink_pad(element: &gst::Element) -> Option<gst::Pad> {
    element
        .static_pad("src")
        .or_else(|| element.static_pad("sink"))
}

/// Event log, and seek / position queries issued from another thread after N buffers, as an
/// application would.
pub(crate) fn add_control_probes(pipeline: &gst::Pipeline, element: &gst::Element, o: &Opts) {
    let pad = fdlink_pad(element).expect("fdlink element has a pad");
    if o.events_log {
        let events = gst::PadProbeType::EVENT_DOWNSTREAM
            | gst::PadProbeType::EVENT_FLUSH
            | gst::PadProbeType::EVENT_UPSTREAM;
        pad.add_probe(events, |_, info| {
            if let Some(ev) = info.event() {
                match ev.view() {
                    gst::EventView::Qos(q) => {
                        let (_, proportion, diff, timestamp) = q.get();
                        print_line(&format!(
                            "upstream qos seqnum={} timestamp={} diff={diff} proportion={proportion:.3}",
                            gst::glib::translate::IntoGlib::into_glib(ev.seqnum()),
                            timestamp.map_or(-1, |t| t.nseconds() as i64),
                        ))
                    }
                    _ if ev.is_upstream() && !ev.is_downstream() => {}
                    gst::EventView::Caps(c) => print_line(&format!("event caps {}", c.caps())),
                    gst::EventView::StreamStart(s) => {
                        print_line(&format!("event stream-start {}", s.stream_id()))
                    }
                    gst::EventView::Segment(s) => {
                        let seg = s.segment();
                        print_line(&format!(
                            "event segment base={} start={} time={} rate={} format={:?}",
                            seg.base().value(),
                            seg.start().value(),
                            seg.time().value(),
                            seg.rate(),
                            seg.format()
                        ))
                    }
                    gst::EventView::Gap(g) => {
                        let (timestamp, duration) = g.get();
                        print_line(&format!(
                            "event gap timestamp={} duration={}",
                            timestamp.nseconds(),
                            duration.map_or(-1, |d| d.nseconds() as i64)
                        ))
                    }
                    _ => print_line(&format!("event {}", ev.type_().name())),
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
    if o.gap_first {
        let upstream = pad.peer().expect("--gap-first: the fdlinksink is linked");
        let first = std::sync::atomic::AtomicBool::new(true);
        upstream.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            if let Some(pts) = info.buffer().and_then(|b| b.pts())
                && first.swap(false, Ordering::SeqCst)
            {
                let start = pad
                    .sticky_event::<gst::event::Segment>(0)
                    .and_then(|s| s.segment().downcast_ref::<gst::ClockTime>()?.start())
                    .unwrap_or(gst::ClockTime::ZERO);
                let duration = pts.saturating_sub(start);
                print_line(&format!(
                    "sent gap timestamp={} duration={}",
                    start.nseconds(),
                    duration.nseconds()
                ));
                pad.push_event(gst::event::Gap::builder(start).duration(duration).build());
            }
            gst::PadProbeReturn::Ok
        });
    }
    if o.discont_log {
        pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
            if let Some(b) = info.buffer()
                && b.flags().contains(gst::BufferFlags::DISCONT)
            {
                print_line(&format!("discont offset={} size={}", b.offset(), b.size()));
            }
            gst::PadProbeReturn::Ok
        });
    }
    let (seek_after, seek_to, query_after) = (o.seek_after, o.seek_to, o.query_after);
    let (query_every, pause_after, pause_ms) = (o.query_every, o.pause_after, o.pause_ms);
    let (caps_after, post_after) = (o.caps_after.clone(), o.post_after);
    if o.preroll_delay_ms > 0 {
        let delay = Duration::from_millis(o.preroll_delay_ms);
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let again = first.clone();
        pad.add_probe(gst::PadProbeType::EVENT_FLUSH, move |_, info| {
            if info
                .event()
                .is_some_and(|e| e.type_() == gst::EventType::FlushStop)
            {
                again.store(true, Ordering::SeqCst);
            }
            gst::PadProbeReturn::Ok
        });
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            if first.swap(false, Ordering::SeqCst) {
                print_line(&format!(
                    "preroll-delay at {}",
                    gstfdlink::clock::monotonic_now()
                ));
                std::thread::sleep(delay);
            }
            gst::PadProbeReturn::Ok
        });
    }
    let frames = Arc::new(AtomicU64::new(0));
    let weak = pipeline.downgrade();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        let n = frames.fetch_add(1, Ordering::SeqCst) + 1;
        // Application calls go from threads of their own, never the streaming thread.
        let app = |f: Box<dyn FnOnce(gst::Pipeline) + Send>| {
            let weak = weak.clone();
            std::thread::spawn(move || {
                if let Some(p) = weak.upgrade() {
                    f(p)
                }
            });
        };
        if Some(n) == pause_after {
            app(Box::new(move |p| {
                let _ = p.set_state(gst::State::Paused);
                print_line("paused");
                std::thread::sleep(Duration::from_millis(pause_ms));
                let _ = p.set_state(gst::State::Playing);
                print_line("resumed");
            }));
        }
        if let Some((at, caps)) = &caps_after
            && *at == n
        {
            let caps = caps.clone();
            app(Box::new(move |p| {
                let Some(cf) = p.by_name("cf") else {
                    eprintln!("error: --caps-after needs an element named cf");
                    return;
                };
                match caps.parse::<gst::Caps>() {
                    Ok(c) => {
                        cf.set_property("caps", &c);
                        print_line(&format!("caps-set {c}"));
                    }
                    Err(e) => eprintln!("error: bad caps {caps}: {e}"),
                }
            }));
        }
        if Some(n) == post_after {
            app(Box::new(move |p| {
                let s = gst::Structure::builder("fdlink-test")
                    .field("n", n as i32)
                    .build();
                let _ = p.post_message(gst::message::Element::builder(s).src(&p).build());
                let _ = p.post_message(gst::message::Buffering::builder(50).src(&p).build());
                print_line("posted");
            }));
        }
        let query_now = Some(n) == query_after || query_every.is_some_and(|e| n.is_multiple_of(e));
        if Some(n) == seek_after {
            let weak = weak.clone();
            std::thread::spawn(move || {
                let Some(p) = weak.upgrade() else { return };
                let ok = p
                    .seek_simple(
                        gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                        gst::ClockTime::from_nseconds((seek_to * 1e9) as u64),
                    )
                    .is_ok();
                print_line(&format!("seek-sent ok={ok}"));
            });
        }
        if query_now {
            app(Box::new(|p| {
                let ns = |t: Option<gst::ClockTime>| t.map_or(-1i64, |t| t.nseconds() as i64);
                let mut latency = gst::query::Latency::new();
                let (live, min, max) = if p.query(&mut latency) {
                    let (live, min, max) = latency.result();
                    (live, ns(Some(min)), ns(max))
                } else {
                    (false, -1, -1)
                };
                print_line(&format!(
                    "position {} duration {} latency {live} {min} {max} at {}",
                    ns(p.query_position::<gst::ClockTime>()),
                    ns(p.query_duration::<gst::ClockTime>()),
                    gstfdlink::clock::monotonic_now()
                ));
            }));
        }
        gst::PadProbeReturn::Ok
    });
}
