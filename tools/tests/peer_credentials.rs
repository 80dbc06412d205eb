//! Peer credentials and the socket file's permissions (issue 22), with real processes of two
//! uids: the tests run as root, and the other side runs as nobody (uid and gid 65534, no
//! supplementary groups). A producer serves only its own uid and root unless `allowed-uids`
//! or `allowed-gids` says otherwise; a consumer trusts only producers of its own uid and root
//! likewise; `socket-mode` and `socket-group` set the socket file's permissions whatever the
//! umask; an inherited socketpair is judged by its creator's credentials.

mod common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use fdlink::transport::Connection;

const T: Duration = Duration::from_secs(90);
/// nobody's uid and gid (nogroup).
const OTHER: u32 = 65534;

/// A live producer that runs until killed.
fn producer_pipeline(sink: &str) -> String {
    format!(
        "videotestsrc is-live=true ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! {sink}"
    )
}

/// `fdlink-peer ARGS`, as `uid` (None: this process's) with fdlinksink's debug output at
/// INFO on stderr, after `setup` (run in the child just before exec, with its uid already
/// changed).
fn spawn(
    dir: &TempDir,
    uid: Option<u32>,
    args: &[&str],
    setup: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) -> Peer {
    let mut cmd = Command::new(peer_binary(dir, uid.is_some()));
    cmd.args(args)
        .env("GST_REGISTRY_FORK", "no")
        .env("GST_DEBUG", "fdlinksink:4,fdlinksrc:4")
        .env("GST_DEBUG_NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        // std drops the supplementary groups when root changes the uid.
        cmd.uid(uid)
            .gid(uid)
            .env("HOME", &dir.0)
            .current_dir(&dir.0);
        // GStreamer writes its registry where the new uid can.
        cmd.env("GST_REGISTRY", dir.0.join("registry.bin"));
    }
    // SAFETY: `setup` closures below make only async-signal-safe calls (socketpair, sendmsg
    // through a stack buffer, dup2, umask), as a forked child of a threaded process must.
    unsafe { cmd.pre_exec(setup) };
    // A copy just written may still be open for writing in a child another test thread forked
    // meanwhile, until that child execs: exec then fails with ETXTBSY for a moment.
    let mut tries = 0;
    let child = loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            spawned => break spawned.expect("spawn fdlink-peer"),
        }
    };
    Peer::from_child(child)
}

/// The fdlink-peer binary, or for another uid a copy of it in `dir`: the build's target
/// directory may sit where that uid cannot search (a fresh clone under a 0700 temp dir).
fn peer_binary(dir: &TempDir, other_uid: bool) -> std::path::PathBuf {
    let ours = Path::new(env!("CARGO_BIN_EXE_fdlink-peer"));
    if !other_uid {
        return ours.to_path_buf();
    }
    let copy = dir.0.join("fdlink-peer");
    if !copy.exists() {
        std::fs::copy(ours, &copy).expect("copy fdlink-peer where the other uid can run it");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    copy
}

fn no_setup() -> std::io::Result<()> {
    Ok(())
}

/// A test directory that nobody can use: search it, bind in it, write a registry in it. The
/// registry starts as a copy of this user's, so nobody's processes do not scan every plugin.
fn shared_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ours = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cache/gstreamer-1.0/registry.x86_64.bin"));
    if let Some(ours) = ours.filter(|p| p.exists()) {
        let copy = dir.0.join("registry.bin");
        std::fs::copy(ours, &copy).unwrap();
        std::os::unix::fs::chown(&copy, Some(OTHER), Some(OTHER)).unwrap();
    }
    dir
}

/// Waits until the producer listens, its socket file's mode and group set (start() returned).
fn wait_serving(producer: &Peer) {
    producer
        .wait_error_line(T, |l| l.contains("serving consumers on"))
        .unwrap_or_else(|| panic!("the producer never served: {}", producer.errors()));
}

