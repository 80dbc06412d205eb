//! Hostile structure texts in control packets, both directions: nested past the limit
//! (thousands of levels overflowed the parser's thread stack: SIGSEGV), nested so that
//! re-serializing an answer doubled it per level (GiB, then an abort), and large nested
//! texts that cost hundreds of MB while parsed. The victim, a real `fdlink-peer` process,
//! drops the hostile peer with an error naming the limit and lives; a producer keeps serving
//! an honest consumer and returns to its fds. Fake peers are made of the crate's own transport
//! and protocol over real sockets.

mod common;

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use fdlink::protocol::{
    self, EventPacket, Hello, MAX_PACKET_SIZE, MessagePacket, Packet, QueryPacket, Role,
};
use fdlink::transport::{Connection, Listener};

const T: Duration = Duration::from_secs(30);
/// What the victim names when it refuses a text.
const LIMIT: &str = "structure nests deeper than 32 levels";

/// A structure text nested `levels` deep in brackets (6 bytes a level: 4,000 levels, 24 KB).
fn deep(levels: usize) -> String {
    format!(
        "a, b=[{}z{}",
        "a, b=[".repeat(levels - 1),
        "]".repeat(levels)
    )
}

/// A 214-byte query structure nested 30 levels: within the limit, but `gst_structure_to_string`
/// of it doubles its escaping per level (2^30 bytes).
fn query_30_levels() -> String {
    format!(
        "q, b=(structure)[{}z{}",
        "a, b=(structure)[".repeat(29),
        "]".repeat(30)
    )
}

/// A 63 KB nested event text, as in the report: it cost a consumer +325 MB while parsed.
fn big_nested() -> String {
    let levels = 62 * 1024 / 7;
    format!("{}z{}", "a, b=[".repeat(levels), "]".repeat(levels))
}

fn event(structure: String) -> EventPacket {
    EventPacket {
        event_type: gst::ffi::GST_EVENT_CUSTOM_UPSTREAM as u32,
        seqnum: 1,
        structure,
    }
}

fn message(structure: String) -> MessagePacket {
    MessagePacket {
        message_type: gst::ffi::GST_MESSAGE_ELEMENT,
        source: "/GstPipeline:hostile".into(),
        structure,
    }
}

