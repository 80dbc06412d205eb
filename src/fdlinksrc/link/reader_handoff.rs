//! Who reads the consumer's socket: the link's reader thread, or the streaming thread while
//! it waits in `Link::next()` with nothing queued, and how the socket passes between them.
//!
//! What it buys, one-way p50 at 640x480 and 30 fps in the comparison harness
//! (docs/performance.md; raw SCM_RIGHTS: 96 µs):
//! - the reader thread alone on the socket wakes two threads per frame (the reader, then the
//!   streaming thread it queues the frame for): 224-256 µs at every size (2026-12-03);
//! - the waiting streaming thread reads the socket itself, so a frame wakes one thread; the
//!   socket goes back to the reader thread as `next()` returns, and until `e9949f2` the
//!   reader was woken then (a futex wake on the frame's way downstream): 153 / 155 µs
//!   (GStreamer 1.22 / 1.28, `2beced2`, 1.58x / 1.60x raw);
//! - the parked reader looks on a timer of its own instead, and stays aside [`READER_GRACE`]
//!   after the streaming thread left: 128 / 118 µs (`e9949f2`, 1.33x / 1.22x raw). The grace
//!   leaves the 30 fps p50 within noise; in an unthrottled stream it keeps the socket on the
//!   streaming thread, which took the consumer from 3.14 to 0.64-0.92 futex calls and from
//!   13-16 to 9.2-13.9 µs CPU per frame (docs/performance-benches.md, Syscalls per frame);
//! - while the stream flows the timer is [`PARKED_PERIOD_FLOWING`], not a period that starts
//!   again at the grace after every frame: at 30 fps 0.8 looks per frame instead of 3.5, and
//!   the consumer's CPU per frame (idle time included) 118-125 µs instead of 157 (raw
//!   consumer: 83-87 µs).
//!
//! The grace and the timed waits are for `leaky=none` only: `oldest` and `copy` act on each
//! frame as it arrives, so with them the reader reads again as soon as the streaming thread
//! leaves, woken by the inbox's `room` signal. Every field changes under the inbox lock, and
//! the reader reads only while it is not parked, the streaming thread only while it is: never
//! both.

use std::time::{Duration, Instant};

/// How long the reader thread stays aside after the streaming thread left `next()`. A
/// streaming thread back within it (the next frame of a stream that flows) finds the socket
/// still its own: no wake-up on either side. Past it, the reader reads again, so control
/// packets wait at most this long while the streaming thread is blocked downstream (a query
/// reply waits not at all: an awaited reply ends the grace).
pub(super) const READER_GRACE: Duration = Duration::from_millis(5);

/// How long a parked reader thread waits before it looks whether the streaming thread left
/// the socket, while the stream flows (the streaming thread came back since the last look):
/// at 30 frames a second, less than one look per frame. Every look is a wake-up of the
/// consumer process between frames.
const PARKED_PERIOD_FLOWING: Duration = Duration::from_millis(40);

/// The longest a parked reader thread waits before it looks again: it may take the socket up
/// this much later than READER_GRACE after the streaming thread left (a producer's control
/// packets wait that long while the streaming thread is blocked downstream; query replies
/// wait not at all, see `Link::awaiting_reply`). Used once the streaming thread stayed in
/// one wait for a whole flowing period (a slow stream).
const PARKED_PERIOD_MAX: Duration = Duration::from_millis(80);

/// The longest it waits while the streaming thread stays in one wait past
/// `PARKED_PERIOD_MAX` (an idle stream): so long that an idle consumer barely wakes. The
/// streaming thread, leaving such a wait, signals the reader instead ([`Handoff::streaming_leaves`]).
const PARKED_PERIOD_IDLE: Duration = Duration::from_secs(5);

