//! The endpoint layer: what either end does with a connection around the stream itself. The
//! hello (each side sends its own first, then checks the peer's: version, role, no fds),
//! connecting to a socket path while no producer listens there yet, and connecting again with
//! backoff after a producer went away. Every wait takes a [`Waker`], so another thread (an
//! element's `unlock()`, a shutdown) can end it.
//!
//! Built on [`transport`](crate::transport) (the socket I/O) and
//! [`protocol`](crate::protocol) (the hello's bytes).

use std::os::fd::{AsFd, OwnedFd};

use std::time::Duration;

use nix::errno::Errno;
use nix::poll::PollFlags;

use crate::protocol::{
    self, DecodeError, Hello, MAX_PACKET_SIZE, Packet, PacketFds, Role, VERSION,
};
use crate::transport::{self, Connection, TransportError, Waker};

mod connecting;
pub use connecting::{Backoff, ConnectError, Reconnect, connect_waiting};

/// How long a peer has to answer our hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a socket path nobody listens on is tried again while waiting for a producer.
pub const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// Why a hello exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer is of our own role (two consumers, or two producers, on one socket).
    #[error(
        "peer is not a {}: it says it is a {} (two {}s on one socket?)",
        role_name(.expected), role_name(.got), role_name(.got)
    )]
    WrongRole { expected: Role, got: Role },
    /// The peer speaks another protocol version.
    #[error(
        "protocol version mismatch: this side speaks version {ours}, the peer speaks version {theirs}"
    )]
    VersionMismatch { ours: u16, theirs: u16 },
    /// No hello came, or ours could not be sent, within the timeout.
    #[error("no hello exchanged within {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// The peer closed the connection (or reset it) before the hellos were exchanged.
    #[error("peer closed the connection during the hello")]
    PeerClosed,
    /// The peer sent an error packet instead of its hello: it refuses us, and says why.
    #[error("peer refused us: {0}")]
    Refused(String),
    /// The peer's first datagram is not an fdlink hello.
    #[error("bad hello: {0}")]
    Malformed(DecodeError),
    /// The peer's hello came with file descriptors.
    #[error("hello carried file descriptors")]
    FdsInHello,
    /// The socket failed on this side.
    #[error("{0}")]
    Transport(TransportError),
    /// The waker fired before the hellos were exchanged.
    #[error("interrupted")]
    Interrupted,
}

impl HandshakeError {
    /// What the peer is told, in an error packet, before the connection closes: only when its
    /// hello was at fault.
    /// What the peer is told, for the errors that are its fault (None for the others).
    fn reply(&self) -> Option<String> {
        match self {
            HandshakeError::WrongRole { .. }
            | HandshakeError::Malformed(_)
            | HandshakeError::FdsInHello => Some(self.to_string()),
            HandshakeError::VersionMismatch { .. } => Some(format!("bad hello: {self}")),
            _ => None,
        }
    }

    /// Why the peer is dropped, in the words it was told when it was told.
    pub fn reason(&self) -> String {
        self.reply().unwrap_or_else(|| self.to_string())
    }

    fn from_transport(e: TransportError) -> HandshakeError {
        match e {
            TransportError::TimedOut(t) => HandshakeError::TimedOut(t),
            e if peer_gone(&e) => HandshakeError::PeerClosed,
            e => HandshakeError::Transport(e),
        }
    }
}

fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Producer => "producer",
        Role::Consumer => "consumer",
    }
}

/// The role a peer of `ours` must have.
fn peer_role(ours: Role) -> Role {
    match ours {
        Role::Producer => Role::Consumer,
        Role::Consumer => Role::Producer,
    }
}

/// Whether a transport error means the peer went away (closed its end, or the socket was
/// reset), rather than a failure on this side.
pub fn peer_gone(e: &TransportError) -> bool {
    matches!(
        e,
        TransportError::Closed
            | TransportError::Sys {
                errno: Errno::EPIPE | Errno::ECONNRESET,
                ..
            }
    )
}

/// Sends our hello: waiting up to `timeout` for room, or not at all with None.
pub fn send_hello(
    conn: &Connection,
    ours: &Hello,
    timeout: Option<Duration>,
) -> Result<(), HandshakeError> {
    let bytes = protocol::encode_hello(ours);
    match timeout {
        Some(t) => conn.send_timeout(&bytes, &[], t),
        None => conn.try_send(&bytes, &[]),
    }
    .map_err(HandshakeError::from_transport)
}

