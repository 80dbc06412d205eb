//! Handoff costs below GStreamer: the wire protocol, and one buffer packet with its fd over
//! a real SEQPACKET socketpair and back (the release), through fdlink's transport and through
//! raw sendmsg/recvmsg with the same sizes (the limit).
//!
//! `cargo bench -p fdlink-tools --bench handoff`; the element-level benches build on these.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use criterion::{Criterion, criterion_group, criterion_main};
use fdlink::protocol::{BufferHeader, MemoryDesc, MemoryKind, Packet, VideoLayout};
use fdlink::transport::Connection;
use nix::sys::socket::{self, ControlMessage, MsgFlags, UnixAddr};

fn header() -> BufferHeader {
    BufferHeader {
        buffer_id: 42,
        pts: 1,
        dts: u64::MAX,
        duration: 16_666_666,
        offset: 7,
        offset_end: 8,
        memories: smallvec::smallvec![MemoryDesc {
            kind: MemoryKind::Memfd,
            fd_index: 0,
            file_id: 0,
            offset: 0,
            size: 3_110_400,
        }],
        video: Some(VideoLayout {
            format: 23,
            width: 1920,
            height: 1080,
            n_planes: 2,
            offsets: [0, 2_073_600, 0, 0],
            strides: [1920, 1920, 0, 0],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn protocol(c: &mut Criterion) {
    let mut out = Vec::with_capacity(512);
    let fds: smallvec::SmallVec<[i32; 4]> = smallvec::smallvec![3i32];
    c.bench_function("protocol/encode+decode buffer packet", |b| {
        b.iter(|| {
            Packet::Buffer(header(), fds.clone())
                .encode(&mut out)
                .unwrap();
            let p = Packet::decode(&out, smallvec::smallvec![3i32]).unwrap();
            std::hint::black_box(p);
        })
    });
}

fn memfd() -> OwnedFd {
    fdlink::fdkind::create_sealed_memfd("bench", 4096).unwrap()
}

fn roundtrip(c: &mut Criterion) {
    let frame = memfd();
    let mut packet = Vec::new();
    Packet::Buffer(header(), smallvec::smallvec![frame.as_fd()])
        .encode(&mut packet)
        .unwrap();
    let mut release = Vec::new();
    Packet::<BorrowedFd<'_>>::Release { buffer_id: 42 }
        .encode(&mut release)
        .unwrap();

    // fdlink's transport: buffer packet + fd out, decode, release back.
    let (producer, consumer) = Connection::pair().unwrap();
    let mut buf = vec![0u8; fdlink::protocol::MAX_PACKET_SIZE];
    c.bench_function("transport/buffer packet + fd, release back", |b| {
        b.iter(|| {
            producer.try_send(&packet, &[frame.as_fd()]).unwrap();
            let got = consumer.recv_wait(&mut buf, None, None).unwrap().unwrap();
            let p = Packet::decode(&buf[..got.len], got.fds).unwrap();
            std::hint::black_box(&p);
            consumer.try_send(&release, &[]).unwrap();
            let back = producer.recv_wait(&mut buf, None, None).unwrap().unwrap();
            std::hint::black_box(back.len);
        })
    });

    // The same sizes with bare sendmsg/recvmsg: the limit to read the line above against.
    let (a, b) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let mut rbuf = vec![0u8; 1024];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    c.bench_function("raw SCM_RIGHTS/same sizes, fd out, 16 B back", |bch| {
        bch.iter(|| {
            let fds = [frame.as_raw_fd()];
            socket::sendmsg::<UnixAddr>(
                a.as_raw_fd(),
                &[IoSlice::new(&packet)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            let mut iov = [IoSliceMut::new(&mut rbuf)];
            let msg = socket::recvmsg::<UnixAddr>(
                b.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .unwrap();
            for c in msg.cmsgs().unwrap() {
                if let socket::ControlMessageOwned::ScmRights(fds) = c {
                    for fd in fds {
                        // SAFETY: the kernel installed this fd for us; close it at once.
                        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
                    }
                }
            }
            socket::sendmsg::<UnixAddr>(
                b.as_raw_fd(),
                &[IoSlice::new(&release)],
                &[],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            let mut iov = [IoSliceMut::new(&mut rbuf)];
            let back =
                socket::recvmsg::<UnixAddr>(a.as_raw_fd(), &mut iov, None, MsgFlags::empty())
                    .unwrap();
            std::hint::black_box(back.bytes);
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = protocol, roundtrip
}
criterion_main!(benches);
