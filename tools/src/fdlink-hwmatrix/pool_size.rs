//! Pool-size rows: a V4L2 decoder through fdlink, with one consumer that holds frames
//! (`fdlinksrc ! queue ! fakesink sync=true`) at 30 fps, must allocate at most 3 capture
//! buffers more than the same decoder into `fakesink sync=true` alone, lose no frame, and never
//! run out of capture buffers. Decoder surfaces are real memory (often scarce CMA on boards):
//! fdlinksink's ALLOCATION answer, which decoders add to their own count, must stay small.
//!
//! Capture buffers are counted from `strace -v -e trace=ioctl` of the decoding process: the
//! largest total of VIDIOC_REQBUFS (the count granted) plus VIDIOC_CREATE_BUFS (buffers a pool
//! that grows adds) on capture queues. Running out is read from the decoder's debug log:
//! - v4l2videodec (stateful, gst-plugins-good): `Only N buffer left in the capture queue`
//!   (v4l2bufferpool TRACE, after each dequeue); N = 0 leaves the driver nothing to decode
//!   into, so the decoder waits for downstream (or grows its pool, which the count shows).
//! - v4l2codecs (stateless, gst-plugins-bad): its allocator logs `Create buffer`, `Allocated
//!   buffer` and `Placing back buffer` (v4l2codecs-allocator DEBUG); its pool cannot grow, and
//!   an acquire with none free waits for a release. The capture allocator is the one with the
//!   most buffers (the other holds 2 or 3 bitstream buffers); with none free the decoder's next
//!   acquire waits, so every time its free count reaches 0 counts as a wait.
//!
//! The fixture, 90 frames (3 s at 30 fps), is made in the run's directory by the driver's or a
//! software encoder, so the checked-in 30-frame fixtures stay as they are.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::peer_output::frames;
use crate::procs::{Proc, first_error, spawn, spawn_ioctl_traced};
use crate::rows::{Row, Source};
use crate::run::{Outcome, peers_failed};

/// Capture buffers the decoder may allocate through fdlink beyond what it allocates alone.
const MAX_EXTRA: u64 = 3;
const FRAMES: u32 = 90;
const DEBUG: &str = "v4l2codecs-allocator:5,v4l2bufferpool:7";

/// The encoder pipeline for the fixture of `decoder` (`{out}` the file), as gst-launch-1.0
/// arguments once split at spaces (it escapes the spaces within one argument).
fn fixture_pipeline(decoder: &str) -> Option<String> {
    let src = format!("videotestsrc num-buffers={FRAMES} pattern=ball");
    match decoder {
        // As fixtures/make-fixtures.sh makes the 30-frame one: only vicodec encodes FWHT.
        "v4l2fwhtdec" => Some(format!(
            "{src} ! video/x-raw,format=NV12,width=640,height=360,framerate=30/1 ! v4l2fwhtenc extra-controls=encode,video_gop_size=1 ! gdppay ! filesink location={{out}}"
        )),
        "v4l2slh264dec" => Some(format!(
            "{src} ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! x264enc bframes=0 key-int-max=30 ! video/x-h264,profile=constrained-baseline,stream-format=byte-stream ! h264parse ! filesink location={{out}}"
        )),
        _ => None,
    }
}

/// One decoding process's capture buffers and how often it ran out of them.
#[derive(Debug)]
struct Usage {
    /// The most capture buffers allocated at once (REQBUFS and CREATE_BUFS).
    capture_buffers: u64,
    /// How often no capture buffer was left for the decoder.
    ran_out: usize,
    /// The fewest capture buffers left free at any time (None: not logged).
    fewest_free: Option<i64>,
}

