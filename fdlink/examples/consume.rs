//! Prints each frame an fdlink producer sends, with a checksum of its bytes: a program that
//! takes frames from a GStreamer pipeline in another process without GStreamer of its own.
//!
//! ```sh
//! gst-launch-1.0 videotestsrc num-buffers=100 ! video/x-raw,format=NV12 ! fdlinksink socket-path=/tmp/fdlink.sock &
//! cargo run -p fdlink --example consume -- /tmp/fdlink.sock
//! ```

use fdlink::consumer::Consumer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/fdlink.sock".into());
    let mut consumer = Consumer::connect(path.as_ref())?;
    let mut n = 0;
    while let Some(frame) = consumer.next_frame()? {
        let mapped = frame.map()?;
        let sum = mapped
            .memories()
            .flatten()
            .fold(0u32, |s, &b| s.rotate_left(5) ^ u32::from(b));
        let layout = frame.video().map_or(String::new(), |v| {
            format!(
                " {}x{} planes at {:?}",
                v.width,
                v.height,
                &v.offsets[..v.n_planes as usize]
            )
        });
        println!(
            "frame {n}: pts {:?}, {} bytes in {} memories{layout}, checksum {sum:08x}",
            frame.pts(),
            mapped.len(),
            frame.memories().len()
        );
        n += 1;
        // `frame` is dropped here: the producer gets its buffer back.
    }
    println!("end of stream after {n} frames ({})", consumer.caps());
    Ok(())
}
