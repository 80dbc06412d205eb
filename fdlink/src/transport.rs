//! Socket I/O: the only module that talks to sockets.
//!
//! AF_UNIX SOCK_SEQPACKET keeps message boundaries, so one `send` is one packet. File
//! descriptors travel as SCM_RIGHTS beside the bytes. Received fds become `OwnedFd` the moment
//! the kernel hands them over, are close-on-exec (MSG_CMSG_CLOEXEC), and a truncated control
//! message (MSG_CTRUNC) is an error after every fd that did arrive has been closed.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    self, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr, sockopt,
};

use crate::protocol::{EncodeError, MAX_FDS, MAX_PACKET_SIZE, Packet, PacketFds};

mod socket_file;
pub use socket_file::{AccessSettingError, SocketAccess};

/// Socket-level failures, each naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("socket path {} does not exist (is the producer running?)", path.display())]
    NoSuchPath { path: PathBuf },
    #[error("nothing listens on socket path {} (stale socket file of a dead producer?)", path.display())]
    NotListening { path: PathBuf },
    #[error("{} is not an fdlink socket: {why}", path.display())]
    NotFdlinkSocket { path: PathBuf, why: &'static str },
    #[error(
        "another live process already listens on {}; refusing to take it over: stop it or set socket-path to another path",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error(
        "{} exists and is not a socket; refusing to replace it: remove it or set socket-path to another path",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error(
        "socket path {} is too long for AF_UNIX (at most {} bytes): set socket-path to a shorter path",
        path.display(),
        MAX_SOCKET_PATH
    )]
    PathTooLong { path: PathBuf },
    /// The listening socket's file cannot be made: `why` names the cause and what to do.
    #[error("cannot create socket {}: {why}", path.display())]
    CannotCreate { path: PathBuf, why: String },
    #[error("inherited fd is not a SOCK_SEQPACKET AF_UNIX socket: {why}")]
    BadInheritedSocket { why: String },
    #[error("peer closed the connection")]
    Closed,
    #[error("received packet larger than {max} bytes", max = MAX_PACKET_SIZE)]
    Truncated,
    #[error("received fds were truncated by the kernel (MSG_CTRUNC): more than {max} fds sent", max = MAX_FDS)]
    FdsTruncated,
    #[error("peer is too slow: its socket buffer is full")]
    WouldBlock,
    #[error("timed out after {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("cannot encode packet: {0}")]
    Encode(EncodeError),
    #[error("{op} on {what}: {errno}")]
    Sys {
        op: &'static str,
        what: String,
        errno: Errno,
    },
}

fn sys(op: &'static str, what: impl Into<String>) -> impl FnOnce(Errno) -> TransportError {
    let what = what.into();
    move |errno| TransportError::Sys { op, what, errno }
}

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> TransportError {
    sys(op, path.display().to_string())(Errno::from_raw(e.raw_os_error().unwrap_or(0)))
}

/// The longest socket path AF_UNIX takes, in bytes (sun_path less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why bind could not make the socket file at `path`, and what to do.
fn cannot_create(path: &Path, errno: Errno) -> TransportError {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.display().to_string(),
        _ => ".".into(),
    };
    let why = match errno {
        Errno::ENOENT => format!(
            "directory {dir} does not exist: create it or set socket-path to a writable directory"
        ),
        Errno::EACCES | Errno::EPERM => format!(
            "no permission to create files in directory {dir}: set socket-path to a directory this user can write to"
        ),
        Errno::EROFS => format!(
            "directory {dir} is on a read-only file system: set socket-path to a writable directory"
        ),
        Errno::ENOTDIR => format!(
            "a component of {dir} is not a directory: set socket-path to a path in a directory"
        ),
        e => format!("bind: {e}"),
    };
    TransportError::CannotCreate {
        path: path.into(),
        why,
    }
}

fn unix_addr(path: &Path) -> Result<UnixAddr, TransportError> {
    UnixAddr::new(path).map_err(|_| TransportError::PathTooLong { path: path.into() })
}

