//! How far a quantized vision tower's visual tokens are from the base tower's: per image, the
//! mean cosine similarity of the token vectors and the relative L2 error of the whole
//! `[n_query, n_embd]` block; over images, their mean and the worst image.

use anyhow::{bail, Result};
use serde::Serialize;

/// Cosine similarity in f64 (0 when either vector is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    let d = (aa * bb).sqrt();
    if d > 0.0 {
        ab / d
    } else {
        0.0
    }
}

/// ‖q − base‖₂ / ‖base‖₂ (infinite when the base is zero and q is not).
pub fn rel_l2(q: &[f32], base: &[f32]) -> f64 {
    let (mut dd, mut bb) = (0.0f64, 0.0f64);
    for (&x, &y) in q.iter().zip(base) {
        let d = x as f64 - y as f64;
        dd += d * d;
        bb += y as f64 * y as f64;
    }
    if bb > 0.0 {
        (dd / bb).sqrt()
    } else if dd > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// One image's difference.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VisualDiff {
    /// Mean over the visual tokens of cosine(q token, base token).
    pub cosine_mean: f64,
    /// Smallest cosine of a single token.
    pub cosine_min: f64,
    pub rel_l2: f64,
}

/// Compares the visual tokens `q` with `base` (both `[n, width]`).
pub fn visual_diff(q: &[f32], base: &[f32], width: usize) -> Result<VisualDiff> {
    if width == 0 || q.len() != base.len() || !q.len().is_multiple_of(width) || q.is_empty() {
        bail!(
            "the visual tokens differ in shape ({} vs {} values, width {width}): the towers do not belong together",
            q.len(),
            base.len()
        );
    }
    let cos: Vec<f64> = q
        .chunks_exact(width)
        .zip(base.chunks_exact(width))
        .map(|(a, b)| cosine(a, b))
        .collect();
    Ok(VisualDiff {
        cosine_mean: cos.iter().sum::<f64>() / cos.len() as f64,
        cosine_min: cos.iter().cloned().fold(f64::INFINITY, f64::min),
        rel_l2: rel_l2(q, base),
    })
}

/// Per-image differences of one quantized tower.
#[derive(Clone, Debug, Default)]
pub struct VisualStats {
    pub images: Vec<(String, VisualDiff)>,
}

/// Field names are part of `tinygptv compare --json`.
#[derive(Clone, Debug, Serialize)]
pub struct VisualSummary {
    pub n_images: usize,
    /// Mean over images of the per-image mean token cosine.
    pub cosine_mean: f64,
    /// The worst image's mean token cosine.
    pub cosine_min: f64,
    /// The smallest cosine of any single token of any image.
    pub cosine_min_token: f64,
    pub rel_l2_mean: f64,
    pub rel_l2_max: f64,
    /// The image with the lowest mean cosine.
    pub worst_image: String,
}

impl VisualStats {
    pub fn push(&mut self, image: &str, d: VisualDiff) {
        self.images.push((image.to_string(), d));
    }

    pub fn summary(&self) -> Option<VisualSummary> {
        let n = self.images.len();
        let (worst, w) = self
            .images
            .iter()
            .min_by(|a, b| a.1.cosine_mean.total_cmp(&b.1.cosine_mean))?;
        Some(VisualSummary {
            n_images: n,
            cosine_mean: self.images.iter().map(|(_, d)| d.cosine_mean).sum::<f64>() / n as f64,
            cosine_min: w.cosine_mean,
            cosine_min_token: self
                .images
                .iter()
                .map(|(_, d)| d.cosine_min)
                .fold(f64::INFINITY, f64::min),
            rel_l2_mean: self.images.iter().map(|(_, d)| d.rel_l2).sum::<f64>() / n as f64,
            rel_l2_max: self
                .images
                .iter()
                .map(|(_, d)| d.rel_l2)
                .fold(0.0, f64::max),
            worst_image: worst.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        assert!((rel_l2(&[1.0, 1.0], &[1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!((rel_l2(&[3.0, 4.0], &[0.0, 5.0]) - (10.0f64).sqrt() / 5.0).abs() < 1e-12);
        assert_eq!(rel_l2(&[0.0], &[0.0]), 0.0);
        let base = [1.0f32, 0.0, 0.0, 2.0];
        let d = visual_diff(&base, &base, 2).unwrap();
        assert_eq!((d.cosine_mean, d.cosine_min, d.rel_l2), (1.0, 1.0, 0.0));
        let d = visual_diff(&[1.0, 0.0, 2.0, 2.0], &base, 2).unwrap();
        assert!(visual_diff(&[1.0], &base, 2).is_err());
        assert!((d.cosine_min - 0.5f64.sqrt()).abs() < 1e-12);
        assert!((d.cosine_mean - (1.0 + 0.5f64.sqrt()) / 2.0).abs() < 1e-12);
        assert!((d.rel_l2 - (4.0f64 / 5.0).sqrt()).abs() < 1e-12);

        let mut s = VisualStats::default();
        assert!(s.summary().is_none());
        s.push(
            "a.png",
            VisualDiff {
                cosine_mean: 0.99,
                cosine_min: 0.95,
                rel_l2: 0.1,
            },
        );
        s.push(
            "b.png",
            VisualDiff {
                cosine_mean: 0.97,
                cosine_min: 0.96,
                rel_l2: 0.3,
            },
        );
        let m = s.summary().unwrap();
        assert_eq!(m.n_images, 2);
        assert!((m.cosine_mean - 0.98).abs() < 1e-12);
        assert_eq!(m.cosine_min, 0.97);
        assert_eq!(m.cosine_min_token, 0.95);
        assert!((m.rel_l2_mean - 0.2).abs() < 1e-12);
        assert_eq!(m.rel_l2_max, 0.3);
        assert_eq!(m.worst_image, "b.png");
    }
}
