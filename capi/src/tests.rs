//! The C API against a producer played by the test over a socketpair: frames with several
//! memories, mapping, releases, the end of the stream, and NULL arguments.

use std::ffi::CStr;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::ptr::{null, null_mut};
use std::time::Duration;

use fdlink::endpoint;
use fdlink::fdkind::create_sealed_memfd;
use fdlink::protocol::{BufferHeader, EventPacket, MemoryDesc, MemoryKind, Packet};
use fdlink::transport::Connection;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use super::*;

const T: Duration = Duration::from_secs(5);

/// A consumer over a socketpair whose other end, returned, has done the producer's hello.
fn consumer_and_producer() -> (*mut FdlinkConsumer, Connection) {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let producer = std::thread::spawn(move || {
        let conn = Connection::from_owned(ours).unwrap();
        endpoint::producer_hello(&conn, 3, None, T).unwrap();
        conn
    });
    let mut error = null_mut();
    // SAFETY: an open fd given up here; `error` is writable.
    let consumer = unsafe { fdlink_consumer_from_fd(theirs.into_raw_fd(), &mut error) };
    assert!(!consumer.is_null(), "{}", message(error));
    (consumer, producer.join().unwrap())
}

fn message(error: *mut FdlinkError) -> String {
    // SAFETY: NULL or an error from this library; freed once here.
    unsafe {
        let text = CStr::from_ptr(fdlink_error_message(error))
            .to_string_lossy()
            .into_owned();
        fdlink_error_free(error);
        text
    }
}

/// A sealed memfd holding `len` bytes of a pattern, and the bytes.
fn memfd(len: usize) -> (OwnedFd, Vec<u8>) {
    let fd = create_sealed_memfd("capi-test", len).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    nix::sys::uio::pwrite(&fd, &data, 0).unwrap();
    (fd, data)
}

fn send_frame(producer: &Connection, id: u64, fd: &OwnedFd, windows: &[(u64, u64)]) {
    let header = BufferHeader {
        buffer_id: id,
        pts: id * 1000,
        dts: TIME_NONE,
        duration: 1000,
        flags: fdlink::consumer::FLAG_DELTA_UNIT,
        base_time: TIME_NONE,
        memories: windows
            .iter()
            .map(|&(offset, size)| MemoryDesc {
                kind: MemoryKind::Memfd,
                fd_index: 0,
                file_id: 0,
                offset,
                size,
            })
            .collect(),
        ..Default::default()
    };
    let packet = Packet::Buffer(header, [fd.as_fd()].into_iter().collect());
    producer.send_packet(&packet, Some(T)).unwrap();
}

fn next(consumer: *mut FdlinkConsumer, timeout_ms: i32) -> (FdlinkStatus, *mut FdlinkFrame) {
    let mut frame = null_mut();
    let mut error = null_mut();
    // SAFETY: a live consumer; both out pointers writable.
    let status =
        unsafe { fdlink_consumer_next_frame(consumer, timeout_ms, &mut frame, &mut error) };
    assert_ne!(status, FdlinkStatus::Error, "{}", message(error));
    (status, frame)
}

/// The release the producer got (after anything else it was sent).
fn release(producer: &Connection) -> u64 {
    let mut buf = vec![0; 4096];
    loop {
        let got = producer
            .recv_wait(&mut buf, None, Some(T))
            .unwrap()
            .unwrap();
        if let Packet::Release { buffer_id } = Packet::decode(&buf[..got.len], got.fds).unwrap() {
            return buffer_id;
        }
    }
}

/// A copy of the bytes the library maps.
fn map(frame: *mut FdlinkFrame, index: Option<usize>) -> Result<Vec<u8>, String> {
    let (mut data, mut size, mut error) = (null(), 0, null_mut());
    // SAFETY: a live frame; out pointers writable.
    let ok = unsafe {
        match index {
            None => fdlink_frame_map(frame, &mut data, &mut size, &mut error),
            Some(i) => fdlink_frame_map_memory(frame, i, &mut data, &mut size, &mut error),
        }
    };
    if !ok {
        return Err(message(error));
    }
    if size == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the library maps `size` bytes at `data` until the frame is released.
    Ok(unsafe { std::slice::from_raw_parts(data, size) }.to_vec())
}

