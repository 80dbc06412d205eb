//! GStreamer's own tests of unixfdsink/unixfdsrc (gst-plugins-bad,
//! tests/check/elements/unixfd.c: videotestsrc, segment, big_payload), ported to
//! fdlinksink/fdlinksrc: the same pipelines and assertions, both pipelines in the test process
//! as upstream has them. Where fdlink differs on purpose the same fact is asserted in its
//! terms, and a comment says so. Then cases of the same kind for the rest of what a buffer
//! carries: flags, timestamps, segments.

mod common;

use std::time::Duration;

use common::*;
use gst::prelude::*;

const T: Duration = Duration::from_secs(30);

/// GStreamer with the plugin registered in this process, once.
fn init() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    init_gst();
    REGISTERED.call_once(|| gstfdlink::plugin_register_static().unwrap());
}

/// Upstream's `wait_preroll`: PLAYING, then the state change completes.
fn wait_preroll(pipeline: &gst::Element) {
    assert_ne!(
        pipeline.set_state(gst::State::Playing),
        Err(gst::StateChangeError)
    );
    let (result, _, _) = pipeline.state(gst::ClockTime::NONE);
    assert_eq!(result, Ok(gst::StateChangeSuccess::Success));
}

fn launch(description: &str) -> gst::Element {
    gst::parse::launch(description).unwrap()
}

fn by_name<T: IsA<gst::Element>>(pipeline: &gst::Element, name: &str) -> T {
    pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name(name)
        .unwrap()
        .downcast::<T>()
        .unwrap()
}

fn stop(pipeline: &gst::Element) {
    assert_eq!(
        pipeline.set_state(gst::State::Null),
        Ok(gst::StateChangeSuccess::Success)
    );
}

/// The sample's buffer's running time in the sample's segment.
fn running_time(sample: &gst::Sample) -> gst::ClockTime {
    let segment = sample.segment().unwrap();
    let segment = segment.downcast_ref::<gst::ClockTime>().unwrap();
    segment
        .to_running_time(sample.buffer().unwrap().pts().unwrap())
        .unwrap()
}

/// test_unixfd_videotestsrc: a custom meta on every buffer; a client prerolls, goes to READY
/// and back, a second client prerolls and its last sample has the meta; the socket file is
/// gone at the end.
#[test]
fn videotestsrc() {
    init();
    gst::meta::CustomMeta::register("unix-fd-custom-meta", &[]);
    let dir = TempDir::new("unixfd-videotestsrc");
    let socket = dir.socket();
    let service = launch(&format!(
        "videotestsrc name=src ! fdlinksink socket-path={socket}"
    ));
    let src: gst::Element = by_name(&service, "src");
    src.static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, |_, info| {
            if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
                let b = buffer.make_mut();
                let mut meta = gst::meta::CustomMeta::add(b, "unix-fd-custom-meta").unwrap();
                meta.mut_structure().set("field", 42i32);
            }
            gst::PadProbeReturn::Ok
        });
    wait_preroll(&service);

    let client = format!("fdlinksrc socket-path={socket} ! fakesink name=sink");
    let client_1 = launch(&client);
    wait_preroll(&client_1);
    // Disconnect, reconnect.
    assert_eq!(
        client_1.set_state(gst::State::Ready),
        Ok(gst::StateChangeSuccess::Success)
    );
    wait_preroll(&client_1);

    let client_2 = launch(&client);
    wait_preroll(&client_2);
    let sink: gst::Element = by_name(&client_2, "sink");
    // Upstream reads last-sample right after the preroll; fdlinksrc is a live source, whose
    // sink prerolls without a buffer (NO_PREROLL), so the first one is waited for.
    let deadline = std::time::Instant::now() + T;
    let sample = loop {
        if let Some(sample) = sink.property::<Option<gst::Sample>>("last-sample") {
            break sample;
        }
        assert!(std::time::Instant::now() < deadline, "no sample");
        std::thread::sleep(Duration::from_millis(10));
    };
    let buffer = sample.buffer().unwrap();
    let meta = gst::meta::CustomMeta::from_buffer(buffer, "unix-fd-custom-meta")
        .expect("the custom meta crossed");
    assert_eq!(meta.structure().get::<i32>("field").unwrap(), 42);

    stop(&client_1);
    stop(&client_2);
    stop(&service);
    assert!(!std::path::Path::new(&socket).exists());
}

