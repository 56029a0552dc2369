//! The CUDA C sources (`kernels/cuda/*.cu`, embedded at build time) and the kernels each defines.

/// Headers the `.cu` files include by name (`#include "common.cuh"`), given to NVRTC as
/// in-memory headers.
pub const HEADERS: [(&str, &str); 2] = [
    ("common.cuh", include_str!("../../cuda/common.cuh")),
    ("dequant.cuh", include_str!("../../cuda/dequant.cuh")),
];

/// One CUDA C translation unit: compiled by NVRTC into one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceFile {
    /// File name under `kernels/cuda/`.
    pub name: &'static str,
    pub source: &'static str,
    /// The `extern "C"` kernels it defines.
    pub kernels: &'static [&'static str],
}

/// Every kernel source file.
pub const FILES: [SourceFile; 6] = [
    SourceFile {
        name: "elementwise.cu",
        source: include_str!("../../cuda/elementwise.cu"),
        kernels: &[
            "quantize_q8_1",
            "split_blocks",
            "convert_f32_f16_pad",
            "copy_f32_f16_2d",
            "copy_f32_2d",
            "gelu_tanh_f32",
            "gelu_erf_f32",
            "add_f32",
            "add3_f32",
            "scale_f32",
            "add_bias_f32",
            "get_rows_f32",
            "get_rows_f16",
            "get_rows_bf16",
            "get_rows_q4_0",
            "get_rows_q4_1",
            "get_rows_q5_0",
            "get_rows_q5_1",
            "get_rows_q8_0",
            "get_rows_q4_0s",
            "get_rows_q8_0s",
            "get_rows_q4_k",
            "get_rows_q5_k",
            "get_rows_q6_k",
            "argmax_f32",
            "spin_ns",
        ],
    },
    SourceFile {
        name: "gemv.cu",
        source: include_str!("../../cuda/gemv.cu"),
        kernels: &[
            "gemv_q4_0_q8_1",
            "gemv_q4_0_q8_1_r2",
            "gemv_q4_0_q8_1_u2",
            "gemv_q4_0_q8_1_r2_u2",
            "gemv_q4_1_q8_1",
            "gemv_q4_1_q8_1_r2",
            "gemv_q4_1_q8_1_u2",
            "gemv_q4_1_q8_1_r2_u2",
            "gemv_q5_0_q8_1",
            "gemv_q5_0_q8_1_r2",
            "gemv_q5_0_q8_1_u2",
            "gemv_q5_0_q8_1_r2_u2",
            "gemv_q5_1_q8_1",
            "gemv_q5_1_q8_1_r2",
            "gemv_q5_1_q8_1_u2",
            "gemv_q5_1_q8_1_r2_u2",
            "gemv_q8_0_q8_1",
            "gemv_q8_0_q8_1_r2",
            "gemv_q8_0_q8_1_u2",
            "gemv_q8_0_q8_1_r2_u2",
            "gemv_q4_0s_q8_1",
            "gemv_q4_0s_q8_1_r2",
            "gemv_q4_0s_q8_1_u2",
            "gemv_q4_0s_q8_1_r2_u2",
            "gemv_q8_0s_q8_1",
            "gemv_q8_0s_q8_1_r2",
            "gemv_q8_0s_q8_1_u2",
            "gemv_q8_0s_q8_1_r2_u2",
            "gemv_q4_k_q8_1",
            "gemv_q4_k_q8_1_r2",
            "gemv_q4_k_q8_1_u2",
            "gemv_q4_k_q8_1_r2_u2",
            "gemv_q5_k_q8_1",
            "gemv_q5_k_q8_1_r2",
            "gemv_q5_k_q8_1_u2",
            "gemv_q5_k_q8_1_r2_u2",
            "gemv_q6_k_q8_1",
            "gemv_q6_k_q8_1_r2",
            "gemv_q6_k_q8_1_u2",
            "gemv_q6_k_q8_1_r2_u2",
            "gemv_f32",
            "gemv_f16",
            "gemv_bf16",
        ],
    },
    SourceFile {
        name: "gemm.cu",
        source: include_str!("../../cuda/gemm.cu"),
        kernels: &[
            "gemm_f32_f16",
            "gemm_f16_f16",
            "gemm_bf16_f16",
            "gemm_q4_0_f16",
            "gemm_q4_1_f16",
            "gemm_q5_0_f16",
            "gemm_q5_1_f16",
            "gemm_q8_0_f16",
            "gemm_q4_0s_f16",
            "gemm_q8_0s_f16",
            "gemm_q4_k_f16",
            "gemm_q5_k_f16",
            "gemm_q6_k_f16",
        ],
    },
    SourceFile {
        name: "norm.cu",
        source: include_str!("../../cuda/norm.cu"),
        kernels: &["layer_norm_f32", "rms_norm_f32"],
    },
    SourceFile {
        name: "rope.cu",
        source: include_str!("../../cuda/rope.cu"),
        kernels: &["rope_neox_f32"],
    },
    SourceFile {
        name: "attention.cu",
        source: include_str!("../../cuda/attention.cu"),
        kernels: &[
            "attention_f16kv",
            "attention_f32kv",
            "attention_decode_f16kv",
            "attention_decode_f32kv",
            "attention_combine",
        ],
    },
];

/// The file that defines `kernel`.
pub fn file_of(kernel: &str) -> Option<&'static SourceFile> {
    FILES.iter().find(|f| f.kernels.contains(&kernel))
}

/// FNV-1a over every source and header: the key of compiled-module caches.
pub fn source_hash() -> u64 {
    let mut h = Fnv::new();
    for (name, src) in HEADERS {
        h.write(name.as_bytes());
        h.write(src.as_bytes());
    }
    for f in FILES {
        h.write(f.name.as_bytes());
        h.write(f.source.as_bytes());
    }
    h.finish()
}

/// 64-bit FNV-1a (stable across Rust versions, unlike `DefaultHasher`).
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // separator, so ("ab", "c") and ("a", "bc") differ
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}
