//! An application consumer (the Python module, over `fdlink::consumer`) killed with SIGKILL
//! while it holds frames: the producer, a real `fdlinksink` process, gets its buffers back,
//! drops the consumer, and keeps serving an honest one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn a_killed_application_consumer_leaves_the_producer_healthy() {
    init_gst();
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
    let dir = TempDir::new("app-killed");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        "--stats-every",
        "50",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! fdlinksink socket-path={sock}"
        ),
    ]);
    wait_for_path(&sock, T);
    // Holds four frames, says so, and waits to be killed.
    let script = format!(
        "import fdlink, time\nc = fdlink.Consumer({sock:?})\nheld = [next(c) for _ in range(4)]\nprint('holding', flush=True)\ntime.sleep(60)\n"
    );
    let mut app = Peer::from_child(
        Command::new(repo().join("target/pyenv/bin/python"))
            .arg("-c")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python"),
    );
    app.wait_line(T, |l| l == "holding")
        .unwrap_or_else(|| panic!("the application holds frames: {}", app.errors()));
    producer
        .wait_stats(T, |s| {
            field(s, "consumers") == 1 && field(s, "buffers-held") >= 4
        })
        .expect("the producer keeps the held frames' buffers");
    app.kill9();
    producer
        .wait_stats(T, |s| {
            field(s, "consumers") == 0 && field(s, "buffers-held") == 0
        })
        .expect("the killed consumer's buffers come back");
    let mut good = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--seconds",
        "1",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    good.wait_success(T, "honest consumer");
    let got = frames(&good.lines()).len();
    assert!(got >= 10, "honest consumer got {got} frames");
    assert!(
        producer.child.try_wait().unwrap().is_none(),
        "producer died: {}",
        producer.errors()
    );
}
