//! The rows of the matrix, and the checks for what this machine has.

use std::process::Command;

/// One row of the matrix.
pub(crate) struct Row {
    pub(crate) name: &'static str,
    /// Which consumer takes the frames.
    pub(crate) consumer: Consumer,
    /// The message a decoder logs when its driver ends the stream before draining every frame
    /// (vicodec: "eos sent too early"). Either run may then miss frames (vicodec under TCG
    /// misses some of the first ones): when the shorter run logged it, the missing frames are
    /// the driver's loss, not the link's, and the frames both runs have must still match.
    pub(crate) eos_bug: Option<&'static str>,
    /// Elements that must exist, and device nodes (resolved below) that must too.
    pub(crate) needs_elements: &'static [&'static str],
    pub(crate) source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consumer {
    /// `fdlinksrc ! fakesink`.
    Element,
    /// fdlinksrc holding frames in a queue and taking 40 ms each, checking each frame did not
    /// change while it held it: the decoder must neither deadlock nor reuse a held surface.
    Slow,
    /// A program without GStreamer in its path (`fdlink-peer app-consume`, on
    /// `fdlink::consumer`): it must get the same kernel objects and map them with the sync
    /// ioctls.
    App,
    /// `fdlinksrc ! kmssink` on vkms (display.rs): every frame must be shown from its
    /// dmabuf, imported as a framebuffer, never copied by kmssink.
    Display,
    /// `fdlinksrc ! glupload ! glcolorconvert ! gldownload ! fakesink` on headless EGL (gl.rs):
    /// glupload must import every frame's dmabuf as EGLImages, never copy it into a texture.
    Gl,
    /// `fdlinksrc ! queue ! fakesink sync=true` at 30 fps (pool_size.rs): the decoder must
    /// allocate at most 3 capture buffers more than alone and never run out of them.
    PoolSize,
}

pub(crate) enum Source {
    /// `fdlink-peer produce-dmabuf --source S --layout L`.
    Dmabuf {
        source: &'static str,
        layout: &'static str,
    },
    /// A gst-launch fragment ending before the sink; `{dev}` is the device found by `device`.
    Pipeline {
        fragment: &'static str,
        device: Device,
        fixture: Option<&'static str>,
    },
    /// Hardware this harness has no fixture or device for here.
    External,
}

