//! Limits on the GStreamer structure texts a peer sends (caps, events, queries, replies,
//! messages), checked before any GStreamer parser sees them.
//!
//! GStreamer's parser recurses once per nesting level with no limit of its own, and copies
//! the rest of the text at each level: about 4,000 levels (24 KB) overflow a 2 MiB thread
//! stack, and a 63 KB nested text costs hundreds of MB while it is parsed. D-Bus caps
//! container nesting at 32; so does this pre-scan. It needs no GStreamer and recurses only
//! into the texts GStreamer itself parses again (quoted strings, a sample's base64 parts), at
//! most [`MAX_STRUCTURE_DEPTH`] deep; its cost is at most the text's length once per level.

use std::fmt;

/// Deepest nesting a structure text may have. Each of `[ ] { } < > ( )` outside quoted
/// strings opens a level, and a quoted string is one level deeper than where it stands.
pub const MAX_STRUCTURE_DEPTH: usize = 32;

/// Longest structure text, in bytes. A packet is at most `protocol::MAX_PACKET_SIZE` (the same
/// number), so the packet limit already keeps texts below it; this names it for the checks
/// that do not start from a packet.
pub const MAX_STRUCTURE_TEXT_SIZE: usize = 64 * 1024;

/// Why a structure text was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StructureLimitError {
    /// Nested deeper than [`MAX_STRUCTURE_DEPTH`].
    TooDeep,
    /// Longer than [`MAX_STRUCTURE_TEXT_SIZE`].
    TooLarge { size: usize },
}

impl fmt::Display for StructureLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StructureLimitError::TooDeep => write!(
                f,
                "structure nests deeper than {MAX_STRUCTURE_DEPTH} levels (the limit on \
                 structures from a peer; see docs/protocol.md, Limits on structures)"
            ),
            StructureLimitError::TooLarge { size } => write!(
                f,
                "structure text of {size} bytes exceeds the limit of {MAX_STRUCTURE_TEXT_SIZE} \
                 bytes (see docs/protocol.md, Limits on structures)"
            ),
        }
    }
}

impl std::error::Error for StructureLimitError {}

/// Checks a structure (or caps) text against the limits. Any text may be given: one that is
/// not a structure at all passes or fails by the same rules, and never panics.
pub fn check_structure_text(text: &str) -> Result<(), StructureLimitError> {
    interned_names(text).map(|_| ())
}

/// Checks a structure (or caps) text against the limits, and lists the names in it that
/// GStreamer's parser interns as GQuarks, which GLib keeps for the life of the process:
/// structure names, field names, caps features, and the first word of every quoted string
/// (where a nested structure's name, or a GError's domain, stands). The list may hold words
/// that are no names (a quoted string's first word, a word before `=` inside a string), never
/// misses one, and repeats a name as often as it occurs.
pub fn interned_names(text: &str) -> Result<Vec<Vec<u8>>, StructureLimitError> {
    if text.len() > MAX_STRUCTURE_TEXT_SIZE {
        return Err(StructureLimitError::TooLarge { size: text.len() });
    }
    let mut names = Vec::new();
    scan(text.as_bytes(), 0, &mut names)?;
    Ok(names)
}

