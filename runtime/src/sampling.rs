//! Token sampling with HF `generate` semantics (spec §11): repetition penalty → temperature →
//! top-k → top-p → min-p → softmax → draw. Temperature 0 means greedy.

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            seed: 0,
        }
    }
}

/// SplitMix64: small, fast and fully reproducible across platforms and crate versions.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
}

/// HF `RepetitionPenaltyLogitsProcessor`: every id in `seen` (each once) gets
/// `l < 0 ? l·p : l/p`.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::new();
    for &id in seen {
        if let Some(l) = logits.get_mut(id as usize) {
            if done.insert(id) {
                *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
            }
        }
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler { params, rng }
    }

    /// Picks the next token from `logits` (modified in place); `seen` are the ids the
    /// repetition penalty applies to.
    pub fn sample(&mut self, logits: &mut [f32], seen: &[u32]) -> u32 {
        let p = &self.params;
        apply_repetition_penalty(logits, seen, p.repeat_penalty);
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        if p.temperature != 1.0 {
            logits.iter_mut().for_each(|l| *l /= p.temperature);
        }
        // candidates sorted by logit, descending (stable: lower id first on ties)
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
        // top-p (HF): drop tokens whose ascending cumulative probability is ≤ 1 − top_p,
        // i.e. keep the smallest descending prefix whose mass reaches top_p; keep at least one.
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, &q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
            probs.truncate(keep.max(1));
        }
        // min-p (llama.cpp): drop tokens below min_p × the top probability.
        if p.min_p > 0.0 {
            let cut = probs[0] * p.min_p as f64;
            let keep = probs.iter().take_while(|&&q| q >= cut).count().max(1);
            cand.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (c, &q) in cand.iter().zip(&probs) {
            if r < q {
                return c.0;
            }
            r -= q;
        }
        cand[cand.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_hf_semantics() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn greedy_and_top_k_1() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[]), 1);
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.1, 3.0, 2.9], &[]), 1);
        }
    }

    #[test]
    fn top_p_keeps_nucleus_only() {
        // probs ≈ [0.665, 0.245, 0.090]; top_p 0.8 keeps the first two
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.8,
            min_p: 0.0,
            repeat_penalty: 1.0,
            seed: 7,
        });
        let mut counts = [0; 3];
        for _ in 0..2000 {
            counts[s.sample(&mut [2.0, 1.0, 0.0], &[]) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        // 0.665/(0.665+0.245) = 0.73
        let frac = counts[0] as f64 / 2000.0;
        assert!((frac - 0.731).abs() < 0.04, "{frac}");
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            seed: 42,
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..50)
                .map(|_| s.sample(&mut [0.0, 0.1, 0.2, 0.3], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(&params), draw(&params));
    }
}
