//! Consumers on their way in, which a frame with no ready consumer waits for (bounded), so
//! that a consumer connected when a frame comes gets that frame instead of the next one:
//!
//! - connections past accept still in their hello (a consumer's hello follows its connect at
//!   once: [`HELLO_WAIT`] after the connection came at most; an inherited socket's consumer
//!   may be a process still starting: the hub's whole hello timeout, [`INHERITED_HELLO_WAIT`],
//!   unless upstream is live);
//! - a connection waiting in the listener's backlog, not accepted yet;
//! - for [`STARTUP_WAIT`] after the control thread starts, unless upstream is live: a
//!   consumer started before the producer wakes when the socket file appears (inotify on its
//!   directory) and retries its connect every `endpoint::CONNECT_RETRY` (20 ms) until the
//!   producer listens, and a socketpair's end is adopted by the control thread as it starts.
//!
//! With a ready consumer nothing waits: a joiner then starts with the next frame, as
//! `sync-method` says. A live upstream's frame held back for a consumer that started after it
//! would reach that consumer as older than its pipeline, which drops it as late; and a live
//! stream is not to stall for seconds: it waits only for connections already made, 1 s at
//! most.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::consumer::Phase;
use super::{Hub, RetiredFiles};
use crate::transport::Listener;

/// How long after its connection came a frame waits for a consumer's hello.
pub(super) const HELLO_WAIT: Duration = Duration::from_secs(1);
/// As [`HELLO_WAIT`], for the consumer of an inherited socket (`fd`): the hub's hello
/// timeout, after which it drops that consumer anyway.
pub(super) const INHERITED_HELLO_WAIT: Duration = super::control::HELLO_TIMEOUT;
/// How long after the control thread starts a frame waits for a first connection: ten
/// connect retries of a consumer already waiting for the socket, room for a loaded machine.
pub(super) const STARTUP_WAIT: Duration = Duration::from_millis(200);
/// How often a frame looks again at a connection waiting in the listener's backlog.
const BACKLOG_RECHECK: Duration = Duration::from_millis(5);

/// What a frame with no ready consumer found after waiting for the joiners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joining {
    /// A consumer is ready: the frame goes to it.
    Ready,
    /// Nobody is coming.
    Nobody,
    Flushing,
}

/// What the streaming thread knows of the control thread's listener, for the waits.
#[derive(Default)]
pub(super) struct Arrivals {
    /// Set by the control thread while it runs.
    state: Mutex<Option<ArrivalState>>,
}

struct ArrivalState {
    /// A duplicate of the listening socket, to see connections not accepted yet; closed when
    /// the control thread ends (it would keep the socket listening).
    listener: Option<OwnedFd>,
    started: Instant,
    hello_wait: Duration,
    /// The control thread ended (the hub shuts down): nothing more comes.
    ended: bool,
}

impl Arrivals {
    /// The control thread starts: `listener` is None for an inherited socket.
    pub(super) fn start(&self, listener: Option<&Listener>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(ArrivalState {
            listener: listener.and_then(|l| l.as_fd().try_clone_to_owned().ok()),
            started: Instant::now(),
            hello_wait: if listener.is_some() {
                HELLO_WAIT
            } else {
                INHERITED_HELLO_WAIT
            },
            ended: false,
        });
    }

    /// The control thread ends.
    pub(super) fn stop(&self) {
        if let Some(s) = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            s.listener = None;
            s.ended = true;
        }
    }

    /// Whether the control thread started less than [`STARTUP_WAIT`] ago, or not yet.
    fn starting(&self, now: Instant) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .as_ref()
            .is_none_or(|s| !s.ended && now < s.started + STARTUP_WAIT)
    }

    /// (until when the first connection is waited for, the hello wait, whether a connection
    /// waits in the listener's backlog now). Before the control thread starts, a frame waits
    /// for it as for startup.
    fn look(&self, now: Instant) -> (Instant, Duration, bool) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = state.as_ref() else {
            return (now + STARTUP_WAIT, HELLO_WAIT, false);
        };
        let backlog = s.listener.as_ref().is_some_and(|l| {
            let mut fds = [PollFd::new(l.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
        });
        let startup_end = if s.ended {
            now
        } else {
            s.started + STARTUP_WAIT
        };
        (startup_end, s.hello_wait, backlog)
    }
}

