//! The example split player (examples/split-player.rs): an unprivileged demuxer process and
//! the player's decoders, joined by two socketpairs (video, audio). It plays a file with audio
//! and video to EOS in both modes, with audio and video rendering within 5 ms of each other.

mod common;

use std::process::Command;

use common::*;

/// The bound on how far apart audio and video render (µs).
const MAX_APART_US: i64 = 5_000;
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn player() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let player = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples/split-player");
    assert!(
        player.exists(),
        "cargo test builds the examples: {player:?}"
    );
    player
}

/// Runs the player headless on `source` with `args`; its stdout, after asserting it ended
/// well: EOS, both processes exit 0, the demuxer unprivileged when we are root.
fn play(source: &str, args: &[&str]) -> String {
    let out = Command::new(player())
        .args(args)
        .arg("--headless")
        .arg(source)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("player: eos"), "{stdout}");
    assert!(stdout.contains("demuxer exit exit status: 0"), "{stdout}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { nix::libc::geteuid() } == 0 {
        assert!(stdout.contains("uid 65534:"), "{stdout}");
    }
    stdout
}

/// The `a/v:` line's video and audio lateness (µs).
fn av_lateness(stdout: &str) -> (i64, i64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("a/v:"))
        .unwrap_or_else(|| panic!("no a/v line: {stdout}"));
    let number_after = |word: &str| -> i64 {
        let rest = &line[line.find(word).unwrap() + word.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    (number_after("video renders "), number_after("audio "))
}

fn plays_a_file_in_sync(args: &[&str]) {
    // One run at a time: decoding on every core at once makes video late for want of CPU,
    // which says nothing about sync.
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("split-player");
    // The unprivileged demuxer must read the file.
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let media = av_mkv(&dir);
    let stdout = play(&media, args);
    let (video, audio) = av_lateness(&stdout);
    assert!(
        (video - audio).abs() <= MAX_APART_US,
        "video {video} µs late, audio {audio} µs: {stdout}"
    );
}

#[test]
fn plays_a_file_with_audio_and_video_in_sync() {
    plays_a_file_in_sync(&[]);
}

#[test]
fn plays_a_file_with_audio_and_video_in_sync_when_following() {
    plays_a_file_in_sync(&["--follow"]);
}

#[test]
fn plays_the_test_source() {
    play("--test-source", &[]);
}

#[test]
fn names_what_it_cannot_play() {
    let out = Command::new(player()).arg("clip.avi").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("use a .mkv, .webm, .mp4 or .mov file"),
        "{stderr}"
    );
}
