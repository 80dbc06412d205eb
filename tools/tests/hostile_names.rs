//! Names a peer makes up: GStreamer's parser interns every structure name, field name and caps
//! feature it reads, and GLib keeps them for the life of the process, so a peer that sends new
//! names in every packet would grow its victim without bound. The victim, a real `fdlink-peer`
//! process, counts the names new to it: a structure bringing more than 256 is refused unparsed,
//! and past 4 MiB of names from peers in its life only known names pass. It lives, keeps
//! serving, and its memory stops growing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use fdlink::protocol::{self, EventPacket, Hello, MAX_PACKET_SIZE, Packet, Role};
use fdlink::transport::{Connection, Listener};

const T: Duration = Duration::from_secs(30);
/// Hostile packets sent: each brings 200 names of 200 bytes never seen (40 KB of names), so
/// 400 of them would intern 16 MB of names and more of GLib's bookkeeping.
const PACKETS: usize = 400;
/// What the victim logs when the process's budget for names is spent.
const SPENT: &str = "limit in the life of the process";

/// A structure bringing 200 names of 200 bytes, none seen before: `round` makes them unique.
fn fresh_names(round: usize) -> String {
    let fields: Vec<String> = (0..200)
        .map(|i| format!("f{round:04}x{i:03}{}=(int)1", "n".repeat(190)))
        .collect();
    format!("hostile-names-{round}, {};", fields.join(", "))
}

/// A structure bringing 300 new names: over the limit of 256 in one structure.
fn burst() -> String {
    let fields: Vec<String> = (0..300).map(|i| format!("burst{i}=(int)1")).collect();
    format!("hostile-burst, {};", fields.join(", "))
}

/// Resident memory of a process now (VmRSS), in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Whether this GStreamer's parser interns the names it reads: before 1.26 it does; 1.26
/// keeps them as GstIdStr, which go with their structure, so no budget is spent there.
fn parser_interns() -> bool {
    init_gst();
    let _ = "probe-structure, hostile-names-probe=(int)1;".parse::<gst::Structure>();
    gst::glib::Quark::try_from_str("hostile-names-probe").is_some()
}

/// `fdlink-peer` with fdlink's control plane warnings on stderr.
fn spawn_logged(args: &[&str]) -> Peer {
    let mut cmd = Peer::command(args);
    cmd.env("GST_DEBUG", "fdlinkcontrol:2")
        .env("GST_DEBUG_NO_COLOR", "1");
    Peer::from_child(cmd.spawn().expect("spawn fdlink-peer"))
}

/// A producer sent a burst and then 400 structures of new names by a consumer: it refuses the
/// burst unparsed and, once 4 MiB of names are in, the rest; its memory grows by about the
/// budget, not by the 16 MB sent; it lives and serves an honest consumer. Without the count,
/// its resident memory grows by more than 20 MiB.
#[test]
fn producer_bounds_the_names_a_consumer_brings() {
    init_gst();
    let dir = TempDir::new("hostile-names-prod");
    let sock = dir.socket();
    let mut producer = spawn_logged(&[
        "produce",
        "--stats-every",
        "50",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock}"
        ),
    ]);
    wait_for_path(&sock, T);
    producer
        .wait_stats(T, |s| field(s, "frames-in") >= 3)
        .expect("producer streams");
    let rss_before = rss_kib(producer.pid());

    let c = Connection::connect(Path::new(&sock)).unwrap();
    c.try_send(&protocol::encode_hello(&Hello::new(Role::Consumer, 1)), &[])
        .unwrap();
    let event = |structure: String| {
        Packet::UpstreamEvent(EventPacket {
            event_type: gst::ffi::GST_EVENT_CUSTOM_UPSTREAM as u32,
            seqnum: 1,
            structure,
        })
    };
    c.send_packet(&event(burst()), Some(T)).unwrap();
    for round in 0..PACKETS {
        c.send_packet(&event(fresh_names(round)), Some(T)).unwrap();
        // The producer rate-limits a consumer's requests; this stays below it.
        std::thread::sleep(Duration::from_millis(2));
    }
    // Everything sent is handled once the producer answers a query sent after it.
    c.send_packet(
        &Packet::Query(protocol::QueryPacket {
            id: 9,
            query_type: gst::ffi::GST_QUERY_CUSTOM as u32,
            structure: "hostile-names-done;".into(),
        }),
        Some(T),
    )
    .unwrap();
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    loop {
        let got = c
            .recv_wait(&mut buf, None, Some(T))
            .unwrap()
            .expect("the producer answers the query after the events");
        if let Ok(Packet::QueryReply(r)) = Packet::decode(&buf[..got.len], got.fds)
            && r.id == 9
        {
            break;
        }
    }
    drop(c);
    if let Some(status) = producer.child.try_wait().unwrap() {
        panic!("producer died ({status}): {}", producer.errors());
    }
    let growth_mib = rss_kib(producer.pid()).saturating_sub(rss_before) / 1024;
    eprintln!("the producer's resident memory grew {growth_mib} MiB");
    assert!(
        growth_mib < 12,
        "the producer's resident memory grew {growth_mib} MiB from names"
    );
    let log = producer.errors();
    assert!(
        log.contains("more than the limit of 256 in one structure"),
        "the burst is refused: {log}"
    );
    if parser_interns() {
        assert!(log.contains(SPENT), "the budget ends new names: {log}");
    }

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
    assert!(
        producer.child.try_wait().unwrap().is_none(),
        "producer died"
    );
}

