//! Q4_0 (ggml type 2): blocks of 32 4-bit values with one f16 scale, `x = (q − 8)·d`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::q8_0::Q8_0Block;
use super::rounding::{c_float_to_int, fp16_to_fp32, fp32_to_fp16};
use crate::types::QK;

/// `qs[j]` holds element `j` in its low nibble and element `j + 16` in its high nibble.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Q4_0Block {
    pub d: f16,
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<Q4_0Block>() == 18);

/// The element with the largest magnitude, keeping its sign (the first one on ties).
#[inline]
pub(crate) fn signed_abs_max(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// ggml's `quantize_row_q4_0_ref`: `d = max/−8` with `max` the signed abs-max, then
/// `q = min(15, (int8)(x·(1/d) + 8.5))` (truncation, inverse from the f32 `d`).
///
/// # Panics
/// If `src.len() != 32 * dst.len()`.
pub fn quantize_row_q4_0_ref(src: &[f32], dst: &mut [Q4_0Block]) {
    assert_eq!(
        src.len(),
        dst.len() * QK,
        "quantize_row_q4_0_ref: length mismatch"
    );
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        let d = signed_abs_max(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = fp32_to_fp16(d);
        for j in 0..QK / 2 {
            // (int8_t) cast, then MIN(15, ·), stored as uint8_t
            let q0 = (c_float_to_int(x[j] * id + 8.5) as i8 as i32).min(15) as u8;
            let q1 = (c_float_to_int(x[j + QK / 2] * id + 8.5) as i8 as i32).min(15) as u8;
            y.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// ggml's `dequantize_row_q4_0`.
///
/// # Panics
/// If `dst.len() != 32 * src.len()`.
pub fn dequantize_row_q4_0(src: &[Q4_0Block], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK,
        "dequantize_row_q4_0: length mismatch"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = fp16_to_fp32(b.d);
        for j in 0..QK / 2 {
            y[j] = ((b.qs[j] & 0x0f) as i32 - 8) as f32 * d;
            y[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// ggml's `ggml_vec_dot_q4_0_q8_0_generic`: integer dot per block, then
/// `sum += sumi·d_w·d_a`.
///
/// # Panics
/// If the rows differ in block count.
pub fn vec_dot_q4_0_q8_0(w: &[Q4_0Block], a: &[Q8_0Block]) -> f32 {
    assert_eq!(w.len(), a.len(), "vec_dot_q4_0_q8_0: block count mismatch");
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let (mut sumi0, mut sumi1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let v0 = (x.qs[j] & 0x0f) as i32 - 8;
            let v1 = (x.qs[j] >> 4) as i32 - 8;
            sumi0 += v0 * y.qs[j] as i32;
            sumi1 += v1 * y.qs[j + QK / 2] as i32;
        }
        sumf += (sumi0 + sumi1) as f32 * fp16_to_fp32(x.d) * fp16_to_fp32(y.d);
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::q8_0::quantize_row_q8_0_ref;
    use crate::formats::test_util::{abs_dot_f64, dot_f64, test_data};

    fn quantize(x: &[f32]) -> Vec<Q4_0Block> {
        let mut q = vec![Q4_0Block::zeroed(); x.len() / QK];
        quantize_row_q4_0_ref(x, &mut q);
        q
    }

    fn dequantize(q: &[Q4_0Block]) -> Vec<f32> {
        let mut y = vec![0f32; q.len() * QK];
        dequantize_row_q4_0(q, &mut y);
        y
    }

    #[test]
    fn layout_and_nibble_order() {
        let mut x = [0f32; QK];
        x[0] = -8.0; // max magnitude, negative: d = 1
        x[1] = 1.0;
        x[16] = 7.0;
        x[17] = 0.5; // tie: trunc(0.5 + 8.5) = 9
        let q = quantize(&x);
        assert_eq!(q[0].d.to_f32(), 1.0);
        let bytes = bytemuck::bytes_of(&q[0]);
        assert_eq!(bytes.len(), 18);
        assert_eq!(&bytes[..2], &[0x00, 0x3c]);
        // element 0 -> q 0 (low nibble), element 16 -> q 15 (high nibble)
        assert_eq!(bytes[2], 0xf0);
        // element 1 -> q 9, element 17 -> q 9
        assert_eq!(bytes[3], 0x99);
        let y = dequantize(&q);
        assert_eq!(y[0], -8.0);
        assert_eq!(y[16], 7.0);
        assert_eq!(y[17], 1.0);
    }

    #[test]
    fn round_trip_error_bound() {
        let x = test_data(QK * 64, QK, 11);
        let y = dequantize(&quantize(&x));
        for (xb, yb) in x.chunks(QK).zip(y.chunks(QK)) {
            let max = signed_abs_max(xb);
            let step = max.abs() / 8.0;
            for (a, b) in xb.iter().zip(yb) {
                // half a step, except beyond +7.5 steps on the side opposite to `max` (q clips
                // at 15), plus the f16 rounding of d over up to 8 steps
                let steps = if a * max.signum() < -7.5 * step {
                    1.0
                } else {
                    0.5
                };
                assert!((a - b).abs() <= step * (steps + 8.0 / 2048.0) * 1.0001 + 1e-30);
            }
        }
    }

    #[test]
    fn dot_matches_dequantized() {
        let w = quantize(&test_data(QK * 16, QK, 12));
        let mut a = vec![Q8_0Block::zeroed(); 16];
        quantize_row_q8_0_ref(&test_data(QK * 16, 8, 13), &mut a);
        let mut ad = vec![0f32; QK * 16];
        crate::formats::q8_0::dequantize_row_q8_0(&a, &mut ad);
        let wd = dequantize(&w);
        let got = vec_dot_q4_0_q8_0(&w, &a) as f64;
        assert!((got - dot_f64(&wd, &ad)).abs() <= 1e-5 * abs_dot_f64(&wd, &ad));
    }
}