impl<H: Send + 'static, F: RetiredFiles> Hub<H, F> {
    /// Whether a frame now would wait for consumers that may be about to connect, if upstream
    /// is not live (see [`Self::wait_for_joining`]).
    pub fn starting(&self) -> bool {
        self.arrivals.starting(Instant::now())
    }

    /// With no ready consumer: waits (bounded, see the module docs) for the consumers on
    /// their way in, less with a `live_upstream`. Returns at once when a consumer is ready.
    pub fn wait_for_joining(&self, live_upstream: bool) -> Joining {
        let mut inner = self.lock();
        loop {
            if inner.flushing {
                return Joining::Flushing;
            }
            if inner.has_ready_consumer() {
                return Joining::Ready;
            }
            let now = Instant::now();
            let (startup_end, hello_wait, backlog) = self.arrivals.look(now);
            let hello_wait = if live_upstream {
                hello_wait.min(HELLO_WAIT)
            } else {
                hello_wait
            };
            let hellos_end = inner
                .consumers
                .iter()
                .filter_map(|c| match c.phase {
                    Phase::AwaitingHello { since } => Some(since + hello_wait),
                    Phase::Ready => None,
                })
                .max();
            let startup_end = (!live_upstream).then_some(startup_end);
            let mut until = [startup_end, hellos_end].into_iter().flatten().max();
            if backlog {
                // The control thread accepts it in a moment (it wakes `room`).
                until = until.max(Some(now + BACKLOG_RECHECK));
            }
            let Some(left) = until
                .map(|u| u.saturating_duration_since(now))
                .filter(|l| !l.is_zero())
            else {
                return Joining::Nobody;
            };
            inner = self.wait_room(inner, left);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{HubEvent, Limits, SlowPolicy, SyncMethod};
    use super::*;
    use crate::endpoint;
    use crate::transport::{Connection, Waker};

    fn hub() -> Arc<Hub<()>> {
        let limits = Limits {
            max_held: 4,
            max_held_total: 0,
            max_queued: 4,
            policy: SlowPolicy::Drop,
            sync_method: SyncMethod::Latest,
            slow_wait: Duration::from_secs(1),
            max_clients: 0,
        };
        Hub::new(limits, false, |_: HubEvent| {}).unwrap()
    }

    #[test]
    fn a_frame_waits_for_a_consumer_connecting_as_the_sink_starts() {
        let dir = std::env::temp_dir().join(format!("fdlink-joining-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = Listener::bind(&path).unwrap();
        let hub = hub();
        let control = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.run_control(Some(&listener), None))
        };
        // A consumer that retries its connect, arriving after the frame came.
        let consumer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let waker = Waker::new().unwrap();
                let conn =
                    endpoint::connect_waiting(&path, Duration::from_secs(5), &waker).unwrap();
                endpoint::consumer_hello(&conn, 0, None, Duration::from_secs(5)).unwrap();
                conn
            })
        };
        assert!(hub.starting());
        assert_eq!(hub.wait_for_joining(false), Joining::Ready);
        let _conn: Connection = consumer.join().unwrap();
        hub.shutdown();
        control.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_consumers_a_frame_waits_only_at_the_start() {
        let dir = std::env::temp_dir().join(format!("fdlink-joining-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = Listener::bind(&dir.join("s.sock")).unwrap();
        let hub = hub();
        let control = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.run_control(Some(&listener), None))
        };
        assert_eq!(
            hub.wait_for_joining(true),
            Joining::Nobody,
            "a live upstream's frame does not wait for connections to come"
        );
        let started = Instant::now();
        assert_eq!(hub.wait_for_joining(false), Joining::Nobody);
        let first = started.elapsed();
        assert!(
            first >= STARTUP_WAIT / 2,
            "the first frame waited {first:?}"
        );
        let started = Instant::now();
        assert!(!hub.starting());
        assert_eq!(hub.wait_for_joining(false), Joining::Nobody);
        assert!(
            started.elapsed() < Duration::from_millis(20),
            "later frames do not wait"
        );
        hub.set_flushing(true);
        assert_eq!(hub.wait_for_joining(false), Joining::Flushing);
        hub.shutdown();
        control.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
