//! Bad input on either end: each gives an error naming the cause, the other process keeps
//! running, and no fd leaks. Fake peers are made of the crate's own transport and protocol
//! modules over real sockets; the element under test runs in a real `fdlink-peer` process.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use common::*;
use fdlink::protocol::{
    self, BufferHeader, Hello, MAX_PACKET_SIZE, MemoryDesc, MemoryKind, Packet, Role,
};
use fdlink::transport::{Connection, Listener};

const T: Duration = Duration::from_secs(30);

fn consumer(sock: &str) -> Peer {
    Peer::spawn(&[
        "consume",
        &format!("fdlinksrc socket-path={sock} timeout=5000 ! fakesink"),
    ])
}

fn expect_consumer_error(mut c: Peer, needles: &[&str]) -> String {
    let status = c.wait(T);
    assert_eq!(
        status.code(),
        Some(1),
        "consumer should fail; stderr: {}",
        c.errors()
    );
    let err = c.errors();
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    err
}

/// A fake producer: accepts one consumer, reads its hello, then runs `script` on the
/// connection. Returns what the consumer sent back afterwards (decoded error packets).
fn fake_producer(
    sock: &str,
    script: impl FnOnce(&Connection) + Send + 'static,
) -> std::thread::JoinHandle<Vec<String>> {
    let listener = Listener::bind(Path::new(sock)).unwrap();
    std::thread::spawn(move || {
        let conn = loop {
            if let Some(c) = listener.accept().unwrap() {
                break c;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut buf = vec![0u8; MAX_PACKET_SIZE];
        let hello = conn.recv_wait(&mut buf, None, Some(T)).unwrap().unwrap();
        let h = protocol::decode_hello(&buf[..hello.len]).unwrap();
        assert_eq!(h.role, Role::Consumer);
        script(&conn);
        let mut errors = Vec::new();
        while let Ok(Some(got)) = conn.recv_wait(&mut buf, None, Some(Duration::from_secs(5))) {
            if let Ok(Packet::Error(msg)) = Packet::decode(&buf[..got.len], got.fds) {
                errors.push(msg);
            }
        }
        errors
    })
}

fn send_hello(conn: &Connection, version: u16) {
    let mut h = protocol::encode_hello(&Hello::new(Role::Producer, 1));
    h[4..6].copy_from_slice(&version.to_le_bytes());
    conn.try_send(&h, &[]).unwrap();
}

fn buffer_packet(size: u64, n_fds_declared: Option<u16>) -> Vec<u8> {
    let header = BufferHeader {
        buffer_id: 1,
        pts: protocol::TIME_NONE,
        dts: protocol::TIME_NONE,
        duration: protocol::TIME_NONE,
        memories: [MemoryDesc {
            kind: MemoryKind::Memfd,
            fd_index: 0,
            file_id: 0,
            offset: 0,
            size,
        }]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let fd = fdlink::fdkind::create_sealed_memfd("x", 1).unwrap();
    let mut out = Vec::new();
    Packet::Buffer(header, [fd.as_fd()].into_iter().collect())
        .encode(&mut out)
        .unwrap();
    if let Some(n) = n_fds_declared {
        out[2..4].copy_from_slice(&n.to_le_bytes());
    }
    out
}

#[test]
fn no_producer_times_out_naming_the_path() {
    let dir = TempDir::new("nopath");
    let sock = dir.socket();
    let c = Peer::spawn(&[
        "consume",
        &format!("fdlinksrc socket-path={sock} timeout=300 ! fakesink"),
    ]);
    expect_consumer_error(c, &[&sock, "after waiting 300 ms", "does not exist"]);
}

#[test]
fn missing_socket_path_is_a_settings_error() {
    let c = Peer::spawn(&["consume", "fdlinksrc ! fakesink"]);
    expect_consumer_error(c, &["socket-path is not set"]);
    let mut p = Peer::spawn(&["produce", "videotestsrc num-buffers=1 ! fdlinksink"]);
    assert_eq!(p.wait(T).code(), Some(1));
    assert!(
        p.errors().contains("socket-path is not set"),
        "{}",
        p.errors()
    );
}

#[test]
fn stream_socket_is_not_a_producer() {
    let dir = TempDir::new("stream");
    let sock = dir.socket();
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    expect_consumer_error(consumer(&sock), &["not a SOCK_SEQPACKET socket"]);
}

#[test]
fn non_fdlink_server_is_named() {
    let dir = TempDir::new("http");
    let sock = dir.socket();
    let listener = Listener::bind(Path::new(&sock)).unwrap();
    let t = std::thread::spawn(move || {
        loop {
            if let Some(c) = listener.accept().unwrap() {
                c.try_send(b"HTTP/1.1 200 OK\r\n\r\n", &[]).unwrap();
                std::thread::sleep(Duration::from_secs(2));
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    expect_consumer_error(consumer(&sock), &["peer is not fdlink"]);
    t.join().unwrap();
}

#[test]
fn other_protocol_version_names_both_versions() {
    let dir = TempDir::new("ver");
    let sock = dir.socket();
    let other = protocol::VERSION + 1;
    let fake = fake_producer(&sock, move |c| send_hello(c, other));
    let (ours, theirs) = (
        format!("version {}", protocol::VERSION),
        format!("version {other}"),
    );
    expect_consumer_error(consumer(&sock), &[&ours, &theirs]);
    let answered = fake.join().unwrap();
    assert!(
        answered.iter().any(|m| m.contains(&theirs)),
        "consumer told the producer why: {answered:?}"
    );
}

#[test]
fn unknown_packet_type_is_a_protocol_error() {
    let dir = TempDir::new("unk");
    let sock = dir.socket();
    let fake = fake_producer(&sock, |c| {
        send_hello(c, protocol::VERSION);
        c.try_send(&[99, 0, 0, 0, 0, 0, 0, 0], &[]).unwrap();
    });
    expect_consumer_error(
        consumer(&sock),
        &["protocol error", "unknown packet type 99"],
    );
    assert!(
        fake.join()
            .unwrap()
            .iter()
            .any(|m| m.contains("unknown packet type"))
    );
}

#[test]
fn fd_count_mismatch_is_a_protocol_error() {
    let dir = TempDir::new("fdcount");
    let sock = dir.socket();
    let _fake = fake_producer(&sock, |c| {
        send_hello(c, protocol::VERSION);
        c.try_send(&encode(&Packet::Caps("video/x-raw".into())), &[])
            .unwrap();
        let bytes = buffer_packet(1, Some(2));
        let fd = fdlink::fdkind::create_sealed_memfd("x", 1).unwrap();
        c.try_send(&bytes, &[fd.as_fd()]).unwrap();
    });
    expect_consumer_error(consumer(&sock), &["declares 2 fds but 1 arrived"]);
}

#[test]
fn unsealed_memfd_and_out_of_bounds_windows_are_refused() {
    for (case, needle) in [
        ("unsealed", "not sealed against shrinking"),
        ("overrun", "overruns fd 0"),
    ] {
        let dir = TempDir::new(case);
        let sock = dir.socket();
        let _fake = fake_producer(&sock, move |c| {
            send_hello(c, protocol::VERSION);
            c.try_send(&encode(&Packet::Caps("application/x-test".into())), &[])
                .unwrap();
            let fd: OwnedFd = if case == "unsealed" {
                let f = memfd::MemfdOptions::default()
                    .create("u")
                    .unwrap()
                    .into_file();
                f.set_len(4096).unwrap();
                f.into()
            } else {
                fdlink::fdkind::create_sealed_memfd("s", 100).unwrap()
            };
            c.try_send(&buffer_packet(4096, None), &[fd.as_fd()])
                .unwrap();
        });
        expect_consumer_error(consumer(&sock), &["invalid buffer 1", needle]);
    }
}

/// Bad consumers against a real producer: it logs and drops each, keeps streaming, and
/// afterwards a good consumer still gets frames; no fd is left behind.
/// A live 320x240 NV12 producer printing stats every 50 ms, listening once this returns.
fn live_producer(sock: &str) -> Peer {
    let producer = Peer::spawn(&[
        "produce",
        "--stats-every",
        "50",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock}"
        ),
    ]);
    wait_for_path(sock, T);
    producer
}

#[test]
fn producer_survives_bad_consumers() {
    init_gst();
    let dir = TempDir::new("badcons");
    let sock = dir.socket();
    let mut producer = live_producer(&sock);
    producer
        .wait_stats(T, |s| field(s, "frames-in") >= 3)
        .expect("producer streams");
    let is_pool = |t: &String| t.contains("memfd:fdlink-pool");
    let baseline: Vec<String> = fd_targets(producer.pid())
        .into_iter()
        .filter(|t| !is_pool(t))
        .collect();
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    let path = Path::new(&sock);

    // What the producer answers (its hello, then an error packet) to each bad consumer.
    let mut answers = Vec::new();
    let mut talk = |first: &[u8], second: Option<Vec<u8>>| {
        let c = Connection::connect(path).unwrap();
        let mut got = Vec::new();
        c.try_send(first, &[]).unwrap();
        if let Some(s) = second {
            std::thread::sleep(Duration::from_millis(100));
            let _ = c.try_send(&s, &[]);
        }
        while let Ok(Some(r)) = c.recv_wait(&mut buf, None, Some(Duration::from_secs(3))) {
            match Packet::decode(&buf[..r.len], r.fds) {
                Ok(Packet::Error(m)) => got.push(m),
                Ok(_) => {}
                Err(_) => got.push("(hello)".into()),
            }
        }
        answers.push(got);
    };
    let good_hello = protocol::encode_hello(&Hello::new(Role::Consumer, 1));
    let mut v9 = good_hello;
    v9[4..6].copy_from_slice(&9u16.to_le_bytes());
    talk(b"GET / HTTP/1.1\r\n", None);
    talk(&v9, None);
    talk(&good_hello, Some(vec![1, 2, 3]));
    talk(
        &good_hello,
        Some(encode(&Packet::Release { buffer_id: 123_456 })),
    );
    let producer_hello_too = protocol::encode_hello(&Hello::new(Role::Producer, 1));
    talk(&producer_hello_too, None);
    // A Prerolled packet counting preroll barriers it was never sent (the producer plays).
    talk(
        &good_hello,
        Some(encode(&Packet::Prerolled {
            buffer_id: 1,
            barriers: 7,
        })),
    );
    assert!(
        answers[0].iter().any(|m| m.contains("not fdlink")),
        "{answers:?}"
    );
    assert!(
        answers[1]
            .iter()
            .any(|m| m.contains(&format!("version {}", protocol::VERSION))
                && m.contains("version 9")),
        "{answers:?}"
    );
    assert!(
        answers[2].iter().any(|m| m.contains("protocol error")),
        "{answers:?}"
    );
    assert!(
        answers[4].iter().any(|m| m.contains("not a consumer")),
        "{answers:?}"
    );
    assert!(
        answers[5]
            .iter()
            .any(|m| m.contains("prerolled after 7 preroll barriers, but it was sent 0")),
        "{answers:?}"
    );

    // A connection that says nothing and goes away.
    drop(Connection::connect(path).unwrap());

    let mut good = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--seconds",
        "1",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    good.wait_success(T, "good consumer");
    assert!(
        frames(&good.lines()).len() >= 10,
        "good consumer got {} frames",
        frames(&good.lines()).len()
    );
    producer
        .wait_stats(T, |s| {
            field(s, "consumers") == 0 && field(s, "buffers-held") == 0
        })
        .expect("everything released");
    std::thread::sleep(Duration::from_millis(200));
    let now: Vec<String> = fd_targets(producer.pid())
        .into_iter()
        .filter(|t| !is_pool(t))
        .collect();
    assert_eq!(now, baseline, "producer fds leaked");
    assert!(
        producer.child.try_wait().unwrap().is_none(),
        "producer died"
    );
}

/// Threads of `pid` whose name starts with `prefix` (Linux cuts names at 15 bytes).
fn threads_named(pid: i32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|comm| comm.starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

/// A consumer that floods the producer with queries and upstream events gets every query
/// answered (or refused at once), while the producer runs them on at most 4 threads and keeps
/// streaming to a well-behaved consumer.
#[test]
fn request_flood_runs_on_bounded_threads() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    init_gst();
    let dir = TempDir::new("flood");
    let sock = dir.socket();
    let mut producer = live_producer(&sock);
    let mut good = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--seconds",
        "3",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    producer
        .wait_stats(T, |s| field(s, "consumers") == 1)
        .expect("the good consumer connects");

    let conn = Arc::new(Connection::connect(Path::new(&sock)).unwrap());
    conn.try_send(&protocol::encode_hello(&Hello::new(Role::Consumer, 1)), &[])
        .unwrap();
    const QUERIES: u32 = 2000;
    // Reads everything the producer sends: releases its frames at once, counts replies.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (conn, done) = (conn.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; MAX_PACKET_SIZE];
            let (mut answered, mut refused) = (0u32, 0u32);
            let mut ids = std::collections::HashSet::new();
            while !done.load(Ordering::Acquire) || answered + refused < QUERIES {
                let Ok(Some(r)) = conn.recv_wait(&mut buf, None, Some(Duration::from_secs(5)))
                else {
                    break;
                };
                match Packet::decode(&buf[..r.len], r.fds) {
                    Ok(Packet::Buffer(h, _fds)) => {
                        let _ = conn.send_packet(
                            &Packet::Release {
                                buffer_id: h.buffer_id,
                            },
                            Some(T),
                        );
                    }
                    Ok(Packet::QueryReply(reply)) => {
                        assert!(ids.insert(reply.id), "two replies to query {}", reply.id);
                        if reply.answered {
                            answered += 1;
                        } else {
                            refused += 1;
                        }
                    }
                    _ => {}
                }
            }
            (answered, refused)
        })
    };
    let position = gst::query::Position::new(gst::Format::Time);
    let threads_before = threads_named(producer.pid(), "");
    let (mut most_threads, mut most_threads_total) = (0, 0);
    for id in 1..=QUERIES {
        let q = gstfdlink::control::query_to_packet(id, &position);
        conn.send_packet(&Packet::Query(q), Some(T)).unwrap();
        let ev = gst::event::CustomUpstream::new(gst::Structure::new_empty("fdlink-flood"));
        let ev = gstfdlink::control::event_to_packet(&ev, |_| {});
        conn.send_packet(&Packet::UpstreamEvent(ev), Some(T))
            .unwrap();
        if id % 50 == 0 {
            most_threads = most_threads.max(threads_named(producer.pid(), "fdlinksink-requ"));
            most_threads_total = most_threads_total.max(threads_named(producer.pid(), ""));
        }
    }
    done.store(true, Ordering::Release);
    let (answered, refused) = reader.join().unwrap();
    println!(
        "{QUERIES} queries: {answered} answered, {refused} refused; at most {most_threads} request threads, {most_threads_total} threads in all ({threads_before} before)"
    );
    assert_eq!(answered + refused, QUERIES, "every query gets one reply");
    assert!(answered > 0);
    assert!(
        (1..=4).contains(&most_threads),
        "{most_threads} request threads"
    );
    // Nothing else started a thread per request either (2 spare for GStreamer's own).
    assert!(
        most_threads_total <= threads_before + 4 + 2,
        "{most_threads_total} threads during the flood, {threads_before} before"
    );
    drop(conn);

    good.wait_success(T, "good consumer");
    assert!(
        frames(&good.lines()).len() >= 60,
        "the good consumer got {} frames in 3 s",
        frames(&good.lines()).len()
    );
    assert!(
        producer.child.try_wait().unwrap().is_none(),
        "producer died: {}",
        producer.errors()
    );
}

#[test]
fn live_socket_is_not_stolen_and_stale_one_is_replaced() {
    init_gst();
    let dir = TempDir::new("steal");
    let sock = dir.socket();
    let live_pipeline = format!(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=64 ! fdlinksink socket-path={sock}"
    );
    let mut first = Peer::spawn(&["produce", &live_pipeline]);
    wait_for_path(&sock, T);
    let mut second = Peer::spawn(&["produce", &live_pipeline]);
    assert_eq!(second.wait(T).code(), Some(1));
    assert!(
        second
            .errors()
            .contains("another live process already listens"),
        "{}",
        second.errors()
    );
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "first producer died"
    );

    // kill -9 leaves the socket file behind; the next producer replaces it.
    first.kill9();
    assert!(Path::new(&sock).exists());
    let mut third = Peer::spawn(&["produce", "--seconds", "2", &live_pipeline]);
    let mut c = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--seconds",
        "1",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    c.wait_success(T, "c");
    assert!(!frames(&c.lines()).is_empty());
    third.wait_success(T, "third");
    assert!(
        !Path::new(&sock).exists(),
        "producer left its socket file behind"
    );
}
