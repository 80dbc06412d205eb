//! Consumers that join an encoded stream mid-GOP: a live H.264 stream (x264enc, a keyframe
//! every 90 frames, 3 s at 30 fps) joined at about 1.5 s. By default (sync-method=auto on
//! encoded caps) a joiner starts on a keyframe, never on a delta unit it cannot decode; with
//! the latest keyframe's backlog (auto, latest-keyframe) its decoder gets the GOP so far but
//! nothing from before the join reaches its sink, and what does is what a consumer there from
//! the start decoded; also when the joiner's pipeline ran long before it joined (a reconnect).
//! Real consumer processes; the producer is a process too, or this test process when the test
//! needs the moment the consumer joined.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;

const T: Duration = Duration::from_secs(60);

/// A live 320x240 H.264 stream at 30 fps with a keyframe every 90 frames (no scene cuts).
const H264: &str = "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 ! x264enc key-int-max=90 option-string=scenecut=0 tune=zerolatency speed-preset=ultrafast ! h264parse";

/// A consumer that decodes, its frames logged after the decoder (`check`).
fn decoding_consumer(sock: &str) -> Peer {
    Peer::spawn(&[
        "consume",
        "--frames-log",
        &format!(
            "fdlinksrc socket-path={sock} timeout=30000 ! h264parse ! avdec_h264 ! identity name=check ! fakesink"
        ),
    ])
}

