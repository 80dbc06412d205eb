//! The control thread (`run_control`): accepts consumers, runs the hello, reads what they send
//! (releases, query replies, requests for the producer's pipeline) and writes out their queues
//! as their sockets get room.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use super::admission::{ACCEPT_BACKOFF, FdUse, MAX_ACCEPTS_PER_ROUND};
use super::consumer::{Consumer, Phase};
use super::{Hub, HubEvent, HubLog, Inner, Removal, Request, RetiredFiles};
use crate::endpoint;
use crate::peer_check::{PeerCredentials, PeerPolicy};
use crate::protocol::{self, MAX_PACKET_SIZE, Packet};
use crate::transport::{Connection, Listener, PollSet, TransportError};
use crate::warning_gate::WarningGate;

/// A consumer that has not completed the hello by then is dropped.
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Packets the control thread reads from a consumer its poll found readable, per round. One:
/// a second read would mostly meet an empty socket (EAGAIN), one wasted syscall per consumer
/// and frame; what is left keeps the socket readable, and the next poll returns at once.
const POLLED_READS_PER_ROUND: usize = 1;

/// Packets read from one consumer in one round where no poll said what is queued (the
/// release grace): one that sends without pause cannot keep the thread from the others.
pub(super) const DRAIN_READS_PER_ROUND: usize = 256;

/// Refused connections are warned about at most this often (each is logged at INFO), so a
/// peer that connects in a loop cannot flood the log.
const REFUSAL_WARNING_PERIOD: Duration = Duration::from_secs(5);

/// Whose connections the hub serves, and which refusals it warns of.
pub(super) struct PeerGate {
    policy: PeerPolicy,
    warnings: WarningGate,
}

impl Default for PeerGate {
    fn default() -> Self {
        PeerGate {
            policy: PeerPolicy::own_uid_only("fdlinksink"),
            warnings: WarningGate::new(REFUSAL_WARNING_PERIOD),
        }
    }
}

impl PeerGate {
    /// Whether this refusal is warned about, with the refusals since the last warning (this
    /// one left out); if not, it is counted for the next warning.
    fn warn_now(&mut self) -> Option<u64> {
        self.warnings.note(1).map(|k| k - 1)
    }
}

