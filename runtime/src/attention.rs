//! Softmax attention for one head, on f32 rows, through the SIMD F32 GEMM tiles of
//! `kernels::simd` (the same tiles the F32 weight matmuls use), shared by the Phi-2 forward pass
//! and the vision tower.
//!
//! Scores are computed for a block of at most [`QUERY_BLOCK`] queries at a time, so the score
//! buffer is `QUERY_BLOCK × tk` floats whatever the sequence length (the 1025-token ViT at 448
//! needs 256 KiB per running head, not `[heads, T, T]`).

use kernels::simd;
use kernels::GgmlType;

use crate::kv_cache::HeadRows;
use crate::ops;

/// Queries per score block.
pub const QUERY_BLOCK: usize = 64;

/// The bytes of an f32 slice (what the F32 GEMM tiles read).
fn f32_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length covers the same memory.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), std::mem::size_of_val(x)) }
}

/// One head of softmax attention.
///
/// - `q`: `[tq, dk]` queries; `k`: `[tk, dk]` keys; `vt`: `[dv, tk]` values, transposed (so the
///   weighted sum over positions is a GEMM with contiguous rows). `dk` may be the head size
///   padded with zeros to a multiple of 16 (the GEMM tiles' width), `dv` is the head size.
/// - Scores are `scale · q·k`; with `causal = Some(p0)`, query `i` sees keys `0..=p0 + i` only.
/// - Writes `out`: `[tq, dv]`.
///
/// Scores and the softmax are f32 (the softmax sums in f64, like [`ops::softmax`]).
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    k: &[f32],
    vt: &[f32],
    tq: usize,
    tk: usize,
    dk: usize,
    dv: usize,
    scale: f32,
    causal: Option<usize>,
    out: &mut [f32],
) {
    assert_eq!(q.len(), tq * dk, "attention: q shape");
    assert_eq!(k.len(), tk * dk, "attention: k shape");
    assert_eq!(vt.len(), dv * tk, "attention: v shape");
    let keys = HeadRows {
        ty: GgmlType::F32,
        data: f32_bytes(k),
        stride: dk * 4,
    };
    let values_t = HeadRows {
        ty: GgmlType::F32,
        data: f32_bytes(vt),
        stride: tk * 4,
    };
    attend_head_rows(q, &keys, &values_t, tq, tk, dk, dv, scale, causal, out);
}

