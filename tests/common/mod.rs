//! Shared helpers of the end-to-end tests: fixture paths, the manifest, conversions.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use converter::phi2::{plan_language_model, read_stage_checkpoint, TinyGptvLm};
use converter::policy::Target;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest json")
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn npy(rel: &str) -> (Vec<f32>, Vec<usize>) {
    runtime::npy::read_f32(&fixtures().join(rel)).expect("reference npy")
}

/// Converts the miniature Phi-2 in `dir` (a folder under tests/fixtures) to `out`.
/// `stage`: Some(3|4) merges the TinyGPT-V stage checkpoint.
pub fn convert_lm(dir: &str, ty: &str, stage: Option<u32>, out: &Path) {
    let hf = converter::HfModelDir::open(fixtures().join(dir)).unwrap();
    let extra = stage.map(|s| {
        let ck =
            read_stage_checkpoint(&fixtures().join(format!("checkpoints/tinygptv_stage{s}.pth")))
                .unwrap();
        Arc::new(TinyGptvLm {
            sd: ck.sd,
            prefix: ck.prefix,
            lora_alpha: ck.lora_alpha.unwrap_or(16.0),
            stage: s,
        })
    });
    let target: Target = ty.parse().unwrap();
    let plan = plan_language_model(&hf, target, false, extra).unwrap();
    plan.write(out, true).unwrap();
}

/// Largest |a − b| relative to the largest |b| of each row, over all rows.
pub fn max_row_rel_err(a: &[f32], b: &[f32], row: usize) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for (ra, rb) in a.chunks(row).zip(b.chunks(row)) {
        let scale = rb
            .iter()
            .fold(0.0f64, |m, &v| m.max(v.abs() as f64))
            .max(1e-30);
        let d = ra
            .iter()
            .zip(rb)
            .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
        worst = worst.max(d / scale);
    }
    worst
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Converts the miniature vision tower for `stage` (3: 28 px native, 4: 56 px) to `out`.
pub fn convert_vision(stage: u32, ty: &str, out: &Path) {
    let ck =
        read_stage_checkpoint(&fixtures().join(format!("checkpoints/tinygptv_stage{stage}.pth")))
            .unwrap();
    let target: Target = ty.parse().unwrap();
    let mut opts = converter::vision::VisionOptions::new(stage, target);
    opts.vision_heads = 4;
    opts.qformer_heads = 4;
    opts.image_size = Some(if stage == 4 { 56 } else { 28 });
    let plan = converter::vision::plan_vision(
        &fixtures().join("checkpoints/eva_vit_g.pth"),
        &fixtures().join("checkpoints/blip2_pretrained.pth"),
        &ck.sd,
        &opts,
    )
    .unwrap();
    plan.write(out, true).unwrap();
}

/// Cosine similarity of two vectors (f64 accumulation).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
}
