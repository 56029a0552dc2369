//! Pieces shared by the K-quants: ggml's scale searches (`make_qkx2_quants`,
//! `make_qx_quants`) and the 6-bit scale packing of Q4_K / Q5_K.
//!
//! The searches are written operation for operation like ggml's (same evaluation order, same
//! int → float conversions, no fused multiply-adds) so the chosen scales are bit-identical.

use super::rounding::{nearest_int, GROUP_MAX_EPS};

/// Bytes of packed 6-bit scales and mins in Q4_K / Q5_K.
pub const K_SCALE_SIZE: usize = 12;

/// Sub-block `j` (0..8) scale and min from the 12 packed bytes (ggml's `get_scale_min_k4`):
/// j < 4: low 6 bits of `q[j]` / `q[j+4]`; j ≥ 4: low / high nibble of `q[j+4]` plus the top two
/// bits of `q[j−4]` / `q[j]`.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs 8 six-bit (scale, min) pairs the way `quantize_row_q4_K_ref` does.
#[inline]
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut q = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

/// ggml's `make_qkx2_quants` (with `use_mad = false`): fit `x ≈ scale·L + min` (min ≤ 0) with
/// `L ∈ [0, nmax]`, minimising the weighted squared error over `nstep + 1` candidate inverse
/// scales `(nmax + rmin + rdelta·is)/(max − min)`. Writes the chosen `L` and returns
/// `(scale, −min)`.
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    debug_assert!(n <= 32 && weights.len() == n && l.len() == n);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = li as u8;
        let diff = scale * li as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = li as u8;
            let w = weights[i];
            let lf = li as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l.copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (weights `x²`), as
/// `quantize_row_q6_K_ref` calls it: symmetric `x ≈ scale·(L − nmax)`, `L ∈ [0, 2·nmax)`,
/// starting from `−nmax/max` (signed abs-max) and trying 18 perturbed inverse scales.
/// Writes `L` and returns the scale (0 for an all-zero group).
pub(crate) fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let n = x.len();
    debug_assert!(l.len() == n);
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -nmax as f32 / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let li = quant(iscale, x[i]);
        l[i] = (li + nmax) as u8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * li as f32;
        suml2 += w * li as f32 * li as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let li = quant(iscale, v);
            let w = v * v;
            sumlx += w * v * li as f32;
            suml2 += w * li as f32 * li as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                l[i] = (nmax + quant(iscale, x[i])) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_packing_round_trips() {
        let ls = [0u8, 63, 17, 42, 5, 63, 31, 48];
        let lm = [63u8, 0, 1, 62, 60, 33, 16, 15];
        let q = pack_scale_min_k4(&ls, &lm);
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &q), (ls[j], lm[j]), "sub-block {j}");
        }
    }

    #[test]
    fn qkx2_fits_exact_grid() {
        // x = 0.5·L − 1 exactly representable: the search must find zero error
        let x: Vec<f32> = (0..32).map(|i| 0.5 * (i % 16) as f32 - 1.0).collect();
        let w = vec![1f32; 32];
        let mut l = [0u8; 32];
        let (scale, neg_min) = make_qkx2_quants(15, &x, &w, &mut l, -1.0, 0.1, 20);
        for i in 0..32 {
            let y = scale * l[i] as f32 - neg_min;
            assert!((y - x[i]).abs() < 1e-5, "{i}: {y} vs {}", x[i]);
        }
    }

    #[test]
    fn qx_fits_symmetric_grid() {
        let x: Vec<f32> = (0..16).map(|i| 0.25 * (i as f32 - 8.0)).collect();
        let mut l = [0u8; 16];
        let scale = make_qx_quants_rmse1(32, &x, &mut l);
        for i in 0..16 {
            let y = scale * (l[i] as f32 - 32.0);
            assert!((y - x[i]).abs() < 1e-5 * 2.0, "{i}: {y} vs {}", x[i]);
        }
        let mut lz = [7u8; 16];
        assert_eq!(make_qx_quants_rmse1(32, &[0.0; 16], &mut lz), 0.0);
        assert_eq!(lz, [0; 16]);
    }
}
