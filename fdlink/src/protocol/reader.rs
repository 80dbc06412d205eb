//! The bounds-checked reader every decoder uses, and the string writer every encoder uses.

use super::DecodeError;

/// Appends a string. Strings run to the end of the packet: the header's payload length
/// bounds them.
pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

/// Bounds-checked little-endian reader over one datagram.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            what,
        }
    }

    /// What the datagram is, as error messages name it.
    pub(super) fn what(&self) -> &'static str {
        self.what
    }

    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(super) fn need(&self, n: usize) -> Result<(), DecodeError> {
        let have = self.bytes.len() - self.pos;
        if have < n {
            return Err(DecodeError::Truncated {
                what: self.what,
                need: self.pos + n,
                have: self.bytes.len(),
            });
        }
        Ok(())
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.bytes[self.pos..self.pos + N]);
        self.pos += N;
        Ok(a)
    }

    pub(super) fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.need(n)?;
        self.pos += n;
        Ok(())
    }

    /// The next `n` bytes.
    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        self.need(n)?;
        let b = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    pub(super) fn reserved(&mut self, n: usize) -> Result<(), DecodeError> {
        self.need(n)?;
        if self.bytes[self.pos..self.pos + n].iter().any(|&b| b != 0) {
            return Err(DecodeError::NonZeroReserved { what: self.what });
        }
        self.pos += n;
        Ok(())
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    /// The next `n` bytes as UTF-8.
    pub(super) fn str_of(&mut self, n: usize) -> Result<String, DecodeError> {
        self.need(n)?;
        let bytes = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        text(bytes, self.what)
    }

    /// The rest of the datagram as UTF-8.
    pub(super) fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        text(rest, self.what)
    }

    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.pos != self.bytes.len() {
            return Err(DecodeError::TrailingBytes {
                what: self.what,
                extra: self.bytes.len() - self.pos,
            });
        }
        Ok(())
    }
}

/// `bytes` as text: UTF-8 without NUL (GLib cuts a C string there, and its Rust bindings panic
/// on one in debug builds).
fn text(bytes: &[u8], what: &'static str) -> Result<String, DecodeError> {
    let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { what })?;
    if s.contains('\0') {
        return Err(DecodeError::NulInText { what });
    }
    Ok(s.to_owned())
}
