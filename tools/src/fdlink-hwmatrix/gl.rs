//! The GL row: an fdlinksrc feeding `glupload`, which must import every frame's dmabuf as
//! EGLImages (no copy into a texture) on headless EGL: Mesa's GBM platform on a DRM render
//! node, which on the test VM's vgem is kms_swrast with llvmpipe.
//!
//! glupload names the method it used for each buffer only in its LOG output (`uploader NAME
//! returned 1`, 1 being GST_GL_UPLOAD_DONE, in GStreamer 1.22 to 1.26), so the consumer runs
//! with `GST_DEBUG=glupload:6` and the check reads its stderr.

use std::collections::BTreeMap;

use crate::peer_output::leaked;
use crate::procs::{Proc, first_error, spawn_env};

/// What the consumer runs after its fdlinksrc: gldownload gives the frames back to the CPU
/// after the import, so fakesink needs no GL, and no window is opened.
const GL_CONSUMER: &str = "glupload ! glcolorconvert ! gldownload ! fakesink";

/// The elements the row needs (gstreamer1.0-gl).
pub(crate) const GL_ELEMENTS: &[&str] = &["glupload", "glcolorconvert", "gldownload"];

/// glupload's methods that import the dmabuf itself; the others copy its bytes into a texture
/// ("Raw Data", "UploadMeta") or leave it in DMABuf memory ("Dmabuf Passthrough").
const IMPORT_METHODS: &[&str] = &["DirectDmabuf", "DirectDmabufExternal", "Dmabuf"];

/// Headless EGL, and glupload's log. `GST_GL_WINDOW=gbm` works without KMS: on a render-only
/// device the display logs "Failed to initialize DRM" and goes on with the GBM EGL platform
/// (GStreamer 1.22 has no surfaceless display; 1.24 and later have one, and take gbm too).
const ENV: &[(&str, &str)] = &[
    ("GST_GL_PLATFORM", "egl"),
    ("GST_GL_WINDOW", "gbm"),
    ("GST_DEBUG", "glupload:6,glcontext:4"),
    ("GST_DEBUG_NO_COLOR", "1"),
];

/// Whether this machine has a DRM render node for EGL's GBM platform: otherwise the row is
/// not run.
pub(crate) fn available() -> Result<(), String> {
    let render_node = std::fs::read_dir("/dev/dri").is_ok_and(|d| {
        d.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
    });
    if render_node {
        Ok(())
    } else {
        Err("no device (no DRM render node in /dev/dri for EGL)".into())
    }
}

/// `fdlink-peer consume` arguments: the link's frames into glupload, logged at the fdlinksrc.
pub(crate) fn consumer_args(sock: &str) -> Vec<String> {
    vec![
        "consume".into(),
        "--frames-log".into(),
        format!("fdlinksrc socket-path={sock} timeout=60000 ! {GL_CONSUMER}"),
    ]
}

pub(crate) fn spawn(args: &[String]) -> Proc {
    spawn_env(args, ENV)
}

/// The same GL elements in one process without fdlink: Ok(the fds GL itself leaves open at
/// exit, which the consumer's leak check must not count: an eventfd on Mesa 22.3 and 25.0),
/// or Err(why GL does not run here, so the row is not run).
pub(crate) fn reference() -> Result<Vec<String>, String> {
    let args = [
        "produce".to_string(),
        format!(
            "videotestsrc num-buffers=2 ! video/x-raw,format=NV12,width=320,height=240 ! {GL_CONSUMER} name=check"
        ),
    ];
    let (ok, out, err) = spawn(&args).finish();
    if !ok {
        let why = first_error(&err).unwrap_or("it exited with an error");
        return Err(format!("GL fails on its own, without fdlink: {why}"));
    }
    Ok(leaked(&out).unwrap_or_default())
}

/// Checks glupload imported each of the `frames` frames the consumer received: Ok(detail for
/// the row) or Err(what went wrong, with the methods glupload used instead).
pub(crate) fn check(consumer_err: &str, frames: usize) -> Result<String, String> {
    let mut done: BTreeMap<&str, usize> = BTreeMap::new();
    for line in consumer_err.lines() {
        let Some((_, rest)) = line.split_once("uploader ") else {
            continue;
        };
        let Some((method, code)) = rest.split_once(" returned ") else {
            continue;
        };
        if code.split(',').next() == Some("1") {
            *done.entry(method).or_default() += 1;
        }
    }
    let imported: usize = IMPORT_METHODS.iter().filter_map(|m| done.get(m)).sum();
    let renderer = consumer_err
        .lines()
        .find_map(|l| l.split_once("GL_RENDERER: ").map(|(_, r)| r.trim()))
        .unwrap_or("unknown");
    let methods = done
        .iter()
        .map(|(m, n)| format!("{m} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    // glupload may run a buffer twice after a reconfiguration: at least one import per frame.
    if imported >= frames && done.keys().all(|m| IMPORT_METHODS.contains(m)) {
        Ok(format!(
            ", glupload imported every frame as EGLImages ({methods}; GL_RENDERER {renderer})"
        ))
    } else if done.is_empty() {
        Err(format!(
            "glupload logged no upload for {frames} frames (no `uploader NAME returned 1` line at GST_DEBUG=glupload:6; GL_RENDERER {renderer}): see whether GL started on this machine"
        ))
    } else {
        Err(format!(
            "glupload imported {imported} of {frames} frames as EGLImages (uploads done: {methods}; GL_RENDERER {renderer}): the others were copied into textures: the memory was no dmabuf, or EGL refused the import (eglinfo shows whether it offers EGL_EXT_image_dma_buf_import)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    const RENDERER: &str = "0:00:02.18 217 0x7f INFO glcontext gstglcontext.c:1119:_create_context_info:<glcontextegl0> GL_RENDERER: llvmpipe (LLVM 15.0.6, 256 bits)\n";

    fn done(method: &str, n: usize) -> String {
        format!(
            "0:00:02.52 217 0x55 LOG glupload gstglupload.c:2594:gst_gl_upload_perform_with_buffer:<glupload0> uploader {method} returned 1, buffer: 0x55f1c36ccb40\n"
        )
        .repeat(n)
    }

    #[test]
    fn every_frame_imported_passes() {
        let err = format!("{RENDERER}{}", done("Dmabuf", 30));
        let note = check(&err, 30).unwrap();
        assert!(note.contains("Dmabuf 30"), "{note}");
        assert!(note.contains("llvmpipe (LLVM 15.0.6, 256 bits)"), "{note}");
    }

    #[test]
    fn a_copy_or_a_missing_frame_fails() {
        let copied = format!("{}{}", done("Dmabuf", 29), done("Raw Data", 1));
        let why = check(&copied, 30).unwrap_err();
        assert!(why.contains("Raw Data 1"), "{why}");
        assert!(check(&done("Dmabuf", 29), 30).is_err());
        assert!(check(&done("Dmabuf Passthrough", 30), 30).is_err());
        // A method that gave up (GST_GL_UPLOAD_UNSUPPORTED, -2 printed unsigned) did nothing.
        let retried = format!(
            "{}{}",
            done("Dmabuf", 30),
            "x uploader DirectDmabuf returned 4294967294, buffer: 0x0\n"
        );
        assert!(check(&retried, 30).is_ok());
        assert!(check(RENDERER, 30).unwrap_err().contains("no upload"));
    }
}
