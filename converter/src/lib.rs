//! Checkpoint readers (safetensors, PyTorch zip/pickle) and the GGUF converter.

pub mod checkpoint;
pub mod hf;
pub mod interleave;
pub mod interp;
pub mod phi2;
pub mod pickle;
pub mod plan;
pub mod policy;
pub mod requantize;
pub mod safetensors;
pub mod synth;
pub mod torch;
pub mod vision;

pub use checkpoint::{
    detect_format, load_state_dict, CheckpointError, CheckpointFormat, CheckpointTensor, DType,
    StateDict,
};
pub use hf::{HfModelDir, HfTokenizerFiles, HfWeights};
pub use torch::{TorchCheckpoint, TorchFormat};
