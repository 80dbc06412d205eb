//! Register-once fds across two real processes: pooled buffers cross as fds once, then by id;
//! files are retired when the producer's pool goes; a pool that grows registers each new
//! buffer; the frames stay byte-identical throughout.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

fn nv12(width: u32, height: u32) -> String {
    format!("video/x-raw,format=NV12,width={width},height={height},framerate=60/1")
}

/// Runs a producer and a consumer with frame logs; both must succeed without leaking fds.
fn run_logged(
    producer_args: &[&str],
    consumer_pipeline: &str,
) -> (Vec<Frame>, Vec<Frame>, gst::Structure, gst::Structure) {
    init_gst();
    let mut consumer = Peer::spawn(&["consume", "--frames-log", consumer_pipeline]);
    let mut args = vec!["produce", "--frames-log"];
    args.extend_from_slice(producer_args);
    let mut producer = Peer::spawn(&args);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    assert_no_leaked_fds(&producer, "producer");
    assert_no_leaked_fds(&consumer, "consumer");
    (
        frames(&producer.lines()),
        frames(&consumer.lines()),
        producer.latest_stats().expect("producer stats"),
        consumer.latest_stats().expect("consumer stats"),
    )
}

fn assert_same_frames(sent: &[Frame], got: &[Frame]) {
    assert_eq!(
        got.len(),
        sent.len(),
        "consumer got {} of {}",
        got.len(),
        sent.len()
    );
    for (p, c) in sent.iter().zip(got) {
        assert_ne!(p.files, "-", "producer frame {} is not fd-backed", p.offset);
        assert_eq!(
            (p.offset, &p.crc, &p.files),
            (c.offset, &c.crc, &c.files),
            "frame {} differs or is another file",
            p.offset
        );
    }
}

/// One consumer, a fixed pool: each pool buffer's memfd crosses once, every later frame
/// names it by id, and the consumer keeps exactly those files; with `register-fds=false`
/// every frame carries its fd.
#[test]
fn pooled_buffers_cross_as_fds_once_then_by_id() {
    let n = 120u64;
    for register in [true, false] {
        let dir = TempDir::new("reg");
        let sock = dir.socket();
        let (sent, got, ps, cs) = run_logged(
            &[
                "--stats-every",
                "50",
                &format!(
                    "videotestsrc num-buffers={n} pattern=ball ! {} ! fdlinksink socket-path={sock} wait-for-connection=true sync=false register-fds={register}",
                    nv12(640, 480)
                ),
            ],
            &format!("fdlinksrc socket-path={sock} ! fakesink"),
        );
        assert_same_frames(&sent, &got);
        let distinct_files: std::collections::HashSet<&str> =
            sent.iter().map(|f| f.files.as_str()).collect();
        let fds_sent = field(&ps, "fds-sent");
        println!(
            "register-fds={register}: {n} frames, {} distinct files, fds-sent {fds_sent}, files-registered {}, consumer files-registered {}",
            distinct_files.len(),
            field(&ps, "files-registered"),
            field(&cs, "files-registered")
        );
        assert_eq!(field(&ps, "frames-sent"), n);
        if register {
            // One fd per pool buffer, not per frame.
            assert_eq!(fds_sent, distinct_files.len() as u64);
            assert_eq!(field(&ps, "files-registered"), fds_sent);
            assert!(fds_sent < n / 4, "{fds_sent} fds for {n} frames");
        } else {
            assert_eq!(fds_sent, n);
            assert_eq!(field(&ps, "files-registered"), 0);
            assert_eq!(field(&cs, "files-registered"), 0);
        }
    }
}

