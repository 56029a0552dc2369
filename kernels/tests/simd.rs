//! SIMD kernels (kernels::simd) against the scalar reference (kernels::formats), at every
//! level this CPU supports (forced with `kernels_for`, whatever `TINYGPTV_CPU` says).
//!
//! - Activation quantizers (Q8_0, Q8_1, Q8_K): byte-identical to `formats::quantize_row`.
//! - Quantized weight types: `gemm` / `vec_dot` bit-identical to `formats::vec_dot` (NaN results
//!   compare as NaN), on reference-quantized and on random-byte weights (every stored value,
//!   extreme and zero scales), zero blocks, odd row counts, activation counts that are not
//!   multiples of the 8 × 4 tile, unaligned buffers; with ≥ 8 activation rows (the packed GEMM
//!   at AVX-512): partial 16-row tiles, partial groups of activation rows and chunks of blocks,
//!   more activation rows than one group of the K-quant kernels takes, hand-made Q8_K bytes
//!   (−128; `bsums` beyond what the quantizer writes, which those kernels decline).
//! - Q4_0 / Q8_0 / Q4_K / Q5_K / Q6_K weights repacked into the ×16 layouts (`kernels::repack`): the same exact
//!   results from `gemm_repacked`, over all rows and from the second 16-row group on.
//! - Float weight types (F32, F16, BF16): within the f32-summation bound
//!   `(min(k, 64) + k/8 + 16)·2⁻²⁴·Σ|w·x|` of the reference's f64 sums (the tiles sum 8 or 16
//!   lanes of `k/8` or `k/16` products each; the packed AVX-512 GEMM, from 8 activation rows,
//!   sums chunks of 64 values in order and adds up the chunks).

use half::{bf16, f16};
use kernels::formats::{self, row_bytes};
use kernels::repack::{RepackLayout, RepackedMatrix};
use kernels::simd::{self, kernels_for, CpuKernels, Level};
use kernels::GgmlType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const QUANTIZED: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];
const FLOATS: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];

/// Every level this CPU runs, plus the AMX table with emulated tile instructions where AVX-512
/// VNNI runs (so the AMX kernels' layout and driver are tested on CPUs without AMX too).
fn levels() -> Vec<&'static CpuKernels> {
    let mut v: Vec<_> = Level::ALL.iter().filter_map(|&l| kernels_for(l)).collect();
    v.extend(simd::amx_emulated_kernels());
    eprintln!(
        "levels tested: {:?}",
        v.iter()
            .map(|k| format!(
                "{}{}",
                k.level(),
                if k.is_emulated() {
                    " (emulated tiles)"
                } else {
                    ""
                }
            ))
            .collect::<Vec<_>>()
    );
    v
}

/// Normal-ish noise whose magnitude changes every `group` values.
fn noise(rng: &mut StdRng, n: usize, group: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let scale = 10f32.powf(rng.random_range(-2.0..1.5));
        for _ in 0..group.min(n - out.len()) {
            let u: f32 = (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum();
            out.push(u * scale);
        }
    }
    out
}

/// Activation rows with edge cases: plain noise, all zero, huge, tiny (subnormal f16 scales),
/// exact rounding ties, equal magnitudes of both signs, infinities.
fn activation_rows(rng: &mut StdRng, m: usize, k: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(m * k);
    for row in 0..m {
        let mut r = match row % 7 {
            1 => vec![0.0; k],
            2 => noise(rng, k, 32).iter().map(|v| v * 1e4).collect(),
            3 => noise(rng, k, 32).iter().map(|v| v * 1e-6).collect(),
            4 => {
                // amax 127 per block: x·(1/d) = x, so halves are exact ties
                (0..k)
                    .map(|i| {
                        if i % 32 == 0 {
                            127.0
                        } else {
                            rng.random_range(-100i32..100) as f32 + 0.5
                        }
                    })
                    .collect()
            }
            5 => (0..k)
                .map(|i| {
                    if i % 5 == 0 {
                        -3.0
                    } else {
                        3.0 * (i % 3) as f32 / 2.0
                    }
                })
                .collect(),
            _ => noise(rng, k, 32),
        };
        if row == 6 {
            r[k / 2] = f32::INFINITY;
        }
        x.extend(r);
    }
    x
}