/// The CRC of each decoded frame, by PTS.
fn crc_by_pts(lines: &[String]) -> HashMap<i64, String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("frame "))
        .map(|l| {
            (
                number_field::<i64>(l, "pts"),
                l.split(' ')
                    .find_map(|kv| kv.strip_prefix("crc="))
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

/// With default settings a consumer that joins mid-GOP gets a keyframe first: the first
/// buffer its fdlinksrc pushes is no delta unit.
#[test]
fn a_joiner_starts_on_a_keyframe_by_default() {
    init_gst();
    let dir = TempDir::new("joiner-default");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--seconds",
        "4",
        &format!("{H264} ! fdlinksink socket-path={sock}"),
    ]);
    wait_for_path(&sock, T);
    std::thread::sleep(Duration::from_millis(1500));
    let mut consumer = Peer::spawn(&[
        "consume",
        "--frames-log",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let got = frames(&consumer.lines());
    assert!(got.len() > 30, "the joiner gets frames: {}", got.len());
    assert!(!got[0].delta, "the joiner's first buffer is a keyframe");
}

/// A consumer joins at about 1.5 s (frame 45 of a 90-frame GOP) with the latest keyframe's
/// backlog (sync-method=latest-keyframe, and the default, auto): its sink gets no frame from
/// before the join, though its decoder got the GOP from the keyframe, so every frame it shows
/// equals the one a consumer connected from the start decoded at that PTS.
#[test]
fn a_joiner_decodes_the_gop_so_far_but_shows_only_frames_from_the_join() {
    init_gst();
    gstfdlink::plugin_register_static().unwrap();
    for method in ["latest-keyframe", "auto"] {
        let dir = TempDir::new("joiner-backlog");
        let sock = dir.socket();
        let pipeline = gst::parse::launch(&format!(
            "{H264} ! fdlinksink name=sink socket-path={sock} sync-method={method} wait-for-connection=true"
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let sink = pipeline.by_name("sink").unwrap();
        // The PTS of the latest frame that reached the sink, and its value when the second
        // consumer joined.
        let latest: Arc<Mutex<Option<u64>>> = Arc::default();
        let l = latest.clone();
        sink.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
                    *l.lock().unwrap() = b.pts().map(|t| t.nseconds());
                }
                gst::PadProbeReturn::Ok
            });
        let joined_at: Arc<Mutex<Vec<Option<u64>>>> = Arc::default();
        let j = joined_at.clone();
        sink.connect("client-added", false, move |_| {
            j.lock().unwrap().push(*latest.lock().unwrap());
            None
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        let mut reference = decoding_consumer(&sock);
        let deadline = Instant::now() + T;
        while field(&sink.property::<gst::Structure>("stats"), "frames-in") < 45 {
            assert!(Instant::now() < deadline, "{method}: the producer runs");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut joiner = decoding_consumer(&sock);
        while joined_at.lock().unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "{method}: the joiner joins");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_secs(2));
        pipeline.send_event(gst::event::Eos::new());
        let bus = pipeline.bus().unwrap();
        assert!(
            bus.timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos])
                .is_some(),
            "{method}: the producer ends"
        );
        pipeline.set_state(gst::State::Null).unwrap();
        reference.wait_success(T, "reference consumer");
        joiner.wait_success(T, "joiner");

        let join = joined_at.lock().unwrap()[1].expect("a frame before the join") as i64;
        let shown = pts_of(&joiner.lines());
        assert!(
            shown.len() >= 30,
            "{method}: the joiner shows frames: {shown:?}"
        );
        let early: Vec<&i64> = shown.iter().filter(|&&p| p < join).collect();
        assert!(
            early.is_empty(),
            "{method}: frames from before the join ({join}) reached the joiner's sink: {early:?} of {shown:?}"
        );
        // Decoded from the keyframe on: every frame shown is the reference's at that PTS (the
        // first may be clipped to the joiner's segment start, a PTS the reference has not).
        let reference = crc_by_pts(&reference.lines());
        let joined = crc_by_pts(&joiner.lines());
        let compared: Vec<(&i64, &String)> = joined
            .iter()
            .filter(|(p, _)| reference.contains_key(p))
            .collect();
        let differ: Vec<&i64> = compared
            .iter()
            .filter(|(p, crc)| reference[*p] != **crc)
            .map(|(p, _)| *p)
            .collect();
        assert!(
            compared.len() + 1 >= joined.len() && differ.is_empty(),
            "{method}: frames decoded differently from the reference at {differ:?} ({} compared of {}); joiner: {:?}",
            compared.len(),
            joined.len(),
            joiner.latest_stats()
        );
    }
}

/// A `reconnect=true` consumer whose pipeline has run for a while joins a new producer 1.5 s
/// into its GOP (the new producer listens elsewhere until its socket is moved to the path the
/// consumer retries): the new producer's frames from before the join are behind this
/// pipeline's start only by the producer's segment, which for a joiner starts at the end of the
/// backlog, so the decoder clips them. The old producer's frames are 320x240, the new one's
/// 640x480: the decoded frames' sizes tell them apart.
#[test]
fn a_reconnecting_joiner_shows_nothing_from_before_the_join() {
    init_gst();
    let dir = TempDir::new("joiner-reconnect");
    let sock = dir.socket();
    let elsewhere = dir.0.join("elsewhere.sock");
    let stream = |size: &str| H264.replace("width=320,height=240", size);
    let mut first = Peer::spawn(&[
        "produce",
        &format!(
            "{} ! fdlinksink socket-path={sock}",
            stream("width=320,height=240")
        ),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--frames-log",
        &format!(
            "fdlinksrc socket-path={sock} reconnect=true retry-timeout=0 ! h264parse ! avdec_h264 ! identity name=check ! fakesink"
        ),
    ]);
    assert!(
        consumer
            .wait_line(T, |l| l.starts_with("frame ") && l.contains("size=115200"))
            .is_some(),
        "the consumer decodes the first producer's frames"
    );
    first.kill9();
    let mut second = Peer::spawn(&[
        "produce",
        "--frames-log",
        "--seconds",
        "4",
        &format!(
            "{} ! fdlinksink socket-path={}",
            stream("width=640,height=480"),
            elsewhere.display()
        ),
    ]);
    assert!(
        second.wait_line(T, |l| l.starts_with("frame ")).is_some(),
        "the second producer runs"
    );
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::rename(&elsewhere, &sock).unwrap();
    second.wait_success(T, "second producer");
    consumer.wait_success(T, "consumer");
    let sent = pts_of(&second.lines());
    let shown: Vec<i64> = consumer
        .lines()
        .iter()
        .filter(|l| l.starts_with("frame ") && l.contains("size=460800"))
        .map(|l| number_field(l, "pts"))
        .collect();
    assert!(
        shown.len() >= 30,
        "the consumer shows the new producer's frames: {shown:?}"
    );
    // It joined at least 1.2 s into the new stream (1.5 s after its first frame).
    let joined_after = sent[0] + 1_200_000_000;
    let early: Vec<&i64> = shown.iter().filter(|&&p| p < joined_after).collect();
    assert!(
        early.is_empty(),
        "frames from before the join (the stream began at {}) reached the sink: {early:?}",
        sent[0]
    );
}
