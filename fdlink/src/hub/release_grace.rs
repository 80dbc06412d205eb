//! The release grace: for 2 ms after a frame of a non-live stream that plays, the control
//! thread leaves the ready consumers' sockets alone, and the streaming thread reads what they
//! sent at the start of its next frame, under the hub's lock as the control thread would.
//!
//! What it buys. A release wakes the thread that polls for it. Without the grace a fast stream
//! wakes the control thread once per frame; it takes the hub's lock while the streaming thread
//! sends and, on a shared CPU, preempts it (on the copy path in the middle of its copy).
//! Measured in a real pipeline, the comparison harness (`tools/src/compare-harness/`: a
//! prefilled source standing for a hardware decoder, `fdlinksink` into `fdlinksrc ! fakesink`,
//! two processes, unthrottled), same build with and without the grace
//! (`FDLINK_RELEASE_GRACE=0`), three alternating runs each on the 2-vCPU machine:
//! - 640x480: 83-100 k fps with it, 52-89 k without; producer CPU 8.2-10.0 against
//!   11.8-16.5 µs per frame;
//! - 1920x1080: 100-123 k fps against 63-85 k; producer CPU 8.1-9.2 against 12.3-16.2 µs;
//! - a source-bound stream (videotestsrc 1080p, the copy path at 480p) moves within noise.
//!
//! The criterion bench agrees (docs/performance-benches.md: memfd throughput 1.3-3x, producer
//! futex calls per frame under `strace` 2.7-3.9 → 0.75-1.2). `FDLINK_RELEASE_GRACE=0` in the
//! producer's environment switches the grace off, to measure with and without it.
//!
//! The rules that keep it safe:
//! - Releases are done on the streaming thread; requests (events, queries, messages, State
//!   packets) go to the control thread, which serves them as always: a flushing seek must not
//!   run on the streaming thread it waits for.
//! - Every wait of the hub ends the grace first (`Hub::wait_room`), and so does a query to the
//!   consumers: the control thread watches the sockets again while the streaming thread waits.
//! - A grace that runs out while consumers hold buffers may have kept a release from an
//!   upstream pool waiting for it, so the next `GRACE_BACKOFF_FRAMES` frames go without.
//! - Consumers with packets queued, and connections still in their hello, stay with the
//!   control thread throughout. A live stream has no grace.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Hub, HubEvent, Inner, Removal, RetiredFiles};
use crate::protocol::MAX_PACKET_SIZE;
use crate::transport::Connection;

/// The environment variable read at `Hub::new`: `0` switches the release grace off.
pub const RELEASE_GRACE_ENV: &str = "FDLINK_RELEASE_GRACE";

/// How long after a frame the control thread leaves the consumers' sockets to the streaming
/// thread. It takes the releases over when the stream pauses longer than this.
const RELEASE_GRACE: Duration = Duration::from_millis(2);

/// Frames without a grace after one ran out with buffers held (see `Hub::grace_end`).
const GRACE_BACKOFF_FRAMES: u32 = 100;

/// The grace a new hub has, from [`RELEASE_GRACE_ENV`].
pub(super) fn configured() -> Duration {
    grace_from_env(std::env::var_os(RELEASE_GRACE_ENV).as_deref())
}

fn grace_from_env(value: Option<&OsStr>) -> Duration {
    match value {
        Some(v) if v == "0" => Duration::ZERO,
        _ => RELEASE_GRACE,
    }
}

/// The grace's share of the hub's state, under its lock.
#[derive(Default)]
pub(super) struct Grace {
    /// When the streaming thread last offered a frame that reads releases: within the grace
    /// of it the control thread does not watch the consumers' sockets.
    from: Option<Instant>,
    /// Frames to send without a grace: one ran out with buffers still held, and the
    /// streaming thread may have been waiting in a pool for one of them (see `grace_end`).
    frames_without: u32,
    /// Consumers' requests the streaming thread read, for the control thread to serve.
    pub(super) requests: Vec<HubEvent>,
    /// The streaming thread's receive buffer and consumer list (kept, not reallocated).
    drain_buf: Vec<u8>,
    drain_list: Vec<(u64, Arc<Connection>)>,
    /// The control thread's last round left the ready consumers' sockets alone.
    control_aside: bool,
}

impl Grace {
    pub(super) fn running(&self) -> bool {
        self.from.is_some()
    }

    /// A flush or a new stream: the next frame may start a grace again.
    pub(super) fn reset_backoff(&mut self) {
        self.frames_without = 0;
    }
}