/// Waits for a process that must fail; returns its stderr.
fn failure(peer: &mut Peer, who: &str) -> String {
    let status = peer.wait(T);
    assert!(
        !status.success(),
        "{who} should have failed: {}",
        peer.errors()
    );
    peer.errors()
}

#[test]
fn a_consumer_of_another_uid_is_refused_by_default_and_served_when_allowed() {
    init_gst();
    let dir = shared_dir("creds-consumer");
    let sock = dir.socket();
    // socket-mode=0666: the file lets nobody connect, so only the credentials check refuses.
    let mut producer = spawn(
        &dir,
        None,
        &[
            "produce",
            "--stats-every",
            "100",
            &producer_pipeline(&format!("fdlinksink socket-path={sock} socket-mode=0666")),
        ],
        no_setup,
    );
    wait_serving(&producer);
    let consumer_pipeline = format!("fdlinksrc socket-path={sock} num-buffers=10 ! fakesink");
    let mut consumer = spawn(
        &dir,
        Some(OTHER),
        &["consume", &consumer_pipeline],
        no_setup,
    );
    let err = failure(&mut consumer, "a consumer of uid 65534");
    assert!(
        err.contains(
            "refused this consumer: uid 65534 (gid 65534) is not allowed: set allowed-uids=65534"
        ) && err.contains("on the fdlinksink"),
        "the consumer's error names its uid and the property to set: {err}"
    );
    let stats = producer
        .wait_stats(T, |s| field(s, "consumers-refused") >= 1)
        .expect("the producer counts the refusal");
    assert_eq!(field(&stats, "consumers-total"), 0, "{stats}");
    let logged = producer
        .wait_error_line(T, |l| l.contains("refused connection from pid"))
        .expect("the producer logs the refusal");
    assert!(
        logged.contains(&format!("pid {} uid 65534 gid 65534", consumer.pid()))
            && logged.contains("WARN"),
        "a warning with the consumer's pid and uid: {logged}"
    );
    producer.kill9();

    // allowed-uids=65534: served; the consumer trusts a root producer by default.
    let sock = dir.0.join("allowed.sock").display().to_string();
    let mut producer = spawn(
        &dir,
        None,
        &[
            "produce",
            "--stats-every",
            "100",
            &producer_pipeline(&format!(
                "fdlinksink socket-path={sock} socket-mode=0666 allowed-uids=\"1000,65534\""
            )),
        ],
        no_setup,
    );
    wait_serving(&producer);
    let consumer_pipeline = format!("fdlinksrc socket-path={sock} num-buffers=10 ! fakesink");
    let mut consumer = spawn(
        &dir,
        Some(OTHER),
        &["consume", &consumer_pipeline],
        no_setup,
    );
    consumer.wait_success(T, "a consumer of an allowed uid");
    let stats = producer
        .wait_stats(T, |s| field(s, "consumers-total") >= 1)
        .expect("the producer served it");
    assert_eq!(field(&stats, "consumers-refused"), 0, "{stats}");
    let accepted = producer
        .wait_error_line(T, |l| l.contains("accepted"))
        .expect("the producer logs each accepted connection");
    assert!(
        accepted.contains(&format!("connection from pid {} uid 65534", consumer.pid())),
        "{accepted}"
    );
    producer.kill9();
}

#[test]
fn a_consumer_in_an_allowed_group_is_served() {
    init_gst();
    let dir = shared_dir("creds-group");
    let sock = dir.socket();
    // socket-group and its mode's group bits let the group's members connect; allowed-gids
    // lets them in.
    let mut producer = spawn(
        &dir,
        None,
        &[
            "produce",
            &producer_pipeline(&format!(
                "fdlinksink socket-path={sock} socket-group=65534 allowed-gids=65534"
            )),
        ],
        no_setup,
    );
    wait_serving(&producer);
    let consumer_pipeline = format!("fdlinksrc socket-path={sock} num-buffers=10 ! fakesink");
    let mut consumer = spawn(
        &dir,
        Some(OTHER),
        &["consume", &consumer_pipeline],
        no_setup,
    );
    consumer.wait_success(T, "a consumer in group 65534");
    producer.kill9();
}

