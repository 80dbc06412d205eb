//! What a new user's first mistakes give: one error on the bus, naming the cause and what to do,
//! and no second, generic "state change failed" error after it. `fdlink-peer` prints each
//! error message of the bus as an `error:` line on stderr (after its own `error: cannot start
//! pipeline` line when the pipeline does not start), so each case counts those.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// Runs `fdlink-peer ARGS`, which must fail; returns the bus's error lines.
fn bus_errors(args: &[&str]) -> Vec<String> {
    let mut peer = Peer::spawn(args);
    let status = peer.wait(T);
    assert_eq!(
        status.code(),
        Some(1),
        "{args:?} should fail; stderr: {}",
        peer.errors()
    );
    peer.stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("error: ") && !l.starts_with("error: cannot start pipeline"))
        .cloned()
        .collect()
}

/// Exactly one error, containing each of `needles`.
fn expect_one_error(args: &[&str], needles: &[&str]) {
    let errors = bus_errors(args);
    assert_eq!(errors.len(), 1, "{args:?}: one error expected: {errors:#?}");
    for n in needles {
        assert!(
            errors[0].contains(n),
            "{args:?}: the error lacks {n:?}: {}",
            errors[0]
        );
    }
}

fn produce(sink: &str) -> Vec<String> {
    vec![
        "produce".into(),
        format!("videotestsrc num-buffers=3 ! {sink}"),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_producer_whose_socket_directory_is_missing_says_so() {
    let dir = TempDir::new("first-use-nodir");
    let missing = dir.0.join("missing");
    let sock = missing.join("link.sock");
    let a = produce(&format!("fdlinksink socket-path={}", sock.display()));
    expect_one_error(
        &args(&a),
        &[
            &format!("cannot create socket {}", sock.display()),
            &format!("directory {} does not exist", missing.display()),
            "create it or set socket-path",
        ],
    );
}

#[test]
fn a_producer_without_socket_path_says_what_to_set() {
    let a = produce("fdlinksink");
    expect_one_error(&args(&a), &["set socket-path", "or fd"]);
}

#[test]
fn a_consumer_without_socket_path_says_what_to_set() {
    expect_one_error(
        &["consume", "fdlinksrc ! fakesink"],
        &["set socket-path", "or fd"],
    );
}

#[test]
fn a_consumer_told_to_reconnect_an_inherited_socket_says_why_not() {
    expect_one_error(
        &["consume", "fdlinksrc fd=0 reconnect=true ! fakesink"],
        &["reconnect=true needs socket-path", "fd=0"],
    );
}

#[test]
fn a_producer_whose_socket_path_is_a_file_says_so() {
    let dir = TempDir::new("first-use-file");
    let sock = dir.socket();
    std::fs::write(&sock, b"not a socket").unwrap();
    let a = produce(&format!("fdlinksink socket-path={sock}"));
    expect_one_error(
        &args(&a),
        &[&sock, "is not a socket", "set socket-path to another path"],
    );
    assert!(
        std::path::Path::new(&sock).exists(),
        "the file is left alone"
    );
}

#[test]
fn a_second_producer_on_a_live_socket_says_so() {
    let dir = TempDir::new("first-use-inuse");
    let sock = dir.socket();
    let _live = fdlink::transport::Listener::bind(std::path::Path::new(&sock)).unwrap();
    let a = produce(&format!("fdlinksink socket-path={sock}"));
    expect_one_error(&args(&a), &[&sock, "already listens", "set socket-path"]);
}

#[test]
fn a_producer_with_a_socket_path_too_long_says_so() {
    let sock = format!("/tmp/{}.sock", "x".repeat(120));
    let a = produce(&format!("fdlinksink socket-path={sock}"));
    expect_one_error(&args(&a), &["too long", "at most 107 bytes", "shorter"]);
}

#[test]
fn a_consumer_on_an_fd_that_is_no_socket_says_so() {
    // fd 0 is stdin: /dev/null here.
    expect_one_error(
        &["consume", "fdlinksrc fd=0 ! fakesink"],
        &["fd 0", "SOCK_SEQPACKET"],
    );
}
