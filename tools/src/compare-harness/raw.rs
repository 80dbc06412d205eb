//! The raw SCM_RIGHTS baseline: no GStreamer, one memfd and a 100-byte message per frame.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    accept, bind, connect, listen, recv, recvmsg, send, sendmsg, socket,
};

use crate::record::{Record, read_header, write_header};
use crate::{Args, frame_size, wait_for_path};

fn seqpacket() -> OwnedFd {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket")
}

pub(crate) fn produce_raw(a: &Args) -> String {
    let size = frame_size(a);
    let _ = std::fs::remove_file(&a.path);
    let listener = seqpacket();
    bind(listener.as_raw_fd(), &UnixAddr::new(&a.path).unwrap()).expect("bind");
    listen(&listener, nix::sys::socket::Backlog::new(1).unwrap()).expect("listen");
    // The frames: a small pool of memfds, mapped once, as a producer's pool would be.
    let mut pool = Vec::new();
    for i in 0..4 {
        let fd = nix::sys::memfd::memfd_create(
            std::ffi::CString::new(format!("raw{i}"))
                .unwrap()
                .as_c_str(),
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .expect("memfd");
        nix::unistd::ftruncate(&fd, size as i64).expect("ftruncate");
        // SAFETY: a new shared mapping of a memfd made here; only this process writes it.
        let map = unsafe {
            nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(size).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .expect("mmap");
        pool.push((fd, map.as_ptr() as *mut u8));
    }
    let conn = accept(listener.as_raw_fd()).expect("accept");
    // SAFETY: accept returned a new fd that nothing else owns.
    let conn = unsafe { OwnedFd::from_raw_fd(conn) };
    let rec = Arc::new(Mutex::new(Record::default()));
    let msg = [0u8; 100];
    let start = Instant::now();
    let mut reply = [0u8; 16];
    for i in 0..a.frames {
        if a.rate > 0 {
            let due = start + Duration::from_nanos(i * 1_000_000_000 / a.rate as u64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        let (fd, ptr) = &pool[(i % 4) as usize];
        // SAFETY: `ptr` maps `size` (>= 16) writable bytes for the life of `pool`.
        let head = unsafe { std::slice::from_raw_parts_mut(*ptr, 16) };
        write_header(head, i as u32);
        rec.lock().unwrap().mark();
        let mut m = msg;
        m[0] = 1;
        let fds = [fd.as_raw_fd()];
        sendmsg::<()>(
            conn.as_raw_fd(),
            &[IoSlice::new(&m)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        let n = recv(conn.as_raw_fd(), &mut reply, MsgFlags::empty()).expect("recv");
        assert_eq!(n, 16, "short reply");
    }
    let mut m = msg;
    m[0] = 2; // end of stream
    let _ = send(conn.as_raw_fd(), &m, MsgFlags::empty());
    wait_for_path(&a.done, Instant::now() + Duration::from_secs(10));
    let _ = std::fs::remove_file(&a.path);
    rec.lock()
        .unwrap()
        .json(a, ",\"writable_copies\":0,\"error\":\"\"")
}

pub(crate) fn consume_raw(a: &Args) -> String {
    let size = frame_size(a);
    let deadline = Instant::now() + a.timeout;
    if !wait_for_path(&a.path, deadline) {
        panic!("{} never appeared", a.path.display());
    }
    let conn = seqpacket();
    connect(conn.as_raw_fd(), &UnixAddr::new(&a.path).unwrap()).expect("connect");
    let mut rec = Record::default();
    let mut buf = [0u8; 128];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .expect("recvmsg");
        let n = r.bytes;
        let mut fds = Vec::new();
        for c in r.cmsgs().expect("cmsgs") {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: SCM_RIGHTS fds are new to this process and owned by nothing else.
                fds.extend(v.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        if n == 0 || buf[0] != 1 {
            break;
        }
        let fd = fds.into_iter().next().expect("one fd");
        // What any consumer of the frame has to do: map it. Read the stamp, unmap.
        // SAFETY: a new read-only mapping of the received file, unmapped below.
        let map = unsafe {
            nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(size).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }
        .expect("mmap");
        // SAFETY: the mapping holds `size` (>= 16) readable bytes until the munmap below.
        let head = unsafe { std::slice::from_raw_parts(map.as_ptr() as *const u8, 16) };
        rec.consumed(read_header(head));
        // SAFETY: the mapping made above, unmapped once; `head` is not used after.
        unsafe { nix::sys::mman::munmap(map, size) }.expect("munmap");
        drop(fd);
        send(conn.as_raw_fd(), &[0u8; 16], MsgFlags::empty()).expect("reply");
    }
    let _ = std::fs::write(&a.done, b"done");
    rec.json(a, ",\"end\":\"eos\",\"error\":\"\"")
}
