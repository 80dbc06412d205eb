//! Helpers for tests that run real producer and consumer processes (`fdlink-peer`).
#![allow(dead_code)]

pub mod onevstwo;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fresh directory for one test's socket, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "fdlink-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn socket(&self) -> String {
        self.0.join("link.sock").to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `fdlink-peer` process whose output lines are collected as they come.
pub struct Peer {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// The lines `stream` yields, collected as they come by a thread of their own.
pub fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Waits until one of `lines` satisfies `pred`, looking every `every`; returns it.
fn wait_for_line(
    lines: &Mutex<Vec<String>>,
    timeout: Duration,
    every: Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(l) = lines.lock().unwrap().iter().find(|l| pred(l)) {
            return Some(l.clone());
        }
        std::thread::sleep(every);
    }
    None
}

impl Peer {
    pub fn spawn(args: &[&str]) -> Peer {
        Peer::from_child(Peer::command(args).spawn().expect("spawn fdlink-peer"))
    }

    /// The command [`Peer::spawn`] runs, for a test that adds to it (environment, limits,
    /// inherited fds) before [`Peer::from_child`].
    pub fn command(args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fdlink-peer"));
        cmd.args(args)
            .env("GST_REGISTRY_FORK", "no")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// A spawned [`Peer::command`], its output collected.
    pub fn from_child(mut child: Child) -> Peer {
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Peer {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn errors(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until some stdout line satisfies `pred`; returns it.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        wait_for_line(&self.stdout, timeout, Duration::from_millis(10), pred)
    }

    /// Waits until some stderr line satisfies `pred`, looking every 2 ms (for tests that time
    /// how soon it comes); returns it.
    pub fn wait_error_line(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        wait_for_line(&self.stderr, timeout, Duration::from_millis(2), pred)
    }

    /// The `pool-waits N longest-us US` line a `produce-pattern` producer prints as it ends.
    pub fn pool_waits(&self) -> PoolWaits {
        let line = self
            .lines()
            .into_iter()
            .find_map(|l| l.strip_prefix("pool-waits ").map(String::from))
            .expect("a pool-waits line");
        let (count, longest_us) = line
            .split_once(" longest-us ")
            .and_then(|(n, us)| Some((n.parse().ok()?, us.parse().ok()?)))
            .unwrap_or_else(|| panic!("a malformed pool-waits line: {line}"));
        PoolWaits {
            count,
            longest: Duration::from_micros(longest_us),
        }
    }

    /// The newest `stats` line seen after `after` lines, parsed.
    pub fn latest_stats(&self) -> Option<gst::Structure> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("stats "))
            .and_then(|s| s.parse().ok())
    }

    /// Waits until the latest stats satisfy `pred`.
    pub fn wait_stats(
        &self,
        timeout: Duration,
        pred: impl Fn(&gst::Structure) -> bool,
    ) -> Option<gst::Structure> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.latest_stats()
                && pred(&s)
            {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits for exit; kills the process and panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "process {} did not exit within {timeout:?}\nstdout tail: {:?}\nstderr: {}",
                    self.pid(),
                    self.lines().iter().rev().take(5).collect::<Vec<_>>(),
                    self.errors()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit, and fails the test (with its stderr) unless it exited 0.
    pub fn wait_success(&mut self, timeout: Duration, who: &str) {
        let status = self.wait(timeout);
        assert!(status.success(), "{who} ({status}): {}", self.errors());
    }

    pub fn kill9(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open fds of another process, counted from /proc.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// What each open fd of another process points at (for failure messages).
pub fn fd_targets(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

pub fn wait_for_path(p: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !Path::new(p).exists() {
        assert!(Instant::now() < deadline, "{p} never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a `produce-pattern` producer saw of its pool (`Peer::pool_waits`).
#[derive(Debug)]
pub struct PoolWaits {
    /// Acquires that waited over 5 ms for a buffer to come back.
    pub count: u64,
    /// The longest of them.
    pub longest: Duration,
}

/// A `u64` or `u32` stats field as u64.
pub fn field(s: &gst::Structure, name: &str) -> u64 {
    s.get::<u64>(name)
        .or_else(|_| s.get::<u32>(name).map(u64::from))
        .unwrap_or_else(|_| panic!("stats field {name} missing in {s}"))
}

/// One parsed `frame` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub offset: u64,
    pub size: u64,
    pub crc: String,
    pub files: String,
    /// DELTA_UNIT: not a keyframe.
    pub delta: bool,
}

/// The `overwritten` and `pattern-mismatch` lines of a peer run with `--slow-ms` or
/// `--pattern`: frames that changed while held, or hold another frame's bytes.
pub fn changed_frames(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.starts_with("overwritten") || l.starts_with("pattern-mismatch"))
        .collect()
}

pub fn frames(lines: &[String]) -> Vec<Frame> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("frame "))
        .map(|rest| {
            let mut f = Frame {
                offset: 0,
                size: 0,
                crc: String::new(),
                files: String::new(),
                delta: false,
            };
            for kv in rest.split(' ') {
                match kv.split_once('=') {
                    Some(("offset", v)) => f.offset = v.parse().unwrap(),
                    Some(("size", v)) => f.size = v.parse().unwrap(),
                    Some(("crc", v)) => f.crc = v.into(),
                    Some(("files", v)) => f.files = v.into(),
                    Some(("delta", v)) => f.delta = v == "1",
                    _ => {}
                }
            }
            f
        })
        .collect()
}

pub fn init_gst() {
    gst::init().unwrap();
}

/// 1080p NV12 at 60 fps from videotestsrc (a moving ball, so frames differ).
pub fn nv12_1080p(frames: u32) -> String {
    format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,format=NV12,width=1920,height=1080,framerate=60/1"
    )
}

/// The process's `leaked-fds` line (fds opened during the run still open at exit) is empty.
pub fn assert_no_leaked_fds(peer: &Peer, who: &str) {
    let line = peer
        .lines()
        .into_iter()
        .find(|l| l.starts_with("leaked-fds"))
        .unwrap_or_else(|| panic!("{who} printed no leaked-fds line"));
    assert_eq!(line.trim_end(), "leaked-fds", "{who} left fds open: {line}");
}

/// A `position P duration D latency LIVE MIN MAX at T` line of fdlink-peer.
#[derive(Debug, Clone, Copy)]
pub struct QueryLine {
    pub position: i64,
    pub duration: i64,
    pub live: bool,
    pub min_latency: i64,
    pub at: i64,
}

pub fn queries(lines: &[String]) -> Vec<QueryLine> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("position "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            QueryLine {
                position: f[0].parse().unwrap(),
                duration: f[2].parse().unwrap(),
                live: f[4] == "true",
                min_latency: f[5].parse().unwrap(),
                at: f[8].parse().unwrap(),
            }
        })
        .collect()
}

/// A 10 s H.264 clip in MP4 (300 frames at 30 fps), made with GStreamer's own encoder.
pub fn clip(dir: &TempDir) -> String {
    let path = dir.0.join("clip.mp4");
    let status = std::process::Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "num-buffers=300", "pattern=ball", "!"])
        .args(["video/x-raw,width=320,height=240,framerate=30/1", "!"])
        .args([
            "x264enc",
            "key-int-max=15",
            "!",
            "h264parse",
            "!",
            "mp4mux",
            "!",
        ])
        .arg("filesink")
        .arg(format!("location={}", path.display()))
        .status()
        .expect("gst-launch-1.0 runs");
    assert!(status.success(), "cannot make the test clip");
    path.to_str().unwrap().to_string()
}