fn query(structure: String) -> QueryPacket {
    QueryPacket {
        id: 7,
        query_type: gst::ffi::GST_QUERY_CUSTOM as u32,
        structure,
    }
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What a fake consumer got back: the producer's error packets and query replies.
#[derive(Debug, Default)]
struct Answers {
    errors: Vec<String>,
    replies: Vec<protocol::QueryReplyPacket>,
}

/// A fake consumer: connects, says hello, sends `packet`, and reads what the producer sends
/// until it closes the connection or says nothing for 3 s (frames are dropped unreleased; the
/// producer releases them when it drops this consumer or it goes).
fn fake_consumer(sock: &str, packet: &Packet<BorrowedFd<'_>>) -> Answers {
    let c = Connection::connect(Path::new(sock)).unwrap();
    c.try_send(&protocol::encode_hello(&Hello::new(Role::Consumer, 1)), &[])
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    c.send_packet(packet, Some(T)).unwrap();
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    let mut answers = Answers::default();
    let until = Instant::now() + T;
    while Instant::now() < until {
        let Ok(Some(r)) = c.recv_wait(&mut buf, None, Some(Duration::from_secs(3))) else {
            break;
        };
        match Packet::decode(&buf[..r.len], r.fds) {
            Ok(Packet::Error(m)) => answers.errors.push(m),
            Ok(Packet::QueryReply(reply)) => {
                answers.replies.push(reply);
                break;
            }
            _ => {}
        }
    }
    answers
}

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

/// A producer refuses each hostile packet with an error naming the limit and drops that
/// consumer; answers a 30-level query with a reply as small as the query; lives, keeps
/// serving an honest consumer, and returns to its fds. Without the pre-scan, the first packet
/// kills it with SIGSEGV (the control thread's stack); without fdlink's own serialization the
/// query's reply aborts it ("failed to allocate").
#[test]
fn producer_drops_consumers_with_hostile_structures() {
    init_gst();
    let dir = TempDir::new("hostile-prod");
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
    let rss_before = peak_rss_kib(producer.pid());

    for (what, packet) in [
        ("upstream event", Packet::UpstreamEvent(event(deep(4000)))),
        ("message", Packet::Message(message(deep(4000)))),
        ("query", Packet::Query(query(deep(4000)))),
        (
            "63 KB upstream event",
            Packet::UpstreamEvent(event(big_nested())),
        ),
    ] {
        let answers = fake_consumer(&sock, &packet);
        std::thread::sleep(Duration::from_millis(100));
        if let Some(status) = producer.child.try_wait().unwrap() {
            panic!("{what}: producer died ({status}): {}", producer.errors());
        }
        assert!(
            answers
                .errors
                .iter()
                .any(|m| m.contains("protocol error") && m.contains(LIMIT)),
            "{what}: the producer names the limit: {answers:?}"
        );
    }
    let rss_growth_mib = (peak_rss_kib(producer.pid()) - rss_before) / 1024;
    assert!(
        rss_growth_mib < 64,
        "the 63 KB nested event took the producer's peak RSS up {rss_growth_mib} MiB"
    );

    // Within the limit, 30 levels: answered (not by this pipeline), the reply no larger than
    // the query.
    let text = query_30_levels();
    let answers = fake_consumer(&sock, &Packet::Query(query(text.clone())));
    let reply = answers.replies.first().unwrap_or_else(|| {
        panic!(
            "no reply to the 30-level query: {answers:?}; producer ({:?}): {}",
            producer.child.try_wait(),
            producer.errors()
        )
    });
    assert!(
        reply.structure.len() < 2 * text.len(),
        "{} bytes of reply to a {}-byte query",
        reply.structure.len(),
        text.len()
    );
    assert!(
        producer.child.try_wait().unwrap().is_none(),
        "producer died"
    );

    let mut good = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--seconds",
        "1",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    good.wait_success(T, "honest consumer");
    let got = frames(&good.lines()).len();
    assert!(got >= 10, "honest consumer got {got} frames");
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

/// A fake producer: accepts one consumer, says hello, sends `packets`, and returns what the
/// consumer sent back (its error packets and query replies) until it goes or 5 s of silence.
fn fake_producer(
    sock: &str,
    packets: Vec<Vec<u8>>,
) -> std::thread::JoinHandle<(Vec<String>, Vec<protocol::QueryReplyPacket>)> {
    let listener = Listener::bind(Path::new(sock)).unwrap();
    std::thread::spawn(move || {
        let conn = accept_as_producer(&listener, T);
        let mut buf = vec![0u8; MAX_PACKET_SIZE];
        for p in packets {
            conn.send_timeout(&p, &[], T).unwrap();
        }
        let (mut errors, mut replies) = (Vec::new(), Vec::new());
        while let Ok(Some(got)) = conn.recv_wait(&mut buf, None, Some(Duration::from_secs(5))) {
            match Packet::decode(&buf[..got.len], got.fds) {
                Ok(Packet::Error(msg)) => errors.push(msg),
                Ok(Packet::QueryReply(reply)) => {
                    replies.push(reply);
                    break;
                }
                _ => {}
            }
        }
        (errors, replies)
    })
}

/// The packets a producer sends first: caps and a segment, so that the consumer streams.
fn stream_start() -> Vec<Vec<u8>> {
    stream_start_packets(
        "video/x-raw, format=(string)NV12, width=(int)64, height=(int)64, framerate=(fraction)30/1",
    )
}

/// A consumer refuses each hostile packet from its producer: its pipeline ends with the
/// protocol error naming the limit (an error, exit code 1: no signal), and it tells the
/// producer why. Without the pre-scan the 4,000-level message kills it with SIGSEGV (its
/// reader thread's stack), and the others either crash it or end it with no word of a limit.
#[test]
fn consumer_refuses_hostile_structures() {
    init_gst();
    let downstream = |structure: String| Packet::Event {
        event: EventPacket {
            event_type: gst::ffi::GST_EVENT_CUSTOM_DOWNSTREAM as u32,
            seqnum: 1,
            structure,
        },
        base_time: 0,
    };
    for (what, packet) in [
        ("message", Packet::Message(message(deep(4000)))),
        ("in-band event", downstream(deep(4000))),
        ("63 KB in-band event", downstream(big_nested())),
        ("caps", Packet::Caps(deep(4000))),
        ("query", Packet::Query(query(deep(4000)))),
    ] {
        let dir = TempDir::new("hostile-cons");
        let sock = dir.socket();
        let mut packets = stream_start();
        packets.push(encode(&packet));
        let fake = fake_producer(&sock, packets);
        let mut c = Peer::spawn(&[
            "consume",
            &format!("fdlinksrc socket-path={sock} timeout=5000 ! fakesink"),
        ]);
        let status = c.wait(T);
        assert_eq!(
            status.code(),
            Some(1),
            "{what}: the consumer ends with an error, not a signal ({status}): {}",
            c.errors()
        );
        assert!(
            c.errors().contains(LIMIT),
            "{what}: the consumer names the limit: {}",
            c.errors()
        );
        let (errors, _) = fake.join().unwrap();
        assert!(
            errors.iter().any(|m| m.contains(LIMIT)),
            "{what}: the consumer told the producer: {errors:?}"
        );
    }
}

/// A 30-level query from the producer: the consumer answers it with a reply as small as the
/// query, and streams on. Without fdlink's own serialization the reply's text doubles per
/// level and the consumer aborts ("failed to allocate").
#[test]
fn consumer_answers_a_30_level_query_without_growing_it() {
    init_gst();
    let dir = TempDir::new("hostile-q30");
    let sock = dir.socket();
    let text = query_30_levels();
    let mut packets = stream_start();
    packets.push(encode(&Packet::Query(query(text.clone()))));
    let fake = fake_producer(&sock, packets);
    let mut c = Peer::spawn(&[
        "consume",
        &format!("fdlinksrc socket-path={sock} timeout=5000 ! fakesink"),
    ]);
    let (errors, replies) = fake.join().unwrap();
    let reply = replies.first().unwrap_or_else(|| {
        panic!(
            "no reply: {errors:?}; consumer ({:?}): {}",
            c.child.try_wait(),
            c.errors()
        )
    });
    assert_eq!(reply.id, 7);
    assert!(
        reply.structure.len() < 2 * text.len(),
        "{} bytes of reply to a {}-byte query",
        reply.structure.len(),
        text.len()
    );
    // The fake producer is gone: the consumer ends with a lost connection, not a signal.
    let status = c.wait(T);
    assert!(status.code().is_some(), "consumer died: {status}");
}

/// Queries and events of GStreamer's own types without the fields their parse functions read
/// (found by the structure_text fuzzer): an allocation query whose `pool` is not an array
/// (libgstreamer crashed reading it), a context query without its type, a stream-start without
/// its id. The producer refuses each (the query is answered false), lives, and keeps streaming.
#[test]
fn producer_refuses_hollow_gstreamer_types() {
    init_gst();
    let dir = TempDir::new("hollow-prod");
    let sock = dir.socket();
    let mut producer = live_producer(&sock);
    producer
        .wait_stats(T, |s| field(s, "frames-in") >= 3)
        .expect("producer streams");
    let typed = |query_type: gst::ffi::GstQueryType, structure: &str| QueryPacket {
        id: 9,
        query_type: query_type as u32,
        structure: structure.into(),
    };
    for (what, q) in [
        (
            "allocation query, pool not an array",
            typed(
                gst::ffi::GST_QUERY_ALLOCATION,
                "GstQueryAllocation, need-pool=(boolean)true, pool=(int)5;",
            ),
        ),
        (
            "context query without its type",
            typed(gst::ffi::GST_QUERY_CONTEXT, "GstQueryContext;"),
        ),
        (
            "duration query with a string format",
            typed(
                gst::ffi::GST_QUERY_DURATION,
                "GstQueryDuration, format=(string)time, duration=(gint64)5;",
            ),
        ),
    ] {
        let answers = fake_consumer(&sock, &Packet::Query(q));
        std::thread::sleep(Duration::from_millis(100));
        if let Some(status) = producer.child.try_wait().unwrap() {
            panic!("{what}: producer died ({status}): {}", producer.errors());
        }
        let reply = answers
            .replies
            .first()
            .unwrap_or_else(|| panic!("{what}: no reply: {answers:?}"));
        assert!(!reply.answered, "{what}: answered {reply:?}");
    }
    let stream_start = Packet::UpstreamEvent(EventPacket {
        event_type: event_code(gst::EventType::StreamStart),
        seqnum: 1,
        structure: "GstEventStreamStart;".into(),
    });
    fake_consumer(&sock, &stream_start);
    let before = producer
        .latest_stats()
        .map_or(0, |s| field(&s, "frames-in"));
    producer
        .wait_stats(T, |s| field(s, "frames-in") > before + 5)
        .expect("the producer streams on");
    assert!(
        producer.child.try_wait().unwrap().is_none(),
        "producer died"
    );
}

fn event_code(t: gst::EventType) -> u32 {
    gstfdlink::wire_event::event_type_code(t)
}
