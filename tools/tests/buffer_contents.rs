//! What a buffer carries besides its bytes crosses: buffers without bytes (no memory, or
//! zero-sized memories) on the zero-copy and the copy path, counted as `frames-empty`; each
//! meta kind fdlink carries on GStreamer 1.22 with its fields; a 1 MB custom meta in a memfd
//! beside the packet; metas past the limits refused by the consumer, naming the limit.
//!
//! Metas must be made by hand, so most cases run both pipelines in the test process
//! (appsrc into fdlinksink, fdlinksrc into appsink, as `unixfd_upstream.rs`); empty buffers
//! from a real element (fakesrc) and the hostile producer's victim run as `fdlink-peer`
//! processes. Every case takes one lock: one of them counts this process's fds.

mod common;

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use fdlink::protocol::{self, BufferHeader, MAX_PACKET_SIZE, MetaEntry, Metas, Packet};
use fdlink::transport::{Connection, Listener};
use gst::prelude::*;
use gstfdlink::metas;

const T: Duration = Duration::from_secs(30);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// GStreamer with the plugin registered in this process, once.
fn init() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    init_gst();
    REGISTERED.call_once(|| gstfdlink::plugin_register_static().unwrap());
}

fn by_name<E: IsA<gst::Element>>(pipeline: &gst::Element, name: &str) -> E {
    pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name(name)
        .unwrap()
        .downcast::<E>()
        .unwrap()
}

/// A producer pipeline (appsrc `src` into fdlinksink `fdsink`, which waits for a consumer)
/// and `consumers` consumer pipelines (fdlinksrc `fdsrc` into appsink `sink`), all playing.
struct Link {
    service: gst::Element,
    clients: Vec<gst::Element>,
    _dir: TempDir,
}