/// Scans `text` starting `base` levels deep, adding the names in it to `names`. GStreamer
/// reads its texts as C strings: a NUL ends them.
fn scan(text: &[u8], base: usize, names: &mut Vec<Vec<u8>>) -> Result<(), StructureLimitError> {
    let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
    // Where a structure's name may stand: at the start, after `;` (caps) and after `[` (a
    // nested structure in brackets).
    let mut name_may_follow = true;
    // The level of the parentheses holding caps features, right after a structure's name.
    let mut features_level = None;
    // The open brackets, to close a level only on its own closing bracket: a stray one never
    // lowers the count.
    let mut open: Vec<u8> = Vec::new();
    let deeper = |open: &Vec<u8>| {
        if base + open.len() + 1 > MAX_STRUCTURE_DEPTH {
            Err(StructureLimitError::TooDeep)
        } else {
            Ok(base + open.len() + 1)
        }
    };
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            c @ (b'[' | b'{' | b'<' | b'(') => {
                deeper(&open)?;
                open.push(c);
                name_may_follow = c == b'[';
                i += 1;
            }
            b';' => {
                name_may_follow = true;
                i += 1;
            }
            c @ (b']' | b'}' | b'>' | b')') => {
                let opener = match c {
                    b']' => b'[',
                    b'}' => b'{',
                    b'>' => b'<',
                    _ => b'(',
                };
                if open.last() == Some(&opener) {
                    open.pop();
                }
                if features_level.is_some_and(|level| level > open.len()) {
                    features_level = None;
                }
                name_may_follow = false;
                i += 1;
            }
            b'"' => {
                let depth = deeper(&open)?;
                let (content, next) = unquote(text, i + 1);
                scan(&content, depth, names)?;
                name_may_follow = false;
                i = next;
            }
            c if is_simple(c) => {
                let start = i;
                while i < text.len() && is_simple(text[i]) {
                    i += 1;
                }
                let token = &text[start..i];
                let before_equals = text[i..]
                    .iter()
                    .find(|c| !c.is_ascii_whitespace())
                    .is_some_and(|&c| c == b'=');
                if name_may_follow && token[0].is_ascii_alphabetic() {
                    names.push(token.to_vec());
                    if text.get(i) == Some(&b'(') {
                        features_level = Some(open.len() + 1);
                    }
                } else if before_equals || features_level == Some(open.len()) {
                    names.push(token.to_vec());
                }
                name_may_follow = false;
                scan_sample(token, base + open.len(), names)?;
            }
            c => {
                if !c.is_ascii_whitespace() {
                    name_may_follow = false;
                }
                i += 1;
            }
        }
    }
    Ok(())
}

/// GStreamer's unquoted-string characters (`GST_ASCII_IS_STRING`).
fn is_simple(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'/' | b':' | b'.')
}

