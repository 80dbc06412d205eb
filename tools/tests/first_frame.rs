//! The first frame reaches a consumer that is connected, or in its hello, when the producer
//! renders it, with default properties, in every start order: a consumer started first and
//! waiting for the socket, a producer started first with `wait-for-connection=true`, and two
//! processes joined by a socketpair (`fd=`), either one started first. Each is run 20 times;
//! every run must deliver all 30 of 30 frames (the `frame` lines' offsets 0 to 29).

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;

use std::time::Duration;

use common::*;
use fdlink::transport::Connection;

const T: Duration = Duration::from_secs(30);
const RUNS: usize = 20;
const FRAMES: u64 = 30;
/// The fd number the socketpair's end has in each peer.
const INHERITED_FD: i32 = 3;

fn producer_pipeline(sink: &str) -> String {
    format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! video/x-raw,width=320,height=240 ! {sink}"
    )
}

/// The offsets of the frames a consumer received.
fn offsets(consumer: &Peer) -> Vec<u64> {
    frames(&consumer.lines()).iter().map(|f| f.offset).collect()
}

/// Waits for both, and checks the consumer got every frame, the first one included.
fn expect_every_frame(mut producer: Peer, mut consumer: Peer, what: &str, run: usize) {
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let got = offsets(&consumer);
    let want: Vec<u64> = (0..FRAMES).collect();
    let without = producer
        .latest_stats()
        .map(|s| field(&s, "frames-without-consumer"));
    assert_eq!(
        got,
        want,
        "{what}, run {run}: the consumer got {} of {FRAMES} frames (producer's frames-without-consumer {without:?})",
        got.len()
    );
}

#[test]
fn a_consumer_started_first_gets_the_first_frame() {
    init_gst();
    for run in 0..RUNS {
        let dir = TempDir::new("first-frame-consumer-first");
        let sock = dir.socket();
        let consumer = Peer::spawn(&[
            "consume",
            "--frames-log",
            "--messages-log",
            &format!("fdlinksrc socket-path={sock} ! fakesink"),
        ]);
        // Its pipeline is paused and its fdlinksrc retries the connect until the socket comes.
        consumer
            .wait_line(T, |l| l == "state Paused")
            .expect("the consumer starts");
        std::thread::sleep(Duration::from_millis(50));
        let producer = Peer::spawn(&[
            "produce",
            &producer_pipeline(&format!("fdlinksink socket-path={sock}")),
        ]);
        expect_every_frame(producer, consumer, "consumer first", run);
    }
}

#[test]
fn a_producer_waiting_for_its_consumer_gives_it_the_first_frame() {
    init_gst();
    for run in 0..RUNS {
        let dir = TempDir::new("first-frame-producer-first");
        let sock = dir.socket();
        let producer = Peer::spawn(&[
            "produce",
            &producer_pipeline(&format!(
                "fdlinksink socket-path={sock} wait-for-connection=true"
            )),
        ]);
        wait_for_path(&sock, T);
        let consumer = Peer::spawn(&[
            "consume",
            "--frames-log",
            &format!("fdlinksrc socket-path={sock} ! fakesink"),
        ]);
        expect_every_frame(producer, consumer, "producer first", run);
    }
}

/// `fdlink-peer ARGS` with `fd` as its fd [`INHERITED_FD`].
fn spawn_inheriting(fd: &Connection, args: &[&str]) -> Peer {
    let raw = fd.as_fd().as_raw_fd();
    let mut cmd = Peer::command(args);
    // SAFETY: dup2 and fcntl are async-signal-safe, as a forked child of a threaded process
    // needs; the copy dup2 makes is not close-on-exec, the original (close-on-exec) closes at
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself leaves close-on-exec set: clear it then.
            let done = if raw == INHERITED_FD {
                libc::fcntl(raw, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, INHERITED_FD)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Peer::from_child(cmd.spawn().expect("spawn fdlink-peer"))
}

#[test]
fn a_consumer_on_a_socketpair_gets_the_first_frame() {
    init_gst();
    for run in 0..RUNS {
        let (producer_end, consumer_end) = Connection::pair().unwrap();
        let produce = |fd: &Connection| {
            spawn_inheriting(
                fd,
                &[
                    "produce",
                    &producer_pipeline(&format!("fdlinksink fd={INHERITED_FD}")),
                ],
            )
        };
        let consume = |fd: &Connection| {
            spawn_inheriting(
                fd,
                &[
                    "consume",
                    "--frames-log",
                    &format!("fdlinksrc fd={INHERITED_FD} ! fakesink"),
                ],
            )
        };
        // Either process may start first: a player starts its demuxer and decoders together.
        let (producer, consumer) = if run % 2 == 0 {
            let p = produce(&producer_end);
            (p, consume(&consumer_end))
        } else {
            let c = consume(&consumer_end);
            (produce(&producer_end), c)
        };
        // Each end now lives in its process only: a process that ends hangs up on the other.
        drop((producer_end, consumer_end));
        expect_every_frame(producer, consumer, "socketpair", run);
    }
}
