//! Image preprocessing against Pillow (`convert('RGB').resize((S, S), BICUBIC)`) and
//! torchvision's ToTensor + Normalize, for every fixture image and size up and down.

mod common;

use common::*;
use runtime::image::{load_rgb, normalize, resize_bicubic};

/// The Pillow-resized reference (stored as a lossless PNG).
fn reference_u8(rel: &str) -> runtime::image::RgbImage {
    load_rgb(&fixtures().join(rel), 1 << 24).unwrap()
}

#[test]
fn resize_matches_pillow() {
    let m = manifest();
    let mean = converter::vision::IMAGE_MEAN;
    let std = [0.268_629_54, 0.261_302_6, 0.275_777_1];
    for (image, refs) in m["preprocess_refs"].as_object().unwrap() {
        let src = load_rgb(&fixtures().join("images").join(image), 1 << 24).unwrap();
        let wh = &refs["source_size_wh"];
        assert_eq!(
            (src.width, src.height),
            (
                wh[0].as_u64().unwrap() as usize,
                wh[1].as_u64().unwrap() as usize
            )
        );
        // JPEG decoders differ by a few levels (toolchain notes): compare JPEG with a tolerance
        let jpeg = image.ends_with(".jpg");
        for (size, rel) in refs["resized_u8"].as_object().unwrap() {
            let s: usize = size.parse().unwrap();
            let want = reference_u8(rel.as_str().unwrap());
            let got = resize_bicubic(&src, s, s);
            let diffs: Vec<i32> = got
                .data
                .iter()
                .zip(&want.data)
                .map(|(&a, &b)| (a as i32 - b as i32).abs())
                .collect();
            let exact = diffs.iter().filter(|&&d| d == 0).count() as f64 / diffs.len() as f64;
            let max = *diffs.iter().max().unwrap();
            if jpeg {
                // zune-jpeg and libjpeg upsample chroma differently; the resize itself is
                // checked exactly on the lossless inputs
                let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
                assert!(
                    mean <= 1.5 && max <= 16,
                    "{image} @ {s}: mean difference {mean:.2}, max {max}"
                );
            } else {
                assert!(
                    exact >= 0.99,
                    "{image} @ {s}: only {:.4} of values exact",
                    exact
                );
                assert!(max <= 1, "{image} @ {s}: max difference {max}");
            }
        }
        for (size, rel) in refs["normalized_f32"].as_object().unwrap() {
            let s: usize = size.parse().unwrap();
            let (want, shape) = npy(rel.as_str().unwrap());
            assert_eq!(shape, vec![3, s, s]);
            // from the Pillow-resized pixels, normalization itself must be exact in f32
            let pil = reference_u8(refs["resized_u8"][size].as_str().unwrap());
            assert_eq!(
                normalize(&pil, mean, std),
                want,
                "{image} @ {s}: normalization"
            );
        }
    }
}
