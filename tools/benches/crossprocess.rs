//! The real handoff, across a process boundary: fdlinksink in this (the bench) process, one or
//! more consumers in child processes, against a raw SCM_RIGHTS baseline measured in the same
//! groups so every element figure reads as a ratio to the limit.
//!
//! `cargo bench -p fdlink-tools --bench crossprocess`; with `FDLINK_BENCH_QUICK=1` about
//! 1 min 45 s. See docs/performance-benches.md for what is timed exactly.
//!
//! # Processes
//! - Producer (this process): a standalone source pad, linked to `fdlinksink sync=false`, on
//!   which the bench thread calls `gst_pad_push` itself, as a decoder's streaming thread would.
//!   Frames come from a reused pool: fdlink's `MemfdBufferPool` (memfd path), a small pool of
//!   `DmaBufMemory` buffers, or a ring of `gst::Buffer::with_size` system-memory buffers,
//!   written once (copy fallback: fdlinksink copies each once into its sealed memfd pool).
//!   The dmabuf pool holds sealed memfds wrapped by `GstDmaBufAllocator` (`dmabuf-standin`,
//!   not a real dmabuf) or, where the exporters' device nodes exist, real kernel dmabufs from
//!   the dma-heap system heap (`dmabuf-heap`) and udmabuf (`dmabuf-udmabuf`). This host has
//!   neither; `benches/vm-dmabuf.sh` runs those rows in the project's test VM.
//! - Consumer (child): this same binary re-executed with `FDLINK_BENCH_CHILD=element`, running
//!   `fdlinksrc ! fakesink sync=false enable-last-sample=false` with a buffer probe on the
//!   fakesink pad, or with `FDLINK_BENCH_CHILD=raw`, a bare recvmsg loop. The probe (or the raw
//!   loop) writes the CLOCK_MONOTONIC time the frame arrived into a shared page; the buffer is
//!   then dropped at once, which sends the release.
//!
//! - io_uring baseline (`raw-io-uring`): the raw baseline with every message of a step through
//!   one `io_uring_enter` (benches/crossprocess/uring.rs): the producer's sends to all consumers
//!   and its reads of their releases, the consumer's release and its next receive. What an
//!   io_uring transport could save at the limit. `FDLINK_BENCH_URING_DEFER=1` sets up the rings
//!   with SINGLE_ISSUER and DEFER_TASKRUN.
//!
//! # Measurements (per frame size, per path)
//! - `oneway`: CLOCK_MONOTONIC just before `gst_pad_push` (raw: before `sendmsg`) to the
//!   consumer's stamp. The producer waits (untimed, sleeping) until the previous frame was
//!   received and released before each push, so nothing queues. Criterion gets the sum of the
//!   one-way times, so its "time" is the mean one-way latency.
//! - `roundtrip`: ping-pong with `max-held=1`: each push blocks in fdlinksink until the
//!   consumer's release of the previous frame came back, so the time of n pushes is n full
//!   cycles (push, send, receive, release, the producer taking the release, the pool buffer
//!   back). Raw: sendmsg, then recvmsg of the release.
//! - `throughput` groups: a window of 4 frames in flight (`max-held=4`, pool of 5), frames
//!   pushed as fast as the consumer releases them; criterion prints frames/s (elem/s).
//! - `fanout` group: `roundtrip` at 1080p memfd with 1, 2, 4, 8 consumer processes (a push
//!   waits for every consumer's release), raw: sendmsg to each, then each release back.
//! - Summary printed after criterion (and written to target/criterion/fdlink-crossprocess.md):
//!   one-way p50/p99 from every iteration, round-trip and throughput means, CPU time per frame
//!   in each process (CLOCK_PROCESS_CPUTIME_ID of the bench process, the child's CPU clock from
//!   clock_getcpuclockid) and heap allocations per frame in each process (a counting global
//!   allocator; it sees Rust allocations only, not GLib/GStreamer's C mallocs).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use fdlink::protocol::{BufferHeader, MAX_FDS, MAX_PACKET_SIZE, MemoryDesc, MemoryKind};
use fdlink::protocol::{Packet, VideoLayout};
use gst::glib;
use gst::prelude::*;
use gstfdlink::clock::monotonic_now;
use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use nix::sys::socket::{ControlMessageOwned, UnixAddr};
use nix::time::{ClockId, clock_gettime};

#[path = "crossprocess/uring.rs"]
mod uring;

// The kernel dmabuf allocators of the hardware tests (udmabuf, dma-heap, vgem); the bench uses
// the first two, which exist in the project's test VM (benches/vm-dmabuf.sh).
#[allow(dead_code)]
#[path = "../src/fdlink-peer/dmabuf_sources.rs"]
mod dmabuf_sources;

// ---------------------------------------------------------------------------------------------
// Counting allocator

