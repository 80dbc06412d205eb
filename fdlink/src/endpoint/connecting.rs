//! Connecting to a socket path: waiting for a producer to listen there (asleep until the
//! socket's directory changes, with inotify), and connecting again with backoff after a
//! producer went away.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::{CONNECT_RETRY, sleep_unless_woken};
use crate::transport::{self, Connection, TransportError, Waker};

/// Why connecting to a socket path failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nobody listened at the path within the timeout.
    #[error("no fdlink producer at {} after waiting {} ms: {last}", path.display(), timeout.as_millis())]
    NoProducer {
        path: PathBuf,
        timeout: Duration,
        last: TransportError,
    },
    /// The reconnect deadline passed without a producer.
    #[error(
        "no producer came back at {} within {} ms ({attempts} connection attempts; the last one: {last_failure})",
        path.display(), waited.as_millis()
    )]
    GaveUp {
        path: PathBuf,
        waited: Duration,
        attempts: u32,
        last_failure: String,
    },
    /// Connecting failed otherwise (not a SEQPACKET socket, permissions, ...): not retried.
    #[error("cannot connect to {}: {source}", path.display())]
    Failed {
        path: PathBuf,
        source: TransportError,
    },
    /// The waker fired.
    #[error("interrupted")]
    Interrupted,
}

/// Whether a connect error means nobody listens at the path yet (no socket file, or the stale
/// one a killed producer left): worth trying again.
fn producer_absent(e: &TransportError) -> bool {
    matches!(
        e,
        TransportError::NoSuchPath { .. } | TransportError::NotListening { .. }
    )
}

/// Connects to `path`, waiting up to `timeout` for a producer to listen there (a zero timeout
/// tries once). `waker` ends the wait.
///
/// While nobody listens, the wait sleeps until the socket's directory changes (inotify: a
/// producer binding its socket creates the file), then tries every [`CONNECT_RETRY`] for
/// [`AFTER_CHANGE`] (a producer listens just after it binds), and otherwise looks once every
/// [`IDLE_RECHECK`]: a consumer waiting for a producer that is not there costs nothing. Where
/// the directory cannot be watched (it does not exist yet, or inotify's limits are reached),
/// it tries every [`CONNECT_RETRY`].
pub fn connect_waiting(
    path: &Path,
    timeout: Duration,
    waker: &Waker,
) -> Result<Connection, ConnectError> {
    let deadline = Instant::now() + timeout;
    // Made only once an attempt failed (closing an inotify instance waits for an RCU grace
    // period, tens of ms: a producer already there must not cost it), and tried again at
    // once after, so a socket made between the attempt and the watch is seen.
    let mut watch: Option<Option<DirectoryWatch>> = None;
    let mut eager_until: Option<Instant> = None;
    loop {
        match Connection::connect(path) {
            Ok(conn) => return Ok(conn),
            Err(e) if producer_absent(&e) && watch.is_none() && !timeout.is_zero() => {
                watch = Some(DirectoryWatch::new(path));
            }
            Err(e) if producer_absent(&e) => {
                let now = Instant::now();
                // A socket file nobody listens on yet, at the first attempt: its producer
                // may be between bind and listen, which inotify does not see.
                if eager_until.is_none() {
                    let bound = matches!(e, TransportError::NotListening { .. });
                    eager_until = Some(if bound { now + AFTER_CHANGE } else { now });
                }
                if now >= deadline {
                    return Err(ConnectError::NoProducer {
                        path: path.into(),
                        timeout,
                        last: e,
                    });
                }
                let left = deadline - now;
                let woken = match watch.as_ref().and_then(Option::as_ref) {
                    Some(watch) if eager_until.is_some_and(|t| now >= t) => {
                        match watch.wait(waker, left.min(IDLE_RECHECK)) {
                            DirectoryWait::Woken => true,
                            DirectoryWait::Changed => {
                                eager_until = Some(Instant::now() + AFTER_CHANGE);
                                false
                            }
                            DirectoryWait::TimedOut => false,
                        }
                    }
                    _ => sleep_unless_woken(waker, left.min(CONNECT_RETRY)),
                };
                if woken {
                    return Err(ConnectError::Interrupted);
                }
            }
            Err(source) => {
                return Err(ConnectError::Failed {
                    path: path.into(),
                    source,
                });
            }
        }
    }
}

/// How long connection attempts follow each other every [`CONNECT_RETRY`] after the socket's
/// directory changed (or after a first attempt found a socket file nobody listens on).
pub const AFTER_CHANGE: Duration = Duration::from_millis(500);
/// How often a wait with nothing changing in the directory tries again anyway (what inotify
/// does not see: a socket file already there whose producer starts listening).
pub const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// An inotify watch on the directory of a socket path, for files made, moved in or changed.
struct DirectoryWatch {
    inotify: Inotify,
    /// The socket's file name: changes to other files (a busy /tmp) do not count.
    name: std::ffi::OsString,
}