#[test]
fn level_parsing_and_override() {
    assert_eq!(Level::parse("scalar"), Some(Level::Scalar));
    assert_eq!(Level::parse(" AVX512 "), Some(Level::Avx512));
    assert_eq!(Level::parse("avx2"), Some(Level::Avx2));
    assert_eq!(Level::parse("neon"), Some(Level::Neon));
    assert_eq!(Level::parse("AMX"), Some(Level::Amx));
    assert_eq!(Level::parse("sse9"), None);
    let detected = simd::detected_level();
    assert!(detected.is_supported());
    assert!(simd::cpu_level() <= detected);
    assert_eq!(simd::level_for_override(None), detected);
    assert_eq!(simd::level_for_override(Some("bogus")), detected);
    assert_eq!(simd::level_for_override(Some("scalar")), Level::Scalar);
    for l in Level::ALL {
        let got = simd::level_for_override(Some(l.name()));
        assert!(got.is_supported(), "{l} -> {got}");
        if !l.exists_on_this_arch() {
            // another architecture's level is ignored like an unknown value
            assert_eq!(got, detected, "{l}");
        } else if l.is_supported() {
            assert_eq!(got, l);
        } else {
            assert!(got < l, "{l} -> {got}");
        }
    }
    assert!(kernels_for(Level::Scalar).is_some());
    assert_eq!(simd::kernels().level(), simd::cpu_level());
    #[cfg(target_arch = "x86_64")]
    {
        assert!(!Level::Neon.is_supported());
        assert!(kernels_for(Level::Neon).is_none());
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(Level::Avx2.is_supported());
        }
        // AMX sits above AVX-512 and needs it
        if Level::Amx.is_supported() {
            assert!(Level::Avx512.is_supported());
            assert_eq!(simd::detected_level(), Level::Amx);
            assert_eq!(simd::level_for_override(Some("avx512")), Level::Avx512);
        } else {
            assert!(kernels_for(Level::Amx).is_none());
        }
        let emulated = simd::amx_emulated_kernels();
        assert_eq!(emulated.is_some(), Level::Avx512.is_supported());
        if let Some(k) = emulated {
            assert!(k.is_emulated() && k.level() == Level::Amx);
        }
        eprintln!("AMX usable here: {}", Level::Amx.is_supported());
    }
}

#[test]
fn simd_levels_have_kernels() {
    for kern in levels() {
        if kern.level() == Level::Scalar {
            continue;
        }
        for ty in QUANTIZED.iter().chain(&FLOATS) {
            // NEON runs the float weight types with the scalar reference
            if kern.level() == Level::Neon && FLOATS.contains(ty) {
                continue;
            }
            assert!(kern.has_simd_kernel(*ty), "{} {ty}", kern.level());
        }
        for at in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
            assert!(kern.has_simd_quantizer(at), "{} {at}", kern.level());
        }
        // the packed GEMM (exercised by the shapes with ≥ 8 activation rows)
        if matches!(kern.level(), Level::Avx512 | Level::Amx) {
            for ty in [
                GgmlType::Q4_0,
                GgmlType::Q5_0,
                GgmlType::Q8_0,
                GgmlType::Q4_K,
                GgmlType::Q5_K,
                GgmlType::Q6_K,
                GgmlType::F32,
                GgmlType::F16,
                GgmlType::BF16,
            ] {
                assert!(kern.has_packed_gemm(ty), "{} {ty} packed", kern.level());
            }
            for layout in [
                RepackLayout::Q4_0x16,
                RepackLayout::Q8_0x16,
                RepackLayout::Q4_Kx16,
                RepackLayout::Q5_Kx16,
                RepackLayout::Q6_Kx16,
            ] {
                assert!(kern.has_repacked_gemm(layout), "{layout:?}");
            }
        }
        if kern.level() == Level::Avx2 {
            assert!(kern.has_repacked_gemm(RepackLayout::Q4_0x16));
            assert!(kern.has_repacked_gemm(RepackLayout::Q4_Kx16));
        }
        // NEON reads the ×16 layouts of `tinygptv repack` files in place
        if kern.level() == Level::Neon {
            for layout in RepackLayout::ALL {
                assert!(kern.has_repacked_gemm(layout), "neon {layout:?}");
            }
        }
    }
}

