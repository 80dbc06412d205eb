//! `app-consume`: a consumer made of the core crate's `fdlink::consumer` alone (what a program
//! that is not a pipeline uses), printing the same `frame` lines as `consume --frames-log`, so
//! the hardware matrix checks it as it checks fdlinksrc: each frame mapped read-only (dmabufs
//! with DMA_BUF_IOCTL_SYNC), its CRC-32, and the kernel objects it arrived as.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use fdlink::consumer::{Consumer, ConsumerError};

use crate::dmabuf_sources::exporter;
use crate::report::print_line;
use crate::{Opts, init};

/// How long it waits for the producer to listen.
const CONNECT_WAIT: Duration = Duration::from_secs(60);

pub(crate) fn app_consume(o: &Opts) -> i32 {
    let Some(path) = o.socket.as_deref() else {
        eprintln!("error: app-consume needs --socket PATH");
        return 2;
    };
    // GStreamer only to name the caps' layout in the frame lines; the fd baseline for the
    // `leaked-fds` line.
    init();
    let deadline = Instant::now() + CONNECT_WAIT;
    let mut consumer = loop {
        match Consumer::connect(Path::new(path)) {
            Ok(c) => break c,
            Err(ConsumerError::Connect { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    };
    let mut last_caps = String::new();
    loop {
        let frame = match consumer.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        };
        // The caps each frame came in, as `consume --events-log` logs its caps events.
        if o.events_log && frame.caps() != last_caps {
            last_caps = frame.caps().to_string();
            print_line(&format!("event caps {last_caps}"));
        }
        let mapped = match frame.map() {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: cannot map a frame: {e}");
                return 1;
            }
        };
        if !o.frames_log {
            continue;
        }
        let mut crc = crc32fast::Hasher::new();
        for bytes in mapped.memories() {
            crc.update(bytes);
        }
        let files: Vec<String> = frame
            .memories()
            .iter()
            .filter_map(|m| {
                let (dev, ino) = fdlink::fdkind::file_identity(m.fd()).ok()?;
                let exp = exporter(m.fd().as_fd().as_raw_fd()).unwrap_or_else(|| "file".into());
                Some(format!("{dev}:{ino}:{exp}"))
            })
            .collect();
        print_line(&format!(
            "frame offset={} pts={} size={} crc={:08x} files={} layout={} mems={} delta={}",
            frame.offset().unwrap_or(u64::MAX),
            frame.pts().map_or(-1i64, |t| t.as_nanos() as i64),
            mapped.len(),
            crc.finalize(),
            if files.is_empty() {
                "-".into()
            } else {
                files.join(",")
            },
            layout_text(&frame),
            frame.memories().len(),
            u8::from(!frame.is_keyframe())
        ));
    }
}

/// The frame's layout as `consume --frames-log` prints it: the producer's video layout, or
/// without one the default layout of the caps; `-` for other caps.
fn layout_text(frame: &fdlink::consumer::Frame) -> String {
    use gst::glib::translate::FromGlib;
    let text = crate::probes::layout_line;
    if let Some(v) = frame.video() {
        let n = (v.n_planes as usize).min(v.offsets.len());
        // SAFETY: from_glib maps unknown values to VideoFormat::__Unknown.
        let format = unsafe { gst_video::VideoFormat::from_glib(v.format as i32) };
        let offsets: Vec<usize> = v.offsets[..n].iter().map(|&o| o as usize).collect();
        return text(format, v.width, v.height, &offsets, &v.strides[..n]);
    }
    let Some(info) = frame
        .caps()
        .parse::<gst::Caps>()
        .ok()
        .and_then(|c| gst_video::VideoInfo::from_caps(&c).ok())
    else {
        return "-".into();
    };
    text(
        info.format(),
        info.width(),
        info.height(),
        info.offset(),
        info.stride(),
    )
}
