//! Peer entries against the checks, and the bound on custom meta names.

use super::receive::*;
use super::*;

fn custom(name: &str, text: &str) -> MetaEntry {
    let mut out = Out::default();
    out.bytes(name.as_bytes());
    out.bytes(text.as_bytes());
    out.u32(0);
    MetaEntry {
        kind: KIND_CUSTOM,
        bytes: out.0,
    }
}

fn attach_to_new(entries: &[MetaEntry]) -> Result<gst::Buffer, String> {
    let mut buffer = gst::Buffer::new();
    attach(buffer.get_mut().unwrap(), entries)?;
    Ok(buffer)
}

#[test]
fn entries_from_a_peer_are_checked() {
    gst::init().unwrap();
    assert!(valid_meta_name("unix-fd-custom-meta"));
    for bad in ["", "ab", "1abc", "a b", "a\0b", &"a".repeat(129)] {
        assert!(!valid_meta_name(bad), "{bad:?}");
    }
    let cases = [
        (
            MetaEntry {
                kind: KIND_AUDIO_CLIPPING,
                bytes: vec![0; 19],
            },
            "truncated",
        ),
        (
            MetaEntry {
                kind: KIND_AUDIO_CLIPPING,
                bytes: vec![0; 20],
            },
            "unknown format 0",
        ),
        (
            MetaEntry {
                kind: KIND_AUDIO_CLIPPING,
                bytes: vec![1; 21],
            },
            "trailing",
        ),
        (
            MetaEntry {
                kind: KIND_SEI_UNREGISTERED,
                bytes: vec![0; 16],
            },
            "without data",
        ),
        (
            MetaEntry {
                kind: KIND_CAPTION,
                bytes: vec![9, 0, 0, 0, 1],
            },
            "caption type 9",
        ),
        (custom("GstVideoMeta", "s"), "not a valid"),
        (custom("GstAudioMeta", "s"), "not a valid"),
        (
            custom(
                "fdlink-unit-bad",
                "s, a=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
            ),
            "deeper than 32",
        ),
        (custom("fdlink unit", "s"), "not a valid type name"),
        (
            custom("fdlink-unit-text", "not a structure ="),
            "unparsable",
        ),
    ];
    for (entry, want) in cases {
        let err = attach_to_new(&[entry]).unwrap_err();
        assert!(err.contains(want), "{want}: {err}");
    }
    // A kind this build does not know is dropped, not refused.
    let b = attach_to_new(&[MetaEntry {
        kind: 999,
        bytes: vec![1],
    }])
    .unwrap();
    assert_eq!(b.iter_meta::<gst::Meta>().count(), 0);
}

#[test]
fn custom_names_registered_for_peers_are_bounded() {
    gst::init().unwrap();
    let before = REGISTERED_NAMES.lock().unwrap().len();
    for i in before..MAX_CUSTOM_NAMES {
        let b = attach_to_new(&[custom(&format!("fdlink-unit-name-{i}"), "s, n=(int)1")]).unwrap();
        let name = format!("fdlink-unit-name-{i}");
        let m = gst::meta::CustomMeta::from_buffer(&b, &name).unwrap();
        assert_eq!(m.structure().get::<i32>("n").unwrap(), 1);
    }
    let err = attach_to_new(&[custom("fdlink-unit-name-more", "s")]).unwrap_err();
    assert!(err.contains("limit of 64 custom meta names"), "{err}");
    // Names registered already still go.
    attach_to_new(&[custom(
        &format!("fdlink-unit-name-{}", MAX_CUSTOM_NAMES - 1),
        "s",
    )])
    .unwrap();
}

fn audio_caps(layout: &str, channels: i32) -> gst::Caps {
    format!(
        "audio/x-raw, format=S16LE, layout={layout}, rate=8000, channels={channels}, \
         channel-mask=(bitmask)0x0"
    )
    .parse()
    .unwrap()
}

fn audio_entry(caps: &str, samples: u64, offsets: &[u64]) -> MetaEntry {
    let mut out = Out::default();
    out.bytes(caps.as_bytes());
    out.u64(samples);
    out.u32(offsets.len() as u32);
    for &o in offsets {
        out.u64(o);
    }
    MetaEntry {
        kind: KIND_AUDIO,
        bytes: out.0,
    }
}

