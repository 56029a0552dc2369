//! Q4_K (ggml type 12): super-blocks of 256 = 8 sub-blocks of 32 4-bit values;
//! `x = d·sc_j·q − dmin·m_j` with 6-bit sub-block scales `sc_j` and mins `m_j`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::k_common::{get_scale_min_k4, make_qkx2_quants, pack_scale_min_k4, K_SCALE_SIZE};
use super::q8_k::Q8_KBlock;
use super::rounding::{fp16_to_fp32, fp32_to_fp16, nearest_int};
use crate::types::QK_K;

/// `qs[32c + l]` holds element `64c + l` (low nibble) and element `64c + 32 + l` (high nibble),
/// c = 0..4. `scales`: 8 six-bit scales and 8 six-bit mins, see [`get_scale_min_k4`].
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Q4_KBlock {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<Q4_KBlock>() == 144);

/// The per-sub-block search shared by Q4_K and Q5_K: returns the packed scales, `d`, `dmin`,
/// and the quantized values re-derived from the stored (rounded) scales, element order.
pub(crate) fn quantize_superblock_qkx(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> ([u8; K_SCALE_SIZE], f16, f16, [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut weights = [0f32; 32];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // ggml stores nearest_int's result in a uint8_t, then takes MIN(63, ·)
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = fp32_to_fp16(max_scale / 63.0);
    let dmin = fp32_to_fp16(max_min / 63.0);
    // re-quantize with the scales as stored; sub-blocks whose scale rounds to 0 keep the
    // search's values (as in ggml)
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dj = fp16_to_fp32(d) * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = fp16_to_fp32(dmin) * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (packed, d, dmin, l)
}

/// ggml's `quantize_row_q4_K_ref` (no importance matrix).
///
/// # Panics
/// If `src.len() != 256 * dst.len()`.
pub fn quantize_row_q4_k_ref(src: &[f32], dst: &mut [Q4_KBlock]) {
    assert_eq!(
        src.len(),
        dst.len() * QK_K,
        "quantize_row_q4_k_ref: length mismatch"
    );
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let (scales, d, dmin, l) = quantize_superblock_qkx(x, 15, -1.0, 20);
        y.d = d;
        y.dmin = dmin;
        y.scales = scales;
        for c in 0..4 {
            for i in 0..32 {
                y.qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

/// ggml's `dequantize_row_q4_K`: `x = (d·sc)·q − (dmin·m)`.
///
/// # Panics
/// If `dst.len() != 256 * src.len()`.
pub fn dequantize_row_q4_k(src: &[Q4_KBlock], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK_K,
        "dequantize_row_q4_k: length mismatch"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        let min = fp16_to_fp32(b.dmin);
        for c in 0..4 {
            let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let q = &b.qs[32 * c..32 * c + 32];
            let out = &mut y[64 * c..64 * c + 64];
            for l in 0..32 {
                out[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                out[32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// The f32 part of the K-quant dot products. Per super-block, one exact integer dot `isum`
/// (every sub-block's dot times its scale) is added as `(d·d_a)·isum` to one f32 sum and the min
/// term `(dmin·d_a)·Σ m·B` is subtracted from another; the two are added at the end.
///
/// ggml's generic kernels keep eight f32 sums instead, one per lane class (element index mod 8).
/// The integer parts are the same, so the two orders differ only in f32 rounding, a few ulps of
/// the sum of the terms' magnitudes. This order is the one every SIMD kernel can follow in its
/// natural lane order, at one f32 multiply-add per super-block (ggml's needs eight, and its lane
/// classes cost a reordering or eight integer accumulators per row).
pub(crate) struct KDotAccumulator {
    sum: f32,
    mins: f32,
}

impl KDotAccumulator {
    pub(crate) fn new() -> KDotAccumulator {
        KDotAccumulator {
            sum: 0.0,
            mins: 0.0,
        }
    }

    /// Adds one super-block's scaled integer dot.
    pub(crate) fn add(&mut self, d: f32, isum: i32) {
        self.sum += d * isum as f32;
    }

    pub(crate) fn sub_min(&mut self, dmin: f32, sumi: i32) {
        self.mins -= dmin * sumi as f32;
    }

    pub(crate) fn finish(self) -> f32 {
        self.mins + self.sum
    }
}

/// `Σ_g scale(g)·Σ_{i in group g} q8[i]·a[i]` over the groups of `group` elements (32 for
/// Q4_K/Q5_K, 16 for Q6_K): the integer part of a super-block's dot, exact in any order.
#[inline]
pub(crate) fn scaled_dot(
    a: &[i8; QK_K],
    q8: &[i8; QK_K],
    scale: impl Fn(usize) -> i32,
    group: usize,
) -> i32 {
    let mut isum = 0i32;
    for g in 0..QK_K / group {
        let mut dot = 0i32;
        for i in group * g..group * (g + 1) {
            dot += q8[i] as i32 * a[i] as i32;
        }
        isum += scale(g) * dot;
    }
    isum
}

/// The 8 six-bit mins of a Q4_K/Q5_K block times Q8_K's 16-element sums (`Σ bsums[j]·m[j/2]`).
#[inline]
pub(crate) fn min_dot(scales: &[u8; K_SCALE_SIZE], bsums: &[i16; 16]) -> i32 {
    let mut sumi = 0i32;
    for (j, &b) in bsums.iter().enumerate() {
        sumi += b as i32 * get_scale_min_k4(j / 2, scales).1 as i32;
    }
    sumi
}

/// Q4_K × Q8_K: integer dots per sub-block scaled by the 6-bit scales, one f32 multiply per
/// super-block, mins through Q8_K's `bsums` (ggml's `ggml_vec_dot_q4_K_q8_K_generic` up to the
/// f32 order, see `KDotAccumulator`).
///
/// # Panics
/// If the rows differ in block count.
pub fn vec_dot_q4_k_q8_k(w: &[Q4_KBlock], a: &[Q8_KBlock]) -> f32 {
    assert_eq!(w.len(), a.len(), "vec_dot_q4_k_q8_k: block count mismatch");
    let mut acc = KDotAccumulator::new();
    for (x, y) in w.iter().zip(a) {
        let mut q = [0i8; QK_K];
        for c in 0..4 {
            for l in 0..32 {
                q[64 * c + l] = (x.qs[32 * c + l] & 0x0f) as i8;
                q[64 * c + 32 + l] = (x.qs[32 * c + l] >> 4) as i8;
            }
        }
        let sumi = min_dot(&x.scales, &y.bsums);
        let isum = scaled_dot(&q, &y.qs, |j| get_scale_min_k4(j, &x.scales).0 as i32, 32);
        acc.add(fp16_to_fp32(x.d) * y.d, isum);
        acc.sub_min(fp16_to_fp32(x.dmin) * y.d, sumi);
    }
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::q8_k::{dequantize_row_q8_k, quantize_row_q8_k_ref};
    use crate::formats::test_util::{abs_dot_f64, assert_k_round_trip, dot_f64, test_data};

    pub(crate) fn quantize(x: &[f32]) -> Vec<Q4_KBlock> {
        let mut q = vec![Q4_KBlock::zeroed(); x.len() / QK_K];
        quantize_row_q4_k_ref(x, &mut q);
        q
    }

    fn dequantize(q: &[Q4_KBlock]) -> Vec<f32> {
        let mut y = vec![0f32; q.len() * QK_K];
        dequantize_row_q4_k(q, &mut y);
        y
    }

    #[test]
    fn layout() {
        let mut b = Q4_KBlock::zeroed();
        b.d = f16::from_bits(0x0102);
        b.dmin = f16::from_bits(0x0304);
        b.scales[0] = 5;
        b.qs[0] = 0x21;
        let bytes = bytemuck::bytes_of(&b);
        assert_eq!(bytes.len(), 144);
        assert_eq!(&bytes[..5], &[0x02, 0x01, 0x04, 0x03, 5]);
        assert_eq!(bytes[16], 0x21);
        // element 0 = low nibble of qs[0], element 32 = its high nibble
        b.d = f16::ONE;
        b.scales[0] = 1; // sc_0 = 1
        b.scales[1] = 1; // sc_1 = 1
        let y = dequantize(&[b]);
        assert_eq!((y[0], y[32], y[1]), (1.0, 2.0, 0.0));
    }

    #[test]
    fn round_trip_error() {
        let x = test_data(QK_K * 16, 32, 51);
        let y = dequantize(&quantize(&x));
        assert_k_round_trip(&x, &y, QK_K, 15.0);
    }

    #[test]
    fn dot_matches_dequantized() {
        let w = quantize(&test_data(QK_K * 4, 32, 52));
        let mut a = vec![Q8_KBlock::zeroed(); 4];
        quantize_row_q8_k_ref(&test_data(QK_K * 4, 64, 53), &mut a);
        let mut ad = vec![0f32; QK_K * 4];
        dequantize_row_q8_k(&a, &mut ad);
        let wd = dequantize(&w);
        let got = vec_dot_q4_k_q8_k(&w, &a) as f64;
        assert!((got - dot_f64(&wd, &ad)).abs() <= 1e-5 * abs_dot_f64(&wd, &ad));
    }
}