impl<H: Send + 'static, F: RetiredFiles> Hub<H, F> {
    fn release_grace(&self) -> Duration {
        Duration::from_micros(
            self.release_grace_us
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    #[cfg(test)]
    pub(super) fn set_release_grace(&self, grace: Duration) {
        self.release_grace_us.store(
            grace.as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// After a frame that reads releases (`Frame::reads_releases`): a grace starts, unless
    /// it is off or backing off.
    pub(super) fn begin_grace(&self, inner: &mut Inner<H>, now: Instant) {
        if self.release_grace().is_zero() {
            return;
        }
        if inner.grace.frames_without > 0 {
            inner.grace.frames_without -= 1;
        } else if inner.grace.from.replace(now).is_none() {
            // The control thread polls the consumers' sockets: tell it to stop.
            self.waker.wake();
        }
    }

    /// Ends the release grace: reads what the consumers sent meanwhile, and wakes the
    /// control thread so that it watches their sockets again.
    pub(super) fn end_grace(&self, inner: &mut Inner<H>) {
        inner.grace.from = None;
        let mut removed = Vec::new();
        self.read_consumers_here(inner, &mut removed);
        self.waker.wake();
    }

    /// The streaming thread's share of the control thread's reading, during a release
    /// grace: reads everything each ready consumer sent. Releases are done here; requests
    /// (events, queries, messages) go to the control thread, which serves them outside the
    /// streaming thread (a flushing seek waits for it). Consumers that failed are removed.
    pub(super) fn read_consumers_here(
        &self,
        inner: &mut Inner<H>,
        removed: &mut Vec<(u64, Removal)>,
    ) {
        let mut list = std::mem::take(&mut inner.grace.drain_list);
        list.extend(
            inner
                .consumers
                .iter()
                .filter(|c| c.is_ready())
                .map(|c| (c.id, c.conn.clone())),
        );
        let mut buf = std::mem::take(&mut inner.grace.drain_buf);
        buf.resize(MAX_PACKET_SIZE, 0);
        let mut requests = std::mem::take(&mut inner.grace.requests);
        let had_requests = requests.len();
        let mut released = 0;
        for (id, conn) in &list {
            if let Err(reason) = self.read_consumer(
                inner,
                (*id, conn),
                super::control::DRAIN_READS_PER_ROUND,
                &mut buf,
                &mut released,
                &mut requests,
            ) {
                self.remove_consumer(inner, *id, reason.clone());
                removed.push((*id, reason));
            }
        }
        list.clear();
        inner.grace.drain_list = list;
        inner.grace.drain_buf = buf;
        if requests.len() > had_requests {
            self.waker.wake();
        }
        inner.grace.requests = requests;
        if released > 0 || !removed.is_empty() {
            self.notify_room();
        }
    }

    /// For the control thread, at the end of a round: when the running release grace ends,
    /// or None when there is none or it just ran out (and then it watches every socket).
    pub(super) fn grace_end(&self, inner: &mut Inner<H>) -> Option<Instant> {
        let end = self.running_grace_end(inner);
        inner.grace.control_aside = end.is_some();
        end
    }

    /// A grace that runs out while consumers hold buffers may have kept a release from a
    /// streaming thread waiting for it in upstream's pool (one smaller than max-held plus
    /// one: fdlinksink's own waits end the grace at once). That cost it up to the grace, so
    /// the next GRACE_BACKOFF_FRAMES frames go without: at most one such wait per that many.
    /// A stream that merely paused loses nothing but those graces.
    fn running_grace_end(&self, inner: &mut Inner<H>) -> Option<Instant> {
        let end = inner.grace.from? + self.release_grace();
        if Instant::now() < end {
            return Some(end);
        }
        inner.grace.from = None;
        if inner
            .consumers
            .iter()
            .any(|c| c.is_ready() && !c.held.is_empty())
        {
            inner.grace.frames_without = GRACE_BACKOFF_FRAMES;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;

    use super::super::test_rig::{LONG, Rig, WAIT};
    use super::super::{HubEvent, Request};
    use super::*;
    use crate::protocol::{self, EventPacket, Packet};

    impl Rig {
        fn grace_running(&self) -> bool {
            self.hub.lock().grace.running()
        }

        fn frames_without_grace(&self) -> u32 {
            self.hub.lock().grace.frames_without
        }

        /// Waits until the control thread has stood aside for the running grace.
        fn wait_control_aside(&self) {
            let deadline = Instant::now() + WAIT;
            while !self.hub.lock().grace.control_aside {
                assert!(
                    Instant::now() < deadline,
                    "the control thread did not stand aside"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn only_zero_in_the_environment_switches_the_grace_off() {
        assert_eq!(grace_from_env(None), RELEASE_GRACE);
        assert_eq!(grace_from_env(Some(OsStr::new("0"))), Duration::ZERO);
        assert_eq!(grace_from_env(Some(OsStr::new("1"))), RELEASE_GRACE);
    }

    #[test]
    fn without_the_grace_the_control_thread_reads_every_release() {
        let mut rig = Rig::new(Duration::ZERO, 8);
        rig.offer(1, true);
        assert!(!rig.grace_running());
        rig.take_and_release(1);
        assert_eq!(
            rig.wait_releases(1),
            1,
            "the control thread read the release"
        );
    }

    #[test]
    fn within_the_grace_the_streaming_thread_reads_the_releases() {
        let mut rig = Rig::new(LONG, 8);
        rig.offer(1, true);
        assert!(rig.grace_running());
        rig.wait_control_aside();
        rig.take_and_release(1);
        // The control thread stands aside: the release waits in the socket.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(rig.releases(), 0);
        // The next frame reads it first.
        rig.offer(2, true);
        assert_eq!(rig.releases(), 1);
        let (_, _, held) = rig.hub.stats();
        assert_eq!(held, 1, "only frame 2 is held");
    }

    #[test]
    fn a_live_stream_has_no_grace() {
        let mut rig = Rig::new(LONG, 8);
        rig.offer(1, false);
        assert!(!rig.grace_running());
        rig.take_and_release(1);
        assert_eq!(
            rig.wait_releases(1),
            1,
            "the control thread read the release"
        );
    }

    #[test]
    fn a_streaming_thread_that_waits_ends_the_grace() {
        let mut rig = Rig::new(LONG, 1);
        rig.offer(1, true);
        let hub = rig.hub.clone();
        let waiter = std::thread::spawn(move || {
            let start = Instant::now();
            assert!(hub.wait_for_room(false));
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        rig.take_and_release(1);
        let waited = waiter.join().unwrap();
        assert!(waited < WAIT, "waited {waited:?} for a release");
        assert_eq!(rig.releases(), 1);
        assert!(!rig.grace_running());
    }

    #[test]
    fn requests_read_in_a_grace_go_to_the_control_thread() {
        let mut rig = Rig::new(LONG, 8);
        rig.offer(1, true);
        rig.wait_control_aside();
        let event = Packet::<BorrowedFd<'_>>::UpstreamEvent(EventPacket {
            // GST_EVENT_CUSTOM_UPSTREAM (GST_EVENT_MAKE_TYPE (270, UPSTREAM)): the hub
            // passes any event type on as it came.
            event_type: 69121,
            seqnum: 7,
            structure: "test-request".into(),
        });
        rig.consumer.send_packet(&event, None).unwrap();
        rig.take_and_release(1);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            rig.events.try_recv().is_err(),
            "nothing read during the grace"
        );
        rig.offer(2, true);
        match rig.events.recv_timeout(WAIT).expect("the request") {
            HubEvent::Request {
                request: Request::UpstreamEvent(ev),
                ..
            } => assert_eq!(ev.seqnum, 7),
            _ => panic!("expected the upstream event"),
        }
        assert_eq!(rig.releases(), 1);
    }

    #[test]
    fn a_query_to_the_consumers_ends_the_grace() {
        let mut rig = Rig::new(LONG, 8);
        rig.offer(1, true);
        rig.wait_control_aside();
        let hub = rig.hub.clone();
        let asking = std::thread::spawn(move || {
            let query = protocol::QueryPacket {
                id: 0,
                query_type: 0,
                structure: "test-query".into(),
            };
            hub.ask_consumers(
                |id| {
                    let mut bytes = Vec::new();
                    Packet::<BorrowedFd<'_>>::Query(protocol::QueryPacket {
                        id,
                        ..query.clone()
                    })
                    .encode(&mut bytes)
                    .ok()?;
                    Some(bytes)
                },
                WAIT,
            )
        });
        rig.take_and_release(1);
        let id = match rig.recv().expect("the query") {
            Packet::Query(q) => q.id,
            _ => panic!("expected the query"),
        };
        let reply = Packet::<BorrowedFd<'_>>::QueryReply(protocol::QueryReplyPacket {
            id,
            answered: true,
            structure: "test-reply".into(),
        });
        rig.consumer.send_packet(&reply, None).unwrap();
        let replies = asking.join().unwrap();
        assert_eq!(replies.len(), 1, "the reply was read before the timeout");
        assert!(!rig.grace_running());
    }

    #[test]
    fn a_grace_that_runs_out_with_buffers_held_backs_off() {
        let mut rig = Rig::new(Duration::from_millis(20), 8);
        rig.offer(1, true);
        // Not released: the grace runs out with frame 1 held, and the control thread takes
        // over the socket.
        let deadline = Instant::now() + WAIT;
        while rig.grace_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!rig.grace_running());
        assert_eq!(rig.frames_without_grace(), GRACE_BACKOFF_FRAMES);
        rig.offer(2, true);
        assert!(!rig.grace_running());
        assert_eq!(rig.frames_without_grace(), GRACE_BACKOFF_FRAMES - 1);
        // The control thread reads the releases at once again.
        rig.take_and_release(1);
        rig.take_and_release(2);
        assert_eq!(rig.wait_releases(2), 2);
    }
}
