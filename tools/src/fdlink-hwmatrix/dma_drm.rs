//! DMA_DRM rows: on GStreamer 1.24 and later, a V4L2 stateless decoder (v4l2codecs) or a VA
//! decoder (`va`) whose output template offers `video/x-raw(memory:DMABuf), format=DMA_DRM` must negotiate it
//! through the link. The decoder picks it only when downstream asks for it (to a sink that
//! takes anything it picks plain NV12), so the row asks from the consumer's side (a caps filter
//! after fdlinksrc; the application consumer, which has no caps of its own, from the
//! producer's side) and checks the caps both elements logged.

use std::process::Command;

use crate::peer_output::{dma_drm_format, drm_format_text};
use crate::rows::{Row, Source};

/// The caps filter a DMA_DRM row puts in the consumer's pipeline (or the producer's).
pub(crate) const FILTER: &str = "video/x-raw(memory:DMABuf),format=DMA_DRM";

/// Whether `row` must negotiate DMA_DRM here.
pub(crate) fn expected(row: &Row) -> bool {
    let Some(decoder) = row.needs_elements.first() else {
        return false;
    };
    matches!(row.source, Source::Pipeline { .. })
        && (decoder.starts_with("v4l2sl") || is_va(decoder))
        && at_least_1_24(crate::gst_version())
        && offers_dma_drm(decoder)
}

/// A decoder of the `va` plugin (gst-plugins-bad), not of the older gstreamer-vaapi, which
/// has no DMA_DRM.
fn is_va(element: &str) -> bool {
    element.starts_with("va") && !element.starts_with("vaapi")
}

fn at_least_1_24(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (1, 24)
}

/// The element's pad templates name DMA_DRM (`gst-inspect-1.0 ELEMENT`).
fn offers_dma_drm(element: &str) -> bool {
    Command::new("gst-inspect-1.0")
        .arg(element)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("DMA_DRM"))
}

/// The one-process reference run's sink for DMA_DRM: the decoder refuses DMABuf caps to a sink
/// that does not take VideoMeta (fakesink); fakevideosink does.
/// Not synchronised: late frames would make it send QoS events, and the decoder skip frames.
pub(crate) const REFERENCE_SINK: &str = "fakevideosink name=check sync=false";

/// Both sides' caps (`event caps` lines of `--events-log`): the detail's note when both are
/// DMA_DRM with the same drm-format, else the problem.
pub(crate) fn check(producer: &[String], consumer: &[String]) -> Result<String, String> {
    let p = dma_drm_format(producer);
    let c = dma_drm_format(consumer);
    match (p, c) {
        (Ok(p), Ok(c)) if p == c => Ok(format!(
            ", caps DMA_DRM drm-format={} on both sides",
            drm_format_text(&p)
        )),
        (p, c) => Err(format!(
            "DMA_DRM not negotiated through the link (GStreamer {}): the producer's fdlinksink got {}, the consumer {}",
            crate::gst_version(),
            p.map_or_else(|e| e, |d| format!("DMA_DRM {d}")),
            c.map_or_else(|e| e, |d| format!("DMA_DRM {d}")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{at_least_1_24, is_va};

    #[test]
    fn va_decoders() {
        assert!(is_va("vah264dec") && is_va("vaav1dec"));
        assert!(!is_va("vaapih264dec"));
    }

    #[test]
    fn versions() {
        assert!(!at_least_1_24("1.22.0"));
        assert!(at_least_1_24("1.24.0"));
        assert!(at_least_1_24("1.26.2"));
        assert!(at_least_1_24("2.0"));
        assert!(!at_least_1_24("?"));
    }
}
