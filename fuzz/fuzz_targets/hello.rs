//! The hello as each end takes it: a peer's first datagram, with any fds beside it, received
//! through the transport (`Connection::try_recv`, SCM_RIGHTS) and judged by
//! `endpoint::check_hello`, which answers a bad hello with an error packet.
//!
//! Input: byte 0 is how many fds the peer sends (bits 0-4, up to 31: more than `MAX_FDS`, so
//! the receiver's control buffer truncates) and our role (bit 7: consumer, else producer);
//! the rest is the datagram.
//!
//! Checks: no panic; every received fd is closed afterwards; a hello that passes is the other role's hello of our version and
//! re-encodes to the same bytes, and nothing is answered; a refused one is answered with at
//! most one error packet, which says what `HandshakeError::reason` says.
#![no_main]

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::LazyLock;

use fdlink::endpoint::{self, HandshakeError};
use fdlink::protocol::{self, MAX_PACKET_SIZE, Packet, Role, VERSION};
use fdlink::transport::{Connection, TransportError};
use libfuzzer_sys::fuzz_target;

struct Rig {
    /// The peer's end: the fuzzer writes the hello here and reads the answer.
    peer: Connection,
    /// Our end, as the hub or fdlinksrc holds it.
    ours: Connection,
    dev_null: File,
    /// The fd number the next open got after the previous input.
    lowest_free: RawFd,
}

static RIG: LazyLock<std::sync::Mutex<Rig>> = LazyLock::new(|| {
    let (peer, ours) = Connection::pair().expect("socketpair");
    let dev_null = File::open("/dev/null").expect("open /dev/null");
    let lowest_free = lowest_free_fd();
    std::sync::Mutex::new(Rig {
        peer,
        ours,
        dev_null,
        lowest_free,
    })
});

/// The fd number the next open gets.
fn lowest_free_fd() -> RawFd {
    // SAFETY: opens and closes a descriptor this function owns.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        assert!(fd >= 0, "open /dev/null");
        libc::close(fd);
        fd
    }
}

/// Panics if a received fd is still open: the fuzzer sends copies of /dev/null, so an fd from
/// `rig.lowest_free` up to the lowest free one now that is /dev/null was kept by the receiver.
/// Other fds (the fuzzer's own, opened on its threads) move the mark on.
fn check_no_fd_kept(rig: &mut Rig) {
    let now = lowest_free_fd();
    for fd in rig.lowest_free..now {
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}"));
        assert!(
            !target.is_ok_and(|t| t.as_os_str() == "/dev/null"),
            "fd {fd} is open: a received fd leaked"
        );
    }
    rig.lowest_free = rig.lowest_free.max(now);
}

/// sendmsg with `n_fds` copies of `fd` (the transport's own send takes at most MAX_FDS).
fn send_raw(sock: RawFd, bytes: &[u8], fd: RawFd, n_fds: usize) -> isize {
    let mut cmsg_buf = [0u64; 32];
    let iov = [std::io::IoSlice::new(bytes)];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut mhdr: libc::msghdr = unsafe { std::mem::zeroed() };
    mhdr.msg_iov = iov.as_ptr() as *mut libc::iovec;
    mhdr.msg_iovlen = 1;
    if n_fds > 0 {
        let payload = n_fds * std::mem::size_of::<RawFd>();
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(payload as u32) as usize,
                libc::CMSG_LEN(payload as u32) as usize,
            )
        };
        assert!(space <= std::mem::size_of_val(&cmsg_buf));
        mhdr.msg_control = cmsg_buf.as_mut_ptr().cast();
        mhdr.msg_controllen = space as _;
        // SAFETY: the control buffer holds `space` bytes, room for the header and `n_fds`
        // fds, and outlives the writes.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&mhdr);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = len as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for i in 0..n_fds {
                data.add(i).write_unaligned(fd);
            }
        }
    }
    // SAFETY: mhdr points at live buffers of the sizes it states; sendmsg only reads them.
    unsafe { libc::sendmsg(sock, &mhdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, datagram)) = data.split_first() else {
        return;
    };
    // A SEQPACKET datagram of no bytes reads as the end of the stream; and the receive
    // buffer holds MAX_PACKET_SIZE.
    if datagram.is_empty() || datagram.len() > MAX_PACKET_SIZE + 16 {
        return;
    }
    let n_fds = (control & 0x1f) as usize;
    let role = if control & 0x80 != 0 {
        Role::Consumer
    } else {
        Role::Producer
    };
    let mut rig = RIG.lock().unwrap();
    let sent = send_raw(
        rig.peer.as_fd().as_raw_fd(),
        datagram,
        rig.dev_null.as_raw_fd(),
        n_fds,
    );
    assert_eq!(sent, datagram.len() as isize, "sendmsg");

    let mut buf = vec![0u8; MAX_PACKET_SIZE];
    match rig.ours.try_recv(&mut buf) {
        Ok(got) => {
            let bytes = buf[..got.len].to_vec();
            let fd_count = got.fds.len();
            assert!(fd_count == n_fds, "received {fd_count} fds of {n_fds}");
            drop(got.fds);
            let checked = endpoint::check_hello(&rig.ours, role, &bytes, fd_count);
            let answer = rig.peer.try_recv(&mut buf);
            match checked {
                Ok(hello) => {
                    assert!(matches!(answer, Err(TransportError::WouldBlock)));
                    assert_eq!(hello.version, VERSION);
                    assert_ne!(hello.role, role);
                    assert_eq!(protocol::encode_hello(&hello).as_slice(), bytes.as_slice());
                }
                Err(e) => {
                    let told = match answer {
                        Ok(got) => {
                            let packet = Packet::decode(&buf[..got.len], got.fds)
                                .expect("the answer decodes");
                            let Packet::Error(msg) = packet else {
                                panic!("a bad hello is answered with an error packet");
                            };
                            assert_eq!(msg, e.reason());
                            true
                        }
                        Err(TransportError::WouldBlock) => false,
                        Err(other) => panic!("reading the answer: {other}"),
                    };
                    let answered = matches!(
                        e,
                        HandshakeError::WrongRole { .. }
                            | HandshakeError::Malformed(_)
                            | HandshakeError::FdsInHello
                            | HandshakeError::VersionMismatch { .. }
                    );
                    assert_eq!(told, answered, "answered {e}?");
                    assert!(matches!(
                        rig.peer.try_recv(&mut buf),
                        Err(TransportError::WouldBlock)
                    ));
                }
            }
        }
        // The kernel truncated the fds: every one that arrived is closed (checked below).
        Err(TransportError::FdsTruncated) => assert!(n_fds > protocol::MAX_FDS),
        Err(TransportError::Truncated) => assert!(datagram.len() > MAX_PACKET_SIZE),
        Err(e) => panic!("receiving the hello: {e}"),
    }
    check_no_fd_kept(&mut rig);
});
