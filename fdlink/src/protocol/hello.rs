//! The hello: the first datagram each side sends after connecting, naming the protocol, its
//! version and the sender's role.

use super::reader::Reader;
use super::{DecodeError, MAGIC, VERSION};

/// Hello capability of a consumer: its fdlinksrc has `mode=follow`, so a producer that
/// prerolls waits for its Prerolled packet.
pub const CAP_FOLLOWS: u32 = 1;

/// Size of the hello datagram.
pub const HELLO_SIZE: usize = 20;

/// Which end of the link a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// fdlinksink: listens, sends frames.
    Producer = 1,
    /// fdlinksrc: connects, receives frames, sends releases.
    Consumer = 2,
}

/// The first datagram each side sends after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub role: Role,
    /// Capability bits (`CAP_*`); unknown bits are ignored.
    pub capabilities: u32,
    /// Process id of the sender, for logs only.
    pub pid: u32,
    /// A producer's `max-held`: buffers this consumer may hold unreleased before the
    /// producer's slow-policy applies to it, so that a consumer whose downstream holds many
    /// can copy out before that (0: no limit). A consumer sends 0.
    pub hold_limit: u32,
}

impl Hello {
    pub fn new(role: Role, pid: u32) -> Self {
        Hello {
            version: VERSION,
            role,
            capabilities: 0,
            pid,
            hold_limit: 0,
        }
    }
}

/// Encodes a hello datagram.
pub fn encode_hello(hello: &Hello) -> [u8; HELLO_SIZE] {
    let mut out = [0u8; HELLO_SIZE];
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&hello.version.to_le_bytes());
    out[6] = hello.role as u8;
    out[7] = 0;
    out[8..12].copy_from_slice(&hello.capabilities.to_le_bytes());
    out[12..16].copy_from_slice(&hello.pid.to_le_bytes());
    out[16..20].copy_from_slice(&hello.hold_limit.to_le_bytes());
    out
}

/// Decodes a hello datagram. Magic and version are checked first, so a peer of another
/// version (whatever the rest of its hello looks like) gets a message naming both versions.
pub fn decode_hello(bytes: &[u8]) -> Result<Hello, DecodeError> {
    if bytes.len() < 4 || bytes[0..4] != MAGIC {
        return Err(DecodeError::NotFdlink);
    }
    if bytes.len() < 6 {
        return Err(DecodeError::Truncated {
            what: "hello",
            need: HELLO_SIZE,
            have: bytes.len(),
        });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(DecodeError::VersionMismatch {
            ours: VERSION,
            theirs: version,
        });
    }
    let mut r = Reader::new(bytes, "hello");
    r.skip(6)?;
    let role = match r.u8()? {
        1 => Role::Producer,
        2 => Role::Consumer,
        other => return Err(DecodeError::BadRole(other)),
    };
    r.reserved(1)?;
    let capabilities = r.u32()?;
    let pid = r.u32()?;
    let hold_limit = r.u32()?;
    r.finish()?;
    Ok(Hello {
        version,
        role,
        capabilities,
        pid,
        hold_limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_roundtrip() {
        let h = Hello::new(Role::Consumer, 1234);
        assert_eq!(decode_hello(&encode_hello(&h)).unwrap(), h);
        let mut h = Hello::new(Role::Producer, u32::MAX);
        h.hold_limit = 8;
        assert_eq!(decode_hello(&encode_hello(&h)).unwrap(), h);
    }

    #[test]
    fn hello_rejects_other_peers_and_versions() {
        assert_eq!(
            decode_hello(b"GET / HTTP/1.1\r\n"),
            Err(DecodeError::NotFdlink)
        );
        assert_eq!(decode_hello(b""), Err(DecodeError::NotFdlink));
        assert_eq!(decode_hello(b"FDL"), Err(DecodeError::NotFdlink));
        let mut b = encode_hello(&Hello::new(Role::Producer, 1));
        b[4..6].copy_from_slice(&2u16.to_le_bytes());
        let err = decode_hello(&b).unwrap_err();
        assert_eq!(
            err,
            DecodeError::VersionMismatch {
                ours: VERSION,
                theirs: 2
            }
        );
        assert!(
            err.to_string().contains(&format!("version {VERSION}"))
                && err.to_string().contains("version 2")
        );
        // A future version with a longer hello still gets the version error, not "trailing".
        let mut long = b.to_vec();
        long.extend_from_slice(&[0; 32]);
        assert!(matches!(
            decode_hello(&long),
            Err(DecodeError::VersionMismatch { .. })
        ));
        let mut b = encode_hello(&Hello::new(Role::Producer, 1));
        b[6] = 9;
        assert_eq!(decode_hello(&b), Err(DecodeError::BadRole(9)));
        let b = encode_hello(&Hello::new(Role::Producer, 1));
        assert!(matches!(
            decode_hello(&b[..10]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut long = b.to_vec();
        long.push(0);
        assert!(matches!(
            decode_hello(&long),
            Err(DecodeError::TrailingBytes { .. })
        ));
    }
}
