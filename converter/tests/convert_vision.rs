//! The vision converter on the miniature LAVIS / TinyGPT-V checkpoints of tests/fixtures
//! (scripts/gen_model_fixtures.py): every written tensor against its source (a mapping written
//! again here, independently of `converter::vision`), the stage-4 position table against torch's
//! bicubic interpolation, and the visual tokens of the runtime's `VisionTower` on the written
//! file against the float64 PyTorch references (tests/fixtures/reference/vision).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use converter::interp::bicubic_resize;
use converter::plan::quantize_tensor;
use converter::policy::Target;
use converter::vision::{plan_vision, VisionOptions};
use converter::{load_state_dict, StateDict};
use kernels::gguf::{GgufFile, Value};
use kernels::GgmlType;
use runtime::model::vision::VisionTower;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn checkpoint(name: &str) -> PathBuf {
    fixtures().join("checkpoints").join(name)
}

fn reference(stage: u32, what: &str) -> Vec<f32> {
    let p = fixtures().join(format!("reference/vision/stage{stage}_{what}_f64.npy"));
    runtime::npy::read_f32(&p).unwrap().0
}

fn stage_sd(stage: u32) -> StateDict {
    load_state_dict(checkpoint(&format!("tinygptv_stage{stage}.pth"))).unwrap()
}

/// The miniature model's options (manifest: 4 ViT heads, 4 Q-Former heads).
fn options(stage: u32, target: &str, image_size: Option<usize>) -> VisionOptions {
    VisionOptions {
        image_size,
        vision_heads: 4,
        qformer_heads: 4,
        ..VisionOptions::new(stage, target.parse().unwrap())
    }
}

struct Converted {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn convert(opts: &VisionOptions) -> Converted {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mmproj.gguf");
    let plan = plan_vision(
        &checkpoint("eva_vit_g.pth"),
        &checkpoint("blip2_pretrained.pth"),
        &stage_sd(opts.stage),
        opts,
    )
    .unwrap();
    plan.write(&path, true).unwrap();
    Converted { _dir: dir, path }
}

/// Expected GGUF tensors: name → (ggml dims, values), from the checkpoints by the LAVIS load
/// order (EVA blocks 0..n−1, BLIP-2, stage-file overrides), except the position table.
fn expected_tensors(stage: u32) -> BTreeMap<String, (Vec<u64>, Vec<f32>)> {
    let eva = load_state_dict(checkpoint("eva_vit_g.pth")).unwrap();
    let blip2 = load_state_dict(checkpoint("blip2_pretrained.pth")).unwrap();
    let st = stage_sd(stage);
    let mut out = BTreeMap::new();
    // ggml dims = reversed PyTorch shape, leading 1s dropped
    let dims = |shape: &[usize]| -> Vec<u64> {
        shape
            .iter()
            .rev()
            .map(|&v| v as u64)
            .filter(|&v| v != 1)
            .collect()
    };
    let mut put = |to: String, sd: &StateDict, from: &str| {
        let t = sd.get(from).unwrap();
        out.insert(to, (dims(&t.shape), t.read_f32().unwrap()));
    };
    put(
        "v.patch_embd.weight".into(),
        &eva,
        "patch_embed.proj.weight",
    );
    put("v.patch_embd.bias".into(), &eva, "patch_embed.proj.bias");
    put("v.class_embd".into(), &eva, "cls_token");
    for i in 0..2 {
        for (from, to) in [
            ("norm1", "ln1"),
            ("norm2", "ln2"),
            ("attn.proj", "attn_out"),
            ("mlp.fc1", "ffn_up"),
            ("mlp.fc2", "ffn_down"),
        ] {
            for part in ["weight", "bias"] {
                put(
                    format!("v.blk.{i}.{to}.{part}"),
                    &eva,
                    &format!("blocks.{i}.{from}.{part}"),
                );
            }
        }
        put(
            format!("v.blk.{i}.attn_qkv.weight"),
            &eva,
            &format!("blocks.{i}.attn.qkv.weight"),
        );
    }
    let qf = |name: &str| -> &StateDict {
        if st.contains(name) {
            &st
        } else {
            &blip2
        }
    };
    put(
        "v.post_ln.weight".into(),
        qf("ln_vision.weight"),
        "ln_vision.weight",
    );
    put(
        "v.post_ln.bias".into(),
        qf("ln_vision.bias"),
        "ln_vision.bias",
    );
    put("qformer.query".into(), qf("query_tokens"), "query_tokens");
    for part in ["weight", "bias"] {
        let n = format!("Qformer.bert.embeddings.LayerNorm.{part}");
        put(format!("qformer.embd_norm.{part}"), qf(&n), &n);
    }
    for l in 0..4 {
        let mut parts = vec![
            ("attention.self.query", "attn_q"),
            ("attention.self.key", "attn_k"),
            ("attention.self.value", "attn_v"),
            ("attention.output.dense", "attn_out"),
            ("attention.output.LayerNorm", "attn_out_norm"),
            ("intermediate_query.dense", "ffn_up"),
            ("output_query.dense", "ffn_down"),
            ("output_query.LayerNorm", "ffn_out_norm"),
        ];
        if l % 2 == 0 {
            parts.extend([
                ("crossattention.self.query", "cross_q"),
                ("crossattention.self.key", "cross_k"),
                ("crossattention.self.value", "cross_v"),
                ("crossattention.output.dense", "cross_out"),
                ("crossattention.output.LayerNorm", "cross_out_norm"),
            ]);
        }
        for (from, to) in parts {
            for part in ["weight", "bias"] {
                let n = format!("Qformer.bert.encoder.layer.{l}.{from}.{part}");
                put(format!("qformer.blk.{l}.{to}.{part}"), qf(&n), &n);
            }
        }
    }
    for (from, to) in [("llama_proj", "mm.0"), ("llama_proj2", "mm.1")] {
        for part in ["weight", "bias"] {
            put(format!("{to}.{part}"), &st, &format!("{from}.{part}"));
        }
    }
    for i in 0..2 {
        let q = eva.read_f32(&format!("blocks.{i}.attn.q_bias")).unwrap();
        let v = eva.read_f32(&format!("blocks.{i}.attn.v_bias")).unwrap();
        let b = [q, vec![0.0; 64], v].concat();
        out.insert(format!("v.blk.{i}.attn_qkv.bias"), (vec![192], b));
    }
    out
}

fn dequantized(f: &GgufFile, name: &str) -> Vec<f32> {
    let info = f.tensor_info(name).unwrap();
    let mut v = vec![0.0; info.n_elements() as usize];
    kernels::formats::dequantize_row(info.ty, f.tensor_data(info), &mut v).unwrap();
    v
}

/// max |a − b| / max |b|
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
    let err = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    err / scale
}