/// Counts every allocation (and reallocation) of the process, on any thread, except on a
/// thread that marked itself uncounted (the bench's own bookkeeping).
struct CountingAlloc;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// In a child: the counter in the shared page the parent reads.
static SHARED_ALLOCS: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    static UNCOUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count_alloc() {
    if UNCOUNTED.try_with(|u| u.get()).unwrap_or(false) {
        return;
    }
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    let shared = SHARED_ALLOCS.load(Ordering::Relaxed);
    if !shared.is_null() {
        // SAFETY: set once to an AtomicU64 inside a mapping that is never unmapped.
        unsafe { (*shared).fetch_add(1, Ordering::Relaxed) };
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments; counting
// touches only atomics and a const-initialized thread local, and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract, which System shares.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        // SAFETY: `ptr` came from this allocator, i.e. from System, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from System, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f` without counting this thread's allocations.
fn uncounted<T>(f: impl FnOnce() -> T) -> T {
    UNCOUNTED.with(|u| u.set(true));
    let r = f();
    UNCOUNTED.with(|u| u.set(false));
    r
}

// ---------------------------------------------------------------------------------------------
// The page shared with the consumer processes

const SLOTS: usize = 1 << 16;
const MAX_CHILDREN: usize = 8;
const CHILD_ENV: &str = "FDLINK_BENCH_CHILD";

/// One consumer's part of the shared file.
#[repr(C)]
struct Region {
    /// seq + 1 of the last frame the consumer saw (0: none yet).
    last_seq: AtomicU64,
    /// Heap allocations of the consumer process so far.
    allocs: AtomicU64,
    _pad: [u64; 6],
    /// CLOCK_MONOTONIC ns at which frame `seq` reached the consumer, at `seq % SLOTS`.
    stamps: [AtomicU64; SLOTS],
}

impl Region {
    fn reset(&self) {
        self.last_seq.store(0, Ordering::SeqCst);
        self.allocs.store(0, Ordering::SeqCst);
    }

    fn stamp(&self, seq: u64) {
        self.stamps[seq as usize % SLOTS].store(monotonic_now(), Ordering::Relaxed);
        self.last_seq.store(seq + 1, Ordering::Release);
    }
}

/// Maps `path` (created and sized by the parent) for the process's lifetime.
fn map_regions(path: &Path) -> &'static [Region] {
    let len = std::mem::size_of::<Region>() * MAX_CHILDREN;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("shared bench file opens");
    assert_eq!(file.metadata().unwrap().len(), len as u64);
    // SAFETY: a fresh shared mapping of a file we opened, `len` > 0 bytes; nothing else maps
    // this address range.
    let ptr = unsafe {
        nix::sys::mman::mmap(
            None,
            NonZeroUsize::new(len).unwrap(),
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
            nix::sys::mman::MapFlags::MAP_SHARED,
            file.as_fd(),
            0,
        )
    }
    .expect("mmap of the shared bench file");
    // SAFETY: the mapping is page aligned, `len` bytes long (MAX_CHILDREN Regions), never
    // unmapped (so 'static), and Region holds only atomics and padding, for which any bytes
    // (zeroes from set_len included) are valid; other processes access it only atomically.
    unsafe { std::slice::from_raw_parts(ptr.as_ptr() as *const Region, MAX_CHILDREN) }
}

struct Shared {
    path: PathBuf,
    regions: &'static [Region],
}

impl Shared {
    fn create() -> Shared {
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("fdlink-bench-{}", std::process::id()));
        let file = std::fs::File::create(&path).expect("shared bench file");
        file.set_len((std::mem::size_of::<Region>() * MAX_CHILDREN) as u64)
            .expect("size shared bench file");
        drop(file);
        let regions = map_regions(&path);
        Shared { path, regions }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Consumer processes

/// CPUs for the producer and the consumers: producer on CPU 0, consumers on CPU 1, unless
/// FDLINK_BENCH_PIN=0 or the machine has one CPU. Pinned, the raw baseline stops flipping
/// between same-CPU (about 5 us round trip) and cross-CPU (about 20 us) wake-ups. Decided once
/// in the bench process, before it pins itself (after that it sees one CPU); children get
/// their CPU in FDLINK_BENCH_CHILD_CPU.
fn pin_cpus() -> Option<(usize, usize)> {
    static PIN: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    *PIN.get_or_init(|| {
        let off = std::env::var("FDLINK_BENCH_PIN").is_ok_and(|v| v == "0");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (!off && cpus >= 2).then_some((0, 1))
    })
}

/// Pins the calling thread, and the threads it starts from now on, to `cpu`.
fn pin_to_cpu(cpu: usize) {
    use nix::libc;
    // SAFETY: cpu_set_t is plain data for which all-zero is the empty set; CPU_SET writes
    // within it; sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        eprintln!(
            "cannot pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn child_main(mode: &str) {
    // Die with the bench rather than linger if it is killed.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if let Some(cpu) = std::env::var("FDLINK_BENCH_CHILD_CPU")
        .ok()
        .and_then(|c| c.parse().ok())
    {
        pin_to_cpu(cpu);
    }
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let regions = map_regions(Path::new(&env("FDLINK_BENCH_SHM")));
    let region: &'static Region = &regions[env("FDLINK_BENCH_REGION").parse::<usize>().unwrap()];
    SHARED_ALLOCS.store(
        &region.allocs as *const AtomicU64 as *mut AtomicU64,
        Ordering::SeqCst,
    );
    let socket = PathBuf::from(env("FDLINK_BENCH_SOCKET"));
    match mode {
        "element" => element_child(&socket, region),
        "raw" => raw_child(&socket, region),
        "raw-uring" => raw_uring_child(&socket, region),
        _ => panic!("unknown child mode {mode}"),
    }
}

/// `fdlinksrc ! fakesink`, stamping each buffer at the fakesink pad; fakesink drops it right
/// after, which sends the release. (fakesink's last-sample would hold one buffer back.)
fn element_child(socket: &Path, region: &'static Region) {
    gst::init().unwrap();
    gstfdlink::plugin_register_static().unwrap();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("fdlinksrc")
        .property("socket-path", socket.to_str().unwrap())
        .build()
        .unwrap();
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("enable-last-sample", false)
        .build()
        .unwrap();
    pipeline.add_many([&src, &sink]).unwrap();
    src.link(&sink).unwrap();
    sink.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(b) = info.buffer() {
                region.stamp(b.offset());
            }
            gst::PadProbeReturn::Ok
        })
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::NONE,
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let _ = pipeline.set_state(gst::State::Null);
    if let Some(gst::MessageView::Error(e)) = msg.as_ref().map(|m| m.view()) {
        eprintln!("bench consumer: {} ({:?})", e.error(), e.debug());
        std::process::exit(1);
    }
}

