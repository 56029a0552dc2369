//! Image loading and TinyGPT-V preprocessing (spec §9): decode, `convert('RGB')`, squash-resize
//! to S×S with Pillow's BICUBIC (antialiased, 8-bit between passes), to [0, 1], normalize.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

/// Default limit on decoded pixels (width × height) for untrusted images.
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Decodes PNG/JPEG/WebP/BMP/GIF (first frame) and converts to RGB like PIL's `convert('RGB')`:
/// alpha dropped (not composited), palette expanded, grey replicated.
pub fn load_rgb(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let name = path.display();
    let reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {name}"))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {name}"))?;
    if reader.format().is_none() {
        bail!("{name}: not a supported image format (PNG, JPEG, WebP, BMP or GIF)");
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| anyhow!("{name}: unreadable image: {e}"))?;
    if w == 0 || h == 0 {
        bail!("{name}: image has zero size");
    }
    if w as u64 * h as u64 > max_pixels {
        bail!(
            "{name}: image is {w}×{h} = {} pixels, more than the limit of {max_pixels}",
            w as u64 * h as u64
        );
    }
    let mut reader = image::ImageReader::open(path)?.with_guessed_format()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| anyhow!("{name}: unreadable or truncated image: {e}"))?;
    let rgb = img.to_rgb8();
    Ok(RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
}

// ---------------------------------------------------------------------------------------------
// Pillow-exact bicubic resampling (libImaging/Resample.c semantics, re-derived)
// ---------------------------------------------------------------------------------------------

/// Fixed-point precision of Pillow's 8-bit resampler coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output pixel: the first input index and the fixed-point weights.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C casts truncate toward zero
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let sum: f64 = w.iter().sum();
            if sum != 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
            let one = (1u32 << PRECISION_BITS) as f64;
            let k = w
                .iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes to `out_w × out_h` exactly like Pillow's `Image.resize(size, Image.BICUBIC)` on an
/// RGB image: horizontal pass, 8-bit rounding, vertical pass; a pass is skipped when that
/// dimension keeps its size.
pub fn resize_bicubic(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let round = 1i64 << (PRECISION_BITS - 1);
    let mut cur = img.clone();
    if out_w != cur.width {
        let coeffs = coefficients(cur.width, out_w);
        let mut data = vec![0u8; out_w * cur.height * 3];
        for y in 0..cur.height {
            let src = &cur.data[y * cur.width * 3..(y + 1) * cur.width * 3];
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = round;
                    for (i, &w) in k.iter().enumerate() {
                        acc += src[(xmin + i) * 3 + c] as i64 * w as i64;
                    }
                    data[(y * out_w + xx) * 3 + c] = clip8(acc);
                }
            }
        }
        cur = RgbImage {
            width: out_w,
            height: cur.height,
            data,
        };
    }
    if out_h != cur.height {
        let coeffs = coefficients(cur.height, out_h);
        let w = cur.width;
        let mut data = vec![0u8; w * out_h * 3];
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..w * 3 {
                let mut acc = round;
                for (i, &kw) in k.iter().enumerate() {
                    acc += cur.data[(ymin + i) * w * 3 + x] as i64 * kw as i64;
                }
                data[yy * w * 3 + x] = clip8(acc);
            }
        }
        cur = RgbImage {
            width: w,
            height: out_h,
            data,
        };
    }
    cur
}

/// `ToTensor` + `Normalize`: CHW float32 `[3, S, S]`, `(u8/255 − mean)/std` in f32.
pub fn normalize(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let n = img.width * img.height;
    let mut out = vec![0.0f32; 3 * n];
    for c in 0..3 {
        for i in 0..n {
            let v = img.data[i * 3 + c] as f32 / 255.0;
            out[c * n + i] = (v - mean[c]) / std[c];
        }
    }
    out
}

/// The whole eval preprocessing: squash-resize to `size`² and normalize.
pub fn preprocess(img: &RgbImage, size: usize, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    normalize(&resize_bicubic(img, size, size), mean, std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_fixed_point() {
        for (i, o) in [(37, 28), (23, 56), (100, 7), (5, 448)] {
            for (_, k) in coefficients(i, o) {
                let s: i64 = k.iter().map(|&v| v as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage {
            width: 13,
            height: 9,
            data: vec![77; 13 * 9 * 3],
        };
        let out = resize_bicubic(&img, 28, 28);
        assert!(out.data.iter().all(|&v| v == 77));
    }
}
