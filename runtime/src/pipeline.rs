//! TinyGPT-V end to end: render the prompt, split it at `<ImageHere>`, tokenize each piece
//! without BOS, splice the visual tokens in between, and feed the embeddings to Phi-2.

use anyhow::{bail, Result};

use crate::model::phi2::Phi2Model;
use crate::prompt::split_at_image;
use crate::tokenizer::Tokenizer;

/// The spliced input sequence.
pub struct SplicedPrompt {
    /// `[T_total, n_embd]` input embeddings.
    pub embeddings: Vec<f32>,
    /// Token ids of each text piece, in order.
    pub pieces: Vec<Vec<u32>>,
    /// Total number of positions.
    pub n_positions: usize,
}

/// Builds the input embeddings for `prompt` with one image's `visual` tokens
/// (`[n_query, n_embd]`) at each `<ImageHere>`; `visual` may be empty for a text-only prompt.
pub fn splice(
    model: &Phi2Model,
    tok: &Tokenizer,
    prompt: &str,
    visual: &[f32],
) -> Result<SplicedPrompt> {
    let e = model.cfg.n_embd;
    if !visual.len().is_multiple_of(e) {
        bail!(
            "the visual tokens are {}-wide but the language model's embedding width is {e}: vision and language files do not belong together",
            if visual.is_empty() { 0 } else { visual.len() }
        );
    }
    let texts = split_at_image(prompt);
    let n_images = texts.len() - 1;
    if n_images > 0 && visual.is_empty() {
        bail!("the prompt has an <ImageHere> placeholder but no image was given");
    }
    let mut embeddings = Vec::new();
    let mut pieces = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let ids = tok.encode(text, true);
        embeddings.extend(model.embed_tokens(&ids)?);
        pieces.push(ids);
        if i < n_images {
            embeddings.extend_from_slice(visual);
        }
    }
    let n_positions = embeddings.len() / e;
    if n_positions == 0 {
        bail!("the prompt is empty");
    }
    Ok(SplicedPrompt {
        embeddings,
        pieces,
        n_positions,
    })
}