/// The hand-off's state, kept in the inbox (under its lock).
#[derive(Debug)]
pub(super) struct Handoff {
    /// The reader stays aside on timers of its own (`leaky=none`); otherwise it waits for the
    /// `room` signal and has no grace.
    stays_aside: bool,
    /// The streaming thread waits in `next()` with nothing queued and wants the socket.
    streaming_reads: bool,
    /// The reader thread has stood aside: while this and `streaming_reads` hold, only the
    /// streaming thread touches the socket.
    reader_parked: bool,
    /// The reader thread was asked (through its waker) to stand aside and has not yet.
    reader_asked: bool,
    /// Times the streaming thread came to read the socket: the reader thread, standing aside
    /// through its grace, sees from it whether the streaming thread came back meanwhile.
    streaming_visits: u64,
    /// `READER_GRACE` (tests set other values).
    grace: Duration,
    /// Times a parked reader thread woke to look at the socket's owner (for tests).
    parked_looks: u64,
    /// The parked reader waits longer than `PARKED_PERIOD_MAX` (the stream is idle): the
    /// streaming thread signals it when it leaves.
    reader_idles: bool,
}

impl Default for Handoff {
    /// As for `leaky=none`, the default policy.
    fn default() -> Self {
        Handoff::new(true)
    }
}

/// What the reader thread remembers across the looks of one wait for the socket.
#[derive(Debug, Default)]
pub(super) struct ReaderWait {
    /// The grace running now: the streaming thread's visits when it began (another visit
    /// starts a new one) and its end.
    grace: Option<(u64, Instant)>,
    /// While parked: the streaming thread's visits at the last look.
    visits_at_last_look: Option<u64>,
    /// While parked: the wait since the last look.
    period: Duration,
}

/// What the reader thread does next, under the inbox lock.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReaderStep {
    /// Parked while the streaming thread reads: look again after this long, without a
    /// signal (the streaming thread leaves the socket without waking anybody).
    Parked(Duration),
    /// The streaming thread left within this grace: wait it out (a timed wait), then look
    /// again.
    Grace(Duration),
    /// The streaming thread reads, and the reader waits for the `room` signal (leaky
    /// policies).
    AwaitSignal,
    /// The socket is the reader's again, if the inbox has room.
    Free,
}

/// What the streaming thread does next in `next()`, with nothing queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StreamingStep {
    /// The reader is parked: read the socket now.
    Read,
    /// Wake the reader thread (its waker) so it stands aside, and wait for it to.
    AskReader,
    /// The reader was asked already: wait for it to stand aside (or for a packet it queues).
    Wait,
}

impl Handoff {
    /// `stays_aside`: `leaky=none` (see the module comment).
    pub(super) fn new(stays_aside: bool) -> Handoff {
        Handoff {
            stays_aside,
            streaming_reads: false,
            reader_parked: false,
            reader_asked: false,
            streaming_visits: 0,
            grace: READER_GRACE,
            parked_looks: 0,
            reader_idles: false,
        }
    }

    /// The reader thread wants to read. `awaiting_replies`: queries waiting for their reply,
    /// which may be behind frames in the socket (they end a grace at once). The second value
    /// is true when the reader has just stood aside: the caller signals the streaming thread
    /// waiting for that.
    pub(super) fn reader_step(
        &mut self,
        wait: &mut ReaderWait,
        awaiting_replies: usize,
    ) -> (ReaderStep, bool) {
        if self.streaming_reads {
            let parks_now = !self.reader_parked;
            if parks_now {
                self.reader_parked = true;
                self.reader_asked = false;
            }
            wait.grace = None;
            if !self.stays_aside {
                return (ReaderStep::AwaitSignal, parks_now);
            }
            // A streaming thread that came back since the last look keeps the flowing
            // period; one that stayed in one wait makes it PARKED_PERIOD_MAX, then the
            // stream is idle, and the reader sleeps until the streaming thread signals that
            // it left.
            let visits = self.streaming_visits;
            wait.period = match wait.visits_at_last_look {
                Some(v) if v == visits && wait.period >= PARKED_PERIOD_MAX => PARKED_PERIOD_IDLE,
                Some(v) if v == visits => PARKED_PERIOD_MAX,
                Some(_) => PARKED_PERIOD_FLOWING,
                None => self
                    .grace
                    .clamp(Duration::from_millis(1), PARKED_PERIOD_FLOWING),
            };
            self.reader_idles = wait.period > PARKED_PERIOD_MAX;
            wait.visits_at_last_look = Some(visits);
            return (ReaderStep::Parked(wait.period), parks_now);
        }
        if self.reader_parked && awaiting_replies == 0 && self.stays_aside {
            let visits = self.streaming_visits;
            let end = match wait.grace {
                Some((v, end)) if v == visits => end,
                _ => wait.grace.insert((visits, Instant::now() + self.grace)).1,
            };
            let left = end.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return (ReaderStep::Grace(left), false);
            }
        }
        (ReaderStep::Free, false)
    }

    /// A parked reader thread woke from its timed wait to look again.
    pub(super) fn parked_look(&mut self) {
        self.parked_looks += 1;
    }

    /// The reader thread takes the socket back (after [`ReaderStep::Free`], with room in the
    /// inbox).
    pub(super) fn reader_reads(&mut self) {
        self.reader_parked = false;
        self.reader_asked = false;
    }

    /// The streaming thread, in `next()` with nothing queued, wants the socket.
    pub(super) fn streaming_wants(&mut self) -> StreamingStep {
        if !self.streaming_reads {
            self.streaming_visits += 1;
        }
        self.streaming_reads = true;
        if self.reader_parked {
            return StreamingStep::Read;
        }
        if self.reader_asked {
            return StreamingStep::Wait;
        }
        self.reader_asked = true;
        StreamingStep::AskReader
    }

    /// The streaming thread leaves `next()`: the socket goes back to the reader thread, which
    /// takes it after its grace (or, with leaky policies, at the `room` signal). True when the
    /// reader sleeps through an idle stream and must be signalled to look.
    pub(super) fn streaming_leaves(&mut self) -> bool {
        self.streaming_reads = false;
        std::mem::take(&mut self.reader_idles)
    }

    #[cfg(test)]
    pub(super) fn reader_parked(&self) -> bool {
        self.reader_parked
    }

    #[cfg(test)]
    pub(super) fn reader_asked(&self) -> bool {
        self.reader_asked
    }

    #[cfg(test)]
    pub(super) fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    #[cfg(test)]
    pub(super) fn parked_looks(&self) -> u64 {
        self.parked_looks
    }
}