/// [`attend_head`] with keys and transposed values as rows of f32 or f16 anywhere in memory
/// (`tk` key rows of `dk` elements, `dv` value rows of `tk`), e.g. a head of the KV cache: the
/// GEMM tiles read f16 rows directly, so the cache is never converted. The results equal
/// those of the same values given as f32.
#[allow(clippy::too_many_arguments)]
pub fn attend_head_rows(
    q: &[f32],
    k: &HeadRows,
    vt: &HeadRows,
    tq: usize,
    tk: usize,
    dk: usize,
    dv: usize,
    scale: f32,
    causal: Option<usize>,
    out: &mut [f32],
) {
    assert_eq!(q.len(), tq * dk, "attention: q shape");
    assert_eq!(out.len(), tq * dv, "attention: out shape");
    if tq == 0 || dv == 0 {
        return;
    }
    if tk == 0 {
        out.fill(0.0);
        return;
    }
    let kern = simd::kernels();
    let mut scores = vec![0f32; QUERY_BLOCK.min(tq) * tk];
    for i0 in (0..tq).step_by(QUERY_BLOCK) {
        let nq = (tq - i0).min(QUERY_BLOCK);
        // causal: this block's queries see keys 0..p0 + i0 + nq only, so the keys after them
        // are skipped in both products (a prompt's blocks do about half the work of `tk` keys);
        // rounded up to the tiles' 16 lanes, the extra keys get zero weights
        let kn = causal.map_or(tk, |p0| (p0 + i0 + nq).next_multiple_of(16).min(tk));
        let s = &mut scores[..nq * kn];
        kern.gemm_strided(
            k.ty,
            dk,
            k.data,
            k.stride,
            kn,
            f32_bytes(&q[i0 * dk..(i0 + nq) * dk]),
            nq,
            s,
        )
        .expect("attention: key rows");
        for (i, row) in s.chunks_exact_mut(kn).enumerate() {
            let n = causal.map_or(kn, |p0| (p0 + i0 + i + 1).min(kn));
            if scale != 1.0 {
                row[..n].iter_mut().for_each(|v| *v *= scale);
            }
            ops::softmax(&mut row[..n]);
            row[n..].fill(0.0);
        }
        // value rows: their first kn elements (rows stay `vt.stride` apart)
        kern.gemm_strided(
            vt.ty,
            kn,
            vt.data,
            vt.stride,
            dv,
            f32_bytes(s),
            nq,
            &mut out[i0 * dv..(i0 + nq) * dv],
        )
        .expect("attention: value rows");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward f64 attention for one head.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        tq: usize,
        tk: usize,
        hd: usize,
        scale: f32,
        causal: Option<usize>,
    ) -> Vec<f32> {
        let mut out = vec![0f32; tq * hd];
        for i in 0..tq {
            let n = causal.map_or(tk, |p0| (p0 + i + 1).min(tk));
            let s: Vec<f64> = (0..n)
                .map(|j| {
                    (0..hd)
                        .map(|d| q[i * hd + d] as f64 * k[j * hd + d] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                let acc: f64 = (0..n).map(|j| e[j] / z * v[j * hd + d] as f64).sum();
                out[i * hd + d] = acc as f32;
            }
        }
        out
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_f64_reference() {
        // odd sizes: more queries than one block, lengths that are not multiples of the tiles
        for &(tq, tk, hd, causal) in &[
            (1, 1, 8, None),
            (5, 7, 88, None),
            (70, 70, 80, Some(0)),
            (3, 130, 64, Some(127)),
            (131, 257, 88, None),
            // causal prompts over several query blocks: each block reads fewer keys than tk
            (150, 150, 80, Some(0)),
            (130, 140, 72, Some(10)),
        ] {
            let q = pseudo_random(tq * hd, 1);
            let k = pseudo_random(tk * hd, 2);
            let v = pseudo_random(tk * hd, 3);
            let mut vt = vec![0f32; hd * tk];
            for j in 0..tk {
                for d in 0..hd {
                    vt[d * tk + j] = v[j * hd + d];
                }
            }
            let scale = 1.0 / (hd as f32).sqrt() * 3.0;
            let mut out = vec![f32::NAN; tq * hd];
            attend_head(&q, &k, &vt, tq, tk, hd, hd, scale, causal, &mut out);
            let want = reference(&q, &k, &v, tq, tk, hd, scale, causal);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 2e-6,
                    "tq {tq} tk {tk} hd {hd} {causal:?}: element {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn f16_head_rows_equal_the_same_values_in_f32() {
        // keys and transposed values read as f16 rows with strides (a KV-cache head) give the
        // results of the same (f16-exact) values passed as f32
        use half::f16;
        let (tq, tk, hd, n_ctx) = (3, 37, 80, 64);
        let round = |v: Vec<f32>| -> Vec<f32> {
            v.into_iter().map(|x| f16::from_f32(x).to_f32()).collect()
        };
        let q = pseudo_random(tq * hd, 4);
        let k = round(pseudo_random(tk * hd, 5));
        let v = round(pseudo_random(tk * hd, 6));
        let mut vt = vec![0f32; hd * tk];
        // cache-like buffers: keys rows of hd, values rows of n_ctx (only tk used)
        let mut k16 = vec![f16::ZERO; n_ctx * hd];
        let mut vt16 = vec![f16::ZERO; hd * n_ctx];
        for j in 0..tk {
            for d in 0..hd {
                vt[d * tk + j] = v[j * hd + d];
                k16[j * hd + d] = f16::from_f32(k[j * hd + d]);
                vt16[d * n_ctx + j] = f16::from_f32(v[j * hd + d]);
            }
        }
        let bytes = |x: &[f16]| -> Vec<u8> { x.iter().flat_map(|h| h.to_le_bytes()).collect() };
        let (kb, vb) = (bytes(&k16), bytes(&vt16));
        let keys = HeadRows {
            ty: GgmlType::F16,
            data: &kb,
            stride: hd * 2,
        };
        let values_t = HeadRows {
            ty: GgmlType::F16,
            data: &vb,
            stride: n_ctx * 2,
        };
        let mut want = vec![0f32; tq * hd];
        attend_head(&q, &k, &vt, tq, tk, hd, hd, 0.3, Some(tk - tq), &mut want);
        let mut got = vec![f32::NAN; tq * hd];
        attend_head_rows(
            &q,
            &keys,
            &values_t,
            tq,
            tk,
            hd,
            hd,
            0.3,
            Some(tk - tq),
            &mut got,
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "element {i}: {g} vs {w}");
        }
    }
}
