//! The CUDA backend of the runtime (feature `cuda`, issue #9), on top of the kernels of
//! `kernels::cuda`:
//!
//! - [`CudaPhi2`] keeps every Phi-2 / TinyGPT-V weight (or those of the first layers) and the
//!   f16 KV cache in device memory and runs the forward pass there, copying only the input
//!   embeddings in and the logits (or the hidden state at a partial-offload split) out;
//! - [`CudaLm`] is the generation loop's `LmBackend` over it, finishing a partial offload's
//!   remaining layers and LM head on the CPU;
//! - [`CudaVision`] is the vision tower (ViT, Q-Former, projections) on the device.
//!
//! The `--device` parser [`DeviceChoice`] lives in `crate::backend` (every build has it).

pub mod lm;
pub mod phi2;
pub mod vision;

pub use crate::backend::DeviceChoice;
pub use lm::CudaLm;
pub use phi2::CudaPhi2;
pub use vision::CudaVision;