#[test]
fn activation_quantizers_match_reference_bytes() {
    let mut rng = StdRng::seed_from_u64(7);
    for k in [256usize, 512, 1024] {
        let m = 9;
        let mut x = activation_rows(&mut rng, m, k);
        // extra single-element extremes
        x[3] = f32::MAX;
        x[k + 40] = -f32::MAX;
        x[2 * k + 7] = 1e-40; // subnormal in an all-zero row
        x[4 * k + 1] = -0.0;
        for weight_ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K] {
            let at = weight_ty.vec_dot_type();
            let rb = row_bytes(at, k).unwrap();
            let mut want = vec![0u8; m * rb];
            for (xr, yr) in x.chunks(k).zip(want.chunks_mut(rb)) {
                formats::quantize_row(at, xr, yr).unwrap();
            }
            for kern in levels() {
                let mut got = vec![0u8; m * rb + 1];
                // odd offset: the kernels must not assume alignment
                kern.quantize_activations(weight_ty, &x, k, &mut got[1..])
                    .unwrap();
                for row in 0..m {
                    assert_eq!(
                        &got[1 + row * rb..1 + (row + 1) * rb],
                        &want[row * rb..(row + 1) * rb],
                        "{} {at} k={k} row {row}",
                        kern.level()
                    );
                }
            }
        }
    }
}

#[test]
fn q8_k_keeps_the_sign_of_the_first_largest_magnitude() {
    let mut x = vec![0.5f32; 256];
    x[10] = 3.0;
    x[200] = -3.0;
    let mut y = x.clone();
    y[10] = -3.0;
    y[200] = 3.0;
    for kern in levels() {
        for v in [&x, &y] {
            let mut got = vec![0u8; 292];
            kern.quantize_activations(GgmlType::Q4_K, v, 256, &mut got)
                .unwrap();
            let mut want = vec![0u8; 292];
            formats::quantize_row(GgmlType::Q8_K, v, &mut want).unwrap();
            assert_eq!(got, want, "{}", kern.level());
        }
    }
}

/// Random bytes with every f16 scale field replaced by a finite value from a spread of
/// magnitudes (zero, subnormal, largest, negative); block `b % 5 == 3` is all zero.
fn random_weights(rng: &mut StdRng, ty: GgmlType, n: usize, k: usize) -> Vec<u8> {
    let bs = ty.type_size();
    let nb = n * k / ty.block_size();
    let mut w = vec![0u8; nb * bs];
    rng.fill(&mut w[..]);
    let f16_fields: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => unreachable!(),
    };
    let scales = [0.0f32, 1.0, 0.01, -0.37, 6e-8, 65504.0, 3e-3, -2.5];
    for (b, blk) in w.chunks_mut(bs).enumerate() {
        if b % 5 == 3 {
            blk.fill(0);
            continue;
        }
        if b % 4 == 1 && !ty.name().ends_with("_k") {
            // all values near one end: large integer dots with many significant bits, where a
            // different order of the f32 operations would round differently
            let pick: [u8; 4] = if b % 8 == 1 {
                [0x00, 0x01, 0x10, 0x11]
            } else {
                [0xee, 0xef, 0xfe, 0xff]
            };
            for v in blk.iter_mut() {
                *v = pick[rng.random_range(0..4)];
            }
        }
        for &off in f16_fields {
            let s = if rng.random_range(0..3) == 0 {
                scales[rng.random_range(0..scales.len())]
            } else {
                rng.random_range(-4.0f32..4.0)
            };
            blk[off..off + 2].copy_from_slice(&f16::from_f32(s).to_le_bytes());
        }
    }
    w
}

fn reference_quantized(rng: &mut StdRng, ty: GgmlType, n: usize, k: usize) -> Vec<u8> {
    let x = noise(rng, n * k, 32);
    let mut w = vec![0u8; row_bytes(ty, n * k).unwrap()];
    formats::quantize_row(ty, &x, &mut w).unwrap();
    w
}