fn seqpacket_socket() -> Result<OwnedFd, TransportError> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("socket", "AF_UNIX SOCK_SEQPACKET"))
}

/// A listening socket bound to a path, unlinked on drop if the path is still ours.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
    /// (dev, ino) of the socket file we bound, so drop never unlinks a successor's socket.
    identity: (u64, u64),
}

impl Listener {
    /// Binds and listens on `path`. A socket file left by a dead process is replaced; one that
    /// a live process listens on is not. The file gets the kernel's mode (0777 minus the
    /// umask): see [`Listener::bind_with`].
    pub fn bind(path: &Path) -> Result<Listener, TransportError> {
        Self::bind_with(path, &SocketAccess::default())
    }

    /// As [`Listener::bind`], giving the socket file `access`'s mode and group before anyone
    /// can connect (before listen).
    pub fn bind_with(path: &Path, access: &SocketAccess) -> Result<Listener, TransportError> {
        let addr = unix_addr(path)?;
        let fd = seqpacket_socket()?;
        socket_file::before_bind(fd.as_fd(), access)?;
        match socket::bind(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(Errno::EADDRINUSE) => {
                Self::remove_stale(path)?;
                socket::bind(fd.as_raw_fd(), &addr).map_err(|e| cannot_create(path, e))?;
            }
            Err(
                e @ (Errno::ENOENT | Errno::EACCES | Errno::EPERM | Errno::EROFS | Errno::ENOTDIR),
            ) => return Err(cannot_create(path, e)),
            Err(e) => return Err(sys("bind", path.display().to_string())(e)),
        }
        let identity =
            file_identity_of_path(path).map_err(sys("stat", path.display().to_string()))?;
        // From here on a failure unlinks the file (Listener's drop).
        let listener = Listener {
            fd,
            path: path.into(),
            identity,
        };
        socket_file::after_bind(path, identity, access)?;
        socket::listen(&listener.fd, Backlog::new(64).expect("valid backlog"))
            .map_err(sys("listen", path.display().to_string()))?;
        set_nonblocking(listener.fd.as_fd())?;
        Ok(listener)
    }

