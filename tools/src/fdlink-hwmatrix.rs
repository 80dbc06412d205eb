//! `fdlink-hwmatrix`: which decoders and dmabuf sources exist on this machine, and for each
//! one whether its frames cross an fdlink zero-copy and intact.
//!
//! For every row it runs `source -> fdlinksink` in one process and `fdlinksrc -> fakesink` in
//! another (both `fdlink-peer`), and checks: frames arrived, every frame was a dmabuf on both
//! sides with the same kernel object (dev, inode, exporter), CRCs equal on both sides and equal
//! to the same source run in one process, VideoMeta equal, zero bytes copied, no fd left open
//! in either process. It prints one line per row and can write docs/hardware-matrix.md.
//!
//! ```text
//! fdlink-hwmatrix [--write FILE] [--require ROW,ROW,...] [--only ROW,...]
//! ```
//! Exit status 1 when a row fails, or when a `--require`d row did not run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FRAMES: u32 = 30;
const TIMEOUT: Duration = Duration::from_secs(120);

/// One row of the matrix.
struct Row {
    name: &'static str,
    /// The consumer holds frames in a queue and takes 40 ms each, checking each frame did not
    /// change while it held it: the decoder must neither deadlock nor reuse a held surface.
    slow_consumer: bool,
    /// The message a decoder logs when its driver ends the stream before draining every frame
    /// (vicodec: "eos sent too early"). Either run may then miss frames (vicodec under TCG
    /// misses some of the first ones): when the shorter run logged it, the missing frames are
    /// the driver's loss, not the link's, and the frames both runs have must still match.
    eos_bug: Option<&'static str>,
    /// Elements that must exist, and device nodes (resolved below) that must too.
    needs_elements: &'static [&'static str],
    source: Source,
}

enum Source {
    /// `fdlink-peer produce-dmabuf --source S --layout L`.
    Dmabuf {
        source: &'static str,
        layout: &'static str,
    },
    /// A gst-launch fragment ending before the sink; `{dev}` is the device found by `device`.
    Pipeline {
        fragment: &'static str,
        device: Device,
        fixture: Option<&'static str>,
    },
    /// Hardware this harness has no fixture or device for here.
    External,
}

