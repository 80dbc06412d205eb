//! The raw baseline through io_uring instead of sendmsg/recvmsg: the same datagrams and fds
//! on the same sockets, but each side submits all its messages of one step in one
//! `io_uring_enter` (the producer: the frame to every consumer and the wait for every release;
//! the consumer: the release of one frame and the receive of the next). This is the most an
//! io_uring transport could save at the limit, measured beside the plain syscalls.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{IoUring, opcode, squeue, types};

/// Room for the SCM_RIGHTS of one received packet (fdlink sends at most MAX_FDS fds).
const CONTROL_BYTES: usize = 512;

/// One sendmsg or recvmsg: the msghdr and everything it points at. Its pointers are set as
/// it is filled in, and its owner neither moves nor reuses it until the completion.
struct Message {
    hdr: libc::msghdr,
    iov: libc::iovec,
    /// u64 words: cmsg headers need 8-byte alignment.
    control: [u64; CONTROL_BYTES / 8],
}

impl Message {
    fn new() -> Message {
        // SAFETY: msghdr and iovec are plain C structs for which all-zero is a valid value
        // (null pointers, zero lengths).
        unsafe { std::mem::zeroed() }
    }

    fn set_iov(&mut self, base: *mut u8, len: usize) {
        self.iov.iov_base = base as *mut libc::c_void;
        self.iov.iov_len = len;
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
    }

    /// Points the message at `bytes` to send, with `fd` (if any) as SCM_RIGHTS.
    fn set_send(&mut self, bytes: &[u8], fd: Option<RawFd>) {
        // The kernel only reads a message it sends.
        self.set_iov(bytes.as_ptr() as *mut u8, bytes.len());
        let Some(fd) = fd else {
            self.hdr.msg_control = std::ptr::null_mut();
            self.hdr.msg_controllen = 0 as _;
            return;
        };
        let fd_bytes = std::mem::size_of::<RawFd>() as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
        assert!(space <= CONTROL_BYTES);
        self.hdr.msg_control = self.control.as_mut_ptr() as *mut libc::c_void;
        // `as _` here and below: usize on glibc, u32 / c_int on musl.
        self.hdr.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` writable, aligned bytes of `control`, so the
        // first header exists and its data has room for one fd.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&self.hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
        }
    }

    /// Points the message at `buf` to receive into, with room for fds.
    fn set_recv(&mut self, buf: &mut [u8]) {
        self.set_iov(buf.as_mut_ptr(), buf.len());
        self.hdr.msg_control = self.control.as_mut_ptr() as *mut libc::c_void;
        self.hdr.msg_controllen = CONTROL_BYTES as _;
        self.hdr.msg_flags = 0;
    }

    /// The fds a completed receive carried, owned from here on.
    fn take_fds(&self) -> Vec<OwnedFd> {
        let mut fds = Vec::new();
        // SAFETY: the kernel wrote msg_controllen bytes of well-formed cmsgs into `control`
        // (the receive completed); CMSG_NXTHDR stops at that length.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&self.hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const RawFd;
                    let n =
                        ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                    for i in 0..n {
                        // SAFETY (of the from_raw_fd): the kernel installed this fd for this
                        // process just now, and nothing else knows it.
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                    }
                }
                c = libc::CMSG_NXTHDR(&self.hdr, c);
            }
        }
        fds
    }
}

/// What one completion said.
#[derive(Debug)]
pub struct Done {
    /// Index of the operation in the step.
    pub index: usize,
    pub bytes: usize,
    /// For a receive: the fds it carried.
    pub fds: Vec<OwnedFd>,
}

/// One step's operations, in order.
pub enum Op<'a> {
    Send {
        socket: &'a OwnedFd,
        bytes: &'a [u8],
        fd: Option<RawFd>,
    },
    Recv {
        socket: &'a OwnedFd,
        buf: &'a mut [u8],
    },
}

/// A ring and the messages of its operations in flight.
pub struct Ring {
    ring: IoUring,
    /// One per operation of a step; only grown before a step's entries are pushed.
    messages: Vec<Message>,
}

impl Ring {
    pub fn new(ops: u32) -> Ring {
        Ring {
            ring: if std::env::var("FDLINK_BENCH_URING_DEFER").is_ok() {
                IoUring::builder()
                    .setup_single_issuer()
                    .setup_defer_taskrun()
                    .build(ops.next_power_of_two() * 2)
            } else {
                IoUring::new(ops.next_power_of_two() * 2)
            }
            .expect("io_uring_setup"),
            messages: Vec::new(),
        }
    }

    /// Submits `ops` in one io_uring_enter and waits for all of them. With `linked`, each pair
    /// (0, 1), (2, 3), ... runs in order: the second starts only once the first completed.
    /// Panics on any failed operation (the bench has nothing to recover).
    pub fn step(&mut self, ops: Vec<Op<'_>>, linked: bool) -> Vec<Done> {
        let n = ops.len();
        while self.messages.len() < n {
            self.messages.push(Message::new());
        }
        let mut recv = vec![false; n];
        {
            let mut sq = self.ring.submission();
            for (i, op) in ops.into_iter().enumerate() {
                let m = &mut self.messages[i];
                let entry = match op {
                    Op::Send { socket, bytes, fd } => {
                        m.set_send(bytes, fd);
                        opcode::SendMsg::new(types::Fd(socket.as_raw_fd()), &m.hdr)
                            .flags(libc::MSG_NOSIGNAL as u32)
                            .build()
                    }
                    Op::Recv { socket, buf } => {
                        recv[i] = true;
                        m.set_recv(buf);
                        opcode::RecvMsg::new(types::Fd(socket.as_raw_fd()), &mut m.hdr)
                            .flags(libc::MSG_CMSG_CLOEXEC as u32)
                            .build()
                    }
                };
                let entry = entry.user_data(i as u64);
                let entry = if linked && i % 2 == 0 {
                    entry.flags(squeue::Flags::IO_LINK)
                } else {
                    entry
                };
                // SAFETY: the message the entry points at stays where it is in
                // `self.messages` (not grown again in this step) and is not reused before this
                // step has reaped its completion below; the buffers it points at are borrowed
                // for the whole call.
                unsafe { sq.push(&entry).expect("submission queue has room") };
            }
        }
        let mut done = Vec::with_capacity(n);
        while done.len() < n {
            match self.ring.submit_and_wait(n - done.len()) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => panic!("io_uring_enter: {e}"),
            }
            for cqe in self.ring.completion() {
                let index = cqe.user_data() as usize;
                let r = cqe.result();
                assert!(
                    r >= 0,
                    "io_uring operation {index}: {}",
                    std::io::Error::from_raw_os_error(-r)
                );
                let fds = if recv[index] {
                    self.messages[index].take_fds()
                } else {
                    Vec::new()
                };
                done.push(Done {
                    index,
                    bytes: r as usize,
                    fds,
                });
            }
        }
        done.sort_by_key(|d| d.index);
        done
    }
}
