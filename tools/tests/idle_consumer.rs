//! An idle consumer sleeps: fdlinksrc's own threads do not wake while the producer sends
//! nothing, nor while it waits for a producer that is not there. Counted as the context
//! switches of the element's threads (`/proc/PID/task/*/status`), real processes.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// Context switches so far of the threads of `pid` whose name starts with `prefix`, and how
/// many such threads there are.
fn switches(pid: i32, prefix: &str) -> (u64, usize) {
    let mut total = 0;
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        threads += 1;
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap();
            }
        }
    }
    (total, threads)
}

/// Wake-ups of fdlinksrc's threads in `pid` over `window`.
fn wakeups_over(pid: i32, window: Duration) -> (u64, usize) {
    let (before, _) = switches(pid, "fdlinksrc");
    std::thread::sleep(window);
    let (after, threads) = switches(pid, "fdlinksrc");
    (after - before, threads)
}

/// A live producer that sends one frame every 10 s: between frames its consumer's streaming
/// thread waits in the socket and its reader thread sleeps until signalled. Before the reader
/// slept through an idle stream it looked 25 times a second (75 switches in this window).
#[test]
fn a_consumer_of_an_idle_stream_does_not_wake() {
    let dir = TempDir::new("idle-stream");
    let sock = dir.socket();
    let mut producer = Peer::spawn(&[
        "produce",
        &format!(
            "videotestsrc is-live=true pattern=black ! video/x-raw,format=NV12,width=64,height=48,framerate=1/10 ! fdlinksink socket-path={sock}"
        ),
    ]);
    wait_for_path(&sock, T);
    let mut consumer = Peer::spawn(&[
        "consume",
        "--frames-log",
        &format!("fdlinksrc socket-path={sock} ! fakesink"),
    ]);
    consumer
        .wait_line(T, |l| l.starts_with("frame "))
        .expect("the first frame");
    // The first frame is in; the next one is 10 s away.
    std::thread::sleep(Duration::from_millis(500));
    let (wakeups, threads) = wakeups_over(consumer.pid(), Duration::from_secs(3));
    assert!(
        threads >= 2,
        "fdlinksrc's streaming and reader threads: {threads}"
    );
    assert!(
        wakeups <= 3,
        "fdlinksrc's threads woke {wakeups} times in 3 s of an idle stream"
    );
    consumer.kill9();
    producer.kill9();
}

/// A consumer started before its producer waits on the socket's directory (inotify): it
/// does not try to connect in a loop. The streaming thread, which connects, is the one to
/// count.
#[test]
fn a_consumer_waiting_for_its_producer_does_not_poll() {
    let dir = TempDir::new("idle-wait");
    let sock = dir.socket();
    let mut consumer = Peer::spawn(&[
        "consume",
        &format!("fdlinksrc socket-path={sock} timeout=0 ! fakesink"),
    ]);
    let pid = consumer.pid();
    let until = std::time::Instant::now() + T;
    while switches(pid, "fdlinksrc").1 == 0 {
        assert!(std::time::Instant::now() < until, "no fdlinksrc thread");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (wakeups, _) = wakeups_over(pid, Duration::from_secs(3));
    assert!(
        wakeups <= 3,
        "fdlinksrc's threads woke {wakeups} times in 3 s waiting for a producer"
    );
    // It still connects at once when the producer comes.
    let mut producer = Peer::spawn(&[
        "produce",
        &format!(
            "videotestsrc num-buffers=5 ! video/x-raw,format=NV12,width=64,height=48 ! fdlinksink socket-path={sock}"
        ),
    ]);
    consumer.wait_success(T, "consumer");
    producer.wait_success(T, "producer");
}
