//! Which new connections the control thread takes on: at most `max-clients` at once, and none
//! that would leave this process without the fds its own pipeline needs.
//!
//! A flood of connections must never make the producer's own files fail (its memfd pool,
//! upstream's decoder, a filesink): once fewer than [`fd_reserve`] fds would be left under
//! `RLIMIT_NOFILE`, counting those each served connection may still take, new connections are
//! accepted and closed at once, so the listener's backlog drains and the refused peers see
//! why. Each connection costs one fd for its socket and, while its socket is full, one per
//! queued frame's fd (`max-queued` frames, one fd each for a single-file frame): that is what
//! is counted ahead for each. Accepting itself failing (EMFILE, ENFILE) pauses the listener
//! for [`ACCEPT_BACKOFF`] instead of polling a listener that stays readable.

use std::time::Duration;

use crate::warning_gate::WarningGate;

/// How long the listener is left alone after accept failed (EMFILE, ENFILE, ENOMEM).
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections taken from the listener in one round of the control loop: a flood of them
/// cannot keep the control thread from the consumers' releases.
pub(super) const MAX_ACCEPTS_PER_ROUND: usize = 64;
/// Refusals are warned about at most this often (each is logged at INFO).
const REFUSAL_WARNING_PERIOD: Duration = Duration::from_secs(5);
/// The smallest and the largest fd reserve.
const FD_RESERVE_MIN: usize = 64;
const FD_RESERVE_MAX: usize = 1024;

/// Fds kept for the process itself under a soft limit of `limit`: a quarter of it, at least
/// [`FD_RESERVE_MIN`] (a pipeline's pool, its elements and threads) and at most
/// [`FD_RESERVE_MAX`].
pub(super) fn fd_reserve(limit: usize) -> usize {
    (limit / 4).clamp(FD_RESERVE_MIN, FD_RESERVE_MAX)
}

/// Why a connection is refused at accept.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `max-clients` connections are served already.
    MaxClients(u32),
    /// Taking it on would leave fewer than the reserve: (open fds, the soft limit, reserve).
    Fds {
        open: usize,
        limit: usize,
        reserve: usize,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::MaxClients(max) => write!(
                f,
                "the producer serves {max} consumers already (max-clients={max} on its fdlinksink): raise max-clients or try again later"
            ),
            Refusal::Fds {
                open,
                limit,
                reserve,
            } => write!(
                f,
                "the producer has {open} of its {limit} fds (RLIMIT_NOFILE) open and keeps {reserve} for its own pipeline: raise its fd limit (ulimit -n), lower max-clients or try again later"
            ),
        }
    }
}

/// The control thread's admission state.
pub(super) struct Admission {
    warnings: WarningGate,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            warnings: WarningGate::new(REFUSAL_WARNING_PERIOD),
        }
    }
}

/// This process's fd use, read once per round of accepts.
#[derive(Debug, Clone, Copy)]
pub(super) struct FdUse {
    /// The soft RLIMIT_NOFILE.
    pub(super) limit: usize,
}

impl FdUse {
    /// The soft limit now; None where /proc cannot tell (no check then).
    pub(super) fn read() -> Option<FdUse> {
        Some(FdUse {
            limit: open_file_limit()?,
        })
    }
}

impl Admission {
    /// Whether one more connection may be served, with `clients` served now (in the hello or
    /// past it), each of which may take `per_client` fds more than its socket.
    pub(super) fn check(
        &self,
        max_clients: u32,
        clients: usize,
        per_client: usize,
        fds: Option<FdUse>,
    ) -> Result<(), Refusal> {
        if max_clients > 0 && clients >= max_clients as usize {
            return Err(Refusal::MaxClients(max_clients));
        }
        let Some(FdUse { limit }) = fds else {
            return Ok(());
        };
        let reserve = fd_reserve(limit);
        // Counting needs an fd: failing to get one is being at the limit already.
        let open = open_fds().unwrap_or(limit);
        let needed = open + (clients + 1) * per_client;
        if needed + reserve > limit {
            return Err(Refusal::Fds {
                open,
                limit,
                reserve,
            });
        }
        Ok(())
    }

    /// Whether this refusal is warned about, with the refusals since the last warning (this
    /// one left out); if not, it is counted for the next warning.
    pub(super) fn warn_now(&mut self) -> Option<u64> {
        self.warnings.note(1).map(|k| k - 1)
    }
}

/// The soft RLIMIT_NOFILE, from /proc/self/limits ("Max open files  SOFT  HARD  files").
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Fds open in this process now, from /proc/self/fd (its own directory fd left out).
fn open_fds() -> Option<usize> {
    let count = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(count.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_quarter_of_the_limit_within_bounds() {
        assert_eq!(fd_reserve(256), 64);
        assert_eq!(fd_reserve(1024), 256);
        assert_eq!(fd_reserve(100), FD_RESERVE_MIN);
        assert_eq!(fd_reserve(1 << 20), FD_RESERVE_MAX);
    }

    #[test]
    fn max_clients_and_the_fd_reserve_refuse() {
        let a = Admission::default();
        assert_eq!(a.check(2, 1, 8, None), Ok(()));
        assert_eq!(a.check(2, 2, 8, None), Err(Refusal::MaxClients(2)));
        assert_eq!(a.check(0, 100_000, 8, None), Ok(()), "0: no limit");
        let fds = FdUse::read().expect("/proc/self/limits");
        let open = open_fds().unwrap();
        // Room for exactly the reserve and what is open: one more client does not fit.
        let tight = FdUse {
            limit: open + 1 + fd_reserve(open + 1),
        };
        assert!(matches!(
            a.check(0, 0, 8, Some(tight)),
            Err(Refusal::Fds { .. })
        ));
        let roomy = FdUse {
            limit: open + 4096 + 2 * FD_RESERVE_MAX,
        };
        assert_eq!(a.check(0, 0, 8, Some(roomy)), Ok(()));
        assert!(fds.limit > 0);
    }
}