fn float_weights(rng: &mut StdRng, ty: GgmlType, n: usize, k: usize) -> Vec<u8> {
    let x = noise(rng, n * k, 16);
    match ty {
        GgmlType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => x
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => x
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => unreachable!(),
    }
}

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Σ|w·x| over dequantized rows (the scale of float rounding errors).
fn abs_dot(ty: GgmlType, k: usize, w_row: &[u8], x: &[f32]) -> f64 {
    let mut wd = vec![0f32; k];
    formats::dequantize_row(ty, w_row, &mut wd).unwrap();
    wd.iter()
        .zip(x)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum()
}

/// `gemm` at every level equals the reference dots (exact, or within the float bound).
fn check_gemm(ty: GgmlType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize, what: &str) {
    let w_rb = row_bytes(ty, k).unwrap();
    let at = ty.vec_dot_type();
    let a_rb = row_bytes(at, k).unwrap();
    let mut act = vec![0u8; m * a_rb];
    for (xr, ar) in x.chunks(k).zip(act.chunks_mut(a_rb)) {
        formats::quantize_row(at, xr, ar).unwrap();
    }
    let want = reference_products(ty, k, w, n, &act, m);
    // unaligned copies
    let mut w_odd = vec![0u8; w.len() + 1];
    w_odd[1..].copy_from_slice(w);
    let mut a_odd = vec![0u8; act.len() + 3];
    a_odd[3..].copy_from_slice(&act);
    let float = FLOATS.contains(&ty);
    for kern in levels() {
        for (wb, ab) in [(w, &act[..]), (&w_odd[1..], &a_odd[3..])] {
            let mut got = vec![f32::NAN; m * n];
            kern.gemm(ty, k, wb, n, ab, m, &mut got).unwrap();
            for c in 0..m {
                for r in 0..n {
                    let (g, e) = (got[c * n + r], want[c * n + r]);
                    let ctx =
                        || format!("{} {ty} {what} n={n} k={k} m={m} [{c}][{r}]", kern.level());
                    if float {
                        let xr = &x[c * k..(c + 1) * k];
                        let scale = abs_dot(ty, k, &w[r * w_rb..(r + 1) * w_rb], xr);
                        let ulps = k.min(64) as f64 + k as f64 / 8.0 + 16.0;
                        let tol = ulps * f64::powi(2.0, -24) * scale;
                        assert!(
                            (g as f64 - e as f64).abs() <= tol || same_f32(g, e),
                            "{}: {g} vs {e} (tol {tol})",
                            ctx()
                        );
                    } else {
                        assert!(same_f32(g, e), "{}: {g} vs {e}", ctx());
                    }
                }
            }
        }
        // vec_dot is the 1 × 1 case
        let v = kern.vec_dot(ty, k, &w[..w_rb], &act[..a_rb]);
        if !float {
            assert!(same_f32(v, want[0]), "{} {ty} vec_dot", kern.level());
        }
        check_repacked(kern, ty, w, n, k, &act, m, &want, what);
    }
}

/// `want[c·n + r]`: the scalar `vec_dot` of weight row `r` and activation row `c` (the
/// reference every kernel must equal bit for bit).
fn reference_products(
    ty: GgmlType,
    k: usize,
    w: &[u8],
    n: usize,
    act: &[u8],
    m: usize,
) -> Vec<f32> {
    let w_rb = row_bytes(ty, k).unwrap();
    let a_rb = row_bytes(ty.vec_dot_type(), k).unwrap();
    let mut want = vec![0f32; m * n];
    for c in 0..m {
        for r in 0..n {
            want[c * n + r] = formats::vec_dot(
                ty,
                k,
                &w[r * w_rb..(r + 1) * w_rb],
                &act[c * a_rb..(c + 1) * a_rb],
            );
        }
    }
    want
}

