//! The producers: the raw SCM_RIGHTS baseline and fdlinksink, each with its consumers.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gst::prelude::*;
use gstfdlink::clock::monotonic_now;
use nix::sys::socket::UnixAddr;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};

use crate::accounting::{Children, Row, wait_until, with_row};
use crate::alloc_count::uncounted;
use crate::children::{recv_release, send};
use crate::frames::{Frames, Kind, buffer_packet, nv12_caps};
use crate::shared::{SLOTS, Shared};
use crate::summary::memcpy_us;
use crate::uring;

pub(crate) trait Producer {
    /// Sum of one-way latencies of `n` frames, each sent with nothing else in flight.
    fn oneway(&mut self, n: u64) -> Duration;
    /// Wall time of `n` full cycles, one frame in flight.
    fn roundtrip(&mut self, n: u64) -> Duration;
    /// Wall time of `n` frames with a window of frames in flight.
    fn throughput(&mut self, n: u64) -> Duration;
}

pub(crate) type Setup = Box<dyn Producer>;

/// One setup: a path at a frame size, with its consumers and frames in flight.
#[derive(Clone, Copy)]
pub(crate) struct Spec<'a> {
    pub(crate) group: &'a str,
    pub(crate) kind: Kind,
    pub(crate) size: (u32, u32),
    pub(crate) consumers: usize,
    /// Frames in flight (max-held; raw: unreleased frames).
    pub(crate) window: u32,
}

pub(crate) fn setup(shared: &Shared, spec: Spec<'_>) -> Setup {
    match spec.kind {
        Kind::Raw | Kind::RawUring => Box::new(RawProducer::new(shared, spec)),
        _ => Box::new(ElementProducer::new(shared, spec)),
    }
}

fn socket_path(group: &str, kind: Kind, k: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fdlink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{group}-{}-{k}.sock", kind.label()))
}

struct RawProducer {
    group: String,
    kind: Kind,
    conns: Vec<OwnedFd>,
    children: Children,
    frame: OwnedFd,
    packet: Vec<u8>,
    /// One release buffer per consumer (io_uring reads them all at once).
    bufs: Vec<Vec<u8>>,
    /// Kind::RawUring: every step's messages go through this ring.
    ring: Option<uring::Ring>,
    seq: u64,
    /// Frames sent whose releases are not read yet (per consumer, all equal).
    in_flight: usize,
    window: usize,
    row: Row,
}

/// What one step of the raw producer does with every consumer.
#[derive(Clone, Copy, PartialEq)]
enum Dir {
    /// The frame's packet and fd to each.
    Send,
    /// One release from each.
    Recv,
}

impl RawProducer {
    fn new(shared: &Shared, spec: Spec<'_>) -> Self {
        let ((w, h), k) = (spec.size, spec.consumers);
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv12, w, h)
            .build()
            .unwrap();
        let frame = fdlink::fdkind::create_sealed_memfd("bench-raw", info.size()).unwrap();
        let packet = buffer_packet(&info, &frame);
        let path = socket_path(spec.group, spec.kind, k);
        let _ = std::fs::remove_file(&path);
        let listener = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        socket::bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        socket::listen(&listener, socket::Backlog::new(16).unwrap()).unwrap();
        let uring = spec.kind == Kind::RawUring;
        let children = Children::spawn(if uring { "raw-uring" } else { "raw" }, &path, shared, k);
        let conns = (0..k)
            .map(|_| {
                let fd = socket::accept(listener.as_raw_fd()).expect("accept raw consumer");
                // SAFETY: accept returned a new fd that nothing else owns.
                unsafe { OwnedFd::from_raw_fd(fd) }
            })
            .collect();
        let _ = std::fs::remove_file(&path);
        RawProducer {
            group: spec.group.to_string(),
            kind: spec.kind,
            conns,
            children,
            frame,
            packet,
            bufs: vec![vec![0u8; 1024]; k],
            ring: uring.then(|| uring::Ring::new(2 * k as u32)),
            seq: 0,
            in_flight: 0,
            window: spec.window as usize,
            row: Row::default(),
        }
    }

    /// `dirs` with every consumer, in that order. Plain: one sendmsg or recvmsg per consumer
    /// and direction. io_uring: all of them in one io_uring_enter, each consumer's pair linked
    /// so its second message waits for its first.
    fn exchange(&mut self, dirs: &[Dir]) {
        let RawProducer {
            conns,
            bufs,
            ring,
            packet,
            frame,
            ..
        } = self;
        match ring {
            None => {
                for dir in dirs {
                    for (c, buf) in conns.iter().zip(bufs.iter_mut()) {
                        match dir {
                            Dir::Send => send(c, packet, Some(frame)),
                            Dir::Recv => recv_release(c, buf),
                        }
                    }
                }
            }
            Some(ring) => {
                let mut ops = Vec::with_capacity(conns.len() * dirs.len());
                for (c, buf) in conns.iter().zip(bufs.iter_mut()) {
                    let mut buf = Some(buf);
                    for dir in dirs {
                        ops.push(match dir {
                            Dir::Send => uring::Op::Send {
                                socket: c,
                                bytes: packet,
                                fd: Some(frame.as_raw_fd()),
                            },
                            Dir::Recv => uring::Op::Recv {
                                socket: c,
                                buf: buf.take().expect("one release per consumer and step"),
                            },
                        });
                    }
                }
                for done in ring.step(ops, dirs.len() == 2) {
                    assert!(done.bytes > 0, "raw consumer went away");
                }
            }
        }
        for dir in dirs {
            match dir {
                Dir::Send => {
                    self.seq += 1;
                    self.in_flight += 1;
                }
                Dir::Recv => self.in_flight -= 1,
            }
        }
    }

    fn drain(&mut self) {
        while self.in_flight > 0 {
            self.exchange(&[Dir::Recv]);
        }
    }
}

