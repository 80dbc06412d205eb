//! Names for the `drm-format` field of DMA_DRM caps (GStreamer >= 1.24): `FOURCC[:0xMODIFIER]`,
//! e.g. `NV12:0x0100000000000002`. Caps cross the link as strings, so DMA_DRM caps need no code
//! to travel; this only makes logs readable, with the drm-fourcc crate's names for fourccs and
//! modifiers.

use drm_fourcc::{DrmFourcc, DrmModifier};

/// A `drm-format` value (`FOURCC[:0xMODIFIER]`) as the fourcc code and the modifier (linear
/// when it names none); None when it is not of that form.
pub fn parse(drm_format: &str) -> Option<(u32, u64)> {
    let (fourcc, modifier) = match drm_format.split_once(':') {
        Some((f, m)) => (f, Some(m)),
        None => (drm_format, None),
    };
    let bytes: [u8; 4] = fourcc.as_bytes().try_into().ok()?;
    let modifier = match modifier {
        None => u64::from(DrmModifier::Linear),
        Some(m) => u64::from_str_radix(m.strip_prefix("0x")?, 16).ok()?,
    };
    Some((u32::from_le_bytes(bytes), modifier))
}

/// The `drm-format` of caps text (`..., drm-format=(string)NV12:0x0100000000000002, ...`),
/// parsed; None for caps without one.
pub fn of_caps(caps: &str) -> Option<(u32, u64)> {
    let at = caps.find("drm-format=")? + "drm-format=".len();
    // A type in parentheses first (`(string)`, `(gchararray)`), then maybe a quote.
    let value = &caps[at..];
    let value = match value.strip_prefix('(') {
        Some(typed) => &typed[typed.find(')')? + 1..],
        None => value,
    };
    let value = value.trim_start_matches('"');
    let end = value
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .unwrap_or(value.len());
    parse(&value[..end])
}

/// `drm-format` value -> e.g. "NV12, modifier I915_y_tiled (0x0100000000000002)";
/// None when it is not of that form.
pub fn describe(drm_format: &str) -> Option<String> {
    let (fourcc, modifier) = match drm_format.split_once(':') {
        Some((f, m)) => (f, Some(m)),
        None => (drm_format, None),
    };
    let bytes = fourcc.as_bytes();
    if bytes.len() != 4 {
        return None;
    }
    let code = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let known = if DrmFourcc::try_from(code).is_ok() {
        ""
    } else {
        " (a fourcc drm does not know)"
    };
    let modifier = match modifier {
        None => u64::from(DrmModifier::Linear),
        Some(m) => u64::from_str_radix(m.trim_start_matches("0x"), 16).ok()?,
    };
    Some(format!(
        "{fourcc}{known}, modifier {:?} (0x{modifier:016x})",
        DrmModifier::from(modifier)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_drm_format_of_caps() {
        let nv12 = u32::from_le_bytes(*b"NV12");
        assert_eq!(parse("NV12"), Some((nv12, 0)));
        assert_eq!(
            parse("NV12:0x0100000000000002"),
            Some((nv12, 0x0100000000000002))
        );
        assert_eq!(parse("NV1"), None);
        assert_eq!(parse("NV12:12"), None);
        assert_eq!(
            of_caps(
                "video/x-raw(memory:DMABuf), format=(string)DMA_DRM, drm-format=(string)NV12:0x0100000000000002, width=(int)64"
            ),
            Some((nv12, 0x0100000000000002))
        );
        assert_eq!(
            of_caps("video/x-raw, drm-format=(gchararray)\"NV12:0x0000000000000000\""),
            Some((nv12, 0)),
            "as fdlink's own writer types it"
        );
        assert_eq!(of_caps("video/x-raw, format=(string)NV12"), None);
    }

    #[test]
    fn names_fourccs_and_modifiers() {
        assert_eq!(
            describe("NV12:0x0100000000000002").unwrap(),
            "NV12, modifier I915_y_tiled (0x0100000000000002)"
        );
        assert_eq!(
            describe("XR24").unwrap(),
            "XR24, modifier Linear (0x0000000000000000)"
        );
        assert!(
            describe("QQQQ")
                .unwrap()
                .starts_with("QQQQ (a fourcc drm does not know)")
        );
        assert!(describe("NV1").is_none());
        assert!(describe("NV12:zz").is_none());
    }
}
