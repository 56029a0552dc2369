//! Q6_K (ggml type 14): super-blocks of 256 = 16 sub-blocks of 16 6-bit values with signed
//! 8-bit sub-block scales and one f16 super-scale, `x = d·sc_i·(q − 32)`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::k_common::make_qx_quants_rmse1;
use super::q4_k::{scaled_dot, KDotAccumulator};
use super::q8_k::Q8_KBlock;
use super::rounding::{fp16_to_fp32, fp32_to_fp16, nearest_int, GROUP_MAX_EPS};
use crate::types::QK_K;

/// For half h (128 elements; `ql` base 64h, `qh` base 32h) and l = 0..32, the elements
/// 128h + l + 32k (k = 0..4) take the low nibble of `ql[l]` / `ql[l+32]` (k = 0, 1) or their high
/// nibble (k = 2, 3), and bits 2k..2k+2 of `qh[l]` as bits 4..6.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Q6_KBlock {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<Q6_KBlock>() == 210);

/// ggml's `quantize_row_q6_K_ref` (no importance matrix).
///
/// # Panics
/// If `src.len() != 256 * dst.len()`.
pub fn quantize_row_q6_k_ref(src: &[f32], dst: &mut [Q6_KBlock]) {
    assert_eq!(
        src.len(),
        dst.len() * QK_K,
        "quantize_row_q6_k_ref: length mismatch"
    );
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut l = [0u8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..QK_K / 16 {
            let scale =
                make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *y = Q6_KBlock::zeroed();
            continue;
        }
        let iscale = -128.0 / max_scale;
        y.d = fp32_to_fp16(1.0 / iscale);
        for (s, &scale) in y.scales.iter_mut().zip(&scales) {
            // MIN(127, nearest_int(·)) stored in an int8_t
            *s = nearest_int(iscale * scale).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let d = fp16_to_fp32(y.d) * y.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as u8;
            }
        }
        for h in 0..2 {
            let (lq, ql, qh) = (
                &l[128 * h..],
                &mut y.ql[64 * h..64 * h + 64],
                &mut y.qh[32 * h..32 * h + 32],
            );
            for i in 0..32 {
                let (q1, q2, q3, q4) = (lq[i], lq[i + 32], lq[i + 64], lq[i + 96]);
                ql[i] = (q1 & 0x0f) | ((q3 & 0x0f) << 4);
                ql[i + 32] = (q2 & 0x0f) | ((q4 & 0x0f) << 4);
                qh[i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
    }
}

/// The signed 6-bit values `q − 32` of a Q6_K block, element order.
#[inline]
fn unpack(b: &Q6_KBlock) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for h in 0..2 {
        let (ql, qh) = (&b.ql[64 * h..64 * h + 64], &b.qh[32 * h..32 * h + 32]);
        let out = &mut q[128 * h..128 * h + 128];
        for l in 0..32 {
            out[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            out[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            out[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            out[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

/// ggml's `dequantize_row_q6_K`: `x = (d·sc)·(q − 32)`.
///
/// # Panics
/// If `dst.len() != 256 * src.len()`.
pub fn dequantize_row_q6_k(src: &[Q6_KBlock], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK_K,
        "dequantize_row_q6_k: length mismatch"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        let q = unpack(b);
        for (i, o) in y.iter_mut().enumerate() {
            *o = d * b.scales[i / 16] as f32 * q[i] as f32;
        }
    }
}

/// Q6_K × Q8_K: integer dots per 16-element sub-block scaled by the int8 scales, one f32
/// multiply per super-block (ggml's `ggml_vec_dot_q6_K_q8_K_generic` up to the f32 order, see
/// `formats::q4_k::KDotAccumulator`).
///
/// # Panics
/// If the rows differ in block count.
pub fn vec_dot_q6_k_q8_k(w: &[Q6_KBlock], a: &[Q8_KBlock]) -> f32 {
    assert_eq!(w.len(), a.len(), "vec_dot_q6_k_q8_k: block count mismatch");
    let mut acc = KDotAccumulator::new();
    for (x, y) in w.iter().zip(a) {
        let q = unpack(x);
        let isum = scaled_dot(&q, &y.qs, |j| x.scales[j] as i32, 16);
        acc.add(fp16_to_fp32(x.d) * y.d, isum);
    }
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::q8_k::{dequantize_row_q8_k, quantize_row_q8_k_ref};
    use crate::formats::test_util::{abs_dot_f64, dot_f64, max_abs_diff, test_data};

    fn quantize(x: &[f32]) -> Vec<Q6_KBlock> {
        let mut q = vec![Q6_KBlock::zeroed(); x.len() / QK_K];
        quantize_row_q6_k_ref(x, &mut q);
        q
    }

    fn dequantize(q: &[Q6_KBlock]) -> Vec<f32> {
        let mut y = vec![0f32; q.len() * QK_K];
        dequantize_row_q6_k(q, &mut y);
        y
    }

    #[test]
    fn layout() {
        let mut b = Q6_KBlock::zeroed();
        b.d = f16::ONE;
        b.scales = [1; 16];
        b.scales[15] = -2;
        // element 128 + 96 + 31 (last sub-block): high nibble of ql[64 + 63], bits 6..8 of qh[32 + 31]
        b.ql[64 + 63] = 0x50;
        b.qh[32 + 31] = 0b1100_0000;
        let bytes = bytemuck::bytes_of(&b);
        assert_eq!(bytes.len(), 210);
        assert_eq!(&bytes[208..], &[0x00, 0x3c]);
        assert_eq!(bytes[192 + 15] as i8, -2);
        let y = dequantize(&[b]);
        // q = 5 | 3<<4 = 53 -> (53 - 32)·(−2)
        assert_eq!(y[255], -42.0);
        assert_eq!(y[0], -32.0);
    }

    #[test]
    fn round_trip_error() {
        let x = test_data(QK_K * 16, 16, 71);
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(QK_K).zip(y.chunks(QK_K)) {
            let sb_amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (xs, ys) in xb.chunks(16).zip(yb.chunks(16)) {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = max_abs_diff(xs, ys);
                // ~half a step of 32 over amax, plus the 8-bit sub-scale rounding (1/128 of the
                // super-block's scale times up to 32 steps)
                assert!(
                    err <= amax / 32.0 + sb_amax / 128.0 + 1e-6,
                    "err {err} amax {amax}"
                );
            }
        }
        assert_eq!(quantize(&[0.0; QK_K])[0], Q6_KBlock::zeroed());
    }

    #[test]
    fn dot_matches_dequantized() {
        let w = quantize(&test_data(QK_K * 4, 16, 72));
        let mut a = vec![Q8_KBlock::zeroed(); 4];
        quantize_row_q8_k_ref(&test_data(QK_K * 4, 64, 73), &mut a);
        let mut ad = vec![0f32; QK_K * 4];
        dequantize_row_q8_k(&a, &mut ad);
        let wd = dequantize(&w);
        let got = vec_dot_q6_k_q8_k(&w, &a) as f64;
        assert!((got - dot_f64(&wd, &ad)).abs() <= 1e-5 * abs_dot_f64(&wd, &ad));
    }
}
