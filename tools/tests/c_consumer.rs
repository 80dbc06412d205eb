//! The C API (`capi/`: libfdlink, fdlink.h, fdlink.pc) from a C program: its example,
//! built with the system C compiler against the workspace's libfdlink.so through the
//! pkg-config file, takes every frame of a real `fdlinksink` producer in another process
//! with the bytes one GStreamer process makes, zero-copy, releases each, and keeps no fd.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);
const FRAMES: usize = 30;
const SOURCE: &str = "videotestsrc num-buffers=30 pattern=ball ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1";

fn capi_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../capi")
}

/// The directory of the libfdlink.so cargo built for this test (a dev-dependency's lands in
/// `target/<profile>/deps`, a workspace build's in `target/<profile>`): the newer one.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let profile = deps.parent().unwrap();
    [deps, profile]
        .into_iter()
        .filter_map(|dir| {
            let modified = std::fs::metadata(dir.join("libfdlink.so"))
                .and_then(|m| m.modified())
                .ok()?;
            Some((modified, dir.to_path_buf()))
        })
        .max()
        .map(|(_, dir)| dir)
        .unwrap_or_else(|| {
            panic!(
                "no libfdlink.so in {} or {}: build it with `cargo build -p fdlink-capi`",
                deps.display(),
                profile.display()
            )
        })
}

/// Compiler flags for the library, from `capi/fdlink.pc.in` made into a fdlink.pc for
/// `lib_dir` (as an install would), through pkg-config.
fn pkg_config_flags(dir: &TempDir, lib_dir: &Path) -> Vec<String> {
    let template = std::fs::read_to_string(capi_dir().join("fdlink.pc.in")).unwrap();
    let include = capi_dir().join("include");
    let pc = template
        .replace("@PREFIX@", "/usr")
        .replace("@LIBDIR@", lib_dir.to_str().unwrap())
        .replace("@INCLUDEDIR@", include.to_str().unwrap())
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    std::fs::write(dir.0.join("fdlink.pc"), pc).unwrap();
    let out = Command::new("pkg-config")
        .args(["--cflags", "--libs", "fdlink"])
        .env("PKG_CONFIG_PATH", &dir.0)
        .output()
        .expect("run pkg-config");
    assert!(
        out.status.success(),
        "pkg-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Builds `capi/examples/consume.c` into `dir`, warnings as errors, strictly C99.
fn build_example(dir: &TempDir) -> PathBuf {
    let lib_dir = lib_dir();
    let exe = dir.0.join("consume");
    let out = Command::new("cc")
        .args([
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O1",
        ])
        .arg(capi_dir().join("examples/consume.c"))
        .args(pkg_config_flags(dir, &lib_dir))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc consume.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// The word after `name` in `line`.
fn word_after<'a>(line: &'a str, name: &str) -> &'a str {
    let mut words = line.split_whitespace();
    words
        .find(|w| *w == name)
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

#[test]
fn a_c_program_gets_every_frame_zero_copy_and_releases_it() {
    init_gst();
    let dir = TempDir::new("c-consumer");
    let exe = build_example(&dir);
    // PTS, size and CRC-32 of the frames one GStreamer process makes of `SOURCE`.
    let expected: Vec<(Option<u64>, usize, u32)> = samples_in_one_process(SOURCE)
        .iter()
        .map(|s| {
            let buffer = s.buffer().unwrap();
            let map = buffer.map_readable().unwrap();
            (
                buffer.pts().map(gst::ClockTime::nseconds),
                map.len(),
                crc32fast::hash(&map),
            )
        })
        .collect();
    assert_eq!(expected.len(), FRAMES);

    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--stats-every",
        "20",
        "--wait-clients-gone",
        &format!("{SOURCE} ! fdlinksink socket-path={sock} wait-for-connection=true sync=false"),
    ]);
    let mut consumer = Peer::from_child(
        Command::new(&exe)
            .arg(&sock)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the C example"),
    );
    consumer.wait_success(T, "C consumer");
    let lines = consumer.lines();
    assert!(
        lines.iter().any(|l| l == "hold-limit 8"),
        "the producer's max-held: {lines:?}"
    );
    let frames: Vec<&String> = lines.iter().filter(|l| l.starts_with("frame ")).collect();
    assert_eq!(
        frames.len(),
        FRAMES,
        "every frame, then the end of the stream: {lines:?}"
    );
    for (i, (line, (pts, size, crc))) in frames.iter().zip(&expected).enumerate() {
        assert_eq!(word_after(line, "frame"), i.to_string(), "{line}");
        let want_pts = pts.map_or("none".to_string(), |p| p.to_string());
        assert_eq!(word_after(line, "pts"), want_pts, "frame {i}: pts: {line}");
        assert_eq!(
            word_after(line, "size"),
            size.to_string(),
            "frame {i}: {line}"
        );
        assert_eq!(
            word_after(line, "crc32"),
            format!("{crc:08x}"),
            "frame {i}: bytes differ from one process: {line}"
        );
        assert_eq!(word_after(line, "kind"), "1", "a memfd pool: {line}");
        assert_eq!(word_after(line, "video"), "320x240", "{line}");
        assert_eq!(word_after(line, "planes"), "2", "{line}");
    }
    assert!(lines.iter().any(|l| *l == format!("end frames {FRAMES}")));
    let fds = lines
        .iter()
        .find(|l| l.starts_with("fds before "))
        .expect("the fd count line");
    assert_eq!(
        word_after(fds, "before"),
        word_after(fds, "after"),
        "the C program kept fds: {fds}"
    );

    producer.wait_success(T, "producer");
    // The final stats, printed once the consumer had gone.
    let stats = producer.latest_stats().unwrap();
    assert_released_zero_copy(&stats, FRAMES as u64);
}

/// fdlink.h compiles as C99 and as C++ (its `extern "C"` guards) with every warning on.
#[test]
fn the_header_compiles_as_c99_and_cpp() {
    let include = capi_dir().join("include");
    for (compiler, lang, std) in [("cc", "c", "-std=c99"), ("c++", "c++", "-std=c++11")] {
        let out = Command::new(compiler)
            .args(["-x", lang, std, "-Wall", "-Wextra", "-Werror", "-pedantic"])
            .args(["-fsyntax-only", "-include", "fdlink.h", "-I"])
            .arg(&include)
            .arg("/dev/null")
            .output()
            .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
        assert!(
            out.status.success(),
            "{compiler} fdlink.h: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