/// Upstream's segment and big_payload service and client: appsrc (with `appsrc_props`, upstream's
/// are format=time) into an
/// fdlinksink that does not sync and waits for its consumer, an appsink that does not sync.
fn appsrc_to_appsink(tag: &str, appsrc_props: &str) -> (gst::Element, gst::Element, TempDir) {
    let dir = TempDir::new(tag);
    let socket = dir.socket();
    let service = launch(&format!(
        "appsrc name=src {appsrc_props} ! fdlinksink name=fdsink socket-path={socket} \
         sync=false async=false wait-for-connection=true"
    ));
    assert_eq!(
        service.set_state(gst::State::Playing),
        Ok(gst::StateChangeSuccess::Success)
    );
    let client = launch(&format!(
        "fdlinksrc socket-path={socket} ! appsink name=sink sync=false async=false"
    ));
    assert_ne!(
        client.set_state(gst::State::Playing),
        Err(gst::StateChangeError)
    );
    (service, client, dir)
}

fn push(
    service: &gst::Element,
    buffer: gst::Buffer,
    segment: &gst::FormattedSegment<gst::ClockTime>,
) {
    let appsrc: gst_app::AppSrc = by_name(service, "src");
    let caps = gst::Caps::new_empty_simple("video/x-raw");
    let sample = gst::Sample::builder()
        .buffer(&buffer)
        .caps(&caps)
        .segment(segment)
        .build();
    appsrc.push_sample(&sample).unwrap();
}

fn pull(client: &gst::Element) -> gst::Sample {
    let appsink: gst_app::AppSink = by_name(client, "sink");
    appsink
        .try_pull_sample(gst::ClockTime::from_seconds(T.as_secs()))
        .expect("a sample")
}

fn buffer_at(pts: gst::ClockTime, size: usize) -> gst::Buffer {
    let mut buffer = if size == 0 {
        gst::Buffer::new()
    } else {
        gst::Buffer::with_size(size).unwrap()
    };
    buffer.get_mut().unwrap().set_pts(pts);
    buffer
}

/// test_unixfd_segment with buffers of `size` bytes: PTS 30 s in a segment with base 0,
/// then PTS 1 s in one with base 30 s: 1 s apart in running time.
fn segment_change(size: usize) {
    init();
    let (service, client, _dir) = appsrc_to_appsink(
        &format!("unixfd-segment-{size}"),
        "format=time handle-segment-change=true",
    );
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    push(
        &service,
        buffer_at(gst::ClockTime::from_seconds(30), size),
        &segment,
    );
    let first = pull(&client);
    segment.set_base(gst::ClockTime::from_seconds(30));
    push(
        &service,
        buffer_at(gst::ClockTime::from_seconds(1), size),
        &segment,
    );
    let second = pull(&client);
    // Upstream asserts the PTS 1 s apart: unixfdsrc rewrites timestamps into its own
    // running time. fdlink keeps the producer's timestamps and carries the offset in the
    // segment, so the same fact is the running times, and the PTS are the producer's.
    assert_eq!(
        running_time(&second) - running_time(&first),
        gst::ClockTime::SECOND
    );
    assert_eq!(
        first.buffer().unwrap().pts(),
        Some(gst::ClockTime::from_seconds(30))
    );
    assert_eq!(
        second.buffer().unwrap().pts(),
        Some(gst::ClockTime::from_seconds(1))
    );
    assert_eq!(second.buffer().unwrap().size(), size);
    stop(&client);
    stop(&service);
}

/// test_unixfd_segment, as upstream has it: empty buffers.
#[test]
fn segment() {
    segment_change(0);
}

/// The same with 16-byte buffers (memory crosses).
#[test]
fn segment_with_payload() {
    segment_change(16);
}

/// test_unixfd_big_payload: an empty buffer whose custom meta holds a 1 MB buffer of 0x42;
/// the consumer's copy of it is byte for byte the same.
#[test]
fn big_payload() {
    init();
    let (service, client, _dir) = appsrc_to_appsink("unixfd-big-payload", "format=time");
    let data_size = 1_000_000;
    let indata = gst::Buffer::from_slice(vec![0x42u8; data_size]);
    gst::meta::CustomMeta::register_simple("test_unixfd_big_payload");
    let mut buffer = gst::Buffer::new();
    {
        let b = buffer.get_mut().unwrap();
        let mut meta = gst::meta::CustomMeta::add(b, "test_unixfd_big_payload").unwrap();
        meta.mut_structure().set("data", &indata);
    }
    push(&service, buffer, &gst::FormattedSegment::new());
    let sample = pull(&client);
    let meta =
        gst::meta::CustomMeta::from_buffer(sample.buffer().unwrap(), "test_unixfd_big_payload")
            .expect("the custom meta crossed");
    let outdata = meta.structure().get::<gst::Buffer>("data").unwrap();
    let (inmap, outmap) = (
        indata.map_readable().unwrap(),
        outdata.map_readable().unwrap(),
    );
    assert_eq!(inmap.size(), outmap.size());
    assert!(inmap.as_slice() == outmap.as_slice());
    drop((inmap, outmap));
    stop(&client);
    stop(&service);
}

