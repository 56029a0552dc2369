//! TinyGPT-V end to end against the PyTorch reference: image file → preprocessing → ViT →
//! Q-Former → projections → prompt template → spliced Phi-2, for stage 3 and stage 4.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use runtime::kv_cache::CacheType;
use runtime::prompt::{render_single, Template};

struct Files {
    _dir: tempfile::TempDir,
    lm: std::path::PathBuf,
    vision: std::path::PathBuf,
}

fn convert(stage: u32, ty: &str) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let lm = dir.path().join(format!("lm-{ty}.gguf"));
    let vision = dir.path().join(format!("vision-{ty}.gguf"));
    convert_lm("phi2-safetensors", ty, Some(stage), &lm);
    convert_vision(stage, ty, &vision);
    Files {
        _dir: dir,
        lm,
        vision,
    }
}

/// Logits of the whole spliced sequence (prompt + the reference greedy ids but the last).
fn spliced_logits(f: &Files, r: &serde_json::Value, template: Template) -> (Vec<f32>, usize) {
    let lm = runtime::llm::load_language_model(&f.lm).unwrap();
    let tower = runtime::vision::load_vision_tower(&f.vision).unwrap();
    let image = fixtures().join(r["image"].as_str().unwrap());
    let (_, _, visual) = runtime::vision::embed_image_file(&tower, &image, 1 << 20).unwrap();
    let prompt = render_single(template, r["question"].as_str().unwrap(), true);
    assert_eq!(prompt, r["prompt"].as_str().unwrap(), "rendered template");
    let spliced = runtime::pipeline::splice(&lm.model, &lm.tokenizer, &prompt, &visual).unwrap();
    let want_pieces: Vec<Vec<u32>> = r["piece_ids"].as_array().unwrap().iter().map(ids).collect();
    assert_eq!(spliced.pieces, want_pieces, "tokenized prompt pieces");
    assert_eq!(
        spliced.n_positions,
        r["prompt_len"].as_u64().unwrap() as usize
    );
    let greedy = ids(&r["greedy_ids"]);
    let mut x = spliced.embeddings;
    x.extend(lm.model.embed_tokens(&greedy[..greedy.len() - 1]).unwrap());
    let n = x.len() / lm.model.cfg.n_embd;
    let mut cache = lm.model.new_cache(CacheType::F32, n);
    (
        lm.model.forward(x, &mut cache, true).unwrap(),
        lm.model.cfg.n_vocab,
    )
}

/// Greedy answer through the real generation loop (KV cache, one token at a time).
fn greedy_answer(f: &Files, r: &serde_json::Value, template: Template) -> Vec<u32> {
    let lm = runtime::llm::load_language_model(&f.lm).unwrap();
    let tower = runtime::vision::load_vision_tower(&f.vision).unwrap();
    let image = fixtures().join(r["image"].as_str().unwrap());
    let (_, _, visual) = runtime::vision::embed_image_file(&tower, &image, 1 << 20).unwrap();
    let prompt = render_single(template, r["question"].as_str().unwrap(), true);
    let spliced = runtime::pipeline::splice(&lm.model, &lm.tokenizer, &prompt, &visual).unwrap();
    let n_new = ids(&r["greedy_ids"]).len();
    let mut cache = lm
        .model
        .new_cache(CacheType::F16, spliced.n_positions + n_new);
    let opts = runtime::generate::GenerateOptions {
        max_new_tokens: n_new,
        sampling: runtime::sampling::SamplingParams {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        },
        stop_ids: vec![],
        stop_strings: vec![],
    };
    let g = runtime::generate::generate(
        &lm.model,
        &lm.tokenizer,
        &mut cache,
        spliced.embeddings,
        &[],
        &opts,
        &mut |_| {},
    )
    .unwrap();
    g.tokens
}

fn check_stage(stage: u32, template: Template) {
    let m = manifest();
    let r = &m["e2e_refs"][format!("stage{stage}")];
    let f32_files = convert(stage, "f32");
    let (logits, vocab) = spliced_logits(&f32_files, r, template);
    let (want, shape) = npy(r["logits"].as_str().unwrap());
    assert_eq!(shape, vec![logits.len() / vocab, vocab]);
    let err = max_row_rel_err(&logits, &want, vocab);
    assert!(
        err <= 1e-4,
        "stage {stage}: spliced logits max relative error {err:.3e} > 1e-4"
    );

    let want_greedy = ids(&r["greedy_ids"]);
    assert_eq!(
        greedy_answer(&f32_files, r, template),
        want_greedy,
        "stage {stage} f32 greedy answer"
    );
    let f16_files = convert(stage, "f16");
    assert_eq!(
        greedy_answer(&f16_files, r, template),
        want_greedy,
        "stage {stage} f16 greedy answer"
    );
}

