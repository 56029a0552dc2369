//! The language model against the PyTorch reference (tests/fixtures, scripts/gen_model_fixtures.py):
//! checkpoints in every layout are converted in-process, loaded by the runtime, and their logits
//! compared at every position.

mod common;

use common::*;
use runtime::kv_cache::CacheType;
use runtime::llm::load_language_model;

/// Logits at every position of `prompt_ids ++ greedy_ids[..-1]` for reference `key`.
fn check_case(
    gguf: &std::path::Path,
    refs: &serde_json::Value,
    case: &str,
    cache: CacheType,
    tol: f64,
) -> (f64, usize, usize) {
    let r = &refs[case];
    let mut tokens = ids(&r["prompt_ids"]);
    let greedy = ids(&r["greedy_ids"]);
    tokens.extend_from_slice(&greedy[..greedy.len() - 1]);
    let lm = load_language_model(gguf).unwrap();
    let mut kv = lm.model.new_cache(cache, tokens.len());
    let logits = lm
        .model
        .forward(lm.model.embed_tokens(&tokens).unwrap(), &mut kv, true)
        .unwrap();
    let (want, shape) = npy(r["logits"].as_str().unwrap());
    assert_eq!(shape, vec![tokens.len(), lm.model.cfg.n_vocab]);
    let err = max_row_rel_err(&logits, &want, shape[1]);
    assert!(
        err <= tol,
        "{}: {case}: max relative logit error {err:.3e} > {tol:.1e}",
        gguf.display()
    );
    let agree = logits
        .chunks(shape[1])
        .zip(want.chunks(shape[1]))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    (err, agree, shape[0])
}

/// Greedy generation through the KV cache one token at a time must give the reference ids.
fn check_greedy(gguf: &std::path::Path, r: &serde_json::Value, cache: CacheType) {
    let prompt = ids(&r["prompt_ids"]);
    let want = ids(&r["greedy_ids"]);
    let lm = load_language_model(gguf).unwrap();
    let mut kv = lm.model.new_cache(cache, prompt.len() + want.len());
    let mut logits = lm
        .model
        .forward(lm.model.embed_tokens(&prompt).unwrap(), &mut kv, false)
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let id = argmax(&logits) as u32;
        got.push(id);
        logits = lm
            .model
            .forward(lm.model.embed_tokens(&[id]).unwrap(), &mut kv, false)
            .unwrap();
    }
    assert_eq!(got, want, "{}: greedy continuation differs", gguf.display());
}

#[test]
fn stock_phi2_f32_every_layout_matches_pytorch() {
    let m = manifest();
    let refs = &m["llm_refs"]["stock"];
    let tmp = tempfile::tempdir().unwrap();
    for dir in [
        "phi2-safetensors",
        "phi2-sharded",
        "phi2-bin",
        "phi2-fused",
        "phi2-msft",
    ] {
        let out = tmp.path().join(format!("{dir}.gguf"));
        convert_lm(dir, "f32", None, &out);
        // f16/bf16 sources carry their own rounding: the reference was computed from the f32
        // weights, so only the f32 source is held to 1e-4 — and phi2-msft, whose f16 values
        // are those of phi2-safetensors exactly (scripts/gen_msft_fixture.py checks it).
        let tol = if dir == "phi2-safetensors" || dir == "phi2-msft" {
            1e-4
        } else {
            2e-2
        };
        for case in ["one", "short", "long"] {
            check_case(&out, refs, case, CacheType::F32, tol);
        }
    }
}

#[test]
fn stock_phi2_greedy_f32_and_f16() {
    let m = manifest();
    let refs = &m["llm_refs"]["stock"];
    let tmp = tempfile::tempdir().unwrap();
    for ty in ["f32", "f16"] {
        let out = tmp.path().join(format!("{ty}.gguf"));
        convert_lm("phi2-safetensors", ty, None, &out);
        for case in ["one", "short", "long"] {
            check_greedy(&out, &refs[case], CacheType::F16);
        }
    }
}

#[test]
fn tinygptv_variant_matches_pytorch() {
    let m = manifest();
    let tmp = tempfile::tempdir().unwrap();
    for (stage, key, cases) in [
        (3, "tinygptv_stage3", vec!["one", "short", "long"]),
        (4, "tinygptv_stage4", vec!["short"]),
    ] {
        let refs = &m["llm_refs"][key];
        let out = tmp.path().join(format!("{key}.gguf"));
        convert_lm("phi2-safetensors", "f32", Some(stage), &out);
        for case in &cases {
            check_case(&out, refs, case, CacheType::F32, 1e-4);
            check_greedy(&out, &refs[*case], CacheType::F16);
        }
        let f16 = tmp.path().join(format!("{key}-f16.gguf"));
        convert_lm("phi2-safetensors", "f16", Some(stage), &f16);
        for case in &cases {
            check_greedy(&f16, &refs[*case], CacheType::F16);
        }
    }
}

/// Microsoft's original layout with the TinyGPT-V stage-3 file on top (its overrides use the
/// HF names, the base the `transformer.h.N.*` ones).
#[test]
fn tinygptv_on_msft_layout_matches_pytorch() {
    let m = manifest();
    let refs = &m["llm_refs"]["tinygptv_stage3"];
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("msft-stage3.gguf");
    convert_lm("phi2-msft", "f32", Some(3), &out);
    for case in ["short", "long"] {
        check_case(&out, refs, case, CacheType::F32, 1e-4);
    }
}

#[test]
fn q8_0_argmax_agreement() {
    let m = manifest();
    let tmp = tempfile::tempdir().unwrap();
    let mut agree = 0;
    let mut total = 0;
    for (key, stage) in [("stock", None), ("tinygptv_stage3", Some(3))] {
        let out = tmp.path().join(format!("{key}-q8.gguf"));
        convert_lm("phi2-safetensors", "q8_0", stage, &out);
        for case in ["one", "short", "long"] {
            // observed ≤ 1.2e-2 (Q8_0 weights and activations, F16 cache): 1.5× headroom
            let (err, a, n) = check_case(&out, &m["llm_refs"][key], case, CacheType::F16, 2e-2);
            eprintln!("{key} {case}: q8_0 max row-relative error {err:.3e}, argmax {a}/{n}");
            agree += a;
            total += n;
        }
    }
    let frac = agree as f64 / total as f64;
    // observed 346/346; at most one flip allowed
    assert!(
        frac >= 0.995,
        "Q8_0 argmax agreement {frac:.4} < 0.995 ({agree}/{total})"
    );
}
