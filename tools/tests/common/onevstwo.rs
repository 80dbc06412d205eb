//! One process against two: a pipeline `A ! B` run whole, and the same pipeline split into a
//! producer `A ! fdlinksink` and a consumer `fdlinksrc ! B` in two `fdlink-peer` processes, at
//! default settings but `wait-for-connection=true` (so what is compared is what crosses).

use std::path::Path;
use std::time::Duration;

use super::{Peer, TempDir, field, init_gst, number_field};

/// How long each process of a case may run: the cases take seconds, a hang fails the test.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The final `stats` of the two processes of a split run.
pub struct SplitRun {
    pub producer: gst::Structure,
    pub consumer: gst::Structure,
}

/// Runs `pipeline` whole in one `fdlink-peer consume` process (it has no fdlink element, so
/// it just runs to EOS), and fails the test unless it ends well.
pub fn run_whole(pipeline: &str) {
    let mut p = Peer::spawn(&["consume", pipeline]);
    p.wait_success(RUN_TIMEOUT, &format!("one process `{pipeline}`"));
}

/// Runs `a ! fdlinksink` and `fdlinksrc ! b` as two processes over a socket in `dir`, the
/// consumer first (it waits for the producer), and returns their final stats.
pub fn run_split(dir: &TempDir, a: &str, b: &str) -> SplitRun {
    // The stats lines parse as GStreamer structures.
    init_gst();
    let sock = dir.socket();
    let mut consumer = Peer::spawn(&["consume", &format!("fdlinksrc socket-path={sock} ! {b}")]);
    let mut producer = Peer::spawn(&[
        "produce",
        &format!("{a} ! fdlinksink socket-path={sock} wait-for-connection=true"),
    ]);
    producer.wait_success(RUN_TIMEOUT, "producer");
    consumer.wait_success(RUN_TIMEOUT, "consumer");
    SplitRun {
        producer: producer
            .latest_stats()
            .expect("the producer prints its final stats line"),
        consumer: consumer
            .latest_stats()
            .expect("the consumer prints its final stats line"),
    }
}

/// Why a split run lost frames, from its stats: every frame the producer took in was sent to
/// the consumer (none skipped at `max-held`, none dropped from its queue, none sent before it
/// connected) and received (none dropped by the consumer's `leaky` inbox). Empty if none.
pub fn losses(run: &SplitRun) -> Vec<String> {
    let (p, c) = (&run.producer, &run.consumer);
    let mut why = Vec::new();
    for (name, n) in [
        ("producer frames-dropped", field(p, "frames-dropped")),
        (
            "producer frames-without-consumer",
            field(p, "frames-without-consumer"),
        ),
        ("consumer frames-dropped", field(c, "frames-dropped")),
    ] {
        if n != 0 {
            why.push(format!("{name}={n}"));
        }
    }
    let (taken, received) = (field(p, "frames-in"), field(c, "frames-received"));
    if taken != received {
        why.push(format!(
            "the producer took in {taken} frames, the consumer received {received}"
        ));
    }
    why
}

/// Why two files differ (sizes, first differing byte), or None if they are identical.
pub fn file_difference(whole: &Path, split: &Path) -> Option<String> {
    let read =
        |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    let (x, y) = (read(whole), read(split));
    if x == y {
        return None;
    }
    let first = x.iter().zip(&y).position(|(a, b)| a != b);
    Some(format!(
        "one process wrote {} bytes, the split pipeline {} bytes; first difference at byte {}",
        x.len(),
        y.len(),
        first.unwrap_or(x.len().min(y.len()))
    ))
}

/// Fails the test, with all it found, unless the split run lost nothing and `difference`
/// (what its output has that the whole pipeline's has not) is None.
pub fn assert_lossless(run: &SplitRun, difference: Option<String>) {
    let mut why = losses(run);
    why.extend(difference);
    assert!(
        why.is_empty(),
        "the split pipeline is not lossless: {}\nproducer stats: {}\nconsumer stats: {}",
        why.join("; "),
        run.producer,
        run.consumer
    );
}

/// Writes `len` bytes of a fixed pseudo-random stream (splitmix64): no block repeats, so a
/// lost, doubled or reordered block of any size changes the file.
pub fn write_nonrepeating(path: &Path, len: usize) {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len);
    std::fs::write(path, bytes).unwrap();
}

/// One buffer at a read-back's `check` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFrame {
    /// ns, -1 if none.
    pub pts: i64,
    pub size: u64,
    pub crc: String,
    /// DELTA_UNIT: not a keyframe.
    pub delta: bool,
}

/// What a reader pipeline (one with an element named `check`) sees at `check`, one entry per
/// buffer. Containers that write dates and random ids are compared by this, not by their bytes.
pub fn read_back(pipeline: &str) -> Vec<ReadFrame> {
    let mut p = Peer::spawn(&["consume", "--frames-log", pipeline]);
    p.wait_success(RUN_TIMEOUT, &format!("reader `{pipeline}`"));
    p.lines()
        .iter()
        .filter(|l| l.starts_with("frame "))
        .map(|l| ReadFrame {
            pts: number_field(l, "pts"),
            size: number_field(l, "size"),
            crc: l
                .split(' ')
                .find_map(|kv| kv.strip_prefix("crc="))
                .unwrap_or_else(|| panic!("no crc in {l}"))
                .to_string(),
            delta: number_field::<u8>(l, "delta") == 1,
        })
        .collect()
}

/// How two read-backs differ (frame counts, first differing frame), or None if every frame has
/// the same bytes and keyframe flag, and a pts as far from the first frame's within
/// `pts_tolerance`: the consumer's recording starts at its own running time, which a container
/// rounds in its own way.
pub fn frames_difference(
    whole: &[ReadFrame],
    split: &[ReadFrame],
    pts_tolerance: Duration,
) -> Option<String> {
    let tolerance = pts_tolerance.as_nanos() as i64;
    let relative = |frames: &[ReadFrame], i: usize| frames[i].pts - frames[0].pts;
    let first = (0..whole.len().min(split.len())).find(|&i| {
        let (a, b) = (&whole[i], &split[i]);
        (a.size, &a.crc, a.delta) != (b.size, &b.crc, b.delta)
            || (relative(whole, i) - relative(split, i)).abs() > tolerance
    });
    if first.is_none() && whole.len() == split.len() {
        return None;
    }
    let first = first.unwrap_or(whole.len().min(split.len()));
    Some(format!(
        "one process read back {} frames, the split pipeline {}; first difference at frame \
         {first}: one process {:?}, split {:?} (pts of frame 0: {:?}, {:?})",
        whole.len(),
        split.len(),
        whole.get(first),
        split.get(first),
        whole.first().map(|f| f.pts),
        split.first().map(|f| f.pts)
    ))
}