#[cfg(test)]
impl super::Link {
    /// The reader thread stands aside for the streaming thread now.
    fn reader_parked(&self) -> bool {
        self.inbox.lock().unwrap().handoff.reader_parked()
    }

    /// The streaming thread asked the reader thread (through its waker) to stand aside, and
    /// it has not stood aside since.
    fn reader_asked(&self) -> bool {
        self.inbox.lock().unwrap().handoff.reader_asked()
    }

    fn set_reader_grace(&self, grace: Duration) {
        self.inbox.lock().unwrap().handoff.set_grace(grace);
    }

    /// (`room` signals sent, looks of the parked reader thread) so far.
    fn reader_wakes(&self) -> (u64, u64) {
        let inbox = self.inbox.lock().unwrap();
        (inbox.room_signals, inbox.handoff.parked_looks())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Inbound, Leaky, Link, LinkPeer, QueueLimit};
    use super::*;
    use fdlink::protocol::{MessagePacket, Packet, QueryPacket, QueryReplyPacket, StatePacket};
    use fdlink::transport::Connection;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::thread::ThreadId;

    /// A stream that flows (the streaming thread back within each period) keeps the reader
    /// on PARKED_PERIOD_FLOWING after its first look, and costs no signal.
    #[test]
    fn a_flowing_stream_keeps_the_reader_on_the_flowing_period() {
        let mut h = Handoff::new(true);
        let mut wait = ReaderWait::default();
        assert_eq!(h.streaming_wants(), StreamingStep::AskReader);
        let mut periods = Vec::new();
        for _ in 0..10 {
            match h.reader_step(&mut wait, 0).0 {
                ReaderStep::Parked(p) => periods.push(p),
                other => panic!("{other:?}"),
            }
            assert!(!h.streaming_leaves());
            assert_eq!(h.streaming_wants(), StreamingStep::Read);
        }
        assert_eq!(periods[0], READER_GRACE);
        assert!(
            periods[1..].iter().all(|p| *p == PARKED_PERIOD_FLOWING),
            "{periods:?}"
        );
    }

