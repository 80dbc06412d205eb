//! The display consumer: `fdlinksrc ! kmssink` on vkms, and the evidence that kmssink showed
//! the producer's dmabufs as framebuffers (PRIME import) instead of copying each frame into a
//! dumb buffer. Two witnesses, neither assumed: kmssink's own debug log, and vkms's debugfs
//! list of framebuffers, which marks each one's GEM object `imported=yes|no`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::procs::{Proc, spawn_env};

/// kmssink logs each import at LOG ("setting KMS mem ... fb id" for a new framebuffer, "found
/// KMS mem" for one it made earlier for the same memory); a copy into its dumb buffer pool is
/// GST_PERFORMANCE INFO "frame copy" (gstkmssink.c, gst_kms_sink_get_input_buffer).
const DEBUG: &str = "kmssink:6,GST_PERFORMANCE:4";
const NEW_FB: &str = "setting KMS mem";
const CACHED_FB: &str = "found KMS mem";
const COPY: &str = "frame copy";
/// kmssink copies the frame it still shows into a dumb buffer when asked to drain, so that the
/// upstream buffer goes back; counted apart from per-frame copies.
const DRAIN: &str = "draining";

/// The vkms card's debugfs directory, or why this machine has none.
fn vkms_debugfs() -> Result<PathBuf, String> {
    let dri = Path::new("/sys/kernel/debug/dri");
    // The guest runs as root with debugfs unmounted; elsewhere this is left alone.
    if !dri.exists() && std::env::var_os("FDLINK_IN_VM").is_some() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
            .status();
    }
    let entries = std::fs::read_dir(dri)
        .map_err(|e| format!("no vkms debugfs ({}: {e}; mount debugfs)", dri.display()))?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|d| {
            std::fs::read_to_string(d.join("name")).is_ok_and(|n| n.starts_with("vkms "))
                && d.join("framebuffer").exists()
        })
        .ok_or_else(|| "no vkms card in debugfs (modprobe vkms)".to_string())
}

/// Whether this machine has a vkms card: otherwise the row is not run.
pub(crate) fn available() -> Result<(), String> {
    let Ok(cards) = std::fs::read_dir("/sys/class/drm") else {
        return Err("no device (no DRM device: /sys/class/drm missing)".into());
    };
    let vkms = cards.filter_map(|e| e.ok()).any(|e| {
        std::fs::canonicalize(e.path())
            .is_ok_and(|p| p.to_string_lossy().contains("/platform/vkms/drm/card"))
    });
    if vkms {
        Ok(())
    } else {
        Err("no device (no vkms card: modprobe vkms)".into())
    }
}

pub(crate) fn consumer_args(sock: &str) -> Vec<String> {
    // sync=false: every frame that arrives is shown (none dropped as late under TCG), and
    // show-preroll-frame=false: none shown twice, so kmssink logs one import per frame.
    // force-modesetting puts the frame on the primary
    // plane in a mode of the video's size (vkms offers 640x480; its planes cannot scale).
    vec![
        "consume".to_string(),
        "--frames-log".into(),
        format!(
            "fdlinksrc socket-path={sock} timeout=60000 ! kmssink driver-name=vkms force-modesetting=true sync=false show-preroll-frame=false"
        ),
    ]
}

pub(crate) fn spawn(args: &[String]) -> Proc {
    spawn_env(args, &[("GST_DEBUG", DEBUG), ("GST_DEBUG_NO_COLOR", "1")])
}

/// One framebuffer in vkms's debugfs: who made it and whether its object is an imported dmabuf.
#[derive(Clone, PartialEq, Eq)]
struct Fb {
    allocated_by: String,
    imported: bool,
}

/// Polls vkms's debugfs `framebuffer` list while the consumer runs, keeping the framebuffers
/// that were not there before it started.
pub(crate) struct FbWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<BTreeMap<u32, Fb>, String>>>,
}

/// A row that fails before its checks drops the watch: the thread stops with it.
impl Drop for FbWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn parse_fbs(text: &str) -> BTreeMap<u32, Fb> {
    let mut fbs = BTreeMap::new();
    let mut current: Option<u32> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(id) = t
            .strip_prefix("framebuffer[")
            .and_then(|r| r.strip_suffix("]:"))
        {
            current = id.parse().ok();
            if let Some(id) = current {
                fbs.insert(
                    id,
                    Fb {
                        allocated_by: String::new(),
                        imported: false,
                    },
                );
            }
        } else if let Some(fb) = current.and_then(|id| fbs.get_mut(&id)) {
            if let Some(who) = t.strip_prefix("allocated by = ") {
                fb.allocated_by = who.to_string();
            } else if t == "imported=yes" {
                fb.imported = true;
            }
        }
    }
    fbs
}

