//! Who may be at the other end of a connection, by the credentials the kernel gives for it
//! (SO_PEERCRED, SO_PEERGROUPS), as D-Bus and PipeWire check theirs: by default this process's
//! own uid and root only; `allowed-uids` and `allowed-gids` widen that. Both ends check: the
//! producer each consumer it accepts, the consumer the producer it connected to.

use crate::transport::Connection;

/// The peer's credentials as the kernel reports them: the peer cannot forge these (unlike the
/// pid in its hello).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (empty where the kernel cannot tell).
    pub groups: Vec<u32>,
}

impl PeerCredentials {
    /// What the kernel says of `conn`'s peer; None when it cannot say.
    pub fn of(conn: &Connection) -> Option<PeerCredentials> {
        let (pid, uid, gid) = conn.peer_credentials()?;
        Some(PeerCredentials {
            pid,
            uid,
            gid,
            groups: conn.peer_groups().unwrap_or_default(),
        })
    }
}

impl std::fmt::Display for PeerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} uid {} gid {}", self.pid, self.uid, self.gid)
    }
}

/// A set of uids or gids from a property: anyone, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ids {
    Any,
    Only(Vec<u32>),
}

impl Ids {
    /// Parses a property value: comma- (or space-) separated numeric ids; "*" or -1 for
    /// anyone; empty for none. `property` names it in the error.
    pub fn parse(text: &str, property: &str) -> Result<Ids, String> {
        let mut ids = Vec::new();
        for item in text
            .split([',', ' '])
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            if item == "*" || item == "-1" {
                return Ok(Ids::Any);
            }
            match item.parse::<u32>() {
                Ok(id) if id != u32::MAX => ids.push(id),
                _ => {
                    return Err(format!(
                        "{property}: {item:?} is not a numeric id; write ids separated by commas, e.g. {property}=\"1000,1001\", or \"*\" for anyone"
                    ));
                }
            }
        }
        Ok(Ids::Only(ids))
    }

    fn contains(&self, id: u32) -> bool {
        match self {
            Ids::Any => true,
            Ids::Only(ids) => ids.contains(&id),
        }
    }
}

/// Which peers pass: root, `own_uid`, the uids in `uids`, and anyone with a group (primary or
/// supplementary) in `gids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    own_uid: u32,
    uids: Ids,
    gids: Ids,
    /// The element whose properties widen this policy, for the refusal's advice.
    element: &'static str,
}

/// Why a peer does not pass, in words for logs and for the peer's error packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "uid {uid} (gid {gid}) is not allowed: set allowed-uids={uid} (or allowed-gids with one of its groups) on the {element}"
    )]
    NotAllowed {
        uid: u32,
        gid: u32,
        element: &'static str,
    },
    #[error(
        "its credentials cannot be read (SO_PEERCRED), so it is not allowed: set allowed-uids=\"*\" on the {element} to serve anyone"
    )]
    Unknown { element: &'static str },
}

impl PeerPolicy {
    /// This process's effective uid and root only; `element` (fdlinksink, fdlinksrc) has the
    /// properties that widen it.
    pub fn own_uid_only(element: &'static str) -> PeerPolicy {
        PeerPolicy::new(nix::unistd::geteuid().as_raw(), element)
    }

    /// `own_uid` and root only.
    pub fn new(own_uid: u32, element: &'static str) -> PeerPolicy {
        PeerPolicy {
            own_uid,
            uids: Ids::Only(Vec::new()),
            gids: Ids::Only(Vec::new()),
            element,
        }
    }

    /// Also these uids (or anyone).
    pub fn with_uids(mut self, uids: Ids) -> PeerPolicy {
        self.uids = uids;
        self
    }

    /// Also peers in these groups (or anyone).
    pub fn with_gids(mut self, gids: Ids) -> PeerPolicy {
        self.gids = gids;
        self
    }

    /// Whether anyone passes, credentials or not.
    pub fn allows_anyone(&self) -> bool {
        self.uids == Ids::Any || self.gids == Ids::Any
    }

