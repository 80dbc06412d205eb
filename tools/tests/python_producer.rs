//! `fdlink.Producer` (python/) serving a real `fdlinksrc ! filesink` process: the file holds
//! the frames the Python program published, byte for byte, from bytes, bytearray and numpy
//! arrays alike; every frame released, none copied at the link. The checks on the Python side
//! are in python/tests/test_producer.py.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);
const FRAMES: usize = 30;
const SIZE: usize = 64 * 48;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// test_producer.py's `pattern(n)`.
fn pattern(n: usize) -> Vec<u8> {
    (0..SIZE).map(|i| ((i * 7 + n * 13) % 256) as u8).collect()
}

#[test]
fn a_pipeline_gets_a_python_programs_frames() {
    let check = Command::new("bash")
        .arg(repo().join("scripts/python-setup.sh"))
        .arg("--check")
        .output()
        .expect("run bash");
    assert!(
        check.status.success(),
        "the Python module is not ready: run scripts/python-setup.sh: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let dir = TempDir::new("python-producer");
    let sock = dir.socket();
    let out = dir.0.join("out.raw");
    let python = std::thread::spawn({
        let sock = sock.clone();
        move || {
            Command::new(repo().join("target/pyenv/bin/python"))
                .arg(repo().join("python/tests/test_producer.py"))
                .arg(&sock)
                .arg(FRAMES.to_string())
                .output()
                .expect("run the Python producer")
        }
    });
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!(
            "fdlinksrc socket-path={sock} ! filesink location={}",
            out.display()
        ),
    ]);
    consumer.wait_success(T, "the consuming pipeline");
    let python = python.join().unwrap();
    let stdout = String::from_utf8_lossy(&python.stdout);
    assert!(
        python.status.success(),
        "the Python producer failed: {stdout}\n{}",
        String::from_utf8_lossy(&python.stderr)
    );
    assert!(stdout.contains(&format!("released {FRAMES}")), "{stdout}");
    let written = std::fs::read(&out).unwrap();
    let want: Vec<u8> = (0..FRAMES).flat_map(pattern).collect();
    assert_eq!(written.len(), want.len(), "bytes written");
    assert!(written == want, "the file holds the frames as published");
}
