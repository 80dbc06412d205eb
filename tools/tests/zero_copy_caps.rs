//! Zero-copy beyond raw video: what upstream allocates with the memfd allocator fdlinksink
//! proposes for any caps (raw audio, encoded audio, files read by filesrc), and the frames of
//! a software decoder at its default settings, copied once by GstVideoDecoder into a memfd.
//! Each crosses without a copy at the link, and the consumer's output is byte for byte that
//! of the same pipeline in one process.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

/// Runs `producer` (ending in an fdlinksink on `dir`'s socket) and a consumer
/// `fdlinksrc ! consumer_tail` writing `dir/two.out`, then `producer_head ! one_tail` in one
/// gst-launch-1.0 process writing `dir/one.out`. Returns the producer's final stats and both
/// outputs.
fn two_processes_and_one(
    dir: &TempDir,
    producer_head: &str,
    consumer_tail: &str,
    one_tail: &str,
) -> (gst::Structure, Vec<u8>, Vec<u8>) {
    init_gst();
    let sock = dir.socket();
    let two = dir.0.join("two.out");
    let one = dir.0.join("one.out");
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!(
            "fdlinksrc socket-path={sock} ! {consumer_tail} ! filesink location={}",
            two.display()
        ),
    ]);
    let mut producer = Peer::spawn(&[
        "produce",
        &format!(
            "{producer_head} ! fdlinksink socket-path={sock} wait-for-connection=true sync=false"
        ),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    assert_no_leaked_fds(&producer, "producer");
    assert_no_leaked_fds(&consumer, "consumer");
    let made = std::process::Command::new("gst-launch-1.0")
        .arg("-q")
        .args(format!("{producer_head} ! {one_tail} ! filesink").split_whitespace())
        .arg(format!("location={}", one.display()))
        .status()
        .expect("run gst-launch-1.0");
    assert!(made.success(), "the one-process pipeline failed");
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let (two, one) = (read(&two), read(&one));
    assert!(!one.is_empty(), "the one-process pipeline wrote nothing");
    (producer.latest_stats().expect("producer stats"), two, one)
}

/// (frames-zero-copy, frames-copied) of fdlinksink's stats.
fn copies(stats: &gst::Structure) -> (u64, u64) {
    (
        field(stats, "frames-zero-copy"),
        field(stats, "frames-copied"),
    )
}

/// audiotestsrc allocates its buffers with the proposed memfd allocator (no pool: audio caps
/// carry no buffer size), so raw audio crosses without a copy.
#[test]
fn raw_audio_crosses_zero_copy() {
    let dir = TempDir::new("zc-audio");
    let n = 100;
    let (stats, two, one) = two_processes_and_one(
        &dir,
        &format!("audiotestsrc num-buffers={n} wave=ticks ! audio/x-raw,rate=48000,channels=2"),
        "wavenc",
        "wavenc",
    );
    assert_eq!(copies(&stats), (n, 0), "{stats}");
    assert!(two == one, "the consumer's WAV differs from one process's");
}

/// opusenc allocates its packets with the allocator from the query: encoded audio crosses
/// without a copy too.
#[test]
fn encoded_audio_crosses_zero_copy() {
    let dir = TempDir::new("zc-opus");
    let (stats, two, one) = two_processes_and_one(
        &dir,
        "audiotestsrc num-buffers=100 ! audio/x-raw,rate=48000,channels=2 ! opusenc",
        "opusdec ! wavenc",
        "opusdec ! wavenc",
    );
    let (zero_copy, copied) = copies(&stats);
    assert!(zero_copy >= 100, "{stats}");
    assert_eq!(copied, 0, "{stats}");
    assert!(
        two == one,
        "the consumer's decoded WAV differs from one process's"
    );
}

/// A plain software decoder, direct rendering on (the default): libav decodes into the memfd
/// pool and GstVideoDecoder copies each frame libav keeps as a reference; that one copy lands
/// in a memfd, so nothing is copied at the link.
#[test]
fn avdec_h264_at_default_settings_crosses_without_a_copy_at_the_link() {
    let dir = TempDir::new("zc-avdec");
    let clip = dir.0.join("clip.mkv");
    let n = 60;
    let made = std::process::Command::new("gst-launch-1.0")
        .arg("-q")
        .args(
            format!(
                "videotestsrc num-buffers={n} pattern=ball \
                 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
                 ! x264enc ! h264parse ! matroskamux ! filesink"
            )
            .split_whitespace(),
        )
        .arg(format!("location={}", clip.display()))
        .status()
        .expect("run gst-launch-1.0");
    assert!(made.success(), "cannot make the test clip");
    // Through videoconvert: y4menc writes a frame's padding too (avdec's frames are padded
    // for libav), bytes libav leaves as they were, which differ from run to run.
    let tail = "videoconvert ! video/x-raw,format=Y444 ! y4menc";
    let (stats, two, one) = two_processes_and_one(
        &dir,
        &format!(
            "filesrc location={} ! matroskademux ! h264parse ! avdec_h264",
            clip.display()
        ),
        tail,
        tail,
    );
    assert_eq!(copies(&stats), (n, 0), "{stats}");
    assert_eq!(field(&stats, "bytes-copied"), 0);
    assert!(
        two == one,
        "the consumer's frames differ from one process's"
    );
}
