//! Non-interleaved audio crosses with its GstAudioMeta: a producer process (audiotestsrc into
//! fdlinksink) and a consumer in this process (fdlinksrc into audioconvert, which reads the
//! meta to find each channel's plane, then wavenc into a file). The metas reaching the
//! consumer's audioconvert and the WAV file it makes are those of the same pipeline without
//! the link, in one process. Without the meta, audioconvert cannot map non-interleaved input
//! and the consumer fails ("failed to map input buffer").

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use gst::prelude::*;
use gstfdlink::metas::{self, AudioMetaFields};

const T: Duration = Duration::from_secs(30);

/// 20 buffers of 441 stereo samples, each channel its own plane.
const AUDIO: &str = "audiotestsrc num-buffers=20 samplesperbuffer=441 wave=sine freq=440 ! \
                     audio/x-raw,format=S16LE,layout=non-interleaved,channels=2,rate=44100";

/// Reads the planes through the meta: its output depends on the meta's offsets.
const DOWNSTREAM: &str = "identity name=check ! audioconvert ! \
                          audio/x-raw,format=S16LE,layout=interleaved ! wavenc ! filesink";

/// GStreamer with the plugin registered in this process, once.
fn init() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    init_gst();
    REGISTERED.call_once(|| gstfdlink::plugin_register_static().unwrap());
}

/// Runs `desc` in this process until EOS; the audio meta of each buffer reaching the element
/// named `check`, in order.
fn run(desc: &str) -> Vec<Option<AudioMetaFields>> {
    let pipeline = gst::parse::launch(desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    pipeline
        .by_name("check")
        .unwrap()
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(b) = info.buffer() {
                sink.lock().unwrap().push(metas::audio_meta(b));
            }
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(T.as_secs()),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .unwrap_or_else(|| panic!("no EOS from {desc}"));
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("{desc}: {} ({:?})", e.error(), e.debug());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    seen.lock().unwrap().clone()
}

#[test]
fn non_interleaved_audio_crosses_with_its_audio_meta() {
    init();
    let dir = TempDir::new("audio-meta");
    let sock = dir.socket();
    let reference_wav = dir.0.join("one-process.wav");
    let crossed_wav = dir.0.join("crossed.wav");

    let reference = run(&format!(
        "{AUDIO} ! {DOWNSTREAM} location={}",
        reference_wav.display()
    ));
    assert_eq!(reference.len(), 20);
    let first = reference[0]
        .clone()
        .expect("audiotestsrc adds an audio meta");
    assert_eq!(first.samples, 441);
    assert_eq!(first.offsets, [0, 882], "one plane after the other");

    let mut producer = Peer::spawn(&[
        "produce",
        &format!("{AUDIO} ! fdlinksink socket-path={sock} wait-for-connection=true"),
    ]);
    wait_for_path(&sock, T);
    let crossed = run(&format!(
        "fdlinksrc socket-path={sock} ! {DOWNSTREAM} location={}",
        crossed_wav.display()
    ));
    producer.wait_success(T, "producer");

    // The meta crossed with every field: caps (format, layout, rate, channels, mask),
    // samples and offsets.
    assert_eq!(crossed, reference);
    let wav = std::fs::read(&crossed_wav).unwrap();
    assert!(wav.len() > 20 * 441 * 4, "{} bytes of WAV", wav.len());
    assert!(
        wav == std::fs::read(&reference_wav).unwrap(),
        "the WAV made after the link differs from the one-process one"
    );
}
