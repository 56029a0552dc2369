//! Reference matrix multiply built on the per-format dot products.