/// Every tensor of the file against the checkpoints: same set of names, dims, F32 for the
/// tensors that must stay F32, and values equal to the source after the file's own
/// quantization (bit-exact for F32 files).
fn check_tensors(f: &GgufFile, stage: u32, grid: usize) {
    let mut want = expected_tensors(stage);
    let pos = reference(stage, "pos_embed");
    want.insert(
        "v.position_embd.weight".into(),
        (vec![64, (1 + grid * grid) as u64], pos),
    );
    let got: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(
        got_sorted,
        want.keys().map(String::as_str).collect::<Vec<_>>()
    );
    for info in f.tensors() {
        let (dims, values) = &want[&info.name];
        assert_eq!(&info.dims, dims, "{}", info.name);
        let must_be_f32 = info.dims.len() == 1
            || info.name.starts_with("v.patch_embd")
            || info.name.starts_with("v.position_embd")
            || info.name == "qformer.query"
            || info.name.contains("norm")
            || info.name.contains(".ln");
        if must_be_f32 {
            assert_eq!(info.ty, GgmlType::F32, "{}", info.name);
        }
        let data = dequantized(f, &info.name);
        if info.name == "v.position_embd.weight" {
            // f64 reference rounded to f32 vs our f64 interpolation rounded to f32
            let err = rel_err(&data, values);
            assert!(err < 1e-6, "{}: relative error {err}", info.name);
        } else if info.ty == GgmlType::F32 {
            assert!(data == *values, "{} differs from its source", info.name);
        } else {
            let bytes = quantize_tensor(info.ty, values, info.dims[0] as usize).unwrap();
            assert_eq!(
                f.tensor_data(info),
                &bytes[..],
                "{} ({})",
                info.name,
                info.ty
            );
            let err = rel_err(&data, values);
            assert!(
                err < 0.2,
                "{} ({}): relative error {err}",
                info.name,
                info.ty
            );
        }
    }
}

