//! The `fdlink` Python module (python/, built into target/pyenv by scripts/python-setup.sh)
//! against real producers: a Python program gets every frame of an `fdlinksink` in another
//! process with the bytes one GStreamer process makes, through bytes(), memoryview() and
//! numpy, read in place from the producer's memfds (neither side copies), releases every
//! frame, and keeps no fd; frames of several memories come joined in one copy; a producer
//! that dies is `fdlink.PeerGone`, and waits release the GIL. The checks on the Python side
//! are in python/tests/test_consumer.py.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fdlink::fdkind::create_sealed_memfd;
use fdlink::producer::{OutFrame, Producer, ProducerOptions, Timing};
use fdlink::protocol::{MAX_PLANES, MemoryKind, VideoLayout};

const T: Duration = Duration::from_secs(60);
const FRAMES: usize = 30;
const SOURCE: &str = "videotestsrc num-buffers=30 pattern=ball ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's Python, once scripts/python-setup.sh says it is ready and its module is built
/// from the sources as they are; the test fails (it does not skip) otherwise.
fn python() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/python-setup.sh"))
        .arg("--check")
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "the Python module is not ready: run scripts/python-setup.sh (it makes target/pyenv and \
         builds python/ into it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    repo().join("target/pyenv/bin/python")
}

/// test_consumer.py running in `mode`, its output collected as it comes.
struct PythonTest {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl PythonTest {
    fn spawn(mode: &str, args: &[&str]) -> PythonTest {
        let mut child = Command::new(python())
            .arg(repo().join("python/tests/test_consumer.py"))
            .arg(mode)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the Python consumer");
        PythonTest {
            stdout: collect(child.stdout.take().unwrap()),
            stderr: collect(child.stderr.take().unwrap()),
            child,
        }
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    /// Waits until it printed `line`; fails if it ends first or takes over `T`.
    fn wait_line(&mut self, line: &str) {
        let deadline = Instant::now() + T;
        while !self.stdout.lock().unwrap().iter().any(|l| l == line) {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the Python consumer ended before {line:?}: {}",
                self.output()
            );
            assert!(Instant::now() < deadline, "no {line:?}: {}", self.output());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for it to exit (killing it after `T`), fails unless it succeeded; its stdout.
    fn success(&mut self) -> String {
        let deadline = Instant::now() + T;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the Python consumer took over {T:?}: {}", self.output());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Let the reader threads take the last lines.
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            status.success(),
            "the Python consumer failed ({status}): {}",
            self.output()
        );
        self.stdout.lock().unwrap().join("\n")
    }
}

impl Drop for PythonTest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one GStreamer process makes of `SOURCE`, as test_consumer.py reads it: each frame's
/// pts, size and sha1, and the video layout (format, size, each plane's offset and stride).
fn expected_in_one_process() -> String {
    let mut frames = Vec::new();
    let mut layout = String::new();
    for sample in samples_in_one_process(SOURCE) {
        if layout.is_empty() {
            let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
            let planes: Vec<String> = (0..info.n_planes() as usize)
                .map(|p| format!("[{}, {}]", info.offset()[p], info.stride()[p]))
                .collect();
            layout = format!(
                r#"{{"format": "{}", "width": {}, "height": {}, "planes": [{}]}}"#,
                info.format().to_str(),
                info.width(),
                info.height(),
                planes.join(", ")
            );
        }
        let buffer = sample.buffer().unwrap();
        let bytes = buffer.map_readable().unwrap();
        let mut sha1 = gst::glib::Checksum::new(gst::glib::ChecksumType::Sha1).unwrap();
        sha1.update(&bytes);
        frames.push(format!(
            r#"{{"pts": {}, "size": {}, "sha1": "{}"}}"#,
            buffer.pts().unwrap().nseconds(),
            bytes.len(),
            sha1.string().unwrap()
        ));
    }
    assert_eq!(frames.len(), FRAMES);
    format!(
        "{{\"layout\": {layout},\n\"frames\": [\n{}\n]}}\n",
        frames.join(",\n")
    )
}

#[test]
fn python_gets_every_frame_zero_copy_and_releases_it() {
    init_gst();
    let dir = TempDir::new("python-consumer");
    let expected = dir.0.join("expected.json");
    std::fs::write(&expected, expected_in_one_process()).unwrap();
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--stats-every",
        "20",
        "--wait-clients-gone",
        &format!("{SOURCE} ! fdlinksink socket-path={sock} wait-for-connection=true sync=false"),
    ]);
    let stdout = PythonTest::spawn("stream", &[&sock, expected.to_str().unwrap()]).success();
    assert!(
        stdout.contains(&format!("stream ok: {FRAMES} frames")),
        "{stdout}"
    );
    producer.wait_success(T, "producer");
    // The final stats, printed once the Python consumer had gone.
    let stats = producer.latest_stats().unwrap();
    assert_released_zero_copy(&stats, FRAMES as u64);
}

