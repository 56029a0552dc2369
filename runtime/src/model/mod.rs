//! Model definitions, one per file.

pub mod phi2;
pub mod vision;