impl Producer for RawProducer {
    fn oneway(&mut self, n: u64) -> Duration {
        self.drain();
        let mut total = 0;
        let mut samples = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let seq = self.seq;
            let t0 = monotonic_now();
            self.exchange(&[Dir::Send, Dir::Recv]);
            assert!(self.children.all_saw(seq));
            let t = self.children.regions[0].stamps[seq as usize % SLOTS].load(Ordering::Relaxed);
            let d = t.saturating_sub(t0);
            total += d;
            samples.push(d);
        }
        self.row.oneway_ns.extend(samples);
        Duration::from_nanos(total)
    }

    fn roundtrip(&mut self, n: u64) -> Duration {
        self.drain();
        let start = self.children.snap();
        for _ in 0..n {
            self.exchange(&[Dir::Send, Dir::Recv]);
        }
        let d = start.wall.elapsed();
        self.children.add(&mut self.row.roundtrip, start, n);
        d
    }

    fn throughput(&mut self, n: u64) -> Duration {
        while self.in_flight < self.window {
            self.exchange(&[Dir::Send]);
        }
        let start = self.children.snap();
        for _ in 0..n {
            self.exchange(&[Dir::Recv, Dir::Send]);
        }
        let d = start.wall.elapsed();
        self.children.add(&mut self.row.throughput, start, n);
        d
    }
}

impl Drop for RawProducer {
    fn drop(&mut self) {
        self.drain();
        self.conns.clear();
        self.children.wait();
        let row = std::mem::take(&mut self.row);
        let k = self.children.procs.len();
        with_row(&self.group, self.kind, k, |r| merge(r, row));
    }
}

struct ElementProducer {
    group: String,
    kind: Kind,
    pipeline: gst::Pipeline,
    sink: gst::Element,
    pad: gst::Pad,
    frames: Frames,
    children: Children,
    seq: u64,
    window: u32,
    frame_size: usize,
    row: Row,
}

impl ElementProducer {
    fn new(shared: &Shared, spec: Spec<'_>) -> Self {
        let Spec {
            group,
            kind,
            size: (w, h),
            consumers: k,
            window,
        } = spec;
        let caps = nv12_caps(w, h);
        let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
        let path = socket_path(group, kind, k);
        let pipeline = gst::Pipeline::new();
        let sink = gst::ElementFactory::make("fdlinksink")
            .property("socket-path", path.to_str().unwrap())
            .property("sync", false)
            .property("async", false)
            .property("max-held", window)
            .property("forward-messages", false)
            .property("register-fds", kind != Kind::MemfdFdEachFrame)
            .build()
            .expect("fdlinksink");
        pipeline.add(&sink).unwrap();
        let pad = gst::Pad::builder(gst::PadDirection::Src)
            .name("bench_src")
            .build();
        pad.set_active(true).unwrap();
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        let children = Children::spawn("element", &path, shared, k);
        wait_until("consumers to connect", || {
            sink.property::<u32>("num-clients") as usize == k
        });
        assert!(pad.push_event(gst::event::StreamStart::new("fdlink-bench")));
        assert!(pad.push_event(gst::event::Caps::new(&caps)));
        let segment = gst::FormattedSegment::<gst::ClockTime>::new();
        assert!(pad.push_event(gst::event::Segment::new(&segment)));
        // The pool holds what fdlinksink may keep (max-held per consumer) plus the one being
        // filled, as a decoder's would.
        let frames = Frames::new(kind, &caps, &info, window + 1);
        let mut p = ElementProducer {
            group: group.to_string(),
            kind,
            pipeline,
            sink,
            pad,
            frames,
            children,
            seq: 0,
            window,
            frame_size: info.size(),
            row: Row::default(),
        };
        // First frame: the consumers negotiate caps; not measured.
        p.push();
        p.quiesce();
        p
    }

