//! Lossless at default settings (issue 28): a consumer whose downstream holds many of the
//! producer's buffers (filesink gathering 64 KiB, x264enc's lookahead, a queue before a slow
//! sink, a tee, muxers) still gets every frame, and writes what the same pipeline writes in one
//! process. Each case runs `A ! B` whole and as `A ! fdlinksink` | `fdlinksrc ! B`, and checks
//! the producer's and consumer's final stats count no frame lost.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::TempDir;
use common::onevstwo::*;

/// Raw video from videotestsrc: a moving ball, so every frame differs and a lost or doubled
/// one shows.
fn raw_video(live: bool, frames: u32, size: &str, fps: u32) -> String {
    let (w, h) = size.split_once('x').unwrap();
    format!(
        "videotestsrc is-live={live} num-buffers={frames} pattern=ball ! \
         video/x-raw,format=I420,width={w},height={h},framerate={fps}/1"
    )
}

/// Runs `a ! b` whole and split, `b` writing `$OUT`; returns the split run and the whole and
/// split outputs.
fn whole_and_split(dir: &TempDir, a: &str, b: &str) -> (SplitRun, PathBuf, PathBuf) {
    let whole = dir.0.join("whole.out");
    let split = dir.0.join("split.out");
    run_whole(&format!(
        "{a} ! {}",
        b.replace("$OUT", whole.to_str().unwrap())
    ));
    let run = run_split(dir, a, &b.replace("$OUT", split.to_str().unwrap()));
    (run, whole, split)
}

/// `filesrc blocksize=B` into `filesink`, which gathers 64 KiB before it writes: with small
/// blocks it holds hundreds of the producer's buffers.
fn file_copy(blocksize: u32) {
    let dir = TempDir::new(&format!("lossless-file-{blocksize}"));
    let input = dir.0.join("in.bin");
    let output = dir.0.join("out.bin");
    write_nonrepeating(&input, 2_000_003);
    let run = run_split(
        &dir,
        &format!("filesrc location={} blocksize={blocksize}", input.display()),
        &format!("filesink location={}", output.display()),
    );
    assert_lossless(&run, file_difference(&input, &output));
}

#[test]
fn file_copy_through_filesink_blocksize_100() {
    file_copy(100);
}

#[test]
fn file_copy_through_filesink_blocksize_4096() {
    file_copy(4096);
}

#[test]
fn file_copy_through_filesink_blocksize_65536() {
    file_copy(65536);
}

/// x264enc at its default settings holds its lookahead (tens of frames) before it releases
/// any; non-live, the producer waits on it.
#[test]
fn x264enc_non_live_writes_what_one_process_writes() {
    let dir = TempDir::new("lossless-x264");
    let (run, whole, split) = whole_and_split(
        &dir,
        "videotestsrc num-buffers=200 pattern=smpte ! \
         video/x-raw,format=I420,width=320,height=240,framerate=30/1",
        "x264enc ! h264parse ! filesink location=$OUT",
    );
    assert_lossless(&run, file_difference(&whole, &split));
}

/// The same encoder behind a live producer, which never waits for a consumer: every frame is
/// encoded (counted in the output), and the stream is byte-identical to one process's. The
/// stream is written as byte-stream, which h264parse reads back without a container.
#[test]
fn x264enc_live_encodes_every_frame() {
    let dir = TempDir::new("lossless-x264-live");
    let frames = 90;
    let (run, whole, split) = whole_and_split(
        &dir,
        &raw_video(true, frames, "320x240", 30),
        "x264enc ! h264parse ! video/x-h264,stream-format=byte-stream ! filesink location=$OUT",
    );
    let read = |p: &PathBuf| {
        read_back(&format!(
            "filesrc location={} ! h264parse ! \
             video/x-h264,stream-format=byte-stream,alignment=au ! identity name=check ! fakesink",
            p.display()
        ))
    };
    let (whole_frames, split_frames) = (read(&whole), read(&split));
    assert_eq!(
        whole_frames.len(),
        frames as usize,
        "one process encoded {} of {frames} frames",
        whole_frames.len()
    );
    let difference = (split_frames.len() != frames as usize)
        .then(|| format!("{} of {frames} frames encoded", split_frames.len()))
        .or_else(|| file_difference(&whole, &split));
    assert_lossless(&run, difference);
}

/// A recorder slower than a live camera: the queue before it fills with the producer's frames.
#[test]
fn queue_before_slow_sink_live() {
    let dir = TempDir::new("lossless-queue-live");
    let (run, whole, split) = whole_and_split(
        &dir,
        &raw_video(true, 60, "160x120", 100),
        // 15 ms a frame against the camera's 10 ms.
        "queue max-size-buffers=200 ! identity sleep-time=15000 ! y4menc ! \
         filesink location=$OUT",
    );
    assert_lossless(&run, file_difference(&whole, &split));
}

/// The same behind a non-live producer, which waits for the slow sink's releases.
#[test]
fn queue_before_slow_sink_non_live() {
    let dir = TempDir::new("lossless-queue");
    let (run, whole, split) = whole_and_split(
        &dir,
        &raw_video(false, 60, "160x120", 60),
        "queue max-size-buffers=200 ! identity sleep-time=2000 ! y4menc ! \
         filesink location=$OUT",
    );
    assert_lossless(&run, file_difference(&whole, &split));
}

/// A tee with a raw recording, a display synchronised to the clock and an encoder: the
/// encoder's queue holds its lookahead, and its latency holds the display's frames that long.
#[test]
fn tee_with_queues_live() {
    let dir = TempDir::new("lossless-tee");
    let (run, whole, split) = whole_and_split(
        &dir,
        &raw_video(true, 120, "160x120", 60),
        "tee name=t t. ! queue ! y4menc ! filesink location=$OUT \
         t. ! queue ! fakesink sync=true t. ! queue ! x264enc ! fakesink",
    );
    assert_lossless(&run, file_difference(&whole, &split));
}

/// A recording in a container that writes dates and random ids: what its demuxer reads back
/// (each frame's size, checksum, keyframe flag and pts) is compared, not the file. Pts count
/// from the first frame's, within 5 ms: the consumer records on its own running time, which
/// starts when its pipeline does, and the container rounds it in its own way; a lost or
/// doubled frame moves the rest by a frame (16.7 ms).
fn muxer_read_back(tag: &str, mux: &str, demux: &str) {
    let dir = TempDir::new(tag);
    let frames = 120;
    let (run, whole, split) = whole_and_split(
        &dir,
        &raw_video(false, frames, "320x240", 60),
        &format!("x264enc ! h264parse ! {mux} ! filesink location=$OUT"),
    );
    let read = |p: &PathBuf| {
        read_back(&format!(
            "filesrc location={} ! {demux} ! identity name=check ! fakesink",
            p.display()
        ))
    };
    let (whole_frames, split_frames) = (read(&whole), read(&split));
    assert_eq!(
        whole_frames.len(),
        frames as usize,
        "one process recorded {} of {frames} frames",
        whole_frames.len()
    );
    assert_lossless(
        &run,
        frames_difference(&whole_frames, &split_frames, Duration::from_millis(5)),
    );
}

#[test]
fn matroskamux_recording_non_live() {
    muxer_read_back("lossless-mkv", "matroskamux", "matroskademux");
}

#[test]
fn mp4mux_recording_non_live() {
    muxer_read_back("lossless-mp4", "mp4mux", "qtdemux");
}