fn connect_raw(socket: &Path) -> OwnedFd {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(socket).unwrap()).unwrap();
    fd
}

/// The limit: recvmsg of the same datagram and fd, close the fd, send the same release back.
fn raw_child(socket: &Path, region: &'static Region) {
    let fd = connect_raw(socket);
    let release = release_packet();
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut seq = 0u64;
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<UnixAddr>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        if msg.bytes == 0 {
            return;
        }
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel installed this fd for us just now; we own it.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        region.stamp(seq);
        seq += 1;
        send(&fd, &release, None);
    }
}

/// raw_child through io_uring: the release of one frame and the receive of the next go in one
/// io_uring_enter (linked, so the receive starts after the send).
fn raw_uring_child(socket: &Path, region: &'static Region) {
    let fd = connect_raw(socket);
    let release = release_packet();
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    let mut ring = uring::Ring::new(2);
    let recv = uring::Op::Recv {
        socket: &fd,
        buf: &mut buf,
    };
    let mut done = ring.step(vec![recv], false);
    let mut seq = 0u64;
    loop {
        let frame = done.pop().expect("the receive completed");
        if frame.bytes == 0 {
            return;
        }
        assert_eq!(frame.fds.len(), 1, "one fd with each frame");
        drop(frame.fds);
        region.stamp(seq);
        seq += 1;
        let send = uring::Op::Send {
            socket: &fd,
            bytes: &release,
            fd: None,
        };
        let recv = uring::Op::Recv {
            socket: &fd,
            buf: &mut buf,
        };
        done = ring.step(vec![send, recv], true);
    }
}

fn send(fd: &OwnedFd, bytes: &[u8], frame: Option<&OwnedFd>) {
    let raw;
    let cmsg;
    let cmsgs: &[ControlMessage] = match frame {
        Some(f) => {
            raw = [f.as_raw_fd()];
            cmsg = [ControlMessage::ScmRights(&raw)];
            &cmsg
        }
        None => &[],
    };
    socket::sendmsg::<UnixAddr>(
        fd.as_raw_fd(),
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .expect("sendmsg");
}

fn recv_release(fd: &OwnedFd, buf: &mut [u8]) {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<UnixAddr>(fd.as_raw_fd(), &mut iov, None, MsgFlags::empty())
        .expect("recvmsg");
    assert!(msg.bytes > 0, "raw consumer went away");
}

fn release_packet() -> Vec<u8> {
    let mut v = Vec::new();
    Packet::<OwnedFd>::Release { buffer_id: 1 }
        .encode(&mut v)
        .unwrap();
    v
}

// ---------------------------------------------------------------------------------------------
// Frames

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Raw,
    /// The raw baseline through io_uring (benches/crossprocess/uring.rs).
    RawUring,
    Memfd,
    /// The memfd path with `register-fds=false`: every buffer packet carries its fd (what
    /// register-once fds save is this row minus the memfd row).
    MemfdFdEachFrame,
    DmabufStandin,
    /// Real kernel dmabufs from the dma-heap system heap (`/dev/dma_heap/system`).
    DmabufHeap,
    /// Real kernel dmabufs from udmabuf (`/dev/udmabuf`, pages of a sealed memfd).
    Udmabuf,
    Copy,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Raw => "raw-scm-rights",
            Kind::RawUring => "raw-io-uring",
            Kind::Memfd => "memfd",
            Kind::MemfdFdEachFrame => "memfd-fd-each-frame",
            Kind::DmabufStandin => "dmabuf-standin",
            Kind::DmabufHeap => "dmabuf-heap",
            Kind::Udmabuf => "dmabuf-udmabuf",
            Kind::Copy => "copy",
        }
    }

    /// The kernel exporter of a real dmabuf path.
    fn exporter(self) -> Option<dmabuf_sources::Source> {
        match self {
            Kind::DmabufHeap => Some(dmabuf_sources::Source::DmaHeap),
            Kind::Udmabuf => Some(dmabuf_sources::Source::Udmabuf),
            _ => None,
        }
    }

    /// Whether this machine can run the path: the real dmabuf paths need their exporter's
    /// device node (the project's test VM has both; this development host has neither).
    fn runs_here(self) -> bool {
        self.exporter()
            .is_none_or(|e| dmabuf_sources::Allocator::open(e).is_ok())
    }
}