    fn push(&mut self) {
        let b = self.frames.next(self.seq);
        self.push_buffer(b);
    }

    fn push_buffer(&mut self, b: gst::Buffer) {
        if let Err(e) = self.pad.push(b) {
            panic!("push of frame {} into fdlinksink failed: {e:?}", self.seq);
        }
        self.seq += 1;
    }

    fn held(&self) -> u32 {
        uncounted(|| {
            self.sink
                .property::<gst::Structure>("stats")
                .get::<u32>("buffers-held")
                .unwrap()
        })
    }

    /// Until every consumer saw every frame and fdlinksink holds nothing.
    fn quiesce(&self) {
        let last = self.seq - 1;
        wait_until("frames to be received and released", || {
            self.children.all_saw(last) && self.held() == 0
        });
    }
}

impl Producer for ElementProducer {
    fn oneway(&mut self, n: u64) -> Duration {
        let mut total = 0;
        let mut samples = Vec::with_capacity(n as usize);
        for _ in 0..n {
            self.quiesce();
            let seq = self.seq;
            let b = self.frames.next(seq);
            let t0 = monotonic_now();
            self.push_buffer(b);
            wait_until("the consumer", || self.children.all_saw(seq));
            let t = self.children.regions[0].stamps[seq as usize % SLOTS].load(Ordering::Relaxed);
            let d = t.saturating_sub(t0);
            total += d;
            samples.push(d);
        }
        self.row.oneway_ns.extend(samples);
        Duration::from_nanos(total)
    }

    fn roundtrip(&mut self, n: u64) -> Duration {
        assert_eq!(self.window, 1, "roundtrip needs max-held=1");
        // One frame in flight before the clock starts: every timed push then waits for exactly
        // one release (the previous frame's) before it goes out.
        self.push();
        let start = self.children.snap();
        for _ in 0..n {
            self.push();
        }
        let d = start.wall.elapsed();
        self.children.add(&mut self.row.roundtrip, start, n);
        d
    }

    fn throughput(&mut self, n: u64) -> Duration {
        // Fill the window untimed, so every timed push is in the steady state.
        for _ in 0..self.window {
            self.push();
        }
        let start = self.children.snap();
        for _ in 0..n {
            self.push();
        }
        let d = start.wall.elapsed();
        self.children.add(&mut self.row.throughput, start, n);
        d
    }
}

impl Drop for ElementProducer {
    fn drop(&mut self) {
        self.quiesce();
        let stats = self.sink.property::<gst::Structure>("stats");
        let g = |f: &str| stats.get::<u64>(f).unwrap_or(0);
        let note = format!(
            "max-held={}: {} in, {} sent, {} zero-copy, {} copied, {} dropped",
            self.window,
            g("frames-in"),
            g("frames-sent"),
            g("frames-zero-copy"),
            g("frames-copied"),
            g("frames-dropped"),
        );
        self.pad.push_event(gst::event::Eos::new());
        self.children.wait();
        let _ = self.pipeline.set_state(gst::State::Null);
        let mut row = std::mem::take(&mut self.row);
        row.notes.push(note);
        row.copies = g("frames-copied");
        row.copy_us = g("copy-time-us");
        if self.kind == Kind::Copy {
            // Its consumers are gone: the reference runs alone, right after the path it rates.
            row.memcpy_us.push(uncounted(|| memcpy_us(self.frame_size)));
        }
        let k = self.children.procs.len();
        with_row(&self.group, self.kind, k, |r| merge(r, row));
    }
}

fn merge(into: &mut Row, from: Row) {
    into.oneway_ns.extend(from.oneway_ns);
    for (a, b) in [
        (&mut into.roundtrip, from.roundtrip),
        (&mut into.throughput, from.throughput),
    ] {
        a.frames += b.frames;
        a.wall_ns += b.wall_ns;
        a.cpu_self_ns += b.cpu_self_ns;
        a.cpu_child_ns += b.cpu_child_ns;
        a.allocs_self += b.allocs_self;
        a.allocs_child += b.allocs_child;
    }
    into.notes.extend(from.notes);
    into.copies += from.copies;
    into.copy_us += from.copy_us;
    into.memcpy_us.extend(from.memcpy_us);
}
