//! Running one row: both sides through the link, the one-process reference, and the checks.

use std::path::Path;

use crate::FRAMES;
use crate::display;
use crate::dma_drm;
use crate::gl;
use crate::peer_output::{early_eos_note, frames, leaked, minus, stat};
use crate::procs::{dmabuf_syncs, first_error, fixtures_dir, spawn, spawn_traced};
use crate::rows::{Consumer, Device, Row, Source, element_exists, vivid_node};

pub(crate) enum Outcome {
    Pass(String),
    Fail(String),
    NotRun(String),
}

/// A failure naming each side's exit and its first `error` line (its whole stderr when it
/// has none), unless both producer and consumer (`(exited ok, stderr)`) succeeded.
pub(crate) fn peers_failed(
    (p_ok, p_err): (bool, &str),
    (c_ok, c_err): (bool, &str),
) -> Option<Outcome> {
    if p_ok && c_ok {
        return None;
    }
    let first = |e| first_error(e).unwrap_or(e);
    Some(Outcome::Fail(format!(
        "producer ok={p_ok} consumer ok={c_ok}: {} {}",
        first(p_err),
        first(c_err)
    )))
}

pub(crate) fn run_row(row: &Row, sock_dir: &Path) -> Outcome {
    if let Some(missing) = row.needs_elements.iter().find(|e| !element_exists(e)) {
        return Outcome::NotRun(format!("no device ({missing} not registered)"));
    }
    if row.consumer == Consumer::PoolSize {
        return crate::pool_size::run(row, sock_dir);
    }
    let display = row.consumer == Consumer::Display;
    if display && let Err(why) = display::available() {
        return Outcome::NotRun(why);
    }
    let gl = row.consumer == Consumer::Gl;
    // GL alone first, without fdlink: the fds it leaves open are not the link's.
    let gl_leaks = if gl {
        match gl::available().and_then(|()| gl::reference()) {
            Ok(leaks) => leaks,
            Err(why) => return Outcome::NotRun(why),
        }
    } else {
        Vec::new()
    };
    let sock = sock_dir.join(format!("{}.sock", row.name));
    let sock = sock.to_str().unwrap().to_string();
    let slow = row.consumer == Consumer::Slow;
    let dma_drm = dma_drm::expected(row);
    // A DMA_DRM row asks for it in the consumer's pipeline (dma_drm.rs).
    let filter = if dma_drm {
        format!("{} ! ", dma_drm::FILTER)
    } else {
        String::new()
    };
    let mut consumer_args = if display {
        display::consumer_args(&sock)
    } else if gl {
        gl::consumer_args(&sock)
    } else if row.consumer == Consumer::App {
        vec![
            "app-consume".to_string(),
            "--frames-log".into(),
            "--socket".into(),
            sock.clone(),
        ]
    } else if slow {
        vec![
            "consume".to_string(),
            "--frames-log".into(),
            "--slow-ms".into(),
            "40".into(),
            format!(
                "fdlinksrc socket-path={sock} timeout=60000 ! {filter}queue max-size-buffers=6 ! fakesink name=check"
            ),
        ]
    } else {
        vec![
            "consume".to_string(),
            "--frames-log".into(),
            format!("fdlinksrc socket-path={sock} timeout=60000 ! {filter}fakesink"),
        ]
    };
    if dma_drm {
        consumer_args.insert(1, "--events-log".into());
    }
    let live = matches!(
        row.source,
        Source::Pipeline {
            device: Device::Vivid(_),
            ..
        }
    );
    let (producer_args, reference_args) = match &row.source {
        Source::External => {
            return Outcome::NotRun("no device and no fixture for it here".into());
        }
        Source::Dmabuf { source, layout } => {
            let dev = match *source {
                "udmabuf" => "/dev/udmabuf",
                "dma-heap" => "/dev/dma_heap/system",
                _ => "/dev/dri",
            };
            if !Path::new(dev).exists() {
                return Outcome::NotRun(format!("no device ({dev} missing)"));
            }
            let args: Vec<String> = [
                "produce-dmabuf",
                "--frames-log",
                "--source",
                source,
                "--layout",
                layout,
                "--socket",
                &sock,
                "--frames",
                &FRAMES.to_string(),
                "--pool-max",
                "4",
                "--size",
                "320x240",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            (args, None)
        }
        Source::Pipeline {
            fragment,
            device,
            fixture,
        } => {
            let mut fragment = fragment.to_string();
            if let Device::Vivid(kind) = device {
                match vivid_node(kind) {
                    Some(dev) => fragment = fragment.replace("{dev}", &dev),
                    None => return Outcome::NotRun(format!("no device (no vivid {kind} node)")),
                }
            }
            if let Some(f) = fixture {
                let path = fixtures_dir().join(f);
                if !path.exists() {
                    return Outcome::NotRun(format!("fixture {f} missing"));
                }
                fragment = fragment.replace("{fixture}", path.to_str().unwrap());
            }
            // The application consumer has no caps of its own: its DMA_DRM row asks for it in
            // the producer's pipeline.
            let producer_filter = if row.consumer == Consumer::App {
                filter.as_str()
            } else {
                ""
            };
            let mut producer = vec![
                "produce".to_string(),
                "--frames-log".into(),
                format!(
                    "{fragment} ! {producer_filter}fdlinksink socket-path={sock} wait-for-connection=true sync=false"
                ),
            ];
            if dma_drm {
                producer.insert(1, "--events-log".into());
            }
            let reference_sink = if dma_drm {
                format!("{filter}{}", dma_drm::REFERENCE_SINK)
            } else {
                "fakesink name=check".into()
            };
            let reference = vec![
                "produce".to_string(),
                "--frames-log".into(),
                format!("{fragment} ! {reference_sink}"),
            ];
            (producer, Some(reference))
        }
    };

    // The source alone first: a decoder that fails without fdlink is not fdlink's failure.
    let reference = reference_args.map(|args| spawn(&args).finish());
    if let Some((false, r_out, r_err)) = &reference {
        let why = first_error(r_err).map(str::to_string).unwrap_or_else(|| {
            if r_out.iter().any(|l| l.starts_with("frame ")) {
                "it crashed after decoding some frames".into()
            } else {
                "it crashed before decoding a frame".into()
            }
        });
        return Outcome::NotRun(format!(
            "the source fails on its own, without fdlink: {why}"
        ));
    }
    let trace = sock_dir.join(format!("{}.strace", row.name));
    // Tracing slows the consumer, which makes a live source skip frames for it: live rows run
    // untraced (the sync check is made on every other row).
    let fb_watch = display.then(display::FbWatch::start);
    let consumer = if display {
        display::spawn(&consumer_args)
    } else if gl {
        gl::spawn(&consumer_args)
    } else if live {
        spawn(&consumer_args)
    } else {
        spawn_traced(&consumer_args, &trace)
    };
    let producer = spawn(&producer_args);
    let (p_ok, p_out, p_err) = producer.finish();
    let (c_ok, c_out, c_err) = consumer.finish();
    if let Some(failed) = peers_failed((p_ok, &p_err), (c_ok, &c_err)) {
        return failed;
    }
    let sent = frames(&p_out);
    let got = frames(&c_out);
    let mut problems = Vec::new();
    if let Some(l) = c_out.iter().find(|l| l.starts_with("overwritten")) {
        problems.push(format!("a frame changed while the consumer held it: {l}"));
    }
    if got.is_empty() {
        problems.push("no frames arrived".to_string());
    }
    // A live source skips frames for a consumer at max-held (the VM's emulated CPU makes the
    // consumer slow); anything else must not lose one.
    let enough = if live { sent.len() * 2 / 3 } else { sent.len() };
    if got.len() < enough {
        problems.push(format!(
            "{} frames sent, {} received",
            sent.len(),
            got.len()
        ));
    }
    let exporters: std::collections::BTreeSet<String> = got
        .iter()
        .flat_map(|f| f.files.iter().map(|(_, e)| e.clone()))
        .collect();
    // A consumer whose downstream holds half the producer's max-held copies further frames
    // into its own memory (no fd-backed memory), so the decoder's pool keeps turning.
    let copied = got.iter().filter(|f| f.files.is_empty()).count();
    if got
        .iter()
        .any(|f| (f.files.is_empty() && !slow) || f.files.iter().any(|(_, e)| e == "file"))
    {
        problems.push("a received frame is not a dmabuf".into());
    }
    if slow && copied == got.len() {
        problems.push("every frame was copied: none crossed as a dmabuf".into());
    }
    // Frames are matched by buffer offset (frame number), so a skipped frame shifts nothing,
    // walking the sent frames in stream order: v4l2src under load gives two frames the same
    // offset (vivid's sequence number repeats), and the link keeps the order. Decoders leave
    // the offset unset and lose no frame: matched in order then.
    let numbered = sent.iter().chain(&got).all(|f| f.offset != u64::MAX);
    let mut unmatched = sent.iter();
    for (i, c) in got.iter().enumerate() {
        let p = if numbered {
            unmatched.find(|f| f.offset == c.offset)
        } else {
            sent.get(i)
        };
        let Some(p) = p else {
            problems.push(format!("frame {} arrived but was never sent", c.offset));
            break;
        };
        if p.files != c.files && !(slow && c.files.is_empty()) {
            // What tells a link fault from an ambiguous match: how often the producer logged
            // this offset, and under which offsets it logged the received kernel objects.
            let same_offset = sent.iter().filter(|f| f.offset == c.offset).count();
            let logged_as: Vec<u64> = sent
                .iter()
                .filter(|f| f.files == c.files)
                .map(|f| f.offset)
                .collect();
            problems.push(format!(
                "frame {}: different kernel objects {:?} vs {:?} (the producer logged offset {} {same_offset} times, and the received objects under offsets {logged_as:?})",
                c.offset, p.files, c.files, c.offset
            ));
            break;
        }
        if p.crc != c.crc {
            problems.push(format!(
                "frame {}: crc {} sent, {} received",
                c.offset, p.crc, c.crc
            ));
            break;
        }
        if p.layout != c.layout {
            problems.push(format!(
                "frame {}: layout {} sent, {} received",
                c.offset, p.layout, c.layout
            ));
            break;
        }
    }
    let mut reference_note = String::new();
    let mut reference_leaks = Vec::new();
    if let Some((r_ok, r_out, r_err)) = reference {
        reference_leaks = leaked(&r_out).unwrap_or_default();
        let reference: Vec<String> = frames(&r_out).into_iter().map(|f| f.crc).collect();
        let received: Vec<String> = got.iter().map(|f| f.crc.clone()).collect();
        if !r_ok {
            problems.push("the one-process reference run failed".into());
        } else if live {
            // A camera's frames differ run to run: only both sides of the link are compared.
        } else if reference == received {
            reference_note = ", CRCs equal to a one-process run".into();
        } else if let Some(note) = row
            .eos_bug
            .and_then(|marker| early_eos_note(marker, (&received, &p_err), (&reference, &r_err)))
        {
            reference_note = note;
        } else {
            let first_difference = reference
                .iter()
                .zip(&received)
                .position(|(a, b)| a != b)
                .map_or_else(
                    || "none in the common part".into(),
                    |i| format!("frame {i}"),
                );
            let marker = |err: &str| row.eos_bug.is_some_and(|m| err.contains(m));
            problems.push(format!(
                "CRCs differ from the same source in one process ({} vs {} frames; first difference: {first_difference}; early-EOS warning printed by the link's producer: {}, by the one-process run: {})",
                reference.len(),
                received.len(),
                marker(&p_err),
                marker(&r_err)
            ));
        }
    }
    // Each received memory is mapped once for its CRC: each map must be bracketed by
    // DMA_BUF_IOCTL_SYNC(READ|START) and (READ|END).
    let mut sync_note = String::new();
    if let Some(syncs) = dmabuf_syncs(&trace) {
        let memories: usize = got.iter().map(|f| f.files.len()).sum();
        if syncs < 2 * memories {
            problems.push(format!(
                "consumer CPU reads of {memories} dmabuf mappings made only {syncs} successful DMA_BUF_IOCTL_SYNC calls (need 2 each)"
            ));
        } else {
            sync_note = format!(
                ", CPU reads bracketed by DMA_BUF_IOCTL_SYNC ({syncs} calls for {memories} mappings)"
            );
        }
    }
    if stat(&p_out, "frames-copied") != Some(0) || stat(&p_out, "bytes-copied") != Some(0) {
        problems.push(format!(
            "producer copied {:?} frames",
            stat(&p_out, "frames-copied")
        ));
    }
    // fds still open at exit beyond what the same source leaves without fdlink (GStreamer's
    // v4l2src keeps its device open after NULL, with or without fdlink).
    for (who, out, baseline) in [
        ("producer", &p_out, reference_leaks.as_slice()),
        ("consumer", &c_out, gl_leaks.as_slice()),
    ] {
        match leaked(out) {
            Some(l) => {
                let extra = minus(l, baseline);
                if !extra.is_empty() {
                    problems.push(format!("{who} left fds open: {}", extra.join(" ")));
                }
            }
            None => problems.push(format!("{who} printed no fd report")),
        }
    }
    if dma_drm {
        match dma_drm::check(&p_out, &c_out) {
            Ok(note) => reference_note.push_str(&note),
            Err(problem) => problems.push(problem),
        }
    }
    if let Some(watch) = fb_watch {
        match display::check(&c_err, got.len(), watch) {
            Ok(note) => reference_note.push_str(&note),
            Err(problem) => problems.push(problem),
        }
    }
    if gl {
        match gl::check(&c_err, got.len()) {
            Ok(note) => reference_note.push_str(&note),
            Err(problem) => problems.push(problem),
        }
    }
    if slow && problems.is_empty() {
        reference_note.push_str(&format!(
            ", a consumer holding frames 40 ms each never saw one change ({copied} copied by it past half of max-held)"
        ));
    }
    if problems.is_empty() {
        Outcome::Pass(format!(
            "{}/{} frames, {} dmabuf ({}), same kernel objects, 0 bytes copied by the producer{reference_note}{sync_note}, no fd left",
            got.len(),
            sent.len(),
            if copied == 0 {
                "all".to_string()
            } else {
                (got.len() - copied).to_string()
            },
            exporters.into_iter().collect::<Vec<_>>().join("+")
        ))
    } else {
        Outcome::Fail(problems.join("; "))
    }
}
