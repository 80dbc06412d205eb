//! The kinds of file a frame's memory lives in, and the checks a received fd must pass before
//! anything maps it: a memfd must be a regular file sealed against shrinking (so the producer
//! cannot truncate it under a mapping), a dmabuf must live on the dmabuf file system, and
//! every memory window must lie inside its file.

use std::os::fd::{BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};

use crate::protocol::MemoryKind;

/// Why received fds could not become memories. Each names the fd and the problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("fd {index} is sent as memfd but is not a regular file")]
    NotAFile { index: usize },
    #[error("fd {index} is sent as dmabuf but is not one (not on the dmabuf file system)")]
    NotADmabuf { index: usize },
    #[error(
        "memfd {index} is not sealed against shrinking (F_SEAL_SHRINK); the producer could truncate it under us"
    )]
    NotSealed { index: usize },
    #[error("memory window {offset}+{size} overruns fd {index} of {file_size} bytes")]
    WindowOutOfBounds {
        index: usize,
        offset: u64,
        size: u64,
        file_size: u64,
    },
    #[error("fd {index} is used as both memfd and dmabuf")]
    MixedKinds { index: usize },
    #[error("cannot inspect fd {index}: {errno}")]
    Sys { index: usize, errno: Errno },
    #[error("video meta: {0}")]
    VideoMeta(String),
    #[error("video layout {0}")]
    BadVideoLayout(String),
    #[error("metas: {0}")]
    Metas(String),
    #[error("cannot wrap fd {index} as memory")]
    Alloc { index: usize },
    #[error("file id {id} is not registered")]
    UnknownFile { id: u32 },
    #[error("file id {id} registered twice without being retired")]
    RegisteredTwice { id: u32 },
    #[error("more than {max} files registered")]
    TooManyFiles { max: usize },
    #[error("retire of file id {id}, which is not registered")]
    RetiredUnknown { id: u32 },
    #[error("file id {id} is registered as {registered:?} but sent as {sent:?}")]
    RegisteredKind {
        id: u32,
        registered: MemoryKind,
        sent: MemoryKind,
    },
}

/// Creates a memfd of `size` bytes sealed against shrinking and growing (its contents stay
/// writable for the producer; receivers can rely on its size).
pub fn create_sealed_memfd(name: &str, size: usize) -> std::io::Result<OwnedFd> {
    let fd = create_memfd_to_map(name, size)?;
    // SEAL_SEAL last: a consumer holding the fd must not add seals (F_SEAL_FUTURE_WRITE would
    // stop the producer's own new mappings).
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SEAL))?;
    Ok(fd)
}

/// [`create_sealed_memfd`] still open to seals: for a producer that maps it writable and then
/// calls [`seal_future_writes`].
pub fn create_memfd_to_map(name: &str, size: usize) -> std::io::Result<OwnedFd> {
    let mfd = memfd::MemfdOptions::default()
        .allow_sealing(true)
        .close_on_exec(true)
        .create(name)
        .map_err(std::io::Error::other)?;
    mfd.as_file().set_len(size as u64)?;
    mfd.add_seals(&[memfd::FileSeal::SealShrink, memfd::FileSeal::SealGrow])
        .map_err(std::io::Error::other)?;
    Ok(OwnedFd::from(mfd.into_file()))
}

/// Seals memfd `fd` against writes but through the mappings it has now (F_SEAL_FUTURE_WRITE,
/// Linux 5.1): no process can write(2) to it or map it writable again, not even through a
/// read-write reopening of /proc/self/fd, while the producer writes on through its mapping.
/// Then against more seals. A kernel without F_SEAL_FUTURE_WRITE gets F_SEAL_SEAL alone, and
/// the error.
pub fn seal_future_writes(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let seals = SealFlag::F_SEAL_FUTURE_WRITE | SealFlag::F_SEAL_SEAL;
    fcntl(fd, FcntlArg::F_ADD_SEALS(seals))
        .map(drop)
        .inspect_err(|_| {
            let _ = fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SEAL));
        })
}