#[derive(Clone, Copy)]
enum Device {
    None,
    /// A vivid capture node whose vb2 allocator is `vmalloc` or `dma-contig`.
    Vivid(&'static str),
}

fn rows() -> Vec<Row> {
    use Source::*;
    let pipe = |fragment, fixture| Pipeline {
        fragment,
        device: Device::None,
        fixture,
    };
    vec![
        Row {
            name: "udmabuf",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &[],
            source: Dmabuf {
                source: "udmabuf",
                layout: "offsets",
            },
        },
        Row {
            name: "dma-heap",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &[],
            source: Dmabuf {
                source: "dma-heap",
                layout: "planes",
            },
        },
        Row {
            name: "vgem",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &[],
            source: Dmabuf {
                source: "vgem",
                layout: "single",
            },
        },
        Row {
            name: "v4l2src-vivid-vmalloc",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["v4l2src"],
            source: Pipeline {
                fragment: "v4l2src device={dev} io-mode=dmabuf num-buffers=30 ! video/x-raw,format=NV12,width=640,height=480",
                device: Device::Vivid("vmalloc"),
                fixture: None,
            },
        },
        Row {
            name: "v4l2src-vivid-dma-contig",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["v4l2src"],
            source: Pipeline {
                fragment: "v4l2src device={dev} io-mode=dmabuf num-buffers=30 ! video/x-raw,format=NV12,width=640,height=480",
                device: Device::Vivid("dma-contig"),
                fixture: None,
            },
        },
        Row {
            name: "v4l2fwhtdec",
            slow_consumer: false,
            eos_bug: Some("left undrained after CMD_STOP"),
            needs_elements: &["v4l2fwhtdec", "gdpdepay"],
            source: pipe(
                "filesrc location={fixture} ! gdpdepay ! v4l2fwhtdec capture-io-mode=dmabuf ! video/x-raw,format=NV12",
                Some("fwht-640x360.gdp"),
            ),
        },
        Row {
            name: "v4l2slh264dec",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["v4l2slh264dec"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! v4l2slh264dec",
                Some("h264-320x240.h264"),
            ),
        },
        Row {
            name: "v4l2slh264dec-slow-consumer",
            slow_consumer: true,
            eos_bug: None,
            needs_elements: &["v4l2slh264dec"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! v4l2slh264dec",
                Some("h264-320x240.h264"),
            ),
        },
        Row {
            name: "v4l2slvp8dec",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["v4l2slvp8dec"],
            source: pipe(
                "filesrc location={fixture} ! matroskademux ! v4l2slvp8dec",
                Some("vp8-320x240.webm"),
            ),
        },
        Row {
            name: "v4l2slh265dec",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["v4l2slh265dec"],
            source: pipe(
                "filesrc location={fixture} ! h265parse ! v4l2slh265dec",
                Some("h265-320x240.h265"),
            ),
        },
        Row {
            name: "v4l2slvp9dec",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["v4l2slvp9dec"],
            source: pipe(
                "filesrc location={fixture} ! matroskademux ! v4l2slvp9dec",
                Some("vp9-320x240.webm"),
            ),
        },
        Row {
            name: "v4l2h264dec",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["v4l2h264dec"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! v4l2h264dec capture-io-mode=dmabuf",
                Some("h264-320x240.h264"),
            ),
        },
        Row {
            name: "v4l2h265dec",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["v4l2h265dec"],
            source: External,
        },
        Row {
            name: "vah264dec",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["vah264dec"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! vah264dec ! video/x-raw(memory:DMABuf)",
                Some("h264-320x240.h264"),
            ),
        },
        Row {
            name: "vah265dec",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["vah265dec"],
            source: External,
        },
        Row {
            name: "vavp9dec",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["vavp9dec"],
            source: External,
        },
        Row {
            name: "vaav1dec",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["vaav1dec"],
            source: External,
        },
        Row {
            name: "vaapih264dec",
            slow_consumer: false,
            eos_bug: None,
            needs_elements: &["vaapih264dec"],
            source: pipe(
                "filesrc location={fixture} ! h264parse ! vaapih264dec",
                Some("h264-320x240.h264"),
            ),
        },
    ]
}

enum Outcome {
    Pass(String),
    Fail(String),
    NotRun(String),
}

fn peer_path() -> PathBuf {
    std::env::current_exe()
        .expect("own path")
        .with_file_name("fdlink-peer")
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// A running peer whose stdout lines are collected; stderr goes to a string too.
struct Proc {
    child: Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    err: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn collect(
    stream: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    lines
}

fn spawn(args: &[String]) -> Proc {
    spawn_cmd(Command::new(peer_path()).args(args))
}

/// The consumer under `strace -e ioctl`, so the matrix can count DMA_BUF_IOCTL_SYNC calls
/// around its CPU reads (GstDmaBufAllocator's map is supposed to make them: verified, not
/// assumed). Without strace, a plain spawn.
fn spawn_traced(args: &[String], trace: &Path) -> Proc {
    if Command::new("strace").arg("-V").output().is_err() {
        return spawn(args);
    }
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "--seccomp-bpf", "-qq", "-e", "trace=ioctl", "-o"])
        .arg(trace)
        .arg(peer_path())
        .args(args);
    spawn_cmd(&mut cmd)
}

/// DMA_BUF_IOCTL_SYNC calls in an strace log (strace 6.1 names the ioctl but does not decode
/// its flags: a map makes one, SYNC_START, and its unmap another, SYNC_END).
fn dmabuf_syncs(trace: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(trace).ok()?;
    Some(
        text.lines()
            .filter(|l| l.contains("DMA_BUF_IOCTL_SYNC") && l.ends_with("= 0"))
            .count(),
    )
}

fn spawn_cmd(cmd: &mut Command) -> Proc {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fdlink-peer");
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    Proc { child, out, err }
}

impl Proc {
    fn finish(mut self) -> (bool, Vec<String>, String) {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        let out = self.out.lock().unwrap().clone();
        let mut err = self.err.lock().unwrap().join("\n");
        if status.is_none() {
            err.push_str(&format!("\n(timed out after {TIMEOUT:?})"));
        }
        (status.is_some_and(|s| s.success()), out, err)
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Frame {
    offset: u64,
    crc: String,
    files: Vec<(String, String)>,
    vmeta: String,
}

fn frames(lines: &[String]) -> Vec<Frame> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("frame "))
        .map(|rest| {
            let mut f = Frame {
                offset: u64::MAX,
                crc: String::new(),
                files: Vec::new(),
                vmeta: String::new(),
            };
            for kv in rest.split(' ') {
                match kv.split_once('=') {
                    Some(("offset", v)) => f.offset = v.parse().unwrap_or(u64::MAX),
                    Some(("crc", v)) => f.crc = v.into(),
                    Some(("vmeta", v)) => f.vmeta = v.into(),
                    Some(("files", v)) if v != "-" => {
                        f.files = v
                            .split(',')
                            .map(|x| {
                                let (id, exp) = x.rsplit_once(':').unwrap_or((x, "?"));
                                (id.to_string(), exp.to_string())
                            })
                            .collect()
                    }
                    _ => {}
                }
            }
            f
        })
        .collect()
}

fn stat(lines: &[String], field: &str) -> Option<u64> {
    let s = lines.iter().rev().find_map(|l| l.strip_prefix("stats "))?;
    let key = format!("{field}=(");
    let at = s.find(&key)? + key.len();
    let rest = &s[at..];
    let v = rest.split(')').nth(1)?.split([',', ';']).next()?;
    v.trim().parse().ok()
}

/// The `leaked-fds` entries, with inode numbers of sockets and pipes dropped so two runs
/// compare.
fn leaked(lines: &[String]) -> Option<Vec<String>> {
    let line = lines.iter().find_map(|l| l.strip_prefix("leaked-fds"))?;
    Some(
        line.split_whitespace()
            .map(|t| match t.split_once(":[") {
                Some((kind @ ("socket" | "pipe"), _)) => kind.to_string(),
                _ => t.to_string(),
            })
            .collect(),
    )
}

/// For a driver that may end the stream before it returned every frame (`marker` on stderr;
/// vicodec under TCG leaves some of the first frames undrained): either run, through the link
/// or in one process, can miss frames, a different number each time. The runs agree when the
/// shorter one printed the marker, holds at least half the other's frames, and is the other's
/// frames in order with some left out.
fn early_eos_note(
    marker: &str,
    (received, received_err): (&[String], &str),
    (reference, reference_err): (&[String], &str),
) -> Option<String> {
    let (short, short_err, long) = if received.len() <= reference.len() {
        (received, received_err, reference)
    } else {
        (reference, reference_err, received)
    };
    let agree =
        short_err.contains(marker) && short.len() * 2 >= long.len() && is_subsequence(short, long);
    agree.then(|| {
        format!(
            ", CRCs equal to a one-process run's but for {} frames the driver never returned ({} through the link, {} in one process; the shorter run printed \"{marker}\")",
            long.len() - short.len(),
            received.len(),
            reference.len(),
        )
    })
}

/// Whether `a` is `b` with some entries left out, order kept.
fn is_subsequence(a: &[String], b: &[String]) -> bool {
    let mut rest = b.iter();
    a.iter().all(|x| rest.any(|y| y == x))
}

/// `a` without one occurrence of each entry of `b`.
fn minus(mut a: Vec<String>, b: &[String]) -> Vec<String> {
    for x in b {
        if let Some(i) = a.iter().position(|y| y == x) {
            a.remove(i);
        }
    }
    a
}

/// The vivid capture node using vb2 allocator `kind`: vivid is loaded with two instances,
/// allocators=0,1 (vmalloc, dma-contig); node N belongs to instance N in load order.
fn vivid_node(kind: &str) -> Option<String> {
    let mut nodes: Vec<(u32, String)> = std::fs::read_dir("/sys/class/video4linux")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let num: u32 = name.strip_prefix("video")?.parse().ok()?;
            let card = std::fs::read_to_string(e.path().join("name")).ok()?;
            // vivid names its capture nodes "vivid-00-vid-cap", "vivid-01-vid-cap", ...
            card.contains("vid-cap")
                .then_some((num, card.trim().to_string()))
        })
        .collect();
    nodes.sort();
    let want = if kind == "vmalloc" {
        "vivid-000"
    } else {
        "vivid-001"
    };
    nodes
        .into_iter()
        .find(|(_, card)| card.starts_with(want))
        .map(|(n, _)| format!("/dev/video{n}"))
}