impl<H: Send + 'static, F: RetiredFiles> Hub<H, F> {
    /// The control thread: accepts consumers, runs the hello, reads releases.
    /// `listener` is None for an inherited, already-connected socket (`inherited`).
    pub fn run_control(&self, listener: Option<&Listener>, inherited: Option<Connection>) {
        let mut buf = vec![0u8; MAX_PACKET_SIZE];
        self.arrivals.start(listener);
        if let Some(conn) = inherited {
            self.adopt(conn);
        }
        // The consumers to watch and whether each has packets queued (POLLOUT). Kept across
        // rounds (cleared, not freed), so a round allocates nothing. Each round refreshes it
        // at the end of its one locked section, so that a round takes the lock once: every
        // extra time is one more chance to meet the streaming thread on it. A packet queued
        // after that wakes `waker`, and the round it starts refreshes the list again.
        let mut conns: Vec<(u64, Arc<Connection>, bool)> = Vec::new();
        watch_list(&self.lock(), &mut conns, false);
        // While the streaming thread reads the releases (the release grace), until when.
        let mut aside_until: Option<Instant> = None;
        // After accept failed (EMFILE): the listener is not watched until then.
        let mut accept_paused_until: Option<Instant> = None;
        let mut watch = PollSet::default();
        while !self.stop.load(Ordering::SeqCst) {
            watch.clear();
            let waker = watch.push(self.waker.as_fd(), PollFlags::POLLIN);
            if accept_paused_until.is_some_and(|t| Instant::now() >= t) {
                accept_paused_until = None;
            }
            let accept = listener
                .filter(|_| accept_paused_until.is_none())
                .map(|l| watch.push(l.as_fd(), PollFlags::POLLIN));
            let first_consumer = waker + 1 + usize::from(accept.is_some());
            for (_, conn, want_out) in &conns {
                let mut ev = PollFlags::POLLIN;
                if *want_out {
                    ev |= PollFlags::POLLOUT;
                }
                watch.push(conn.as_fd(), ev);
            }
            let timeout = [aside_until, accept_paused_until]
                .into_iter()
                .flatten()
                .min()
                .map_or(Duration::from_millis(500), |end| {
                    end.saturating_duration_since(Instant::now())
                });
            if let Err(e) = watch.poll(Some(timeout)) {
                (self.on_event)(HubEvent::Warning(format!("poll failed: {e}")));
                std::thread::sleep(Duration::from_millis(50));
                watch_list(&self.lock(), &mut conns, false);
                aside_until = None;
                continue;
            }
            if watch.revents(waker).contains(PollFlags::POLLIN) {
                self.waker.reset();
            }
            if let (Some(l), Some(i)) = (listener, accept)
                && watch.revents(i).contains(PollFlags::POLLIN)
            {
                accept_paused_until = self.accept_some(l);
            }
            let mut released = 0usize;
            let mut flushed = false;
            let mut removed = Vec::new();
            let mut requests = Vec::new();
            let events = {
                let mut inner = self.lock();
                // What the streaming thread read in a grace came before anything read below
                // (both read under this lock): served first, so each consumer's requests run
                // in the order it sent them.
                requests.append(&mut inner.grace.requests);
                for (i, (id, conn, _)) in conns.iter().enumerate() {
                    let ev = watch.revents(first_consumer + i);
                    if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                        && let Err(reason) = self.read_consumer(
                            &mut inner,
                            (*id, conn),
                            POLLED_READS_PER_ROUND,
                            &mut buf,
                            &mut released,
                            &mut requests,
                        )
                    {
                        removed.push((*id, reason));
                        continue;
                    }
                    if ev.contains(PollFlags::POLLOUT)
                        && let Some(c) = inner.consumers.iter_mut().find(|c| c.id == *id)
                    {
                        match c.flush_queue() {
                            Ok(sent_buffer) => flushed |= sent_buffer,
                            Err(reason) => removed.push((*id, reason)),
                        }
                    }
                }
                let now = Instant::now();
                for c in &inner.consumers {
                    if let Phase::AwaitingHello { since } = c.phase
                        && now.duration_since(since) > HELLO_TIMEOUT
                    {
                        removed.push((c.id, Removal::Protocol("no hello within 5 s".into())));
                    }
                }
                for (id, reason) in &removed {
                    self.remove_consumer(&mut inner, *id, reason.clone());
                }
                aside_until = self.grace_end(&mut inner);
                // Connections of consumers removed this round close here, not a round later.
                watch_list(&inner, &mut conns, aside_until.is_some());
                std::mem::take(&mut inner.deferred)
            };
            if released > 0 || !removed.is_empty() || flushed {
                self.notify_room();
            }
            self.emit(events);
            for event in requests {
                (self.on_event)(event);
            }
        }
        self.arrivals.stop();
    }

    /// Whose connections are served from now on (accepted ones stay). By default this
    /// process's uid and root only.
    pub fn set_peer_policy(&self, policy: PeerPolicy) {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).policy = policy;
    }

    /// Checks a new connection's credentials; a refused peer is told why (an Error packet
    /// instead of the hello) and closed.
    fn admit(&self, conn: &Connection) -> bool {
        let peer = PeerCredentials::of(conn);
        let who = peer
            .as_ref()
            .map_or_else(|| "a peer of unknown credentials".into(), |p| p.to_string());
        let mut gate = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Err(refusal) = gate.policy.check(peer.as_ref()) else {
            drop(gate);
            (self.on_event)(HubEvent::Info(format!("connection from {who} accepted")));
            return true;
        };
        let warn = gate.warn_now();
        drop(gate);
        conn.send_error(&refusal.to_string());
        self.lock().stats.consumers_refused += 1;
        let text = format!("refused connection from {who}: {refusal}");
        (self.on_event)(match warn {
            Some(0) => HubEvent::Warning(text),
            Some(n) => {
                HubEvent::Warning(format!("{text} ({n} more refused since the last warning)"))
            }
            None => HubEvent::Info(text),
        });
        false
    }

    /// Takes up to [`MAX_ACCEPTS_PER_ROUND`] connections off the listener. Returns until when
    /// the listener is to be left alone: accept failed (EMFILE and friends), and a listener
    /// that stays readable must not make the loop spin.
    fn accept_some(&self, listener: &Listener) -> Option<Instant> {
        let fds = FdUse::read();
        for _ in 0..MAX_ACCEPTS_PER_ROUND {
            match listener.accept() {
                Ok(Some(conn)) => {
                    if self.has_room(&conn, fds) {
                        self.adopt(conn);
                    }
                }
                Ok(None) => return None,
                Err(e) => {
                    self.warn_refusal(format!(
                        "accept failed: {e}; not accepting for {} ms",
                        ACCEPT_BACKOFF.as_millis()
                    ));
                    return Some(Instant::now() + ACCEPT_BACKOFF);
                }
            }
        }
        None
    }

    /// Whether a new connection fits under `max-clients` and the fd reserve (see
    /// `admission`); one that does not is told why (an Error packet instead of the hello) and
    /// closed at once.
    fn has_room(&self, conn: &Connection, fds: Option<FdUse>) -> bool {
        let clients = self.lock().consumers.len();
        let per_client = self.limits.max_queued as usize;
        let refusal = self
            .admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(self.limits.max_clients, clients, per_client, fds);
        let Err(refusal) = refusal else {
            return true;
        };
        conn.send_error(&refusal.to_string());
        self.lock().stats.consumers_refused += 1;
        let who = conn
            .peer_pid()
            .map_or_else(String::new, |p| format!(" (pid {p})"));
        self.warn_refusal(format!("refused connection{who}: {refusal}"));
        false
    }

    /// A rate-limited warning about a connection not taken (see `admission`): one per period,
    /// the others at INFO and counted in the next.
    fn warn_refusal(&self, text: String) {
        let warn = self
            .admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .warn_now();
        (self.on_event)(match warn {
            Some(0) => HubEvent::Warning(text),
            Some(n) => HubEvent::Warning(format!("{text} ({n} more since the last warning)")),
            None => HubEvent::Info(text),
        });
    }

    /// Greets a new connection and waits for its hello (in the control loop).
    fn adopt(&self, conn: Connection) {
        if !self.admit(&conn) {
            return;
        }
        // The hello is the first datagram on a fresh socket: it always fits.
        if let Err(e) = endpoint::greet_consumer(&conn, self.limits.max_held) {
            // A consumer that gave up on this producer at once (it does not trust it) said
            // why before it closed.
            let mut buf = vec![0u8; MAX_PACKET_SIZE];
            let said = match conn
                .try_recv(&mut buf)
                .map(|got| Packet::<std::os::fd::OwnedFd>::decode(&buf[..got.len], got.fds))
            {
                Ok(Ok(Packet::Error(msg))) => format!(": it said: {msg}"),
                _ => String::new(),
            };
            (self.on_event)(HubEvent::Warning(format!(
                "could not greet new connection: {e}{said}"
            )));
            return;
        }
        let mut inner = self.lock();
        let id = inner.next_consumer_id;
        inner.next_consumer_id += 1;
        inner.consumers.push(Consumer::new(id, conn));
        drop(inner);
        // A frame with no ready consumer waits for this one's hello (`wait_for_joining`).
        self.notify_room();
    }

    /// Reads what one consumer sent, at most `max_reads` packets. An error means: drop it,
    /// for this reason.
    pub(super) fn read_consumer(
        &self,
        inner: &mut Inner<H>,
        (id, conn): (u64, &Arc<Connection>),
        max_reads: usize,
        buf: &mut [u8],
        released: &mut usize,
        requests: &mut Vec<HubEvent>,
    ) -> Result<(), Removal> {
        let refuse = |msg: String| {
            conn.send_error(&format!("protocol error: {msg}"));
            Removal::Protocol(msg)
        };
        for _ in 0..max_reads {
            let got = match conn.try_recv(buf) {
                Ok(got) => got,
                Err(TransportError::WouldBlock) => return Ok(()),
                Err(TransportError::Closed) => return Err(Removal::Closed),
                Err(e) => return Err(refuse(e.to_string())),
            };
            let Some(pos) = inner.consumers.iter().position(|c| c.id == id) else {
                return Ok(());
            };
            let bytes = &buf[..got.len];
            if let Phase::AwaitingHello { .. } = inner.consumers[pos].phase {
                let hello = endpoint::check_consumer_hello(conn, bytes, got.fds.len())
                    .map_err(|e| Removal::Protocol(e.reason()))?;
                self.welcome(inner, pos, hello.capabilities & protocol::CAP_FOLLOWS != 0)?;
                inner.stats.consumers_total += 1;
                let pid = inner.consumers[pos].pid;
                inner.deferred.push(HubEvent::ConsumerAdded { id, pid });
                self.notify_room();
                continue;
            }
            let now = Instant::now();
            inner.consumers[pos].last_activity = now;
            let packet = Packet::decode(bytes, got.fds);
            if let Ok(
                Packet::UpstreamEvent(_) | Packet::Query(_) | Packet::Message(_) | Packet::State(_),
            ) = &packet
                && let Err(flood) = inner.consumers[pos].count_request(now)
            {
                return Err(refuse(flood));
            }
            match packet {
                Ok(Packet::Release { buffer_id }) => {
                    let c = &mut inner.consumers[pos];
                    if c.has_queued(buffer_id) {
                        return Err(refuse(format!(
                            "release of buffer {buffer_id} it has not been sent yet"
                        )));
                    }
                    let Some(held) = c.unhold(buffer_id) else {
                        return Err(refuse(format!(
                            "release of buffer {buffer_id} it does not hold"
                        )));
                    };
                    c.releases += 1;
                    let waited = held.since.elapsed();
                    c.release_wait += waited;
                    c.stalled = false;
                    if self.logs(HubLog::Log) {
                        inner.deferred.push(HubEvent::Log(format!(
                            "consumer {id} released buffer {buffer_id} after {} µs",
                            waited.as_micros()
                        )));
                    }
                    inner.release_one(buffer_id);
                    inner.stats.releases += 1;
                    *released += 1;
                }
                Ok(Packet::Error(msg)) => {
                    return Err(Removal::Error(format!("consumer reported: {msg}")));
                }
                Ok(Packet::UpstreamEvent(ev)) => {
                    requests.push(request(inner, pos, Request::UpstreamEvent(ev)))
                }
                Ok(Packet::Query(q)) => requests.push(request(inner, pos, Request::Query(q))),
                Ok(Packet::Message(packet)) => {
                    let from_follower = inner.consumers[pos].follows;
                    requests.push(request(
                        inner,
                        pos,
                        Request::Message {
                            packet,
                            from_follower,
                        },
                    ))
                }
                Ok(Packet::State(st)) => {
                    inner.consumers[pos].follows = st.sender_follows;
                    requests.push(request(inner, pos, Request::State(st)))
                }
                Ok(Packet::Prerolled {
                    buffer_id,
                    barriers,
                }) => {
                    let c = &mut inner.consumers[pos];
                    if barriers > c.barriers_sent {
                        return Err(refuse(format!(
                            "prerolled after {barriers} preroll barriers, but it was sent {}",
                            c.barriers_sent
                        )));
                    }
                    c.barriers_prerolled = barriers;
                    inner.deferred.push(HubEvent::Prerolled {
                        id,
                        buffer_id,
                        barriers,
                    });
                    self.notify_room();
                }
                Ok(Packet::QueryReply(reply)) => self.pending.deliver(reply),
                Ok(_) => {
                    return Err(refuse(
                        "consumer sent a producer-only packet (caps, event, buffer or retire)"
                            .into(),
                    ));
                }
                Err(e) => return Err(refuse(e.to_string())),
            }
        }
        Ok(())
    }
}