#[test]
fn stage3_pipeline_matches_pytorch() {
    check_stage(3, Template::Stage3);
}

#[test]
fn stage4_pipeline_matches_pytorch() {
    check_stage(4, Template::Stage4);
}

/// The vision tower alone: f32 within 1e-4; Q8_0 and Q4_0 by cosine similarity.
#[test]
fn visual_tokens_quantized_cosine() {
    let m = manifest();
    for stage in [3u32, 4] {
        let r = &m["vision_refs"][format!("stage{stage}")];
        let (pixels, _) = npy(r["pixels"]["file"].as_str().unwrap());
        let (want, _) = npy(r["tokens"]["file"].as_str().unwrap());
        let dir = tempfile::tempdir().unwrap();
        for (ty, min_cos) in [("f32", 0.999_999), ("q8_0", 0.9995), ("q4_0", 0.995)] {
            let out = dir.path().join(format!("{ty}.gguf"));
            convert_vision(stage, ty, &out);
            let tower = runtime::vision::load_vision_tower(&out).unwrap();
            let got = tower.encode(&pixels).unwrap();
            let c = cosine(&got, &want);
            eprintln!("stage {stage} {ty}: visual-token cosine {c:.6}");
            assert!(
                c >= min_cos,
                "stage {stage} {ty}: cosine {c:.6} < {min_cos}"
            );
            // (TINYGPTV_REPACK=0 turns repacking off, forced or not)
            let repack_off = runtime::linear::repack_policy() == runtime::linear::RepackPolicy::Off;
            if ty == "q4_0" && !repack_off {
                // the repacked ViT (AVX2's default; forced here) gives the same bits
                let mut repacked = runtime::vision::load_vision_tower(&out).unwrap();
                repacked.repack_vit(true).unwrap();
                assert!(
                    repacked.repacked_bytes() > 0,
                    "stage {stage}: nothing repacked"
                );
                assert_eq!(
                    repacked.encode(&pixels).unwrap(),
                    got,
                    "stage {stage} repacked"
                );
            }
            if ty == "f32" {
                let err = max_row_rel_err(&got, &want, want.len());
                assert!(
                    err <= 1e-4,
                    "stage {stage}: f32 visual tokens relative error {err:.3e}"
                );
            }
        }
    }
}

/// The CLI contract: `logits` with an image writes [T_total, vocab] equal to the reference's
/// prompt rows; `run --json` answers with the reference greedy ids.
#[test]
fn cli_logits_and_run_with_image() {
    let m = manifest();
    let r = &m["e2e_refs"]["stage3"];
    let f = convert(3, "f32");
    let bin = env!("CARGO_BIN_EXE_tinygptv");
    let out = f.lm.with_extension("npy");
    let image = fixtures().join(r["image"].as_str().unwrap());
    let question = r["question"].as_str().unwrap();
    let status = Command::new(bin)
        .args(["logits", "--model"])
        .arg(&f.lm)
        .arg("--mmproj")
        .arg(&f.vision)
        .arg("--image")
        .arg(&image)
        .args([
            "--prompt",
            question,
            "--template",
            "auto",
            "--cache-type",
            "f32",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (got, shape) = runtime::npy::read_f32(Path::new(&out)).unwrap();
    let prompt_len = r["prompt_len"].as_u64().unwrap() as usize;
    assert_eq!(shape, vec![prompt_len, 1280]);
    let (want, _) = npy(r["logits"].as_str().unwrap());
    let err = max_row_rel_err(&got, &want[..prompt_len * 1280], 1280);
    assert!(err <= 1e-4, "CLI logits error {err:.3e}");

    let n = ids(&r["greedy_ids"]).len().to_string();
    let run = Command::new(bin)
        .args(["run", "--model"])
        .arg(&f.lm)
        .arg("--mmproj")
        .arg(&f.vision)
        .arg("--image")
        .arg(&image)
        .args([
            "--prompt",
            question,
            "--temp",
            "0",
            "--repeat-penalty",
            "1.0",
            "-n",
            &n,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    // Generation stops early if the answer produces the stop string `###`; the ids generated
    // must be a prefix of the reference's.
    let got = ids(&v["tokens"]);
    let want = ids(&r["greedy_ids"]);
    assert!(
        !got.is_empty() && want.starts_with(&got),
        "run --json tokens {got:?} vs reference {want:?}"
    );
    assert!(v["timings"]["image_encode_ms"].as_f64().is_some());
    assert!(v["boxes"].is_array());
}