const SIZES: [(&str, u32, u32); 4] = [
    ("480p", 640, 480),
    ("1080p", 1920, 1080),
    ("4K", 3840, 2160),
    ("8K", 7680, 4320),
];

fn nv12_caps(w: u32, h: u32) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "NV12")
        .field("width", w as i32)
        .field("height", h as i32)
        .field("framerate", gst::Fraction::new(30, 1))
        .build()
}

fn add_video_meta(b: &mut gst::BufferRef, info: &gst_video::VideoInfo) {
    gst_video::VideoMeta::add_full(
        b,
        gst_video::VideoFrameFlags::empty(),
        info.format(),
        info.width(),
        info.height(),
        info.offset(),
        info.stride(),
    )
    .expect("video meta");
}

/// The buffer packet fdlinksink sends for one frame of `info` (for the raw baseline's size).
fn buffer_packet(info: &gst_video::VideoInfo, frame: &OwnedFd) -> Vec<u8> {
    use glib::translate::IntoGlib;
    let mut offsets = [0u64; 4];
    let mut strides = [0i32; 4];
    for i in 0..info.n_planes() as usize {
        offsets[i] = info.offset()[i] as u64;
        strides[i] = info.stride()[i];
    }
    let header = BufferHeader {
        buffer_id: 1,
        pts: monotonic_now(),
        dts: u64::MAX,
        duration: 33_333_333,
        offset: 0,
        offset_end: u64::MAX,
        flags: 0,
        sent_at: monotonic_now(),
        base_time: monotonic_now(),
        memories: smallvec::smallvec![MemoryDesc {
            kind: MemoryKind::Memfd,
            fd_index: 0,
            file_id: 0,
            offset: 0,
            size: info.size() as u64,
        }],
        video: Some(VideoLayout {
            format: info.format().into_glib() as u32,
            flags: 0,
            width: info.width(),
            height: info.height(),
            n_planes: info.n_planes(),
            offsets,
            strides,
        }),
    };
    let mut v = Vec::new();
    Packet::Buffer(header, smallvec::smallvec![frame.as_fd()])
        .encode(&mut v)
        .unwrap();
    v
}

/// A decoder-like pool of sealed memfds wrapped by GstDmaBufAllocator: the only "dmabuf" this
/// host can make. fdlinksink sees DmaBufMemory, finds a regular file behind it and sends it as
/// a memfd, so on the wire and in the consumer it is the memfd path.
/// A small pool of `DmaBufMemory` buffers, as a hardware decoder's: sealed memfds wrapped by
/// `GstDmaBufAllocator` (the stand-in), or real kernel dmabufs from an exporter.
mod dmabuf_pool {
    use super::dmabuf_sources::{Allocator, Source};
    use gst::glib;
    use gst::subclass::prelude::*;
    use std::sync::Mutex;

    glib::wrapper! {
        pub struct DmabufPool(ObjectSubclass<imp::DmabufPool>)
            @extends gst::BufferPool, gst::Object;
    }

    impl DmabufPool {
        /// `exporter` None: the memfd stand-in.
        pub fn new(exporter: Option<Source>) -> Self {
            let pool: Self = glib::Object::new();
            *pool.imp().allocator.lock().unwrap() =
                exporter.map(|e| Allocator::open(e).expect("dmabuf exporter opens"));
            pool
        }
    }

    mod imp {
        use super::*;

        #[derive(Default)]
        pub struct DmabufPool {
            info: Mutex<Option<gst_video::VideoInfo>>,
            pub(super) allocator: Mutex<Option<Allocator>>,
        }

        #[glib::object_subclass]
        impl ObjectSubclass for DmabufPool {
            const NAME: &'static str = "FdlinkBenchDmabufPool";
            type Type = super::DmabufPool;
            type ParentType = gst::BufferPool;
        }

        impl ObjectImpl for DmabufPool {}
        impl GstObjectImpl for DmabufPool {}

        impl BufferPoolImpl for DmabufPool {
            fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
                let Some((Some(caps), ..)) = config.params() else {
                    return false;
                };
                *self.info.lock().unwrap() = gst_video::VideoInfo::from_caps(&caps).ok();
                self.parent_set_config(config)
            }

            fn alloc_buffer(
                &self,
                _params: Option<&gst::BufferPoolAcquireParams>,
            ) -> Result<gst::Buffer, gst::FlowError> {
                let info = self
                    .info
                    .lock()
                    .unwrap()
                    .clone()
                    .ok_or(gst::FlowError::Error)?;
                let fd = match &*self.allocator.lock().unwrap() {
                    Some(allocator) => allocator.alloc(info.size()).map(|(fd, _)| fd),
                    None => {
                        fdlink::fdkind::create_sealed_memfd("bench-dmabuf-standin", info.size())
                    }
                }
                .map_err(|_| gst::FlowError::Error)?;
                let mem = gstfdlink::memory::wrap_dmabuf(fd, info.size())
                    .map_err(|_| gst::FlowError::Error)?;
                assert!(mem.is_memory_type::<gst_allocators::DmaBufMemory>());
                let mut buffer = gst::Buffer::new();
                {
                    let b = buffer.get_mut().unwrap();
                    b.append_memory(mem);
                    super::super::add_video_meta(b, &info);
                }
                Ok(buffer)
            }
        }
    }
}