/// A producer killed mid-stream is `fdlink.PeerGone` in Python, not an end of stream; the
/// waits before it let another Python thread run.
#[test]
fn python_sees_a_killed_producer_as_peer_gone() {
    init_gst();
    let dir = TempDir::new("python-peer-gone");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=64,height=48,framerate=5/1 \
             ! fdlinksink socket-path={sock} wait-for-connection=true"
        ),
    ]);
    let mut python = PythonTest::spawn("peer-gone", &[&sock]);
    python.wait_line("frame 4");
    producer.kill9();
    let out = python.success();
    assert!(out.contains("peer-gone after"), "{out}");
    assert!(out.contains("gil released"), "{out}");
}

/// Frames of two memories (windows of one memfd, the second at an offset off the page size),
/// from an `fdlink::producer` in this process: Python reads them joined into one block,
/// copied once, the bytes of both memories in order, and releases each.
#[test]
fn python_joins_a_frame_of_several_memories_in_one_copy() {
    const N: usize = 12;
    const UV_AT: u64 = 5000;
    let (width, height) = (64u32, 48u32);
    let y_size = u64::from(width * height);
    let uv_size = y_size / 2;
    let dir = TempDir::new("python-joined");
    let sock = dir.socket();
    let mut producer = Producer::bind(Path::new(&sock), ProducerOptions::default()).unwrap();
    producer.set_caps(&format!(
        "video/x-raw, format=(string)NV12, width=(int){width}, height=(int){height}, framerate=(fraction)30/1"
    ));
    let mut offsets = [0u64; MAX_PLANES];
    let mut strides = [0i32; MAX_PLANES];
    offsets[1] = y_size;
    strides[..2].copy_from_slice(&[width as i32, width as i32]);
    let layout = VideoLayout {
        format: 23, // GST_VIDEO_FORMAT_NV12
        width,
        height,
        n_planes: 2,
        offsets,
        strides,
        ..VideoLayout::default()
    };

    let mut files = Vec::new();
    let mut frames = Vec::new();
    for n in 0..N as u64 {
        let y: Vec<u8> = (0..y_size).map(|i| ((i + n * 7) % 251) as u8).collect();
        let uv: Vec<u8> = (0..uv_size).map(|i| ((i * 3 + n) % 241) as u8).collect();
        let fd = create_sealed_memfd("python-joined", (UV_AT + uv_size) as usize).unwrap();
        // Sealed against shrinking only: still writable here.
        nix::sys::uio::pwrite(&fd, &y, 0).unwrap();
        nix::sys::uio::pwrite(&fd, &uv, UV_AT as i64).unwrap();
        let mut sha1 = gst::glib::Checksum::new(gst::glib::ChecksumType::Sha1).unwrap();
        sha1.update(&y);
        sha1.update(&uv);
        let pts = Timing::at_frame(n, 30).pts.unwrap().as_nanos();
        frames.push(format!(
            r#"{{"pts": {pts}, "size": {}, "sha1": "{}"}}"#,
            y_size + uv_size,
            sha1.string().unwrap()
        ));
        files.push(Arc::new(fd));
    }
    let expected = dir.0.join("expected.json");
    std::fs::write(
        &expected,
        format!(
            "{{\"layout\": {{\"format\": \"NV12\", \"width\": {width}, \"height\": {height}, \
             \"planes\": [[0, {width}], [{y_size}, {width}]]}},\n\
             \"memories\": [[\"memfd\", 0, {y_size}], [\"memfd\", {UV_AT}, {uv_size}]],\n\
             \"frames\": [\n{}\n]}}\n",
            frames.join(",\n")
        ),
    )
    .unwrap();

    let mut python = PythonTest::spawn("joined", &[&sock, expected.to_str().unwrap()]);
    let deadline = Instant::now() + T;
    while !producer.has_consumer() {
        assert!(
            python.child.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "the Python consumer never connected: {}",
            python.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for (n, fd) in files.into_iter().enumerate() {
        let frame = OutFrame::new(Timing::at_frame(n as u64, 30))
            .memory(MemoryKind::Memfd, fd.clone(), 0, y_size)
            .memory(MemoryKind::Memfd, fd, UV_AT, uv_size)
            .video(layout);
        assert_eq!(producer.publish(frame, || {}).unwrap(), 1, "frame {n}");
    }
    producer.end_of_stream();
    let out = python.success();
    assert!(
        out.contains(&format!("joined ok: {N} frames of 2 memories")),
        "{out}"
    );
    while producer.stats().0.releases < N as u64 {
        assert!(
            Instant::now() < deadline,
            "releases: {:?}",
            producer.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