impl Link {
    fn new(tag: &str, consumers: usize) -> Link {
        init();
        let dir = TempDir::new(tag);
        let socket = dir.socket();
        let service = gst::parse::launch(&format!(
            "appsrc name=src format=time ! fdlinksink name=fdsink socket-path={socket} \
             sync=false async=false wait-for-connection=true"
        ))
        .unwrap();
        assert_eq!(
            service.set_state(gst::State::Playing),
            Ok(gst::StateChangeSuccess::Success)
        );
        let clients = (0..consumers)
            .map(|_| {
                let client = gst::parse::launch(&format!(
                    "fdlinksrc name=fdsrc socket-path={socket} ! \
                     appsink name=sink sync=false async=false enable-last-sample=false"
                ))
                .unwrap();
                assert_ne!(
                    client.set_state(gst::State::Playing),
                    Err(gst::StateChangeError)
                );
                client
            })
            .collect();
        let link = Link {
            service,
            clients,
            _dir: dir,
        };
        // wait-for-connection holds the first frame for the first consumer only: with more,
        // each must be past its hello before a frame, or it joins at the next one.
        let until = std::time::Instant::now() + T;
        while (link.sink_stats().get::<u32>("consumers").unwrap() as usize) < consumers {
            assert!(
                std::time::Instant::now() < until,
                "consumers never connected"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        link
    }

    fn push(&self, buffer: gst::Buffer) {
        let appsrc: gst_app::AppSrc = by_name(&self.service, "src");
        let sample = gst::Sample::builder()
            .buffer(&buffer)
            .caps(&gst::Caps::new_empty_simple("application/x-test"))
            .build();
        appsrc.push_sample(&sample).unwrap();
    }

    fn pull_from(&self, client: usize) -> gst::Buffer {
        let appsink: gst_app::AppSink = by_name(&self.clients[client], "sink");
        appsink
            .try_pull_sample(gst::ClockTime::from_seconds(T.as_secs()))
            .expect("a sample")
            .buffer_owned()
            .unwrap()
    }

    fn pull(&self) -> gst::Buffer {
        self.pull_from(0)
    }

    fn sink_stats(&self) -> gst::Structure {
        by_name::<gst::Element>(&self.service, "fdsink").property("stats")
    }

    fn src_stats(&self) -> gst::Structure {
        by_name::<gst::Element>(&self.clients[0], "fdsrc").property("stats")
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for c in &self.clients {
            let _ = c.set_state(gst::State::Null);
        }
        let _ = self.service.set_state(gst::State::Null);
    }
}

fn stat(s: &gst::Structure, name: &str) -> u64 {
    s.get::<u64>(name)
        .or_else(|_| s.get::<u32>(name).map(u64::from))
        .unwrap_or_else(|_| panic!("no {name} in {s}"))
}

/// Registers a custom meta name once (registering one twice is a GLib critical).
fn register(name: &str) {
    if !gst::meta::CustomMeta::is_registered(name) {
        gst::meta::CustomMeta::register_simple(name);
    }
}

/// A GstFdMemory-backed (memfd, sealed) memory of `size` bytes, which crosses zero-copy.
fn memfd_memory(size: usize) -> gst::Memory {
    let fd = gstfdlink::memory::create_sealed_memfd("test", size.max(1)).unwrap();
    gstfdlink::memory::wrap_dmabuf(fd, size).unwrap()
}

const TEST_META: &str = "fdlink-test-meta";

fn add_custom(b: &mut gst::BufferRef, n: i32) {
    register(TEST_META);
    let mut meta = gst::meta::CustomMeta::add(b, TEST_META).unwrap();
    meta.mut_structure().set("n", n);
}

fn custom_n(b: &gst::BufferRef) -> Option<i32> {
    gst::meta::CustomMeta::from_buffer(b, TEST_META)
        .ok()
        .map(|m| m.structure().get::<i32>("n").unwrap())
}

/// Buffers without bytes cross as buffers without memory, with their timestamps, flags,
/// offsets and metas, between buffers that cross zero-copy and by copy; both elements count
/// them as `frames-empty` and neither as zero-copy nor copied frames.
#[test]
fn empty_buffers_cross_without_memory() {
    let _serial = serial();
    let link = Link::new("empty", 1);
    let flags = gst::BufferFlags::GAP | gst::BufferFlags::HEADER;
    let empty = |i: u64, mems: Vec<gst::Memory>| {
        let mut buffer = gst::Buffer::new();
        {
            let b = buffer.get_mut().unwrap();
            for m in mems {
                b.append_memory(m);
            }
            b.set_pts(gst::ClockTime::from_mseconds(40 * i));
            b.set_dts(gst::ClockTime::from_mseconds(40 * i));
            b.set_duration(gst::ClockTime::from_mseconds(40));
            b.set_offset(i);
            b.set_offset_end(i + 1);
            gstfdlink::memory::set_buffer_flag_bits(b, flags.bits());
            add_custom(b, i as i32);
        }
        buffer
    };
    let with = |i: u64, mem: gst::Memory| {
        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().unwrap();
        b.append_memory(mem);
        b.set_pts(gst::ClockTime::from_mseconds(40 * i));
        buffer
    };
    // Empty, zero-copy, empty of two zero-sized system memories, copied, empty of a zero-sized
    // memfd memory.
    let sent = [
        empty(0, vec![]),
        with(1, memfd_memory(4096)),
        empty(
            2,
            vec![gst::Memory::with_size(0), gst::Memory::with_size(0)],
        ),
        with(3, gst::Memory::from_slice(vec![7u8; 16])),
        empty(4, vec![memfd_memory(0)]),
    ];
    assert_eq!(sent[2].n_memory(), 2);
    assert_eq!(sent[4].n_memory(), 1);
    for (i, buffer) in sent.iter().enumerate() {
        link.push(buffer.clone());
        let got = link.pull();
        assert_eq!(got.size(), buffer.size(), "buffer {i}");
        assert_eq!(got.pts(), buffer.pts(), "buffer {i}");
        if buffer.size() > 0 {
            continue;
        }
        // No memory: a zero-sized memory holds nothing to map, and has no file to share.
        assert_eq!(got.n_memory(), 0, "buffer {i}");
        assert_eq!(got.dts(), buffer.dts(), "buffer {i}");
        assert_eq!(got.duration(), buffer.duration(), "buffer {i}");
        assert_eq!(
            (got.offset(), got.offset_end()),
            (i as u64, i as u64 + 1),
            "buffer {i}"
        );
        assert_eq!(
            gstfdlink::memory::buffer_flag_bits(&got) & flags.bits(),
            flags.bits(),
            "buffer {i}"
        );
        assert_eq!(custom_n(&got), Some(i as i32), "buffer {i}");
    }
    let sink = link.sink_stats();
    assert_eq!(stat(&sink, "frames-empty"), 3, "{sink}");
    assert_eq!(stat(&sink, "frames-zero-copy"), 1, "{sink}");
    assert_eq!(stat(&sink, "frames-copied"), 1, "{sink}");
    assert_eq!(stat(&sink, "frames-sent"), 5, "{sink}");
    // One fd per buffer with bytes: the empty ones send none.
    assert_eq!(stat(&sink, "fds-sent"), 2, "{sink}");
    let src = link.src_stats();
    assert_eq!(stat(&src, "frames-empty"), 3, "{src}");
}

/// fakesrc's empty buffers (its default) through real processes: every one arrives, counted
/// as empty by both ends.
#[test]
fn fakesrc_empty_buffers_cross_between_processes() {
    let _serial = serial();
    let dir = TempDir::new("fakesrc-empty");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--stats-every",
        "50",
        "--wait-clients",
        "1",
        &format!("fakesrc num-buffers=30 ! fdlinksink socket-path={sock} sync=false"),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--stats-every",
        "50",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let sink = producer.latest_stats().expect("producer stats");
    let src = consumer.latest_stats().expect("consumer stats");
    assert_eq!(field(&sink, "frames-empty"), 30, "{sink}");
    assert_eq!(field(&sink, "frames-copied"), 0, "{sink}");
    assert_eq!(field(&src, "frames-empty"), 30, "{src}");
    assert_eq!(field(&src, "frames-received"), 30, "{src}");
}

fn sei_uuid() -> [u8; 16] {
    *b"fdlink-sei-uuid!"
}

/// Every meta kind fdlink carries on 1.22 on one buffer; their API names in the buffer's order.
fn buffer_with_every_meta() -> (gst::Buffer, glib::DateTime) {
    register("fdlink-test-every");
    let jam = gst::glib::DateTime::from_utc(2024, 1, 2, 3, 4, 5.5).unwrap();
    let mut buffer = gst::Buffer::from_slice(vec![1u8; 16]);
    {
        let b = buffer.get_mut().unwrap();
        let mut custom = gst::meta::CustomMeta::add(b, "fdlink-test-every").unwrap();
        let s = custom.mut_structure();
        s.set("int", 42i32);
        s.set("text", "a \"quoted\" text");
        s.set(
            "nested",
            gst::Structure::builder("inner").field("x", 1.5f64).build(),
        );
        s.set("bytes", glib::Bytes::from_static(b"\x00\x01\x02"));
        s.set("buffer", gst::Buffer::from_slice(vec![9u8; 100]));
        metas::add_audio_clipping_meta(b, gst::Format::Default, 312, 0);
        gst_video::video_meta::VideoSeiUserDataUnregisteredMeta::add(
            b,
            &sei_uuid(),
            b"x264 - core 164",
        );
        let mut roi = gst_video::VideoRegionOfInterestMeta::add(b, "face", (1, 2, 30, 40));
        roi.set_id(7);
        roi.set_parent_id(3);
        roi.add_param(
            gst::Structure::builder("detection")
                .field("confidence", 0.5f64)
                .build(),
        );
        let tc = gst_video::ValidVideoTimeCode::new(
            gst::Fraction::new(25, 1),
            Some(&jam),
            gst_video::VideoTimeCodeFlags::empty(),
            1,
            2,
            3,
            4,
            0,
        )
        .unwrap();
        gst_video::VideoTimeCodeMeta::add(b, &tc);
        gst::ReferenceTimestampMeta::add(
            b,
            &gst::Caps::new_empty_simple("timestamp/x-ntp"),
            gst::ClockTime::from_nseconds(123),
            gst::ClockTime::from_nseconds(456),
        );
        gst::ReferenceTimestampMeta::add(
            b,
            &gst::Caps::new_empty_simple("timestamp/x-unix"),
            gst::ClockTime::from_nseconds(789),
            None,
        );
        gst_video::VideoCaptionMeta::add(
            b,
            gst_video::VideoCaptionType::Cea708Cdp,
            &[0x96, 0x69, 0x01],
        );
    }
    (buffer, jam)
}

fn api_names(b: &gst::BufferRef) -> Vec<String> {
    b.iter_meta::<gst::Meta>()
        .map(|m| m.api().name().to_string())
        .collect()
}

use gst::glib;

/// Each meta kind crosses with every field equal, in the producer's order.
#[test]
fn every_meta_kind_crosses_with_its_fields() {
    let _serial = serial();
    let link = Link::new("every-meta", 1);
    let (buffer, jam) = buffer_with_every_meta();
    link.push(buffer.clone());
    let got = link.pull();
    assert_eq!(api_names(&got), api_names(&buffer));

    let custom = gst::meta::CustomMeta::from_buffer(&got, "fdlink-test-every").unwrap();
    let s = custom.structure();
    assert_eq!(s.get::<i32>("int").unwrap(), 42);
    assert_eq!(s.get::<String>("text").unwrap(), "a \"quoted\" text");
    let nested = s.get::<gst::Structure>("nested").unwrap();
    assert_eq!(nested.get::<f64>("x").unwrap(), 1.5);
    assert_eq!(&s.get::<glib::Bytes>("bytes").unwrap()[..], b"\x00\x01\x02");
    let inner = s.get::<gst::Buffer>("buffer").unwrap();
    assert_eq!(inner.map_readable().unwrap().as_slice(), &[9u8; 100][..]);

    assert_eq!(
        metas::audio_clipping_meta(&got),
        Some((gst::Format::Default, 312, 0))
    );
    let sei = got
        .meta::<gst_video::video_meta::VideoSeiUserDataUnregisteredMeta>()
        .unwrap();
    assert_eq!(sei.uuid(), sei_uuid());
    assert_eq!(sei.data(), b"x264 - core 164");
    let roi = got.meta::<gst_video::VideoRegionOfInterestMeta>().unwrap();
    assert_eq!(roi.roi_type(), "face");
    assert_eq!(roi.rect(), (1, 2, 30, 40));
    assert_eq!((roi.id(), roi.parent_id()), (7, 3));
    assert_eq!(
        roi.param("detection")
            .unwrap()
            .get::<f64>("confidence")
            .unwrap(),
        0.5
    );
    let tc = got.meta::<gst_video::VideoTimeCodeMeta>().unwrap().tc();
    assert_eq!(tc.fps(), gst::Fraction::new(25, 1));
    assert_eq!(
        (tc.hours(), tc.minutes(), tc.seconds(), tc.frames()),
        (1, 2, 3, 4)
    );
    assert_eq!(tc.field_count(), 0);
    assert_eq!(tc.latest_daily_jam().unwrap().to_unix(), jam.to_unix());
    assert_eq!(
        tc.latest_daily_jam().unwrap().microsecond(),
        jam.microsecond()
    );
    let refs: Vec<_> = got
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .map(|m| {
            (
                m.reference().structure(0).unwrap().name().to_string(),
                m.timestamp().nseconds(),
                m.duration().map(|d| d.nseconds()),
            )
        })
        .collect();
    let want: Vec<_> = buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .map(|m| {
            (
                m.reference().structure(0).unwrap().name().to_string(),
                m.timestamp().nseconds(),
                m.duration().map(|d| d.nseconds()),
            )
        })
        .collect();
    assert_eq!(refs, want);
    assert_eq!(refs.len(), 2);
    let caption = got.meta::<gst_video::VideoCaptionMeta>().unwrap();
    assert_eq!(
        caption.caption_type(),
        gst_video::VideoCaptionType::Cea708Cdp
    );
    assert_eq!(caption.data(), &[0x96, 0x69, 0x01]);
}

/// A meta the consumers could not parse (a custom structure past the 64 KiB structure text
/// limit) is left out by the producer, which goes on serving both consumers: the buffer
/// crosses with its other metas, and the next buffer with all of its own.
#[test]
fn a_meta_past_the_limits_is_left_out_and_the_producer_serves_on() {
    let _serial = serial();
    let link = Link::new("meta-too-big", 2);
    register("fdlink-test-huge");
    let mut buffer = gst::Buffer::from_slice(vec![0u8; 16]);
    {
        let b = buffer.get_mut().unwrap();
        let mut huge = gst::meta::CustomMeta::add(b, "fdlink-test-huge").unwrap();
        huge.mut_structure().set("text", "x".repeat(100_000));
        metas::add_audio_clipping_meta(b, gst::Format::Default, 1, 2);
    }
    link.push(buffer);
    let mut next = gst::Buffer::from_slice(vec![0u8; 16]);
    add_custom(next.get_mut().unwrap(), 5);
    link.push(next);
    for client in 0..2 {
        let got = link.pull_from(client);
        assert!(gst::meta::CustomMeta::from_buffer(&got, "fdlink-test-huge").is_err());
        assert_eq!(
            metas::audio_clipping_meta(&got),
            Some((gst::Format::Default, 1, 2))
        );
        assert_eq!(custom_n(&link.pull_from(client)), Some(5));
    }
}

/// 1 MB custom meta payloads on buffers without memory cross byte for byte, each in a memfd
/// beside its packet (the only fd an empty buffer sends); no fd stays open on either side.
#[test]
fn a_1mb_custom_meta_goes_by_memfd_without_leaking_fds() {
    let _serial = serial();
    let link = Link::new("big-meta", 1);
    register("fdlink-test-big");
    let frame = |i: u8| {
        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().unwrap();
        let mut meta = gst::meta::CustomMeta::add(b, "fdlink-test-big").unwrap();
        let payload: Vec<u8> = (0..1_000_000u32).map(|k| (k as u8) ^ i).collect();
        meta.mut_structure()
            .set("data", gst::Buffer::from_slice(payload));
        buffer
    };
    let check = |got: &gst::Buffer, i: u8| {
        let meta = gst::meta::CustomMeta::from_buffer(got, "fdlink-test-big").unwrap();
        let data = meta.structure().get::<gst::Buffer>("data").unwrap();
        let map = data.map_readable().unwrap();
        assert_eq!(map.size(), 1_000_000);
        assert!(
            map.iter().enumerate().all(|(k, &v)| v == (k as u8) ^ i),
            "payload {i} differs"
        );
    };
    // The first frame opens what stays open (the copy pool, the socket's buffers).
    link.push(frame(0));
    check(&link.pull(), 0);
    let before = fd_count(std::process::id() as i32);
    for i in 1..=20u8 {
        link.push(frame(i));
        let got = link.pull();
        check(&got, i);
    }
    // Released on the producer once the consumer dropped its last buffer.
    let deadline = Instant::now() + T;
    while stat(&link.sink_stats(), "releases") < 21 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let sink = link.sink_stats();
    assert_eq!(stat(&sink, "frames-empty"), 21, "{sink}");
    assert_eq!(
        stat(&sink, "fds-sent"),
        21,
        "one metas memfd per frame: {sink}"
    );
    assert_eq!(fd_count(std::process::id() as i32), before, "fds leaked");
}

/// A fake producer's connection to one real consumer: accepted, hellos exchanged, caps sent.
fn fake_producer(listener: &Listener) -> Connection {
    let conn = accept_as_producer(listener, T);
    conn.send_packet(&Packet::Caps("application/x-test".into()), Some(T))
        .unwrap();
    conn
}

/// A buffer packet without memory carrying `metas` inline.
fn empty_frame_with(metas: Vec<MetaEntry>) -> Vec<u8> {
    let header = BufferHeader {
        buffer_id: 1,
        pts: protocol::TIME_NONE,
        dts: protocol::TIME_NONE,
        duration: protocol::TIME_NONE,
        metas: Metas::Inline(metas),
        ..Default::default()
    };
    let mut out = Vec::new();
    Packet::<std::os::fd::BorrowedFd<'_>>::Buffer(header, Default::default())
        .encode(&mut out)
        .unwrap();
    out
}

/// A custom meta entry as the plugin writes it: name, structure text, no raw fields.
fn custom_entry(name: &str, text: &str) -> MetaEntry {
    let mut bytes = Vec::new();
    for s in [name, text] {
        bytes.extend_from_slice(&(s.len() as u32).to_le_bytes());
        bytes.extend_from_slice(s.as_bytes());
    }
    bytes.extend_from_slice(&0u32.to_le_bytes());
    MetaEntry {
        kind: metas::KIND_CUSTOM,
        bytes,
    }
}

/// A hostile producer sends metas past the limits: 65 metas on one buffer, a custom meta
/// whose structure nests past 32 levels, a metas memfd that is not sealed. The consumer (a real
/// process) refuses each packet with an error naming the limit, and tells the producer so.
#[test]
fn a_consumer_refuses_metas_past_the_limits_naming_them() {
    let _serial = serial();
    init_gst();
    // 64 metas, then the 65th spliced in by hand: the encoder refuses to write it.
    let mut many = empty_frame_with(vec![custom_entry("fdlink-test-many", "s"); 64]);
    let extra = {
        let mut e = Vec::new();
        let entry = custom_entry("fdlink-test-many", "s");
        e.extend_from_slice(&entry.kind.to_le_bytes());
        e.extend_from_slice(&[0, 0]);
        e.extend_from_slice(&(entry.bytes.len() as u32).to_le_bytes());
        e.extend_from_slice(&entry.bytes);
        e
    };
    let list_at = protocol::HEADER_SIZE + 72;
    many[list_at..list_at + 2].copy_from_slice(&65u16.to_le_bytes());
    many.extend_from_slice(&extra);
    let payload = (many.len() - protocol::HEADER_SIZE) as u32;
    many[4..8].copy_from_slice(&payload.to_le_bytes());

    let deep = format!("s, a={}1{}", "[".repeat(40), "]".repeat(40));
    let deep = empty_frame_with(vec![custom_entry("fdlink-test-deep", &deep)]);

    let cases: [(&str, Vec<u8>, &str); 2] = [
        ("many", many, "65 metas exceed the limit of 64"),
        ("deep", deep, "deeper than 32 levels"),
    ];
    for (tag, packet, want) in cases {
        let dir = TempDir::new(&format!("hostile-metas-{tag}"));
        let sock = dir.socket();
        let listener = Listener::bind(Path::new(&sock)).unwrap();
        let mut consumer = Peer::spawn(&[
            "consume",
            &format!("fdlinksrc socket-path={sock} ! fakesink"),
        ]);
        let conn = fake_producer(&listener);
        conn.send_timeout(&packet, &[], T).unwrap();
        let status = consumer.wait(T);
        assert!(!status.success(), "{tag}: the consumer took it");
        assert!(
            consumer.errors().contains(want),
            "{tag}: no {want:?} in: {}",
            consumer.errors()
        );
        // The producer is told why.
        let mut buf = vec![0u8; MAX_PACKET_SIZE];
        let mut told = None;
        while let Ok(Some(got)) = conn.recv_wait(&mut buf, None, Some(Duration::from_secs(2))) {
            if let Ok(Packet::Error(msg)) = Packet::decode(&buf[..got.len], got.fds) {
                told = Some(msg);
                break;
            }
        }
        let told = told.unwrap_or_default();
        assert!(told.contains(want), "{tag}: producer told {told:?}");
    }

    // A metas memfd without seals: refused like a frame's unsealed memfd.
    let dir = TempDir::new("hostile-metas-unsealed");
    let sock = dir.socket();
    let listener = Listener::bind(Path::new(&sock)).unwrap();
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    let conn = fake_producer(&listener);
    let mut list = Vec::new();
    protocol::encode_meta_list(&[custom_entry("fdlink-test-u", "s")], &mut list).unwrap();
    let file = memfd::MemfdOptions::default()
        .create("unsealed")
        .unwrap()
        .into_file();
    nix::sys::uio::pwrite(&file, &list, 0).unwrap();
    let header = BufferHeader {
        buffer_id: 1,
        metas: Metas::Memfd {
            size: list.len() as u64,
        },
        ..Default::default()
    };
    let mut out = Vec::new();
    Packet::Buffer(header, [file.as_fd()].into_iter().collect())
        .encode(&mut out)
        .unwrap();
    conn.send_timeout(&out, &[file.as_fd()], T).unwrap();
    assert!(!consumer.wait(T).success());
    assert!(
        consumer.errors().contains("not sealed against shrinking"),
        "{}",
        consumer.errors()
    );
}
