//! `tinygptv quantize IN.gguf OUT.gguf TYPE [--pure]`: re-quantizes an F32/F16/BF16 GGUF (ours
//! or llama.cpp's) tensor by tensor with the same type policy as the converter.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kernels::gguf::{GgufFile, Value};

use crate::plan::{Plan, Source};
use crate::policy::{choose_type, Target};

pub fn plan_requantize(input: &Path, target: Target, pure: bool) -> Result<Plan> {
    let f =
        Arc::new(GgufFile::open(input).with_context(|| format!("opening {}", input.display()))?);
    if let Some(t) = f.tensors().iter().find(|t| t.ty.is_quantized()) {
        bail!(
            "{}: tensor '{}' is already quantized ({}); re-quantize from an F32, F16 or BF16 file",
            input.display(),
            t.name,
            t.ty
        );
    }
    let arch = f.architecture().unwrap_or("").to_string();
    let n_layer = [
        format!("{arch}.block_count"),
        "clip.vision.block_count".to_string(),
    ]
    .iter()
    .find_map(|k| f.get(k).and_then(|v| v.as_u32()))
    .unwrap_or(1) as usize;
    let mut plan = Plan::default();
    for (k, v) in f.metadata() {
        match k.as_str() {
            "general.file_type" => plan.kv(k, Value::U32(target.llama_ftype())),
            "general.quantization_version" | "general.alignment" => {}
            _ => plan.kv(k, v.clone()),
        }
    }
    if f.get("general.file_type").is_none() {
        plan.kv("general.file_type", Value::U32(target.llama_ftype()));
    }
    for (i, info) in f.tensors().iter().enumerate() {
        let ty = choose_type(&info.name, &info.dims, target, pure, n_layer);
        let file = f.clone();
        let source: Source = Box::new(move || {
            let info = &file.tensors()[i];
            let mut out = vec![0.0f32; info.n_elements() as usize];
            kernels::formats::dequantize_row(info.ty, file.tensor_data(info), &mut out)
                .with_context(|| format!("{}: tensor '{}'", file.path().display(), info.name))?;
            // each input tensor is read once: let its pages go (peak RSS ≈ largest tensor)
            file.release_tensor(info);
            Ok(out)
        });
        plan.tensor(info.name.clone(), ty, info.dims.clone(), source);
    }
    if plan.tensors.iter().any(|t| t.ty.is_quantized()) {
        plan.kv("general.quantization_version", Value::U32(2));
    }
    Ok(plan)
}
