//! GGUF model loading, tokenizer, Phi-2 / TinyGPT-V forward pass, vision tower and generation.
