//! The consumer processes: this binary re-executed, an fdlinksrc pipeline or a raw receive
//! loop, stamping each frame into the shared page.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fdlink::protocol::Packet;
use fdlink::protocol::{MAX_FDS, MAX_PACKET_SIZE};
use gst::prelude::*;
use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use nix::sys::socket::{ControlMessageOwned, UnixAddr};

use crate::alloc_count::SHARED_ALLOCS;
use crate::shared::{Region, map_regions};
use crate::uring;

/// CPUs for the producer and the consumers: producer on CPU 0, consumers on CPU 1, unless
/// FDLINK_BENCH_PIN=0 or the machine has one CPU. Pinned, the raw baseline stops flipping
/// between same-CPU (about 5 us round trip) and cross-CPU (about 20 us) wake-ups. Decided once
/// in the bench process, before it pins itself (after that it sees one CPU); children get
/// their CPU in FDLINK_BENCH_CHILD_CPU.
pub(crate) fn pin_cpus() -> Option<(usize, usize)> {
    static PIN: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    *PIN.get_or_init(|| {
        let off = std::env::var("FDLINK_BENCH_PIN").is_ok_and(|v| v == "0");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (!off && cpus >= 2).then_some((0, 1))
    })
}

/// Pins the calling thread, and the threads it starts from now on, to `cpu`.
pub(crate) fn pin_to_cpu(cpu: usize) {
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

pub(crate) fn child_main(mode: &str) {
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

pub(crate) fn send(fd: &OwnedFd, bytes: &[u8], frame: Option<&OwnedFd>) {
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

pub(crate) fn recv_release(fd: &OwnedFd, buf: &mut [u8]) {
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