/// A consumer sent 400 structures of new names in in-band events by its producer: it parses
/// them until 4 MiB of names are in, then refuses the rest (logged), keeps streaming, and its
/// memory grows by about the budget. Without the count it grows by more than 20 MiB. From
/// GStreamer 1.26, which interns no names, a second 400 leave its memory where it was.
#[test]
fn consumer_bounds_the_names_a_producer_brings() {
    init_gst();
    let dir = TempDir::new("hostile-names-cons");
    let sock = dir.socket();
    let listener = Listener::bind(Path::new(&sock)).unwrap();
    let mut consumer = spawn_logged(&[
        "consume",
        "--events-log",
        &format!("fdlinksrc socket-path={sock} timeout=5000 ! fakesink"),
    ]);
    let conn = accept_as_producer(&listener, T);
    for packet in stream_start_packets(
        "video/x-raw, format=(string)NV12, width=(int)64, height=(int)64, framerate=(fraction)30/1",
    ) {
        conn.send_timeout(&packet, &[], T).unwrap();
    }
    // A gap places the segment, so the events after it go downstream at once instead of
    // waiting for a buffer (what waits there is bounded on its own: hostile_limits.rs).
    let gap = gstfdlink::control::event_to_packet(
        &gst::event::Gap::builder(gst::ClockTime::ZERO).build(),
        |_| {},
    );
    conn.send_timeout(
        &encode(&Packet::Event {
            event: gap,
            base_time: 0,
        }),
        &[],
        T,
    )
    .unwrap();
    let event = |structure: String| Packet::Event {
        event: EventPacket {
            event_type: gst::ffi::GST_EVENT_CUSTOM_DOWNSTREAM as u32,
            seqnum: 1,
            structure,
        },
        base_time: 0,
    };
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = rss_kib(consumer.pid());
    // Before 1.26 the names stay: one pass, bounded by the budget. From 1.26 the parser
    // interns nothing, and the first pass grows the consumer by what its control queue holds
    // at once: a second pass of as many new names must not grow it again.
    let passes = if parser_interns() { 1 } else { 2 };
    let mut rss_after = Vec::new();
    for pass in 0..passes {
        for round in pass * PACKETS..(pass + 1) * PACKETS {
            conn.send_timeout(&encode(&event(fresh_names(round))), &[], T)
                .unwrap();
        }
        // The consumer has handled everything once a tag event sent after it (of names
        // GStreamer knows from the start) leaves its fdlinksrc.
        let tag =
            gstfdlink::control::event_to_packet(&gst::event::Tag::new(gst::TagList::new()), |_| {});
        conn.send_timeout(
            &encode(&Packet::Event {
                event: tag,
                base_time: 0,
            }),
            &[],
            T,
        )
        .unwrap();
        let until = std::time::Instant::now() + T;
        while consumer
            .lines()
            .iter()
            .filter(|l| *l == "event tag")
            .count()
            <= pass
        {
            assert!(
                std::time::Instant::now() < until,
                "the tag event after the names never came out: {}",
                consumer.errors()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = consumer.child.try_wait().unwrap() {
            panic!("consumer died ({status}): {}", consumer.errors());
        }
        rss_after.push(rss_kib(consumer.pid()));
    }
    let growth_mib = rss_after[0].saturating_sub(rss_before) / 1024;
    eprintln!("the consumer's resident memory grew {growth_mib} MiB");
    if passes == 1 {
        assert!(
            growth_mib < 12,
            "the consumer's resident memory grew {growth_mib} MiB from names"
        );
    } else {
        let again_mib = rss_after[1].saturating_sub(rss_after[0]) / 1024;
        eprintln!("and {again_mib} MiB more in a second pass");
        assert!(
            again_mib < 4,
            "the consumer's resident memory grew {again_mib} MiB more in a second pass of new names"
        );
    }
    let log = consumer.errors();
    if parser_interns() {
        assert!(log.contains(SPENT), "the budget ends new names: {log}");
    }
    drop(conn);
    let status = consumer.wait(T);
    assert!(status.code().is_some(), "consumer died: {status}");
}
