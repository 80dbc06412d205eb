//! docs/network.md: an fdlink stream carried to "another host" (127.0.0.1 here) with
//! GStreamer's own network elements, three real processes: producer -> fdlink -> sender
//! (encoder, network sink) -> network -> receiver (decoder).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);
const FRAMES: usize = 90;
const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;
/// An I420 (and NV12) frame of WIDTH x HEIGHT: what the receiver's decoder must output.
const FRAME_BYTES: u64 = (WIDTH * HEIGHT * 3 / 2) as u64;

/// A UDP port nobody listens on now (the kernel's pick; freed again for the pipeline).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a UDP socket on 127.0.0.1")
        .port()
}

fn element_exists(name: &str) -> bool {
    init_gst();
    gst::ElementFactory::find(name).is_some()
}

/// Runs the three processes: the receiver first (`receiver` ends in `identity name=check`),
/// then the producer and the sender, whose pipeline is `fdlinksrc ! ENCODER ! sender_tail`.
/// Checks that every frame crossed fdlink unchanged and that the receiver decoded at least
/// 80 % of them at the right size (UDP may lose some), and that all three exit cleanly.
fn three_processes(tag: &str, receiver: &str, sender_tail: &str) {
    let dir = TempDir::new(tag);
    let sock = dir.socket();
    let eos_file = dir.0.join("receiver-eos");
    let eos_file = eos_file.to_str().unwrap();

    let mut rx = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--messages-log",
        "--eos-file",
        eos_file,
        receiver,
    ]);
    // A UDP receiver must listen before the first packet is sent: its source binds the
    // socket on the way to READY. (PLAYING comes only with the first frame: the live
    // pipeline's sink prerolls on it.)
    rx.wait_line(T, |l| l == "state Paused")
        .unwrap_or_else(|| panic!("receiver never started: {}", rx.errors()));

    let mut producer = Peer::spawn(&[
        "produce",
        "--frames-log",
        &format!(
            "videotestsrc num-buffers={FRAMES} pattern=ball \
             ! video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate=30/1 \
             ! fdlinksink socket-path={sock} wait-for-connection=true"
        ),
    ]);
    let mut sender = Peer::spawn(&[
        "consume",
        "--frames-log",
        &format!(
            "fdlinksrc socket-path={sock} \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! {sender_tail}"
        ),
    ]);
    producer.wait_success(T, "producer");
    sender.wait_success(T, "sender (fdlinksrc ! x264enc ! network sink)");
    // The receiver's jitter buffer holds the last packets for its latency (200 ms).
    std::thread::sleep(Duration::from_millis(600));
    std::fs::write(eos_file, b"").unwrap();
    rx.wait_success(T, "receiver");

    // The fdlink leg: every frame the producer sent reached the sender, byte for byte, in fds.
    let sent = frames(&producer.lines());
    let crossed = frames(&sender.lines());
    assert_eq!(sent.len(), FRAMES, "producer sent {} frames", sent.len());
    assert_eq!(
        crossed.len(),
        FRAMES,
        "only {} of {FRAMES} frames crossed fdlink to the sender: {}",
        crossed.len(),
        sender.errors()
    );
    let sent_crc: HashMap<u64, &str> = sent.iter().map(|f| (f.offset, f.crc.as_str())).collect();
    for f in &crossed {
        assert_eq!(
            sent_crc.get(&f.offset).copied(),
            Some(f.crc.as_str()),
            "frame {} changed on the way through fdlink",
            f.offset
        );
        assert_ne!(
            f.files, "-",
            "frame {} reached the sender without an fd",
            f.offset
        );
    }

    // The network leg: decoded frames of the right size, most of them.
    let decoded = frames(&rx.lines());
    eprintln!(
        "{tag}: the receiver decoded {} of {FRAMES} frames",
        decoded.len()
    );
    let wrong: Vec<u64> = decoded
        .iter()
        .filter(|f| f.size != FRAME_BYTES)
        .map(|f| f.size)
        .collect();
    assert!(
        wrong.is_empty(),
        "receiver decoded frames of {wrong:?} bytes, not {FRAME_BYTES}"
    );
    assert!(
        decoded.len() * 10 >= FRAMES * 8,
        "receiver decoded {} of {FRAMES} frames (at least 80 % expected): {}",
        decoded.len(),
        rx.errors()
    );
}

/// docs/network.md, RTP over UDP.
#[test]
fn rtp_over_udp_carries_an_fdlink_stream_to_a_receiver() {
    let port = free_udp_port();
    three_processes(
        "rtp",
        &format!(
            "udpsrc address=127.0.0.1 port={port} \
             caps=application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload=96 \
             ! rtpjitterbuffer latency=200 ! rtph264depay ! h264parse ! avdec_h264 \
             ! identity name=check ! fakesink sync=false"
        ),
        &format!("rtph264pay config-interval=1 pt=96 ! udpsink host=127.0.0.1 port={port}"),
    );
}

/// docs/network.md, SRT (MPEG-TS in SRT): the receiver listens, the sender calls it.
#[test]
fn srt_carries_an_fdlink_stream_to_a_receiver() {
    if !element_exists("srtsink") || !element_exists("srtsrc") {
        eprintln!("skipped: no srtsink/srtsrc here (gstreamer1.0-plugins-bad built with libsrt)");
        return;
    }
    let port = free_udp_port();
    three_processes(
        "srt",
        &format!(
            "srtsrc uri=srt://:{port} mode=listener ! tsdemux ! h264parse ! avdec_h264 \
             ! identity name=check ! fakesink sync=false"
        ),
        &format!(
            "h264parse ! mpegtsmux alignment=7 ! srtsink uri=srt://127.0.0.1:{port} mode=caller"
        ),
    );
}
