//! A bounds-checked little-endian reader over the bytes of a GGUF file.
//!
//! Every read checks the remaining length first and fails with [`GgufErrorKind::Truncated`]
//! (naming the field and its byte offset) instead of panicking.

use super::error::{GgufError, GgufErrorKind};

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The file name used in errors.
    file: &'a str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], file: &'a str) -> Self {
        Cursor { buf, pos: 0, file }
    }

    /// Absolute offset of the next byte.
    pub(crate) fn pos(&self) -> u64 {
        self.pos as u64
    }

    pub(crate) fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// An error located at `at`.
    pub(crate) fn error(&self, kind: GgufErrorKind, at: u64) -> GgufError {
        GgufError::at(self.file, kind, at)
    }

    /// The next `n` bytes; `what` names the field for the error message.
    pub(crate) fn take(
        &mut self,
        n: u64,
        what: impl FnOnce() -> String,
    ) -> Result<&'a [u8], GgufError> {
        let available = self.remaining();
        if n > available {
            return Err(self.error(
                GgufErrorKind::Truncated {
                    what: what(),
                    needed: n,
                    available,
                },
                self.pos(),
            ));
        }
        // n <= available <= usize::MAX here.
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn take_array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: impl FnOnce() -> String) -> Result<u8, GgufError> {
        Ok(self.take_array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: impl FnOnce() -> String) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.take_array(what)?))
    }

    pub(crate) fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.take_array(what)?))
    }

    pub(crate) fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.take_array(what)?))
    }

    /// A `gguf_string`: u64 byte length, then that many UTF-8 bytes (no terminator).
    /// The length is checked against the rest of the file before anything is allocated.
    pub(crate) fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let at = self.pos();
        let len = self.u64(|| format!("length of {}", what()))?;
        if len <= self.remaining() && len > super::layout::MAX_STRING_BYTES {
            return Err(self.error(
                GgufErrorKind::Other(format!(
                    "{} has length {len}, above the 1 GiB limit of ggml",
                    what()
                )),
                at,
            ));
        }
        let bytes = self.take(len, &what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(self.error(GgufErrorKind::InvalidUtf8 { what: what() }, at)),
        }
    }
}
