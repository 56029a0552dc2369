//! tinygptv kernels: tensor block formats, reference (scalar) kernels, and the GGUF container.
//!
//! Layout (one concern per folder):
//! - [`types`]: the `ggml_type` ids, block sizes and byte sizes every other module agrees on.
//! - [`formats`]: one file per block format (layout, reference quantize / dequantize, dot products).
//! - [`matmul`]: the reference matrix multiply built on the per-format dot products.
//! - [`repack`]: load-time row-interleaved ("×16") weight layouts for the decode and prompt
//!   kernels.
//! - [`simd`]: the CPU kernels chosen at run time (AVX2, AVX-512 VNNI, NEON dotprod; scalar
//!   fallback) for activation quantization and multi-row × multi-column matrix products.
//! - [`gguf`]: the GGUF v3 container, reading (memory-mapped, zero-copy) and writing (streamed).
//! - `cuda` (feature `cuda`): the NVIDIA backend, CUDA C kernels in `kernels/cuda/` compiled by
//!   NVRTC at first use, with the driver and NVRTC loaded at run time.
//!
//! The GGUF module lives here because both the converter (writer) and the runtime (reader) depend
//! on this crate only, and the format shares its type ids with the block formats.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod formats;
pub mod gguf;
pub mod matmul;
pub mod repack;
pub mod simd;
pub mod types;

pub use types::GgmlType;