enum Frames {
    Pool(gst::BufferPool),
    /// System-memory buffers, reused: each is back to one reference once its push returned.
    Ring(Vec<gst::Buffer>),
}

impl Frames {
    fn new(kind: Kind, caps: &gst::Caps, info: &gst_video::VideoInfo, count: u32) -> Frames {
        let size = info.size() as u32;
        match kind {
            Kind::Memfd | Kind::MemfdFdEachFrame => Frames::Pool(
                gstfdlink::memory::MemfdBufferPool::new_configured(caps, size, count, count, true)
                    .unwrap()
                    .upcast(),
            ),
            Kind::DmabufStandin | Kind::DmabufHeap | Kind::Udmabuf => {
                let pool = dmabuf_pool::DmabufPool::new(kind.exporter());
                let mut c = pool.config();
                c.set_params(Some(caps), size, count, count);
                pool.set_config(c).unwrap();
                pool.set_active(true).unwrap();
                Frames::Pool(pool.upcast())
            }
            Kind::Copy => Frames::Ring(
                (0..2)
                    .map(|_| {
                        let mut b = gst::Buffer::with_size(info.size()).unwrap();
                        let bm = b.get_mut().unwrap();
                        // Written once, as a decoder writes its frames: untouched, the pages
                        // would all read as the kernel's one zero page, which stays in cache
                        // and makes the copy look faster than any memcpy of real frames.
                        bm.map_writable().unwrap().as_mut_slice().fill(0x80);
                        add_video_meta(bm, info);
                        b
                    })
                    .collect(),
            ),
            Kind::Raw | Kind::RawUring => unreachable!("raw frames are plain memfds"),
        }
    }