/// The PTS (ns) of each `frame` line.
pub fn pts_of(lines: &[String]) -> Vec<i64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("frame "))
        .filter_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix("pts=")))
        .map(|v| v.parse().unwrap())
        .collect()
}

/// The index of the first line at or after `from` that satisfies `pred`.
pub fn find_from(lines: &[String], from: usize, pred: impl Fn(&str) -> bool) -> Option<usize> {
    lines[from..].iter().position(|l| pred(l)).map(|i| i + from)
}

/// The number after `name=` in a line of `name=value` words.
pub fn number_field<N: std::str::FromStr>(line: &str, name: &str) -> N {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {name} in {line}"))
}

/// Five seconds of H.264 video (320x240, 30 fps, a keyframe a second) and Opus audio
/// (48 kHz stereo) in `dir/av.mkv`, made with gst-launch-1.0; its path. The directory is made
/// readable by all, for players that drop privileges.
pub fn av_mkv(dir: &TempDir) -> String {
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = dir.0.join("av.mkv");
    let made = std::process::Command::new("gst-launch-1.0")
        .arg("-q")
        .args(
            format!(
                "videotestsrc num-buffers=150 ! video/x-raw,width=320,height=240,framerate=30/1 \
                 ! x264enc speed-preset=ultrafast key-int-max=30 ! h264parse ! matroskamux name=m \
                 ! filesink location={} \
                 audiotestsrc num-buffers=240 ! audio/x-raw,rate=48000,channels=2 ! opusenc ! m.",
                path.display()
            )
            .split_whitespace(),
        )
        .status()
        .expect("run gst-launch-1.0");
    assert!(made.success(), "cannot make the test media");
    path.display().to_string()
}

