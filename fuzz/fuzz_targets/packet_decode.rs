//! `Packet::decode` on any datagram with any number of received fds, as both ends call it on
//! what a peer sent.
//!
//! Input: byte 0 says how many fds arrived beside the datagram (bits 0-4, up to 31: more than
//! `MAX_FDS`) and, in bit 7, whether to overwrite the header's payload length with the true
//! one (so mutations of the payload are not all refused by the length check); the rest is the
//! datagram. The fds are duplicates of one /dev/null fd, owned as the transport owns them.
//!
//! Checks: no panic; a packet that decodes re-encodes to the same bytes and keeps exactly the
//! fds that came; every fd is closed once the packet or the error is dropped.
#![no_main]

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::LazyLock;

use fdlink::protocol::{HEADER_SIZE, Packet, PacketFds, decode_hello};
use libfuzzer_sys::fuzz_target;

static DEV_NULL: LazyLock<File> =
    LazyLock::new(|| File::open("/dev/null").expect("open /dev/null"));

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor table entry; a closed fd gives EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, datagram)) = data.split_first() else {
        return;
    };
    let mut bytes = datagram.to_vec();
    if control & 0x80 != 0 && bytes.len() >= HEADER_SIZE {
        let payload = (bytes.len() - HEADER_SIZE) as u32;
        bytes[4..8].copy_from_slice(&payload.to_le_bytes());
    }
    let n_fds = (control & 0x1f) as usize;
    let fds: PacketFds<OwnedFd> = (0..n_fds)
        .map(|_| OwnedFd::from(DEV_NULL.try_clone().expect("dup /dev/null")))
        .collect();
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();

    match Packet::decode(&bytes, fds) {
        Ok(packet) => {
            assert_eq!(packet.fds().len(), n_fds, "a decoded packet keeps its fds");
            let mut again = Vec::new();
            packet.encode(&mut again).expect("a decoded packet encodes");
            assert_eq!(
                again, bytes,
                "a decoded packet re-encodes to the same bytes"
            );
            let is_buffer = matches!(packet, Packet::Buffer(..));
            assert_eq!(packet.without_fds::<i32>().is_none(), is_buffer);
        }
        Err(e) => {
            // Every error has a message that names it.
            assert!(!e.to_string().is_empty());
        }
    }
    for fd in raw {
        assert!(!is_open(fd), "fd {fd} left open after decode");
    }
    let _ = decode_hello(&bytes);
});