fn u32_key(f: &GgufFile, key: &str) -> u32 {
    match f.get(key) {
        Some(Value::U32(v)) => *v,
        other => panic!("{key}: {other:?} is not UINT32"),
    }
}

fn f32_key(f: &GgufFile, key: &str) -> f32 {
    match f.get(key) {
        Some(Value::F32(v)) => *v,
        other => panic!("{key}: {other:?} is not FLOAT32"),
    }
}

fn check_metadata(f: &GgufFile, image_size: u32, target: Target) {
    assert_eq!(f.get_str("general.architecture").unwrap(), "clip");
    assert_eq!(f.get_str("general.type").unwrap(), "mmproj");
    assert_eq!(f.get_str("clip.projector_type").unwrap(), "qformer");
    assert!(f.get_bool("clip.has_vision_encoder").unwrap());
    assert!(f.get_bool("clip.vision.gelu_erf").unwrap());
    assert!(f.get_bool("clip.qformer.gelu_erf").unwrap());
    assert_eq!(u32_key(f, "general.file_type"), target.llama_ftype());
    for (key, want) in [
        ("clip.vision.image_size", image_size),
        ("clip.vision.patch_size", 14),
        ("clip.vision.embedding_length", 64),
        ("clip.vision.feed_forward_length", 256),
        ("clip.vision.block_count", 2),
        ("clip.vision.attention.head_count", 4),
        ("clip.vision.projection_dim", 256),
        ("clip.qformer.query_count", 8),
        ("clip.qformer.embedding_length", 64),
        ("clip.qformer.block_count", 4),
        ("clip.qformer.attention.head_count", 4),
        ("clip.qformer.feed_forward_length", 128),
        ("clip.qformer.encoder_width", 64),
    ] {
        assert_eq!(u32_key(f, key), want, "{key}");
    }
    for (key, want) in [
        ("clip.vision.attention.layer_norm_epsilon", 1e-6f32),
        ("clip.vision.post_ln_epsilon", 1e-5),
        ("clip.qformer.attention.layer_norm_epsilon", 1e-12),
    ] {
        assert_eq!(f32_key(f, key), want, "{key}");
    }
    // spec §9 (CLIP statistics), as f64 literals rounded to f32
    let mean = [0.48145466f64, 0.4578275, 0.40821073].map(|v| v as f32);
    let std = [0.26862954f64, 0.26130258, 0.27577711].map(|v| v as f32);
    assert_eq!(f.get_f32_array("clip.vision.image_mean").unwrap(), mean);
    assert_eq!(f.get_f32_array("clip.vision.image_std").unwrap(), std);
    assert_eq!(
        f.get_i32_array("clip.qformer.cross_attention_layers")
            .unwrap(),
        [0, 2]
    );
    let quantized = f.tensors().iter().any(|t| t.ty.is_quantized());
    assert_eq!(f.get("general.quantization_version").is_some(), quantized);
}

/// Loads the file with the runtime and checks every stage of the tower against the references:
/// ViT + ln_vision, Q-Former, visual tokens (relative to each reference's largest magnitude).
fn check_tower(path: &Path, stage: u32, tol: f64) {
    let tower = VisionTower::load(GgufFile::open(path).unwrap()).unwrap();
    let pixels = reference(stage, "pixels");
    let feats = tower.encode_vit(&pixels).unwrap();
    let e = rel_err(&feats, &reference(stage, "ln_vision"));
    assert!(
        e < tol,
        "stage {stage}: ln_vision output relative error {e}"
    );
    let q = tower.qformer(&feats);
    let e = rel_err(&q, &reference(stage, "qformer"));
    assert!(e < tol, "stage {stage}: Q-Former output relative error {e}");
    let tokens = tower.encode(&pixels).unwrap();
    let e = rel_err(&tokens, &reference(stage, "tokens"));
    assert!(e < tol, "stage {stage}: visual tokens relative error {e}");
}

