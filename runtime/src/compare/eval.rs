//! Running a language model the way `llama-perplexity` does: the text's tokens cut into
//! chunks of `n_ctx`, each chunk evaluated from an empty cache, and only the second half of
//! each chunk scored (position j predicts token j+1 for j in `n_ctx/2 .. n_ctx−1`).

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::kld_file::{decode_log_probs, first_scored, record_words, scored_positions};
use super::stats::{log_softmax, score_token, TokenScore};
use crate::kv_cache::KvCache;
use crate::model::phi2::Phi2Model;

/// Number of whole `n_ctx`-token chunks in `n_tokens` tokens, at most `max_chunks`.
pub fn n_chunks(n_tokens: usize, n_ctx: usize, max_chunks: Option<usize>) -> Result<usize> {
    if n_ctx < 4 {
        bail!("the context must be at least 4 tokens (got {n_ctx})");
    }
    let n = n_tokens / n_ctx;
    if n == 0 {
        bail!(
            "the text has {n_tokens} tokens, fewer than one {n_ctx}-token chunk (use a longer text or a smaller --ctx)"
        );
    }
    Ok(match max_chunks {
        Some(m) if m > 0 => n.min(m),
        _ => n,
    })
}

/// Logits `[tokens.len(), n_vocab]` at every position of `tokens`, from an emptied `cache`.
pub fn sequence_logits(model: &Phi2Model, cache: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>> {
    cache.len = 0;
    model.forward(model.embed_tokens(tokens)?, cache, true)
}

/// Logits at every position of a sequence given as input embeddings `[T, n_embd]`.
pub fn embedding_logits(
    model: &Phi2Model,
    cache: &mut KvCache,
    embeddings: Vec<f32>,
) -> Result<Vec<f32>> {
    cache.len = 0;
    model.forward(embeddings, cache, true)
}

/// The base distribution of a run of positions.
#[derive(Clone, Copy)]
pub enum BaseRows<'a> {
    /// The base model's logits, one `n_vocab` row per position.
    Logits(&'a [f32]),
    /// `.kld` records, one per position.
    Packed(&'a [u16]),
}

/// Scores `q_logits` (one `n_vocab` row per position) against the base rows; row i predicts
/// `targets[i]`. Positions are scored in parallel; the result is in order.
pub fn score_rows(
    base: BaseRows,
    q_logits: &[f32],
    targets: &[u32],
    n_vocab: usize,
) -> Result<Vec<TokenScore>> {
    let n = targets.len();
    if n_vocab == 0 || q_logits.len() != n * n_vocab {
        bail!(
            "the model's logits are {} values, expected {n}×{n_vocab}",
            q_logits.len()
        );
    }
    let nv = record_words(n_vocab);
    match base {
        BaseRows::Logits(b) if b.len() != n * n_vocab => {
            bail!(
                "the base logits are {} values, expected {n}×{n_vocab}",
                b.len()
            )
        }
        BaseRows::Packed(p) if p.len() != n * nv => {
            bail!("the base records are {} words, expected {n}×{nv}", p.len())
        }
        _ => {}
    }
    (0..n)
        .into_par_iter()
        .map_init(
            || (Vec::with_capacity(n_vocab), Vec::with_capacity(n_vocab)),
            |(lp, scratch), i| {
                let top = match base {
                    BaseRows::Logits(b) => log_softmax(&b[i * n_vocab..(i + 1) * n_vocab], lp)
                        .with_context(|| format!("base model, position {i}"))?,
                    BaseRows::Packed(p) => decode_log_probs(&p[i * nv..(i + 1) * nv], n_vocab, lp),
                };
                score_token(
                    lp,
                    top,
                    &q_logits[i * n_vocab..(i + 1) * n_vocab],
                    targets[i] as usize,
                    scratch,
                )
                .with_context(|| format!("position {i}"))
            },
        )
        .collect()
}

/// Scores one chunk: `q_logits` are the model's logits at all `tokens.len()` positions; `base`
/// holds either the base model's logits at all positions or the chunk's `.kld` records (the
/// scored positions only).
pub fn score_chunk(
    base: BaseRows,
    q_logits: &[f32],
    tokens: &[u32],
    n_vocab: usize,
) -> Result<Vec<TokenScore>> {
    let n_ctx = tokens.len();
    let (first, n) = (first_scored(n_ctx), scored_positions(n_ctx));
    let rows = |l: &[f32]| -> Result<std::ops::Range<usize>> {
        if l.len() != n_ctx * n_vocab {
            bail!(
                "chunk logits are {} values, expected {n_ctx}×{n_vocab}",
                l.len()
            );
        }
        Ok(first * n_vocab..(first + n) * n_vocab)
    };
    let q = &q_logits[rows(q_logits)?];
    let base = match base {
        BaseRows::Logits(b) => BaseRows::Logits(&b[rows(b)?]),
        packed => packed,
    };
    score_rows(base, q, &tokens[first + 1..first + 1 + n], n_vocab)
}

/// Greedy continuation of the input embeddings: up to `n` tokens, stopping after a token in
/// `stop`. Uses `cache` from empty.
pub fn greedy_tokens(
    model: &Phi2Model,
    cache: &mut KvCache,
    embeddings: Vec<f32>,
    n: usize,
    stop: &[u32],
) -> Result<Vec<u32>> {
    cache.len = 0;
    let mut out = Vec::new();
    let mut logits = model.forward(embeddings, cache, false)?;
    let mut lp = Vec::new();
    while out.len() < n {
        let tok = log_softmax(&logits, &mut lp)? as u32;
        out.push(tok);
        if stop.contains(&tok) || out.len() == n || cache.len >= cache.n_ctx {
            break;
        }
        logits = model.forward(model.embed_tokens(&[tok])?, cache, false)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::kld_file::encode_log_probs;

    #[test]
    fn chunk_counts() {
        assert_eq!(n_chunks(1000, 256, None).unwrap(), 3);
        assert_eq!(n_chunks(1000, 256, Some(2)).unwrap(), 2);
        assert_eq!(n_chunks(1000, 256, Some(0)).unwrap(), 3);
        assert!(n_chunks(100, 256, None).is_err());
        assert!(n_chunks(100, 2, None).is_err());
    }

    #[test]
    fn chunk_scoring_uses_the_second_half() {
        let (n_ctx, v) = (6usize, 5usize);
        let tokens = [0u32, 1, 2, 3, 4, 0];
        // row j favours token j+1 strongly in the base; Q is the base with row 3 changed
        let base: Vec<f32> = (0..n_ctx)
            .flat_map(|j| (0..v).map(move |k| if k == (j + 1) % v { 5.0 } else { 0.0 }))
            .collect();
        let mut q = base.clone();
        q[3 * v] = 9.0;
        let s = score_chunk(BaseRows::Logits(&base), &q, &tokens, v).unwrap();
        assert_eq!(s.len(), 2, "positions 3 and 4 of a 6-token chunk");
        assert!(s[0].kld > 0.0 && !s[0].same_top);
        assert_eq!(s[1].kld, 0.0);
        assert!(s[1].same_top);
        // token 4 follows position 3, token 0 follows position 4
        let p = |row: &[f32], t: usize| {
            let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
            (row[t] as f64).exp() / z
        };
        assert!((s[0].nll + p(&q[3 * v..4 * v], 4).ln()).abs() < 1e-12);
        assert!((s[1].nll_base + p(&base[4 * v..5 * v], 0).ln()).abs() < 1e-12);

        // the same through packed records of the scored rows
        let nv = record_words(v);
        let mut packed = vec![0u16; 2 * nv];
        for (i, j) in (3..5).enumerate() {
            encode_log_probs(&base[j * v..(j + 1) * v], &mut packed[i * nv..(i + 1) * nv]).unwrap();
        }
        let sp = score_chunk(BaseRows::Packed(&packed), &q, &tokens, v).unwrap();
        for (a, b) in s.iter().zip(&sp) {
            assert!((a.kld - b.kld).abs() < 1e-4 && a.same_top == b.same_top);
            assert!((a.nll_base - b.nll_base).abs() < 2e-4);
        }
        assert!(score_chunk(BaseRows::Logits(&base[..10]), &q, &tokens, v).is_err());
        assert!(score_chunk(BaseRows::Packed(&packed[..3]), &q, &tokens, v).is_err());
    }
}
