//! Q5_1 (ggml type 7): blocks of 32 5-bit values with an f16 scale and an f16 offset,
//! `x = q·d + m`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::q4_1::min_max;
use super::q5_0::unpack_q5;
use super::q8_1::Q8_1Block;
use super::rounding::{c_float_to_int, fp16_to_fp32, fp32_to_fp16};
use crate::types::QK;

/// Bit layout as Q5_0 (`qs` nibbles, bit 4 of element `j` = bit `j` of the LE u32 `qh`).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Q5_1Block {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<Q5_1Block>() == 24);

/// ggml's `quantize_row_q5_1_ref`: `d = (max − min)/31`, `m = min`,
/// `q = (uint8)((x − min)·(1/d) + 0.5)` (no clamp, as in ggml).
///
/// # Panics
/// If `src.len() != 32 * dst.len()`.
pub fn quantize_row_q5_1_ref(src: &[f32], dst: &mut [Q5_1Block]) {
    assert_eq!(
        src.len(),
        dst.len() * QK,
        "quantize_row_q5_1_ref: length mismatch"
    );
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = fp32_to_fp16(d);
        y.m = fp32_to_fp16(min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let q0 = c_float_to_int((x[j] - min) * id + 0.5) as u8;
            let q1 = c_float_to_int((x[j + QK / 2] - min) * id + 0.5) as u8;
            y.qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        y.qh = qh.to_le_bytes();
    }
}

/// ggml's `dequantize_row_q5_1`: `x = q·d + m`.
///
/// # Panics
/// If `dst.len() != 32 * src.len()`.
pub fn dequantize_row_q5_1(src: &[Q5_1Block], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK,
        "dequantize_row_q5_1: length mismatch"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = fp16_to_fp32(b.d);
        let m = fp16_to_fp32(b.m);
        for (o, q) in y.iter_mut().zip(unpack_q5(&b.qs, b.qh)) {
            *o = q as f32 * d + m;
        }
    }
}

/// ggml's `ggml_vec_dot_q5_1_q8_1_generic`: `sum += (d_w·d_a)·sumi + m_w·s_a` per block.
///
/// # Panics
/// If the rows differ in block count.
pub fn vec_dot_q5_1_q8_1(w: &[Q5_1Block], a: &[Q8_1Block]) -> f32 {
    assert_eq!(w.len(), a.len(), "vec_dot_q5_1_q8_1: block count mismatch");
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let q = unpack_q5(&x.qs, x.qh);
        let sumi: i32 = q
            .iter()
            .zip(&y.qs)
            .map(|(&p, &s)| p as i32 * s as i32)
            .sum();
        sumf += (fp16_to_fp32(x.d) * fp16_to_fp32(y.d)) * sumi as f32
            + fp16_to_fp32(x.m) * fp16_to_fp32(y.s);
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::q8_1::{dequantize_row_q8_1, quantize_row_q8_1_ref};
    use crate::formats::test_util::{abs_dot_f64, dot_f64, test_data};

    fn quantize(x: &[f32]) -> Vec<Q5_1Block> {
        let mut q = vec![Q5_1Block::zeroed(); x.len() / QK];
        quantize_row_q5_1_ref(x, &mut q);
        q
    }

    fn dequantize(q: &[Q5_1Block]) -> Vec<f32> {
        let mut y = vec![0f32; q.len() * QK];
        dequantize_row_q5_1(q, &mut y);
        y
    }

    #[test]
    fn layout() {
        let mut x = [1.0f32; QK];
        x[3] = 32.0; // min 1, max 32: d = 1
        x[20] = 17.5; // tie: q = trunc(16.5 + 0.5) = 17
        let q = quantize(&x);
        let bytes = bytemuck::bytes_of(&q[0]);
        assert_eq!(bytes.len(), 24);
        assert_eq!(&bytes[..4], &[0x00, 0x3c, 0x00, 0x3c]);
        assert_eq!(
            u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
            (1 << 3) | (1 << 20)
        );
        assert_eq!(bytes[8 + 3], 0x0f);
        assert_eq!(bytes[8 + 4], 0x10);
        let y = dequantize(&q);
        assert_eq!((y[3], y[20], y[0]), (32.0, 18.0, 1.0));
    }

    #[test]
    fn round_trip_error_bound() {
        let x = test_data(QK * 64, QK, 41);
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(QK).zip(y.chunks(QK)) {
            let (min, max) = min_max(xb);
            let step = (max - min) / 31.0;
            for (a, b) in xb.iter().zip(yb) {
                let tol = step * (0.5 + 31.0 / 2048.0) + min.abs() / 2048.0;
                assert!((a - b).abs() <= tol * 1.0001 + 1e-30, "{a} {b}");
            }
        }
    }

    #[test]
    fn dot_matches_dequantized() {
        let w = quantize(&test_data(QK * 16, QK, 42));
        let mut a = vec![Q8_1Block::zeroed(); 16];
        quantize_row_q8_1_ref(&test_data(QK * 16, 8, 43), &mut a);
        let mut ad = vec![0f32; QK * 16];
        dequantize_row_q8_1(&a, &mut ad);
        let wd = dequantize(&w);
        let got = vec_dot_q5_1_q8_1(&w, &a) as f64;
        let tol = 1e-5 * abs_dot_f64(&wd, &ad)
            + w.iter()
                .zip(&a)
                .map(|(x, y)| (x.m.to_f64() * y.s.to_f64()).abs())
                .sum::<f64>()
                / 1024.0;
        assert!((got - dot_f64(&wd, &ad)).abs() <= tol);
    }
}
