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
