//! Loading a language-model GGUF: the model, its tokenizer and its stored generation defaults.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use kernels::gguf::GgufFile;

use crate::arch;
use crate::model::phi2::Phi2Model;
use crate::tokenizer::Tokenizer;

/// Builds the tokenizer from `tokenizer.ggml.*` metadata (gguf.md §3).
pub fn tokenizer_from_gguf(f: &GgufFile) -> Result<Tokenizer> {
    let name = f.path().display().to_string();
    let model = f.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        anyhow::bail!(
            "{name}: tokenizer model '{model}' is not supported (only gpt2 byte-level BPE)"
        );
    }
    let tokens: Vec<String> = f
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_string_array())
        .ok_or_else(|| anyhow!("{name}: tokenizer.ggml.tokens missing or not an array of strings"))?
        .into_iter()
        .map(str::to_string)
        .collect();
    let types: Vec<i32> = match f.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .as_i32_array()
            .ok_or_else(|| anyhow!("{name}: tokenizer.ggml.token_type is not an array of INT32"))?,
        None => vec![1; tokens.len()],
    };
    let merges: Vec<String> = f
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.as_string_array())
        .ok_or_else(|| {
            anyhow!("{name}: tokenizer.ggml.merges missing (required for gpt2 tokenizers)")
        })?
        .into_iter()
        .map(str::to_string)
        .collect();
    let id = |k: &str| f.get(k).and_then(|v| v.as_u32());
    Tokenizer::from_parts(
        tokens,
        types,
        merges,
        id("tokenizer.ggml.bos_token_id"),
        id("tokenizer.ggml.eos_token_id"),
    )
    .map_err(|e| anyhow!("{name}: bad tokenizer metadata: {e}"))
}

/// Generation defaults stored by the converter (`tinygptv.generation.*`), when present.
#[derive(Clone, Debug, Default)]
pub struct StoredDefaults {
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub max_new_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub prompt_template: Option<String>,
}

pub fn stored_defaults(f: &GgufFile) -> StoredDefaults {
    let f32v = |k: &str| f.get(k).and_then(|v| v.as_f32());
    let u32v = |k: &str| f.get(k).and_then(|v| v.as_u32());
    StoredDefaults {
        temperature: f32v(arch::KEY_GEN_TEMPERATURE),
        top_k: u32v(arch::KEY_GEN_TOP_K),
        top_p: f32v(arch::KEY_GEN_TOP_P),
        repeat_penalty: f32v(arch::KEY_GEN_REPEAT_PENALTY),
        max_new_tokens: u32v(arch::KEY_GEN_MAX_NEW_TOKENS),
        stop: f
            .get(arch::KEY_GEN_STOP)
            .and_then(|v| v.as_string_array())
            .map(|v| v.into_iter().map(str::to_string).collect())
            .unwrap_or_default(),
        prompt_template: f
            .get(arch::KEY_PROMPT_TEMPLATE)
            .and_then(|v| v.as_str())
            .map(str::to_string),
    }
}

pub struct LanguageModel {
    pub model: Phi2Model,
    pub tokenizer: Tokenizer,
    pub defaults: StoredDefaults,
}

/// Opens and loads a language-model GGUF (phi2 or tinygptv).
pub fn load_language_model(path: &Path) -> Result<LanguageModel> {
    let file = GgufFile::open(path).with_context(|| format!("loading model {}", path.display()))?;
    let tokenizer = tokenizer_from_gguf(&file)?;
    let defaults = stored_defaults(&file);
    let model = Phi2Model::load(file)?;
    Ok(LanguageModel {
        model,
        tokenizer,
        defaults,
    })
}
