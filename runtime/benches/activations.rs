//! Time per value of the element-wise and row-wise f32 operations of the vision tower, on one
//! thread, at its shapes (EVA ViT-g at 224: 257 tokens, width 1408, MLP 6144; 16 heads).
//!
//! Run: `cargo bench -p tinygptv-runtime --bench activations` (on a quiet machine: the figures
//! are wall-clock; the best of several passes is printed).

use std::hint::black_box;
use std::time::Instant;

use runtime::ops::{self, Activation};

/// Best time per value over `passes` runs of `f` on a fresh copy of `x`, in ns.
fn ns_per_value(x: &[f32], passes: usize, f: impl Fn(&mut [f32])) -> f64 {
    let mut best = f64::INFINITY;
    let mut y = x.to_vec();
    for _ in 0..passes {
        y.copy_from_slice(x);
        let t = Instant::now();
        f(black_box(&mut y));
        best = best.min(t.elapsed().as_secs_f64());
    }
    black_box(&y);
    best * 1e9 / x.len() as f64
}

fn main() {
    // deterministic values spread like pre-activations (roughly ±6)
    let mlp: Vec<f32> = (0..257 * 6144)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / (1 << 24) as f32)
        .map(|u| (u - 0.5) * 12.0)
        .collect();
    let scores = &mlp[..16 * 257 * 257];
    let width = 1408;
    let w = vec![1.0f32; width];
    let b = vec![0.0f32; width];
    println!("one thread, best of 10 passes");
    println!("{:<28} {:>9}", "operation", "ns/value");
    let rows = [
        (
            "gelu_erf (257 x 6144)",
            ns_per_value(&mlp, 10, |x| Activation::GeluErf.apply(x)),
        ),
        (
            "gelu_tanh (257 x 6144)",
            ns_per_value(&mlp, 10, |x| Activation::GeluTanh.apply(x)),
        ),
        (
            "softmax (16 x 257 rows)",
            ns_per_value(scores, 10, |x| {
                x.chunks_exact_mut(257).for_each(ops::softmax)
            }),
        ),
        (
            "layer_norm (257 x 1408)",
            ns_per_value(&mlp[..257 * width], 10, |x| {
                ops::layer_norm(x, width, &w, Some(&b), 1e-6)
            }),
        ),
    ];
    for (name, ns) in rows {
        println!("{name:<28} {ns:>9.3}");
    }
}