/// The samples one GStreamer process makes of `source` (a pipeline description whose last
/// element's output is wanted), pulled from an appsink: what a consumer across the link must
/// get.
pub fn samples_in_one_process(source: &str) -> Vec<gst::Sample> {
    use gst::prelude::*;
    let pipeline = gst::parse::launch(&format!("{source} ! appsink name=out sync=false"))
        .unwrap()
        .downcast::<gst::Bin>()
        .unwrap();
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut out = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        out.push(sample);
    }
    pipeline.set_state(gst::State::Null).unwrap();
    out
}

/// A producer's final stats once its consumer took a zero-copy stream of `frames` frames and
/// went: every frame sent zero-copy and released, none copied or held.
pub fn assert_released_zero_copy(stats: &gst::Structure, frames: u64) {
    assert_eq!(
        field(stats, "releases"),
        frames,
        "every frame released: {stats}"
    );
    assert_eq!(field(stats, "buffers-held"), 0, "{stats}");
    assert_eq!(field(stats, "frames-copied"), 0, "zero-copy: {stats}");
    assert_eq!(field(stats, "frames-zero-copy"), frames, "{stats}");
}

/// A fake producer's side of one real consumer's connection: accepted on `listener` (within
/// `timeout`), the consumer's hello read, the producer's hello sent.
pub fn accept_as_producer(
    listener: &fdlink::transport::Listener,
    timeout: Duration,
) -> fdlink::transport::Connection {
    use fdlink::protocol::{self, Hello, MAX_PACKET_SIZE, Role};
    let deadline = Instant::now() + timeout;
    let conn = loop {
        if let Some(c) = listener.accept().unwrap() {
            break c;
        }
        assert!(Instant::now() < deadline, "no consumer connected");
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    conn.recv_wait(&mut buf, None, Some(timeout))
        .unwrap()
        .expect("the consumer's hello");
    conn.try_send(&protocol::encode_hello(&Hello::new(Role::Producer, 1)), &[])
        .unwrap();
    conn
}

/// A packet's bytes on the wire (what a hand-written peer sends).
pub fn encode(p: &fdlink::protocol::Packet<std::os::fd::BorrowedFd<'_>>) -> Vec<u8> {
    let mut out = Vec::new();
    p.encode(&mut out).unwrap();
    out
}

/// The packets a producer sends first: `caps` and a default TIME segment (base time 0), so
/// that a consumer streams.
pub fn stream_start_packets(caps: &str) -> Vec<Vec<u8>> {
    use fdlink::protocol::Packet;
    let seg = gst::FormattedSegment::<gst::ClockTime>::new();
    let event = gstfdlink::control::event_to_packet(&gst::event::Segment::new(&seg), |_| {});
    vec![
        encode(&Packet::Caps(caps.into())),
        encode(&Packet::Event {
            event,
            base_time: 0,
        }),
    ]
}