    fn remove_stale(path: &Path) -> Result<(), TransportError> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| io_err("stat", path, e))?;
        if !meta.file_type().is_socket() {
            return Err(TransportError::NotASocket { path: path.into() });
        }
        match Connection::connect(path) {
            // Someone answered: a live producer (or some other live server) owns it.
            Ok(_) => Err(TransportError::InUse { path: path.into() }),
            Err(TransportError::NotFdlinkSocket { .. }) => {
                Err(TransportError::InUse { path: path.into() })
            }
            Err(TransportError::NotListening { .. }) => {
                std::fs::remove_file(path).map_err(|e| io_err("unlink stale socket", path, e))
            }
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one pending connection, or `None` when there is none.
    pub fn accept(&self) -> Result<Option<Connection>, TransportError> {
        match socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(raw) => {
                // SAFETY: accept4 returned a new fd that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                Ok(Some(Connection { fd }))
            }
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => Ok(None),
            Err(e) => Err(sys("accept", self.path.display().to_string())(e)),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if file_identity_of_path(&self.path).ok() == Some(self.identity) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn file_identity_of_path(path: &Path) -> Result<(u64, u64), Errno> {
    let st = nix::sys::stat::lstat(path)?;
    Ok((st.st_dev, st.st_ino))
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), TransportError> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(sys("fcntl", "F_GETFL"))?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(sys("fcntl", "F_SETFL"))?;
    Ok(())
}

/// One end of a connected SEQPACKET socket. Sends and receives may run on different threads.
#[derive(Debug)]
pub struct Connection {
    fd: OwnedFd,
}

/// Bytes and fds of one received packet.
#[derive(Debug)]
pub struct Received {
    pub len: usize,
    pub fds: PacketFds<OwnedFd>,
}

impl Connection {
    /// Connects to the producer listening on `path`.
    pub fn connect(path: &Path) -> Result<Connection, TransportError> {
        let addr = unix_addr(path)?;
        let fd = seqpacket_socket()?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => Ok(Connection { fd }),
            Err(Errno::ENOENT) => Err(TransportError::NoSuchPath { path: path.into() }),
            Err(Errno::ECONNREFUSED) => Err(TransportError::NotListening { path: path.into() }),
            Err(Errno::EPROTOTYPE) => Err(TransportError::NotFdlinkSocket {
                path: path.into(),
                why: "it is not a SOCK_SEQPACKET socket",
            }),
            Err(Errno::ENOTSOCK) => Err(TransportError::NotFdlinkSocket {
                path: path.into(),
                why: "it is not a socket",
            }),
            Err(e) => Err(sys("connect", path.display().to_string())(e)),
        }
    }

    /// Takes over an already-connected socket (e.g. one end of a socketpair a launcher made).
    pub fn from_owned(fd: OwnedFd) -> Result<Connection, TransportError> {
        let ty = socket::getsockopt(&fd, sockopt::SockType).map_err(|e| {
            TransportError::BadInheritedSocket {
                why: format!("getsockopt(SO_TYPE): {e}"),
            }
        })?;
        if ty != SockType::SeqPacket {
            return Err(TransportError::BadInheritedSocket {
                why: format!("socket type is {ty:?}"),
            });
        }
        Ok(Connection { fd })
    }

    /// Works on a close-on-exec duplicate of an inherited, already-connected socket; `fd`
    /// itself stays the caller's.
    pub fn inherit(fd: RawFd) -> Result<Connection, TransportError> {
        // SAFETY: only borrowed for the duplicate; validity is the caller's promise, and a
        // closed or foreign fd makes fcntl fail with EBADF, reported below.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let dup =
            nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(|e| {
                TransportError::BadInheritedSocket {
                    why: format!("cannot duplicate fd {fd}: {e}"),
                }
            })?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        Connection::from_owned(unsafe { OwnedFd::from_raw_fd(dup) })
    }

    /// A connected pair, for tests and launchers.
    pub fn pair() -> Result<(Connection, Connection), TransportError> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(sys("socketpair", "AF_UNIX SOCK_SEQPACKET"))?;
        Ok((Connection { fd: a }, Connection { fd: b }))
    }

    /// Process id of the peer (SO_PEERCRED), for logs.
    pub fn peer_pid(&self) -> Option<i32> {
        socket::getsockopt(&self.fd, sockopt::PeerCredentials)
            .ok()
            .map(|c| c.pid())
    }

    /// The peer's (pid, uid, gid) (SO_PEERCRED): for a connected socket, the listener's at its
    /// listen(); for an accepted one, the connecting process's at its connect(); for a
    /// socketpair, its creator's.
    pub fn peer_credentials(&self) -> Option<(i32, u32, u32)> {
        socket::getsockopt(&self.fd, sockopt::PeerCredentials)
            .ok()
            .map(|c| (c.pid(), c.uid(), c.gid()))
    }

    /// The peer's supplementary groups at the same moment (SO_PEERGROUPS, Linux 4.13); None
    /// where the kernel cannot tell.
    pub fn peer_groups(&self) -> Option<Vec<u32>> {
        let mut groups: Vec<libc::gid_t> = vec![0; 64];
        loop {
            let mut len = std::mem::size_of_val(groups.as_slice()) as libc::socklen_t;
            // SAFETY: the buffer holds `len` bytes and outlives the call, which writes at
            // most `len` bytes into it and sets `len` to what it wrote (or needs).
            let rc = unsafe {
                libc::getsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_PEERGROUPS,
                    groups.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            let count = len as usize / std::mem::size_of::<libc::gid_t>();
            if rc == 0 {
                groups.truncate(count);
                return Some(groups);
            }
            if Errno::last() != Errno::ERANGE || count <= groups.len() {
                return None;
            }
            groups.resize(count, 0);
        }
    }

    /// Sends one packet with its fds. Never blocks: a full socket buffer is `WouldBlock`.
    pub fn try_send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        self.send_flags(bytes, fds, MsgFlags::MSG_DONTWAIT)
    }

    /// Sends one packet, waiting at most `timeout` for room in the socket buffer.
    pub fn send_timeout(
        &self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_send(bytes, fds) {
                Err(TransportError::WouldBlock) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(TransportError::TimedOut(timeout));
                    }
                    wait_fd(self.fd.as_fd(), PollFlags::POLLOUT, left)?;
                }
                other => return other,
            }
        }
    }

    /// Encodes a packet that carries no fds and sends it, waiting at most `timeout` for room
    /// (None: not at all).
    pub fn send_packet(
        &self,
        packet: &Packet<BorrowedFd<'_>>,
        timeout: Option<Duration>,
    ) -> Result<(), TransportError> {
        let mut out = Vec::with_capacity(64);
        packet.encode(&mut out).map_err(TransportError::Encode)?;
        match timeout {
            Some(t) => self.send_timeout(&out, packet.fds(), t),
            None => self.try_send(&out, packet.fds()),
        }
    }

    /// Tells the peer why this side gives up, just before closing (best effort, never waits).
    pub fn send_error(&self, msg: &str) {
        let _ = self.send_packet(&Packet::Error(msg.to_string()), None);
    }

    fn send_flags(
        &self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        flags: MsgFlags,
    ) -> Result<(), TransportError> {
        let raw: smallvec_fds::Fds = fds.iter().map(|f| f.as_raw_fd()).collect();
        let raw = raw.as_slice();
        // A control buffer on the stack: nix's sendmsg allocates one per call.
        let mut cmsg_buf = [0u64; CMSG_BUFFER_WORDS];
        let iov = [IoSlice::new(bytes)];
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut mhdr: libc::msghdr = unsafe { std::mem::zeroed() };
        mhdr.msg_iov = iov.as_ptr() as *mut libc::iovec;
        // `as _`: usize on glibc, c_int on musl.
        mhdr.msg_iovlen = iov.len() as _;
        if !raw.is_empty() {
            let payload = std::mem::size_of_val(raw);
            // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
            let (space, len) = unsafe {
                (
                    libc::CMSG_SPACE(payload as u32) as usize,
                    libc::CMSG_LEN(payload as u32) as usize,
                )
            };
            debug_assert!(space <= std::mem::size_of_val(&cmsg_buf));
            mhdr.msg_control = cmsg_buf.as_mut_ptr().cast();
            mhdr.msg_controllen = space as _;
            // SAFETY: msg_control points at cmsg_buf, which holds `space` bytes (raw has at
            // most MAX_FDS fds), so the first header and its payload are within it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&mhdr);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = len as _;
                std::ptr::copy_nonoverlapping(
                    raw.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(cmsg),
                    payload,
                );
            }
        }
        let flags = (flags | MsgFlags::MSG_NOSIGNAL).bits();
        loop {
            // SAFETY: mhdr points at live buffers (iov, cmsg_buf) of the sizes it states;
            // sendmsg only reads them.
            let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &mhdr, flags) };
            if n >= 0 {
                return Ok(());
            }
            match Errno::last() {
                Errno::EINTR => continue,
                Errno::EAGAIN => return Err(TransportError::WouldBlock),
                Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN => {
                    return Err(TransportError::Closed);
                }
                e => return Err(sys("sendmsg", "fdlink socket")(e)),
            }
        }
    }

    /// Receives one packet into `buf` (which must hold MAX_PACKET_SIZE bytes). Returns
    /// `WouldBlock` when nothing is pending and `Closed` at end of stream.
    pub fn try_recv(&self, buf: &mut [u8]) -> Result<Received, TransportError> {
        recv_packet(self.fd.as_fd(), buf, libc::MSG_DONTWAIT)
    }

    /// Waits up to `timeout` (forever if `None`) for a packet, or until `waker` fires
    /// (then `Ok(None)`).
    pub fn recv_wait(
        &self,
        buf: &mut [u8],
        waker: Option<&Waker>,
        timeout: Option<Duration>,
    ) -> Result<Option<Received>, TransportError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.try_recv(buf) {
                Err(TransportError::WouldBlock) => {}
                other => return other.map(Some),
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(TransportError::TimedOut(timeout.unwrap_or_default()));
            }
            // On the stack: a reader waits here once per frame. Without a waker the second
            // entry is left out of the poll.
            let socket = self.fd.as_fd();
            let mut pfds = [
                PollFd::new(socket, PollFlags::POLLIN),
                PollFd::new(waker.map_or(socket, |w| w.as_fd()), PollFlags::POLLIN),
            ];
            let polled = if waker.is_some() { 2 } else { 1 };
            poll_retry(&mut pfds[..polled], left)?;
            if polled > 1
                && pfds[1]
                    .revents()
                    .is_some_and(|r| r.contains(PollFlags::POLLIN))
            {
                return Ok(None);
            }
        }
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Minimal fixed-capacity fd list so sending does not allocate.
mod smallvec_fds {
    use super::{MAX_FDS, RawFd};

