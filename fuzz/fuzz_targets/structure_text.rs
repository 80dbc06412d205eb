//! Peer text into GStreamer objects: each control packet a peer sends, decoded and turned into
//! events, queries, messages, caps and states by the plugin's own functions
//! (`gstfdlink::control`, `wire_event`, `session`), then read back the way the receiving
//! pipeline reads them (the `Debug` of each view calls GStreamer's `gst_*_parse_*`), and a
//! query re-serialized as its answer is.
//!
//! Input: byte 0 picks the packet type (caps, event, upstream event, query, query reply,
//! message, state); the rest is that packet's payload. The target adds the 8-byte header, so
//! mutations are not spent on its length field, and decodes it with `Packet::decode`.
//!
//! A type GStreamer defines (a protection event, an allocation query) rebuilt from a peer's
//! structure without the fields its parse function expects hands the reader a NULL where it
//! expects a buffer or caps: the read-back finds those.
//!
//! Everything runs on one worker thread with the 2 MiB stack the plugin's own threads have
//! (the hub's control thread, fdlinksrc's reader, the request threads): a structure that
//! overflows it crashes here as it would there. GLib's criticals are counted, not printed;
//! `FDLINK_FUZZ_FATAL_CRITICALS=1` makes them crashes.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{LazyLock, Mutex};

use fdlink::protocol::{HEADER_SIZE, Packet, PacketFds};
use gstfdlink::{control, drm_format, session, wire_event};
use libfuzzer_sys::fuzz_target;

/// The stack of a thread std::thread::spawn makes, as the plugin's threads have.
const WORKER_STACK: usize = 2 * 1024 * 1024;

/// Packet types a peer sends that carry text, and State (a byte, read as a GstState).
const TYPES: [u16; 7] = [2, 3, 7, 8, 9, 10, 11];

static CRITICALS: AtomicU64 = AtomicU64::new(0);

/// Whether rebuilt events and queries are read back through GStreamer's parse functions, as
/// the elements that get them do: on unless `FDLINK_FUZZ_READ_BACK=0`, which leaves the
/// plugin's own parsing, rebuilding and re-serializing only (while a known read-back crash
/// waits for its fix).
fn read_back() -> bool {
    static ON: LazyLock<bool> =
        LazyLock::new(|| std::env::var_os("FDLINK_FUZZ_READ_BACK").is_none_or(|v| v != "0"));
    *ON
}

struct Worker {
    inputs: SyncSender<Vec<u8>>,
    done: Receiver<()>,
}

static WORKER: LazyLock<Mutex<Worker>> = LazyLock::new(|| {
    let (inputs, input_rx) = sync_channel::<Vec<u8>>(0);
    let (done_tx, done) = sync_channel(0);
    std::thread::Builder::new()
        .name("fuzz-structure".into())
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let sink = setup();
            for input in input_rx {
                run(&input, &sink);
                done_tx.send(()).unwrap();
            }
        })
        .expect("spawn the worker");
    Mutex::new(Worker { inputs, done })
});

/// GStreamer, once; the element messages are posted from.
fn setup() -> gst::Element {
    let fatal = std::env::var_os("FDLINK_FUZZ_FATAL_CRITICALS").is_some_and(|v| v == "1");
    gst::glib::log_set_default_handler(move |domain, level, text| {
        if matches!(
            level,
            gst::glib::LogLevel::Critical | gst::glib::LogLevel::Error
        ) {
            CRITICALS.fetch_add(1, Ordering::Relaxed);
            if fatal {
                eprintln!("{domain:?} {level:?}: {text}");
                std::process::abort();
            }
        }
    });
    gst::init().expect("gst::init");
    gst::ElementFactory::make("fakesink")
        .name("victim")
        .build()
        .expect("fakesink")
}