/// Checks the peer's first datagram (`bytes`, with `fd_count` fds beside it) on a connection
/// where we are `ours`: an fdlink hello of our version, from the other role, without fds.
/// A bad hello is answered with an error packet saying why; a peer that sent an error packet
/// instead is not answered.
pub fn check_hello(
    conn: &Connection,
    ours: Role,
    bytes: &[u8],
    fd_count: usize,
) -> Result<Hello, HandshakeError> {
    let checked = judge_hello(ours, bytes, fd_count);
    if let Err(e) = &checked
        && let Some(reply) = e.reply()
    {
        conn.send_error(&reply);
    }
    checked
}

fn judge_hello(ours: Role, bytes: &[u8], fd_count: usize) -> Result<Hello, HandshakeError> {
    if fd_count > 0 {
        return Err(HandshakeError::FdsInHello);
    }
    let hello = match protocol::decode_hello(bytes) {
        Ok(hello) => hello,
        Err(DecodeError::VersionMismatch { ours, theirs }) => {
            return Err(HandshakeError::VersionMismatch { ours, theirs });
        }
        Err(e) => {
            if let Ok(Packet::Error(msg)) = Packet::<OwnedFd>::decode(bytes, PacketFds::new()) {
                return Err(HandshakeError::Refused(msg));
            }
            return Err(HandshakeError::Malformed(e));
        }
    };
    let expected = peer_role(ours);
    if hello.role != expected {
        return Err(HandshakeError::WrongRole {
            expected,
            got: hello.role,
        });
    }
    debug_assert_eq!(hello.version, VERSION);
    Ok(hello)
}

/// Sends `ours`, then waits up to `timeout` for the peer's hello and checks it (see
/// [`check_hello`]). `waker` ends the wait with [`HandshakeError::Interrupted`].
pub fn exchange_hellos(
    conn: &Connection,
    ours: &Hello,
    waker: Option<&Waker>,
    timeout: Duration,
) -> Result<Hello, HandshakeError> {
    // The peer may send an error packet instead of its hello: room for any packet.
    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    if let Err(e) = send_hello(conn, ours, Some(timeout)) {
        // A peer that refused us at once may have closed before our hello went: the error
        // packet saying why is still there to read.
        if let HandshakeError::PeerClosed = e
            && let Ok(got) = conn.try_recv(&mut buf)
        {
            return check_hello(conn, ours.role, &buf[..got.len], got.fds.len());
        }
        return Err(e);
    }
    let got = match conn.recv_wait(&mut buf, waker, Some(timeout)) {
        Ok(Some(got)) => got,
        Ok(None) => return Err(HandshakeError::Interrupted),
        Err(e) => return Err(HandshakeError::from_transport(e)),
    };
    check_hello(conn, ours.role, &buf[..got.len], got.fds.len())
}

/// The consumer's side of the hello: sends ours with `capabilities` (`CAP_*`), then waits up
/// to `timeout` for the producer's. Returns the producer's hello.
pub fn consumer_hello(
    conn: &Connection,
    capabilities: u32,
    waker: Option<&Waker>,
    timeout: Duration,
) -> Result<Hello, HandshakeError> {
    let mut ours = Hello::new(Role::Consumer, std::process::id());
    ours.capabilities = capabilities;
    exchange_hellos(conn, &ours, waker, timeout)
}

/// The producer's hello, announcing `hold_limit` (its `max-held`, 0: none).
fn producer_hello_packet(hold_limit: u32) -> Hello {
    let mut hello = Hello::new(Role::Producer, std::process::id());
    hello.hold_limit = hold_limit;
    hello
}

/// The producer's side of the hello for a caller that may block on one connection: sends
/// ours, then waits up to `timeout` for the consumer's. Returns the consumer's hello (its
/// capabilities say, for one, whether it follows the producer's state).
pub fn producer_hello(
    conn: &Connection,
    hold_limit: u32,
    waker: Option<&Waker>,
    timeout: Duration,
) -> Result<Hello, HandshakeError> {
    exchange_hellos(conn, &producer_hello_packet(hold_limit), waker, timeout)
}

/// The producer's side of the hello in a poll loop that serves many consumers, first step:
/// sends our hello, announcing `hold_limit`, at accept without waiting (it is the first
/// datagram on a fresh socket, so it always fits).
pub fn greet_consumer(conn: &Connection, hold_limit: u32) -> Result<(), HandshakeError> {
    send_hello(conn, &producer_hello_packet(hold_limit), None)
}

/// Second step of [`greet_consumer`]: the consumer's first datagram, once it arrived, must be
/// a consumer's hello (see [`check_hello`]).
pub fn check_consumer_hello(
    conn: &Connection,
    bytes: &[u8],
    fd_count: usize,
) -> Result<Hello, HandshakeError> {
    check_hello(conn, Role::Producer, bytes, fd_count)
}