#[test]
fn the_socket_file_gets_socket_mode_and_group_whatever_the_umask() {
    init_gst();
    let dir = shared_dir("creds-mode");
    // umask 000 would make the kernel's socket file 0777: anyone could connect.
    let open_umask = || {
        // SAFETY: umask only sets the process's mask.
        unsafe { libc::umask(0) };
        Ok(())
    };
    let sock = dir.socket();
    let mut producer = spawn(
        &dir,
        None,
        &[
            "produce",
            &producer_pipeline(&format!("fdlinksink socket-path={sock}")),
        ],
        open_umask,
    );
    wait_serving(&producer);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(
        meta.mode() & 0o7777,
        0o660,
        "the default socket-mode under umask 000"
    );
    // Nobody is neither the owner nor in the group: the file refuses it before any
    // credentials are read.
    let consumer_pipeline = format!("fdlinksrc socket-path={sock} timeout=0 ! fakesink");
    let mut consumer = spawn(
        &dir,
        Some(OTHER),
        &["consume", &consumer_pipeline],
        no_setup,
    );
    let err = failure(&mut consumer, "a consumer without write permission");
    assert!(err.contains("EACCES"), "{err}");
    producer.kill9();

    let sock = dir.0.join("grouped.sock").display().to_string();
    let mut producer = spawn(
        &dir,
        None,
        &[
            "produce",
            &producer_pipeline(&format!(
                "fdlinksink socket-path={sock} socket-mode=0640 socket-group=nogroup"
            )),
        ],
        open_umask,
    );
    wait_serving(&producer);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(meta.gid(), OTHER, "socket-group=nogroup");
    producer.kill9();

    // A mode that is not octal fails at start, saying how to write one.
    let sock = dir.0.join("bad.sock").display().to_string();
    let mut producer = spawn(
        &dir,
        None,
        &[
            "produce",
            &producer_pipeline(&format!(
                "fdlinksink socket-path={sock} socket-mode=rw-rw----"
            )),
        ],
        no_setup,
    );
    let err = failure(&mut producer, "a producer with socket-mode=rw-rw----");
    assert!(
        err.contains("socket-mode \"rw-rw----\" is not an octal file mode") && err.contains("0660"),
        "{err}"
    );
    assert!(!Path::new(&sock).exists(), "no socket file is left");
}

#[test]
fn a_producer_of_another_uid_is_not_trusted_by_a_default_consumer() {
    init_gst();
    let dir = shared_dir("creds-producer");
    let sock = dir.socket();
    let mut producer = spawn(
        &dir,
        Some(OTHER),
        &[
            "produce",
            &producer_pipeline(&format!("fdlinksink socket-path={sock} socket-mode=0666")),
        ],
        no_setup,
    );
    wait_serving(&producer);
    let consumer_pipeline = format!("fdlinksrc socket-path={sock} num-buffers=10 ! fakesink");
    let mut consumer = spawn(&dir, None, &["consume", &consumer_pipeline], no_setup);
    let err = failure(&mut consumer, "a consumer of a producer of uid 65534");
    assert!(
        err.contains(&format!(
            "fdlink producer at {sock} (pid {} uid 65534 gid 65534) is not trusted: its uid 65534 (gid 65534) is not allowed: set allowed-uids=65534",
            producer.pid()
        )) && err.contains("on the fdlinksrc"),
        "the consumer's error names the producer's uid and the property to set: {err}"
    );
    // The producer hears why, and goes on.
    producer
        .wait_error_line(T, |l| {
            l.contains("the consumer does not trust this producer: uid 65534")
        })
        .expect("the producer logs the consumer's refusal");

    let consumer_pipeline =
        format!("fdlinksrc socket-path={sock} num-buffers=10 allowed-uids=65534 ! fakesink");
    let mut consumer = spawn(&dir, None, &["consume", &consumer_pipeline], no_setup);
    consumer.wait_success(T, "a consumer that allows uid 65534");
    producer.kill9();
}

