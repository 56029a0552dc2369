//! Q8_K (ggml type 15): the activation type of the K-quant dot products — 256 signed 8-bit
//! values, an **f32** scale, and the sums of each 16 values (for the K-quants' min terms).

use bytemuck::{Pod, Zeroable};

use super::rounding::nearest_int;
use crate::types::QK_K;

/// `x = d·q`; `bsums[k] = Σ q[16k..16k+16]`. 4-byte aligned because of the f32 `d`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct Q8_KBlock {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<Q8_KBlock>() == 292);

/// ggml's `quantize_row_q8_K_ref`: `iscale = −127/max` (signed abs-max),
/// `q = min(127, nearest_int(iscale·x))`, `d = 1/iscale` (may be negative); all-zero → zeros.
///
/// # Panics
/// If `src.len() != 256 * dst.len()`.
pub fn quantize_row_q8_k_ref(src: &[f32], dst: &mut [Q8_KBlock]) {
    assert_eq!(
        src.len(),
        dst.len() * QK_K,
        "quantize_row_q8_k_ref: length mismatch"
    );
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            // ggml leaves bsums untouched here; we zero them (they multiply d = 0 anyway)
            *y = Q8_KBlock::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (k, s) in y.bsums.iter_mut().enumerate() {
            *s = y.qs[16 * k..16 * k + 16]
                .iter()
                .map(|&q| q as i32)
                .sum::<i32>() as i16;
        }
        y.d = 1.0 / iscale;
    }
}

/// ggml's `dequantize_row_q8_K`: `x = d·q`.
///
/// # Panics
/// If `dst.len() != 256 * src.len()`.
pub fn dequantize_row_q8_k(src: &[Q8_KBlock], dst: &mut [f32]) {
    assert_eq!(
        dst.len(),
        src.len() * QK_K,
        "dequantize_row_q8_k: length mismatch"
    );
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = b.d * q as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::test_util::test_data;

    #[test]
    fn layout_sums_and_ties() {
        let mut x = [0f32; QK_K];
        x[0] = -127.0; // iscale = 1
        x[1] = 2.5; // ties to even: 2
        x[2] = 3.5; // 4
        x[17] = -0.5; // -0
        let mut q = [Q8_KBlock::zeroed()];
        quantize_row_q8_k_ref(&x, &mut q);
        assert_eq!(q[0].d, 1.0);
        assert_eq!(&q[0].qs[..3], &[-127, 2, 4]);
        assert_eq!(q[0].qs[17], 0);
        assert_eq!(q[0].bsums[0], -121);
        let bytes = bytemuck::bytes_of(&q[0]);
        assert_eq!(&bytes[..4], &1f32.to_le_bytes());
        assert_eq!(bytes[4] as i8, -127);
        assert_eq!(&bytes[260..262], &(-121i16).to_le_bytes());
    }

    #[test]
    fn round_trip_error_bound() {
        let x = test_data(QK_K * 8, 64, 81);
        let mut q = vec![Q8_KBlock::zeroed(); 8];
        quantize_row_q8_k_ref(&x, &mut q);
        let mut y = vec![0f32; x.len()];
        dequantize_row_q8_k(&q, &mut y);
        for (xb, yb) in x.chunks(QK_K).zip(y.chunks(QK_K)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in xb.iter().zip(yb) {
                assert!((a - b).abs() <= amax / 127.0 * 0.5001 + 1e-30);
            }
        }
    }
}