fn element_exists(name: &str) -> bool {
    Command::new("gst-inspect-1.0")
        .args(["--exists", name])
        .status()
        .is_ok_and(|s| s.success())
}

fn run_row(row: &Row, sock_dir: &Path) -> Outcome {
    if let Some(missing) = row.needs_elements.iter().find(|e| !element_exists(e)) {
        return Outcome::NotRun(format!("no device ({missing} not registered)"));
    }
    let sock = sock_dir.join(format!("{}.sock", row.name));
    let sock = sock.to_str().unwrap().to_string();
    let consumer_args = if row.slow_consumer {
        vec![
            "consume".to_string(),
            "--frames-log".into(),
            "--slow-ms".into(),
            "40".into(),
            format!(
                "fdlinksrc socket-path={sock} timeout=60000 ! queue max-size-buffers=6 ! fakesink name=check"
            ),
        ]
    } else {
        vec![
            "consume".to_string(),
            "--frames-log".into(),
            format!("fdlinksrc socket-path={sock} timeout=60000 ! fakesink"),
        ]
    };
    let live = matches!(
        row.source,
        Source::Pipeline {
            device: Device::Vivid(_),
            ..
        }
    );
    let (producer_args, reference_args) = match &row.source {
        Source::External => {
            return Outcome::NotRun("no device and no fixture for it here".into());
        }
        Source::Dmabuf { source, layout } => {
            let dev = match *source {
                "udmabuf" => "/dev/udmabuf",
                "dma-heap" => "/dev/dma_heap/system",
                _ => "/dev/dri",
            };
            if !Path::new(dev).exists() {
                return Outcome::NotRun(format!("no device ({dev} missing)"));
            }
            let args: Vec<String> = [
                "produce-dmabuf",
                "--frames-log",
                "--source",
                source,
                "--layout",
                layout,
                "--socket",
                &sock,
                "--frames",
                &FRAMES.to_string(),
                "--pool-max",
                "4",
                "--size",
                "320x240",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            (args, None)
        }
        Source::Pipeline {
            fragment,
            device,
            fixture,
        } => {
            let mut fragment = fragment.to_string();
            if let Device::Vivid(kind) = device {
                match vivid_node(kind) {
                    Some(dev) => fragment = fragment.replace("{dev}", &dev),
                    None => return Outcome::NotRun(format!("no device (no vivid {kind} node)")),
                }
            }
            if let Some(f) = fixture {
                let path = fixtures_dir().join(f);
                if !path.exists() {
                    return Outcome::NotRun(format!("fixture {f} missing"));
                }
                fragment = fragment.replace("{fixture}", path.to_str().unwrap());
            }
            let producer = vec![
                "produce".to_string(),
                "--frames-log".into(),
                format!(
                    "{fragment} ! fdlinksink socket-path={sock} wait-for-connection=true sync=false"
                ),
            ];
            let reference = vec![
                "produce".to_string(),
                "--frames-log".into(),
                format!("{fragment} ! fakesink name=check"),
            ];
            (producer, Some(reference))
        }
    };

    // The source alone first: a decoder that fails without fdlink is not fdlink's failure.
    let reference = reference_args.map(|args| spawn(&args).finish());
    if let Some((false, r_out, r_err)) = &reference {
        let why = r_err
            .lines()
            .find(|l| l.starts_with("error"))
            .map(str::to_string)
            .unwrap_or_else(|| {
                if r_out.iter().any(|l| l.starts_with("frame ")) {
                    "it crashed after decoding some frames".into()
                } else {
                    "it crashed before decoding a frame".into()
                }
            });
        return Outcome::NotRun(format!(
            "the source fails on its own, without fdlink: {why}"
        ));
    }
    let trace = sock_dir.join(format!("{}.strace", row.name));
    // Tracing slows the consumer, which makes a live source skip frames for it: live rows run
    // untraced (the sync check is made on every other row).
    let consumer = if live {
        spawn(&consumer_args)
    } else {
        spawn_traced(&consumer_args, &trace)
    };
    let producer = spawn(&producer_args);
    let (p_ok, p_out, p_err) = producer.finish();
    let (c_ok, c_out, c_err) = consumer.finish();
    if !p_ok || !c_ok {
        let first = |e: &str| {
            e.lines()
                .find(|l| l.starts_with("error"))
                .unwrap_or(e)
                .to_string()
        };
        return Outcome::Fail(format!(
            "producer ok={p_ok} consumer ok={c_ok}: {} {}",
            first(&p_err),
            first(&c_err)
        ));
    }
    let sent = frames(&p_out);
    let got = frames(&c_out);
    let mut problems = Vec::new();
    if let Some(l) = c_out.iter().find(|l| l.starts_with("overwritten")) {
        problems.push(format!("a frame changed while the consumer held it: {l}"));
    }
    if got.is_empty() {
        problems.push("no frames arrived".to_string());
    }
    // A live source skips frames for a consumer at max-held (the VM's emulated CPU makes the
    // consumer slow); anything else must not lose one.
    let enough = if live { sent.len() * 2 / 3 } else { sent.len() };
    if got.len() < enough {
        problems.push(format!(
            "{} frames sent, {} received",
            sent.len(),
            got.len()
        ));
    }
    let exporters: std::collections::BTreeSet<String> = got
        .iter()
        .flat_map(|f| f.files.iter().map(|(_, e)| e.clone()))
        .collect();
    if got
        .iter()
        .any(|f| f.files.is_empty() || f.files.iter().any(|(_, e)| e == "file"))
    {
        problems.push("a received frame is not a dmabuf".into());
    }
    // Frames are matched by buffer offset (frame number), so a skipped frame shifts nothing,
    // walking the sent frames in stream order: v4l2src under load gives two frames the same
    // offset (vivid's sequence number repeats), and the link keeps the order. Decoders leave
    // the offset unset and lose no frame: matched in order then.
    let numbered = sent.iter().chain(&got).all(|f| f.offset != u64::MAX);
    let mut unmatched = sent.iter();
    for (i, c) in got.iter().enumerate() {
        let p = if numbered {
            unmatched.find(|f| f.offset == c.offset)
        } else {
            sent.get(i)
        };
        let Some(p) = p else {
            problems.push(format!("frame {} arrived but was never sent", c.offset));
            break;
        };
        if p.files != c.files {
            // What tells a link fault from an ambiguous match: how often the producer logged
            // this offset, and under which offsets it logged the received kernel objects.
            let same_offset = sent.iter().filter(|f| f.offset == c.offset).count();
            let logged_as: Vec<u64> = sent
                .iter()
                .filter(|f| f.files == c.files)
                .map(|f| f.offset)
                .collect();
            problems.push(format!(
                "frame {}: different kernel objects {:?} vs {:?} (the producer logged offset {} {same_offset} times, and the received objects under offsets {logged_as:?})",
                c.offset, p.files, c.files, c.offset
            ));
            break;
        }
        if p.crc != c.crc {
            problems.push(format!(
                "frame {}: crc {} sent, {} received",
                c.offset, p.crc, c.crc
            ));
            break;
        }
        if p.vmeta != c.vmeta {
            problems.push(format!(
                "frame {}: video meta {} sent, {} received",
                c.offset, p.vmeta, c.vmeta
            ));
            break;
        }
    }
    let mut reference_note = String::new();
    let mut reference_leaks = Vec::new();
    if let Some((r_ok, r_out, r_err)) = reference {
        reference_leaks = leaked(&r_out).unwrap_or_default();
        let reference: Vec<String> = frames(&r_out).into_iter().map(|f| f.crc).collect();
        let received: Vec<String> = got.iter().map(|f| f.crc.clone()).collect();
        if !r_ok {
            problems.push("the one-process reference run failed".into());
        } else if live {
            // A camera's frames differ run to run: only both sides of the link are compared.
        } else if reference == received {
            reference_note = ", CRCs equal to a one-process run".into();
        } else if let Some(note) = row
            .eos_bug
            .and_then(|marker| early_eos_note(marker, (&received, &p_err), (&reference, &r_err)))
        {
            reference_note = note;
        } else {
            let first_difference = reference
                .iter()
                .zip(&received)
                .position(|(a, b)| a != b)
                .map_or_else(
                    || "none in the common part".into(),
                    |i| format!("frame {i}"),
                );
            let marker = |err: &str| row.eos_bug.is_some_and(|m| err.contains(m));
            problems.push(format!(
                "CRCs differ from the same source in one process ({} vs {} frames; first difference: {first_difference}; early-EOS warning printed by the link's producer: {}, by the one-process run: {})",
                reference.len(),
                received.len(),
                marker(&p_err),
                marker(&r_err)
            ));
        }
    }
    // Each received memory is mapped once for its CRC: each map must be bracketed by
    // DMA_BUF_IOCTL_SYNC(READ|START) and (READ|END).
    let mut sync_note = String::new();
    if let Some(syncs) = dmabuf_syncs(&trace) {
        let memories: usize = got.iter().map(|f| f.files.len()).sum();
        if syncs < 2 * memories {
            problems.push(format!(
                "consumer CPU reads of {memories} dmabuf mappings made only {syncs} successful DMA_BUF_IOCTL_SYNC calls (need 2 each)"
            ));
        } else {
            sync_note = format!(
                ", CPU reads bracketed by DMA_BUF_IOCTL_SYNC ({syncs} calls for {memories} mappings)"
            );
        }
    }
    if stat(&p_out, "frames-copied") != Some(0) || stat(&p_out, "bytes-copied") != Some(0) {
        problems.push(format!(
            "producer copied {:?} frames",
            stat(&p_out, "frames-copied")
        ));
    }
    // fds still open at exit beyond what the same source leaves without fdlink (GStreamer's
    // v4l2src keeps its device open after NULL, with or without fdlink).
    for (who, out, baseline) in [
        ("producer", &p_out, reference_leaks.as_slice()),
        ("consumer", &c_out, &[][..]),
    ] {
        match leaked(out) {
            Some(l) => {
                let extra = minus(l, baseline);
                if !extra.is_empty() {
                    problems.push(format!("{who} left fds open: {}", extra.join(" ")));
                }
            }
            None => problems.push(format!("{who} printed no fd report")),
        }
    }
    if row.slow_consumer && problems.is_empty() {
        reference_note.push_str(", a consumer holding frames 40 ms each never saw one change");
    }
    if problems.is_empty() {
        Outcome::Pass(format!(
            "{}/{} frames, all dmabuf ({}), same kernel objects, 0 bytes copied{reference_note}{sync_note}, no fd left",
            got.len(),
            sent.len(),
            exporters.into_iter().collect::<Vec<_>>().join("+")
        ))
    } else {
        Outcome::Fail(problems.join("; "))
    }
}

fn gst_version() -> String {
    Command::new("gst-inspect-1.0")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("GStreamer ").map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut write = None;
    let mut require: Vec<String> = Vec::new();
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let list = |v: Option<&String>| -> Vec<String> {
            v.map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        };
        match a.as_str() {
            "--write" => write = it.next().cloned(),
            "--require" => require = list(it.next()),
            "--only" => only = Some(list(it.next())),
            _ => {
                eprintln!(
                    "usage: fdlink-hwmatrix [--write FILE] [--require ROW,...] [--only ROW,...]"
                );
                std::process::exit(2);
            }
        }
    }
    let gst = gst_version();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let sock_dir = std::env::temp_dir().join(format!("fdlink-hwmatrix-{}", std::process::id()));
    std::fs::create_dir_all(&sock_dir).expect("temp dir");
    let mut results: BTreeMap<usize, (&'static str, Outcome)> = BTreeMap::new();
    for (i, row) in rows().iter().enumerate() {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == row.name))
        {
            continue;
        }
        let started = Instant::now();
        let mut outcome = run_row(row, &sock_dir);
        // Every row gets a second attempt (the emulated VM is noisy), a driver with a known
        // EOS bug a third; the row keeps what failed before in its detail, nothing is hidden.
        let attempts = if row.eos_bug.is_some() { 3 } else { 2 };
        let mut earlier = Vec::new();
        while earlier.len() + 1 < attempts {
            let Outcome::Fail(why) = &outcome else { break };
            earlier.push(why.clone());
            outcome = run_row(row, &sock_dir);
        }
        if !earlier.is_empty() {
            let note = format!(
                " [attempt {} of {attempts}; before: {}]",
                earlier.len() + 1,
                earlier.join("; ")
            );
            outcome = match outcome {
                Outcome::Pass(t) => Outcome::Pass(t + &note),
                Outcome::Fail(t) => Outcome::Fail(t + &note),
                other => other,
            };
        }
        let (tag, text) = match &outcome {
            Outcome::Pass(t) => ("pass", t),
            Outcome::Fail(t) => ("FAIL", t),
            Outcome::NotRun(t) => ("not run", t),
        };
        println!(
            "{:<26} {:<8} {text} ({:.1} s)",
            row.name,
            tag,
            started.elapsed().as_secs_f64()
        );
        results.insert(i, (row.name, outcome));
    }
    let _ = std::fs::remove_dir_all(&sock_dir);

    let mut failed = false;
    for (name, outcome) in results.values() {
        match outcome {
            Outcome::Fail(_) => failed = true,
            Outcome::NotRun(why) if require.iter().any(|r| r == name) => {
                eprintln!("required row {name} did not run: {why}");
                failed = true;
            }
            _ => {}
        }
    }
    for r in &require {
        if !results.values().any(|(n, _)| n == r) {
            eprintln!("required row {r} is not a row of the matrix");
            failed = true;
        }
    }
    if let Some(path) = write {
        let mut md = String::new();
        md.push_str("# Hardware matrix\n\n");
        md.push_str(
            "Generated by `fdlink-hwmatrix` (tools/src/fdlink-hwmatrix.rs); do not edit by hand.\n\n",
        );
        md.push_str(&format!(
            "Machine: kernel {kernel}, GStreamer {gst}, {}.\n\n",
            if std::env::var_os("FDLINK_IN_VM").is_some() {
                "the CI test VM (qemu TCG, virtual V4L2 and dmabuf drivers)"
            } else {
                "this machine"
            }
        ));
        md.push_str("Each row: the source's frames through `fdlinksink` in one process and `fdlinksrc` in another; passes when every frame (from a live source at least two thirds: it skips frames for a consumer at `max-held`, and the VM's emulated CPU makes consumers slow) arrived as a dmabuf wrapping the same kernel object, with equal CRCs and video meta on both sides (and equal to a one-process run of the same source), zero bytes copied and no fd left open.\n\n");
        md.push_str("| row | GStreamer | result | detail |\n|---|---|---|---|\n");
        for (name, outcome) in results.values() {
            let (tag, text) = match outcome {
                Outcome::Pass(t) => ("pass", t.as_str()),
                Outcome::Fail(t) => ("**fail**", t.as_str()),
                Outcome::NotRun(t) => ("not run", t.as_str()),
            };
            md.push_str(&format!(
                "| {name} | {gst} | {tag} | {} |\n",
                text.replace('|', "/")
            ));
        }
        md.push_str(include_str!("matrix-footer.md"));
        std::fs::write(&path, md).expect("write matrix");
        println!("wrote {path}");
    }
    let count = |f: fn(&Outcome) -> bool| results.values().filter(|(_, o)| f(o)).count();
    println!(
        "hwmatrix: {} passed, {} failed, {} skipped",
        count(|o| matches!(o, Outcome::Pass(_))),
        count(|o| matches!(o, Outcome::Fail(_))),
        count(|o| matches!(o, Outcome::NotRun(_)))
    );
    std::process::exit(if failed { 1 } else { 0 });
}