    pub struct Fds {
        fds: [RawFd; MAX_FDS],
        len: usize,
    }

    impl Fds {
        pub fn as_slice(&self) -> &[RawFd] {
            &self.fds[..self.len]
        }
    }

    impl FromIterator<RawFd> for Fds {
        fn from_iter<I: IntoIterator<Item = RawFd>>(iter: I) -> Self {
            let mut out = Fds {
                fds: [-1; MAX_FDS],
                len: 0,
            };
            for fd in iter.into_iter().take(MAX_FDS) {
                out.fds[out.len] = fd;
                out.len += 1;
            }
            out
        }
    }
}

/// <asm/socket.h>'s SO_PEERGROUPS (Linux 4.13), which the libc crate does not export.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERGROUPS: libc::c_int = 59;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERGROUPS: libc::c_int = 0x3d;

/// Room for CMSG_SPACE(MAX_FDS fds) on any target; msg_controllen is set to exactly that, so
/// one fd more is MSG_CTRUNC.
const CMSG_BUFFER_WORDS: usize = 32;

fn recv_packet(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> Result<Received, TransportError> {
    // nix's RecvMsg::cmsgs() refuses to iterate when MSG_CTRUNC is set, which would leak the
    // fds the kernel did install; so this one call walks the control messages itself.
    let mut cmsg_buf = [0u64; CMSG_BUFFER_WORDS];
    // SAFETY: CMSG_SPACE only computes a size.
    let cmsg_len =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    debug_assert!(cmsg_len <= std::mem::size_of_val(&cmsg_buf));
    let mut iov = [IoSliceMut::new(buf)];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut mhdr: libc::msghdr = unsafe { std::mem::zeroed() };
    mhdr.msg_iov = iov.as_mut_ptr().cast();
    // `as _`: usize on glibc, c_int on musl.
    mhdr.msg_iovlen = iov.len() as _;
    mhdr.msg_control = cmsg_buf.as_mut_ptr().cast();
    mhdr.msg_controllen = cmsg_len as _;
    let n = loop {
        // SAFETY: mhdr points at live buffers (iov, cmsg_buf) of the sizes it states.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut mhdr, flags | libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        match Errno::last() {
            // A peer that closed with unread datagrams of ours leaves ECONNRESET here, reported
            // once, before the datagrams it sent us are read: read on (the end is a 0-byte read).
            Errno::EINTR | Errno::ECONNRESET => continue,
            Errno::EAGAIN => return Err(TransportError::WouldBlock),
            e => return Err(sys("recvmsg", "fdlink socket")(e)),
        }
    };
    let mut fds = PacketFds::new();
    // SAFETY: mhdr was filled by a successful recvmsg; CMSG_FIRSTHDR/NXTHDR stay within
    // msg_controllen, and each SCM_RIGHTS payload holds whole c_ints installed for us.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&mhdr);
        while !cmsg.is_null() {
            let hdr = &*cmsg;
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let data_len = hdr.cmsg_len as usize - (data as usize - cmsg as usize);
                let count = data_len / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    // SAFETY: the kernel installed this fd for us; nothing else owns it.
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&mhdr, cmsg);
        }
    }
    if mhdr.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(TransportError::FdsTruncated);
    }
    if mhdr.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(TransportError::Truncated);
    }
    if n == 0 && fds.is_empty() {
        return Err(TransportError::Closed);
    }
    Ok(Received { len: n, fds })
}

