//! `produce` / `consume`: a gst-launch pipeline run to EOS or error, with its `stats` lines.

use std::time::{Duration, Instant};

use gst::prelude::*;

use crate::probes::{add_control_probes, add_probe, fdlink_element, fdlink_pad};
use crate::report::{StatsExtra, gap_meter, print_line, print_stats};
use crate::{Opts, init, usage};

/// Runs a pipeline to EOS or error, `extra` adding fields to its `stats` lines. Returns the
/// exit code.
pub(crate) fn run(
    pipeline: gst::Pipeline,
    element: Option<gst::Element>,
    o: &Opts,
    extra: &[StatsExtra],
) -> i32 {
    let stop_at = o
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let stats_every = (o.stats_every_ms > 0).then(|| Duration::from_millis(o.stats_every_ms));
    let mut next_stats = Instant::now();
    if o.wait_clients > 0
        && let Some(el) = &element
    {
        // The sink listens from READY on: go to PAUSED (it prerolls), wait for the consumers.
        let _ = pipeline.set_state(gst::State::Paused);
        let deadline = Instant::now() + Duration::from_secs(30);
        while el.property::<u32>("num-clients") < o.wait_clients {
            if Instant::now() > deadline {
                eprintln!(
                    "error: fewer than {} consumers came within 30 s",
                    o.wait_clients
                );
                let _ = pipeline.set_state(gst::State::Null);
                return 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let bus = pipeline.bus().expect("pipeline has a bus");
    if o.messages_log {
        // Timed as it is posted, not as this loop gets to it, and in the bus's sync handler,
        // which runs before any `sync-message` handler: before a following fdlinksrc reports
        // the preroll to its producer, so a producer that waited for it is always later.
        let weak = pipeline.downgrade();
        bus.set_sync_handler(move |_, msg| {
            if let gst::MessageView::AsyncDone(_) = msg.view()
                && let Some(p) = weak.upgrade()
                && msg.src() == Some(p.upcast_ref())
            {
                print_line(&format!(
                    "async-done at {}",
                    gstfdlink::clock::monotonic_now()
                ));
            }
            gst::BusSyncReply::Pass
        });
    }
    for _ in 0..o.toggle_states {
        // Back to back, as a quick start-stop: each stop lands wherever the start got to.
        let _ = pipeline.set_state(gst::State::Playing);
        let _ = pipeline.set_state(gst::State::Ready);
    }
    if o.toggle_states > 0 {
        print_line(&format!("toggled {}", o.toggle_states));
    }
    let start = if o.start_paused {
        gst::State::Paused
    } else {
        gst::State::Playing
    };
    if let Err(e) = pipeline.set_state(start) {
        eprintln!("error: cannot start pipeline: {e}");
        drain_errors(&pipeline);
        let _ = pipeline.set_state(gst::State::Null);
        return 1;
    }
    let mut sent_eos = false;
    let (mut eos_seen, mut loops_done) = (0u64, 0u64);
    let code = loop {
        if let (Some(every), Some(el)) = (stats_every, &element)
            && Instant::now() >= next_stats
        {
            print_stats(el, extra);
            next_stats = Instant::now() + every;
        }
        let eos_file_there = || {
            o.eos_file
                .as_ref()
                .is_some_and(|f| std::path::Path::new(f).exists())
        };
        if !sent_eos && (stop_at.is_some_and(|t| Instant::now() >= t) || eos_file_there()) {
            pipeline.send_event(gst::event::Eos::new());
            sent_eos = true;
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(20)) else {
            continue;
        };
        if o.messages_log {
            log_message(&pipeline, &msg);
        }
        match msg.view() {
            gst::MessageView::Eos(_) => {
                print_line("eos");
                eos_seen += 1;
                if loops_done < o.loops {
                    // A looping player: from the top again, flushing out the EOS.
                    let to_start = gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT;
                    if pipeline
                        .seek_simple(to_start, gst::ClockTime::ZERO)
                        .is_err()
                    {
                        eprintln!("error: --loop: the seek to 0 failed");
                        break 1;
                    }
                    loops_done += 1;
                    print_line(&format!("loop {loops_done}"));
                    continue;
                }
                if eos_seen >= o.eos_count {
                    break 0;
                }
            }
            gst::MessageView::Error(err) => {
                eprintln!(
                    "error: {} (from {})",
                    err.error(),
                    err.src().map_or_else(|| "?".into(), |s| s.path_string())
                );
                if let Some(d) = err.debug() {
                    eprintln!("debug: {d}");
                }
                break 1;
            }
            gst::MessageView::Latency(_) if o.handle_latency => {
                let _ = pipeline.recalculate_latency();
            }
            _ => {}
        }
    };
    if let Some(el) = &element {
        // After an error the pipeline stops at once: waiting would stream on to the others.
        if o.wait_clients_gone && code == 0 && el.find_property("num-clients").is_some() {
            // Consumers release what they hold as they stop: the final stats count it all.
            let deadline = Instant::now() + Duration::from_secs(10);
            while el.property::<u32>("num-clients") > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        print_stats(el, extra);
    }
    let _ = pipeline.set_state(gst::State::Null);
    code
}

/// The `--messages-log` line for a bus message, if it is of a kind worth a line.
fn log_message(pipeline: &gst::Pipeline, msg: &gst::Message) {
    let src = msg.src().map_or_else(|| "?".into(), |s| s.path_string());
    let line = match msg.view() {
        gst::MessageView::StateChanged(s) if msg.src() == Some(pipeline.upcast_ref()) => {
            format!("state {:?}", s.current())
        }
        gst::MessageView::Element(_)
        | gst::MessageView::Buffering(_)
        | gst::MessageView::RequestState(_)
        | gst::MessageView::Latency(_)
        | gst::MessageView::Qos(_) => format!(
            "message {:?} {src} {}",
            msg.type_(),
            msg.structure().map_or_else(String::new, |s| s.to_string())
        ),
        gst::MessageView::Warning(w) => format!("message warning {src} {}", w.error()),
        _ => return,
    };
    print_line(&line);
}

fn drain_errors(pipeline: &gst::Pipeline) {
    let bus = pipeline.bus().expect("pipeline has a bus");
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(err) = msg.view() {
            eprintln!("error: {}", err.error());
            if let Some(d) = err.debug() {
                eprintln!("debug: {d}");
            }
        }
    }
}

pub(crate) fn launch(o: &Opts) -> i32 {
    if o.rest.is_empty() {
        usage();
    }
    init();
    let desc = o.rest.join(" ");
    let pipeline = match gst::parse::launch(&desc) {
        Ok(p) => p.downcast::<gst::Pipeline>().unwrap_or_else(|_| {
            eprintln!("error: not a pipeline: {desc}");
            std::process::exit(2)
        }),
        Err(e) => {
            eprintln!("error: cannot parse pipeline: {e}");
            return 2;
        }
    };
    let element = fdlink_element(pipeline.upcast_ref());
    if o.frames_log || o.slow_ms > 0 || o.pattern || o.running_time_log {
        match element.clone().or_else(|| pipeline.by_name("check")) {
            Some(el) => add_probe(pipeline.upcast_ref(), &el, o),
            None => {
                eprintln!("error: nothing to probe: no fdlink element and no element named check");
                return 2;
            }
        }
    }
    if o.try_write {
        match element.as_ref().and_then(|e| e.static_pad("src")) {
            Some(pad) => crate::try_write::add_try_write_probe(&pad),
            None => {
                eprintln!("error: --try-write needs an fdlinksrc");
                return 2;
            }
        }
    }
    if let Some(el) = &element
        && (o.events_log
            || o.discont_log
            || o.seek_after.is_some()
            || o.query_after.is_some()
            || o.query_every.is_some()
            || o.pause_after.is_some()
            || o.caps_after.is_some()
            || o.post_after.is_some()
            || o.preroll_delay_ms > 0
            || o.gap_first)
    {
        add_control_probes(&pipeline, el, o);
    }
    if o.render_log && crate::render_log::add_render_log(&pipeline) == 0 {
        eprintln!("error: --render-log needs a fakesink");
        return 2;
    }
    let mut extra = Vec::new();
    if o.gaps {
        match element.as_ref().and_then(fdlink_pad) {
            Some(pad) => extra.push(gap_meter(&pad)),
            None => {
                eprintln!("error: --gaps needs an fdlink element");
                return 2;
            }
        }
    }
    run(pipeline, element, o, &extra)
}
