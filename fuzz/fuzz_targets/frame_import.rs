//! What fdlinksrc does with a producer's frames beyond decoding them: a sequence of buffer and
//! retire packets, with real fds beside them, through the plugin's `memory::Importer`
//! (`resolve`: fds checked and register-once files entered in the `FileTable`; `import`: each
//! window checked and wrapped read-only) and `FileTable::retire`, then every memory mapped and
//! read as downstream would.
//!
//! Input: packets one after another, each `[control][len lo][len hi][fd picks...][payload]`:
//! control bit 7 makes it a retire packet (else a buffer packet), bits 0-2 the number of fds
//! (each picked by one byte among: sealed memfds of 4 KiB and 64 KiB, a memfd not sealed
//! against shrinking, /dev/null, a pipe); `len` bytes of payload follow (the target writes the
//! header).
//!
//! Checks: no panic, no SIGBUS (a window past its file's end would fault on the read); a
//! memory is never writable; once the input's file table and buffers are gone no received fd
//! is left open.
#![no_main]

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::LazyLock;

use fdlink::fdkind::create_sealed_memfd;
use fdlink::protocol::{HEADER_SIZE, Packet, PacketFds};
use gstfdlink::memory::{FileTable, Importer};
use libfuzzer_sys::fuzz_target;

struct Files {
    /// The fds a packet may carry copies of.
    choices: Vec<OwnedFd>,
    /// Their targets as /proc/self/fd shows them, to tell a kept copy from another fd.
    links: Vec<std::path::PathBuf>,
    importer: Importer,
}

static FILES: LazyLock<std::sync::Mutex<(Files, RawFd)>> = LazyLock::new(|| {
    gst::init().expect("gst::init");
    let small = create_sealed_memfd("fuzz-small", 4096).expect("memfd");
    let large = create_sealed_memfd("fuzz-large", 65536).expect("memfd");
    let unsealed = memfd_unsealed(4096);
    let dev_null = OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"));
    let (pipe_r, _pipe_w) = std::io::pipe().expect("pipe");
    let choices = vec![small, large, unsealed, dev_null, OwnedFd::from(pipe_r)];
    let links = choices
        .iter()
        .map(|fd| std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap())
        .collect();
    let files = Files {
        choices,
        links,
        importer: Importer::default(),
    };
    std::sync::Mutex::new((files, lowest_free_fd()))
});

fn memfd_unsealed(size: i64) -> OwnedFd {
    // SAFETY: memfd_create returns a new fd that nothing else owns (checked below).
    let fd = unsafe { libc::memfd_create(c"fuzz-unsealed".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: fd is the new memfd above.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ftruncate on the memfd we own.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }, 0);
    fd
}

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

/// Panics if an fd from `*mark` up to the lowest free one is a copy of a file the input sent;
/// other fds (the fuzzer's own) move the mark on.
fn check_no_fd_kept(files: &Files, mark: &mut RawFd) {
    let now = lowest_free_fd();
    for fd in *mark..now {
        if let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            && files.links.contains(&target)
            && !files.choices.iter().any(|c| c.as_raw_fd() == fd)
        {
            panic!(
                "fd {fd} ({}) is open: a received fd leaked",
                target.display()
            );
        }
    }
    *mark = (*mark).max(now);
}

fuzz_target!(|data: &[u8]| {
    let mut guard = FILES.lock().unwrap();
    let (files, mark) = &mut *guard;
    let mut table = FileTable::default();
    let mut buffers = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let control = rest[0];
        let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
        rest = &rest[3..];
        let n_fds = ((control & 0x07) as usize).min(rest.len());
        let (picks, after) = rest.split_at(n_fds);
        let len = len.min(after.len());
        let (payload, after) = after.split_at(len);
        rest = after;

        let ty: u16 = if control & 0x80 != 0 { 13 } else { 4 };
        let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
        bytes.extend_from_slice(&ty.to_le_bytes());
        bytes.extend_from_slice(&(n_fds as u16).to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        let fds: PacketFds<OwnedFd> = picks
            .iter()
            .map(|&p| {
                let choice = &files.choices[p as usize % files.choices.len()];
                choice.as_fd().try_clone_to_owned().expect("dup")
            })
            .collect();
        match Packet::decode(&bytes, fds) {
            Ok(Packet::Buffer(mut header, fds)) => {
                let Ok(frame_files) = files.importer.resolve(&mut table, &mut header, fds) else {
                    continue;
                };
                let Ok(buffer) = files.importer.import(&header, frame_files, None) else {
                    continue;
                };
                for mem in buffer.iter_memories() {
                    assert!(
                        mem.flags().contains(gst::MemoryFlags::READONLY),
                        "a received memory is writable"
                    );
                    if let Ok(map) = mem.map_readable() {
                        // A byte of every page of the window and its last one: a page past
                        // the file's end would fault.
                        let mut sum = map.last().copied().unwrap_or(0);
                        for b in map.iter().step_by(4096) {
                            sum = sum.wrapping_add(*b);
                        }
                        std::hint::black_box(sum);
                    }
                }
                buffers.push(buffer);
            }
            Ok(Packet::Retire { file_ids }) => {
                let _ = file_ids.iter().try_for_each(|&id| table.retire(id));
            }
            _ => {}
        }
    }
    drop(buffers);
    drop(table);
    check_no_fd_kept(files, mark);
});