/// Fds the inherited sockets get in the children: above what this test process has open, so
/// that no fd a forked child still needs (std's exec-error pipe) is replaced.
const CONSUMER_FD: i32 = 200;
const PRODUCER_FD: i32 = 201;

/// Makes `fd` the inheritable fd `target` (in a forked child, before exec).
fn inherit_as(fd: i32, target: i32) -> std::io::Result<()> {
    // SAFETY: fcntl and dup2 on fds of this child; `target` is free or one this test chose.
    let rc = unsafe {
        if fd == target {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, target)
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `fd` over `ctl` without allocating (in a forked child).
fn send_fd(ctl: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: `ctl` is a connected SEQPACKET socket for as long as this call runs, owned by
    // the caller; ManuallyDrop keeps this temporary owner from closing it.
    let ctl = std::mem::ManuallyDrop::new(
        Connection::from_owned(unsafe {
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ctl.as_raw_fd())
        })
        .map_err(|_| std::io::Error::from_raw_os_error(libc::ENOTSOCK))?,
    );
    ctl.try_send(b"fd", &[fd])
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EPIPE))
}

#[test]
fn an_inherited_socketpair_is_judged_by_its_creator() {
    init_gst();
    let dir = shared_dir("creds-inherited");
    for (allowed, served) in [("", false), ("allowed-uids=65534", true)] {
        // The consumer, as nobody, makes the socketpair (so the producer's end reports its
        // credentials), keeps one end and sends the other back over `ctl`.
        let (ctl_ours, ctl_theirs) = Connection::pair().unwrap();
        let ctl_raw = ctl_theirs.as_fd().as_raw_fd();
        let make_pair = move || {
            // SAFETY: ctl_raw stays open in this child until exec (close-on-exec).
            let ctl = unsafe { BorrowedFd::borrow_raw(ctl_raw) };
            let (ours, theirs) =
                Connection::pair().map_err(|_| std::io::Error::from_raw_os_error(libc::EMFILE))?;
            send_fd(ctl, theirs.as_fd())?;
            inherit_as(ours.as_fd().as_raw_fd(), CONSUMER_FD)?;
            // Closing is left to exec: nothing in a forked child should free memory.
            std::mem::forget((ours, theirs));
            Ok(())
        };
        let consumer_pipeline = format!("fdlinksrc fd={CONSUMER_FD} num-buffers=10 ! fakesink");
        let mut consumer = spawn(
            &dir,
            Some(OTHER),
            &["consume", &consumer_pipeline],
            make_pair,
        );
        let mut buf = vec![0u8; fdlink::protocol::MAX_PACKET_SIZE];
        let got = ctl_ours
            .recv_wait(&mut buf, None, Some(T))
            .unwrap()
            .expect("the consumer's socketpair end");
        let producer_end: OwnedFd = got.fds.into_iter().next().expect("one fd");
        let producer_raw = producer_end.as_raw_fd();
        let mut producer = spawn(
            &dir,
            None,
            &[
                "produce",
                &producer_pipeline(&format!("fdlinksink fd={PRODUCER_FD} {allowed}")),
            ],
            move || inherit_as(producer_raw, PRODUCER_FD),
        );
        drop(producer_end);
        if served {
            consumer.wait_success(T, "a consumer on an allowed socketpair");
        } else {
            let err = failure(&mut consumer, "a consumer on nobody's socketpair");
            assert!(
                err.contains("refused this consumer: uid 65534 (gid 65534) is not allowed"),
                "{err}"
            );
        }
        producer.kill9();
        drop(ctl_theirs);
    }
}
