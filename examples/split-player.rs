//! A split player: the demuxer (parsing untrusted input) runs unprivileged in a child
//! process, a plain `gst-launch-1.0`; the decoders and sinks run here, in the player. Video
//! and audio cross on one fdlink each, socketpairs the player makes before it drops the
//! demuxer's privileges (the child's fds 3 and 4).
//!
//! ```text
//! cargo run --example split-player -- [--follow] [--headless] FILE.mkv|FILE.mp4
//! cargo run --example split-player -- [--follow] [--headless] --test-source
//! ```
//!
//! `--follow` sets the player's fdlinksrcs to `mode=follow`: the two processes then play,
//! pause and preroll as one pipeline. `--headless` renders to syncing fakesinks and prints how
//! late video and audio rendered against their timestamps, and how far apart. Run as root,
//! the demuxer becomes `nobody` (uid/gid 65534) with PR_SET_NO_NEW_PRIVS; otherwise it keeps
//! the caller's uid and says so.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_base::prelude::*;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

const NOBODY: u32 = 65534;

/// The plugin built beside this example (target/<profile>/examples/.. ).
fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// The demuxer's pipeline: the file's first video and audio streams to fds 3 and 4.
fn demuxer_pipeline(source: &str) -> Result<String, String> {
    if source == "--test-source" {
        return Ok("videotestsrc num-buffers=150 \
                   ! video/x-raw,format=NV12,width=640,height=360,framerate=30/1 ! fdlinksink fd=3 \
                   audiotestsrc num-buffers=240 ! audio/x-raw,rate=48000,channels=2 ! fdlinksink fd=4"
            .into());
    }
    let extension = Path::new(source)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let demuxer = match extension.as_deref() {
        Some("mkv" | "webm" | "mka") => "matroskademux",
        Some("mp4" | "m4v" | "mov") => "qtdemux",
        _ => {
            return Err(format!(
                "{source}: cannot tell the container from its name; use a .mkv, .webm, .mp4 or .mov file"
            ));
        }
    };
    if !Path::new(source).is_file() {
        return Err(format!("{source}: no such file"));
    }
    // Parsers stay with the decoders: the demuxer process only splits the container.
    Ok(format!(
        "filesrc location={source} ! {demuxer} name=d \
         d.video_0 ! queue ! fdlinksink fd=3 d.audio_0 ! queue ! fdlinksink fd=4"
    ))
}