/// poll(2)'s timeout in ms for `timeout` (None: -1, forever), rounded up so a 0.4 ms wait
/// does not become a busy loop.
fn poll_timeout_ms(timeout: Option<Duration>) -> i32 {
    timeout.map_or(-1, |t| {
        t.as_millis().saturating_add(1).min(i32::MAX as u128) as i32
    })
}

fn poll_retry(pfds: &mut [PollFd<'_>], timeout: Option<Duration>) -> Result<(), TransportError> {
    let timeout = PollTimeout::try_from(poll_timeout_ms(timeout)).unwrap_or(PollTimeout::MAX);
    match poll(pfds, timeout) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(sys("poll", "fdlink socket")(e)),
    }
}

/// A poll set that keeps its storage across calls, so a loop that polls the same sockets over
/// and over does not allocate each time. It holds raw fds: the caller keeps every fd it pushed
/// open until `poll` returns.
#[derive(Default)]
pub struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl PollSet {
    pub fn clear(&mut self) {
        self.fds.clear();
    }

    /// Adds `fd`; its revents are at the index this returns.
    pub fn push(&mut self, fd: BorrowedFd<'_>, events: PollFlags) -> usize {
        self.fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: events.bits(),
            revents: 0,
        });
        self.fds.len() - 1
    }

    /// Waits until one of the fds has one of its events or `timeout` passes (None: forever).
    /// An interrupted wait returns with no events.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        let ms = poll_timeout_ms(timeout);
        // SAFETY: pointer and length describe this set's own initialized pollfd array, which
        // poll only writes revents into.
        let n = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EINTR => {
                self.fds.iter_mut().for_each(|p| p.revents = 0);
                Ok(())
            }
            e => Err(sys("poll", "fdlink socket")(e)),
        }
    }

    pub fn revents(&self, index: usize) -> PollFlags {
        PollFlags::from_bits_truncate(self.fds[index].revents)
    }
}