/// (st_dev, st_ino) of an open file: the identity of the kernel object behind an fd.
pub fn file_identity(fd: BorrowedFd<'_>) -> Result<(u64, u64), Errno> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Whether the file behind `fd` is sealed against shrinking.
pub fn is_sealed_against_shrink(fd: BorrowedFd<'_>) -> bool {
    fcntl(fd, FcntlArg::F_GET_SEALS)
        .is_ok_and(|s| SealFlag::from_bits_truncate(s).contains(SealFlag::F_SEAL_SHRINK))
}

/// f_type of the dmabuf pseudo file system (DMA_BUF_MAGIC, "DMAB").
const DMA_BUF_MAGIC: i64 = 0x444d_4142;

/// Whether `fd` is a dmabuf: its file lives on the dmabuf pseudo file system.
pub fn is_dmabuf(fd: BorrowedFd<'_>) -> bool {
    // f_type is i64 on 64-bit targets and i32 on 32-bit ones.
    #[allow(clippy::unnecessary_cast)]
    nix::sys::statfs::fstatfs(fd).is_ok_and(|s| s.filesystem_type().0 as i64 == DMA_BUF_MAGIC)
}

/// Whether `fd` is a regular file (a memfd is one; a dmabuf is not).
pub fn is_regular_file(fd: BorrowedFd<'_>) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| (st.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFREG)
}

/// Checks received fd number `index` of a packet, sent as `kind`, against the memory windows
/// (offset, size) that use it; returns the file's size in bytes.
pub fn check_fd(
    index: usize,
    fd: BorrowedFd<'_>,
    kind: MemoryKind,
    windows: impl Iterator<Item = (u64, u64)>,
) -> Result<u64, ImportError> {
    let st = nix::sys::stat::fstat(fd).map_err(|errno| ImportError::Sys { index, errno })?;
    let is_file = (st.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFREG;
    let file_size = match kind {
        MemoryKind::Memfd => {
            if !is_file {
                return Err(ImportError::NotAFile { index });
            }
            if !is_sealed_against_shrink(fd) {
                return Err(ImportError::NotSealed { index });
            }
            st.st_size as u64
        }
        MemoryKind::DmaBuf => {
            if is_file || !is_dmabuf(fd) {
                return Err(ImportError::NotADmabuf { index });
            }
            // dmabufs report their size through lseek(SEEK_END).
            nix::unistd::lseek(fd, 0, nix::unistd::Whence::SeekEnd)
                .map_err(|errno| ImportError::Sys { index, errno })? as u64
        }
    };
    check_windows(index, file_size, windows)?;
    Ok(file_size)
}

/// Checks that every window (offset, size) lies inside a file of `file_size` bytes.
pub fn check_windows(
    index: usize,
    file_size: u64,
    mut windows: impl Iterator<Item = (u64, u64)>,
) -> Result<(), ImportError> {
    // A window starts inside its file, even an empty one: GStreamer's memories cannot start
    // at their end (gstreamer-rs panics on `resize`/`share` there).
    let outside = |&(offset, size): &(u64, u64)| {
        offset >= file_size || offset.checked_add(size).is_none_or(|end| end > file_size)
    };
    match windows.find(outside) {
        Some((offset, size)) => Err(ImportError::WindowOutOfBounds {
            index,
            offset,
            size,
            file_size,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sealed_memfd_passes_and_unsealed_does_not() {
        let fd = create_sealed_memfd("t", 4096).unwrap();
        assert!(is_regular_file(fd.as_fd()));
        assert!(!is_dmabuf(fd.as_fd()));
        assert_eq!(
            check_fd(0, fd.as_fd(), MemoryKind::Memfd, [(0, 4096)].into_iter()),
            Ok(4096)
        );
        assert_eq!(
            check_fd(1, fd.as_fd(), MemoryKind::DmaBuf, std::iter::empty()),
            Err(ImportError::NotADmabuf { index: 1 })
        );
        let plain = OwnedFd::from(
            memfd::MemfdOptions::default()
                .create("u")
                .unwrap()
                .into_file(),
        );
        nix::unistd::ftruncate(&plain, 10).unwrap();
        assert_eq!(
            check_fd(2, plain.as_fd(), MemoryKind::Memfd, std::iter::empty()),
            Err(ImportError::NotSealed { index: 2 })
        );
    }

    #[test]
    fn windows_past_the_end_or_wrapping_are_refused() {
        assert!(check_windows(0, 100, [(0, 100), (50, 50)].into_iter()).is_ok());
        assert_eq!(
            check_windows(3, 100, [(0, 100), (99, 2)].into_iter()),
            Err(ImportError::WindowOutOfBounds {
                index: 3,
                offset: 99,
                size: 2,
                file_size: 100
            })
        );
        assert!(check_windows(0, 100, [(u64::MAX, 2)].into_iter()).is_err());
    }

    /// Found by the frame_import fuzzer: an empty window at the end of a registered 64 KiB
    /// memfd (offset 65536, size 0) passed, and the consumer's import panicked making its view.
    #[test]
    fn empty_windows_at_or_past_the_end_are_refused() {
        assert!(check_windows(0, 100, [(99, 0), (0, 0)].into_iter()).is_ok());
        assert_eq!(
            check_windows(1, 65536, [(0, 4096), (65536, 0)].into_iter()),
            Err(ImportError::WindowOutOfBounds {
                index: 1,
                offset: 65536,
                size: 0,
                file_size: 65536
            })
        );
        assert!(check_windows(0, 0, [(0, 0)].into_iter()).is_err());
    }
}
