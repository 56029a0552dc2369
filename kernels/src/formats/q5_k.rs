//! Q5_K (ggml type 13): as Q4_K with 5-bit values; the 5th bits live in `qh`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::k_common::{get_scale_min_k4, K_SCALE_SIZE};
use super::q4_k::{min_dot, quantize_superblock_qkx, scaled_dot, KDotAccumulator};
use super::q8_k::Q8_KBlock;
use super::rounding::fp16_to_fp32;
use crate::types::QK_K;

/// Low 4 bits in `qs` exactly as Q4_K; the 5th bit of element `64c + l` is bit `2c` of `qh[l]`
/// and that of element `64c + 32 + l` is bit `2c + 1` of `qh[l]` (c = 0..4, l = 0..32).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Q5_KBlock {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<Q5_KBlock>() == 176);

/// ggml's `quantize_row_q5_K_ref` (no importance matrix): `make_qkx2_quants` with nmax 31,
/// rmin −0.5, 16 steps; then re-quantization with the stored 6-bit scales.
///
/// # Panics
/// If `src.len() != 256 * dst.len()`.
pub fn quantize_row_q5_k_ref(src: &[f32], dst: &mut [Q5_KBlock]) {
    assert_eq!(
        src.len(),
        dst.len() * QK_K,
        "quantize_row_q5_k_ref: length mismatch"
    );
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let (scales, d, dmin, l) = quantize_superblock_qkx(x, 31, -0.5, 15);
        y.d = d;
        y.dmin = dmin;
        y.scales = scales;
        y.qh = [0; QK_K / 8];
        for c in 0..4 {
            for i in 0..32 {
                let (lo, hi) = (l[64 * c + i], l[64 * c + 32 + i]);
                y.qh[i] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
                y.qs[32 * c + i] = (lo & 0x0f) | ((hi & 0x0f) << 4);
            }
        }
    }
}

/// The 5-bit values of a Q5_K block, element order.
#[inline]
fn unpack(b: &Q5_KBlock) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for c in 0..4 {
        for l in 0..32 {
            let h = b.qh[l] >> (2 * c);
            q[64 * c + l] = ((b.qs[32 * c + l] & 0x0f) | ((h & 1) << 4)) as i8;
            q[64 * c + 32 + l] = ((b.qs[32 * c + l] >> 4) | (((h >> 1) & 1) << 4)) as i8;
        }
    }
    q
}

/// ggml's `dequantize_row_q5_K`: `x = (d·sc)·q − (dmin·m)`.
///
/// # Panics
/// If `dst.len() != 256 * src.len()`.
pub fn dequantize_row_q5_k(src: &[Q5_KBlock], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK_K,
        "dequantize_row_q5_k: length mismatch"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        let min = fp16_to_fp32(b.dmin);
        let q = unpack(b);
        for j in 0..8 {
            let (sc, m) = get_scale_min_k4(j, &b.scales);
            let (dj, mj) = (d * sc as f32, min * m as f32);
            for i in 32 * j..32 * j + 32 {
                y[i] = dj * q[i] as f32 - mj;
            }
        }
    }
}

/// Q5_K × Q8_K, the same order as [`super::q4_k::vec_dot_q4_k_q8_k`] (ggml's
/// `ggml_vec_dot_q5_K_q8_K_generic` up to the f32 order).
///
/// # Panics
/// If the rows differ in block count.
pub fn vec_dot_q5_k_q8_k(w: &[Q5_KBlock], a: &[Q8_KBlock]) -> f32 {
    assert_eq!(w.len(), a.len(), "vec_dot_q5_k_q8_k: block count mismatch");
    let mut acc = KDotAccumulator::new();
    for (x, y) in w.iter().zip(a) {
        let q = unpack(x);
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

    fn quantize(x: &[f32]) -> Vec<Q5_KBlock> {
        let mut q = vec![Q5_KBlock::zeroed(); x.len() / QK_K];
        quantize_row_q5_k_ref(x, &mut q);
        q
    }

    fn dequantize(q: &[Q5_KBlock]) -> Vec<f32> {
        let mut y = vec![0f32; q.len() * QK_K];
        dequantize_row_q5_k(q, &mut y);
        y
    }

    #[test]
    fn layout_and_high_bits() {
        let mut b = Q5_KBlock::zeroed();
        b.d = f16::ONE;
        b.scales[..4].fill(1); // sc_0..3 = 1
        b.scales[8..].fill(1); // sc_4..7 = 1 (low nibble)
        b.qh[3] = 0b1000_0001; // element 3 (bit 0) and element 192 + 32 + 3 (bit 7)
        b.qs[3] = 0x02; // element 3 low bits 2
        let bytes = bytemuck::bytes_of(&b);
        assert_eq!(bytes.len(), 176);
        assert_eq!(bytes[16 + 3], 0b1000_0001);
        assert_eq!(bytes[48 + 3], 0x02);
        let y = dequantize(&[b]);
        assert_eq!(y[3], 18.0);
        assert_eq!(y[192 + 32 + 3], 16.0);
        assert_eq!(y[35], 0.0);
    }

    #[test]
    fn round_trip_error() {
        let x = test_data(QK_K * 16, 32, 61);
        let y = dequantize(&quantize(&x));
        assert_k_round_trip(&x, &y, QK_K, 31.0);
    }

    #[test]
    fn dot_matches_dequantized() {
        let w = quantize(&test_data(QK_K * 4, 32, 62));
        let mut a = vec![Q8_KBlock::zeroed(); 4];
        quantize_row_q8_k_ref(&test_data(QK_K * 4, 64, 63), &mut a);
        let mut ad = vec![0f32; QK_K * 4];
        dequantize_row_q8_k(&a, &mut ad);
        let wd = dequantize(&w);
        let got = vec_dot_q5_k_q8_k(&w, &a) as f64;
        assert!((got - dot_f64(&wd, &ad)).abs() <= 1e-5 * abs_dot_f64(&wd, &ad));
    }
}