/// Whether `waker` has fired (and was not reset since).
pub fn is_woken(waker: &Waker) -> bool {
    transport::poll_many(&[(waker.as_fd(), PollFlags::POLLIN)], Some(Duration::ZERO))
        .is_ok_and(|r| r[0].contains(PollFlags::POLLIN))
}

/// Sleeps for `wait` unless `waker` fires first; true when it did.
pub fn sleep_unless_woken(waker: &Waker, wait: Duration) -> bool {
    transport::wait_fd(waker.as_fd(), PollFlags::POLLIN, wait).is_ok() && is_woken(waker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::CAP_FOLLOWS;
    use crate::test_support::fd_lock;
    use crate::transport::Listener;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    const T: Duration = Duration::from_secs(5);

    /// The error packet the peer was sent, if any (after `ours` hello, which is skipped).
    fn error_sent(peer: &Connection) -> Option<String> {
        let mut buf = vec![0u8; MAX_PACKET_SIZE];
        while let Ok(got) = peer.try_recv(&mut buf) {
            if let Ok(Packet::Error(msg)) = Packet::decode(&buf[..got.len], got.fds) {
                return Some(msg);
            }
        }
        None
    }

    fn hello_bytes(role: Role, version: u16) -> Vec<u8> {
        let mut bytes = protocol::encode_hello(&Hello::new(role, 7)).to_vec();
        bytes[4..6].copy_from_slice(&version.to_le_bytes());
        bytes
    }

    #[test]
    fn consumer_and_producer_exchange_hellos() {
        let _fds = fd_lock();
        let (consumer, producer) = Connection::pair().unwrap();
        let producer_side = std::thread::spawn(move || producer_hello(&producer, 8, None, T));
        let theirs = consumer_hello(&consumer, CAP_FOLLOWS, None, T).unwrap();
        assert_eq!(theirs.role, Role::Producer);
        assert_eq!(theirs.pid, std::process::id());
        assert_eq!(theirs.hold_limit, 8);
        let consumers = producer_side.join().unwrap().unwrap();
        assert_eq!(consumers.role, Role::Consumer);
        assert_eq!(consumers.capabilities, CAP_FOLLOWS);
    }

    #[test]
    fn producer_in_two_steps_never_waits() {
        let _fds = fd_lock();
        let (consumer, producer) = Connection::pair().unwrap();
        greet_consumer(&producer, 3).unwrap();
        // The producer's hello waits in the socket: the consumer finishes at once.
        let theirs = consumer_hello(&consumer, 0, None, T).unwrap();
        assert_eq!(theirs.role, Role::Producer);
        assert_eq!(theirs.hold_limit, 3);
        let mut buf = vec![0u8; MAX_PACKET_SIZE];
        let got = producer.try_recv(&mut buf).unwrap();
        let hello = check_consumer_hello(&producer, &buf[..got.len], got.fds.len()).unwrap();
        assert_eq!(hello.role, Role::Consumer);
        assert_eq!(hello.capabilities, 0);
    }

    #[test]
    fn two_consumers_refuse_each_other() {
        let _fds = fd_lock();
        let (a, b) = Connection::pair().unwrap();
        b.try_send(&hello_bytes(Role::Consumer, VERSION), &[])
            .unwrap();
        let e = consumer_hello(&a, 0, None, T).unwrap_err();
        assert!(
            matches!(
                e,
                HandshakeError::WrongRole {
                    expected: Role::Producer,
                    got: Role::Consumer
                }
            ),
            "{e:?}"
        );
        let told = error_sent(&b).expect("an error packet");
        assert!(told.contains("peer is not a producer"), "{told}");
    }

    #[test]
    fn producer_refuses_a_producer_hello() {
        let _fds = fd_lock();
        let (producer, peer) = Connection::pair().unwrap();
        let bytes = hello_bytes(Role::Producer, VERSION);
        let e = check_consumer_hello(&producer, &bytes, 0).unwrap_err();
        assert!(
            matches!(
                e,
                HandshakeError::WrongRole {
                    expected: Role::Consumer,
                    got: Role::Producer
                }
            ),
            "{e:?}"
        );
        let told = error_sent(&peer).expect("an error packet");
        assert!(told.contains("not a consumer"), "{told}");
    }

    #[test]
    fn other_version_names_both_versions_on_both_sides() {
        let _fds = fd_lock();
        for ours in [Role::Consumer, Role::Producer] {
            let (conn, peer) = Connection::pair().unwrap();
            let bytes = hello_bytes(peer_role(ours), 9);
            let e = check_hello(&conn, ours, &bytes, 0).unwrap_err();
            assert!(
                matches!(
                    e,
                    HandshakeError::VersionMismatch {
                        ours: VERSION,
                        theirs: 9
                    }
                ),
                "{e:?}"
            );
            let told = error_sent(&peer).expect("an error packet");
            assert!(
                told.starts_with("bad hello")
                    && told.contains(&format!("version {VERSION}"))
                    && told.contains("version 9"),
                "{told}"
            );
        }
    }

    #[test]
    fn not_fdlink_and_fds_are_bad_hellos() {
        let _fds = fd_lock();
        let (conn, peer) = Connection::pair().unwrap();
        let e = check_consumer_hello(&conn, b"GET / HTTP/1.1\r\n", 0).unwrap_err();
        assert!(
            matches!(e, HandshakeError::Malformed(DecodeError::NotFdlink)),
            "{e:?}"
        );
        assert!(error_sent(&peer).unwrap().contains("peer is not fdlink"));

        let bytes = hello_bytes(Role::Consumer, VERSION);
        let e = check_consumer_hello(&conn, &bytes, 1).unwrap_err();
        assert!(matches!(e, HandshakeError::FdsInHello), "{e:?}");
        assert_eq!(error_sent(&peer).unwrap(), "hello carried file descriptors");
    }

    #[test]
    fn an_error_packet_instead_of_a_hello_is_a_refusal() {
        let _fds = fd_lock();
        let (a, b) = Connection::pair().unwrap();
        b.send_packet(&Packet::Error("too many consumers".into()), None)
            .unwrap();
        let e = consumer_hello(&a, 0, None, T).unwrap_err();
        assert!(
            matches!(&e, HandshakeError::Refused(m) if m == "too many consumers"),
            "{e:?}"
        );
        // Not answered: only our hello went out.
        assert_eq!(error_sent(&b), None);
    }

    #[test]
    fn silence_times_out_and_closing_is_peer_closed() {
        let _fds = fd_lock();
        let (a, b) = Connection::pair().unwrap();
        let started = Instant::now();
        let e = consumer_hello(&a, 0, None, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, HandshakeError::TimedOut(_)), "{e:?}");
        assert!(started.elapsed() >= Duration::from_millis(50));

        drop(b);
        let e = consumer_hello(&a, 0, None, T).unwrap_err();
        assert!(matches!(e, HandshakeError::PeerClosed), "{e:?}");

        // Closed after reading our hello, without answering.
        let (a, b) = Connection::pair().unwrap();
        let closer = std::thread::spawn(move || {
            let mut buf = vec![0u8; MAX_PACKET_SIZE];
            b.recv_wait(&mut buf, None, Some(T)).unwrap();
        });
        let e = producer_hello(&a, 8, None, T).unwrap_err();
        closer.join().unwrap();
        assert!(matches!(e, HandshakeError::PeerClosed), "{e:?}");
    }

    #[test]
    fn waker_interrupts_the_hello() {
        let _fds = fd_lock();
        let (a, _b) = Connection::pair().unwrap();
        let waker = Waker::new().unwrap();
        waker.wake();
        let e = consumer_hello(&a, 0, Some(&waker), T).unwrap_err();
        assert!(matches!(e, HandshakeError::Interrupted), "{e:?}");
    }

    #[test]
    fn peer_gone_is_closed_or_reset() {
        assert!(peer_gone(&TransportError::Closed));
        for errno in [Errno::EPIPE, Errno::ECONNRESET] {
            assert!(peer_gone(&TransportError::Sys {
                op: "sendmsg",
                what: "x".into(),
                errno
            }));
        }
        assert!(!peer_gone(&TransportError::Sys {
            op: "poll",
            what: "x".into(),
            errno: Errno::EBADF
        }));
        assert!(!peer_gone(&TransportError::WouldBlock));
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..9).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 500, 500, 500]);
    }

    /// A socket path in a directory of its own, removed on drop.
    struct TempSocket(PathBuf);

    impl TempSocket {
        fn new() -> TempSocket {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "fdlink-endpoint-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempSocket(dir)
        }

        fn path(&self) -> PathBuf {
            self.0.join("s.sock")
        }
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn connect_waits_for_a_producer_to_appear() {
        let _fds = fd_lock();
        let dir = TempSocket::new();
        let path = dir.path();
        let bind_at = path.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            Listener::bind(&bind_at).unwrap()
        });
        let waker = Waker::new().unwrap();
        let started = Instant::now();
        let conn = connect_waiting(&path, T, &waker);
        let _listener = late.join().unwrap();
        assert!(conn.is_ok(), "{conn:?}");
        assert!(started.elapsed() >= Duration::from_millis(60));
    }

    /// Context switches of thread `tid` of this process so far.
    fn context_switches(tid: i32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    }

    /// Waiting for a producer that is not there sleeps on the directory: a few wake-ups in
    /// 2 s (one a second, IDLE_RECHECK, and one per other file made there), not one every
    /// CONNECT_RETRY (100 in 2 s); and a producer that then binds is connected to.
    #[test]
    fn waiting_for_a_producer_sleeps_until_the_socket_appears() {
        let _fds = fd_lock();
        let dir = TempSocket::new();
        let path = dir.path();
        let (tx, rx) = std::sync::mpsc::channel();
        let wait_at = path.clone();
        let waiter = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let waker = Waker::new().unwrap();
            connect_waiting(&wait_at, T, &waker)
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let before = context_switches(tid);
        // Other files coming and going in the directory (a busy /tmp) wake it once each, and
        // no more: only the socket's own name starts the quick retries.
        for i in 0..5 {
            std::thread::sleep(Duration::from_millis(400));
            std::fs::write(dir.0.join(format!("other-{i}")), b"x").unwrap();
        }
        let woke = context_switches(tid) - before;
        assert!(woke <= 20, "{woke} wake-ups in 2 s of waiting");
        let _listener = Listener::bind(&path).unwrap();
        let conn = waiter.join().unwrap();
        assert!(conn.is_ok(), "{conn:?}");
    }

    #[test]
    fn connect_gives_up_naming_the_path_or_ends_when_woken() {
        let _fds = fd_lock();
        let dir = TempSocket::new();
        let path = dir.path();
        let waker = Waker::new().unwrap();
        let e = connect_waiting(&path, Duration::from_millis(50), &waker).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ConnectError::NoProducer { .. }), "{e:?}");
        assert!(
            text.contains(&path.display().to_string())
                && text.contains("after waiting 50 ms")
                && text.contains("does not exist"),
            "{text}"
        );

        waker.wake();
        let started = Instant::now();
        let e = connect_waiting(&path, T, &waker).unwrap_err();
        assert!(matches!(e, ConnectError::Interrupted), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn connect_to_something_else_fails_at_once() {
        let _fds = fd_lock();
        let dir = TempSocket::new();
        let path = dir.path();
        let _stream = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let waker = Waker::new().unwrap();
        let e = connect_waiting(&path, T, &waker).unwrap_err();
        assert!(
            matches!(
                e,
                ConnectError::Failed {
                    source: TransportError::NotFdlinkSocket { .. },
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn reconnect_backs_off_until_its_deadline() {
        let _fds = fd_lock();
        let dir = TempSocket::new();
        let path = dir.path();
        let waker = Waker::new().unwrap();
        let mut r = Reconnect::new(Some(Duration::from_millis(200)), "connection closed");
        assert_eq!(r.last_failure(), "connection closed");
        let started = Instant::now();
        let e = r.connect(&path, &waker).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Attempts at 0, 10, 30, 70 and 150 ms.
        let ConnectError::GaveUp {
            attempts,
            waited,
            last_failure,
            ..
        } = e
        else {
            panic!("{e:?}");
        };
        assert!((4..=6).contains(&attempts), "{attempts} attempts");
        assert_eq!(attempts, r.attempts());
        assert_eq!(waited, Duration::from_millis(200));
        assert!(last_failure.contains("does not exist"), "{last_failure}");
    }

    #[test]
    fn reconnect_finds_the_next_producer_and_stops_when_woken() {
        let _fds = fd_lock();
        let dir = TempSocket::new();
        let path = dir.path();
        let waker = Waker::new().unwrap();
        let mut r = Reconnect::new(None, "connection closed");
        waker.wake();
        // The first attempt is due at once; the waker ends the wait before the second.
        let e = r.connect(&path, &waker).unwrap_err();
        assert!(matches!(e, ConnectError::Interrupted), "{e:?}");
        assert_eq!(r.attempts(), 1);
        waker.reset();

        let bind_at = path.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            Listener::bind(&bind_at).unwrap()
        });
        let conn = r.connect(&path, &waker);
        let _listener = late.join().unwrap();
        assert!(conn.is_ok(), "{conn:?}");
        assert!(r.attempts() >= 3, "{} attempts", r.attempts());
        r.failed("peer closed the connection during the hello");
        assert_eq!(
            r.last_failure(),
            "peer closed the connection during the hello"
        );
    }
}
