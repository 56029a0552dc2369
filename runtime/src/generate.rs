//! Generation loop: batched prompt processing, then one token at a time with the KV cache,
//! sampling, stop tokens and stop strings, and streaming of complete UTF-8 text.

use std::time::Instant;

use anyhow::{bail, Result};

use crate::backend::{CpuLm, LmBackend};
use crate::kv_cache::KvCache;
use crate::model::phi2::Phi2Model;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops when one of these ids is produced (it is not part of the output).
    pub stop_ids: Vec<u32>,
    /// Generation stops when the text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prompt_ms: f64,
    pub prompt_tokens_per_s: f64,
    pub generated_tokens: usize,
    pub generation_ms: f64,
    pub generation_tokens_per_s: f64,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub timings: Timings,
    /// "stop_token", "stop_string", "length" or "context".
    pub stop_reason: &'static str,
}

/// Length of the longest suffix of `text` that is a proper prefix of some stop string:
/// that much text must be held back while streaming.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                hold = hold.max(i);
            }
        }
    }
    hold
}

/// Generates after the prompt embeddings `prompt` (`[T, n_embd]`), calling `on_text` with each
/// new piece of visible text. `penalty_ids` seeds the repetition-penalty set (the prompt ids for
/// a text prompt, spec §11 for image prompts). The CPU forward pass over `cache`; see
/// [`generate_with`] for any [`LmBackend`].
pub fn generate(
    model: &Phi2Model,
    tok: &Tokenizer,
    cache: &mut KvCache,
    prompt: Vec<f32>,
    penalty_ids: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let mut lm = CpuLm { model, cache };
    generate_with(&mut lm, tok, prompt, penalty_ids, opts, on_text)
}

/// [`generate`] on any language-model backend (CPU, GPU, partial offload), appending to its KV
/// cache. New tokens are embedded on the host.
pub fn generate_with(
    lm: &mut dyn LmBackend,
    tok: &Tokenizer,
    prompt: Vec<f32>,
    penalty_ids: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let e = lm.config().n_embd;
    let n_prompt = prompt.len() / e;
    if n_prompt == 0 {
        bail!("the prompt is empty");
    }
    let mut sampler = Sampler::new(opts.sampling.clone());
    let mut timings = Timings {
        prompt_tokens: n_prompt,
        ..Default::default()
    };

    let t0 = Instant::now();
    let mut logits = lm.forward(prompt, false)?;
    timings.prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let mut seen: Vec<u32> = penalty_ids.to_vec();
    let mut tokens = Vec::new();
    let mut decoder = StreamDecoder::new(tok);
    let mut text = String::new();
    let mut emitted = 0; // bytes of `text` already passed to on_text
    let mut stop_reason = "length";
    while tokens.len() < opts.max_new_tokens {
        let id = sampler.sample(&mut logits, &seen);
        if opts.stop_ids.contains(&id) {
            stop_reason = "stop_token";
            break;
        }
        tokens.push(id);
        seen.push(id);
        text.push_str(&decoder.push(id));
        if let Some(cut) = opts
            .stop_strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(cut);
            stop_reason = "stop_string";
            break;
        }
        let visible = text.len() - held_back(&text, &opts.stop_strings);
        if visible > emitted {
            on_text(&text[emitted..visible]);
            emitted = visible;
        }
        if tokens.len() == opts.max_new_tokens {
            break;
        }
        if lm.len() >= lm.n_ctx() {
            stop_reason = "context";
            break;
        }
        let x = lm.embed_tokens(&[id])?;
        logits = lm.forward(x, false)?;
    }
    if stop_reason != "stop_string" {
        text.push_str(&decoder.finish());
    }
    if text.len() > emitted {
        on_text(&text[emitted..]);
    }
    timings.generated_tokens = tokens.len();
    timings.generation_ms = t1.elapsed().as_secs_f64() * 1e3;
    timings.prompt_tokens_per_s = n_prompt as f64 / (timings.prompt_ms / 1e3).max(1e-9);
    timings.generation_tokens_per_s = tokens.len() as f64 / (timings.generation_ms / 1e3).max(1e-9);
    Ok(Generation {
        text,
        tokens,
        timings,
        stop_reason,
    })
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn held_back_is_longest_partial_stop() {
        let stops = vec!["###".to_string(), "<|end|>".to_string()];
        assert_eq!(held_back("hello #", &stops), 1);
        assert_eq!(held_back("hello ##", &stops), 2);
        assert_eq!(held_back("hello <|e", &stops), 3);
        assert_eq!(held_back("hello", &stops), 0);
    }
}