    #[test]
    fn the_socket_passes_to_the_streaming_thread_and_back_after_the_grace() {
        let mut h = Handoff::new(true);
        let mut wait = ReaderWait::default();
        assert_eq!(h.reader_step(&mut wait, 0), (ReaderStep::Free, false));
        h.reader_reads();
        // The streaming thread asks once, then waits for the reader to stand aside.
        assert_eq!(h.streaming_wants(), StreamingStep::AskReader);
        assert_eq!(h.streaming_wants(), StreamingStep::Wait);
        let (step, parks_now) = h.reader_step(&mut wait, 0);
        assert_eq!(step, ReaderStep::Parked(READER_GRACE));
        assert!(parks_now && h.reader_parked() && !h.reader_asked());
        assert_eq!(h.streaming_wants(), StreamingStep::Read);
        h.streaming_leaves();
        // Within the grace the reader stays parked; a streaming thread back meanwhile reads
        // without asking.
        let (step, _) = h.reader_step(&mut wait, 0);
        assert!(
            matches!(step, ReaderStep::Grace(left) if left <= READER_GRACE),
            "{step:?}"
        );
        assert_eq!(h.streaming_wants(), StreamingStep::Read);
        h.streaming_leaves();
        // A query reply awaited ends the grace at once.
        assert_eq!(h.reader_step(&mut wait, 1), (ReaderStep::Free, false));
        // So does the grace running out.
        h.set_grace(Duration::ZERO);
        let mut wait = ReaderWait::default();
        assert_eq!(h.reader_step(&mut wait, 0), (ReaderStep::Free, false));
        h.reader_reads();
        assert!(!h.reader_parked());
    }

    /// While the streaming thread stays in one wait, the parked reader's period grows to
    /// PARKED_PERIOD_MAX, then it sleeps PARKED_PERIOD_IDLE (an idle stream), and the
    /// streaming thread leaving that wait says to signal it.
    #[test]
    fn a_parked_reader_looks_less_often_while_the_streaming_thread_stays() {
        let mut h = Handoff::new(true);
        let mut wait = ReaderWait::default();
        h.streaming_wants();
        let periods: Vec<u64> = (0..6)
            .map(|_| match h.reader_step(&mut wait, 0).0 {
                ReaderStep::Parked(p) => p.as_millis() as u64,
                other => panic!("{other:?}"),
            })
            .collect();
        let idle = PARKED_PERIOD_IDLE.as_millis() as u64;
        let max = PARKED_PERIOD_MAX.as_millis() as u64;
        assert_eq!(periods, [5, max, idle, idle, idle, idle]);
        // The streaming thread left and came back: the stream flows again.
        assert!(h.streaming_leaves(), "the sleeping reader is signalled");
        h.streaming_wants();
        assert_eq!(
            h.reader_step(&mut wait, 0).0,
            ReaderStep::Parked(PARKED_PERIOD_FLOWING)
        );
    }

    #[test]
    fn with_a_leaky_policy_the_reader_waits_for_the_signal_and_has_no_grace() {
        let mut h = Handoff::new(false);
        let mut wait = ReaderWait::default();
        assert_eq!(h.streaming_wants(), StreamingStep::AskReader);
        assert_eq!(h.reader_step(&mut wait, 0), (ReaderStep::AwaitSignal, true));
        assert_eq!(
            h.reader_step(&mut wait, 0),
            (ReaderStep::AwaitSignal, false)
        );
        assert_eq!(h.streaming_wants(), StreamingStep::Read);
        h.streaming_leaves();
        assert_eq!(h.reader_step(&mut wait, 0), (ReaderStep::Free, false));
    }

    /// Records which thread took each State packet off the socket.
    struct StateThreads(mpsc::Sender<ThreadId>);

    impl LinkPeer for StateThreads {
        fn answer(&self, query: &QueryPacket) -> QueryReplyPacket {
            QueryReplyPacket {
                id: query.id,
                answered: false,
                structure: String::new(),
            }
        }
        fn state(&self, _state: StatePacket) {
            let _ = self.0.send(std::thread::current().id());
        }
        fn message(&self, _message: MessagePacket) {}
    }

