//! GGUF v3 container: reading and writing.
