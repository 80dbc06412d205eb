//! fdlinksrc `reconnect`: a producer killed with SIGKILL and started again, with and without
//! reconnect, and `retry-timeout` running out. Real processes, real sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(60);

/// A live NV12 producer of `w`x`h` at 30 fps on `sock`, holding at most 4 buffers per
/// consumer.
fn live_producer(sock: &str, (w, h): (u32, u32), extra: &[&str]) -> Peer {
    let pipeline = format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,format=NV12,width={w},height={h},framerate=30/1 ! fdlinksink socket-path={sock} max-held=4"
    );
    let mut args = vec!["produce"];
    args.extend_from_slice(extra);
    args.push(&pipeline);
    Peer::spawn(&args)
}

fn nv12_size((w, h): (u32, u32)) -> u64 {
    w as u64 * h as u64 * 3 / 2
}

/// The consumer's open fds as what they point at, kernel object numbers taken out
/// (`socket:[123]` -> `socket:[]`): a new connection has new sockets and eventfds, but as
/// many of each as the old one. Received frames (memfds) are counted apart.
fn fds_without_frames(pid: i32) -> (Vec<String>, usize) {
    let (frames, other): (Vec<String>, Vec<String>) = fd_targets(pid)
        .into_iter()
        .partition(|t| t.contains("memfd:"));
    let mut other: Vec<String> = other
        .into_iter()
        .map(|t| match (t.find('['), t.rfind(']')) {
            (Some(a), Some(b)) if t[a + 1..b].bytes().all(|c| c.is_ascii_digit()) => {
                format!("{}[]{}", &t[..a], &t[b + 1..])
            }
            _ => t,
        })
        .collect();
    other.sort();
    (other, frames.len())
}

fn frame_size(line: &str) -> Option<u64> {
    frames(&[line.to_string()]).first().map(|f| f.size)
}

fn discont_size(line: &str) -> Option<u64> {
    line.strip_prefix("discont ")?
        .split(' ')
        .find_map(|kv| kv.strip_prefix("size="))
        .and_then(|v| v.parse().ok())
}