#[derive(Clone, Copy)]
pub(crate) enum Device {
    None,
    /// A vivid capture node whose vb2 allocator is `vmalloc` or `dma-contig`.
    Vivid(&'static str),
}

pub(crate) fn rows() -> Vec<Row> {
    use Source::*;
    let pipe = |fragment, fixture| Pipeline {
        fragment,
        device: Device::None,
        fixture,
    };
    vec![
        Row {
            name: "udmabuf",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &[],
            source: Dmabuf {
                source: "udmabuf",
                layout: "offsets",
            },
        },
        Row {
            name: "udmabuf-app-consumer",
            consumer: Consumer::App,
            eos_bug: None,
            needs_elements: &[],
            source: Dmabuf {
                source: "udmabuf",
                layout: "offsets",
            },
        },
        Row {
            name: "dma-heap",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &[],
            source: Dmabuf {
                source: "dma-heap",
                layout: "planes",
            },
        },
        Row {
            name: "vgem",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &[],
            source: Dmabuf {
                source: "vgem",
                layout: "single",
            },
        },
        Row {
            name: "udmabuf-glupload",
            consumer: Consumer::Gl,
            eos_bug: None,
            needs_elements: crate::gl::GL_ELEMENTS,
            source: Dmabuf {
                source: "udmabuf",
                layout: "single",
            },
        },
        Row {
            name: "v4l2src-vivid-vmalloc",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["v4l2src"],
            source: Pipeline {
                fragment: "v4l2src device={dev} io-mode=dmabuf num-buffers=30 ! video/x-raw,format=NV12,width=640,height=480",
                device: Device::Vivid("vmalloc"),
                fixture: None,
            },
        },
        Row {
            name: "v4l2src-vivid-dma-contig",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["v4l2src"],
            source: Pipeline {
                fragment: "v4l2src device={dev} io-mode=dmabuf num-buffers=30 ! video/x-raw,format=NV12,width=640,height=480",
                device: Device::Vivid("dma-contig"),
                fixture: None,
            },
        },
        // vkms scans out RGB only (XRGB8888 is GStreamer's BGRx): the decoders' NV12 could not
        // be shown without a conversion, so the display rows take vivid's frames. At 10 fps:
        // under TCG the consumer's CRC of each 1.2 MB frame alone takes tens of ms.
        Row {
            name: "v4l2src-vivid-dma-contig-kmssink",
            consumer: Consumer::Display,
            eos_bug: None,
            needs_elements: &["v4l2src", "kmssink"],
            source: Pipeline {
                fragment: "v4l2src device={dev} io-mode=dmabuf num-buffers=30 ! video/x-raw,format=BGRx,width=640,height=480,framerate=10/1",
                device: Device::Vivid("dma-contig"),
                fixture: None,
            },
        },
        Row {
            name: "v4l2src-vivid-vmalloc-kmssink",
            consumer: Consumer::Display,
            eos_bug: None,
            needs_elements: &["v4l2src", "kmssink"],
            source: Pipeline {
                fragment: "v4l2src device={dev} io-mode=dmabuf num-buffers=30 ! video/x-raw,format=BGRx,width=640,height=480,framerate=10/1",
                device: Device::Vivid("vmalloc"),
                fixture: None,
            },
        },
        Row {
            name: "v4l2fwhtdec",
            consumer: Consumer::Element,
            eos_bug: Some("left undrained after CMD_STOP"),
            needs_elements: &["v4l2fwhtdec", "gdpdepay"],
            // 1.22's v4l2videodec takes the filter's first format (NV12), 1.26's keeps
            // vicodec's default (I420): a filter naming one of them alone fails on the other.
            source: pipe(
                "filesrc location={fixture} ! gdpdepay ! v4l2fwhtdec capture-io-mode=dmabuf ! video/x-raw,format={NV12,I420}",
                Some("fwht-640x360.gdp"),
            ),
        },
        Row {
            name: "v4l2fwhtdec-pool-size",
            consumer: Consumer::PoolSize,
            eos_bug: Some("left undrained after CMD_STOP"),
            // The first element is the decoder; the others make its 90-frame fixture.
            needs_elements: &["v4l2fwhtdec", "v4l2fwhtenc", "gdppay", "gdpdepay"],
            source: pipe(
                "filesrc location={fixture} ! gdpdepay ! v4l2fwhtdec capture-io-mode=dmabuf ! video/x-raw,format={NV12,I420}",
                None,
            ),
        },
        Row {
            name: "v4l2slh264dec",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["v4l2slh264dec"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! v4l2slh264dec",
                Some("h264-320x240.h264"),
            ),
        },
        Row {
            name: "v4l2slh264dec-app-consumer",
            consumer: Consumer::App,
            eos_bug: None,
            needs_elements: &["v4l2slh264dec"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! v4l2slh264dec",
                Some("h264-320x240.h264"),
            ),
        },
        Row {
            name: "v4l2slh264dec-slow-consumer",
            consumer: Consumer::Slow,
            eos_bug: None,
            needs_elements: &["v4l2slh264dec"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! v4l2slh264dec",
                Some("h264-320x240.h264"),
            ),
        },
        Row {
            name: "v4l2slh264dec-pool-size",
            consumer: Consumer::PoolSize,
            eos_bug: None,
            needs_elements: &["v4l2slh264dec", "x264enc", "h264parse"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! v4l2slh264dec",
                None,
            ),
        },
        Row {
            name: "v4l2slvp8dec",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["v4l2slvp8dec"],
            source: pipe(
                "filesrc location={fixture} ! matroskademux ! v4l2slvp8dec",
                Some("vp8-320x240.webm"),
            ),
        },
        Row {
            name: "v4l2slh265dec",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["v4l2slh265dec"],
            source: pipe(
                "filesrc location={fixture} ! h265parse ! v4l2slh265dec",
                Some("h265-320x240.h265"),
            ),
        },
        Row {
            name: "v4l2slvp9dec",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["v4l2slvp9dec"],
            source: pipe(
                "filesrc location={fixture} ! matroskademux ! v4l2slvp9dec",
                Some("vp9-320x240.webm"),
            ),
        },
        Row {
            name: "v4l2h264dec",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["v4l2h264dec"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! v4l2h264dec capture-io-mode=dmabuf",
                Some("h264-320x240.h264"),
            ),
        },
        Row {
            name: "v4l2h265dec",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["v4l2h265dec"],
            source: External,
        },
        Row {
            name: "vah264dec",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["vah264dec"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! vah264dec ! video/x-raw(memory:DMABuf)",
                Some("h264-320x240.h264"),
            ),
        },
        Row {
            name: "vah265dec",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["vah265dec"],
            source: External,
        },
        Row {
            name: "vavp9dec",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["vavp9dec"],
            source: External,
        },
        Row {
            name: "vaav1dec",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["vaav1dec"],
            source: External,
        },
        Row {
            name: "vaapih264dec",
            consumer: Consumer::Element,
            eos_bug: None,
            needs_elements: &["vaapih264dec"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! vaapih264dec",
                Some("h264-320x240.h264"),
            ),
        },
    ]
}

/// The vivid capture node using vb2 allocator `kind`: vivid is loaded with two instances,
/// allocators=0,1 (vmalloc, dma-contig); node N belongs to instance N in load order.
pub(crate) fn vivid_node(kind: &str) -> Option<String> {
    let mut nodes: Vec<(u32, String)> = std::fs::read_dir("/sys/class/video4linux")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let num: u32 = name.strip_prefix("video")?.parse().ok()?;
            let card = std::fs::read_to_string(e.path().join("name")).ok()?;
            // vivid names its capture nodes "vivid-00-vid-cap", "vivid-01-vid-cap", ...
            card.contains("vid-cap")
                .then_some((num, card.trim().to_string()))
        })
        .collect();
    nodes.sort();
    let want = if kind == "vmalloc" {
        "vivid-000"
    } else {
        "vivid-001"
    };
    nodes
        .into_iter()
        .find(|(_, card)| card.starts_with(want))
        .map(|(n, _)| format!("/dev/video{n}"))
}

pub(crate) fn element_exists(name: &str) -> bool {
    Command::new("gst-inspect-1.0")
        .args(["--exists", name])
        .status()
        .is_ok_and(|s| s.success())
}