/// The number after the first `count=` in `s`.
fn count_in(s: &str) -> Option<u64> {
    s.split_once("count=")?
        .1
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The most capture buffers allocated at once, from an `strace -v -e trace=ioctl` log. strace
/// 6.1 prints what the driver wrote back inside the call (`count=N => GRANTED`, `=> {index=I,
/// count=ADDED}`), strace 6.13 after the result (`= 0 ({index=I, count=ADDED})`).
/// GStreamer 1.22's decoders allocate with REQBUFS (which replaces a queue's buffers; 0 frees
/// them), 1.26's v4l2codecs one buffer at a time with CREATE_BUFS (REMOVE_BUFS frees them).
fn capture_buffers(trace: &str) -> u64 {
    let mut per_fd: BTreeMap<String, u64> = BTreeMap::new();
    let mut most = 0;
    for line in trace.lines() {
        let Some((call, result)) = line.split_once(") = 0") else {
            continue;
        };
        if !call.contains("CAPTURE") {
            continue;
        }
        let Some(fd) = call
            .split_once("ioctl(")
            .and_then(|(_, r)| r.split_once(','))
            .map(|(fd, _)| fd.to_string())
        else {
            continue;
        };
        if call.contains("VIDIOC_REQBUFS") {
            // `count=N => GRANTED}` (6.1) or `= 0 ({count=GRANTED, ...})` (6.13).
            let granted = call
                .rsplit_once(" => ")
                .and_then(|(_, r)| count_in(&format!("count={r}")))
                .or_else(|| count_in(result));
            if let Some(granted) = granted {
                per_fd.insert(fd, granted);
            }
        } else if call.contains("VIDIOC_CREATE_BUFS") {
            let added = call
                .rsplit_once("=> {")
                .and_then(|(_, r)| count_in(r))
                .or_else(|| count_in(result));
            if let Some(added) = added {
                *per_fd.entry(fd).or_default() += added;
            }
        } else if call.contains("VIDIOC_REMOVE_BUFS")
            && let Some(removed) = call.split_once('{').and_then(|(_, r)| count_in(r))
        {
            let n = per_fd.entry(fd).or_default();
            *n = n.saturating_sub(removed);
        }
        most = most.max(per_fd.values().sum());
    }
    most
}

/// How often a v4l2codecs capture pool had no buffer left, and the fewest it had free, from
/// the allocator's DEBUG log; None if the log has no allocator.
fn codecs_ran_out(log: &str) -> Option<(usize, i64)> {
    // Per allocator: buffers created, free now, fewest free, times none was free.
    let mut allocators: BTreeMap<&str, (i64, i64, i64, usize)> = BTreeMap::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("<v4l2codecallocator") else {
            continue;
        };
        let Some((id, event)) = rest.split_once("> ") else {
            continue;
        };
        let a = allocators.entry(id).or_insert((0, 0, i64::MAX, 0));
        if event.starts_with("Create buffer") {
            a.0 += 1;
            a.1 += 1;
        } else if event.starts_with("Allocated buffer") {
            a.1 -= 1;
            a.2 = a.2.min(a.1);
            if a.1 == 0 {
                a.3 += 1;
            }
        } else if event.starts_with("Placing back buffer") {
            a.1 += 1;
        }
    }
    let (_, (_, _, fewest, out)) = allocators.into_iter().max_by_key(|(_, a)| a.0)?;
    Some((out, fewest))
}

/// How often v4l2videodec's capture queue was left empty after a dequeue, and the fewest
/// buffers it had queued, from v4l2bufferpool's TRACE log; None if not logged.
fn videodec_ran_out(log: &str) -> Option<(usize, i64)> {
    let left: Vec<i64> = log
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("Only ")?;
            let (n, rest) = rest.split_once(' ')?;
            rest.starts_with("buffer left in the capture queue")
                .then(|| n.parse().ok())?
        })
        .collect();
    let fewest = *left.iter().min()?;
    Some((left.iter().filter(|&&n| n == 0).count(), fewest))
}

/// `fdlink-peer ARGS` under strace, its ioctls' arguments decoded (`-v`), logging `DEBUG` on
/// stderr.
fn spawn_counted(args: &[String], trace: &Path) -> Proc {
    spawn_ioctl_traced(
        args,
        trace,
        &["-v"],
        &[("GST_DEBUG", DEBUG), ("GST_DEBUG_NO_COLOR", "1")],
    )
}

/// The usage of a finished traced run.
fn usage(decoder: &str, trace: &Path, err: &str) -> Result<Usage, String> {
    let text = std::fs::read_to_string(trace)
        .map_err(|e| format!("no strace log {}: {e}", trace.display()))?;
    let capture_buffers = capture_buffers(&text);
    if capture_buffers == 0 {
        // What strace printed instead, for a format this parser does not know.
        let seen: Vec<String> = text
            .lines()
            .filter(|l| l.contains("_BUFS,"))
            .take(2)
            .map(|l| l.chars().take(200).collect())
            .collect();
        return Err(format!(
            "strace showed no capture buffer allocated (VIDIOC_REQBUFS, VIDIOC_CREATE_BUFS); its first such lines: {seen:?}"
        ));
    }
    let ran = if decoder.starts_with("v4l2sl") {
        codecs_ran_out(err)
    } else {
        videodec_ran_out(err)
    };
    let (ran_out, fewest_free) = match ran {
        Some((n, f)) => (n, Some(f)),
        None => {
            return Err(format!(
                "the decoder's log (GST_DEBUG={DEBUG}) shows no capture buffer use"
            ));
        }
    };
    Ok(Usage {
        capture_buffers,
        ran_out,
        fewest_free,
    })
}