enum DirectoryWait {
    Changed,
    Woken,
    TimedOut,
}

impl DirectoryWatch {
    fn new(path: &Path) -> Option<DirectoryWatch> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        inotify
            .add_watch(
                dir,
                AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_ATTRIB
                    | AddWatchFlags::IN_DELETE,
            )
            .ok()?;
        Some(DirectoryWatch {
            inotify,
            name: path.file_name()?.to_owned(),
        })
    }

    /// Sleeps until the socket's file changes, `waker` fires, or `max` passes.
    fn wait(&self, waker: &Waker, max: Duration) -> DirectoryWait {
        let until = Instant::now() + max;
        loop {
            match self.wait_once(waker, until.saturating_duration_since(Instant::now())) {
                DirectoryWait::Changed if !self.socket_changed() => {}
                other => return other,
            }
        }
    }

    /// Whether the events read now name the socket's file (all are read, so the next wait
    /// sleeps again).
    fn socket_changed(&self) -> bool {
        let mut named = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            named |= events
                .iter()
                .any(|e| e.name.as_deref() == Some(self.name.as_os_str()));
        }
        named
    }

    fn wait_once(&self, waker: &Waker, max: Duration) -> DirectoryWait {
        let polled = transport::poll_many(
            &[
                (self.inotify.as_fd(), PollFlags::POLLIN),
                (waker.as_fd(), PollFlags::POLLIN),
            ],
            Some(max),
        );
        let readable = |r: &[PollFlags], i: usize| r.get(i).is_some_and(|f| !f.is_empty());
        match polled {
            Ok(ready) if readable(&ready, 1) && super::is_woken(waker) => DirectoryWait::Woken,
            Ok(ready) if readable(&ready, 0) => DirectoryWait::Changed,
            _ => DirectoryWait::TimedOut,
        }
    }
}

/// Waits between connection attempts: [`Backoff::FIRST`] at first, doubling up to
/// [`Backoff::MAX`].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_millis(500);

    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max }
    }

    /// The wait before the next attempt; the one after it is twice as long, up to the maximum.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Backoff::FIRST, Backoff::MAX)
    }
}

/// Connecting to a socket path again after the producer went away: the first attempt at once,
/// then spaced by a [`Backoff`], until a deadline.
#[derive(Debug)]
pub struct Reconnect {
    since: Instant,
    deadline: Option<Instant>,
    next_attempt: Instant,
    backoff: Backoff,
    attempts: u32,
    last_failure: String,
}

impl Reconnect {
    /// Starts counting now, with no deadline when `retry_timeout` is None; `why` stands as
    /// the last failure until an attempt fails.
    pub fn new(retry_timeout: Option<Duration>, why: impl Into<String>) -> Reconnect {
        let now = Instant::now();
        Reconnect {
            since: now,
            deadline: retry_timeout.map(|t| now + t),
            next_attempt: now,
            backoff: Backoff::default(),
            attempts: 0,
            last_failure: why.into(),
        }
    }

    /// When the producer went away.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Connection attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why the last attempt failed.
    pub fn last_failure(&self) -> &str {
        &self.last_failure
    }

    /// The last attempt connected but failed later (the new peer closed during the hello).
    pub fn failed(&mut self, why: impl Into<String>) {
        self.last_failure = why.into();
    }

    /// Waits for the next attempt and makes it, until one connects. Nobody listening at
    /// `path` is tried again; any other connect error ends it, as does the deadline
    /// ([`ConnectError::GaveUp`]) or `waker` ([`ConnectError::Interrupted`], after which a
    /// later call goes on with the same deadline and backoff).
    pub fn connect(&mut self, path: &Path, waker: &Waker) -> Result<Connection, ConnectError> {
        loop {
            let now = Instant::now();
            if let Some(deadline) = self.deadline
                && now >= deadline
            {
                return Err(ConnectError::GaveUp {
                    path: path.into(),
                    waited: deadline - self.since,
                    attempts: self.attempts,
                    last_failure: self.last_failure.clone(),
                });
            }
            let next = self
                .deadline
                .map_or(self.next_attempt, |d| d.min(self.next_attempt));
            if next > now {
                if sleep_unless_woken(waker, next - now) {
                    return Err(ConnectError::Interrupted);
                }
                continue;
            }
            self.attempts += 1;
            self.next_attempt = now + self.backoff.next_wait();
            match Connection::connect(path) {
                Ok(conn) => return Ok(conn),
                Err(e) if producer_absent(&e) => self.last_failure = e.to_string(),
                Err(source) => {
                    return Err(ConnectError::Failed {
                        path: path.into(),
                        source,
                    });
                }
            }
        }
    }
}