    /// Whether a peer with these credentials (None: unknown) passes.
    pub fn check(&self, peer: Option<&PeerCredentials>) -> Result<(), Refusal> {
        if self.allows_anyone() {
            return Ok(());
        }
        let Some(p) = peer else {
            return Err(Refusal::Unknown {
                element: self.element,
            });
        };
        let passes = p.uid == 0
            || p.uid == self.own_uid
            || self.uids.contains(p.uid)
            || std::iter::once(&p.gid)
                .chain(&p.groups)
                .any(|g| self.gids.contains(*g));
        if passes {
            Ok(())
        } else {
            Err(Refusal::NotAllowed {
                uid: p.uid,
                gid: p.gid,
                element: self.element,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> PeerCredentials {
        PeerCredentials {
            pid: 42,
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    fn ids(text: &str) -> Ids {
        Ids::parse(text, "allowed-uids").unwrap()
    }

    #[test]
    fn by_default_only_the_own_uid_and_root_pass() {
        let policy = PeerPolicy::new(1000, "fdlinksink");
        assert_eq!(policy.check(Some(&peer(1000, 1000, &[]))), Ok(()));
        assert_eq!(policy.check(Some(&peer(0, 0, &[]))), Ok(()));
        let refused = policy.check(Some(&peer(1001, 100, &[1000]))).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "uid 1001 (gid 100) is not allowed: set allowed-uids=1001 (or allowed-gids with one of its groups) on the fdlinksink"
        );
        assert!(matches!(
            policy.check(None),
            Err(Refusal::Unknown {
                element: "fdlinksink"
            })
        ));
    }

    #[test]
    fn allowed_uids_and_gids_widen_it() {
        let policy = PeerPolicy::new(1000, "fdlinksrc")
            .with_uids(ids("1001, 1002"))
            .with_gids(ids("44"));
        assert_eq!(policy.check(Some(&peer(1001, 1001, &[]))), Ok(()));
        assert_eq!(policy.check(Some(&peer(1002, 1002, &[]))), Ok(()));
        // By primary group, and by a supplementary one.
        assert_eq!(policy.check(Some(&peer(2000, 44, &[]))), Ok(()));
        assert_eq!(policy.check(Some(&peer(2001, 2001, &[7, 44]))), Ok(()));
        assert!(policy.check(Some(&peer(2002, 2002, &[7]))).is_err());
        assert!(policy.check(None).is_err());
    }

    #[test]
    fn anyone_passes_with_a_star_or_minus_one() {
        for any in ["*", "-1", "1000,*"] {
            let by_uid = PeerPolicy::new(1000, "fdlinksink").with_uids(ids(any));
            let by_gid = PeerPolicy::new(1000, "fdlinksink").with_gids(ids(any));
            for policy in [by_uid, by_gid] {
                assert!(policy.allows_anyone());
                assert_eq!(policy.check(Some(&peer(4242, 4242, &[]))), Ok(()));
                assert_eq!(policy.check(None), Ok(()), "unknown credentials pass too");
            }
        }
    }

    #[test]
    fn property_values_parse_or_say_how_to_write_them() {
        assert_eq!(ids(""), Ids::Only(vec![]));
        assert_eq!(ids("1000,1001"), Ids::Only(vec![1000, 1001]));
        assert_eq!(ids(" 65534 , 0 "), Ids::Only(vec![65534, 0]));
        assert_eq!(ids("5 6"), Ids::Only(vec![5, 6]));
        for bad in ["nobody", "1000;1001", "-2", "4294967295", "1.5"] {
            let err = Ids::parse(bad, "allowed-gids").unwrap_err();
            assert!(
                err.starts_with("allowed-gids: ") && err.contains("allowed-gids=\"1000,1001\""),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_socketpair_peer_is_this_process() {
        let (a, _b) = Connection::pair().unwrap();
        let creds = PeerCredentials::of(&a).expect("SO_PEERCRED on a socketpair");
        assert_eq!(creds.pid, std::process::id() as i32);
        assert_eq!(creds.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(creds.gid, nix::unistd::getegid().as_raw());
        assert_eq!(
            PeerPolicy::own_uid_only("fdlinksink").check(Some(&creds)),
            Ok(())
        );
    }
}