pub(crate) fn run(row: &Row, sock_dir: &Path) -> Outcome {
    let decoder = row.needs_elements.first().copied().unwrap_or_default();
    let Source::Pipeline { fragment, .. } = &row.source else {
        return Outcome::NotRun("a pool-size row needs a decoding pipeline".into());
    };
    if Command::new("strace").arg("-V").output().is_err() {
        return Outcome::NotRun("strace missing: it counts the capture buffers".into());
    }
    let Some(make) = fixture_pipeline(decoder) else {
        return Outcome::NotRun(format!("no 90-frame fixture recipe for {decoder}"));
    };
    let fixture = sock_dir.join(format!("{}-{FRAMES}", row.name));
    let fixture = fixture.to_str().unwrap().to_string();
    let made = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(make.replace("{out}", &fixture).split(' '))
        .output();
    if !made.as_ref().is_ok_and(|o| o.status.success()) || !Path::new(&fixture).exists() {
        return Outcome::NotRun(format!(
            "cannot make the {FRAMES}-frame fixture ({make}): {:?}",
            made.map(|o| String::from_utf8_lossy(&o.stderr).to_string())
        ));
    }
    let fragment = fragment.replace("{fixture}", &fixture);

    // The decoder alone, at 30 fps, as a player without fdlink runs it.
    let ref_trace = sock_dir.join(format!("{}-reference.strace", row.name));
    let (r_ok, r_out, r_err) = spawn_counted(
        &[
            "produce".into(),
            "--frames-log".into(),
            format!("{fragment} ! fakesink name=check sync=true"),
        ],
        &ref_trace,
    )
    .finish();
    if !r_ok {
        return Outcome::NotRun(format!(
            "the decoder fails on its own, without fdlink: {}",
            first_error(&r_err).unwrap_or("")
        ));
    }
    let reference = match usage(decoder, &ref_trace, &r_err) {
        Ok(u) => u,
        Err(why) => return Outcome::Fail(format!("reference run: {why}")),
    };

    // Through fdlink at 30 fps, to one consumer whose queue holds what its syncing sink has not
    // shown yet.
    let sock = sock_dir.join(format!("{}.sock", row.name));
    let sock = sock.to_str().unwrap().to_string();
    let consumer = spawn(&[
        "consume".into(),
        "--frames-log".into(),
        format!(
            "fdlinksrc socket-path={sock} timeout=60000 ! queue ! fakesink name=check sync=true"
        ),
    ]);
    let trace = sock_dir.join(format!("{}.strace", row.name));
    let producer = spawn_counted(
        &[
            "produce".into(),
            "--frames-log".into(),
            format!(
                "{fragment} ! fdlinksink socket-path={sock} wait-for-connection=true sync=true"
            ),
        ],
        &trace,
    );
    let (p_ok, p_out, p_err) = producer.finish();
    let (c_ok, c_out, c_err) = consumer.finish();
    if let Some(failed) = peers_failed((p_ok, &p_err), (c_ok, &c_err)) {
        return failed;
    }
    let linked = match usage(decoder, &trace, &p_err) {
        Ok(u) => u,
        Err(why) => return Outcome::Fail(why),
    };
    let alone = frames(&r_out).len();
    let sent = frames(&p_out).len();
    let got = frames(&c_out).len();

    let mut problems = Vec::new();
    if linked.capture_buffers > reference.capture_buffers + MAX_EXTRA {
        problems.push(format!(
            "{} capture buffers through fdlink, {} alone: more than {MAX_EXTRA} extra (fdlinksink's ALLOCATION answer asks for too many)",
            linked.capture_buffers, reference.capture_buffers
        ));
    }
    if linked.ran_out > 0 {
        problems.push(format!(
            "the decoder ran out of capture buffers {} times at 30 fps with one consumer (its pool of {} is too small)",
            linked.ran_out, linked.capture_buffers
        ));
    }
    // vicodec may end the stream before draining its last frames (the row's eos_bug): then
    // the producer may send fewer than the decoder gave alone, never the consumer get fewer.
    let early_eos = row.eos_bug.is_some_and(|m| p_err.contains(m));
    if got != sent || (sent < alone && !early_eos) || sent == 0 {
        problems.push(format!(
            "{alone} frames decoded alone, {sent} sent through fdlink, {got} received"
        ));
    }
    let fewest = |u: &Usage| u.fewest_free.map_or("?".into(), |f| f.to_string());
    let figures = format!(
        "capture buffers: {} alone, {} through fdlink (at most {MAX_EXTRA} more allowed); fewest free: {} alone, {} through fdlink; {got}/{sent} frames at 30 fps to a holding consumer",
        reference.capture_buffers,
        linked.capture_buffers,
        fewest(&reference),
        fewest(&linked),
    );
    if problems.is_empty() {
        Outcome::Pass(format!("{figures}, the decoder never ran out"))
    } else {
        Outcome::Fail(format!("{} ({figures})", problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_capture_buffers_granted_and_created() {
        let trace = "\
12 ioctl(9, VIDIOC_REQBUFS, {type=V4L2_BUF_TYPE_VIDEO_OUTPUT, memory=V4L2_MEMORY_MMAP, count=2 => 2}) = 0
12 ioctl(11, VIDIOC_REQBUFS, {type=V4L2_BUF_TYPE_VIDEO_CAPTURE, memory=V4L2_MEMORY_MMAP, count=0 => 0}) = 0
12 ioctl(11, VIDIOC_REQBUFS, {type=V4L2_BUF_TYPE_VIDEO_CAPTURE, memory=V4L2_MEMORY_MMAP, count=11 => 11}) = 0
12 ioctl(11, VIDIOC_REQBUFS, {type=V4L2_BUF_TYPE_VIDEO_CAPTURE, memory=V4L2_MEMORY_MMAP, count=0 => 0}) = 0
12 ioctl(11, VIDIOC_REQBUFS, {type=V4L2_BUF_TYPE_VIDEO_CAPTURE, memory=V4L2_MEMORY_MMAP, count=4 => 4}) = 0
12 ioctl(11, VIDIOC_CREATE_BUFS, {count=1, memory=V4L2_MEMORY_MMAP, format={type=V4L2_BUF_TYPE_VIDEO_CAPTURE, fmt.pix={width=640}} => {index=4, count=1}) = 0
12 ioctl(11, VIDIOC_CREATE_BUFS, {count=0, memory=V4L2_MEMORY_MMAP, format={type=V4L2_BUF_TYPE_VIDEO_CAPTURE, fmt.pix={width=640}} => {index=5, count=0}) = 0
";
        assert_eq!(capture_buffers(trace), 11);
        let grown = trace.replace("count=11 => 11", "count=0 => 0");
        assert_eq!(capture_buffers(&grown), 5);
        // strace 6.13, GStreamer 1.26's v4l2codecs: one CREATE_BUFS per buffer.
        let one = "252 ioctl(6, VIDIOC_CREATE_BUFS, {count=1, memory=V4L2_MEMORY_MMAP, format={type=V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE, fmt.pix_mp={width=320}}}) = 0 ({index=I, count=1})\n";
        let probe = "252 ioctl(6, VIDIOC_CREATE_BUFS, {count=0, memory=V4L2_MEMORY_MMAP, format={type=V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE, fmt.pix_mp={width=0}}}) = 0 ({index=0, count=0})\n";
        let output = "252 ioctl(6, VIDIOC_CREATE_BUFS, {count=1, memory=V4L2_MEMORY_MMAP, format={type=V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE, fmt.pix_mp={width=0}}}) = 0 ({index=0, count=1})\n";
        let trace = format!("{probe}{output}{}", one.repeat(10));
        assert_eq!(capture_buffers(&trace), 10);
        let failed = one.replace(") = 0 ({index=I, count=1})", ") = -1 ENOMEM");
        assert_eq!(capture_buffers(&format!("{trace}{failed}")), 10);
    }

    #[test]
    fn codecs_pool_running_out_is_counted_on_the_capture_allocator() {
        let line = |a: u32, e: &str| {
            format!(
                "0:00:01 1 0x1 DEBUG v4l2codecs-allocator x.c:1:f:<v4l2codecallocator{a}> {e}\n"
            )
        };
        let mut log = String::new();
        // The bitstream allocator: 2 buffers, both out at once (not the decoder's surfaces).
        for i in 0..2 {
            log += &line(0, &format!("Create buffer {i} with 1 memory fds"));
        }
        log += &line(0, "Allocated buffer 0");
        log += &line(0, "Allocated buffer 1");
        for i in 0..3 {
            log += &line(1, &format!("Create buffer {i} with 1 memory fds"));
        }
        log += &line(1, "Allocated buffer 0");
        log += &line(1, "Allocated buffer 1");
        assert_eq!(codecs_ran_out(&log), Some((0, 1)));
        log += &line(1, "Allocated buffer 2");
        log += &line(1, "Placing back buffer 0 into pool");
        assert_eq!(codecs_ran_out(&log), Some((1, 0)));
        assert_eq!(codecs_ran_out("nothing"), None);
    }

    #[test]
    fn videodec_empty_capture_queue_is_counted() {
        let log = "a Only 2 buffer left in the capture queue.\nb Only 0 buffer left in the capture queue.\n";
        assert_eq!(videodec_ran_out(log), Some((1, 0)));
        assert_eq!(videodec_ran_out("none"), None);
    }
}
