//! Errors of the GGUF reader and writer: always name the file, the problem and, where known,
//! the byte offset in the file.

use std::fmt;
use std::io;

use super::value::ValueType;

/// What went wrong. Matched on by tests and by callers that want to react to one case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufErrorKind {
    /// An operating-system error (open, map, write, rename, …), with what was being done.
    // The io::Error is part of the message and deliberately not a `source()`, so that
    // anyhow's `{:#}` prints one line without repeating it.
    #[error("{op}: {err}")]
    Io { op: String, err: io::Error },
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\" (47 47 55 46){hint}")]
    BadMagic { found: [u8; 4], hint: &'static str },
    #[error("unsupported GGUF version {0} (versions 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    #[error(
        "big-endian GGUF file (version field reads 0x{0:08x}); only little-endian files are supported"
    )]
    BigEndian(u32),
    /// A field or payload runs past the end of the file.
    #[error("truncated file: {what} needs {needed} bytes but only {available} remain")]
    Truncated {
        what: String,
        needed: u64,
        available: u64,
    },
    /// A count whose smallest possible encoding does not fit in the rest of the file.
    #[error("{what} count {count} cannot fit in the {available} bytes left in the file")]
    CountTooLarge {
        what: String,
        count: u64,
        available: u64,
    },
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: String },
    #[error("{what}: unknown metadata value type id {id}")]
    UnknownValueType { what: String, id: u32 },
    #[error("metadata key '{}': arrays of arrays are not supported (ggml rejects them)", esc(.0))]
    NestedArray(String),
    #[error("metadata key '{}' appears more than once", esc(.0))]
    DuplicateKey(String),
    #[error("invalid metadata key '{}': {problem}", esc(.key))]
    InvalidKey { key: String, problem: String },
    /// A metadata value that is well-formed but not acceptable (e.g. `general.alignment`).
    #[error("metadata key '{}': {problem}", esc(.key))]
    InvalidValue { key: String, problem: String },
    #[error("tensor '{}': {problem}", esc(.name))]
    InvalidTensor { name: String, problem: String },
    #[error("tensor '{}' appears more than once", esc(.0))]
    DuplicateTensor(String),
    /// Data offsets that break llama.cpp's layout rule (running sum of padded sizes).
    #[error("tensor '{}' has data offset {offset}, expected {expected}: {problem}", esc(.name))]
    TensorOffset {
        name: String,
        offset: u64,
        expected: u64,
        problem: String,
    },
    #[error("tensor '{}' data [{start}..{end}] exceeds file size {file_size}", esc(.name))]
    TensorDataOutOfFile {
        name: String,
        start: u64,
        end: u64,
        file_size: u64,
    },
    #[error("metadata key '{}' is missing", esc(.0))]
    MissingKey(String),
    #[error("metadata key '{}' has type {found}, expected {expected}", esc(.key))]
    WrongType {
        key: String,
        expected: &'static str,
        found: ValueType,
    },
    /// The writer's data callback wrote a different number of bytes than the tensor holds.
    #[error("tensor '{}': data callback wrote {written} bytes, expected {expected}", esc(.name))]
    WrongDataSize {
        name: String,
        expected: u64,
        written: u64,
    },
    /// The writer's data callback failed.
    #[error("tensor '{}': writing data failed: {err}", esc(.name))]
    DataCallback { name: String, err: io::Error },
    #[error("{0}")]
    Other(String),
}

/// A GGUF error: `FILE: problem (at byte N)`.
#[derive(Debug)]
pub struct GgufError {
    /// The file (as given by the caller) or `<output>` for [`GgufWriter::write_to`](super::GgufWriter::write_to).
    pub file: String,
    pub kind: GgufErrorKind,
    /// Absolute byte offset in the file where the problem was found, if meaningful.
    pub at: Option<u64>,
}

impl GgufError {
    pub fn new(file: impl Into<String>, kind: GgufErrorKind) -> Self {
        GgufError {
            file: file.into(),
            kind,
            at: None,
        }
    }

    pub fn at(file: impl Into<String>, kind: GgufErrorKind, at: u64) -> Self {
        GgufError {
            file: file.into(),
            kind,
            at: Some(at),
        }
    }

    pub(crate) fn io(file: impl Into<String>, op: impl Into<String>, err: io::Error) -> Self {
        GgufError::new(file, GgufErrorKind::Io { op: op.into(), err })
    }
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.kind)?;
        if let Some(at) = self.at {
            write!(f, " (at byte {at})")?;
        }
        Ok(())
    }
}

// No `source()`: the message is complete on its own (see `GgufErrorKind::Io`).
impl std::error::Error for GgufError {}

/// A name or key from a file, made safe for a one-line message: control characters escaped,
/// long strings shortened.
pub fn esc(s: &str) -> String {
    const MAX_CHARS: usize = 80;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}
