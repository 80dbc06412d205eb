//! A split player: the demuxer (parsing untrusted input) runs unprivileged in one process, the
//! decoder in another, joined by a socketpair the launcher makes before it drops the
//! demuxer's privileges. Each side is a plain `gst-launch-1.0` with `fd=3`.
//!
//! ```text
//! cargo run --example split-player -- FILE.mp4          # qtdemux ! h264parse | avdec_h264
//! cargo run --example split-player -- --test-source     # videotestsrc | fakesink
//! ```
//!
//! Run as root, the demuxer becomes `nobody` (uid/gid 65534) with PR_SET_NO_NEW_PRIVS;
//! otherwise it keeps the caller's uid and says so.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// `gst-launch-1.0 -q PIPELINE` with `socket` as fd 3, optionally as `nobody`.
fn launch(pipeline: &str, socket: &OwnedFd, unprivileged: bool, env_dir: &Path) -> Command {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.arg("-q")
        .args(pipeline.split_whitespace())
        .env("GST_PLUGIN_PATH_1_0", env_dir.join("plugins"))
        .env(
            "GST_REGISTRY",
            env_dir.join(if unprivileged {
                "demuxer.reg"
            } else {
                "decoder.reg"
            }),
        );
    let fd = socket.as_raw_fd();
    // SAFETY: between fork and exec the child only calls async-signal-safe functions (dup2,
    // prctl, setgroups, setresgid, setresuid) and touches no Rust state.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear the flag when the socket already is 3.
            let ok = if fd == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0) == 0
            } else {
                nix::libc::dup2(fd, 3) >= 0
            };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            if unprivileged {
                if nix::libc::prctl(nix::libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if nix::libc::geteuid() == 0
                    && (nix::libc::setgroups(0, std::ptr::null()) != 0
                        || nix::libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                        || nix::libc::setresuid(NOBODY, NOBODY, NOBODY) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
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

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: split-player FILE.mp4 | --test-source");
        std::process::exit(2);
    });
    let (demux, decode) = if arg == "--test-source" {
        (
            "videotestsrc num-buffers=90 ! video/x-raw,format=NV12,width=640,height=360 ! fdlinksink fd=3".to_string(),
            "fdlinksrc fd=3 ! fakesink".to_string(),
        )
    } else {
        (
            format!("filesrc location={arg} ! qtdemux ! h264parse ! fdlinksink fd=3"),
            "fdlinksrc fd=3 ! h264parse ! avdec_h264 ! videoconvert ! autovideosink".to_string(),
        )
    };

    // A directory both children can read (the build tree may not be readable by nobody),
    // holding a copy of the plugin and a registry file per child.
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

    let (demux_end, decode_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let mut demuxer = launch(&demux, &demux_end, true, &dir)
        .spawn()
        .expect("start the demuxer");
    let mut decoder = launch(&decode, &decode_end, false, &dir)
        .spawn()
        .expect("start the decoder");
    drop((demux_end, decode_end));
    println!(
        "demuxer pid {} uid {} ({demux})",
        demuxer.id(),
        uid_of(demuxer.id()).map_or("?".into(), |u| u.to_string())
    );
    println!(
        "decoder pid {} uid {} ({decode})",
        decoder.id(),
        uid_of(decoder.id()).map_or("?".into(), |u| u.to_string())
    );
    let d = decoder.wait().expect("decoder runs");
    let m = demuxer.wait().expect("demuxer runs");
    let _ = std::fs::remove_dir_all(&dir);
    println!("demuxer exit {m}, decoder exit {d}");
    std::process::exit(if m.success() && d.success() { 0 } else { 1 });
}