/// The same product on the ×16 repacked layout (where the type has one): all rows, and the rows from the
/// second 16-row group on, as the threaded matmul splits them.
#[allow(clippy::too_many_arguments)]
fn check_repacked(
    kern: &CpuKernels,
    ty: GgmlType,
    w: &[u8],
    n: usize,
    k: usize,
    act: &[u8],
    m: usize,
    want: &[f32],
    what: &str,
) {
    if RepackLayout::for_type(ty).is_none() {
        return;
    }
    let packed = RepackedMatrix::new(ty, w, n, k).unwrap();
    for row0 in [0, 16] {
        if row0 >= n {
            continue;
        }
        let rows = n - row0;
        let mut got = vec![f32::NAN; m * rows];
        kern.gemm_repacked(&packed, row0, rows, act, m, &mut got)
            .unwrap();
        for c in 0..m {
            for r in 0..rows {
                let (g, e) = (got[c * rows + r], want[c * n + row0 + r]);
                assert!(
                    same_f32(g, e),
                    "{} {ty} repacked {what} n={n} k={k} m={m} row0={row0} [{c}][{r}]: {g} vs {e}",
                    kern.level()
                );
            }
        }
    }
    // a start inside a group is an error, not a wrong answer
    if n > 1 {
        let mut out = vec![0f32; m * (n - 1)];
        assert!(kern
            .gemm_repacked(&packed, 1, n - 1, act, m, &mut out)
            .is_err());
    }
}

fn shapes(ty: GgmlType) -> Vec<(usize, usize, usize)> {
    let kb = ty.block_size().max(32);
    // (n, k, m): odd row counts, counts that are not tile multiples, one-block rows
    vec![
        (1, kb, 1),
        (8, kb * 3, 4),
        (13, kb * 2, 5),
        (19, kb * 5, 9),
        (7, kb * 4, 3),
        (16, kb, 2),
        // 4 + 2 activation rows on a partial group of 3 row quads (the NEON ×16 kernel's
        // two-row pass)
        (11, kb * 2, 6),
        // many activation rows (the packed GEMM at AVX-512; from 16, the AVX2 level packs
        // 16-row groups per call): full and partial 16-row tiles, full and partial groups of
        // 8 activation rows
        (16, kb * 2, 8),
        (37, kb * 3, 21),
        (5, kb, 13),
        // the AMX tiles (16 activation rows, two blocks at a time): whole tiles, an odd block
        // count, tails of 1 and 15 rows
        (16, kb * 4, 16),
        (21, kb * 3, 33),
        (17, kb * 5, 47),
    ]
}

#[test]
fn quantized_gemm_matches_reference_exactly() {
    let mut rng = StdRng::seed_from_u64(11);
    for ty in QUANTIZED {
        for (n, k, m) in shapes(ty) {
            let x = activation_rows(&mut rng, m, k);
            let w = reference_quantized(&mut rng, ty, n, k);
            check_gemm(ty, &w, n, k, &x, m, "quantized");
            let w = random_weights(&mut rng, ty, n, k);
            check_gemm(ty, &w, n, k, &x, m, "random bytes");
        }
    }
}

#[test]
fn many_random_blocks_match_reference_exactly() {
    // enough large integer dots with full-mantissa scales that a change in the order of the
    // f32 operations would show
    let mut rng = StdRng::seed_from_u64(14);
    // (12 activation rows: packed VNNI GEMM / AMX tail tile; 40: whole AMX tiles too)
    for (ty, m) in QUANTIZED.iter().flat_map(|&ty| [(ty, 12), (ty, 40)]) {
        let (n, k) = (24, 4096);
        let mut x = noise(&mut rng, m * k, 32);
        // one row of large positive values (quantized to 100..127, scale 0.37/127)
        for v in x[k..2 * k].iter_mut() {
            *v = rng.random_range(100..=127) as f32 * 0.37 / 127.0;
        }
        let w = random_weights(&mut rng, ty, n, k);
        check_gemm(ty, &w, n, k, &x, m, "many random");
    }
}

#[test]
fn long_rows_match_reference_exactly() {
    // Phi-2-like row length; all activation rows plain noise; few activation rows (tiles) and
    // many (packed GEMM at AVX-512: several chunks of super-blocks per row)
    let mut rng = StdRng::seed_from_u64(12);
    for ty in QUANTIZED {
        for (n, k, m) in [(9, 2560, 6), (21, 2560, 10)] {
            let x = noise(&mut rng, m * k, 64);
            let w = reference_quantized(&mut rng, ty, n, k);
            check_gemm(ty, &w, n, k, &x, m, "long");
        }
    }
}

