//! An application consumer (`fdlink::consumer`, no GStreamer in its path) against a real
//! `fdlinksink` in another process: it gets every frame, in order, with the bytes one
//! GStreamer process makes, zero-copy (the producer copies nothing), sends every release
//! back, and keeps no fd once its frames and the consumer are gone.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use fdlink::consumer::{Consumer, ConsumerError};

/// Held by each test: the first counts this process's fds, which the other would open.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const T: Duration = Duration::from_secs(30);
const FRAMES: usize = 30;
const SOURCE: &str = "videotestsrc num-buffers=30 pattern=ball ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1";

fn connect(sock: &str) -> Consumer {
    let deadline = Instant::now() + T;
    loop {
        match Consumer::connect(Path::new(sock)) {
            Ok(c) => return c,
            Err(ConsumerError::Connect { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

#[test]
fn an_application_gets_every_frame_zero_copy_and_releases_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    init_gst();
    let expected: Vec<(Option<gst::ClockTime>, Vec<u8>)> = samples_in_one_process(SOURCE)
        .iter()
        .map(|s| {
            let buffer = s.buffer().unwrap();
            (buffer.pts(), buffer.map_readable().unwrap().to_vec())
        })
        .collect();
    assert_eq!(expected.len(), FRAMES);
    let fds_before = fd_count(std::process::id() as i32);

    let dir = TempDir::new("app-consumer");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--stats-every",
        "20",
        "--wait-clients-gone",
        &format!("{SOURCE} ! fdlinksink socket-path={sock} wait-for-connection=true sync=false"),
    ]);
    let mut consumer = connect(&sock);
    assert_eq!(consumer.hold_limit(), 8, "the producer's max-held");
    let mut got = Vec::new();
    while let Some(frame) = consumer.next_frame().expect("frames") {
        assert!(frame.caps().contains("NV12"), "{}", frame.caps());
        let video = frame.video().expect("the producer's layout");
        assert_eq!((video.width, video.height, video.n_planes), (320, 240, 2));
        assert!(
            frame
                .memories()
                .iter()
                .all(|m| m.kind == fdlink::protocol::MemoryKind::Memfd),
            "the producer's pool is memfds"
        );
        let bytes = frame.map().unwrap().bytes().to_vec();
        got.push((frame.pts(), bytes));
        // Dropped here: released to the producer.
    }
    assert_eq!(got.len(), FRAMES, "every frame, then the end of the stream");
    for (i, ((pts, bytes), (want_pts, want))) in got.iter().zip(&expected).enumerate() {
        assert_eq!(
            pts.map(|d| d.as_nanos() as u64),
            want_pts.map(gst::ClockTime::nseconds),
            "frame {i}: pts"
        );
        assert!(bytes == want, "frame {i}: bytes differ from one process");
    }
    drop(consumer);
    producer.wait_success(T, "producer");
    // The final stats, printed once the consumer had gone.
    let stats = producer.latest_stats().unwrap();
    assert_released_zero_copy(&stats, FRAMES as u64);
    assert_eq!(
        fd_count(std::process::id() as i32),
        fds_before,
        "the application kept fds"
    );
}

/// Frames held keep the producer's buffers; the hold limit it announced is what it lets a
/// consumer keep, and dropping them lets the stream go on to its end.
#[test]
fn held_frames_are_the_producers_until_dropped() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    init_gst();
    let dir = TempDir::new("app-consumer-hold");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--stats-every",
        "20",
        "--wait-clients-gone",
        &format!("{SOURCE} ! fdlinksink socket-path={sock} wait-for-connection=true sync=false"),
    ]);
    let mut consumer = connect(&sock);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(consumer.next_frame().unwrap().expect("a frame"));
    }
    producer
        .wait_stats(T, |s| field(s, "buffers-held") >= 4)
        .expect("the producer keeps the held frames' buffers");
    drop(held);
    let mut rest = 0;
    while consumer.next_frame().unwrap().is_some() {
        rest += 1;
    }
    assert_eq!(rest, FRAMES - 4);
    producer
        .wait_stats(T, |s| {
            field(s, "releases") == FRAMES as u64 && field(s, "buffers-held") == 0
        })
        .expect("all released");
    producer.wait_success(T, "producer");
}

/// A seek from the application goes to the producer's pipeline, which seeks: the frames
/// after it start at the position asked for. The seek's text is the one fdlinksrc sends for
/// the same GStreamer seek event.
#[test]
fn an_application_seeks_the_producer() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    init_gst();
    let dir = TempDir::new("app-consumer-seek");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        &format!(
            "videotestsrc num-buffers=300 pattern=ball ! video/x-raw,format=NV12,width=64,height=48,framerate=30/1 ! fdlinksink socket-path={sock} wait-for-connection=true sync=false"
        ),
    ]);
    let mut consumer = connect(&sock);
    for _ in 0..5 {
        consumer.next_frame().unwrap().expect("a frame");
    }
    let at = std::time::Duration::from_secs(5);
    consumer.seek(at).unwrap();
    let mut after = None;
    while let Some(frame) = consumer.next_frame().unwrap() {
        if frame.pts().is_some_and(|p| p >= at) {
            after = frame.pts();
            break;
        }
    }
    assert_eq!(after, Some(at), "the first frame past the seek is at 5 s");
    drop(consumer);
    producer.wait(T);

    let seek = gst::event::Seek::new(
        1.0,
        gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
        gst::SeekType::Set,
        gst::ClockTime::from_nseconds(1_500_000_000),
        gst::SeekType::None,
        gst::ClockTime::NONE,
    );
    let packet = gstfdlink::control::event_to_packet(&seek, |_| {});
    assert_eq!(packet.event_type, 51201);
    assert!(
        packet.structure.contains("cur=(gint64)1500000000")
            && packet.structure.starts_with("GstEventSeek, rate=(gdouble)1, format=(GstFormat)time, flags=(GstSeekFlags)GST_SEEK_FLAG_FLUSH+GST_SEEK_FLAG_ACCURATE, cur-type=(GstSeekType)set,"),
        "fdlink::consumer's seek text drifted from GStreamer's: {}",
        packet.structure
    );
}