#[cfg(test)]
mod tests {
    use super::early_eos_note;

    const MARKER: &str = "left undrained after CMD_STOP";

    fn crcs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:08x}")).collect()
    }

    #[test]
    fn early_eos_accepts_either_run_missing_frames() {
        let warned = format!("v4l2fwhtdec0: 2 frames 0-1 {MARKER}");
        // The CI failure of 2026-11-21: the one-process run missed more of the first frames
        // than the linked one.
        let note = early_eos_note(MARKER, (&crcs(28), ""), (&crcs(28)[2..], &warned));
        assert!(
            note.unwrap()
                .contains("but for 2 frames the driver never returned (28 through")
        );
        let note = early_eos_note(MARKER, (&crcs(27), &warned), (&crcs(28), ""));
        assert!(note.unwrap().contains("but for 1 frames"));
    }

    #[test]
    fn early_eos_refuses_what_the_driver_bug_does_not_explain() {
        let warned = format!("{MARKER}\n");
        // The shorter run did not print the marker.
        assert!(early_eos_note(MARKER, (&crcs(28), &warned), (&crcs(26), "")).is_none());
        // A frame differs.
        let mut changed = crcs(26);
        changed[3] = "ffffffff".into();
        assert!(early_eos_note(MARKER, (&crcs(28), ""), (&changed, &warned)).is_none());
        // Frames out of order.
        let mut swapped = crcs(27);
        swapped.swap(4, 5);
        assert!(early_eos_note(MARKER, (&swapped, &warned), (&crcs(28), "")).is_none());
        // Fewer than half the frames.
        assert!(early_eos_note(MARKER, (&crcs(10), &warned), (&crcs(28), "")).is_none());
    }
}