#[test]
fn stage3_f32_native_size() {
    let opts = options(3, "f32", None);
    let c = convert(&opts);
    let f = GgufFile::open(&c.path).unwrap();
    check_metadata(&f, 28, opts.target);
    check_tensors(&f, 3, 2);
    check_tower(&c.path, 3, 1e-4);
}

#[test]
fn stage4_f32_interpolated_to_56() {
    let opts = options(4, "f32", Some(56));
    let c = convert(&opts);
    let f = GgufFile::open(&c.path).unwrap();
    check_metadata(&f, 56, opts.target);
    // the stage-4 file's Q-Former / query overrides are what the references used
    check_tensors(&f, 4, 4);
    check_tower(&c.path, 4, 1e-4);
}

#[test]
fn quantized_files_load_and_stay_close() {
    // q8_0: every matrix quantized; q4_k: no vision row length fits a K-quant (64 % 256 ≠ 0), so
    // matrices fall back to Q5_0 (Q4_K → Q5_0 rule) and still load. The tolerances are loose
    // because this random miniature amplifies weight rounding: an F32 file holding the
    // Q8_0-rounded weights is already 1.6e-2 off the references (Q5_0: 1.5e-1), so nearly all of
    // the error comes from the weights, not from the quantized matmul.
    for (target, want_ty, tol) in [
        ("q8_0", GgmlType::Q8_0, 3e-2),
        ("q4_k", GgmlType::Q5_0, 2.5e-1),
        ("q4_k_m", GgmlType::Q5_0, 2.5e-1),
    ] {
        let opts = options(4, target, Some(56));
        let c = convert(&opts);
        let f = GgufFile::open(&c.path).unwrap();
        check_metadata(&f, 56, opts.target);
        check_tensors(&f, 4, 4);
        assert_eq!(
            f.tensor_info("v.blk.0.ffn_up.weight").unwrap().ty,
            want_ty,
            "{target}"
        );
        assert_eq!(
            f.tensor_info("mm.1.weight").unwrap().ty,
            want_ty,
            "{target}"
        );
        check_tower(&c.path, 4, tol);
    }
}

#[test]
fn stage4_default_image_size_is_448() {
    let plan = plan_vision(
        &checkpoint("eva_vit_g.pth"),
        &checkpoint("blip2_pretrained.pth"),
        &stage_sd(4),
        &options(4, "f32", None),
    )
    .unwrap();
    let kv = |k: &str| plan.kv.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(kv("clip.vision.image_size"), Some(Value::U32(448)));
    let pos = plan
        .tensors
        .iter()
        .find(|t| t.name == "v.position_embd.weight")
        .unwrap();
    assert_eq!(pos.dims, vec![64, 1 + 32 * 32]);
    let table = (pos.source)().unwrap();
    assert_eq!(table.len(), 64 * 1025);
    // CLS row kept as is
    let cls_row = &reference(3, "pos_embed")[..64];
    assert_eq!(&table[..64], cls_row);
}

#[test]
fn vision_blocks_option() {
    let mut opts = options(3, "f32", None);
    opts.vision_blocks = Some(3);
    let plan = plan_vision(
        &checkpoint("eva_vit_g.pth"),
        &checkpoint("blip2_pretrained.pth"),
        &stage_sd(3),
        &opts,
    )
    .unwrap();
    assert!(plan
        .tensors
        .iter()
        .any(|t| t.name == "v.blk.2.ffn_down.weight"));
    opts.vision_blocks = Some(4);
    let err = plan_vision(
        &checkpoint("eva_vit_g.pth"),
        &checkpoint("blip2_pretrained.pth"),
        &stage_sd(3),
        &opts,
    )
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("3 blocks"), "{err:#}");
}

