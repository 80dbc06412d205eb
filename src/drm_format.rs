//! The `drm-format` fields of DMA_DRM caps (GStreamer >= 1.24) described for logs.

/// The `drm-format` fields of `caps` described, for logs ("" when there are none).
pub fn describe_caps(caps: &gst::CapsRef) -> String {
    caps.iter()
        .filter_map(|s| s.get::<String>("drm-format").ok())
        .filter_map(|f| fdlink::drm_format::describe(&f))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_drm_format_of_caps() {
        gst::init().unwrap();
        let caps: gst::Caps =
            "video/x-raw(memory:DMABuf), format=DMA_DRM, drm-format=NV12:0x0100000000000002"
                .parse()
                .unwrap();
        assert!(describe_caps(&caps).contains("I915_y_tiled"));
    }
}