/// Waits until `n` frame lines of `size` bytes came after line `from`.
fn wait_frames(consumer: &Peer, from: usize, size: u64, n: usize, what: &str) {
    let deadline = Instant::now() + T;
    loop {
        let lines = consumer.lines();
        let got = lines
            .get(from..)
            .unwrap_or_default()
            .iter()
            .filter(|l| frame_size(l) == Some(size))
            .count();
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {got} of {n} frames of {size} bytes\nstderr: {}",
            consumer.errors()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a 320x240 live producer on `sock` and a consumer (`fdlink-peer consume --frames-log`
/// plus `options`, with `fdlinksrc_props` on its fdlinksrc), kills the producer with SIGKILL
/// once the consumer has 5 frames, and returns the consumer and when the kill began.
fn kill_producer_of(sock: &str, options: &[&str], fdlinksrc_props: &str) -> (Peer, Instant) {
    init_gst();
    let mut producer = live_producer(sock, (320, 240), &[]);
    wait_for_path(sock, T);
    let pipeline = format!("fdlinksrc socket-path={sock} {fdlinksrc_props} ! fakesink");
    let mut args = vec!["consume", "--frames-log"];
    args.extend_from_slice(options);
    args.push(&pipeline);
    let consumer = Peer::spawn(&args);
    wait_frames(&consumer, 0, nv12_size((320, 240)), 5, "producer");
    let killed_at = Instant::now();
    producer.kill9();
    (consumer, killed_at)
}

/// Kills the producer with SIGKILL twice while a reconnect=true consumer streams, and starts
/// a new one on the same path each time (first at another size, then at the same size): the
/// consumer process lives on, gets the new producer's stream-start, caps and segment before
/// its frames, a DISCONT first buffer, an fdlink-disconnected and an fdlink-reconnected
/// message, counts the reconnects, and has the fds it had before (apart from held frames).
#[test]
fn killed_producer_is_replaced_and_consumer_resumes() {
    init_gst();
    let dir = TempDir::new("reconnect");
    let sock = dir.socket();
    let small = (320, 240);
    let large = (640, 480);
    let mut producer = live_producer(&sock, small, &[]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--events-log",
        "--discont-log",
        "--messages-log",
        "--stats-every",
        "100",
        &format!("fdlinksrc socket-path={sock} reconnect=true retry-timeout=30000 ! fakesink"),
    ]);
    wait_frames(&consumer, 0, nv12_size(small), 10, "first producer");
    let (fds_before, _) = fds_without_frames(consumer.pid());
    let lines = consumer.lines();
    let disconts_before = lines.iter().filter(|l| l.starts_with("discont ")).count();
    assert!(
        disconts_before <= 1,
        "only BaseSrc's first buffer may be DISCONT before any reconnect: {disconts_before}"
    );

    for (round, size) in [(1u64, large), (2, large)] {
        let killed_at = Instant::now();
        producer.kill9();
        let gone = consumer
            .wait_line(T, |l| l.contains("fdlink-disconnected"))
            .unwrap_or_else(|| panic!("round {round}: no fdlink-disconnected message"));
        let lines = consumer.lines();
        let mark = lines.iter().position(|l| *l == gone).unwrap() + 1;
        println!(
            "round {round}: fdlink-disconnected {} ms after the kill: {gone}",
            killed_at.elapsed().as_millis()
        );
        assert!(gone.contains(&sock), "message names the path: {gone}");
        producer = live_producer(&sock, size, &[]);
        wait_frames(&consumer, mark, nv12_size(size), 10, "new producer");
        assert!(
            consumer.child.try_wait().unwrap().is_none(),
            "round {round}: consumer exited: {}",
            consumer.errors()
        );

        let lines = consumer.lines();
        let after = &lines[mark..];
        let old = after
            .iter()
            .filter_map(|l| frame_size(l))
            .find(|s| *s != nv12_size(size));
        assert_eq!(
            old, None,
            "round {round}: a frame of another size after the loss"
        );
        let first_frame = find_from(&lines, mark, |l| l.starts_with("frame ")).unwrap();
        let stream_start = find_from(&lines, mark, |l| l.starts_with("event stream-start "));
        let caps = find_from(&lines, mark, |l| {
            l.starts_with("event caps ") && l.contains(&format!("width=(int){}", size.0))
        });
        let segment = find_from(&lines, mark, |l| l.starts_with("event segment "));
        println!(
            "round {round}: stream-start {stream_start:?}, caps {caps:?}, segment {segment:?}, first frame {first_frame}"
        );
        let (Some(stream_start), Some(caps), Some(segment)) = (stream_start, caps, segment) else {
            panic!(
                "round {round}: missing stream-start, caps or segment after the reconnect: {after:?}"
            );
        };
        assert!(
            stream_start < caps && caps < segment && segment < first_frame,
            "round {round}: stream-start {stream_start}, caps {caps}, segment {segment} must precede the first frame {first_frame}"
        );
        // The first new buffer, and only it, is DISCONT.
        let disconts: Vec<usize> = (mark..lines.len())
            .filter(|&i| lines[i].starts_with("discont "))
            .collect();
        assert_eq!(
            disconts.len(),
            1,
            "round {round}: one DISCONT buffer after the reconnect: {disconts:?}"
        );
        assert_eq!(discont_size(&lines[disconts[0]]), Some(nv12_size(size)));
        let frames_up_to_discont = lines[mark..disconts[0]]
            .iter()
            .filter(|l| l.starts_with("frame "))
            .count();
        assert_eq!(
            frames_up_to_discont, 1,
            "round {round}: the DISCONT buffer is not the first one after the reconnect"
        );

        let back = consumer
            .wait_line(T, |l| l.contains("fdlink-reconnected"))
            .unwrap();
        assert!(back.contains("attempts=(uint)"), "{back}");
        let stats = consumer
            .wait_stats(T, |s| field(s, "reconnects") == round)
            .unwrap_or_else(|| {
                panic!(
                    "round {round}: stats never said reconnects={round}: {:?}",
                    consumer.latest_stats()
                )
            });
        println!("round {round}: {back}\n  {stats}");

        // Same kinds of fds as before the first kill; the memfds open now are the files the
        // new producer registered (register-once fds) plus at most the frames a consumer may
        // hold (max-held=4): the killed producer's files were closed with its connection.
        let (fds_now, held) = fds_without_frames(consumer.pid());
        let registered = field(&consumer.latest_stats().unwrap(), "files-registered");
        assert_eq!(
            fds_now, fds_before,
            "round {round}: consumer fds differ from before the kill"
        );
        assert!(
            registered <= 8 && held as u64 <= registered + 4,
            "round {round}: {held} frame fds open, {registered} files registered"
        );
        println!(
            "round {round}: {} fds besides {held} frame fds ({registered} files registered), as before",
            fds_now.len()
        );
        // Clear the lines for the next round's searches.
        consumer.stdout.lock().unwrap().clear();
    }

    // The last producer ends with EOS: the consumer ends with it, and has closed every fd the
    // three connections gave it.
    producer.kill9();
    let gone = consumer
        .wait_line(T, |l| l.contains("fdlink-disconnected"))
        .expect("third disconnect");
    let mark = consumer.lines().iter().position(|l| *l == gone).unwrap();
    let mut last = live_producer(&sock, small, &["--seconds", "1.5"]);
    last.wait_success(T, "last");
    consumer.wait_success(T, "consumer");
    let lines = consumer.lines();
    assert!(
        lines[mark..].iter().any(|l| l == "eos"),
        "no eos at the end"
    );
    assert_eq!(field(&consumer.latest_stats().unwrap(), "reconnects"), 3);
    assert_no_leaked_fds(&consumer, "consumer");
}

/// Without reconnect, a producer killed with SIGKILL makes the consumer post an error naming
/// the socket path and the cause within 1 s of the kill.
#[test]
fn killed_producer_without_reconnect_is_an_error_within_1s() {
    let dir = TempDir::new("noreconnect");
    let sock = dir.socket();
    // Measured from before the kill (which includes reaping the producer) to the moment the
    // consumer's error line is read: an upper bound.
    let (mut consumer, killed_at) = kill_producer_of(&sock, &[], "");
    let error = consumer
        .wait_error_line(T, |l| l.starts_with("error:"))
        .expect("no error from the consumer");
    let took = killed_at.elapsed();
    println!("kill to error: {} ms: {error}", took.as_millis());
    assert!(
        took < Duration::from_secs(1),
        "the error came {} ms after the kill",
        took.as_millis()
    );
    assert!(
        error.contains(&sock) && error.contains("without EOS"),
        "error names the path and the cause: {error}"
    );
    assert_eq!(consumer.wait(T).code(), Some(1));
}

/// reconnect=true and no producer comes back: the consumer fails once retry-timeout has
/// passed, naming the path, the timeout and the attempts, after retrying with backoff.
#[test]
fn retry_timeout_ends_the_wait_for_a_new_producer() {
    let dir = TempDir::new("retry");
    let sock = dir.socket();
    let (mut consumer, killed_at) = kill_producer_of(
        &sock,
        &["--messages-log"],
        "reconnect=true retry-timeout=1500",
    );
    assert_eq!(consumer.wait(T).code(), Some(1));
    let took = killed_at.elapsed();
    let errors = consumer.errors();
    println!("kill to exit: {} ms\n{errors}", took.as_millis());
    // It must not give up before retry-timeout (counted from when the consumer saw the
    // connection close, which is after the kill).
    assert!(
        took >= Duration::from_millis(1500),
        "gave up after {} ms, before retry-timeout=1500",
        took.as_millis()
    );
    let error = errors
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(
        error.contains(&sock) && error.contains("retry-timeout=1500 ms"),
        "error names the path and the timeout: {error}"
    );
    let attempts: u32 = error
        .split_once("ms (")
        .and_then(|(_, r)| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no attempt count in {error}"));
    // 10 ms doubling to 500 ms: about 8 attempts in 1.5 s; one attempt would mean no retry.
    assert!(attempts >= 3, "only {attempts} attempts");
    let lines = consumer.lines();
    assert!(lines.iter().any(|l| l.contains("fdlink-disconnected")));
    assert!(!lines.iter().any(|l| l.contains("fdlink-reconnected")));
}

/// A producer that ends with EOS ends a reconnect=true consumer too: EOS is not a loss.
#[test]
fn eos_ends_the_stream_even_with_reconnect() {
    init_gst();
    let dir = TempDir::new("eos");
    let sock = dir.socket();
    let mut consumer = Peer::spawn(&[
        "consume",
        "--frames-log",
        "--messages-log",
        &format!("fdlinksrc socket-path={sock} reconnect=true retry-timeout=0 ! fakesink"),
    ]);
    let mut producer = Peer::spawn(&[
        "produce",
        &format!(
            "videotestsrc num-buffers=20 ! video/x-raw,format=NV12,width=320,height=240 ! fdlinksink socket-path={sock} wait-for-connection=true sync=false"
        ),
    ]);
    producer.wait_success(T, "producer");
    // retry-timeout=0 is forever: a consumer that took the EOS for a loss would never end.
    consumer.wait_success(T, "consumer");
    let lines = consumer.lines();
    assert!(!frames(&lines).is_empty(), "no frames");
    assert!(lines.iter().any(|l| l == "eos"));
    assert!(!lines.iter().any(|l| l.contains("fdlink-disconnected")));
}

/// reconnect=true with an inherited socket: refused at start, naming why.
#[test]
fn reconnect_with_an_inherited_fd_is_refused() {
    init_gst();
    let mut consumer = Peer::spawn(&["consume", "fdlinksrc fd=0 reconnect=true ! fakesink"]);
    assert_eq!(consumer.wait(T).code(), Some(1));
    let errors = consumer.errors();
    assert!(
        errors.contains("reconnect=true needs socket-path") && errors.contains("fd=0"),
        "{errors}"
    );
}