fn attach_to_sized(size: usize, entries: &[MetaEntry]) -> Result<gst::Buffer, String> {
    let mut buffer = gst::Buffer::with_size(size).unwrap();
    attach(buffer.get_mut().unwrap(), entries)?;
    Ok(buffer)
}

#[test]
fn audio_metas_cross_with_their_info_samples_and_offsets() {
    gst::init().unwrap();
    let element = gst::ElementFactory::make("identity").build().unwrap();
    let stereo: gst::Caps = "audio/x-raw, format=S16LE, layout=non-interleaved, rate=8000, \
                             channels=2, channel-mask=(bitmask)0x3"
        .parse()
        .unwrap();
    let cases = [
        // Planes in reverse order, 80 of 100 samples valid: nothing a default would give.
        (stereo.clone(), 80, vec![200, 0]),
        // No offsets given: the planes one after another.
        (stereo, 100, vec![]),
        (audio_caps("non-interleaved", 4), 50, vec![]),
        (audio_caps("interleaved", 2), 90, vec![]),
    ];
    for (caps, samples, offsets) in cases {
        let mut producer = gst::Buffer::with_size(400).unwrap();
        add_audio_meta(producer.get_mut().unwrap(), &caps, samples, &offsets).unwrap();
        let sent = audio_meta(&producer).unwrap();
        let entries = collect(&element, &producer);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, KIND_AUDIO);
        let consumer = attach_to_sized(400, &entries).unwrap();
        let got = audio_meta(&consumer).unwrap();
        assert_eq!(got, sent, "{caps}");
        assert_eq!(got.samples, samples);
        if !offsets.is_empty() {
            assert_eq!(got.offsets, offsets);
        }
    }
}

#[test]
fn audio_metas_from_a_peer_are_checked_naming_the_field() {
    gst::init().unwrap();
    let ni = "audio/x-raw, format=S16LE, layout=non-interleaved, rate=8000, channels=2, \
              channel-mask=(bitmask)0x3";
    let il = "audio/x-raw, format=S16LE, layout=interleaved, rate=8000, channels=2, \
              channel-mask=(bitmask)0x3";
    let many = (0..65).collect::<Vec<u64>>();
    let cases = [
        (audio_entry(ni, 100, &[0, 300]), "offsets[1] 300"),
        (audio_entry(ni, 100, &[0, 100]), "overlaps offsets[0]"),
        (
            audio_entry(ni, 10, &[0, 20, 40]),
            "3 offsets for 2 channels",
        ),
        (audio_entry(ni, 101, &[]), "samples 101 pass"),
        (audio_entry(ni, u64::MAX, &[]), "overflow"),
        (audio_entry(ni, u64::MAX / 2 + 1, &[0, 8]), "overflow"),
        (
            audio_entry(ni, 1, &many),
            "65 offsets, past the limit of 64",
        ),
        (audio_entry(il, 10, &[0, 20]), "offsets with interleaved"),
        (audio_entry(il, 101, &[]), "samples 101 of 4 bytes"),
        (
            audio_entry(
                "audio/x-raw, format=S16LE, layout=interleaved, rate=8000, channels=65, \
                 channel-mask=(bitmask)0x0",
                1,
                &[],
            ),
            "channels 65",
        ),
        (
            audio_entry(
                "audio/x-raw, format=S16LE, layout=interleaved, rate=0, channels=1",
                1,
                &[],
            ),
            "rate 0",
        ),
        (
            audio_entry(
                "audio/x-raw, format=S16LE, layout=interleaved, rate=[1, 2], channels=1",
                1,
                &[],
            ),
            "not fixed",
        ),
        (
            audio_entry("video/x-raw, format=I420, width=2, height=2", 1, &[]),
            "not raw audio",
        ),
        (audio_entry("audio/x-raw, format=", 1, &[]), "unparsable"),
        (
            MetaEntry {
                kind: KIND_AUDIO,
                bytes: audio_entry(il, 1, &[]).bytes[..10].to_vec(),
            },
            "truncated",
        ),
    ];
    for (entry, want) in cases {
        let err = attach_to_sized(400, &[entry]).unwrap_err();
        assert!(err.contains(want), "{want}: {err}");
    }
}
