//! `fdlink-hwmatrix`: which decoders and dmabuf sources exist on this machine, and for each
//! one whether its frames cross an fdlink zero-copy and intact.
//!
//! For every row it runs `source -> fdlinksink` in one process and `fdlinksrc -> fakesink` in
//! another (both `fdlink-peer`), and checks: frames arrived, every frame was a dmabuf on both
//! sides with the same kernel object (dev, inode, exporter), CRCs equal on both sides and equal
//! to the same source run in one process, frame layout equal (VideoMeta, or the caps' default), zero bytes copied, no fd left open
//! in either process. On GStreamer 1.24 and later, a decoder whose output template offers
//! DMA_DRM caps must negotiate them through the link (checked on both sides). It prints one line
//! per row, naming the GStreamer release, and can write docs/hardware-matrix.md, which keeps
//! one set of rows per release (`--write` replaces only the rows of the release that ran).
//!
//! ```text
//! fdlink-hwmatrix [--write FILE] [--require ROW,ROW,...] [--only ROW,...]
//! ```
//! Exit status 1 when a row fails, or when a `--require`d row did not run.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod display;
mod dma_drm;
mod gl;
mod markdown;
mod peer_output;
mod pool_size;
mod procs;
mod rows;
mod run;

use crate::rows::rows;
use crate::run::{Outcome, run_row};

const FRAMES: u32 = 30;
const TIMEOUT: Duration = Duration::from_secs(120);

/// The GStreamer release the rows run on (`gst-inspect-1.0 --version`), e.g. `1.26.2`.
pub(crate) fn gst_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        Command::new("gst-inspect-1.0")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find_map(|l| l.strip_prefix("GStreamer ").map(str::to_string))
            })
            .unwrap_or_else(|| "?".into())
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut write = None;
    let mut require: Vec<String> = Vec::new();
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let list = |v: Option<&String>| -> Vec<String> {
            v.map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        };
        match a.as_str() {
            "--write" => write = it.next().cloned(),
            "--require" => require = list(it.next()),
            "--only" => only = Some(list(it.next())),
            _ => {
                eprintln!(
                    "usage: fdlink-hwmatrix [--write FILE] [--require ROW,...] [--only ROW,...]"
                );
                std::process::exit(2);
            }
        }
    }
    let gst = gst_version();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let sock_dir = std::env::temp_dir().join(format!("fdlink-hwmatrix-{}", std::process::id()));
    std::fs::create_dir_all(&sock_dir).expect("temp dir");
    let mut results: BTreeMap<usize, (&'static str, Outcome)> = BTreeMap::new();
    for (i, row) in rows().iter().enumerate() {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == row.name))
        {
            continue;
        }
        let started = Instant::now();
        let mut outcome = run_row(row, &sock_dir);
        // Every row gets a second attempt (the emulated VM is noisy), a driver with a known
        // EOS bug a third; the row keeps what failed before in its detail, nothing is hidden.
        let attempts = if row.eos_bug.is_some() { 3 } else { 2 };
        let mut earlier = Vec::new();
        while earlier.len() + 1 < attempts {
            let Outcome::Fail(why) = &outcome else { break };
            earlier.push(why.clone());
            outcome = run_row(row, &sock_dir);
        }
        if !earlier.is_empty() {
            let note = format!(
                " [attempt {} of {attempts}; before: {}]",
                earlier.len() + 1,
                earlier.join("; ")
            );
            outcome = match outcome {
                Outcome::Pass(t) => Outcome::Pass(t + &note),
                Outcome::Fail(t) => Outcome::Fail(t + &note),
                other => other,
            };
        }
        let (tag, text) = match &outcome {
            Outcome::Pass(t) => ("pass", t),
            Outcome::Fail(t) => ("FAIL", t),
            Outcome::NotRun(t) => ("not run", t),
        };
        println!(
            "{:<26} {:<8} {text} (GStreamer {gst}, {:.1} s)",
            row.name,
            tag,
            started.elapsed().as_secs_f64()
        );
        results.insert(i, (row.name, outcome));
    }
    let _ = std::fs::remove_dir_all(&sock_dir);

    let mut failed = false;
    for (name, outcome) in results.values() {
        match outcome {
            Outcome::Fail(_) => failed = true,
            Outcome::NotRun(why) if require.iter().any(|r| r == name) => {
                eprintln!("required row {name} did not run: {why}");
                failed = true;
            }
            _ => {}
        }
    }
    // A required row left out by --only is not missing.
    let left_out = |r: &String| only.as_ref().is_some_and(|o| !o.contains(r));
    for r in require.iter().filter(|r| !left_out(r)) {
        if !results.values().any(|(n, _)| n == r) {
            eprintln!("required row {r} is not a row of the matrix");
            failed = true;
        }
    }
    if let Some(path) = write {
        // The rows of other GStreamer releases already in the file stay.
        let previous = std::fs::read_to_string(&path).ok();
        let order: Vec<&str> = rows().iter().map(|r| r.name).collect();
        let md = markdown::matrix_markdown(&results, &order, previous.as_deref(), &kernel, gst);
        std::fs::write(&path, md).expect("write matrix");
        println!("wrote {path}");
    }
    let count = |f: fn(&Outcome) -> bool| results.values().filter(|(_, o)| f(o)).count();
    println!(
        "hwmatrix: {} passed, {} failed, {} skipped",
        count(|o| matches!(o, Outcome::Pass(_))),
        count(|o| matches!(o, Outcome::Fail(_))),
        count(|o| matches!(o, Outcome::NotRun(_)))
    );
    std::process::exit(if failed { 1 } else { 0 });
}
