//! `tinygptv convert` and `tinygptv quantize` through the command line: every input layout,
//! the full TinyGPT-V conversion, hostile input, atomic output, and independent readers.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn tinygptv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinygptv"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn fixture(rel: &str) -> String {
    fixtures().join(rel).to_str().unwrap().to_string()
}

/// No temporary or partial files next to the outputs.
fn only_files(dir: &Path, want: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "files in the output folder");
}

#[test]
fn every_phi2_layout_converts_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for layout in [
        "phi2-safetensors",
        "phi2-sharded",
        "phi2-bin",
        "phi2-fused",
        "phi2-msft",
    ] {
        let out = dir.path().join(format!("{layout}.gguf"));
        let o = tinygptv(&[
            "convert",
            "--phi2",
            &fixture(layout),
            "--type",
            "q8_0",
            "--out",
            s(&out),
        ]);
        assert!(
            o.status.success(),
            "{layout}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let info = tinygptv(&["info", s(&out), "--json"]);
        assert!(info.status.success());
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert!(v.to_string().contains("\"phi2\""), "{layout}: architecture");
        outs.push(out);
    }
    only_files(
        dir.path(),
        &[
            "phi2-safetensors.gguf",
            "phi2-sharded.gguf",
            "phi2-bin.gguf",
            "phi2-fused.gguf",
            "phi2-msft.gguf",
        ],
    );
    // split layouts give llama.cpp's 453-tensor-style separate Q/K/V; the fused one attn_qkv
    let split = kernels::gguf::GgufFile::open(&outs[0]).unwrap();
    assert!(split.tensor_info("blk.0.attn_q.weight").is_some());
    assert_eq!(split.tensors().len(), 14 * 2 + 5);
    let fused = kernels::gguf::GgufFile::open(&outs[3]).unwrap();
    assert!(fused.tensor_info("blk.0.attn_qkv.weight").is_some());
    assert_eq!(fused.tensors().len(), 10 * 2 + 5);
    // Microsoft's Wqkv ([3][heads][head_dim] rows) also becomes attn_qkv, and since both
    // fixtures hold the same (f16-exact) numbers, every tensor is byte-identical to the fused one
    let msft = kernels::gguf::GgufFile::open(&outs[4]).unwrap();
    assert_eq!(msft.tensors().len(), fused.tensors().len());
    for (m, f) in msft.tensors().iter().zip(fused.tensors()) {
        assert_eq!((&m.name, m.ty, &m.dims), (&f.name, f.ty, &f.dims));
        assert!(
            msft.tensor_data(m) == fused.tensor_data(f),
            "phi2-msft: {} differs from phi2-fused",
            m.name
        );
    }
    // the independent gguf-rs reader agrees on names, types and shapes
    for out in &outs {
        let ours = kernels::gguf::GgufFile::open(out).unwrap();
        let mut f = std::fs::File::open(out).unwrap();
        let mut container = gguf_rs::get_gguf_container(s(out)).unwrap();
        let model = container.decode().unwrap();
        let _ = &mut f;
        assert_eq!(model.num_tensor() as usize, ours.tensors().len());
        for (t, info) in model.tensors().iter().zip(ours.tensors()) {
            assert_eq!(t.name, info.name);
            assert_eq!(t.kind, info.ty.id());
            assert_eq!(t.shape[..info.dims.len()], info.dims[..]);
        }
    }
}

