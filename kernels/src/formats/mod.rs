//! Tensor block formats: one file per format (layout, reference quantize/dequantize, dot products).
//!
//! Every quantizer is bit-identical to ggml's reference routine of the same name
//! (`quantize_row_*_ref`, gguf.md §5.3/§5.4), every dequantizer to ggml's `dequantize_row_*`, and
//! the quantized dot products follow ggml's scalar `ggml_vec_dot_*_generic` kernels (integer sums
//! inside a block, then f32 scale arithmetic in the same order), so their results are
//! bit-identical too. The one exception: the K-quant dots add one f32 term per super-block
//! where ggml's add eight (see [`q4_k`]'s `KDotAccumulator`), which differs from ggml by f32
//! rounding only. `kernels/tests/formats_vectors.rs` checks all of this against vectors made by
//! gguf-py and by ggml's own C code (scripts/gen_quant_vectors.py).
//!
//! The typed functions in the per-format modules take block slices and panic on mismatched
//! lengths (a caller bug). The type-erased entry points ([`quantize_row`], [`dequantize_row`],
//! [`quantize_activation_row`], [`vec_dot`]; in `dispatch.rs`) work on raw, possibly unaligned,
//! little-endian bytes as stored in GGUF files; the first two report bad lengths as
//! [`FormatError`].

use crate::types::GgmlType;

pub mod bf16;
mod dispatch;
pub mod f16;
pub mod f32;
pub mod k_common;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;
mod rounding;
#[cfg(test)]
pub(crate) mod test_util;

pub use bf16::{dequantize_row_bf16, quantize_row_bf16, vec_dot_bf16_f32};
pub use dispatch::{
    dequantize_row, is_supported, quantize_activation_row, quantize_row, row_bytes,
    supports_vec_dot, vec_dot,
};
pub use f16::{dequantize_row_f16, quantize_row_f16, vec_dot_f16_f32};
pub use f32::{dequantize_row_f32, quantize_row_f32, vec_dot_f32_f32};
pub use q4_0::{dequantize_row_q4_0, quantize_row_q4_0_ref, vec_dot_q4_0_q8_0, Q4_0Block};
pub use q4_1::{dequantize_row_q4_1, quantize_row_q4_1_ref, vec_dot_q4_1_q8_1, Q4_1Block};
pub use q4_k::{dequantize_row_q4_k, quantize_row_q4_k_ref, vec_dot_q4_k_q8_k, Q4_KBlock};
pub use q5_0::{dequantize_row_q5_0, quantize_row_q5_0_ref, vec_dot_q5_0_q8_0, Q5_0Block};
pub use q5_1::{dequantize_row_q5_1, quantize_row_q5_1_ref, vec_dot_q5_1_q8_1, Q5_1Block};
pub use q5_k::{dequantize_row_q5_k, quantize_row_q5_k_ref, vec_dot_q5_k_q8_k, Q5_KBlock};
pub use q6_k::{dequantize_row_q6_k, quantize_row_q6_k_ref, vec_dot_q6_k_q8_k, Q6_KBlock};
pub use q8_0::{dequantize_row_q8_0, quantize_row_q8_0_ref, vec_dot_q8_0_q8_0, Q8_0Block};
pub use q8_1::{dequantize_row_q8_1, quantize_row_q8_1_ref, Q8_1Block};
pub use q8_k::{dequantize_row_q8_k, quantize_row_q8_k_ref, Q8_KBlock};
pub use rounding::{bf16_to_fp32, fp32_to_bf16};

// Blocks are read from file bytes by reinterpretation: GGUF data is little-endian.
#[cfg(target_endian = "big")]
compile_error!("tinygptv-kernels reads little-endian GGUF block data in place; big-endian targets are not supported");

/// Errors of the type-erased entry points.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{op} is not implemented for tensor type {ty}")]
    Unsupported { ty: GgmlType, op: &'static str },
    #[error("{ty}: {n} elements is not a whole number of {block}-element blocks")]
    NotWholeBlocks {
        ty: GgmlType,
        n: usize,
        block: usize,
    },
    #[error("{ty}: {n} elements take {expected} bytes, but the buffer holds {actual}")]
    ByteLength {
        ty: GgmlType,
        n: usize,
        expected: usize,
        actual: usize,
    },
    #[error("{ty}: a row of {n} elements does not fit in memory")]
    TooLarge { ty: GgmlType, n: usize },
    #[error("{what}: expected {expected} elements, got {actual}")]
    Length {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("{what}: size overflows usize")]
    Overflow { what: &'static str },
}