#[test]
fn rows_longer_than_one_k_chunk_match_reference_exactly() {
    // the packed GEMMs split rows of more than 80 blocks into chunks and continue each
    // chunk's sums from the output: 81 blocks (two uneven chunks) and 320 (Phi-2's MLP down
    // projection, four), with full and partial panels of activation rows and a partial tile
    let mut rng = StdRng::seed_from_u64(16);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_1,
    ] {
        for (n, k, m) in [(19, 32 * 81, 11), (16, 10240, 8)] {
            let x = noise(&mut rng, m * k, 32);
            let w = random_weights(&mut rng, ty, n, k);
            check_gemm(ty, &w, n, k, &x, m, "k chunks");
        }
    }
}

#[test]
fn many_activation_rows_match_reference_exactly() {
    // more activation rows than one group of the packed K-quant GEMM takes (its activation
    // copies are limited to a few MiB: 182 rows of 40 super-blocks for Q6_K, 327 for Q4_K)
    let mut rng = StdRng::seed_from_u64(15);
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let (n, k, m) = (3, 256 * 40, 340);
        let x = noise(&mut rng, m * k, 32);
        let w = random_weights(&mut rng, ty, n, k);
        check_gemm(ty, &w, n, k, &x, m, "many rows");
    }
}

#[test]
fn hand_made_q8_k_bytes_match_reference_exactly() {
    // Q8_K bytes that no quantizer writes: a value of −128 (the packed kernels run), then also
    // `bsums` pairs whose sum leaves i16 (the packed Q4_K / Q5_K GEMM declines: tiles run)
    let mut rng = StdRng::seed_from_u64(16);
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let (n, k, m) = (18, 512, 9);
        let w = random_weights(&mut rng, ty, n, k);
        let a_rb = row_bytes(GgmlType::Q8_K, k).unwrap();
        let mut act = vec![0u8; m * a_rb];
        let x = noise(&mut rng, m * k, 32);
        for (xr, ar) in x.chunks(k).zip(act.chunks_mut(a_rb)) {
            formats::quantize_row(GgmlType::Q8_K, xr, ar).unwrap();
        }
        // row 7, block 0: value 5
        act[7 * a_rb + 4 + 5] = 0x80;
        for variant in ["−128", "−128 and bsums[2] + bsums[3] = 60000"] {
            if variant.contains("bsums") {
                // row 4, block 1
                let blk = 4 * a_rb + 292;
                act[blk + 260 + 4..blk + 260 + 8].copy_from_slice(&[0x30, 0x75, 0x30, 0x75]);
            }
            let want = reference_products(ty, k, &w, n, &act, m);
            for kern in levels() {
                let mut got = vec![f32::NAN; m * n];
                kern.gemm(ty, k, &w, n, &act, m, &mut got).unwrap();
                for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    let (c, r) = (i / n, i % n);
                    assert!(
                        same_f32(g, e),
                        "{} {ty} ({variant}) [{c}][{r}]: {g} vs {e}",
                        kern.level()
                    );
                }
                // the ×16 layouts too
                check_repacked(kern, ty, &w, n, k, &act, m, &want, variant);
            }
        }
    }
}

#[test]
fn float_gemm_within_f32_summation_bound() {
    let mut rng = StdRng::seed_from_u64(13);
    for ty in FLOATS {
        // k not a multiple of 8 or 16 exercises the tiles' scalar tail; from 8 activation rows
        // the packed GEMM runs (at AVX-512): partial 16-row tiles and 8-row column groups,
        // k below, at and across its 64-value chunks (the ViT's head size 88, its widths)
        for (n, k, m) in [
            (1, 7, 1),
            (9, 100, 5),
            (8, 1408, 4),
            (5, 37, 3),
            (17, 64, 2),
            (16, 64, 8),
            (17, 88, 9),
            (3, 13, 15),
            (33, 1408, 21),
            (20, 6144, 10),
            // 32-row tiles with a 16-row remainder (a head's values: 80 rows), a partial
            // second vector, and a remainder just past one vector
            (80, 200, 16),
            (48, 80, 64),
            (41, 130, 9),
            (33, 64, 8),
        ] {
            let x = noise(&mut rng, m * k, 16);
            let w = float_weights(&mut rng, ty, n, k);
            check_gemm(ty, &w, n, k, &x, m, "float");
        }
    }
}

