//! GGUF model loading, tokenizer, Phi-2 / TinyGPT-V forward pass, vision tower and generation.

pub mod arch;
pub mod attention;
pub mod backend;
pub mod boxes;
pub mod compare;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod draw;
pub mod generate;
pub mod image;
pub mod kv_cache;
pub mod linear;
pub mod llm;
pub mod model;
pub mod npy;
pub mod ops;
pub mod pipeline;
pub mod pool;
pub mod prompt;
pub mod sampling;
pub mod tokenizer;
pub mod vision;
