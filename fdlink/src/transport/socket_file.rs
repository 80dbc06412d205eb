//! Who may open the listener's socket file: its mode and group, as systemd's `SocketMode=`
//! and `SocketGroup=` set them. Connecting to a Unix socket needs write permission on its
//! file, so this is the filesystem's half of the access control; the other half is the
//! peer's credentials (`peer_check`).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::libc;
use nix::sys::stat::{FchmodatFlags, Mode, SFlag};
use nix::unistd::Gid;

use super::TransportError;

/// The mode and group the listener's socket file gets. The default leaves both as the kernel
/// makes them (0777 minus the umask, the process's group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits (at most 0o777).
    pub mode: Option<u32>,
    /// Group id the file is given (chown).
    pub group: Option<u32>,
}

/// A `socket-mode` or `socket-group` that cannot be used; each says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessSettingError {
    #[error(
        "socket-mode {0:?} is not an octal file mode of at most 0777, such as 0660 (owner and group) or 0600 (owner only)"
    )]
    BadMode(String),
    #[error("socket-group {0:?} is neither a group name known to this system nor a numeric gid")]
    UnknownGroup(String),
}

impl SocketAccess {
    /// Parses an octal mode as systemd's `SocketMode=` takes it: "0660", "660", "0o660".
    pub fn parse_mode(text: &str) -> Result<u32, AccessSettingError> {
        let t = text.trim();
        let digits = t.strip_prefix("0o").unwrap_or(t);
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if !digits.is_empty() && !digits.starts_with('+') && mode <= 0o777 => Ok(mode),
            _ => Err(AccessSettingError::BadMode(text.into())),
        }
    }

    /// A numeric gid, or a group name looked up in the system's group database.
    pub fn resolve_group(text: &str) -> Result<u32, AccessSettingError> {
        let t = text.trim();
        if let Ok(gid) = t.parse::<u32>() {
            return Ok(gid);
        }
        group_by_name(t).ok_or_else(|| AccessSettingError::UnknownGroup(text.into()))
    }
}

fn group_by_name(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: plain data, filled by getgrnam_r.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: name is NUL-terminated; grp, buf (of the length given) and found outlive
        // the call, which writes only into them.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return (rc == 0 && !found.is_null()).then_some(grp.gr_gid);
    }
}

/// Before bind: the kernel creates the socket file with this socket's mode minus the umask,
/// so the file never exists with wider permissions than asked, not even for a moment.
pub(super) fn before_bind(fd: BorrowedFd<'_>, access: &SocketAccess) -> Result<(), TransportError> {
    if let Some(mode) = access.mode {
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode))
            .map_err(super::sys("fchmod", "socket before bind"))?;
    }
    Ok(())
}

/// After bind, before listen (nobody can connect yet): the exact mode (the umask may have
/// narrowed it) and the group, applied to the file we bound (`identity`) and not to whatever
/// a path swapped meanwhile might name: it is opened O_PATH|O_NOFOLLOW and checked first.
pub(super) fn after_bind(
    path: &Path,
    identity: (u64, u64),
    access: &SocketAccess,
) -> Result<(), TransportError> {
    if *access == SocketAccess::default() {
        return Ok(());
    }
    let what = path.display().to_string();
    let file = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(super::sys("open O_PATH", what.clone()))?;
    let st = nix::sys::stat::fstat(file.as_fd()).map_err(super::sys("fstat", what.clone()))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK
        || (st.st_dev, st.st_ino) != identity
    {
        return Err(TransportError::Sys {
            op: "chmod",
            what: format!("{what} (replaced by another file right after bind)"),
            errno: Errno::ESTALE,
        });
    }
    if let Some(group) = access.group {
        nix::unistd::fchownat(
            file.as_fd(),
            "",
            None,
            Some(Gid::from_raw(group)),
            AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|errno| TransportError::Sys {
            op: "chown",
            what: format!(
                "{what} to group {group} (socket-group: the producer must run as root or be a member of that group)"
            ),
            errno,
        })?;
    }
    if let Some(mode) = access.mode {
        // chmod has no flag that works on an O_PATH fd; its /proc/self/fd link names the
        // same inode. (A group change clears no permission bit of a socket, so the order
        // does not matter.)
        let by_fd = format!("/proc/self/fd/{}", file.as_raw_fd());
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            by_fd.as_str(),
            Mode::from_bits_truncate(mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(super::sys("chmod", what))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_systemd_writes_them() {
        assert_eq!(SocketAccess::parse_mode("0660"), Ok(0o660));
        assert_eq!(SocketAccess::parse_mode("600"), Ok(0o600));
        assert_eq!(SocketAccess::parse_mode(" 0o666 "), Ok(0o666));
        assert_eq!(SocketAccess::parse_mode("0"), Ok(0));
        for bad in ["", "0o", "0668", "rw-rw----", "4755", "+660", "-1", "01000"] {
            let err = SocketAccess::parse_mode(bad).unwrap_err();
            assert!(err.to_string().contains("such as 0660"), "{bad}: {err}");
        }
    }

    #[test]
    fn groups_resolve_by_number_or_name() {
        assert_eq!(SocketAccess::resolve_group("44"), Ok(44));
        assert_eq!(SocketAccess::resolve_group("root"), Ok(0));
        let err = SocketAccess::resolve_group("no-such-group-fdlink").unwrap_err();
        assert!(err.to_string().contains("numeric gid"), "{err}");
    }

    #[test]
    fn the_bound_file_gets_the_mode_and_group() {
        use std::os::unix::fs::MetadataExt;
        let _fds = crate::test_support::fd_lock();
        let dir = std::env::temp_dir().join(format!("fdlink-sf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let group = nix::unistd::getegid().as_raw();
        for mode in [0o600, 0o660, 0o666] {
            let access = SocketAccess {
                mode: Some(mode),
                group: Some(group),
            };
            let listener = super::super::Listener::bind_with(&path, &access).unwrap();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(meta.mode() & 0o7777, mode);
            assert_eq!(meta.gid(), group);
            drop(listener);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
