//! An application producer (`fdlink::producer`, no GStreamer in its path) serving a real
//! `fdlinksrc` in another process and an application consumer: every frame arrives with its
//! bytes, the consumer's pipeline writes them to a file unchanged, the release callback runs
//! once per frame only after the consumer let go, and the producer keeps no fd.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use fdlink::consumer::Consumer;
use fdlink::producer::{OutFrame, Producer, ProducerOptions, Timing};
use fdlink::protocol::MemoryKind;

const T: Duration = Duration::from_secs(30);
const FRAMES: u64 = 30;
const CAPS: &str =
    "video/x-raw, format=(string)GRAY8, width=(int)64, height=(int)48, framerate=(fraction)30/1";
const SIZE: usize = 64 * 48;

/// Held by each test: the fd counts are per process.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn frame_bytes(n: u64) -> Vec<u8> {
    (0..SIZE).map(|i| (i as u64 * 7 + n * 13) as u8).collect()
}

fn wait_until(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + T;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_pipeline_gets_an_applications_frames() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    init_gst();
    let fds_before = fd_count(std::process::id() as i32);
    let dir = TempDir::new("app-producer");
    let sock = dir.socket();
    let out = dir.0.join("out.raw");
    let mut producer = Producer::bind(Path::new(&sock), ProducerOptions::default()).unwrap();
    producer.set_caps(CAPS);
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!(
            "fdlinksrc socket-path={sock} ! filesink location={}",
            out.display()
        ),
    ]);
    wait_until("the pipeline connects", || producer.has_consumer());
    for n in 0..FRAMES {
        let given = producer
            .publish_bytes(&frame_bytes(n), Timing::at_frame(n, 30))
            .unwrap();
        assert_eq!(given, 1, "frame {n} went to the one consumer");
    }
    producer.end_of_stream();
    consumer.wait_success(T, "the consuming pipeline");
    let written = std::fs::read(&out).unwrap();
    let want: Vec<u8> = (0..FRAMES).flat_map(frame_bytes).collect();
    assert_eq!(written.len(), want.len(), "bytes written");
    assert!(written == want, "the file holds the frames as published");
    wait_until("every release", || producer.stats().0.releases == FRAMES);
    let (stats, _, held) = producer.stats();
    assert_eq!(
        (stats.frames_sent, stats.frames_copied, held),
        (FRAMES, 0, 0)
    );
    drop(producer);
    assert_eq!(
        fd_count(std::process::id() as i32),
        fds_before,
        "the producer kept fds"
    );
}

/// A frame of the caller's own memfd: the callback runs when the consumer drops the frame,
/// not before, once.
#[test]
fn the_release_callback_runs_once_the_consumer_let_go() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    init_gst();
    let dir = TempDir::new("app-producer-release");
    let sock = dir.socket();
    let mut producer = Producer::bind(Path::new(&sock), ProducerOptions::default()).unwrap();
    producer.set_caps(CAPS);
    let sock2 = sock.clone();
    let (tx_got, rx_got) = std::sync::mpsc::channel::<Vec<u8>>();
    let (tx_drop, rx_drop) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut c = Consumer::connect(Path::new(&sock2)).unwrap();
        let frame = c.next_frame().unwrap().expect("a frame");
        tx_got.send(frame.map().unwrap().bytes().to_vec()).unwrap();
        rx_drop.recv().unwrap();
        drop(frame);
        assert!(c.next_frame().unwrap().is_none(), "then the end");
    });
    wait_until("the consumer connects", || producer.has_consumer());

    let fd: OwnedFd = fdlink::fdkind::create_sealed_memfd("caller", SIZE).unwrap();
    nix::sys::uio::pwrite(fd.as_fd(), &frame_bytes(5), 0).unwrap();
    let released = Arc::new(AtomicUsize::new(0));
    let counter = released.clone();
    let frame = OutFrame::new(Timing::at_frame(0, 30)).memory(
        MemoryKind::Memfd,
        Arc::new(fd),
        0,
        SIZE as u64,
    );
    let given = producer
        .publish(frame, move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    assert_eq!(given, 1);
    assert_eq!(rx_got.recv_timeout(T).unwrap(), frame_bytes(5));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(released.load(Ordering::SeqCst), 0, "held by the consumer");
    tx_drop.send(()).unwrap();
    wait_until("the release callback", || {
        released.load(Ordering::SeqCst) == 1
    });
    producer.end_of_stream();
    reader.join().unwrap();
    drop(producer);
    assert_eq!(released.load(Ordering::SeqCst), 1, "once");
}

/// The segment the producer sends is the text fdlinksink writes for a default segment.
#[test]
fn the_segment_is_the_one_fdlinksink_writes() {
    init_gst();
    let seg = gst::FormattedSegment::<gst::ClockTime>::new();
    let p = gstfdlink::control::event_to_packet(&gst::event::Segment::new(&seg), |_| {});
    assert_eq!(p.structure, fdlink::producer::SEGMENT_TEXT);
}
