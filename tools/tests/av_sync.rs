//! A/V sync through two links: a demuxer's video and audio cross on one fdlink each, and the
//! consumer decodes both to syncing fakesinks. Each sink logs, per buffer it renders, the
//! clock's running time at the render minus the buffer's running time (`--render-log`); audio
//! and video must render within 5 ms of each other, as they do in one process, before and
//! after a pause and a seek, with either side following or neither.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);
/// The bound on how far apart audio and video render (µs).
const MAX_APART_US: i64 = 5_000;
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Renders each sink must log between two events, for a median of half of them to mean
/// something.
const MIN_RENDERS: usize = 12;

/// How late each sink rendered, over one stretch of the run.
#[derive(Default, Debug)]
struct Stretch {
    name: &'static str,
    video: Vec<i64>,
    audio: Vec<i64>,
}

fn median(v: &[i64]) -> i64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

/// The consumer's `render` lines, split at its pause, resume and seek lines into the
/// stretches before the pause, between the resume and the seek, and after the seek.
fn stretches(lines: &[String]) -> Vec<Stretch> {
    let mut out = vec![Stretch {
        name: "before the pause",
        ..Default::default()
    }];
    for line in lines {
        if line == "paused" || line.starts_with("seek-sent") {
            out.push(Stretch {
                name: "",
                ..Default::default()
            });
        } else if line == "resumed" {
            out.last_mut().unwrap().name = "after the pause";
        } else if let Some(rest) = line.strip_prefix("render ") {
            let late: i64 = number_field(rest, "late-us");
            let s = out.last_mut().unwrap();
            if rest.starts_with("vsink ") {
                s.video.push(late);
            } else if rest.starts_with("asink ") {
                s.audio.push(late);
            }
        }
    }
    if let Some(last) = out.last_mut()
        && last.name.is_empty()
    {
        last.name = "after the seek";
    }
    // The stretch while paused (its name still empty) renders what prerolled: not a stretch
    // of playback.
    out.retain(|s| !s.name.is_empty());
    out
}

/// Runs the split player: `sink_mode` on both fdlinksinks, `src_mode` on both fdlinksrcs; the
/// consumer pauses for 500 ms after 30 frames and seeks to 3.5 s after 75. Asserts both reach
/// EOS and audio and video render within `MAX_APART_US` in each stretch.
fn split_player(sink_mode: &str, src_mode: &str) {
    // One run at a time: decoding on every core at once makes video late for want of CPU,
    // which says nothing about sync.
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    init_gst();
    init_gst();
    let dir = TempDir::new(&format!("avsync-{sink_mode}-{src_mode}"));
    let media = av_mkv(&dir);
    let (v, a) = (dir.0.join("v.sock"), dir.0.join("a.sock"));
    let (v, a) = (v.display().to_string(), a.display().to_string());
    let mut producer = Peer::spawn(&[
        "produce",
        &format!(
            "filesrc location={media} ! matroskademux name=d \
             d.video_0 ! queue ! h264parse ! fdlinksink socket-path={v} wait-for-connection=true mode={sink_mode} \
             d.audio_0 ! queue ! opusparse ! fdlinksink socket-path={a} wait-for-connection=true mode={sink_mode}"
        ),
    ]);
    wait_for_path(&v, T);
    wait_for_path(&a, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--render-log",
        "--pause-after",
        "30",
        "--pause-ms",
        "500",
        "--seek-after",
        "75",
        "--seek-to",
        "3.5",
        &format!(
            "fdlinksrc socket-path={v} mode={src_mode} ! h264parse ! avdec_h264 ! videoconvert \
             ! fakesink name=vsink sync=true \
             fdlinksrc socket-path={a} mode={src_mode} ! opusparse ! opusdec ! audioconvert \
             ! fakesink name=asink sync=true"
        ),
    ]);
    consumer.wait_success(T, "consumer");
    producer.wait_success(T, "producer");
    let lines = consumer.lines();
    assert!(lines.iter().any(|l| l == "eos"), "{lines:?}");
    let stretches = stretches(&lines);
    let names: Vec<&str> = stretches.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        ["before the pause", "after the pause", "after the seek"],
        "{lines:?}"
    );
    for s in &stretches {
        assert!(
            s.video.len() >= MIN_RENDERS && s.audio.len() >= MIN_RENDERS,
            "{}: {} video and {} audio renders\n{lines:?}",
            s.name,
            s.video.len(),
            s.audio.len()
        );
        // After an independent consumer's pause what the producer sent meanwhile is overdue
        // and rendered at once, each sink catching up at its own pace (0.5 s here): sync is
        // measured once settled, over the second half of each stretch.
        let settled = |v: &[i64]| median(&v[v.len() / 2..]);
        let (video, audio) = (settled(&s.video), settled(&s.audio));
        eprintln!(
            "{sink_mode}/{src_mode}, {}: video {video} µs late, audio {audio} µs",
            s.name
        );
        assert!(
            (video - audio).abs() <= MAX_APART_US,
            "{sink_mode}/{src_mode}, {}: video renders {video} µs after its time, audio \
             {audio} µs: {} µs apart",
            s.name,
            video - audio
        );
    }
}

#[test]
fn neither_follows() {
    split_player("independent", "independent");
}

#[test]
fn consumer_follows() {
    split_player("independent", "follow");
}

#[test]
fn producer_follows() {
    split_player("follow", "independent");
}