#[test]
fn errors_instead_of_panics() {
    let kern = simd::kernels();
    let w = vec![0u8; 2 * 18];
    let act = vec![0u8; 34];
    let mut y = vec![0f32; 2];
    assert!(kern
        .gemm(GgmlType::Q4_0, 32, &w, 2, &act, 1, &mut y)
        .is_ok());
    assert!(kern
        .gemm(GgmlType::Q4_0, 32, &w, 3, &act, 1, &mut y)
        .is_err());
    assert!(kern
        .gemm(GgmlType::Q4_0, 32, &w, 2, &act[1..], 1, &mut y)
        .is_err());
    assert!(kern
        .gemm(GgmlType::Q4_0, 32, &w, 2, &act, 1, &mut y[1..])
        .is_err());
    assert!(kern
        .gemm(GgmlType::Q4_0, 33, &w, 2, &act, 1, &mut y)
        .is_err());
    assert!(kern
        .gemm(GgmlType::Q8_K, 256, &w, 2, &act, 1, &mut y)
        .is_err());
    assert!(kern
        .gemm(GgmlType::Q4_0, 32, &w, usize::MAX, &act, 1, &mut y)
        .is_err());
    let x = vec![1f32; 64];
    let mut q = vec![0u8; 68];
    assert!(kern
        .quantize_activations(GgmlType::Q4_0, &x, 32, &mut q)
        .is_ok());
    assert!(kern
        .quantize_activations(GgmlType::Q4_0, &x, 32, &mut q[1..])
        .is_err());
    assert!(kern
        .quantize_activations(GgmlType::Q4_0, &x[1..], 32, &mut q)
        .is_err());
    assert!(kern
        .quantize_activations(GgmlType::Q4_K, &x, 64, &mut q)
        .is_err());
    assert!(kern
        .quantize_activations(GgmlType::I8, &x, 32, &mut q)
        .is_err());
    // empty shapes
    assert!(kern
        .gemm(GgmlType::Q4_0, 32, &[], 0, &act, 1, &mut [])
        .is_ok());
}

#[test]
fn strided_rows_equal_contiguous_rows() {
    // weight rows `stride` bytes apart inside a larger buffer (a KV-cache head): the same
    // results as the rows copied together, at every level, float and quantized types
    let mut rng = StdRng::seed_from_u64(21);
    for ty in [
        GgmlType::F16,
        GgmlType::F32,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let kb = ty.block_size().max(32);
        // (20 activation rows: the AVX2 level packs the strided rows' 16-row groups too)
        for (n, k, m, pad) in [
            (1, kb, 1, 2),
            (13, kb * 3, 3, 6),
            (37, kb * 2, 9, 40),
            (37, kb * 2, 20, 40),
        ] {
            let w = if FLOATS.contains(&ty) {
                float_weights(&mut rng, ty, n, k)
            } else {
                reference_quantized(&mut rng, ty, n, k)
            };
            let rb = row_bytes(ty, k).unwrap();
            let stride = rb + pad;
            let mut wide = vec![0xAAu8; (n - 1) * stride + rb];
            for r in 0..n {
                wide[r * stride..r * stride + rb].copy_from_slice(&w[r * rb..(r + 1) * rb]);
            }
            let x = noise(&mut rng, m * k, 32);
            let a_rb = row_bytes(ty.vec_dot_type(), k).unwrap();
            let mut act = vec![0u8; m * a_rb];
            for (xr, ar) in x.chunks(k).zip(act.chunks_mut(a_rb)) {
                formats::quantize_row(ty.vec_dot_type(), xr, ar).unwrap();
            }
            for kern in levels() {
                let mut want = vec![0f32; m * n];
                kern.gemm(ty, k, &w, n, &act, m, &mut want).unwrap();
                let mut got = vec![f32::NAN; m * n];
                kern.gemm_strided(ty, k, &wide, stride, n, &act, m, &mut got)
                    .unwrap();
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        same_f32(*g, *e),
                        "{} {ty} strided [{i}]: {g} vs {e}",
                        kern.level()
                    );
                }
                // a stride below a row, or a buffer one byte short, is an error
                assert!(kern
                    .gemm_strided(ty, k, &wide, rb - 1, n, &act, m, &mut got)
                    .is_err());
                assert!(kern
                    .gemm_strided(ty, k, &wide[1..], stride, n, &act, m, &mut got)
                    .is_err());
            }
        }
    }
}