/// What fdlinksink was given, buffer by buffer.
#[derive(Debug, Clone, Copy)]
struct Given {
    flags: u32,
    pts: Option<gst::ClockTime>,
    dts: Option<gst::ClockTime>,
}

/// Records what the service's fdlinksink (named `fdsink`) is given.
fn record_given(service: &gst::Element) -> std::sync::Arc<std::sync::Mutex<Vec<Given>>> {
    let given = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let fdsink: gst::Element = by_name(service, "fdsink");
    let record = given.clone();
    fdsink
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                record.lock().unwrap().push(Given {
                    flags: gstfdlink::memory::buffer_flag_bits(buffer),
                    pts: buffer.pts(),
                    dts: buffer.dts(),
                });
            }
            gst::PadProbeReturn::Ok
        });
    given
}

/// Every flag crosses as it is, video flags past GST_BUFFER_FLAG_LAST included, and none is
/// added: no TAG_MEMORY for the memories the consumer appended, no DISCONT BaseSrc would set;
/// PTS and DTS NONE stay NONE; duration and offsets are the producer's.
#[test]
fn flags_and_timestamps_cross_as_they_are() {
    init();
    let (service, client, _dir) = appsrc_to_appsink("unixfd-flags", "format=time");
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    // appsrc (a BaseSrc) marks its first buffer DISCONT.
    let given = record_given(&service);
    let tff = gst_video::VideoBufferFlags::TFF.bits();
    let cases: [(u32, Option<u64>, Option<u64>); 4] = [
        (tff, None, None),
        (
            gst::BufferFlags::DELTA_UNIT.bits() | gst_video::VideoBufferFlags::INTERLACED.bits(),
            Some(40),
            None,
        ),
        (
            gst::BufferFlags::DISCONT.bits() | gst::BufferFlags::HEADER.bits(),
            Some(80),
            Some(70),
        ),
        (0, Some(120), Some(120)),
    ];
    for (i, (flags, pts, dts)) in cases.iter().enumerate() {
        let mut buffer = gst::Buffer::with_size(16).unwrap();
        {
            let b = buffer.get_mut().unwrap();
            gstfdlink::memory::set_buffer_flag_bits(b, *flags);
            b.set_pts(pts.map(gst::ClockTime::from_mseconds));
            b.set_dts(dts.map(gst::ClockTime::from_mseconds));
            b.set_duration(gst::ClockTime::from_mseconds(40));
            b.set_offset(i as u64 * 10);
            b.set_offset_end(i as u64 * 10 + 10);
        }
        push(&service, buffer, &segment);
        let sample = pull(&client);
        let got = sample.buffer().unwrap();
        let sent = given.lock().unwrap()[i].flags;
        let discont = gst::BufferFlags::DISCONT.bits();
        assert_eq!(
            sent & !discont,
            flags & !discont,
            "buffer {i}: given {sent:#x}"
        );
        assert_eq!(
            gstfdlink::memory::buffer_flag_bits(got),
            sent,
            "buffer {i}: flags {:#x}, sent {sent:#x}",
            gstfdlink::memory::buffer_flag_bits(got)
        );
        assert_eq!(
            got.pts(),
            pts.map(gst::ClockTime::from_mseconds),
            "buffer {i}"
        );
        assert_eq!(
            got.dts(),
            dts.map(gst::ClockTime::from_mseconds),
            "buffer {i}"
        );
        assert_eq!(got.duration(), Some(gst::ClockTime::from_mseconds(40)));
        assert_eq!(
            (got.offset(), got.offset_end()),
            (i as u64 * 10, i as u64 * 10 + 10)
        );
    }
    stop(&client);
    stop(&service);
}

/// A BYTES segment (a file read by filesrc) stays BYTES, with its buffers' offsets.
#[test]
fn a_bytes_segment_stays_bytes() {
    init();
    let (service, client, _dir) = appsrc_to_appsink("unixfd-bytes", "format=bytes");
    let given = record_given(&service);
    let appsrc: gst_app::AppSrc = by_name(&service, "src");
    for i in 0..3u64 {
        let mut buffer = gst::Buffer::with_size(100).unwrap();
        buffer.get_mut().unwrap().set_offset(i * 100);
        appsrc.push_buffer(buffer).unwrap();
    }
    for i in 0..3u64 {
        let sample = pull(&client);
        let segment = sample.segment().unwrap();
        assert_eq!(segment.format(), gst::Format::Bytes, "{segment:?}");
        let buffer = sample.buffer().unwrap();
        assert_eq!(buffer.offset(), i * 100);
        // BaseSrc gives the first buffer of a stream at offset 0 a DTS of 0 (and the same
        // PTS); the others have none.
        let sent = given.lock().unwrap()[i as usize];
        assert_eq!((buffer.pts(), buffer.dts()), (sent.pts, sent.dts));
        assert_eq!(gstfdlink::memory::buffer_flag_bits(buffer), sent.flags);
    }
    stop(&client);
    stop(&service);
}

