//! Per-token scores of a model against a base distribution and their summary statistics, as
//! `llama-perplexity --kl-divergence` reports them (gguf.md §8.3): perplexity of both, their
//! ratio and difference with uncertainties, KL(P_base‖P_Q) mean ± error and percentiles,
//! Δp = p_Q(correct) − p_base(correct) statistics, RMS Δp and the top-1 agreement.
//!
//! Differences from llama.cpp, all deliberate: log-softmax is done in f64 (llama.cpp mixes f32
//! and f64), and uncertainties need 2 samples instead of 11. The base distribution is exact
//! when the base model runs in the same process, or the 16-bit log-probs of a `.kld` file.

use anyhow::{bail, Result};
use serde::Serialize;

/// Base log-probabilities at or below this are left out of the KL divergence (llama.cpp's
/// cut, matching the 16-nat range of the `.kld` records).
pub const LOG_PROB_FLOOR: f64 = -16.0;

/// One scored position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenScore {
    /// −log p_Q(next token).
    pub nll: f64,
    /// −log p_base(next token).
    pub nll_base: f64,
    /// KL(P_base ‖ P_Q) over the base entries above [`LOG_PROB_FLOOR`].
    pub kld: f64,
    /// p_Q(next token) − p_base(next token).
    pub p_diff: f64,
    /// Both distributions have the same most likely token.
    pub same_top: bool,
}

/// Log-softmax of one row of logits in f64; returns the index of the largest logit (the first
/// one on ties). Fails on NaN or infinite logits.
pub fn log_softmax(logits: &[f32], out: &mut Vec<f64>) -> Result<usize> {
    if logits.is_empty() {
        bail!("empty logits row");
    }
    let mut top = 0;
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_finite() {
            bail!("the logits contain NaN or infinity (entry {i})");
        }
        if l > logits[top] {
            top = i;
        }
    }
    let max = logits[top] as f64;
    let lse = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    out.clear();
    out.extend(logits.iter().map(|&l| l as f64 - lse));
    Ok(top)
}

/// Scores the logits `q_logits` of a model at one position against the base log-probs
/// `base_lp` (whose most likely entry is `base_top`), for the true next token `tok`.
/// `scratch` is a reusable buffer.
pub fn score_token(
    base_lp: &[f64],
    base_top: usize,
    q_logits: &[f32],
    tok: usize,
    scratch: &mut Vec<f64>,
) -> Result<TokenScore> {
    if base_lp.len() != q_logits.len() {
        bail!(
            "the vocabularies differ ({} base entries, {} model logits)",
            base_lp.len(),
            q_logits.len()
        );
    }
    if tok >= base_lp.len() {
        bail!(
            "token id {tok} is not below the vocabulary size {}",
            base_lp.len()
        );
    }
    let q_top = log_softmax(q_logits, scratch)?;
    let q_lp = &scratch[..];
    let kld: f64 = base_lp
        .iter()
        .zip(q_lp)
        .filter(|(&b, _)| b > LOG_PROB_FLOOR)
        .map(|(&b, &q)| b.exp() * (b - q))
        .sum();
    let nll = -q_lp[tok];
    let nll_base = -base_lp[tok];
    Ok(TokenScore {
        nll,
        nll_base,
        kld,
        p_diff: (-nll).exp() - (-nll_base).exp(),
        same_top: q_top == base_top,
    })
}

