//! One module per subcommand.

pub mod bench;
pub mod chat;
pub mod common;
pub mod compare;
pub mod convert;
pub mod embed_image;
pub mod info;
pub mod logits;
pub mod run;
pub mod synth;
pub mod tokenize;
