//! The consumer's mappings of registered files, against a hand-driven producer end.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::{Consumer, Frame, MemoryFile, Poll};
use crate::endpoint;
use crate::fdkind::create_sealed_memfd;
use crate::protocol::{BufferHeader, FD_REGISTERED, MemoryDesc, MemoryKind, Packet};
use crate::transport::Connection;

const WAIT: Duration = Duration::from_secs(5);

/// A consumer on one end of a socket pair, and the producer's end, hellos exchanged.
fn link() -> (Consumer, Connection) {
    let (producer, consumer) = Connection::pair().unwrap();
    let hello = std::thread::spawn(move || {
        endpoint::producer_hello(&producer, 0, None, WAIT).unwrap();
        producer
    });
    let consumer = Consumer::handshake(consumer).unwrap();
    (consumer, hello.join().unwrap())
}

/// A sealed memfd of two pages named `name`, with "abcdefgh" at 4096.
fn file(name: &str) -> OwnedFd {
    let fd = create_sealed_memfd(name, 8192).unwrap();
    nix::sys::uio::pwrite(&fd, b"abcdefgh", 4096).unwrap();
    fd
}

/// Sends buffer `id`: a window of file `file_id`, with its fd (registering it) or by id alone.
fn send(producer: &Connection, id: u64, file_id: u32, fd: Option<&OwnedFd>, offset: u64) {
    let header = BufferHeader {
        buffer_id: id,
        memories: smallvec::smallvec![MemoryDesc {
            kind: MemoryKind::Memfd,
            fd_index: if fd.is_some() { 0 } else { FD_REGISTERED },
            file_id,
            offset,
            size: 4,
        }],
        ..BufferHeader::default()
    };
    let fds: crate::protocol::PacketFds<BorrowedFd<'_>> =
        fd.map(|f| f.as_fd()).into_iter().collect();
    producer
        .send_packet(&Packet::Buffer(header, fds), Some(WAIT))
        .unwrap();
}

fn next(consumer: &mut Consumer) -> Frame {
    match consumer.poll_frame(Some(WAIT)).unwrap() {
        Poll::Frame(f) => f,
        _ => panic!("no frame"),
    }
}

/// Mappings of the memfd `name` in this process (/proc/self/maps names it).
fn mappings_of(name: &str) -> usize {
    let needle = format!("/memfd:{name} ");
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

#[test]
fn frames_of_a_registered_file_share_one_mapping() {
    let name = "consumer-test-shared";
    let (mut consumer, producer) = link();
    let fd = file(name);
    send(&producer, 1, 7, Some(&fd), 4096);
    drop(fd);
    let one = next(&mut consumer);
    let first = one.map().unwrap();
    assert_eq!(first.bytes().as_ref(), b"abcd");
    let at = first.bytes().as_ptr() as usize;
    drop((first, one));
    // The frame and its mapping are gone; the file's mapping stays for the next frame.
    assert_eq!(mappings_of(name), 1);

    send(&producer, 2, 7, None, 4100);
    let two = next(&mut consumer);
    let second = two.map().unwrap();
    assert_eq!(second.bytes().as_ref(), b"efgh");
    assert_eq!(
        second.bytes().as_ptr() as usize,
        at + 4,
        "the same mapping, not a new one"
    );
    let MemoryFile::Registered(file) = two.memories()[0].file.clone() else {
        panic!("a registered file");
    };
    assert_eq!(file.region_addr(), Some(at - 4096));
    // Any window of the file, from the same mapping; none past its end.
    let m = &two.memories()[0];
    let span = m.map_window(4096, 8).unwrap();
    assert_eq!(span.bytes(), b"abcdefgh");
    assert_eq!(span.bytes().as_ptr() as usize, at);
    assert!(m.map_window(8000, 500).is_err());
    assert_eq!(mappings_of(name), 1);
}

#[test]
fn a_mapped_frame_outlives_later_frames_and_the_retire() {
    let name = "consumer-test-retire";
    let (mut consumer, producer) = link();
    let fd = file(name);
    send(&producer, 1, 9, Some(&fd), 4096);
    drop(fd);
    let kept = next(&mut consumer).map().unwrap();
    // A frame on the file, not mapped, held past the retire.
    send(&producer, 2, 9, None, 4096);
    let held = next(&mut consumer);
    for id in 3..6 {
        send(&producer, id, 9, None, 4100);
        let frame = next(&mut consumer);
        assert_eq!(frame.map().unwrap().bytes().as_ref(), b"efgh");
    }
    producer
        .send_packet(&Packet::Retire { file_ids: vec![9] }, Some(WAIT))
        .unwrap();
    assert!(matches!(
        consumer
            .poll_frame(Some(Duration::from_millis(200)))
            .unwrap(),
        Poll::Pending
    ));
    // Retired, but a mapped frame still reads it.
    assert_eq!(kept.bytes().as_ref(), b"abcd");
    assert_eq!(mappings_of(name), 1);
    drop(kept);
    assert_eq!(
        mappings_of(name),
        0,
        "the retired file's mapping goes with its last mapped frame"
    );
    // A frame of the retired file maps its own window, gone with it.
    let late = held.map().unwrap();
    assert_eq!(late.bytes().as_ref(), b"abcd");
    assert_eq!(mappings_of(name), 1);
    drop((late, held));
    assert_eq!(mappings_of(name), 0);
    // The id is free again for another file.
    let fd = file(name);
    send(&producer, 6, 9, Some(&fd), 4096);
    assert_eq!(next(&mut consumer).map().unwrap().bytes().as_ref(), b"abcd");
}

#[test]
fn files_sent_with_one_frame_are_mapped_per_frame() {
    let name = "consumer-test-unregistered";
    let (mut consumer, producer) = link();
    let fd = file(name);
    send(&producer, 1, 0, Some(&fd), 4096);
    let frame = next(&mut consumer);
    assert!(matches!(frame.memories()[0].file, MemoryFile::Once { .. }));
    let mapped = frame.map().unwrap();
    assert_eq!(mapped.bytes().as_ref(), b"abcd");
    assert_eq!(mappings_of(name), 1);
    assert!(frame.memories()[0].map_window(8000, 500).is_err());
    drop(mapped);
    assert_eq!(mappings_of(name), 0, "nothing kept for a file of one frame");
}