/// A caps change replaces the producer's pool: the old pool's files are retired with the
/// consumer (it closes them; its registered files never pile up), the new pool's files are
/// registered, and every frame of both sizes arrives intact.
#[test]
fn caps_change_retires_the_old_pool_files() {
    let dir = TempDir::new("retire");
    let sock = dir.socket();
    let n = 160u64;
    init_gst();
    let mut consumer = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--stats-every",
        "20",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    let mut producer = Peer::spawn(&[
        "produce",
        "--frames-log",
        "--stats-every",
        "20",
        "--caps-after",
        "60",
        &nv12(320, 240),
        &format!(
            "videotestsrc num-buffers={n} pattern=ball ! capsfilter name=cf caps={} ! fdlinksink socket-path={sock} wait-for-connection=true sync=false",
            nv12(640, 480)
        ),
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    assert_no_leaked_fds(&producer, "producer");
    assert_no_leaked_fds(&consumer, "consumer");
    let sent = frames(&producer.lines());
    let got = frames(&consumer.lines());
    assert_same_frames(&sent, &got);
    let sizes: Vec<u64> = got.iter().map(|f| f.size).collect();
    let big = 640 * 480 * 3 / 2;
    let small = 320 * 240 * 3 / 2;
    assert!(
        sizes.contains(&big) && sizes.contains(&small),
        "no caps change"
    );
    let files_of = |size: u64| -> std::collections::HashSet<&str> {
        sent.iter()
            .filter(|f| f.size == size)
            .map(|f| f.files.as_str())
            .collect()
    };
    let (old_files, new_files) = (files_of(big), files_of(small));
    let ps = producer.latest_stats().unwrap();
    let retired = field(&ps, "files-retired");
    let most_registered = consumer
        .lines()
        .iter()
        .filter_map(|l| l.strip_prefix("stats "))
        .map(|s| field(&s.parse::<gst::Structure>().unwrap(), "files-registered"))
        .max()
        .unwrap();
    println!(
        "old pool {} files, new pool {} files, files-retired {retired}, files-registered {}, consumer held at most {most_registered}",
        old_files.len(),
        new_files.len(),
        field(&ps, "files-registered")
    );
    assert_eq!(
        retired,
        old_files.len() as u64,
        "every file of the old pool retired"
    );
    assert_eq!(
        field(&ps, "files-registered"),
        (old_files.len() + new_files.len()) as u64
    );
    assert!(
        most_registered as usize <= old_files.len().max(new_files.len()) + old_files.len(),
        "consumer kept {most_registered} files"
    );
}

/// The producer's pool starts with 2 buffers and grows to 8 while a slow consumer holds
/// frames: each new buffer is registered when it first crosses, no frame is read from
/// another buffer's file (each is filled with its offset and checked), none is overwritten
/// while held.
#[test]
fn a_growing_pool_registers_each_new_buffer() {
    init_gst();
    let dir = TempDir::new("grow");
    let sock = dir.socket();
    let n = 60u64;
    let mut consumer = Peer::spawn(&[
        "consume",
        "--pattern",
        "--slow-ms",
        "15",
        "--frames-log",
        "--stats-every",
        "50",
        &format!("fdlinksrc socket-path={sock} ! queue max-size-buffers=6 ! fakesink name=check"),
    ]);
    let mut producer = Peer::spawn(&[
        "produce-pattern",
        "--socket",
        &sock,
        "--frames",
        &n.to_string(),
        "--pool-min",
        "2",
        "--pool-max",
        "8",
        "--size",
        "320x240",
        "--stats-every",
        "50",
        "--sink-props",
        "max-held=7 slow-policy=block",
    ]);
    producer.wait_success(T, "producer");
    consumer.wait_success(T, "consumer");
    let lines = consumer.lines();
    let bad = changed_frames(&lines);
    assert!(bad.is_empty(), "wrong frames: {bad:?}");
    let got = frames(&lines);
    assert_eq!(got.len() as u64, n);
    // Frames the consumer copied out (its queue holds more than half of max-held) are in
    // system memory, "-": not a file.
    let files: std::collections::HashSet<&str> = got
        .iter()
        .map(|f| f.files.as_str())
        .filter(|f| *f != "-")
        .collect();
    let ps = producer.latest_stats().unwrap();
    println!(
        "{} distinct files, fds-sent {}, files-registered {}",
        files.len(),
        field(&ps, "fds-sent"),
        field(&ps, "files-registered")
    );
    assert!(
        files.len() > 2,
        "the pool did not grow: {} files",
        files.len()
    );
    assert!(files.len() <= 8);
    assert_eq!(field(&ps, "files-registered"), files.len() as u64);
    assert_eq!(field(&ps, "fds-sent"), files.len() as u64);
}