#[test]
fn tinygptv_conversion_writes_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let lm = dir.path().join("lm.gguf");
    let vision = dir.path().join("vision.gguf");
    let o = tinygptv(&[
        "convert",
        "--phi2",
        &fixture("phi2-fused"),
        "--tinygptv",
        &fixture("checkpoints/tinygptv_stage4.pth"),
        "--eva",
        &fixture("checkpoints/eva_vit_g.pth"),
        "--blip2",
        &fixture("checkpoints/blip2_pretrained.pth"),
        "--image-size",
        "56",
        "--vision-heads",
        "4",
        "--qformer-heads",
        "4",
        "--type",
        "q4_k_m",
        "--out",
        s(&lm),
        "--mmproj-out",
        s(&vision),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = kernels::gguf::GgufFile::open(&lm).unwrap();
    assert_eq!(f.architecture(), Some("tinygptv"));
    // the stage comes from the checkpoint's config (minigpt_v2 → stage 4)
    assert_eq!(f.get_str("tinygptv.prompt_template").unwrap(), "stage4");
    assert!(f.tensor_info("blk.1.attn_q_norm.weight").is_some());
    assert!(f.tensor_info("blk.1.post_attention_norm.weight").is_some());
    let lm_model = runtime::llm::load_language_model(&lm).unwrap();
    let tower = runtime::vision::load_vision_tower(&vision).unwrap();
    assert_eq!(tower.cfg.image_size, 56);
    assert_eq!(tower.cfg.n_embd_llm, lm_model.model.cfg.n_embd);
    // the independent gguf-rs reader agrees on both files' names, types and shapes
    for path in [&lm, &vision] {
        let ours = kernels::gguf::GgufFile::open(path).unwrap();
        let mut c = gguf_rs::get_gguf_container(s(path)).unwrap();
        let model = c.decode().unwrap();
        assert_eq!(model.num_tensor() as usize, ours.tensors().len());
        for (t, info) in model.tensors().iter().zip(ours.tensors()) {
            assert_eq!(t.name, info.name);
            assert_eq!(t.kind, info.ty.id());
            assert_eq!(t.shape[..info.dims.len()], info.dims[..]);
        }
    }
    only_files(dir.path(), &["lm.gguf", "vision.gguf"]);
}

#[test]
fn hostile_checkpoint_is_refused_and_leaves_nothing() {
    let marker = {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("converter/tests/data/expected.json"),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["hostile_marker"].as_str().unwrap().to_string()
    };
    let _ = std::fs::remove_file(&marker);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lm.gguf");
    let hostile =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("converter/tests/data/hostile_model.pth");
    let o = tinygptv(&[
        "convert",
        "--phi2",
        &fixture("phi2-safetensors"),
        "--tinygptv",
        s(&hostile),
        "--type",
        "f16",
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refusing") && err.contains("hostile_model.pth"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(
        !Path::new(&marker).exists(),
        "the hostile pickle ran a command"
    );
    only_files(dir.path(), &[]);
}

#[test]
fn bad_inputs_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    for (args, needle) in [
        (
            vec![
                "convert",
                "--phi2",
                "/nonexistent/dir",
                "--type",
                "q4_0",
                "--out",
                s(&out),
            ],
            "/nonexistent/dir",
        ),
        (
            vec![
                "convert",
                "--phi2",
                &fixture("tokenizer"),
                "--type",
                "q4_0",
                "--out",
                s(&out),
            ],
            "tokenizer",
        ),
        (
            vec![
                "convert",
                "--phi2",
                &fixture("phi2-safetensors"),
                "--type",
                "q3_k",
                "--out",
                s(&out),
            ],
            "q3_k",
        ),
        (
            vec![
                "convert",
                "--phi2",
                &fixture("phi2-safetensors"),
                "--tinygptv",
                &fixture("checkpoints/eva_vit_g.pth"),
                "--type",
                "f16",
                "--out",
                s(&out),
            ],
            "eva_vit_g.pth",
        ),
    ] {
        let o = tinygptv(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    only_files(dir.path(), &[]);
}

#[test]
fn quantize_requantizes_f32_files() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("f32.gguf");
    convert_lm("phi2-safetensors", "f32", Some(3), &f32_path);
    for (ty, expect) in [
        ("q4_0", kernels::GgmlType::Q4_0),
        ("q4_k", kernels::GgmlType::Q4_K),
        ("bf16", kernels::GgmlType::BF16),
    ] {
        let out = dir.path().join(format!("{ty}.gguf"));
        let o = tinygptv(&["quantize", s(&f32_path), s(&out), ty]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let f = kernels::gguf::GgufFile::open(&out).unwrap();
        assert_eq!(f.tensor_info("blk.0.ffn_up.weight").unwrap().ty, expect);
        assert_eq!(
            f.tensor_info("blk.0.attn_norm.weight").unwrap().ty,
            kernels::GgmlType::F32
        );
        // metadata carried over
        assert_eq!(f.get_str("tinygptv.prompt_template").unwrap(), "stage3");
        runtime::llm::load_language_model(&out).unwrap();
    }
    // an already-quantized input is refused
    let o = tinygptv(&[
        "quantize",
        s(&dir.path().join("q4_0.gguf")),
        s(&dir.path().join("again.gguf")),
        "q8_0",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already quantized"));
}
