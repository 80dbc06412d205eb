//! The hand-made producers: `produce-pattern` (memfd pool) and `produce-dmabuf` (kernel
//! dmabufs), each an appsrc into an fdlinksink.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use crate::dmabuf_sources;
use crate::probes::add_probe;
use crate::report::{StatsExtra, gap_meter, print_line};
use crate::run::run;
use crate::{Opts, init, usage};

/// NV12 at 30 fps, as the hand-made producers push it.
fn nv12_caps(width: u32, height: u32) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "NV12")
        .field("width", width as i32)
        .field("height", height as i32)
        .field("framerate", gst::Fraction::new(30, 1))
        .build()
}

/// `appsrc ! fdlinksink` for the hand-made producers: as fast as the consumer takes frames,
/// starting when the first consumer is in.
fn appsrc_into_fdlinksink(
    caps: &gst::Caps,
    socket: &str,
) -> (gst::Pipeline, gst_app::AppSrc, gst::Element) {
    let pipeline = gst::Pipeline::new();
    let appsrc = gst_app::AppSrc::builder()
        .caps(caps)
        .format(gst::Format::Time)
        .build();
    let sink = gst::ElementFactory::make("fdlinksink")
        .property("socket-path", socket)
        .property("sync", false)
        .property("wait-for-connection", true)
        .build()
        .expect("fdlinksink");
    pipeline
        .add_many([appsrc.upcast_ref(), &sink])
        .expect("add");
    appsrc.link(&sink).expect("link");
    (pipeline, appsrc, sink)
}

