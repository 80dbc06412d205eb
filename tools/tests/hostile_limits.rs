//! Hostile peers against the limits of either end: a producer that floods a consumer with
//! events, a consumer that floods the producer with requests, a flood of connections under a
//! small fd limit, `max-clients`, and consumers that never release. Each victim runs in a real
//! `fdlink-peer` process, lives, keeps serving honest peers and stays within its bounds; the
//! hostile peers are made of the crate's own transport and protocol over real sockets.

mod common;

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use fdlink::protocol::{
    self, BufferHeader, EventPacket, Hello, MAX_PACKET_SIZE, MemoryDesc, MemoryKind, Packet, Role,
};
use fdlink::transport::{Connection, Listener, TransportError};

const T: Duration = Duration::from_secs(30);

/// Spawns `fdlink-peer` with `args`, its RLIMIT_NOFILE set to `nofile` (soft and hard) when
/// given, and `env` added to its environment.
fn spawn_peer(args: &[&str], nofile: Option<u64>, env: &[(&str, &str)]) -> Peer {
    let mut cmd = Peer::command(args);
    cmd.envs(env.iter().copied());
    if let Some(n) = nofile {
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Peer::from_child(cmd.spawn().expect("spawn fdlink-peer"))
}

/// Resident memory of a live process, in bytes; the test fails with its stderr if it died.
fn rss(p: &Peer) -> u64 {
    let kb: Option<u64> = std::fs::read_to_string(format!("/proc/{}/status", p.pid()))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        });
    kb.unwrap_or_else(|| panic!("the process is gone: {}", p.errors())) * 1024
}

fn alive(p: &mut Peer) -> bool {
    p.child.try_wait().unwrap().is_none()
}

/// A live 320x240 NV12 producer printing stats every 50 ms, listening once this returns.
fn live_producer(sock: &str, sink_props: &str, nofile: Option<u64>) -> Peer {
    let producer = spawn_peer(
        &[
            "produce",
            "--stats-every",
            "50",
            &format!(
                "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock} {sink_props}"
            ),
        ],
        nofile,
        &[("GST_DEBUG", "fdlinksink:2")],
    );
    wait_for_path(sock, T);
    producer
}

/// An honest consumer that plays for `seconds` and logs its frames.
fn honest_consumer(sock: &str, seconds: &str) -> Peer {
    Peer::spawn(&[
        "consume",
        "--frames-log",
        "--seconds",
        seconds,
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ])
}

/// The targets of a process's fds that are not frames of its memfd pool.
fn fds_but_pool(pid: i32) -> Vec<String> {
    fd_targets(pid)
        .into_iter()
        .filter(|t| !t.contains("memfd:fdlink-pool"))
        .collect()
}

/// Distinct files of the producer's memfd pool it has open: the pool's buffers.
fn pool_files(pid: i32) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.display().to_string().contains("memfd:fdlink-pool")
            && let Ok(meta) = std::fs::metadata(e.path())
        {
            inodes.insert(meta.ino());
        }
    }
    inodes.len()
}

/// A fake consumer past the hello: the producer's hello read, its own sent.
fn fake_consumer(sock: &str) -> Connection {
    let conn = Connection::connect(Path::new(sock)).unwrap();
    conn.try_send(&protocol::encode_hello(&Hello::new(Role::Consumer, 1)), &[])
        .unwrap();
    conn
}

/// Reads what `conn` is sent until `stop`, dropping every frame without a release; returns
/// the error packets it got.
fn read_without_release(
    conn: Arc<Connection>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_PACKET_SIZE];
        let mut errors = Vec::new();
        while !stop.load(Ordering::Acquire) {
            match conn.recv_wait(&mut buf, None, Some(Duration::from_millis(100))) {
                Ok(Some(got)) => {
                    if let Ok(Packet::Error(msg)) = Packet::decode(&buf[..got.len], got.fds) {
                        errors.push(msg);
                    }
                }
                Ok(None) | Err(TransportError::TimedOut(_)) => {}
                Err(_) => break,
            }
        }
        errors
    })
}

