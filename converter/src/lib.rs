//! Checkpoint readers (safetensors, PyTorch zip/pickle) and the GGUF converter.
