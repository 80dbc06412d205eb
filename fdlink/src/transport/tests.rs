//! Unit tests of the transport: fds crossing, truncation, closing, wakers, binding.

use super::*;
use std::io::Write;

fn memfd_with(bytes: &[u8]) -> OwnedFd {
    let mfd = memfd::MemfdOptions::default().create("t").unwrap();
    mfd.as_file().write_all(bytes).unwrap();
    OwnedFd::from(mfd.into_file())
}

use crate::test_support::{fd_lock, open_fds};

#[test]
fn fds_cross_as_the_same_file_and_are_cloexec() {
    let _fds = fd_lock();
    let (a, b) = Connection::pair().unwrap();
    let f1 = memfd_with(b"one");
    let f2 = memfd_with(b"two");
    a.try_send(b"hello", &[f1.as_fd(), f2.as_fd()]).unwrap();
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    let got = b.try_recv(&mut buf).unwrap();
    assert_eq!(&buf[..got.len], b"hello");
    assert_eq!(got.fds.len(), 2);
    for (sent, recv) in [&f1, &f2].iter().zip(&got.fds) {
        assert_eq!(
            crate::fdkind::file_identity(sent.as_fd()).unwrap(),
            crate::fdkind::file_identity(recv.as_fd()).unwrap()
        );
        let fl = nix::fcntl::fcntl(recv, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(
            fl & libc::FD_CLOEXEC != 0,
            "received fd is not close-on-exec"
        );
    }
}

#[test]
fn too_many_fds_is_ctrunc_and_nothing_leaks() {
    let _fds = fd_lock();
    let (a, b) = Connection::pair().unwrap();
    let files: Vec<OwnedFd> = (0..40).map(|_| memfd_with(b"x")).collect();
    let before = open_fds();
    // Bypass the sender-side MAX_FDS cap with a raw sendmsg, as a hostile peer would.
    let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
    socket::sendmsg::<UnixAddr>(
        a.as_fd().as_raw_fd(),
        &[IoSlice::new(b"x")],
        &[socket::ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    assert!(matches!(
        b.try_recv(&mut buf),
        Err(TransportError::FdsTruncated)
    ));
    assert_eq!(open_fds(), before, "fds leaked after MSG_CTRUNC");
}

#[test]
fn oversized_packet_is_truncated_error() {
    let _fds = fd_lock();
    let (a, b) = Connection::pair().unwrap();
    a.try_send(&vec![7u8; MAX_PACKET_SIZE + 10], &[]).unwrap();
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    assert!(matches!(
        b.try_recv(&mut buf),
        Err(TransportError::Truncated)
    ));
}

#[test]
fn closed_and_wouldblock() {
    let _fds = fd_lock();
    let (a, b) = Connection::pair().unwrap();
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    assert!(matches!(
        b.try_recv(&mut buf),
        Err(TransportError::WouldBlock)
    ));
    drop(a);
    assert!(matches!(b.try_recv(&mut buf), Err(TransportError::Closed)));
    assert!(matches!(b.try_send(b"x", &[]), Err(TransportError::Closed)));
}

/// A peer that closes with our datagrams unread makes the kernel report ECONNRESET before
/// the datagrams it sent us: they must still be read, then the end.
#[test]
fn data_queued_before_a_reset_close_is_still_read() {
    let _fds = fd_lock();
    let (a, b) = Connection::pair().unwrap();
    b.try_send(b"release", &[]).unwrap(); // never read by `a`
    a.try_send(b"eos", &[]).unwrap();
    drop(a);
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    let got = b.try_recv(&mut buf).unwrap();
    assert_eq!(&buf[..got.len], b"eos");
    assert!(matches!(b.try_recv(&mut buf), Err(TransportError::Closed)));
}

#[test]
fn waker_interrupts_recv_wait() {
    let _fds = fd_lock();
    let (_a, b) = Connection::pair().unwrap();
    let w = Waker::new().unwrap();
    w.wake();
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    assert!(b.recv_wait(&mut buf, Some(&w), None).unwrap().is_none());
    w.reset();
    assert!(matches!(
        b.recv_wait(&mut buf, Some(&w), Some(Duration::from_millis(20))),
        Err(TransportError::TimedOut(_))
    ));
}

#[test]
fn listener_replaces_stale_socket_but_not_live_or_foreign_files() {
    let _fds = fd_lock();
    let dir = std::env::temp_dir().join(format!("fdlink-t-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let _ = std::fs::remove_file(&path);

    let live = Listener::bind(&path).unwrap();
    assert!(matches!(
        Listener::bind(&path),
        Err(TransportError::InUse { .. })
    ));
    drop(live);
    assert!(!path.exists(), "listener did not unlink its socket on drop");

    // A stale socket file: std's listener leaves its file behind when dropped.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(matches!(
        Connection::connect(&path),
        Err(TransportError::NotListening { .. })
    ));
    let replaced = Listener::bind(&path).unwrap();
    drop(replaced);

    std::fs::write(&path, b"not a socket").unwrap();
    assert!(matches!(
        Listener::bind(&path),
        Err(TransportError::NotASocket { .. })
    ));
    assert!(matches!(
        Connection::connect(&path),
        Err(TransportError::NotListening { .. } | TransportError::NotFdlinkSocket { .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        Connection::connect(&path),
        Err(TransportError::NoSuchPath { .. })
    ));

    // A stream socket at the path: connect names the wrong socket type.
    let stream = std::os::unix::net::UnixListener::bind(&path).unwrap();
    assert!(matches!(
        Connection::connect(&path),
        Err(TransportError::NotFdlinkSocket { .. })
    ));
    assert!(matches!(
        Listener::bind(&path),
        Err(TransportError::InUse { .. })
    ));
    drop(stream);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn binding_in_a_missing_directory_names_the_directory_and_what_to_do() {
    let dir = std::env::temp_dir().join(format!("fdlink-t-nodir-{}", std::process::id()));
    let path = dir.join("missing").join("s.sock");
    let err = Listener::bind(&path).unwrap_err();
    assert!(matches!(err, TransportError::CannotCreate { .. }), "{err}");
    let text = err.to_string();
    assert_eq!(
        text,
        format!(
            "cannot create socket {}: directory {} does not exist: create it or set socket-path to a writable directory",
            path.display(),
            dir.join("missing").display()
        )
    );
}
