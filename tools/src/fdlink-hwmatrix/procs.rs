//! The `fdlink-peer` processes a row runs, their output collected.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TIMEOUT;

fn peer_path() -> PathBuf {
    std::env::current_exe()
        .expect("own path")
        .with_file_name("fdlink-peer")
}

pub(crate) fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// A running peer whose stdout lines are collected; stderr goes to a string too.
pub(crate) struct Proc {
    child: Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    err: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub(crate) fn collect(
    stream: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    lines
}

pub(crate) fn spawn(args: &[String]) -> Proc {
    spawn_cmd(Command::new(peer_path()).args(args))
}

/// A peer with extra environment variables (an element's debug log, read from its stderr).
pub(crate) fn spawn_env(args: &[String], env: &[(&str, &str)]) -> Proc {
    spawn_cmd(
        Command::new(peer_path())
            .args(args)
            .envs(env.iter().copied()),
    )
}

/// The consumer under `strace -e ioctl`, so the matrix can count DMA_BUF_IOCTL_SYNC calls
/// around its CPU reads (GstDmaBufAllocator's map is supposed to make them: verified, not
/// assumed). Without strace, a plain spawn.
pub(crate) fn spawn_traced(args: &[String], trace: &Path) -> Proc {
    if Command::new("strace").arg("-V").output().is_err() {
        return spawn(args);
    }
    spawn_ioctl_traced(args, trace, &["--seccomp-bpf"], &[])
}

/// A peer under `strace -f -e trace=ioctl` and `strace_args`, its log in `trace`, with extra
/// environment variables.
pub(crate) fn spawn_ioctl_traced(
    args: &[String],
    trace: &Path,
    strace_args: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=ioctl"])
        .args(strace_args)
        .arg("-o")
        .arg(trace)
        .arg(peer_path())
        .args(args)
        .envs(env.iter().copied());
    spawn_cmd(&mut cmd)
}

/// The first `error` line of a peer's stderr (fdlink-peer prints the bus's error that way).
pub(crate) fn first_error(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| l.starts_with("error"))
}

/// DMA_BUF_IOCTL_SYNC calls in an strace log (strace 6.1 names the ioctl but does not decode
/// its flags: a map makes one, SYNC_START, and its unmap another, SYNC_END).
pub(crate) fn dmabuf_syncs(trace: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(trace).ok()?;
    Some(
        text.lines()
            .filter(|l| l.contains("DMA_BUF_IOCTL_SYNC") && l.ends_with("= 0"))
            .count(),
    )
}

fn spawn_cmd(cmd: &mut Command) -> Proc {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fdlink-peer");
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    Proc { child, out, err }
}

impl Proc {
    pub(crate) fn finish(mut self) -> (bool, Vec<String>, String) {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        let out = self.out.lock().unwrap().clone();
        let mut err = self.err.lock().unwrap().join("\n");
        if status.is_none() {
            err.push_str(&format!("\n(timed out after {TIMEOUT:?})"));
        }
        (status.is_some_and(|s| s.success()), out, err)
    }
}