    const PLAYING: Packet<std::os::fd::BorrowedFd<'static>> = Packet::State(StatePacket {
        state: StatePacket::PLAYING,
        sender_follows: false,
    });

    fn start() -> (Arc<Link>, Connection, mpsc::Receiver<ThreadId>) {
        start_leaky(Leaky::None)
    }

    fn start_leaky(leaky: Leaky) -> (Arc<Link>, Connection, mpsc::Receiver<ThreadId>) {
        gst::init().unwrap();
        let (consumer, producer) = Connection::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let limit = QueueLimit {
            max_queued: 4,
            leaky,
            hold_limit: 0,
        };
        let link =
            Link::start(Arc::new(consumer), StateThreads(tx), limit, Arc::default()).unwrap();
        (link, producer, rx)
    }

    /// Waits (up to 5 s) until the streaming thread, inside `next()`, has the socket.
    fn wait_parked(link: &Link) {
        let until = Instant::now() + Duration::from_secs(5);
        while !link.reader_parked() {
            assert!(
                Instant::now() < until,
                "the reader thread never stood aside"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn is_playing(next: Option<Inbound>) -> bool {
        matches!(next, Some(Inbound::Packet(Packet::State(st))) if st.state == StatePacket::PLAYING)
    }

    /// Sends a State packet and asserts that the reader thread takes it off the socket (within
    /// 5 s): neither `streaming_id` nor this thread. `why` names the failure.
    fn reader_reads_next(
        producer: &Connection,
        threads: &mpsc::Receiver<ThreadId>,
        streaming_id: ThreadId,
        why: &str,
    ) {
        producer.send_packet(&PLAYING, None).unwrap();
        let reader_id = threads
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{why}"));
        assert_ne!(reader_id, streaming_id);
        assert_ne!(reader_id, std::thread::current().id());
    }

    #[test]
    fn waiting_streaming_thread_reads_the_socket_itself() {
        let (link, producer, threads) = start();
        let waiter = link.clone();
        let streaming = std::thread::spawn(move || {
            (
                std::thread::current().id(),
                waiter.next(Some(Instant::now() + Duration::from_secs(10))),
            )
        });
        wait_parked(&link);
        producer.send_packet(&PLAYING, None).unwrap();
        let (streaming_id, next) = streaming.join().unwrap();
        assert!(is_playing(next));
        assert_eq!(
            threads.recv().unwrap(),
            streaming_id,
            "read on the streaming thread"
        );

        // Outside `next()` the reader thread has the socket again, once READER_GRACE has
        // passed without the streaming thread coming back.
        reader_reads_next(
            &producer,
            &threads,
            streaming_id,
            "the reader never took the socket back",
        );
        // The reader reports the State packet before it queues it: wait for the queue.
        assert!(is_playing(
            link.next(Some(Instant::now() + Duration::from_secs(5)))
        ));
        link.shutdown();
    }

    /// The streaming thread takes one packet itself, on a thread of its own, so the reader
    /// thread has stood aside once; returns that thread's id.
    fn first_read_on_a_streaming_thread(
        link: &Arc<Link>,
        producer: &Connection,
        threads: &mpsc::Receiver<ThreadId>,
    ) -> ThreadId {
        let waiter = link.clone();
        let streaming = std::thread::spawn(move || {
            (
                std::thread::current().id(),
                waiter.next(Some(Instant::now() + Duration::from_secs(10))),
            )
        });
        wait_parked(link);
        producer.send_packet(&PLAYING, None).unwrap();
        let (streaming_id, next) = streaming.join().unwrap();
        assert!(is_playing(next));
        assert_eq!(threads.recv().unwrap(), streaming_id);
        streaming_id
    }

    #[test]
    fn streaming_thread_back_within_the_grace_finds_the_socket_free() {
        let (link, producer, threads) = start();
        link.set_reader_grace(Duration::from_secs(60));
        first_read_on_a_streaming_thread(&link, &producer, &threads);
        for _ in 0..3 {
            // The reader thread stayed aside: this thread reads, and never had to ask.
            assert!(link.reader_parked());
            producer.send_packet(&PLAYING, None).unwrap();
            assert!(is_playing(
                link.next(Some(Instant::now() + Duration::from_secs(10)))
            ));
            assert_eq!(threads.recv().unwrap(), std::thread::current().id());
            assert!(
                !link.reader_asked(),
                "the reader thread was woken to stand aside"
            );
        }
        // Stopping does not wait for the grace to end.
        let started = Instant::now();
        link.shutdown();
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn leaving_streaming_thread_wakes_nobody_and_the_reader_still_takes_over() {
        let (link, producer, threads) = start();
        let streaming_id = first_read_on_a_streaming_thread(&link, &producer, &threads);
        // Once more on this thread, now that the reader is parked; the packet comes after
        // the reader's grace, so the reader is back to its parked wait meanwhile. next()
        // returns (the frame would go downstream now) without signalling the reader thread.
        let (signals_before, _) = link.reader_wakes();
        let producer = Arc::new(producer);
        let sender = producer.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(READER_GRACE * 10);
            sender.send_packet(&PLAYING, None).unwrap();
        });
        assert!(is_playing(
            link.next(Some(Instant::now() + Duration::from_secs(10)))
        ));
        late.join().unwrap();
        assert_eq!(threads.recv().unwrap(), std::thread::current().id());
        assert_eq!(
            link.reader_wakes().0,
            signals_before,
            "next() woke the parked reader thread on its way out"
        );
        // The reader looks on its own timer and takes the socket back after the grace.
        reader_reads_next(
            &producer,
            &threads,
            streaming_id,
            "the parked reader never took the socket back",
        );
        link.shutdown();
    }

    #[test]
    fn parked_reader_looks_less_often_while_the_streaming_thread_waits() {
        let (link, _producer, _threads) = start();
        let waiter = link.clone();
        let streaming = std::thread::spawn(move || {
            waiter.next(Some(Instant::now() + Duration::from_millis(600)))
        });
        wait_parked(&link);
        let (_, looks_before) = link.reader_wakes();
        assert!(matches!(streaming.join().unwrap(), Some(Inbound::TimedOut)));
        // Nothing came for up to 600 ms: the parked reader's waits went 5, 10, 20, 40, 40 ...
        // ms, about 18 looks; every READER_GRACE would have been about 120.
        let looks = link.reader_wakes().1 - looks_before;
        assert!(
            looks <= 25,
            "the parked reader looked {looks} times in 600 ms"
        );
        link.shutdown();
    }

    #[test]
    fn leaky_policies_have_no_grace() {
        for leaky in [Leaky::Oldest, Leaky::Copy] {
            let (link, producer, threads) = start_leaky(leaky);
            link.set_reader_grace(Duration::from_secs(60));
            let streaming_id = first_read_on_a_streaming_thread(&link, &producer, &threads);
            // Frames must meet the policy as they arrive, not when the streaming thread
            // comes back: the reader thread reads again at once.
            reader_reads_next(
                &producer,
                &threads,
                streaming_id,
                &format!("leaky={leaky:?}: the reader thread waited"),
            );
            link.shutdown();
        }
    }

    #[test]
    fn awaited_query_reply_ends_the_grace_at_once() {
        let (link, producer, threads) = start();
        link.set_reader_grace(Duration::from_secs(60));
        let streaming_id = first_read_on_a_streaming_thread(&link, &producer, &threads);
        // A query waits for its reply while the streaming thread is away (downstream): the
        // reader thread reads again now, not after the grace.
        let awaiting = link.awaiting_reply();
        reader_reads_next(
            &producer,
            &threads,
            streaming_id,
            "the reader waited out its grace with a reply awaited",
        );
        drop(awaiting);
        link.shutdown();
    }

    #[test]
    fn flushing_and_deadline_end_a_read_on_the_streaming_thread() {
        let (link, producer, _threads) = start();
        let started = Instant::now();
        let next = link.next(Some(started + Duration::from_millis(100)));
        assert!(matches!(next, Some(Inbound::TimedOut)));
        assert!(started.elapsed() >= Duration::from_millis(100));

        let waiter = link.clone();
        let streaming = std::thread::spawn(move || waiter.next(None));
        wait_parked(&link);
        link.set_flushing(true);
        assert!(streaming.join().unwrap().is_none(), "flushing returns None");

        // After the flush, reading goes on where it stopped.
        link.set_flushing(false);
        producer.send_packet(&PLAYING, None).unwrap();
        assert!(is_playing(
            link.next(Some(Instant::now() + Duration::from_secs(10)))
        ));
        link.shutdown();
    }

    #[test]
    fn producer_closing_ends_a_read_on_the_streaming_thread() {
        let (link, producer, _threads) = start();
        let waiter = link.clone();
        let streaming = std::thread::spawn(move || waiter.next(None));
        wait_parked(&link);
        drop(producer);
        assert!(matches!(streaming.join().unwrap(), Some(Inbound::Closed)));
        // The end stays, and the reader thread has ended: shutdown() does not wait.
        assert!(matches!(link.next(None), Some(Inbound::Closed)));
        let started = Instant::now();
        link.shutdown();
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
