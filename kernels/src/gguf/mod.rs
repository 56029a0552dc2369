//! GGUF v3 container (gguf.md §1, §9): reading (memory-mapped, validated, zero-copy tensor
//! data) and writing (streamed tensor data, atomic rename into place).
//!
//! - [`value`]: metadata value types, accessors, and the shared value encoder/decoder.
//! - [`layout`]: the container's rules (magic, version, alignment, name/dimension limits,
//!   tensor byte sizes); the one place the reader and the writer take them from.
//! - [`read`]: [`GgufFile`]. [`mod@write`]: [`GgufWriter`]. [`error`]: [`GgufError`].
//!
//! Both sides follow llama.cpp's stricter reading rules, so files we write load there and
//! files we accept are ones it accepts: tensor data in tensor-info order, offset of tensor `i`
//! = running sum of the previous sizes padded to the alignment; names shorter than 64 bytes
//! and unique; at most 4 dims; `ne[0]` a multiple of the block size; no duplicate keys; no
//! arrays of arrays; `general.alignment` a u32 power of two (default 32). Only little-endian
//! files are read (big-endian ones are detected and refused); versions 2 and 3 are read,
//! version 3 is written.
//!
//! Hostile input: every read is bounds-checked and every count or length is compared with the
//! bytes left in the file before anything is reserved, so a lying count is an error, never a
//! large allocation (reservations never exceed the file size). Decoded array elements take
//! `size_of::<Value>()` (32) bytes each, and a file may hold at most
//! [`value::MAX_METADATA_ARRAY_ELEMENTS`] (2^24) of them in all. Errors name the file, the
//! problem and the byte offset: `model.gguf: tensor 'x' data [a..b] exceeds file size N (at
//! byte 1234)`.

mod cursor;
pub mod error;
pub mod layout;
pub mod read;
pub mod value;
pub mod write;

pub use error::{GgufError, GgufErrorKind};
pub use layout::{TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION};
pub use read::{GgufFile, SharedTensorData, TensorView};
pub use value::{Array, Value, ValueType};
pub use write::GgufWriter;