/// A buffer packet of one page in a memfd of its own, and that memfd.
fn one_page_frame(buffer_id: u64) -> (Vec<u8>, std::os::fd::OwnedFd) {
    let header = BufferHeader {
        buffer_id,
        pts: protocol::TIME_NONE,
        dts: protocol::TIME_NONE,
        duration: protocol::TIME_NONE,
        memories: [MemoryDesc {
            kind: MemoryKind::Memfd,
            fd_index: 0,
            file_id: 0,
            offset: 0,
            size: 4096,
        }]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let fd = fdlink::fdkind::create_sealed_memfd("hostile", 4096).unwrap();
    let bytes = encode(&Packet::Buffer(header, [fd.as_fd()].into_iter().collect()));
    (bytes, fd)
}

/// A fake producer's connection to one real consumer: accepted, hellos exchanged, caps and a
/// one-page frame sent.
fn fake_producer_with_a_frame(listener: &Listener) -> Connection {
    let conn = accept_as_producer(listener, T);
    conn.send_packet(&Packet::Caps("application/x-test".into()), Some(T))
        .unwrap();
    let (frame, fd) = one_page_frame(1);
    conn.send_timeout(&frame, &[fd.as_fd()], T).unwrap();
    conn
}

/// A serialized custom downstream event carrying `bytes` bytes of text.
fn custom_event(bytes: usize) -> Vec<u8> {
    encode(&Packet::Event {
        event: EventPacket {
            event_type: gst::ffi::GST_EVENT_CUSTOM_DOWNSTREAM as u32,
            seqnum: 1,
            structure: format!("fdlink-flood, data=(string)\"{}\"", "a".repeat(bytes)),
        },
        base_time: 0,
    })
}

/// Sends `packet` up to `count` times, each waiting at most `wait` for room; returns how many
/// went.
fn send_until_blocked(conn: &Connection, packet: &[u8], count: usize, wait: Duration) -> usize {
    (0..count)
        .take_while(|_| conn.send_timeout(packet, &[], wait).is_ok())
        .count()
}

/// A producer sends 2500 events of 48 KiB (120 MB) while the consumer's only frame is held
/// downstream: the consumer takes 256 or 4 MiB of them and then stops reading, so the
/// producer's sends block; its memory stays within a few MB and it lives.
#[test]
fn a_playing_consumer_stops_reading_a_flood_of_events() {
    init_gst();
    let dir = TempDir::new("evflood");
    let sock = dir.socket();
    let listener = Listener::bind(Path::new(&sock)).unwrap();
    let mut consumer = Peer::spawn(&[
        "consume",
        "--slow-ms",
        "20000",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    let conn = fake_producer_with_a_frame(&listener);
    // The frame is held downstream now (the probe sleeps on it).
    std::thread::sleep(Duration::from_millis(700));
    let before = rss(&consumer);
    let event = custom_event(48 * 1024);
    let sent = send_until_blocked(&conn, &event, 2500, Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(300));
    let after = rss(&consumer);
    println!(
        "sent {sent} of 2500 events of 48 KiB; consumer RSS {} -> {} MB",
        before >> 20,
        after >> 20
    );
    assert!(alive(&mut consumer), "consumer died: {}", consumer.errors());
    assert!(
        sent < 200,
        "the consumer took {sent} events of 48 KiB while its frame was held downstream"
    );
    assert!(
        after < before + 24 * 1024 * 1024,
        "consumer RSS grew from {} to {} MB",
        before >> 20,
        after >> 20
    );
}

/// A consumer that does not play (paused after its first frame, so it reads on for the
/// producer's State packets) takes at most 1024 queued events, then reports the flood to the
/// producer, naming the limit, and stops reading; its memory stays bounded and it lives.
#[test]
fn a_paused_consumer_disconnects_a_flooding_producer() {
    init_gst();
    let dir = TempDir::new("evflood2");
    let sock = dir.socket();
    let listener = Listener::bind(Path::new(&sock)).unwrap();
    let mut consumer = Peer::spawn(&[
        "consume",
        "--pause-after",
        "1",
        "--pause-ms",
        "20000",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    let conn = fake_producer_with_a_frame(&listener);
    std::thread::sleep(Duration::from_millis(500));
    let before = rss(&consumer);
    let sent = send_until_blocked(&conn, &custom_event(1024), 3000, Duration::from_secs(1));
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    let mut said = Vec::new();
    while let Ok(Some(got)) = conn.recv_wait(&mut buf, None, Some(Duration::from_secs(2))) {
        if let Ok(Packet::Error(msg)) = Packet::decode(&buf[..got.len], got.fds) {
            said.push(msg);
        }
    }
    let after = rss(&consumer);
    println!(
        "sent {sent} events; consumer said {said:?}; RSS {} -> {} MB",
        before >> 20,
        after >> 20
    );
    assert!(
        said.iter()
            .any(|m| m.contains("the limit is 1024 packets or 16 MiB") && m.contains("floods")),
        "the consumer did not name the limit: {said:?}"
    );
    assert!(alive(&mut consumer), "consumer died: {}", consumer.errors());
    assert!(after < before + 24 * 1024 * 1024, "consumer RSS grew");
}

/// A producer that sends 600 frames, each in a memfd of its own, to a consumer that does not
/// play (so it reads on) and releases nothing: the consumer takes 288 (four times max-held,
/// plus the 256 a joiner's backlog may bring), then reports the flood naming the limit; its
/// fds stay bounded and it lives.
#[test]
fn a_paused_consumer_takes_no_more_frames_than_the_producer_may_send() {
    init_gst();
    let dir = TempDir::new("frflood");
    let sock = dir.socket();
    let listener = Listener::bind(Path::new(&sock)).unwrap();
    let mut consumer = Peer::spawn(&[
        "consume",
        "--pause-after",
        "1",
        "--pause-ms",
        "20000",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    let conn = fake_producer_with_a_frame(&listener);
    std::thread::sleep(Duration::from_millis(500));
    let fds_before = fd_count(consumer.pid());
    let mut sent = 0;
    for id in 2..602 {
        let (frame, fd) = one_page_frame(id);
        if conn
            .send_timeout(&frame, &[fd.as_fd()], Duration::from_secs(1))
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    let mut said = Vec::new();
    while let Ok(Some(got)) = conn.recv_wait(&mut buf, None, Some(Duration::from_secs(2))) {
        if let Ok(Packet::Error(msg)) = Packet::decode(&buf[..got.len], got.fds) {
            said.push(msg);
        }
    }
    let fds_after = fd_count(consumer.pid());
    println!("sent {sent} frames; consumer said {said:?}; fds {fds_before} -> {fds_after}");
    assert!(
        said.iter()
            .any(|m| m.contains("the limit is 288") && m.contains("floods")),
        "the consumer did not name the limit: {said:?}"
    );
    assert!(
        fds_after < fds_before + 300,
        "the consumer holds {fds_after} fds, {fds_before} before"
    );
    assert!(alive(&mut consumer), "consumer died: {}", consumer.errors());
}

/// A consumer that sends tens of thousands of upstream events is dropped with an error naming
/// the limit, while an honest consumer keeps receiving frames and the producer lives.
#[test]
fn a_consumer_flooding_requests_is_dropped() {
    init_gst();
    let dir = TempDir::new("reqflood");
    let sock = dir.socket();
    let mut producer = live_producer(&sock, "", None);
    let mut good = honest_consumer(&sock, "3");
    producer
        .wait_stats(T, |s| field(s, "consumers") == 1)
        .expect("the honest consumer connects");

    let conn = Arc::new(fake_consumer(&sock));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = read_without_release(conn.clone(), stop.clone());
    let event = encode(&Packet::UpstreamEvent(EventPacket {
        event_type: gst::ffi::GST_EVENT_CUSTOM_UPSTREAM as u32,
        seqnum: 1,
        structure: "fdlink-flood".into(),
    }));
    let started = Instant::now();
    let sent = send_until_blocked(&conn, &event, 50_000, Duration::from_secs(2));
    println!("sent {sent} upstream events in {:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let said = reader.join().unwrap();
    assert!(
        said.iter()
            .any(|m| m.contains("more than 5000 requests") && m.contains("within a second")),
        "the flooding consumer was not dropped naming the limit: {said:?}"
    );
    assert!(sent < 50_000, "the producer read all {sent} requests");

    good.wait_success(T, "honest consumer");
    let got = frames(&good.lines()).len();
    assert!(got >= 60, "the honest consumer got {got} frames in 3 s");
    assert!(alive(&mut producer), "producer died: {}", producer.errors());
}

/// 1100 connections that finish the hello, against a producer with 256 fds and no
/// max-clients: it stops accepting before its own pipeline runs out of fds (refusing the rest
/// with an error naming the fd limit), keeps streaming, serves an honest consumer once the
/// flood is gone, and has its baseline fds again.
#[test]
fn a_connection_flood_leaves_the_producer_its_fds() {
    init_gst();
    let dir = TempDir::new("connflood");
    let sock = dir.socket();
    let mut producer = live_producer(&sock, "max-clients=0", Some(256));
    producer
        .wait_stats(T, |s| field(s, "frames-in") >= 10)
        .expect("the producer streams");
    let baseline = fds_but_pool(producer.pid());

    let mut flood = Vec::new();
    let mut refused = Vec::new();
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    for _ in 0..1100 {
        let Ok(conn) = Connection::connect(Path::new(&sock)) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let _ = conn.try_send(&protocol::encode_hello(&Hello::new(Role::Consumer, 1)), &[]);
        flood.push(conn);
    }
    std::thread::sleep(Duration::from_secs(1));
    for conn in &flood {
        while let Ok(got) = conn.try_recv(&mut buf) {
            if let Ok(Packet::Error(msg)) = Packet::decode(&buf[..got.len], got.fds) {
                refused.push(msg);
            }
        }
    }
    let frames_then = field(&producer.latest_stats().unwrap(), "frames-in");
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(&mut producer), "producer died: {}", producer.errors());
    let frames_now = field(&producer.latest_stats().unwrap(), "frames-in");
    println!(
        "{} connections, {} refused; producer frames-in {frames_then} -> {frames_now}",
        flood.len(),
        refused.len()
    );
    assert!(frames_now > frames_then, "the producer stopped streaming");
    assert!(
        refused.iter().any(|m| m.contains("RLIMIT_NOFILE")),
        "no connection was refused for the fd limit: {:?}",
        refused.first()
    );
    drop(flood);

    let mut good = honest_consumer(&sock, "2");
    good.wait_success(T, "honest consumer");
    let got = frames(&good.lines()).len();
    assert!(got >= 30, "the honest consumer got {got} frames in 2 s");
    producer
        .wait_stats(T, |s| field(s, "consumers") == 0)
        .expect("every consumer gone");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        fds_but_pool(producer.pid()),
        baseline,
        "producer fds leaked"
    );
    assert!(alive(&mut producer), "producer died: {}", producer.errors());
    assert!(
        !producer.errors().contains("Internal data stream error"),
        "{}",
        producer.errors()
    );
}

/// With max-clients=2 a third consumer is refused at accept: its fdlinksrc fails naming the
/// property, the producer warns naming it, and the first two play on.
#[test]
fn max_clients_refuses_one_more_with_a_warning() {
    init_gst();
    let dir = TempDir::new("maxcl");
    let sock = dir.socket();
    let mut producer = live_producer(&sock, "max-clients=2", None);
    let mut first = honest_consumer(&sock, "3");
    let mut second = honest_consumer(&sock, "3");
    producer
        .wait_stats(T, |s| field(s, "consumers") == 2)
        .expect("two consumers connect");
    let mut third = Peer::spawn(&[
        "consume",
        &format!("fdlinksrc socket-path={sock} timeout=5000 ! fakesink"),
    ]);
    assert_eq!(
        third.wait(T).code(),
        Some(1),
        "the third consumer is served"
    );
    assert!(
        third.errors().contains("max-clients=2"),
        "{}",
        third.errors()
    );
    assert!(
        producer
            .wait_error_line(T, |l| l.contains("WARN") && l.contains("max-clients=2"))
            .is_some(),
        "no warning naming max-clients: {}",
        producer.errors()
    );
    first.wait_success(T, "first");
    second.wait_success(T, "second");
    assert!(frames(&first.lines()).len() >= 60);
    assert!(alive(&mut producer), "producer died");
}

/// Four consumers that take frames and never release: the default max-held-total (twice
/// max-held) keeps upstream's pool from growing by max-held buffers per holder; an honest
/// consumer still gets frames, and once the holders leave the producer's fds are as before.
#[test]
fn holders_that_never_release_do_not_grow_the_pool() {
    init_gst();
    let dir = TempDir::new("holders");
    let sock = dir.socket();
    let mut producer = live_producer(&sock, "", None);
    producer
        .wait_stats(T, |s| field(s, "frames-in") >= 10)
        .expect("the producer streams");
    let baseline = fds_but_pool(producer.pid());
    let pool_before = pool_files(producer.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let mut holders = Vec::new();
    for _ in 0..4 {
        let conn = Arc::new(fake_consumer(&sock));
        holders.push(read_without_release(conn.clone(), stop.clone()));
        // Each takes what it may before the next comes.
        std::thread::sleep(Duration::from_millis(700));
    }
    let mut good = honest_consumer(&sock, "2");
    good.wait_success(T, "honest consumer");
    let pool_held = pool_files(producer.pid());
    println!("pool buffers: {pool_before} before, {pool_held} with 4 holders");
    // max-held-total 16, then at most 2 more per consumer: 4 holders at max-held (8) would
    // grow it to 33 and more.
    assert!(
        pool_held <= 16 + 2 * 5 + 2,
        "the pool grew from {pool_before} to {pool_held} buffers"
    );
    let got = frames(&good.lines()).len();
    assert!(got >= 30, "the honest consumer got {got} frames in 2 s");

    stop.store(true, Ordering::Release);
    for h in holders {
        h.join().unwrap();
    }
    producer
        .wait_stats(T, |s| {
            field(s, "consumers") == 0 && field(s, "buffers-held") == 0
        })
        .expect("the holders' buffers released when they left");
    std::thread::sleep(Duration::from_millis(300));
    assert!(pool_files(producer.pid()) <= pool_held);
    assert_eq!(
        fds_but_pool(producer.pid()),
        baseline,
        "producer fds leaked"
    );
    assert!(alive(&mut producer), "producer died: {}", producer.errors());
}

/// A producer that sends events after its segment and before any buffer or gap (they wait
/// in fdlinksrc for the shift a buffer gives) without end: past 256 such events the consumer
/// ends with an error naming the limit, and tells the producer. Without the bound it held
/// every one (400 events of 40 KB: about 20 MiB).
#[test]
fn events_held_before_the_first_buffer_are_bounded() {
    init_gst();
    let dir = TempDir::new("held-events");
    let sock = dir.socket();
    let listener = Listener::bind(Path::new(&sock)).unwrap();
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!("fdlinksrc socket-path={sock} timeout=5000 ! fakesink"),
    ]);
    let conn = accept_as_producer(&listener, T);
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    for packet in stream_start_packets("application/x-test") {
        conn.send_timeout(&packet, &[], T).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let event = custom_event(40 * 1024);
    let mut sent = 0;
    for _ in 0..1000 {
        if conn
            .send_timeout(&event, &[], Duration::from_secs(2))
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    let status = consumer.wait(T);
    assert_eq!(
        status.code(),
        Some(1),
        "the consumer ends with an error: {status}"
    );
    assert!(
        consumer
            .errors()
            .contains("before any buffer or gap; the limit is 256 events"),
        "the error names the limit (sent {sent}): {}",
        consumer.errors()
    );
    let mut told = false;
    while let Ok(Some(got)) = conn.recv_wait(&mut buf, None, Some(Duration::from_secs(2))) {
        if let Ok(Packet::Error(m)) = Packet::decode(&buf[..got.len], got.fds) {
            told |= m.contains("floods this consumer");
        }
    }
    assert!(told, "the consumer told the producer why");
}