#[test]
fn prepared_activations_give_the_same_products() {
    // the activations prepared once (as a threaded matmul does) and the weight rows taken in
    // blocks, on the file layout and the ×16 layout: the reference's bits at every level
    let mut rng = StdRng::seed_from_u64(33);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        let k = ty.block_size() * 3;
        let n = 37;
        let w = reference_quantized(&mut rng, ty, n, k);
        let w_rb = row_bytes(ty, k).unwrap();
        let repacked =
            RepackLayout::for_type(ty).map(|_| RepackedMatrix::new(ty, &w, n, k).unwrap());
        for m in [1, 2, 3, 4, 5, 8, 13, 20] {
            let x = noise(&mut rng, m * k, 32);
            let a_rb = row_bytes(ty.vec_dot_type(), k).unwrap();
            let mut act = vec![0u8; m * a_rb];
            for (xr, ar) in x.chunks(k).zip(act.chunks_mut(a_rb)) {
                formats::quantize_row(ty.vec_dot_type(), xr, ar).unwrap();
            }
            let want = reference_products(ty, k, &w, n, &act, m);
            for kern in levels() {
                let prep = kern.prepare_activations(ty, k, &act, m).unwrap();
                let legacy = matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0);
                if kern.level() == Level::Avx512 && legacy && m >= 8 {
                    assert!(prep.has_layout(), "{ty} m={m}: AVX-512 prepares panels");
                }
                let x86 = matches!(kern.level(), Level::Avx2 | Level::Avx512);
                if x86 && !matches!(ty, GgmlType::Q5_0) && m <= 3 {
                    // decode: the ×16 kernels' starts and scales (legacy) or K-quant records,
                    // once per matmul
                    assert!(prep.has_layout(), "{ty} m={m}: x86 prepares decode records");
                }
                if kern.level() == Level::Avx2 && matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K) {
                    // and for the AVX2 K-quant GEMMs of prompts, file layout included
                    assert_eq!(
                        prep.has_layout(),
                        m <= 3 || m >= 16,
                        "{ty} m={m}: AVX2 records"
                    );
                }
                if kern.level() == Level::Neon && !legacy {
                    // once per matmul, decode included, for the ×16 kernels' row blocks
                    assert!(
                        prep.has_layout(),
                        "{ty} m={m}: NEON prepares K-quant layouts"
                    );
                }
                for (r0, r1) in [(0, 16), (16, n)] {
                    let rows = r1 - r0;
                    let mut got = vec![f32::NAN; m * rows];
                    kern.gemm_prepared(&w[r0 * w_rb..r1 * w_rb], rows, &prep, &mut got)
                        .unwrap();
                    let mut got_rp = vec![f32::NAN; m * rows];
                    if let Some(rp) = &repacked {
                        kern.gemm_repacked_prepared(rp, r0, rows, &prep, &mut got_rp)
                            .unwrap();
                    }
                    for c in 0..m {
                        for r in 0..rows {
                            let e = want[c * n + r0 + r];
                            let g = got[c * rows + r];
                            assert!(
                                same_f32(g, e),
                                "{} {ty} prepared m={m} rows {r0}.. [{c}][{r}]: {g} vs {e}",
                                kern.level()
                            );
                            if repacked.is_some() {
                                let g = got_rp[c * rows + r];
                                assert!(
                                    same_f32(g, e),
                                    "{} {ty} repacked prepared m={m} [{c}][{r}]: {g} vs {e}",
                                    kern.level()
                                );
                            }
                        }
                    }
                }
                // activations of the wrong length, and a matrix of another row length, are
                // errors
                assert!(kern.prepare_activations(ty, k, &act[1..], m).is_err());
                if let Some(rp) = &repacked {
                    let wide = vec![0u8; m * a_rb * 2];
                    let other = kern.prepare_activations(ty, k * 2, &wide, m).unwrap();
                    let mut out = vec![0f32; m * 16];
                    assert!(kern
                        .gemm_repacked_prepared(rp, 0, 16, &other, &mut out)
                        .is_err());
                }
            }
        }
    }
}
