//! Bicubic resizing of a grid of vectors, exactly as
//! `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` (no antialias):
//! cubic convolution with A = −0.75, source coordinate `(i + 0.5)·in/out − 0.5` (not clamped),
//! taps `floor − 1 … floor + 2` with indices clamped to `[0, in − 1]`, separable in x then y.
//! LAVIS uses it to resize the EVA position table to another image size (tinygptv spec §2).

use anyhow::{bail, Result};

/// torch's cubic-convolution constant.
const A: f64 = -0.75;

/// Weights of the four taps `floor−1 … floor+2` at fractional offset `t ∈ [0, 1)`.
fn cubic_weights(t: f64) -> [f64; 4] {
    // |x| ≤ 1: ((A+2)|x| − (A+3))·x² + 1;  1 < |x| < 2: ((A|x| − 5A)|x| + 8A)|x| − 4A
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// For each output index along one axis: the four clamped source indices and their weights.
fn axis_taps(n_in: usize, n_out: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = n_in as f64 / n_out as f64;
    let last = n_in as i64 - 1;
    (0..n_out)
        .map(|i| {
            let src = scale * (i as f64 + 0.5) - 0.5;
            let floor = src.floor();
            let w = cubic_weights(src - floor);
            let base = floor as i64;
            let idx = [-1i64, 0, 1, 2].map(|o| (base + o).clamp(0, last) as usize);
            (idx, w)
        })
        .collect()
}

/// Resizes a `[in_h, in_w, channels]` grid (row-major, channels innermost) to
/// `[out_h, out_w, channels]`.
pub fn bicubic_resize(
    src: &[f64],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Result<Vec<f64>> {
    if in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 || channels == 0 {
        bail!("bicubic resize of an empty grid ({in_h}×{in_w} → {out_h}×{out_w}, {channels} channels)");
    }
    let n_in = in_h.checked_mul(in_w).and_then(|n| n.checked_mul(channels));
    if n_in != Some(src.len()) {
        bail!(
            "bicubic resize: {} values do not form a {in_h}×{in_w} grid of {channels} channels",
            src.len()
        );
    }
    let n_out = out_h
        .checked_mul(out_w)
        .and_then(|n| n.checked_mul(channels))
        .filter(|&n| n <= 1 << 31)
        .ok_or_else(|| {
            anyhow::anyhow!("bicubic resize: output {out_h}×{out_w}×{channels} is too large")
        })?;

    // x pass: [in_h, out_w, C]
    let xt = axis_taps(in_w, out_w);
    let mut rows = vec![0.0; in_h * out_w * channels];
    for y in 0..in_h {
        for (x, (idx, w)) in xt.iter().enumerate() {
            let dst = &mut rows[(y * out_w + x) * channels..][..channels];
            for (&sx, &wk) in idx.iter().zip(w) {
                let s = &src[(y * in_w + sx) * channels..][..channels];
                dst.iter_mut().zip(s).for_each(|(d, v)| *d += wk * v);
            }
        }
    }
    // y pass: [out_h, out_w, C]
    let yt = axis_taps(in_h, out_h);
    let mut out = vec![0.0; n_out];
    for (y, (idx, w)) in yt.iter().enumerate() {
        let dst = &mut out[y * out_w * channels..][..out_w * channels];
        for (&sy, &wk) in idx.iter().zip(w) {
            let s = &rows[sy * out_w * channels..][..out_w * channels];
            dst.iter_mut().zip(s).for_each(|(d, v)| *d += wk * v);
        }
    }
    Ok(out)
}

/// Resizes a ViT position table `[n_extra + g_in², width]` to `[n_extra + g_out², width]`: the
/// leading `n_extra` rows (CLS) are kept, the grid rows are resized bicubically (in f64).
pub fn resize_position_table(
    table: &[f32],
    width: usize,
    n_extra: usize,
    grid_in: usize,
    grid_out: usize,
) -> Result<Vec<f32>> {
    let rows_in = n_extra + grid_in * grid_in;
    if width == 0 || table.len() != rows_in * width {
        bail!(
            "position table of {} values is not {rows_in} rows of {width}",
            table.len()
        );
    }
    let (extra, grid) = table.split_at(n_extra * width);
    let grid: Vec<f64> = grid.iter().map(|&v| v as f64).collect();
    let resized = bicubic_resize(&grid, width, (grid_in, grid_in), (grid_out, grid_out))?;
    let mut out = Vec::with_capacity(extra.len() + resized.len());
    out.extend_from_slice(extra);
    out.extend(resized.iter().map(|&v| v as f32));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_interpolate() {
        for t in [0.0, 0.25, 0.5, 0.75, 0.999] {
            let w = cubic_weights(t);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15, "t={t}: {w:?}");
        }
        // t = 0 lands exactly on the sample
        assert_eq!(cubic_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
        // t = 0.5: symmetric (−3/32·… ) weights of torch's kernel: [-0.09375, 0.59375, 0.59375, -0.09375]
        assert_eq!(cubic_weights(0.5), [-0.09375, 0.59375, 0.59375, -0.09375]);
    }

    #[test]
    fn same_size_is_identity_and_constants_stay_constant() {
        let src: Vec<f64> = (0..3 * 4 * 2).map(|v| (v as f64).sin()).collect();
        assert_eq!(bicubic_resize(&src, 2, (3, 4), (3, 4)).unwrap(), src);
        let flat = vec![1.25; 5 * 5];
        for v in bicubic_resize(&flat, 1, (5, 5), (9, 3)).unwrap() {
            assert!((v - 1.25).abs() < 1e-14);
        }
    }

    #[test]
    fn position_table_keeps_the_cls_row() {
        // 1 CLS row + 2×2 grid, width 2
        let table = [9.0, -9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let out = resize_position_table(&table, 2, 1, 2, 4).unwrap();
        assert_eq!(out.len(), (1 + 16) * 2);
        assert_eq!(&out[..2], &[9.0, -9.0]);
        // corner output (0,0): src = −0.25 on both axes → taps clamp onto row/col 0 and 1
        let w = cubic_weights(0.75); // floor(−0.25) = −1, t = 0.75
        let axis = |a: f64, b: f64| (w[0] + w[1] + w[2]) * a + w[3] * b;
        let expect = axis(axis(1.0, 3.0), axis(5.0, 7.0));
        assert!(
            (out[2] as f64 - expect).abs() < 1e-6,
            "{} vs {expect}",
            out[2]
        );
        assert!(resize_position_table(&table, 2, 1, 3, 4).is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(bicubic_resize(&[1.0; 5], 1, (2, 2), (4, 4)).is_err());
        assert!(bicubic_resize(&[], 1, (0, 2), (4, 4)).is_err());
        assert!(bicubic_resize(&[1.0; 4], 1, (2, 2), (1 << 20, 1 << 20)).is_err());
    }
}