/// Queries a side asks across and applies the peer's answer to.
fn asked_query(which: u32) -> gst::Query {
    match which % 10 {
        0 => gst::query::Position::new(gst::Format::Time).into(),
        1 => gst::query::Duration::new(gst::Format::Time).into(),
        2 => gst::query::Latency::new().into(),
        3 => gst::query::Seeking::new(gst::Format::Time).into(),
        4 => gst::query::Caps::new(None).into(),
        5 => gst::query::AcceptCaps::new(&gst::Caps::new_empty_simple("video/x-raw")).into(),
        6 => gst::query::Allocation::new(None, true).into(),
        7 => gst::query::Scheduling::new().into(),
        8 => gst::query::Segment::new(gst::Format::Time).into(),
        _ => gst::query::Uri::new().into(),
    }
}

fn run(input: &[u8], sink: &gst::Element) {
    let Some((&which, payload)) = input.split_first() else {
        return;
    };
    let ty = TYPES[which as usize % TYPES.len()];
    let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
    bytes.extend_from_slice(&ty.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(payload);
    let Ok(packet) = Packet::<i32>::decode(&bytes, PacketFds::new()) else {
        return;
    };
    match packet {
        // fdlinksrc: caps from the producer (stream.rs take_caps).
        Packet::Caps(text) => {
            if let Ok(caps) = text.parse::<gst::Caps>() {
                let _ = caps.to_string();
                let _ = drm_format::describe_caps(&caps);
                let _ = gst_video::VideoInfo::from_caps(&caps);
                let _ = format!("{caps:?}");
            }
        }
        // fdlinksrc (stream.rs handle_event): a segment, EOS or flush it treats itself; any
        // other event rebuilt and pushed downstream.
        Packet::Event { event, .. } => match wire_event::decode(&event) {
            Ok(wire_event::WireEvent::Other(_)) => {
                if let Some(ev) = control::event_from_packet(&event) {
                    let _ = (ev.is_serialized(), ev.is_sticky());
                    if read_back() {
                        let _ = format!("{:?}", ev.view());
                    }
                }
            }
            decoded => {
                let _ = format!("{decoded:?}");
            }
        },
        // fdlinksink: a consumer's upstream event, pushed upstream.
        Packet::UpstreamEvent(event) => {
            if let Some(ev) = control::event_from_packet(&event) {
                if read_back() {
                    let _ = format!("{:?}", ev.view());
                }
                let _ = control::event_to_packet(&ev, |_| {});
            }
        }
        // Either side: a query rebuilt, read by the element that answers it, and its
        // structure sent back as the reply (fdlinksink serve.rs, fdlinksrc peer.rs).
        Packet::Query(q) => {
            if let Some(query) = control::query_from_packet(&q) {
                if read_back() {
                    let _ = format!("{:?}", query.view());
                }
                let reply = query
                    .structure()
                    .map_or_else(String::new, |s| s.to_string());
                assert!(reply.len() < 64 * payload.len() + 4096, "reply amplified");
            }
        }
        // Either side: the peer's answer applied to the query this side asked.
        Packet::QueryReply(reply) => {
            let mut query = asked_query(reply.id);
            if control::apply_reply(query.get_mut().unwrap(), &reply) && read_back() {
                let _ = format!("{:?}", query.view());
            }
        }
        // Either side: a message rebuilt for this side's bus, and an error as a warning.
        Packet::Message(m) => {
            if let Some(msg) = control::message_from_packet(&m, sink, "consumer 1 (pid 2)") {
                let _ = format!("{:?}", msg.view());
                let _ = control::message_to_packet(&msg);
            }
            if let Some(msg) = session::error_as_warning(&m, sink, "consumer 1 (pid 2)") {
                let _ = format!("{:?}", msg.view());
            }
        }
        // Either side: the peer's state, as each mode at each end takes it.
        Packet::State(st) => {
            for mode in [session::Mode::Independent, session::Mode::Follow] {
                for end in [session::End::Producer, session::End::Consumer] {
                    let _ = session::follow(mode, &st, end);
                }
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let worker = WORKER.lock().unwrap();
    worker.inputs.send(data.to_vec()).unwrap();
    worker.done.recv().unwrap();
});
