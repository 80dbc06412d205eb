//! `fdlink-app`: the fdlink producer (`fdlinksink`) and a consumer made of
//! `fdlink::consumer` alone, as a program that is not a pipeline takes frames: each frame
//! mapped read-only, its header read, the frame dropped (released).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fdlink::consumer::{Consumer, ConsumerError, Poll};

use crate::record::{Record, read_header};
use crate::{Args, wait_for_path};

pub(crate) fn consume_app(a: &Args) -> String {
    let deadline = Instant::now() + a.timeout;
    if !wait_for_path(&a.path, deadline) {
        panic!("{} never appeared", a.path.display());
    }
    let mut consumer = loop {
        match Consumer::connect(Path::new(&a.path)) {
            Ok(c) => break c,
            Err(ConsumerError::Connect { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    std::fs::write(&a.go, b"go").expect("go file");
    // warmup= as the GStreamer consumers take it: `expected` counts without those frames.
    let rec = Arc::new(Mutex::new(Record::with_warmup(a.warmup)));
    let mut end = "timeout";
    let mut error = String::new();
    while Instant::now() < deadline {
        match consumer.poll_frame(Some(deadline.saturating_duration_since(Instant::now()))) {
            Ok(Poll::Frame(frame)) => {
                let header = frame.map().ok().and_then(|m| {
                    let first = m.memories().next()?;
                    read_header(first)
                });
                let mut r = rec.lock().unwrap();
                r.consumed(header);
                if r.frames == a.counted_frames() {
                    end = "all";
                    break;
                }
            }
            Ok(Poll::Ended) => {
                end = "eos";
                break;
            }
            Ok(Poll::Pending) => {}
            Err(e) => {
                error = e.to_string();
                end = "error";
                break;
            }
        }
    }
    let _ = std::fs::write(&a.done, b"done");
    let extra = format!(
        ",\"end\":\"{end}\",\"error\":\"{}\"",
        crate::record::json_str(&error)
    );
    let out = rec.lock().unwrap().json(a, &extra);
    println!("RESULT {out}");
    out
}