#[test]
fn frames_map_without_a_copy_and_go_back_when_released() {
    let (consumer, producer) = consumer_and_producer();
    // SAFETY: a live consumer.
    unsafe {
        assert_eq!(fdlink_consumer_hold_limit(consumer), 3);
        assert!(fdlink_consumer_fd(consumer) >= 0);
    }
    assert_eq!(
        next(consumer, 0).0,
        FdlinkStatus::Pending,
        "nothing sent yet"
    );
    assert_eq!(next(consumer, 20).0, FdlinkStatus::Pending);

    producer
        .send_packet(
            &Packet::Caps("video/x-raw, format=(string)NV12".into()),
            Some(T),
        )
        .unwrap();
    let (fd, data) = memfd(3 * 4096);
    // Two adjacent windows of one file: one mapping covers both.
    send_frame(&producer, 7, &fd, &[(100, 5000), (5100, 3000)]);
    let (status, frame) = next(consumer, -1);
    assert_eq!(status, FdlinkStatus::Frame);
    // SAFETY: a live frame.
    unsafe {
        assert_eq!(
            CStr::from_ptr(fdlink_frame_caps(frame)).to_str().unwrap(),
            "video/x-raw, format=(string)NV12"
        );
        assert_eq!(fdlink_frame_pts(frame), 7000);
        assert_eq!(fdlink_frame_dts(frame), FDLINK_TIME_NONE);
        assert_eq!(fdlink_frame_duration(frame), 1000);
        assert_eq!(fdlink_frame_flags(frame), 1 << 13);
        assert_eq!(fdlink_frame_n_memories(frame), 2);
        assert_eq!(fdlink_frame_memory_offset(frame, 1), 5100);
        assert_eq!(fdlink_frame_memory_size(frame, 1), 3000);
        assert_eq!(fdlink_frame_memory_kind(frame, 1), FdlinkMemoryKind::Memfd);
        assert_eq!(fdlink_frame_memory_kind(frame, 2), FdlinkMemoryKind::None);
        assert_eq!(fdlink_frame_memory_fd(frame, 2), -1);
        assert_eq!(
            fdlink_frame_memory_fd(frame, 0),
            fdlink_frame_memory_fd(frame, 1)
        );
        let mut layout = FdlinkVideoLayout::default();
        assert!(!fdlink_frame_video_layout(frame, &mut layout), "none sent");
    }
    assert_eq!(map(frame, None).unwrap(), data[100..8100]);
    assert_eq!(map(frame, Some(1)).unwrap(), data[5100..8100]);
    assert!(
        map(frame, Some(2))
            .unwrap_err()
            .contains("memory 2 of a frame with 2")
    );

    // Windows apart: each memory maps, the frame as a whole does not.
    send_frame(&producer, 8, &fd, &[(0, 100), (8192, 100)]);
    let (status, apart) = next(consumer, 1000);
    assert_eq!(status, FdlinkStatus::Frame);
    let err = map(apart, None).unwrap_err();
    assert!(err.contains("fdlink_frame_map_memory"), "{err}");
    assert_eq!(map(apart, Some(0)).unwrap(), data[..100]);
    assert_eq!(map(apart, Some(1)).unwrap(), data[8192..8292]);

    // SAFETY: live frames, each released once.
    unsafe { fdlink_frame_release(apart) };
    assert_eq!(release(&producer), 8);
    // A frame outlives its consumer; its release still reaches the producer.
    // SAFETY: a live consumer, freed once.
    unsafe { fdlink_consumer_free(consumer) };
    // SAFETY: as above.
    unsafe { fdlink_frame_release(frame) };
    assert_eq!(release(&producer), 7);
}

#[test]
fn the_end_of_the_stream_ends_every_later_call() {
    let (consumer, producer) = consumer_and_producer();
    let eos = EventPacket {
        event_type: 28174,
        seqnum: 1,
        structure: String::new(),
    };
    producer
        .send_packet(
            &Packet::Event {
                event: eos,
                base_time: TIME_NONE,
            },
            Some(T),
        )
        .unwrap();
    assert_eq!(next(consumer, -1), (FdlinkStatus::End, null_mut()));
    assert_eq!(next(consumer, 0), (FdlinkStatus::End, null_mut()));
    // SAFETY: a live consumer, freed once.
    unsafe { fdlink_consumer_free(consumer) };
}

#[test]
fn a_producer_gone_is_an_error_naming_it() {
    let (consumer, producer) = consumer_and_producer();
    drop(producer);
    let mut frame = null_mut();
    let mut error = null_mut();
    // SAFETY: a live consumer; out pointers writable.
    let status = unsafe { fdlink_consumer_next_frame(consumer, -1, &mut frame, &mut error) };
    assert_eq!(status, FdlinkStatus::Error);
    assert!(frame.is_null());
    // SAFETY: an error just made.
    let kind = unsafe { fdlink_error_kind(error) };
    assert_eq!(kind, FdlinkErrorKind::PeerGone);
    assert!(message(error).contains("closed the connection"));
    // SAFETY: a live consumer, freed once.
    unsafe { fdlink_consumer_free(consumer) };
}

#[test]
fn null_and_bad_arguments_fail_with_a_reason() {
    let mut error = null_mut();
    // SAFETY: NULLs and a missing path are what this checks; `error` is writable.
    unsafe {
        assert!(fdlink_consumer_connect(null(), &mut error).is_null());
        assert_eq!(fdlink_error_kind(error), FdlinkErrorKind::InvalidArgument);
        assert_eq!(message(error), "path is NULL");

        let missing = c"/nonexistent/fdlink-capi-test.sock";
        assert!(fdlink_consumer_connect(missing.as_ptr(), &mut error).is_null());
        assert_eq!(fdlink_error_kind(error), FdlinkErrorKind::Connect);
        assert!(message(error).contains("/nonexistent/fdlink-capi-test.sock"));
        // Without an error pointer the failure is the NULL alone.
        assert!(fdlink_consumer_connect(missing.as_ptr(), null_mut()).is_null());

        assert!(fdlink_consumer_from_fd(-1, &mut error).is_null());
        assert_eq!(fdlink_error_kind(error), FdlinkErrorKind::InvalidArgument);
        fdlink_error_free(error);

        let mut frame = null_mut();
        let status = fdlink_consumer_next_frame(null_mut(), 0, &mut frame, &mut error);
        assert_eq!(status, FdlinkStatus::Error);
        assert_eq!(message(error), "consumer is NULL");
        assert_eq!(fdlink_consumer_fd(null()), -1);
        assert_eq!(fdlink_frame_pts(null()), FDLINK_TIME_NONE);
        assert_eq!(fdlink_frame_n_memories(null()), 0);
        assert_eq!(CStr::from_ptr(fdlink_frame_caps(null())).to_bytes(), b"");
        assert!(map(null_mut(), None).unwrap_err().contains("frame is NULL"));
        fdlink_frame_release(null_mut());
        fdlink_consumer_free(null_mut());
        fdlink_error_free(null_mut());
    }
}