/// `gst-launch-1.0 -q PIPELINE` with `video` as fd 3 and `audio` as fd 4, unprivileged.
fn launch_demuxer(pipeline: &str, video: &OwnedFd, audio: &OwnedFd, dir: &Path) -> Command {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.arg("-q")
        .args(pipeline.split_whitespace())
        .env("GST_PLUGIN_PATH_1_0", dir.join("plugins"))
        .env("GST_REGISTRY", dir.join("demuxer.reg"));
    let (video, audio) = (video.as_raw_fd(), audio.as_raw_fd());
    // SAFETY: between fork and exec the child only calls async-signal-safe functions (dup,
    // dup2, fcntl, prctl, setgroups, setresgid, setresuid) and touches no Rust state.
    unsafe {
        cmd.pre_exec(move || {
            use nix::libc;
            // Both ends move above 4 first, so neither dup2 overwrites the other's source.
            let v = libc::fcntl(video, libc::F_DUPFD, 10);
            let a = libc::fcntl(audio, libc::F_DUPFD, 10);
            if v < 0 || a < 0 || libc::dup2(v, 3) < 0 || libc::dup2(a, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::geteuid() == 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                    || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

/// How late one sink rendered each buffer: the clock's running time at the render minus the
/// buffer's running time (µs).
type Lateness = Arc<Mutex<Vec<i64>>>;

/// Records, for the fakesink `sink`, how late it renders each buffer (its handoff comes after
/// it waited for the clock).
fn measure(sink: &gst::Element) -> Lateness {
    let late = Lateness::default();
    let out = late.clone();
    sink.set_property("signal-handoffs", true);
    sink.connect("handoff", false, move |args| {
        let sink = args[0].get::<gst_base::BaseSink>().ok()?;
        let pts = args[1].get::<gst::Buffer>().ok()?.pts()?;
        let (clock, base) = (sink.clock()?, sink.base_time()?);
        let segment = sink.segment();
        let running = segment
            .downcast_ref::<gst::ClockTime>()?
            .to_running_time(pts)?;
        let now = clock.time().nseconds() as i64 - base.nseconds() as i64;
        out.lock()
            .unwrap()
            .push((now - running.nseconds() as i64) / 1000);
        None
    });
    late
}

fn median(v: &[i64]) -> Option<i64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Plays the player's half to EOS; Err names what failed.
fn play(video: OwnedFd, audio: OwnedFd, follow: bool, headless: bool) -> Result<(), String> {
    let mode = if follow { "follow" } else { "independent" };
    let (vsink, asink) = if headless {
        (
            "fakesink name=vsink sync=true",
            "fakesink name=asink sync=true",
        )
    } else {
        ("autovideosink", "autoaudiosink")
    };
    let description = format!(
        "fdlinksrc name=video fd={} mode={mode} ! decodebin ! videoconvert ! {vsink} \
         fdlinksrc name=audio fd={} mode={mode} ! decodebin ! audioconvert ! audioresample ! {asink}",
        video.as_raw_fd(),
        audio.as_raw_fd()
    );
    println!("player: {description}");
    let pipeline = gst::parse::launch(&description)
        .map_err(|e| format!("cannot build the player: {e}"))?
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let lateness = headless.then(|| {
        let by_name = |n| pipeline.by_name(n).expect("named sink");
        (measure(&by_name("vsink")), measure(&by_name("asink")))
    });
    // The fdlinksrcs duplicate the fds as they connect, in their streaming threads: ours stay
    // open until the pipeline stops.
    pipeline
        .set_state(gst::State::Paused)
        .map_err(|e| format!("cannot start the player: {e}"))?;
    if !follow {
        // A follower plays when the demuxer does.
        let _ = pipeline.set_state(gst::State::Playing);
    }
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let result = loop {
        let Some(msg) = bus.timed_pop(gst::ClockTime::NONE) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(e) => {
                break Err(format!(
                    "{} (from {})",
                    e.error(),
                    e.src().map_or_else(|| "?".into(), |s| s.path_string())
                ));
            }
            _ => {}
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    drop((video, audio));
    if let Some((video, audio)) = lateness {
        let (video, audio) = (video.lock().unwrap(), audio.lock().unwrap());
        if let (Some(v), Some(a)) = (median(&video), median(&audio)) {
            println!(
                "a/v: video renders {v} µs after its time, audio {a} µs: {} µs apart \
                 ({} video and {} audio buffers, medians)",
                v - a,
                video.len(),
                audio.len()
            );
        }
    }
    println!("player: {}", if result.is_ok() { "eos" } else { "failed" });
    result
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let follow = args.iter().any(|a| a == "--follow");
    let headless = args.iter().any(|a| a == "--headless");
    let Some(source) = args
        .iter()
        .find(|a| !matches!(a.as_str(), "--follow" | "--headless"))
    else {
        eprintln!("usage: split-player [--follow] [--headless] FILE.mkv|FILE.mp4|--test-source");
        std::process::exit(2);
    };
    let demux = demuxer_pipeline(source).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    gst::init().expect("GStreamer initializes");
    gstfdlink::plugin_register_static().expect("the fdlink plugin registers");

    // A directory the unprivileged child can read (the build tree may not be readable by
    // nobody), holding a copy of the plugin and the child's registry file.
    let dir = std::env::temp_dir().join(format!("fdlink-split-player-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("plugins")).expect("temp dir");
    std::fs::copy(
        plugin_dir().join("libgstfdlink.so"),
        dir.join("plugins/libgstfdlink.so"),
    )
    .expect("libgstfdlink.so beside this example: run `cargo build` first");
    for d in [&dir, &dir.join("plugins")] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
    }

    let pair = || {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    };
    let ((video_demux, video_play), (audio_demux, audio_play)) = (pair(), pair());
    let mut demuxer = launch_demuxer(&demux, &video_demux, &audio_demux, &dir)
        .spawn()
        .expect("start the demuxer");
    drop((video_demux, audio_demux));
    println!(
        "demuxer: pid {} uid {}: {demux}",
        demuxer.id(),
        uid_of(demuxer.id()).map_or("?".into(), |u| u.to_string())
    );
    let played = play(video_play, audio_play, follow, headless);
    let demuxed = demuxer.wait().expect("the demuxer runs");
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = &played {
        eprintln!("error: {e}");
    }
    println!("demuxer exit {demuxed}");
    std::process::exit(if demuxed.success() && played.is_ok() {
        0
    } else {
        1
    });
}