/// A consumer's request, for the element to serve outside the hub's lock.
fn request<H>(inner: &Inner<H>, pos: usize, request: Request) -> HubEvent {
    let c = &inner.consumers[pos];
    HubEvent::Request {
        id: c.id,
        pid: c.pid,
        request,
    }
}

/// The control thread's watch list: the consumers' connections, and whether each has packets
/// queued for room in its socket. `aside` (a release grace): without the ready consumers that
/// have nothing queued, whose releases the streaming thread reads.
fn watch_list<H>(inner: &Inner<H>, conns: &mut Vec<(u64, Arc<Connection>, bool)>, aside: bool) {
    conns.clear();
    conns.extend(
        inner
            .consumers
            .iter()
            .filter(|c| !aside || !c.is_ready() || !c.queue.is_empty())
            .map(|c| (c.id, c.conn.clone(), !c.queue.is_empty())),
    );
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;
    use std::time::Duration;

    use super::super::test_rig::{Rig, WAIT};
    use super::*;
    use crate::protocol::{MessagePacket, StatePacket};

    /// The next event that is not a Prerolled report.
    fn next_event(rig: &Rig) -> HubEvent {
        loop {
            match rig.events.recv_timeout(WAIT).expect("a hub event") {
                HubEvent::Prerolled { .. } => {}
                ev => return ev,
            }
        }
    }

    fn send_message(rig: &Rig) {
        let message = Packet::<BorrowedFd<'_>>::Message(MessagePacket {
            message_type: 1 << 1, // GST_MESSAGE_ERROR
            source: "/GstPipeline:pipeline0/GstIdentity:identity0".into(),
            structure: "fdlink-message, text=(string)failed".into(),
        });
        rig.consumer.send_packet(&message, None).unwrap();
    }

    fn from_follower(ev: HubEvent) -> bool {
        match ev {
            HubEvent::Request {
                request: Request::Message { from_follower, .. },
                ..
            } => from_follower,
            _ => panic!("expected the message"),
        }
    }

    #[test]
    fn messages_say_whether_their_consumer_follows() {
        let rig = Rig::new(Duration::ZERO, 8);
        send_message(&rig);
        assert!(
            !from_follower(next_event(&rig)),
            "its hello did not say it follows"
        );
        let state = Packet::<BorrowedFd<'_>>::State(StatePacket {
            state: StatePacket::PLAYING,
            sender_follows: true,
        });
        rig.consumer.send_packet(&state, None).unwrap();
        assert!(matches!(
            next_event(&rig),
            HubEvent::Request {
                request: Request::State(_),
                ..
            }
        ));
        send_message(&rig);
        assert!(from_follower(next_event(&rig)), "its State says it follows");
    }

    #[test]
    fn a_disconnected_consumer_is_told_why_and_its_frames_are_released() {
        let mut rig = Rig::new(Duration::ZERO, 8);
        rig.offer(1, false);
        rig.offer(2, false);
        assert_eq!(rig.hub.stats().2, 2, "both frames held");
        let id = rig.hub.consumer_stats()[0].id;
        let reason = Removal::Error("its pipeline posted an error".into());
        assert!(rig.hub.disconnect(id, reason.clone()));
        match next_event(&rig) {
            HubEvent::ConsumerRemoved {
                id: removed,
                reason: r,
            } => {
                assert_eq!((removed, r), (id, reason));
            }
            _ => panic!("expected the removal"),
        }
        assert_eq!(rig.hub.stats().2, 0, "its frames are released");
        assert!(!rig.hub.disconnect(id, Removal::Removed), "it is gone");
        // Its two frames, then why it was dropped, then the end of the connection.
        let mut got = Vec::new();
        while let Some(p) = rig.recv() {
            got.push(p);
        }
        match got.last() {
            Some(Packet::Error(msg)) => assert_eq!(
                msg,
                &format!(
                    "the producer disconnected consumer {id}: error: its pipeline posted an error"
                )
            ),
            _ => panic!("expected an error packet last"),
        }
    }

    #[test]
    fn refusals_are_warned_about_at_most_once_a_period_with_the_count_between() {
        let mut gate = PeerGate::default();
        assert_eq!(gate.warn_now(), Some(0), "the first refusal is a warning");
        assert_eq!(gate.warn_now(), None);
        assert_eq!(gate.warn_now(), None);
        gate.warnings.expire();
        assert_eq!(
            gate.warn_now(),
            Some(2),
            "the next warning counts those between"
        );
        assert_eq!(gate.warn_now(), None);
    }

    /// The Log events the rig reported, once `want` came or `wait` passed.
    fn release_logs(rig: &Rig, want: usize, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut logs = Vec::new();
        while logs.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match rig.events.recv_timeout(left) {
                Ok(HubEvent::Log(text)) => logs.push(text),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        logs
    }

    #[test]
    fn releases_are_logged_only_when_asked_for() {
        let mut rig = Rig::new(Duration::ZERO, 8);
        rig.offer(1, false);
        rig.take_and_release(1);
        assert_eq!(rig.wait_releases(1), 1);
        assert!(
            release_logs(&rig, 1, Duration::from_millis(200)).is_empty(),
            "quiet by default: no text made"
        );
        rig.hub.set_log_level(HubLog::Log);
        rig.offer(2, false);
        rig.take_and_release(2);
        assert_eq!(rig.wait_releases(2), 2);
        let logs = release_logs(&rig, 1, WAIT);
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(
            logs[0].starts_with("consumer 1 released buffer 2 after "),
            "{}",
            logs[0]
        );
    }
}
