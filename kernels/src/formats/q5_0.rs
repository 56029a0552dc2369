//! Q5_0 (ggml type 6): blocks of 32 5-bit values with one f16 scale, `x = (q − 16)·d`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::q4_0::signed_abs_max;
use super::q8_0::Q8_0Block;
use super::rounding::{c_float_to_int, fp16_to_fp32, fp32_to_fp16};
use crate::types::QK;

/// Low 4 bits as Q4_0 (`qs[j]`: element `j` low, `j + 16` high nibble); bit 4 of element `j`
/// is bit `j` of the little-endian u32 `qh`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Q5_0Block {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<Q5_0Block>() == 22);

/// ggml's `quantize_row_q5_0_ref`: `d = max/−16` (signed abs-max),
/// `q = min(31, (int8)(x·(1/d) + 16.5))`.
///
/// # Panics
/// If `src.len() != 32 * dst.len()`.
pub fn quantize_row_q5_0_ref(src: &[f32], dst: &mut [Q5_0Block]) {
    assert_eq!(
        src.len(),
        dst.len() * QK,
        "quantize_row_q5_0_ref: length mismatch"
    );
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        let d = signed_abs_max(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = fp32_to_fp16(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let q0 = (c_float_to_int(x[j] * id + 16.5) as i8 as i32).min(31) as u8;
            let q1 = (c_float_to_int(x[j + QK / 2] * id + 16.5) as i8 as i32).min(31) as u8;
            y.qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        y.qh = qh.to_le_bytes();
    }
}

/// The 5-bit values of a Q5_0/Q5_1 block, element order.
#[inline]
pub(crate) fn unpack_q5(qs: &[u8; QK / 2], qh: [u8; 4]) -> [u8; QK] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        q[j + QK / 2] = (qs[j] >> 4) | ((((qh >> (j + QK / 2)) & 1) as u8) << 4);
    }
    q
}

/// ggml's `dequantize_row_q5_0`: `x = (q − 16)·d`.
///
/// # Panics
/// If `dst.len() != 32 * src.len()`.
pub fn dequantize_row_q5_0(src: &[Q5_0Block], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK,
        "dequantize_row_q5_0: length mismatch"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = fp16_to_fp32(b.d);
        for (o, q) in y.iter_mut().zip(unpack_q5(&b.qs, b.qh)) {
            *o = (q as i32 - 16) as f32 * d;
        }
    }
}

/// ggml's `ggml_vec_dot_q5_0_q8_0_generic`: `sum += (d_w·d_a)·sumi` per block.
///
/// # Panics
/// If the rows differ in block count.
pub fn vec_dot_q5_0_q8_0(w: &[Q5_0Block], a: &[Q8_0Block]) -> f32 {
    assert_eq!(w.len(), a.len(), "vec_dot_q5_0_q8_0: block count mismatch");
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let q = unpack_q5(&x.qs, x.qh);
        let sumi: i32 = q
            .iter()
            .zip(&y.qs)
            .map(|(&p, &s)| (p as i32 - 16) * s as i32)
            .sum();
        sumf += (fp16_to_fp32(x.d) * fp16_to_fp32(y.d)) * sumi as f32;
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::q8_0::{dequantize_row_q8_0, quantize_row_q8_0_ref};
    use crate::formats::test_util::{abs_dot_f64, dot_f64, test_data};

    fn quantize(x: &[f32]) -> Vec<Q5_0Block> {
        let mut q = vec![Q5_0Block::zeroed(); x.len() / QK];
        quantize_row_q5_0_ref(x, &mut q);
        q
    }

    fn dequantize(q: &[Q5_0Block]) -> Vec<f32> {
        let mut y = vec![0f32; q.len() * QK];
        dequantize_row_q5_0(q, &mut y);
        y
    }

    #[test]
    fn layout_and_high_bits() {
        let mut x = [0f32; QK];
        x[0] = -16.0; // d = 1, q = 0
        x[1] = 15.0; // q = 31: high bit set, low nibble 15
        x[17] = 1.0; // q = 17: high bit set, low nibble 1
        let q = quantize(&x);
        let bytes = bytemuck::bytes_of(&q[0]);
        assert_eq!(bytes.len(), 22);
        assert_eq!(&bytes[..2], &[0x00, 0x3c]);
        // zeros quantize to 16 (high bit set) everywhere except elements 0 and 1/17 as set
        let qh = u32::from_le_bytes(bytes[2..6].try_into().unwrap());
        assert_eq!(qh, !1u32);
        assert_eq!(bytes[6], 0x00); // element 0 -> 0, element 16 -> 16 (low nibble 0)
        assert_eq!(bytes[7], 0x1f); // element 1 -> 31, element 17 -> 17
        let y = dequantize(&q);
        assert_eq!((y[0], y[1], y[17], y[5]), (-16.0, 15.0, 1.0, 0.0));
    }

    #[test]
    fn round_trip_error_bound() {
        let x = test_data(QK * 64, QK, 31);
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(QK).zip(y.chunks(QK)) {
            let max = signed_abs_max(xb);
            let step = max.abs() / 16.0;
            for (a, b) in xb.iter().zip(yb) {
                let steps = if a * max.signum() < -15.5 * step {
                    1.0
                } else {
                    0.5
                };
                assert!((a - b).abs() <= step * (steps + 16.0 / 2048.0) * 1.0001 + 1e-30);
            }
        }
    }

    #[test]
    fn dot_matches_dequantized() {
        let w = quantize(&test_data(QK * 16, QK, 32));
        let mut a = vec![Q8_0Block::zeroed(); 16];
        quantize_row_q8_0_ref(&test_data(QK * 16, 8, 33), &mut a);
        let mut ad = vec![0f32; QK * 16];
        dequantize_row_q8_0(&a, &mut ad);
        let wd = dequantize(&w);
        let got = vec_dot_q5_0_q8_0(&w, &a) as f64;
        assert!((got - dot_f64(&wd, &ad)).abs() <= 1e-5 * abs_dot_f64(&wd, &ad));
    }
}
