//! Consumers cannot write into the producer's frames (issue 22): a consumer that tries, through
//! the fd of every memory it receives (mmap PROT_WRITE MAP_SHARED, write(2), and both through a
//! read-write reopening of the fd in /proc), is refused for every frame: zero-copy frames in
//! the pool fdlinksink gives upstream, with register-once fds and without, and frames copied
//! into the sink's copy pool. The frames still arrive intact.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);
const FRAMES: u64 = 40;

/// Runs `source ! fdlinksink` against a `--try-write` consumer; returns the consumer's
/// `write-*` lines and the producer's final stats, after checking that every frame arrived
/// intact and that neither side leaked an fd.
fn try_writes(source: &str, register: bool) -> (Vec<String>, gst::Structure) {
    init_gst();
    let dir = TempDir::new("ro");
    let sock = dir.socket();
    let mut consumer = Peer::spawn(&[
        "consume",
        "--try-write",
        "--frames-log",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    let mut producer = Peer::spawn(&[
        "produce",
        "--frames-log",
        "--stats-every",
        "100",
        &format!(
            "{source} ! fdlinksink socket-path={sock} wait-for-connection=true sync=false register-fds={register}"
        ),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    assert_no_leaked_fds(&producer, "producer");
    assert_no_leaked_fds(&consumer, "consumer");
    let (sent, got) = (frames(&producer.lines()), frames(&consumer.lines()));
    assert_eq!(
        got.len() as u64,
        FRAMES,
        "consumer got {} frames",
        got.len()
    );
    for (p, c) in sent.iter().zip(&got) {
        assert_eq!(
            (p.offset, &p.crc),
            (c.offset, &c.crc),
            "frame {} differs",
            p.offset
        );
    }
    let tries: Vec<String> = consumer
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("write-") || l.starts_with("no-fd"))
        .collect();
    (tries, producer.latest_stats().expect("producer stats"))
}

/// Every frame's write is refused through its fd and through a read-write reopening of it.
fn assert_all_refused(tries: &[String], case: &str) {
    assert_eq!(
        tries.len() as u64,
        FRAMES,
        "{case}: one line per frame: {tries:?}"
    );
    for t in tries {
        assert!(
            t.starts_with("write-refused") && t.contains(" fds=1 "),
            "{case}: a write into the producer's frame was allowed: {t}"
        );
        // O_RDONLY: the mapping is EACCES, write(2) EBADF; reopened read-write, the pool's
        // write seal refuses both (EPERM).
        assert!(
            t.ends_with("mmap=EACCES write=EBADF reopen=EPERM/EPERM"),
            "{case}: {t}"
        );
    }
    println!("{case}: {}", tries[0]);
}

/// Zero-copy: videotestsrc renders into fdlinksink's memfd pool; with register-once fds each
/// file crosses once, without them every frame carries its fd.
#[test]
fn zero_copy_frames_refuse_consumer_writes() {
    let source = format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1"
    );
    for register in [true, false] {
        let (tries, stats) = try_writes(&source, register);
        assert_eq!(field(&stats, "frames-copied"), 0, "not zero-copy");
        assert_all_refused(&tries, &format!("zero-copy register-fds={register}"));
    }
}

/// The copy path: upstream allocates system memory (`identity drop-allocation=true` keeps
/// fdlinksink's pool from it), and each frame is copied once into the sink's copy pool.
#[test]
fn copied_frames_refuse_consumer_writes() {
    let source = format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! identity drop-allocation=true"
    );
    for register in [true, false] {
        let (tries, stats) = try_writes(&source, register);
        assert_eq!(field(&stats, "frames-copied"), FRAMES, "not the copy path");
        assert_all_refused(&tries, &format!("copy register-fds={register}"));
    }
}