fn plan_error(eva: &Path, blip2: &Path, stage: &StateDict, opts: &VisionOptions) -> String {
    match plan_vision(eva, blip2, stage, opts) {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_inputs_are_reported_with_file_and_key() {
    let eva = checkpoint("eva_vit_g.pth");
    let blip2 = checkpoint("blip2_pretrained.pth");
    let st = stage_sd(3);

    // heads must divide the widths
    let mut o = options(3, "f32", None);
    o.vision_heads = 5;
    assert!(plan_error(&eva, &blip2, &st, &o).contains("5 ViT heads"));
    let mut o = options(3, "f32", None);
    o.qformer_heads = 3;
    assert!(plan_error(&eva, &blip2, &st, &o).contains("3 Q-Former heads"));
    // image size must be a multiple of the patch size
    let e = plan_error(&eva, &blip2, &st, &options(3, "f32", Some(50)));
    assert!(e.contains("multiple of the patch size 14"), "{e}");
    // unknown stage
    let e = plan_error(&eva, &blip2, &st, &options(5, "f32", None));
    assert!(e.contains("stage 5"), "{e}");

    // the BLIP-2 checkpoint where the EVA one belongs: missing ViT tensor, named with the file
    let e = plan_error(&blip2, &blip2, &st, &options(3, "f32", None));
    assert!(
        e.contains("blip2_pretrained.pth") && e.contains("patch_embed.proj.weight"),
        "{e}"
    );
    // a stage file without projections
    let blip2_sd = load_state_dict(&blip2).unwrap();
    let e = plan_error(&eva, &blip2, &blip2_sd, &options(3, "f32", None));
    assert!(e.contains("llama_proj.weight"), "{e}");

    // a wrong shape, named with its file: llama_proj built for another Q-Former width
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad_stage.safetensors");
    let w = vec![0u8; 128 * 32 * 4];
    let b = vec![0u8; 128 * 4];
    let tensors = [
        (
            "llama_proj.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![128, 32], &w)
                .unwrap(),
        ),
        (
            "llama_proj.bias",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![128], &b).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(tensors, None, &bad).unwrap();
    let bad_sd = load_state_dict(&bad).unwrap();
    let e = plan_error(&eva, &blip2, &bad_sd, &options(3, "f32", None));
    assert!(
        e.contains("bad_stage.safetensors")
            && e.contains("llama_proj.weight")
            && e.contains("[128, 32]"),
        "{e}"
    );
}

/// The position-table interpolation against torch's `interpolate(mode="bicubic",
/// align_corners=False)` in float64 (tests/fixtures/interp, scripts/gen_interp_fixture.py):
/// up- and down-sampling, non-integer ratios, rectangular grids, a 1×1 source.
#[test]
fn bicubic_matches_torch() {
    let text = std::fs::read_to_string(fixtures().join("interp/bicubic_torch.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for c in cases {
        let n = |k: &str| c[k].as_u64().unwrap() as usize;
        let vals = |k: &str| -> Vec<f64> {
            c[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        let got = bicubic_resize(
            &vals("input"),
            n("channels"),
            (n("in_h"), n("in_w")),
            (n("out_h"), n("out_w")),
        )
        .unwrap();
        let want = vals("output");
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                "case {}x{}→{}x{}: value {i}: {g} vs torch {w}",
                n("in_h"),
                n("in_w"),
                n("out_h"),
                n("out_w")
            );
        }
    }
}

/// A `visual_encoder.<name>` tensor in the stage file replaces the EVA file's `<name>` (LAVIS
/// loads the stage file last, into the composite model).
#[test]
fn visual_encoder_keys_override_the_eva_file() {
    let st = stage_sd(3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stage_with_vit.safetensors");
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let norm: Vec<f32> = (0..64).map(|i| 0.5 + i as f32 / 64.0).collect();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = vec![(
        "visual_encoder.blocks.1.norm2.weight".into(),
        vec![64],
        f32_bytes(&norm),
    )];
    for n in [
        "llama_proj.weight",
        "llama_proj.bias",
        "llama_proj2.weight",
        "llama_proj2.bias",
    ] {
        let t = st.get(n).unwrap();
        owned.push((n.into(), t.shape.clone(), f32_bytes(&t.read_f32().unwrap())));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let plan = plan_vision(
        &checkpoint("eva_vit_g.pth"),
        &checkpoint("blip2_pretrained.pth"),
        &load_state_dict(&path).unwrap(),
        &options(3, "f32", None),
    )
    .unwrap();
    let source = |name: &str| {
        let t = plan.tensors.iter().find(|t| t.name == name).unwrap();
        (t.source)().unwrap()
    };
    assert_eq!(source("v.blk.1.ln2.weight"), norm);
    let eva = load_state_dict(checkpoint("eva_vit_g.pth")).unwrap();
    assert_eq!(
        source("v.blk.0.ln2.weight"),
        eva.read_f32("blocks.0.norm2.weight").unwrap()
    );
}