/// The content of the quoted string starting at `start` (just past its opening quote), with
/// its escapes undone as `gst_string_unwrap` does (`\ooo` octal, `\c` any other byte), and
/// where scanning goes on: past the closing quote, or the end of an unterminated string.
fn unquote(text: &[u8], start: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut i = start;
    while i < text.len() {
        match text[i] {
            b'"' => return (out, i + 1),
            b'\\' if i + 1 < text.len() => {
                let octal = text.get(i + 1..i + 4).filter(|d| {
                    (b'0'..=b'3').contains(&d[0])
                        && d[1..].iter().all(|c| (b'0'..=b'7').contains(c))
                });
                match octal {
                    Some(d) => {
                        out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                        i += 4;
                    }
                    None => {
                        out.push(text[i + 1]);
                        i += 2;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    (out, text.len())
}

/// A GstSample value (`hex:caps:segment:info`) hides caps and structures in base64, which
/// GStreamer decodes and parses: an unquoted token of four `:`-separated parts has its last
/// three decoded as `gst_value_deserialize_sample` does and scanned one level deeper.
fn scan_sample(
    token: &[u8],
    depth: usize,
    names: &mut Vec<Vec<u8>>,
) -> Result<(), StructureLimitError> {
    if token.iter().filter(|&&c| c == b':').count() != 3 {
        return Ok(());
    }
    for part in token.split(|&c| c == b':').skip(1) {
        if part == b"None" || part.len() <= 1 {
            // "None", or too short for g_base64_decode_inplace, which then leaves the part
            // as it is: unquoted-string characters, no nesting.
            continue;
        }
        if depth + 1 > MAX_STRUCTURE_DEPTH {
            return Err(StructureLimitError::TooDeep);
        }
        scan(&decode_inplace(part), depth + 1, names)?;
    }
    Ok(())
}

/// What GStreamer parses of a sample's base64 part: `_` turned into `=`, then
/// `g_base64_decode_inplace`, which skips bytes outside the alphabet, writes the decoded bytes
/// over the start of the part and leaves the rest of it behind them.
fn decode_inplace(part: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(part.len());
    let (mut v, mut n) = (0u32, 0);
    let mut last = [0u8; 2];
    for &c in part {
        let c = if c == b'_' { b'=' } else { c };
        let rank = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => 0,
            _ => continue,
        };
        last = [c, last[0]];
        v = (v << 6) | u32::from(rank);
        n += 1;
        if n == 4 {
            out.push((v >> 16) as u8);
            if last[1] != b'=' {
                out.push((v >> 8) as u8);
            }
            if last[0] != b'=' {
                out.push(v as u8);
            }
            n = 0;
        }
    }
    let written = out.len();
    out.extend(
        part[written..]
            .iter()
            .map(|&c| if c == b'_' { b'=' } else { c }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize, open: &str, close: &str) -> String {
        format!("{}x{}", open.repeat(levels), close.repeat(levels))
    }

    /// Serializations as GStreamer 1.22 writes them (gst_structure_to_string, the bracket form
    /// of gst_structure_serialize, caps, bus messages) pass.
    #[test]
    fn real_serializations_pass() {
        for text in [
            "GstMessageError, gerror=(GError)NULL, debug=(string)\"../libs/gst/base/gstbasesrc.c\\(3132\\):\\ gst_base_src_loop\\ \\(\\):\\ /GstPipeline:pipeline0/GstVideoTestSrc:videotestsrc0:\\012streaming\\ stopped\\,\\ reason\\ not-negotiated\\ \\(-4\\)\", details=(structure)\"details\\,\\ flow-return\\=\\(int\\)-4\\;\";",
            "video/x-raw(memory:DMABuf), format=(string)DMA_DRM, drm-format=(string){ NV12:0x0100000000000002, NV12 }, width=(int)[ 1, 32767 ], height=(int)[ 1, 32767 ], framerate=(fraction)[ 0/1, 2147483647/1 ]; video/x-raw, format=(string){ I420, NV12 }",
            "GstQueryCaps, filter=(GstCaps)\"video/x-raw\\,\\ format\\=\\(string\\)\\{\\ I420\\,\\ NV12\\ \\}\", caps=(GstCaps)NULL;",
            "a, b=(structure)[c, d=(structure)[e, f=(string)\"x\\\"y\\,z\\\\w\";];], caps=(GstCaps)[video/x-raw, format=(string){ I420, NV12 }; audio/x-raw], arr=(int)< 1, 2, 3 >;",
            "taglist, title=(string)\"a\\ \\\"t\\\"\", x=(structure)\"n\\,\\ y\\=\\(string\\)\\\"q\\\\\\\"\\\"\\;\";",
            "GstEventSegment, segment=(GstSegment)\"segment\\,\\ flags\\=\\(GstSegmentFlags\\)GST_SEGMENT_FLAG_NONE\\,\\ rate\\=\\(double\\)1\\,\\ format\\=\\(GstFormat\\)time\\;\";",
            "fdlink-message, text=(string)\"a\\ \\(b\\ \\[c\", debug=(string)\"<<<<\", domain=(string)gst-stream-error-quark, code=(int)1;",
            "x, s=(sample)68656c6c6f:dmlkZW8veC1yYXcsIGZvcm1hdD0oc3RyaW5nKU5WMTIA:None:aW5mbywgYT0oc3RydWN0dXJlKSJiXCxcIGNcPVwoaW50XCkxXDsiOwA_;",
            "",
        ] {
            assert_eq!(check_structure_text(text), Ok(()), "{text}");
        }
        assert_eq!(check_structure_text(&nested(32, "[", "]")), Ok(()));
    }

    #[test]
    fn deep_texts_fail() {
        for text in [
            nested(33, "[", "]"),
            nested(4000, "a, b=[", "]"),
            nested(4000, "{", "}"),
            nested(17, "<(", ")>"),
            // Unclosed and stray closers: a closer that closes nothing lowers nothing.
            "[".repeat(33),
            "[)".repeat(33),
            // Quoted levels count: 16 brackets, then a quoted string holding 16 more.
            format!("{}\"{}\"", "[".repeat(16), "[".repeat(16)),
        ] {
            assert_eq!(
                check_structure_text(&text),
                Err(StructureLimitError::TooDeep),
                "{}",
                &text[..text.len().min(60)]
            );
        }
        let err = check_structure_text(&nested(4000, "[", "]")).unwrap_err();
        assert!(err.to_string().contains("deeper than 32 levels"), "{err}");
        let big = "a".repeat(MAX_STRUCTURE_TEXT_SIZE + 1);
        let err = check_structure_text(&big).unwrap_err();
        assert_eq!(err, StructureLimitError::TooLarge { size: big.len() });
        assert!(
            err.to_string().contains("exceeds the limit of 65536"),
            "{err}"
        );
    }

    /// `a, b=(structure)"<text, escaped>"`: one level of quoting around `text`.
    fn quoted(text: &str) -> String {
        let escaped: String = text
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("a, b=(structure)\"{escaped}\"")
    }

    /// Escaped quotes nest as GStreamer unwraps them: each level of quoting is one deeper.
    #[test]
    fn quoted_nesting_is_followed() {
        let mut text = String::from("z");
        for _ in 0..12 {
            text = quoted(&text);
        }
        assert_eq!(check_structure_text(&text), Ok(()));
        let mut text = "z".to_string();
        for _ in 0..13 {
            text = quoted(&text);
        }
        let text = format!("{}{text}{}", "[".repeat(20), "]".repeat(20));
        assert_eq!(
            check_structure_text(&text),
            Err(StructureLimitError::TooDeep)
        );
        // Octal escapes hide brackets from a plain byte search; unwrapped, they count.
        let octal = format!("a, s=(string)\"{}\"", "\\133".repeat(40));
        assert_eq!(
            check_structure_text(&octal),
            Err(StructureLimitError::TooDeep)
        );
        // A NUL ends the text for GStreamer, so what follows it is not parsed.
        let cut = format!("a, s=(string)\"\\000{}\"", "[".repeat(40));
        assert_eq!(check_structure_text(&cut), Ok(()));
    }

    /// A sample's base64 parts are parsed by GStreamer too: deep nesting inside fails.
    #[test]
    fn sample_parts_are_scanned() {
        let b64 = |s: &str| {
            // A plain encoder for the test, with GStreamer's `_` for padding.
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut out = String::new();
            for chunk in s.as_bytes().chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for k in 0..4 {
                    if k <= chunk.len() {
                        out.push(A[((v >> (18 - 6 * k)) & 63) as usize] as char);
                    } else {
                        out.push('_');
                    }
                }
            }
            out
        };
        let deep = b64(&format!("{}\0", nested(40, "i, a=(structure)[", "]")));
        let text = format!("x, s=(sample)00:None:None:{deep}");
        assert_eq!(
            check_structure_text(&text),
            Err(StructureLimitError::TooDeep)
        );
        let shallow = b64(&format!("{}\0", nested(8, "i, a=(structure)[", "]")));
        let text = format!("x, s=(sample)00:{shallow}:None:{shallow}");
        assert_eq!(check_structure_text(&text), Ok(()));
        // "hi", then what is left of the part behind it, as in place.
        assert_eq!(decode_inplace(b"aGk_"), b"hik=".to_vec());
    }

    #[test]
    fn odd_text_does_not_panic() {
        for text in [
            "\"",
            "\\",
            "\"\\",
            "\"\\1",
            "\"\\3777",
            "a:b:c:d",
            ":::",
            "::::",
            "a:_:=:%%%%",
            "]]]]}}}>>>)))",
            "\u{0}[[[[",
            "é\"ü\\\u{7f}\"",
        ] {
            let _ = check_structure_text(text);
        }
        // Every byte string up to 3 long from an alphabet of the special characters.
        let alphabet = b"[]{}<>()\"\\:_a0=\0";
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let bytes = [*a, *b, *c];
                    if let Ok(s) = std::str::from_utf8(&bytes) {
                        let _ = check_structure_text(s);
                    }
                }
            }
        }
    }
}