impl FbWatch {
    pub(crate) fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let file = vkms_debugfs()?.join("framebuffer");
            let read = || std::fs::read_to_string(&file).map(|t| parse_fbs(&t));
            let before = read().map_err(|e| format!("{}: {e}", file.display()))?;
            let mut seen = BTreeMap::new();
            loop {
                let done = flag.load(Ordering::Relaxed);
                if let Ok(now) = read() {
                    for (id, fb) in now {
                        if before.get(&id) != Some(&fb) {
                            seen.insert(id, fb);
                        }
                    }
                }
                if done {
                    return Ok(seen);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        FbWatch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Result<BTreeMap<u32, Fb>, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("joined once")
            .join()
            .unwrap_or_else(|_| Err("the debugfs watch panicked".into()))
    }
}

/// The display checks: every frame that reached kmssink was shown from an imported dmabuf,
/// none copied; the note for the row, or the problem.
pub(crate) fn check(consumer_err: &str, frames: usize, watch: FbWatch) -> Result<String, String> {
    let count = |marker: &str| consumer_err.lines().filter(|l| l.contains(marker)).count();
    let (new_fbs, cached, copies, drains) =
        (count(NEW_FB), count(CACHED_FB), count(COPY), count(DRAIN));
    let fbs = watch.finish();
    let mut problems = Vec::new();
    if copies > 0 {
        problems.push(format!(
            "kmssink copied {copies} of {frames} frames into its dumb buffers (GST_PERFORMANCE \"{COPY}\"): they were not dmabufs, or vkms could not import them (see kmssink's log)"
        ));
    }
    if new_fbs + cached != frames {
        problems.push(format!(
            "kmssink logged {} dmabuf imports ({new_fbs} new framebuffers, {cached} reused) for {frames} frames (GST_DEBUG={DEBUG})",
            new_fbs + cached
        ));
    }
    let debugfs = match fbs {
        Ok(fbs) => {
            let imported: Vec<_> = fbs.values().filter(|f| f.imported).collect();
            let dumb = fbs.len() - imported.len();
            // kmssink's log cannot tell the producer's dmabuf from one it exported from its own
            // dumb buffers (an element between it and fdlinksrc writing into kmssink's pool):
            // vkms can, a dumb buffer's object is not imported. A drain's copy makes one.
            if imported.is_empty() || dumb > drains {
                problems.push(format!(
                    "vkms debugfs listed {} framebuffers on imported dmabufs and {dumb} on vkms's own (dumb) buffers while the consumer ran: frames were copied into kmssink's buffers",
                    imported.len()
                ));
            }
            let mut by: Vec<&str> = imported.iter().map(|f| f.allocated_by.as_str()).collect();
            by.sort_unstable();
            by.dedup();
            format!(
                "vkms debugfs: {} framebuffers on imported dmabufs (allocated by {}), {dumb} on its own buffers",
                imported.len(),
                by.join("+")
            )
        }
        Err(e) => {
            problems.push(format!("vkms debugfs unreadable: {e}"));
            String::new()
        }
    };
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let drain_note = if drains > 0 {
        format!(", {drains} copy of the frame on screen when kmssink drained")
    } else {
        String::new()
    };
    Ok(format!(
        ", kmssink on vkms showed every frame from its dmabuf (PRIME import: {new_fbs} framebuffers made, {cached} reused, 0 \"{COPY}\"{drain_note}; {debugfs})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two framebuffers as vkms's debugfs lists them (6.12, trimmed): fbcon's own, and one
    /// kmssink made on a dmabuf it imported.
    const LIST: &str = "framebuffer[47]:
\tallocated by = [fbcon]
\tsize=1024x768
\tlayers:
\t\tobj[0]:
\t\t\tname=0
\t\t\timported=no
framebuffer[48]:
\tallocated by = fdlinksrc0:src
\tsize=640x480
\tlayers:
\t\tobj[0]:
\t\t\timported=yes
";

    #[test]
    fn parses_who_made_each_framebuffer_and_whether_it_is_imported() {
        let fbs = parse_fbs(LIST);
        assert_eq!(fbs.len(), 2);
        assert!(!fbs[&47].imported);
        assert_eq!(fbs[&47].allocated_by, "[fbcon]");
        assert!(fbs[&48].imported);
        assert_eq!(fbs[&48].allocated_by, "fdlinksrc0:src");
    }
}