/// A GRAY8 4x2 frame with a GstVideoMeta of row stride `stride` (4 is the default); rows are
/// 1 2 3 4 and 5 6 7 8, padding 0xee.
fn gray_frame(stride: usize) -> gst::Buffer {
    let mut data = vec![0xeeu8; stride * 2];
    data[..4].copy_from_slice(&[1, 2, 3, 4]);
    data[stride..stride + 4].copy_from_slice(&[5, 6, 7, 8]);
    let mut buffer = gst::Buffer::from_mut_slice(data);
    gst_video::VideoMeta::add_full(
        buffer.get_mut().unwrap(),
        gst_video::VideoFrameFlags::empty(),
        gst_video::VideoFormat::Gray8,
        4,
        2,
        &[0],
        &[stride as i32],
    )
    .unwrap();
    buffer
}

/// A downstream that answers the allocation query without GstVideoMeta support gets frames
/// it can read from the caps alone: a default layout without the meta (as one process would
/// have given it), a padded one copied into the default layout. (appsink answers no
/// allocation query; its pad here answers one, without metas.)
#[test]
fn a_downstream_without_video_meta_gets_the_default_layout() {
    init();
    let (service, client, _dir) = appsrc_to_appsink("unixfd-layout", "format=time");
    let appsink: gst::Element = by_name(&client, "sink");
    appsink.static_pad("sink").unwrap().add_probe(
        gst::PadProbeType::QUERY_DOWNSTREAM,
        |_, info| match info.query().map(|q| q.type_()) {
            Some(gst::QueryType::Allocation) => gst::PadProbeReturn::Handled,
            _ => gst::PadProbeReturn::Ok,
        },
    );
    let appsrc: gst_app::AppSrc = by_name(&service, "src");
    appsrc.set_caps(Some(
        &"video/x-raw,format=GRAY8,width=4,height=2,framerate=30/1"
            .parse::<gst::Caps>()
            .unwrap(),
    ));
    for stride in [4, 8] {
        appsrc.push_buffer(gray_frame(stride)).unwrap();
        let sample = pull(&client);
        let buffer = sample.buffer().unwrap();
        assert!(
            buffer.meta::<gst_video::VideoMeta>().is_none(),
            "stride {stride}: the meta is left on"
        );
        let map = buffer.map_readable().unwrap();
        assert_eq!(map.as_slice(), &[1, 2, 3, 4, 5, 6, 7, 8], "stride {stride}");
    }
    stop(&client);
    stop(&service);
}

/// Out-of-band custom events cross, as the serialized ones do.
#[test]
fn out_of_band_events_cross() {
    init();
    let (service, client, _dir) = appsrc_to_appsink("unixfd-oob", "format=time");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let appsink: gst::Element = by_name(&client, "sink");
    appsink.static_pad("sink").unwrap().add_probe(
        gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            if let Some(ev) = info.event()
                && let Some(s) = ev.structure()
                && s.name().starts_with("fdlink-test")
            {
                record
                    .lock()
                    .unwrap()
                    .push((ev.type_(), s.name().to_string()));
            }
            gst::PadProbeReturn::Ok
        },
    );
    let appsrc: gst_app::AppSrc = by_name(&service, "src");
    // A frame first: the link is up and the consumer streams. (A frame at running time 0
    // would be older than the consumer's start, which came later, and dropped as late.)
    push(
        &service,
        buffer_at(gst::ClockTime::SECOND, 16),
        &gst::FormattedSegment::new(),
    );
    pull(&client);
    let oob = gst::Structure::new_empty("fdlink-test-oob");
    assert!(appsrc.send_event(gst::event::CustomDownstreamOob::new(oob)));
    let serialized = gst::Structure::new_empty("fdlink-test-serialized");
    assert!(appsrc.send_event(gst::event::CustomDownstream::new(serialized)));
    push(
        &service,
        buffer_at(gst::ClockTime::from_mseconds(1040), 16),
        &gst::FormattedSegment::new(),
    );
    pull(&client);
    let deadline = std::time::Instant::now() + T;
    while seen.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&(
            gst::EventType::CustomDownstreamOob,
            "fdlink-test-oob".into()
        )),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(
            gst::EventType::CustomDownstream,
            "fdlink-test-serialized".into()
        )),
        "{seen:?}"
    );
    stop(&client);
    stop(&service);
}