/// Waits until `fd` has one of `events` or `timeout` passes.
pub fn wait_fd(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    timeout: Duration,
) -> Result<(), TransportError> {
    let mut pfds = [PollFd::new(fd, events)];
    poll_retry(&mut pfds, Some(timeout))
}

/// Wakes a thread blocked in `poll` (an eventfd): used by `unlock()` and by shutdown.
#[derive(Debug)]
pub struct Waker {
    efd: EventFd,
}

impl Waker {
    pub fn new() -> Result<Waker, TransportError> {
        let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(sys("eventfd", "waker"))?;
        Ok(Waker { efd })
    }

    pub fn wake(&self) {
        let _ = self.efd.write(1);
    }

    /// Clears pending wake-ups.
    pub fn reset(&self) {
        let _ = self.efd.read();
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }
}

/// Waits for readiness on several fds at once; returns their revents in order.
pub fn poll_many(
    fds: &[(BorrowedFd<'_>, PollFlags)],
    timeout: Option<Duration>,
) -> Result<Vec<PollFlags>, TransportError> {
    let mut pfds: Vec<PollFd<'_>> = fds.iter().map(|(fd, ev)| PollFd::new(*fd, *ev)).collect();
    poll_retry(&mut pfds, timeout)?;
    Ok(pfds
        .iter()
        .map(|p| p.revents().unwrap_or(PollFlags::empty()))
        .collect())
}

#[cfg(test)]
mod tests;