    fn next(&mut self, seq: u64) -> gst::Buffer {
        let set = |m: &mut gst::BufferRef| {
            m.set_offset(seq);
            m.set_pts(gst::ClockTime::from_nseconds(seq * 33_333_333));
        };
        match self {
            Frames::Pool(p) => {
                let mut b = p.acquire_buffer(None).expect("pool buffer");
                set(b.get_mut().expect("a pool buffer is ours alone"));
                b
            }
            Frames::Ring(r) => {
                let len = r.len();
                let slot = &mut r[seq as usize % len];
                // Copies only if fdlinksink still held it (it does not: it copies in render).
                set(slot.make_mut());
                slot.clone()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accounting

#[derive(Default, Clone, Copy)]
struct Acc {
    frames: u64,
    wall_ns: u64,
    cpu_self_ns: u64,
    cpu_child_ns: u64,
    allocs_self: u64,
    allocs_child: u64,
}

struct Snap {
    wall: Instant,
    cpu_self: u64,
    cpu_child: u64,
    allocs_self: u64,
    allocs_child: u64,
}

fn clock_ns(id: ClockId) -> u64 {
    clock_gettime(id).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

struct Children {
    procs: Vec<Child>,
    clocks: Vec<ClockId>,
    regions: &'static [Region],
}

impl Children {
    fn spawn(mode: &str, socket: &Path, shared: &Shared, k: usize) -> Children {
        let exe = std::env::current_exe().unwrap();
        let mut procs = Vec::new();
        let mut clocks = Vec::new();
        for i in 0..k {
            shared.regions[i].reset();
            let mut cmd = Command::new(&exe);
            if let Some((_, cpu)) = pin_cpus() {
                cmd.env("FDLINK_BENCH_CHILD_CPU", cpu.to_string());
            }
            let child = cmd
                .env(CHILD_ENV, mode)
                .env("FDLINK_BENCH_SOCKET", socket)
                .env("FDLINK_BENCH_SHM", &shared.path)
                .env("FDLINK_BENCH_REGION", i.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn consumer");
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            clocks.push(nix::time::clock_getcpuclockid(pid).expect("child cpu clock"));
            procs.push(child);
        }
        Children {
            procs,
            clocks,
            regions: &shared.regions[..k],
        }
    }

    fn cpu_ns(&self) -> u64 {
        self.clocks.iter().map(|c| clock_ns(*c)).sum()
    }

    fn allocs(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.allocs.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether every consumer has seen frame `seq`.
    fn all_saw(&self, seq: u64) -> bool {
        self.regions
            .iter()
            .all(|r| r.last_seq.load(Ordering::Acquire) > seq)
    }

    fn snap(&self) -> Snap {
        Snap {
            wall: Instant::now(),
            cpu_self: clock_ns(ClockId::CLOCK_PROCESS_CPUTIME_ID),
            cpu_child: self.cpu_ns(),
            allocs_self: ALLOCS.load(Ordering::Relaxed),
            allocs_child: self.allocs(),
        }
    }

    fn add(&self, acc: &mut Acc, start: Snap, frames: u64) {
        let end = self.snap();
        acc.frames += frames;
        acc.wall_ns += (end.wall - start.wall).as_nanos() as u64;
        acc.cpu_self_ns += end.cpu_self - start.cpu_self;
        acc.cpu_child_ns += end.cpu_child.saturating_sub(start.cpu_child);
        acc.allocs_self += end.allocs_self - start.allocs_self;
        acc.allocs_child += end.allocs_child - start.allocs_child;
    }

    fn wait(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for c in &mut self.procs {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        eprintln!("bench consumer {} did not exit; killing it", c.id());
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// What one (group, path, consumers) produced, for the summary.
#[derive(Default)]
struct Row {
    oneway_ns: Vec<u64>,
    roundtrip: Acc,
    throughput: Acc,
    notes: Vec<String>,
    /// fdlinksink's `frames-copied` and `copy-time-us` (the copy fallback's own copies).
    copies: u64,
    copy_us: u64,
    /// `memcpy_us` of one frame, taken as soon as this copy path's producer is done: the
    /// reference it is read against, on the machine as it was then.
    memcpy_us: Vec<f64>,
}

static SUMMARY: Mutex<BTreeMap<(String, Kind, usize), Row>> = Mutex::new(BTreeMap::new());

fn with_row(group: &str, kind: Kind, k: usize, f: impl FnOnce(&mut Row)) {
    uncounted(|| {
        let mut s = SUMMARY.lock().unwrap();
        f(s.entry((group.to_string(), kind, k)).or_default());
    })
}

/// Sleep-polls `done` (the producer is not timing anything meanwhile).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Producers

trait Producer {
    /// Sum of one-way latencies of `n` frames, each sent with nothing else in flight.
    fn oneway(&mut self, n: u64) -> Duration;
    /// Wall time of `n` full cycles, one frame in flight.
    fn roundtrip(&mut self, n: u64) -> Duration;
    /// Wall time of `n` frames with a window of frames in flight.
    fn throughput(&mut self, n: u64) -> Duration;
}

type Setup = Box<dyn Producer>;

/// One setup: a path at a frame size, with its consumers and frames in flight.
#[derive(Clone, Copy)]
struct Spec<'a> {
    group: &'a str,
    kind: Kind,
    size: (u32, u32),
    consumers: usize,
    /// Frames in flight (max-held; raw: unreleased frames).
    window: u32,
}

fn setup(shared: &Shared, spec: Spec<'_>) -> Setup {
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

// ---------------------------------------------------------------------------------------------
// Criterion groups

const KINDS: [Kind; 8] = [
    Kind::Raw,
    Kind::RawUring,
    Kind::Memfd,
    Kind::MemfdFdEachFrame,
    Kind::DmabufStandin,
    Kind::DmabufHeap,
    Kind::Udmabuf,
    Kind::Copy,
];
/// Frames in flight in the throughput groups (max-held; pools hold one more).
const WINDOW: u32 = 4;

fn handoff(c: &mut Criterion, shared: &Shared) {
    for (label, w, h) in SIZES {
        let mut g = c.benchmark_group(format!("handoff-{label}"));
        for kind in KINDS.into_iter().filter(|k| k.runs_here()) {
            // Made on first use (so a criterion filter that skips it spawns nothing), shared by
            // the two benches, torn down after them.
            let spec = Spec {
                group: label,
                kind,
                size: (w, h),
                consumers: 1,
                window: 1,
            };
            let mut s: Option<Setup> = None;
            g.bench_function(format!("{}/oneway", kind.label()), |b| {
                let s = s.get_or_insert_with(|| setup(shared, spec));
                b.iter_custom(|n| s.oneway(n))
            });
            g.bench_function(format!("{}/roundtrip", kind.label()), |b| {
                let s = s.get_or_insert_with(|| setup(shared, spec));
                b.iter_custom(|n| s.roundtrip(n))
            });
            drop(s);
        }
        g.finish();
    }
}

fn throughput(c: &mut Criterion, shared: &Shared) {
    for (label, w, h) in SIZES {
        let mut g = c.benchmark_group(format!("throughput-{label}"));
        g.throughput(Throughput::Elements(1));
        for kind in KINDS.into_iter().filter(|k| k.runs_here()) {
            let spec = Spec {
                group: label,
                kind,
                size: (w, h),
                consumers: 1,
                window: WINDOW,
            };
            let mut s: Option<Setup> = None;
            g.bench_function(kind.label(), |b| {
                let s = s.get_or_insert_with(|| setup(shared, spec));
                b.iter_custom(|n| s.throughput(n))
            });
            drop(s);
        }
        g.finish();
    }
}

fn fanout(c: &mut Criterion, shared: &Shared) {
    let mut g = c.benchmark_group("fanout-1080p");
    for kind in [Kind::Raw, Kind::RawUring, Kind::Memfd] {
        for k in [1usize, 2, 4, 8] {
            let spec = Spec {
                group: "fanout-1080p",
                kind,
                size: (1920, 1080),
                consumers: k,
                window: 1,
            };
            let mut s: Option<Setup> = None;
            g.bench_function(format!("{}/{k}-consumers", kind.label()), |b| {
                let s = s.get_or_insert_with(|| setup(shared, spec));
                b.iter_custom(|n| s.roundtrip(n))
            });
            drop(s);
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Summary

fn pct(sorted: &[u64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(sorted.len() - 1) * p / 100] as f64 / 1000.0
}

fn per_frame(v: u64, frames: u64) -> f64 {
    if frames == 0 {
        f64::NAN
    } else {
        v as f64 / frames as f64
    }
}

/// A table cell: `value` with `digits` decimals, or "-" for a measurement this run did not take
/// (a filter left its group out).
fn cell(value: f64, digits: usize) -> String {
    if value.is_finite() {
        format!("{value:.digits$}")
    } else {
        "-".into()
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.1}x", a / b)
    } else {
        "-".into()
    }
}

/// Median time of one `copy_from_slice` of `size` bytes, in µs: the memcpy bandwidth the copy
/// fallback is compared with, measured in the same run. The copies cycle through as many
/// distinct sources and destinations as the copy path does (its ring of 2 frames into a pool of
/// WINDOW + 1), all written once beforehand, so they are as cold in the caches as that path's;
/// copying one warm pair again and again would measure the caches instead. At least 0.2 s of
/// copies (and 4 rounds of the buffers), so that one disturbed moment does not make the figure.
fn memcpy_us(size: usize) -> f64 {
    let sources: Vec<Vec<u8>> = (0..2).map(|i| vec![0x80 + i as u8; size]).collect();
    let mut dests: Vec<Vec<u8>> = (0..WINDOW as usize + 1).map(|_| vec![1u8; size]).collect();
    let k = dests.len();
    let start = Instant::now();
    let mut times: Vec<u64> = Vec::new();
    while times.len() < 4 * k
        || (start.elapsed() < Duration::from_millis(200) && times.len() < 20_000)
    {
        let i = times.len();
        let dst = &mut dests[i % k];
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&sources[i % 2]));
        std::hint::black_box(&dst);
        times.push(t.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    times[times.len() / 2] as f64 / 1000.0
}

fn summary() -> String {
    use std::fmt::Write;
    let s = SUMMARY.lock().unwrap();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## fdlink cross-process handoff (this run)\n\n\
         Ratios are to the raw SCM_RIGHTS baseline of the same group, same run. One-way \
         percentiles are over every iteration (warm-up included); round trip and throughput are \
         means over every timed batch. CPU and allocations are per frame, in the producer (bench) \
         process and in the consumer process(es); allocations are Rust heap allocations only.\n"
    );
    let _ = writeln!(
        out,
        "CPU pinning: {}\n",
        match pin_cpus() {
            Some((p, c)) => format!("producer on CPU {p}, consumers on CPU {c}"),
            None => "none".into(),
        }
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = kernel.trim();
    // Not available_parallelism(): the bench process may be pinned to one CPU.
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let _ = writeln!(
        out,
        "Machine: Linux {kernel}, CPUs {} online\n",
        cpus.trim()
    );
    let real: Vec<&str> = [Kind::DmabufHeap, Kind::Udmabuf]
        .iter()
        .map(|k| k.label())
        .collect();
    let _ = writeln!(
        out,
        "Real kernel dmabuf paths ({}): {}\n",
        real.join(", "),
        if [Kind::DmabufHeap, Kind::Udmabuf]
            .iter()
            .all(|k| k.runs_here())
        {
            "run (their exporters' device nodes exist here)"
        } else {
            "NOT run: no /dev/dma_heap/system or /dev/udmabuf on this machine; \
             benches/vm-dmabuf.sh runs them in the test VM"
        }
    );
    let _ = writeln!(
        out,
        "| size | path | one-way p50 us | p99 us | ratio p50 | round trip us | ratio | fps (window 4) | ratio | CPU us/frame prod / cons | allocs/frame prod / cons (rt) | allocs/frame prod / cons (fps) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut notes = String::new();
    for (group, kind) in SIZES
        .iter()
        .flat_map(|(label, ..)| KINDS.iter().map(move |k| (label.to_string(), *k)))
    {
        let Some(row) = s.get(&(group.clone(), kind, 1)) else {
            continue;
        };
        let raw = s.get(&(group.clone(), Kind::Raw, 1));
        let mut ow = row.oneway_ns.clone();
        ow.sort_unstable();
        let raw_ow = raw.map(|r| {
            let mut v = r.oneway_ns.clone();
            v.sort_unstable();
            pct(&v, 50)
        });
        let rt = per_frame(row.roundtrip.wall_ns, row.roundtrip.frames) / 1000.0;
        let raw_rt = raw.map(|r| per_frame(r.roundtrip.wall_ns, r.roundtrip.frames) / 1000.0);
        let t = &row.throughput;
        let fps = 1e9 / per_frame(t.wall_ns, t.frames);
        let raw_fps = raw.map(|r| 1e9 / per_frame(r.throughput.wall_ns, r.throughput.frames));
        let r = &row.roundtrip;
        let _ = writeln!(
            out,
            "| {group} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} |",
            kind.label(),
            cell(pct(&ow, 50), 1),
            cell(pct(&ow, 99), 1),
            ratio(pct(&ow, 50), raw_ow.unwrap_or(f64::NAN)),
            cell(rt, 1),
            ratio(rt, raw_rt.unwrap_or(f64::NAN)),
            cell(fps, 0),
            ratio(raw_fps.unwrap_or(f64::NAN), fps),
            cell(per_frame(t.cpu_self_ns, t.frames) / 1000.0, 1),
            cell(per_frame(t.cpu_child_ns, t.frames) / 1000.0, 1),
            cell(per_frame(r.allocs_self, r.frames), 1),
            cell(per_frame(r.allocs_child, r.frames), 1),
            cell(per_frame(t.allocs_self, t.frames), 1),
            cell(per_frame(t.allocs_child, t.frames), 1),
        );
        for n in &row.notes {
            let _ = writeln!(notes, "- {group} {}: {n}", kind.label());
        }
    }
    let _ = writeln!(
        out,
        "\n| copy fallback | frame MB | memcpy us (as many buffers as the path, right after it) | the path's copy us/frame (copy-time-us) | its share of memcpy bandwidth | producer CPU us/frame (fps) | share of memcpy bandwidth (whole frame) |\n|---|---|---|---|---|---|---|"
    );
    for (label, w, h) in SIZES {
        let Some(row) = s.get(&(label.to_string(), Kind::Copy, 1)) else {
            continue;
        };
        let size = (w * h * 3 / 2) as usize;
        // Taken after the path's own run (see Row::memcpy_us): every copy row has one.
        let copy = row.memcpy_us.iter().sum::<f64>() / row.memcpy_us.len() as f64;
        let cpu = per_frame(row.throughput.cpu_self_ns, row.throughput.frames) / 1000.0;
        let in_path = per_frame(row.copy_us, row.copies);
        let _ = writeln!(
            out,
            "| {label} | {:.1} | {copy:.0} | {} | {} | {cpu:.0} | {:.0}% |",
            size as f64 / 1e6,
            cell(in_path, 0),
            if in_path > 0.0 {
                format!("{:.0}%", 100.0 * copy / in_path)
            } else {
                "-".into()
            },
            100.0 * copy / cpu
        );
    }
    let _ = writeln!(
        out,
        "\n(fps ratio is raw fps / element fps, so larger is slower everywhere.)\n\n\
         | fan-out 1080p | raw round trip us | raw io_uring round trip us | memfd round trip us | ratio memfd / raw | allocs/frame prod / cons (memfd) |\n|---|---|---|---|---|---|"
    );
    for k in [1usize, 2, 4, 8] {
        let get = |kind| s.get(&("fanout-1080p".to_string(), kind, k));
        let rt = |r: Option<&Row>| {
            r.map_or(f64::NAN, |r| {
                per_frame(r.roundtrip.wall_ns, r.roundtrip.frames) / 1000.0
            })
        };
        let (raw, uring, el) = (
            rt(get(Kind::Raw)),
            rt(get(Kind::RawUring)),
            rt(get(Kind::Memfd)),
        );
        if raw.is_nan() && uring.is_nan() && el.is_nan() {
            continue;
        }
        let allocs = get(Kind::Memfd).map_or((f64::NAN, f64::NAN), |r| {
            (
                per_frame(r.roundtrip.allocs_self, r.roundtrip.frames),
                per_frame(r.roundtrip.allocs_child, r.roundtrip.frames),
            )
        });
        let _ = writeln!(
            out,
            "| {k} | {raw:.1} | {uring:.1} | {el:.1} | {} | {:.1} / {:.1} |",
            ratio(el, raw),
            allocs.0,
            allocs.1
        );
        if let Some(r) = get(Kind::Memfd) {
            for n in &r.notes {
                let _ = writeln!(notes, "- fanout {k} consumers memfd: {n}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\nfdlinksink counters at the end of each setup:\n{notes}"
    );
    out
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child_main(&mode);
        return;
    }
    if let Some((cpu, _)) = pin_cpus() {
        pin_to_cpu(cpu);
    }
    gst::init().expect("GStreamer initializes");
    gstfdlink::plugin_register_static().expect("fdlink registers");
    // Short polling sleeps in the untimed waits: ask for 1 us timer slack instead of 50 us.
    let _ = nix::sys::prctl::set_timerslack(1000);
    let quick = std::env::var("FDLINK_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
    let (warm, measure) = if quick {
        (Duration::from_millis(200), Duration::from_millis(500))
    } else {
        (Duration::from_millis(500), Duration::from_millis(1500))
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(warm)
        .measurement_time(measure)
        .configure_from_args();
    let shared = Shared::create();
    handoff(&mut c, &shared);
    throughput(&mut c, &shared);
    fanout(&mut c, &shared);
    c.final_summary();
    let text = summary();
    println!("{text}");
    let path = std::env::var_os("FDLINK_BENCH_SUMMARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
                .join("criterion/fdlink-crossprocess.md")
        });
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&path, &text) {
        eprintln!(
            "crossprocess: cannot write the summary to {}: {e}",
            path.display()
        );
    }
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("fdlink-bench-{}", std::process::id())),
    );
}
