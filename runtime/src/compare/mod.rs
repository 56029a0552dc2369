//! Quantization accuracy: the statistics of llama.cpp's `llama-perplexity --kl-divergence`
//! (perplexity, KL divergence, top-1 agreement, Δp; gguf.md §8.3), its `.kld` base-logits file,
//! the chunked evaluation of a language model over a text, and the visual-token error metrics
//! of a quantized vision tower.
//!
//! The math lives here (and is unit-tested against straightforward formulas); the
//! `tinygptv compare` command drives it.

pub mod eval;
pub mod kld_file;
pub mod stats;
pub mod visual;

pub use kld_file::{KldHeader, KldReader, KldWriter};
pub use stats::{KldStats, KldSummary, TokenScore};
pub use visual::{VisualDiff, VisualStats, VisualSummary};
