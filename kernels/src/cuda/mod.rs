//! The CUDA backend (feature `cuda`, issue #9): CUDA C kernels compiled at run time by NVRTC,
//! launched through the CUDA driver, both loaded dynamically, so the crate builds and its tests
//! pass on machines without CUDA.
//!
//! - `kernels/cuda/*.cu` (embedded by [`sources`]): quantized GEMV over Q8_1 activations with
//!   dp4a (decode), a tiled f16 tensor-core GEMM that dequantizes weight tiles (prompts, vision),
//!   LayerNorm / RMSNorm, NeoX RoPE, flash-style softmax attention over f16 or f32 keys and
//!   values, GELU (erf, tanh), adds, the embedding gather (all weight formats), Q8_1
//!   quantization, f16 conversion and argmax. Block layouts are those of [`crate::formats`].
//! - [`nvrtc`]: NVRTC loaded from `TINYGPTV_NVRTC_LIB`, the loader path or the CUDA toolkit.
//! - [`Device`]: a GPU (`Device::cuda(ordinal)`, which returns [`CudaError::NoDriver`] instead of
//!   panicking when no driver is installed) or the CPU emulator (`Device::emulator()`, tests);
//!   modules are compiled once per process at first use and cached on disk
//!   ([`device::cache_dir`]).
//! - [`ops`]: one typed, shape-checked wrapper per kernel, plus [`Device::matmul`] which picks
//!   GEMV or GEMM, and [`DeviceWeight`] uploads.

#[cfg(test)]
mod bench;
pub mod device;
mod driver;
mod emu;
pub mod nvrtc;
pub mod ops;
pub mod sources;
#[cfg(test)]
mod tests;

pub use device::{cache_dir, DevSlice, Device, DeviceBuffer};
pub use driver::{device_count, driver_present};
pub use nvrtc::{Compiled, Nvrtc, Target};
pub use ops::{
    is_supported_weight, q8_1_bytes, q8_1_row_stride, AttentionShape, DeviceWeight, GemvVariant,
    KvSlices, Rows, Scratch, ATTENTION_MAX_HEAD_DIM, GEMV_MAX_COLS,
};

/// Errors of the CUDA backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver found (libcuda.so could not be loaded); run with --device cpu")]
    NoDriver,
    #[error("CUDA device {ordinal} does not exist ({count} CUDA devices found)")]
    NoSuchDevice { ordinal: usize, count: usize },
    #[error("NVRTC (the CUDA run-time compiler) is not available: {0}")]
    NoNvrtc(String),
    #[error("CUDA driver call {what} failed: {err}")]
    Driver { what: String, err: String },
    #[error("NVRTC could not compile kernels/cuda/{file} for {arch}: {log}")]
    Compile {
        file: String,
        arch: String,
        log: String,
    },
    #[error("out of memory allocating {bytes} bytes")]
    OutOfMemory { bytes: usize },
    #[error("CUDA kernel arguments: {0}")]
    Shape(String),
    #[error("not supported by the CUDA backend: {0}")]
    Unsupported(String),
    #[error("CUDA emulator: {0}")]
    Emulator(String),
    #[error("no C++ compiler for the CUDA emulator: {0}")]
    NoCompiler(String),
}
