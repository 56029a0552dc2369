//! GGUF model loading, tokenizer, Phi-2 / TinyGPT-V forward pass, vision tower and generation.

pub mod arch;
pub mod kv_cache;
pub mod linear;
pub mod model;
pub mod ops;
pub mod sampling;
pub mod generate;
pub mod llm;
pub mod npy;
pub mod image;
pub mod vision;
pub mod boxes;
pub mod prompt;
pub mod pipeline;
pub mod draw;
pub mod tokenizer;
pub mod compare;