/// A producer whose frames come from a small memfd pool (`--pool-max` buffers), each filled
/// with `offset % 251`: if a frame were reused while a consumer still held it, the consumer's
/// pattern check would see it.
pub(crate) fn produce_pattern(o: &Opts) -> i32 {
    init();
    let socket = o.socket.clone().unwrap_or_else(|| usage());
    let (w, h) = o.size;
    let caps = nv12_caps(w, h);
    let info = gst_video::VideoInfo::from_caps(&caps).expect("valid caps");
    let pool = gstfdlink::memory::MemfdBufferPool::new_configured(
        &caps,
        info.size() as u32,
        if o.pool_min > 0 {
            o.pool_min
        } else {
            o.pool_max
        },
        o.pool_max,
        true,
    )
    .expect("pool configures");
    let (pipeline, appsrc, sink) = appsrc_into_fdlinksink(&caps, &socket);
    for (k, v) in &o.sink_props {
        sink.set_property_from_str(k, v);
    }
    if o.live {
        appsrc.set_is_live(true);
    }
    let frames = o.frames;
    let acquired = Arc::new(AtomicU64::new(0));
    let pool_cb = Mutex::new(pool);
    let counter = acquired.clone();
    // Acquires that had to wait for a buffer to come back: the pool ran dry.
    let waits = Arc::new(Mutex::new((0u64, Duration::ZERO)));
    let waits_cb = waits.clone();
    appsrc.set_callbacks(
        gst_app::AppSrcCallbacks::builder()
            .need_data(move |src, _| {
                let i = counter.load(Ordering::SeqCst);
                if i >= frames {
                    let _ = src.end_of_stream();
                    return;
                }
                // Blocks while all pool buffers are held by consumers.
                let asked = Instant::now();
                let Ok(mut buffer) = pool_cb.lock().unwrap().acquire_buffer(None) else {
                    return;
                };
                let waited = asked.elapsed();
                if waited > Duration::from_millis(5) {
                    let mut w = waits_cb.lock().unwrap();
                    w.0 += 1;
                    w.1 = w.1.max(waited);
                }
                {
                    let b = buffer.get_mut().expect("pool buffer is writable");
                    b.set_offset(i);
                    b.set_pts(gst::ClockTime::from_mseconds(i * 33));
                    let mut map = b.map_writable().expect("maps");
                    map.as_mut_slice().fill((i % 251) as u8);
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = src.push_buffer(buffer);
            })
            .build(),
    );
    let mut extra = Vec::new();
    if o.gaps {
        extra.push(gap_meter(
            &sink.static_pad("sink").expect("fdlinksink has a sink pad"),
        ));
    }
    let waits_stats = waits.clone();
    extra.push(Arc::new(move |s: &mut gst::StructureRef| {
        let (n, longest) = *waits_stats.lock().unwrap();
        s.set("pool-waits", n);
        s.set("pool-wait-longest-us", longest.as_micros() as u64);
    }) as StatsExtra);
    let o2 = Opts {
        stats_every_ms: o.stats_every_ms,
        wait_clients: o.wait_clients,
        eos_file: o.eos_file.clone(),
        ..Default::default()
    };
    let code = run(pipeline, Some(sink), &o2, &extra);
    let (n, longest) = *waits.lock().unwrap();
    print_line(&format!(
        "pool-waits {n} longest-us {}",
        longest.as_micros()
    ));
    code
}

/// Frames in real kernel dmabufs (see the module doc), through appsrc into fdlinksink.
pub(crate) fn produce_dmabuf(o: &Opts) -> i32 {
    use dmabuf_sources::{Allocator, Source};
    init();
    let socket = o.socket.clone().unwrap_or_else(|| usage());
    let source = o
        .source
        .as_deref()
        .and_then(Source::parse)
        .unwrap_or_else(|| usage());
    let layout = o.layout.clone().unwrap_or_else(|| "single".into());
    let alloc = match Allocator::open(source) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: cannot open {source:?} allocator: {e}");
            return 1;
        }
    };
    let (w, h) = (o.size.0 as usize, o.size.1 as usize);
    // Padded stride, so strides that get lost or defaulted on the way show up.
    let stride = (w + 64).div_ceil(64) * 64;
    let (y_size, uv_size) = (stride * h, stride * h.div_ceil(2));
    // Each frame: the buffer, plus for CPU filling a dup of every dmabuf with its size and
    // the ranges the buffer's memories cover.
    type Fill = Vec<(OwnedFd, usize, Vec<(usize, usize)>)>;
    let make_buffer = || -> std::io::Result<(gst::Buffer, Fill)> {
        let mut buffer = gst::Buffer::new();
        let b = buffer.get_mut().expect("new buffer");
        let wrap = |fd: &OwnedFd, size| {
            gstfdlink::memory::wrap_dmabuf(fd.try_clone()?, size).map_err(std::io::Error::other)
        };
        let mut fill = Fill::new();
        match layout.as_str() {
            "single" => {
                let (fd, size) = alloc.alloc(y_size + uv_size)?;
                let mut m = wrap(&fd, size)?;
                m.get_mut().unwrap().resize(0..y_size + uv_size);
                b.append_memory(m);
                fill.push((fd, size, vec![(0, y_size + uv_size)]));
            }
            "offsets" => {
                // Y at 4096, UV one page after Y: nonzero memory offsets on one fd.
                let uv_at = (4096 + y_size).div_ceil(4096) * 4096 + 4096;
                let (fd, size) = alloc.alloc(uv_at + uv_size)?;
                let base = wrap(&fd, size)?;
                b.append_memory(base.share(4096..4096 + y_size));
                b.append_memory(base.share(uv_at..uv_at + uv_size));
                fill.push((fd, size, vec![(4096, y_size), (uv_at, uv_size)]));
            }
            "planes" => {
                for plane in [y_size, uv_size] {
                    let (fd, size) = alloc.alloc(plane)?;
                    let mut m = wrap(&fd, size)?;
                    m.get_mut().unwrap().resize(0..plane);
                    b.append_memory(m);
                    fill.push((fd, size, vec![(0, plane)]));
                }
            }
            _ => usage(),
        }
        gst_video::VideoMeta::add_full(
            b,
            gst_video::VideoFrameFlags::empty(),
            gst_video::VideoFormat::Nv12,
            w as u32,
            h as u32,
            &[0, y_size],
            &[stride as i32, stride as i32],
        )
        .map_err(std::io::Error::other)?;
        Ok((buffer, fill))
    };
    let mut frames_pool = Vec::new();
    for _ in 0..o.pool_max {
        match make_buffer() {
            Ok(b) => frames_pool.push(b),
            Err(e) => {
                eprintln!("error: cannot allocate a {source:?} dmabuf: {e}");
                return 1;
            }
        }
    }
    let caps = nv12_caps(w as u32, h as u32);
    let (pipeline, appsrc, sink) = appsrc_into_fdlinksink(&caps, &socket);
    if o.frames_log {
        add_probe(pipeline.upcast_ref(), &sink, o);
    }
    let frames = o.frames;
    let next = Mutex::new((0u64, frames_pool));
    appsrc.set_callbacks(
        gst_app::AppSrcCallbacks::builder()
            .need_data(move |src, _| {
                let mut guard = next.lock().unwrap();
                let (i, pool) = &mut *guard;
                if *i >= frames {
                    let _ = src.end_of_stream();
                    return;
                }
                // A pool buffer is free when nobody but us holds it or its memories: basesrc
                // shallow-copies some buffers (DISCONT), and the copy keeps the memories, as
                // GstBufferPool itself checks.
                let deadline = Instant::now() + Duration::from_secs(20);
                let slot = loop {
                    if let Some(slot) = pool
                        .iter()
                        .position(|(b, _)| b.is_writable() && b.is_all_memory_writable())
                    {
                        break slot;
                    }
                    if Instant::now() > deadline {
                        eprintln!("error: no dmabuf came back within 20 s");
                        let _ = src.end_of_stream();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                let byte = (*i % 251) as u8;
                let (buffer, fill) = &mut pool[slot];
                for (fd, size, ranges) in fill.iter() {
                    if let Err(e) = dmabuf_sources::fill(fd.as_fd(), *size, ranges, byte) {
                        eprintln!("error: cannot write into the dmabuf: {e}");
                        let _ = src.end_of_stream();
                        return;
                    }
                }
                {
                    let b = buffer.get_mut().expect("free buffer");
                    b.set_offset(*i);
                    b.set_pts(gst::ClockTime::from_mseconds(*i * 33));
                }
                *i += 1;
                let _ = src.push_buffer(buffer.clone());
            })
            .build(),
    );
    let o2 = Opts {
        stats_every_ms: o.stats_every_ms,
        ..Default::default()
    };
    run(pipeline, Some(sink), &o2, &[])
}