/// Mean and the standard error of the mean from a sum and a sum of squares.
pub fn mean_and_error(sum: f64, sum2: f64, n: usize) -> (f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = sum / n as f64;
    let var = sum2 / n as f64 - mean * mean;
    let err = if var > 0.0 && n > 1 {
        (var / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    (mean, err)
}

/// Linear-interpolated percentile of sorted values, as llama.cpp computes it
/// (`fraction·(n−1)` between neighbours).
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let ip = p as usize;
    let frac = p - ip as f64;
    (1.0 - frac) * sorted[ip] + frac * sorted[(ip + 1).min(sorted.len() - 1)]
}

/// Running sums over scored tokens (llama.cpp's `kl_divergence_result`) plus every token's
/// KLD and Δp for the percentiles.
#[derive(Clone, Debug, Default)]
pub struct KldStats {
    pub count: usize,
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    n_same_top: usize,
    kld_values: Vec<f64>,
    p_diff_values: Vec<f64>,
}

/// What `llama-perplexity --kl-divergence` prints, as numbers. Probabilities and fractions
/// are in 0..1 (not percent). Field names are part of `tinygptv compare --json`.
#[derive(Clone, Debug, Serialize)]
pub struct KldSummary {
    pub n_tokens: usize,
    pub ppl: f64,
    pub ppl_err: f64,
    pub ppl_base: f64,
    pub ppl_base_err: f64,
    /// PPL(Q) − PPL(base).
    pub delta_ppl: f64,
    pub delta_ppl_err: f64,
    pub ppl_ratio: f64,
    pub ppl_ratio_err: f64,
    pub ln_ppl_ratio: f64,
    pub ln_ppl_ratio_err: f64,
    /// Correlation of the per-token ln-likelihoods (NaN → null when undefined).
    pub cor_ln_ppl: f64,
    pub kld_mean: f64,
    pub kld_err: f64,
    pub kld_max: f64,
    pub kld_p999: f64,
    pub kld_p99: f64,
    pub kld_p95: f64,
    pub kld_p90: f64,
    pub kld_median: f64,
    pub kld_p10: f64,
    pub kld_p05: f64,
    pub kld_p01: f64,
    pub kld_p001: f64,
    pub kld_min: f64,
    pub dp_mean: f64,
    pub dp_mean_err: f64,
    pub dp_max: f64,
    pub dp_p999: f64,
    pub dp_p99: f64,
    pub dp_p95: f64,
    pub dp_p90: f64,
    pub dp_p75: f64,
    pub dp_median: f64,
    pub dp_p25: f64,
    pub dp_p10: f64,
    pub dp_p05: f64,
    pub dp_p01: f64,
    pub dp_p001: f64,
    pub dp_min: f64,
    pub rms_dp: f64,
    pub rms_dp_err: f64,
    pub same_top_p: f64,
    pub same_top_p_err: f64,
}

impl KldStats {
    pub fn push(&mut self, s: &TokenScore) {
        self.count += 1;
        self.sum_nll += s.nll;
        self.sum_nll2 += s.nll * s.nll;
        self.sum_nll_base += s.nll_base;
        self.sum_nll_base2 += s.nll_base * s.nll_base;
        self.sum_nll_nll_base += s.nll * s.nll_base;
        self.sum_kld += s.kld;
        self.sum_kld2 += s.kld * s.kld;
        self.sum_p_diff += s.p_diff;
        let d2 = s.p_diff * s.p_diff;
        self.sum_p_diff2 += d2;
        self.sum_p_diff4 += d2 * d2;
        self.n_same_top += s.same_top as usize;
        self.kld_values.push(s.kld);
        self.p_diff_values.push(s.p_diff);
    }

    /// The statistics so far; None before the first token.
    pub fn summary(&self) -> Option<KldSummary> {
        let n = self.count;
        if n == 0 {
            return None;
        }
        let (ln_ppl, ln_ppl_err) = mean_and_error(self.sum_nll, self.sum_nll2, n);
        let (ln_base, ln_base_err) = mean_and_error(self.sum_nll_base, self.sum_nll_base2, n);
        let cov = if n > 1 {
            (self.sum_nll_nll_base / n as f64 - ln_ppl * ln_base) / (n - 1) as f64
        } else {
            0.0
        };
        let ppl = ln_ppl.exp();
        let ppl_err = ppl * ln_ppl_err;
        let ppl_base = ln_base.exp();
        let ppl_base_err = ppl_base * ln_base_err;
        let ln_ratio = ln_ppl - ln_base;
        let ln_ratio_err = (ln_ppl_err.powi(2) + ln_base_err.powi(2) - 2.0 * cov)
            .max(0.0)
            .sqrt();
        let ppl_cov = ppl * ppl_base * cov;
        let cor = if ln_ppl_err > 0.0 && ln_base_err > 0.0 {
            cov / (ln_ppl_err * ln_base_err)
        } else {
            f64::NAN
        };
        let (kld_mean, kld_err) = mean_and_error(self.sum_kld, self.sum_kld2, n);
        let (dp_mean, dp_mean_err) = mean_and_error(self.sum_p_diff, self.sum_p_diff2, n);
        let (mse, mse_err) = mean_and_error(self.sum_p_diff2, self.sum_p_diff4, n);
        let rms_dp = mse.sqrt();
        let rms_dp_err = if rms_dp > 0.0 {
            0.5 / rms_dp * mse_err
        } else {
            0.0
        };
        let same = self.n_same_top as f64 / n as f64;
        let same_err = if n > 1 {
            (same * (1.0 - same) / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let mut k = self.kld_values.clone();
        k.sort_by(f64::total_cmp);
        let mut d = self.p_diff_values.clone();
        d.sort_by(f64::total_cmp);
        let kp = |f: f64| percentile(&k, f);
        let dpp = |f: f64| percentile(&d, f);
        Some(KldSummary {
            n_tokens: n,
            ppl,
            ppl_err,
            ppl_base,
            ppl_base_err,
            delta_ppl: ppl - ppl_base,
            delta_ppl_err: (ppl_err.powi(2) + ppl_base_err.powi(2) - 2.0 * ppl_cov)
                .max(0.0)
                .sqrt(),
            ppl_ratio: ln_ratio.exp(),
            ppl_ratio_err: ln_ratio.exp() * ln_ratio_err,
            ln_ppl_ratio: ln_ratio,
            ln_ppl_ratio_err: ln_ratio_err,
            cor_ln_ppl: cor,
            kld_mean,
            kld_err,
            kld_max: kp(1.0),
            kld_p999: kp(0.999),
            kld_p99: kp(0.99),
            kld_p95: kp(0.95),
            kld_p90: kp(0.90),
            kld_median: kp(0.5),
            kld_p10: kp(0.10),
            kld_p05: kp(0.05),
            kld_p01: kp(0.01),
            kld_p001: kp(0.001),
            kld_min: kp(0.0),
            dp_mean,
            dp_mean_err,
            dp_max: dpp(1.0),
            dp_p999: dpp(0.999),
            dp_p99: dpp(0.99),
            dp_p95: dpp(0.95),
            dp_p90: dpp(0.90),
            dp_p75: dpp(0.75),
            dp_median: dpp(0.5),
            dp_p25: dpp(0.25),
            dp_p10: dpp(0.10),
            dp_p05: dpp(0.05),
            dp_p01: dpp(0.01),
            dp_p001: dpp(0.001),
            dp_min: dpp(0.0),
            rms_dp,
            rms_dp_err,
            same_top_p: same,
            same_top_p_err: same_err,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::kld_file::{decode_log_probs, encode_log_probs, record_words};

    fn row(n: usize, seed: u64, spread: f32) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * spread
            })
            .collect()
    }

    /// Straightforward softmax in f64.
    fn probs(l: &[f32]) -> Vec<f64> {
        let e: Vec<f64> = l.iter().map(|&x| (x as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    }

    #[test]
    fn self_comparison_is_exactly_zero() {
        let mut st = KldStats::default();
        let (mut lp, mut scratch) = (Vec::new(), Vec::new());
        for p in 0..50 {
            let r = row(300, p, 20.0);
            let top = log_softmax(&r, &mut lp).unwrap();
            let s = score_token(&lp, top, &r, (p as usize * 7) % 300, &mut scratch).unwrap();
            assert_eq!(s.kld, 0.0);
            assert_eq!(s.p_diff, 0.0);
            assert!(s.same_top);
            assert_eq!(s.nll, s.nll_base);
            st.push(&s);
        }
        let sum = st.summary().unwrap();
        assert_eq!(sum.kld_mean, 0.0);
        assert_eq!(sum.kld_max, 0.0);
        assert_eq!(sum.same_top_p, 1.0);
        assert_eq!(sum.same_top_p_err, 0.0);
        assert_eq!(sum.delta_ppl, 0.0);
        assert_eq!(sum.rms_dp, 0.0);
        assert!((sum.cor_ln_ppl - 1.0).abs() < 1e-9);
        assert_eq!(sum.ppl, sum.ppl_base);
    }

    #[test]
    fn kld_and_ppl_match_the_textbook_formulas() {
        let mut st = KldStats::default();
        let (mut lp, mut scratch) = (Vec::new(), Vec::new());
        let (mut nll_sum, mut kld_sum, mut same) = (0.0f64, 0.0f64, 0usize);
        let mut klds = Vec::new();
        let n = 40;
        for p in 0..n {
            // spread 8: every base probability is above e^-16, so the floor cuts nothing
            let b = row(64, 1000 + p, 8.0);
            let q: Vec<f32> = b
                .iter()
                .zip(row(64, 5000 + p, 1.0))
                .map(|(x, e)| x + e)
                .collect();
            let tok = (p as usize * 13) % 64;
            let top = log_softmax(&b, &mut lp).unwrap();
            let s = score_token(&lp, top, &q, tok, &mut scratch).unwrap();
            st.push(&s);
            let (pb, pq) = (probs(&b), probs(&q));
            let kld: f64 = pb.iter().zip(&pq).map(|(a, c)| a * (a / c).ln()).sum();
            assert!((s.kld - kld).abs() < 1e-12, "{} vs {kld}", s.kld);
            assert!((s.nll + pq[tok].ln()).abs() < 1e-12);
            assert!((s.p_diff - (pq[tok] - pb[tok])).abs() < 1e-12);
            let am = |v: &[f64]| (0..v.len()).fold(0, |m, i| if v[i] > v[m] { i } else { m });
            same += (am(&pb) == am(&pq)) as usize;
            nll_sum -= pq[tok].ln();
            kld_sum += kld;
            klds.push(kld);
        }
        let sum = st.summary().unwrap();
        assert!((sum.ppl - (nll_sum / n as f64).exp()).abs() < 1e-9 * sum.ppl);
        assert!((sum.kld_mean - kld_sum / n as f64).abs() < 1e-12);
        assert_eq!(sum.same_top_p, same as f64 / n as f64);
        assert!(
            sum.same_top_p < 1.0 && sum.kld_mean > 0.0,
            "the test must exercise disagreement"
        );
        // sample standard error of the KLD mean
        let m = kld_sum / n as f64;
        let var = klds.iter().map(|k| (k - m).powi(2)).sum::<f64>() / n as f64;
        assert!((sum.kld_err - (var / (n - 1) as f64).sqrt()).abs() < 1e-12);
        klds.sort_by(f64::total_cmp);
        assert!((sum.kld_max - klds[n as usize - 1]).abs() < 1e-12);
        assert!((sum.kld_min - klds[0]).abs() < 1e-12);
        assert!((sum.kld_median - 0.5 * (klds[19] + klds[20])).abs() < 1e-12);
        assert!(
            (sum.kld_p90 - (0.9 * klds[35] + 0.1 * klds[36])).abs() < 1e-12,
            "0.9·39 = 35.1"
        );
    }

    #[test]
    fn floor_drops_tiny_base_probabilities() {
        // base: one dominant token and one at −30 nats; Q moves mass to the tiny one
        let b = [30.0f32, 0.0, 29.0];
        let q = [30.0f32, 25.0, 29.0];
        let (mut lp, mut scratch) = (Vec::new(), Vec::new());
        let top = log_softmax(&b, &mut lp).unwrap();
        let s = score_token(&lp, top, &q, 0, &mut scratch).unwrap();
        let (pb, pq) = (probs(&b), probs(&q));
        let kept: f64 = [0, 2].iter().map(|&i| pb[i] * (pb[i] / pq[i]).ln()).sum();
        assert!((s.kld - kept).abs() < 1e-12);
    }

    #[test]
    fn packed_base_is_close_to_exact() {
        let (mut lp, mut dec, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        for p in 0..20 {
            let b = row(1001, p, 24.0);
            let mut rec = vec![0u16; record_words(b.len())];
            encode_log_probs(&b, &mut rec).unwrap();
            let top_packed = decode_log_probs(&rec, b.len(), &mut dec);
            let top = log_softmax(&b, &mut lp).unwrap();
            assert_eq!(top, top_packed);
            for (x, y) in lp.iter().zip(&dec).filter(|(x, _)| **x > -16.0) {
                assert!((x - y).abs() < 2.5e-4, "{x} vs {y}");
            }
            let s = score_token(&dec, top_packed, &b, 3, &mut scratch).unwrap();
            assert!(
                s.kld.abs() < 5e-5,
                "self KLD through the 16-bit record: {}",
                s.kld
            );
            assert!(s.same_top);
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert!((percentile(&[0.0, 10.0], 0.9) - 9.0).abs() < 1e-12);
        assert_eq!(percentile(&[0.0, 10.0], 1.5), 10.0);
        let (m, e) = mean_and_error(6.0, 14.0, 3); // 1, 2, 3
        assert_eq!(m, 2.0);
        assert!((e - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!(KldStats::default().summary().is_none());
        let mut sc = Vec::new();
        assert!(score_token(&[0.0, -1.0], 0, &[1.0, f32::NAN], 0, &mut sc).is_err());
        assert!(score_token(&[0.0, -1.0], 0, &[1.0, 2.0, 3.0], 0, &mut sc).is_err());
        assert!(score_token(&[0.0, -1.0], 0, &[1.0, 2.0], 2, &mut sc).is_err());
    }
}
