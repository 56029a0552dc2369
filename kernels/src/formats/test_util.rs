//! Shared helpers for the inline format tests: deterministic test data and f64 references.

/// A small deterministic generator (xorshift64*), so tests need no seed plumbing.
pub(crate) struct Lcg(u64);

impl Lcg {
    pub(crate) fn new(seed: u64) -> Lcg {
        Lcg(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    pub(crate) fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Roughly normal (sum of four uniforms, unit variance).
    pub(crate) fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * 0.866
    }
}

/// `n` values: normal noise whose scale changes every `group` elements (from 1e-2 to 10), with
/// an all-zero group and a constant group mixed in, so scale searches see varied blocks.
pub(crate) fn test_data(n: usize, group: usize, seed: u64) -> Vec<f32> {
    let mut rng = Lcg::new(seed);
    let mut out = Vec::with_capacity(n);
    for g in 0..n.div_ceil(group) {
        let scale = 10f32.powf(rng.uniform() * 1.5 - 0.5);
        for _ in 0..group {
            let v = match g % 11 {
                3 => 0.0,
                7 => 0.75 * scale,
                _ => rng.normal() * scale,
            };
            out.push(v);
        }
    }
    out.truncate(n);
    out
}

/// f64 dot product of two f32 slices.
pub(crate) fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// f64 dot of the absolute values (the scale for a relative tolerance on a dot product).
pub(crate) fn abs_dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 * y as f64).abs())
        .sum()
}

/// The round-trip bound of the "scale and min" K-quants (Q4_K, Q5_K): per 32-value sub-block,
/// about half of one of the `steps` steps over `[min(0, lo), hi]`, plus the 6-bit quantization
/// of the sub-block's scale and min relative to the super-block's (`sb_range / 63`).
pub(crate) fn assert_k_round_trip(x: &[f32], y: &[f32], super_block: usize, steps: f32) {
    let range = |xs: &[f32]| {
        let (lo, hi) = xs
            .iter()
            .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
        hi - lo
    };
    for (xb, yb) in x.chunks(super_block).zip(y.chunks(super_block)) {
        let sb_range = xb.chunks(32).map(range).fold(0f32, f32::max);
        for (xs, ys) in xb.chunks(32).zip(yb.chunks(32)) {
            let err = max_abs_diff(xs, ys);
            assert!(
                err <= range(xs) / steps + sb_range / 63.0,
                "err {err} {}",
                range(xs)
            );
        }
    }
}

/// The largest `|a − b|` over two slices.
pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}
