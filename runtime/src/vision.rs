//! Loading an mmproj GGUF and turning an image file into visual tokens.

use std::path::Path;

use anyhow::{Context, Result};
use kernels::gguf::GgufFile;

use crate::image::{load_rgb, preprocess, RgbImage};
use crate::model::vision::VisionTower;

pub fn load_vision_tower(path: &Path) -> Result<VisionTower> {
    let file =
        GgufFile::open(path).with_context(|| format!("loading vision model {}", path.display()))?;
    VisionTower::load(file)
}

/// The image's normalized pixels `[3, S, S]` for this tower.
pub fn image_pixels(tower: &VisionTower, img: &RgbImage) -> Vec<f32> {
    let c = &tower.cfg;
    preprocess(img, c.image_size, c.mean, c.std)
}

/// Image file → (original image, normalized pixels, visual tokens `[n_query, n_embd_llm]`).
pub fn embed_image_file(
    tower: &VisionTower,
    path: &Path,
    max_pixels: u64,
) -> Result<(RgbImage, Vec<f32>, Vec<f32>)> {
    let img = load_rgb(path, max_pixels)?;
    let pixels = image_pixels(tower, &img);
    let tokens = tower.encode(&pixels)?;
    Ok((img, pixels, tokens))
}
