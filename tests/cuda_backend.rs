//! The CUDA backend's wiring (issue #9): `--device` on the CLI, partial offload of the language
//! model (`--gpu-layers`), the vision tower on the device and the whole image → logits pipeline,
//! each against the CPU on the miniature fixtures.
//!
//! Default builds check the one-line error of `--device cuda`. With `--features cuda` the
//! device tests run on the CPU emulator of the kernels (needs a C++ compiler; skipped with a
//! note without one, `TINYGPTV_CUDA_EMU=off` turns it off) and on GPU 0 when there is one
//! (`TINYGPTV_REQUIRE_CUDA=1` makes a missing GPU a failure: `scripts/cuda-check.sh`).
//! `TINYGPTV_SOURCE_DIR` points the tests at a source tree when the binary runs elsewhere.

use std::path::PathBuf;
use std::process::Command;

#[cfg(not(feature = "cuda"))]
const NO_CUDA: &str = "error: this build has no CUDA support: rebuild with --features cuda";

/// The repository root (fixtures, models/tiny).
fn source_dir() -> PathBuf {
    std::env::var_os("TINYGPTV_SOURCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `tinygptv <args>` → (exit code, stderr).
fn tinygptv(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tinygptv"))
        .args(args)
        .output()
        .expect("running tinygptv");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every subcommand with `--device`, with arguments that would otherwise work.
fn device_commands(device: &str) -> Vec<Vec<String>> {
    let tiny = source_dir().join("models/tiny");
    let lm = tiny.join("tinygptv-stage3-f16.gguf");
    let vision = tiny.join("tinygptv-stage3-vision-f16.gguf");
    let image = tiny.join("example.png");
    let out = std::env::temp_dir().join("tinygptv-cuda-backend-test.npy");
    let p = |p: &PathBuf| p.display().to_string();
    let cmds: Vec<Vec<String>> = vec![
        vec![
            "run".into(),
            "-m".into(),
            p(&lm),
            "-p".into(),
            "hi".into(),
            "-n".into(),
            "2".into(),
        ],
        vec!["chat".into(), "-m".into(), p(&lm)],
        vec![
            "logits".into(),
            "-m".into(),
            p(&lm),
            "--tokens".into(),
            "1,2".into(),
            "--out".into(),
            p(&out),
        ],
        vec![
            "embed-image".into(),
            "--mmproj".into(),
            p(&vision),
            "--image".into(),
            p(&image),
            "--out".into(),
            p(&out),
        ],
        vec![
            "bench".into(),
            "-m".into(),
            p(&lm),
            "-p".into(),
            "4".into(),
            "-n".into(),
            "2".into(),
            "-r".into(),
            "1".into(),
        ],
    ];
    cmds.into_iter()
        .map(|mut c| {
            c.extend(["--device".to_string(), device.to_string()]);
            c
        })
        .collect()
}

/// Without the `cuda` feature, `--device cuda` (and `cuda:N`) is one line on stderr and exit 1
/// for every subcommand that has the flag, before any model is loaded.
#[cfg(not(feature = "cuda"))]
#[test]
fn device_cuda_without_the_feature_is_a_one_line_error() {
    for device in ["cuda", "cuda:1"] {
        for cmd in device_commands(device) {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let (code, stderr) = tinygptv(&args);
            assert_eq!(code, Some(1), "{args:?}: exit code (stderr: {stderr})");
            assert_eq!(stderr, format!("{NO_CUDA}\n"), "{args:?}: stderr");
        }
    }
    // `cpu` is the default and works; --gpu-layers needs a GPU; a bad device is a usage error
    let tiny = source_dir().join("models/tiny/tinygptv-stage3-f16.gguf");
    let tiny = tiny.display().to_string();
    let out = std::env::temp_dir().join("tinygptv-cuda-backend-cpu.npy");
    let out = out.display().to_string();
    let logits = ["logits", "-m", &tiny, "--tokens", "1,2", "--out", &out];
    let (code, stderr) = tinygptv(&[&logits[..], &["--device", "cpu"]].concat());
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = tinygptv(&[&logits[..], &["--gpu-layers", "1"]].concat());
    assert_eq!(code, Some(1));
    assert_eq!(stderr, "error: --gpu-layers needs --device cuda\n");
    let (code, stderr) = tinygptv(&[&logits[..], &["--device", "tpu"]].concat());
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown device 'tpu'"), "{stderr}");
    let _ = std::fs::remove_file(&out);
}

/// With the `cuda` feature but no driver, `--device cuda` is one line naming the problem.
#[cfg(feature = "cuda")]
#[test]
fn device_cuda_without_a_driver_is_a_one_line_error() {
    if kernels::cuda::driver_present() {
        eprintln!("note: a CUDA driver is present; test skipped");
        return;
    }
    for cmd in device_commands("cuda") {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let (code, stderr) = tinygptv(&args);
        assert_eq!(code, Some(1), "{args:?}: exit code (stderr: {stderr})");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("no CUDA driver found"),
            "{args:?}: {stderr}"
        );
    }
}

#[cfg(feature = "cuda")]
mod device {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use converter::phi2::{plan_language_model, read_stage_checkpoint, TinyGptvLm};
    use converter::policy::Target;
    use kernels::cuda::{CudaError, Device};
    use runtime::backend::{Compute, CpuLm, LmBackend};
    use runtime::cuda::{CudaLm, CudaPhi2, CudaVision};
    use runtime::generate::{generate, generate_with, GenerateOptions};
    use runtime::kv_cache::CacheType;
    use runtime::prompt::{render_single, Template};

    use super::source_dir;

    fn fixtures() -> PathBuf {
        source_dir().join("tests/fixtures")
    }

    fn manifest() -> serde_json::Value {
        let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Cosine similarity (f64 sums).
    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
        for (&x, &y) in a.iter().zip(b) {
            ab += x as f64 * y as f64;
            aa += x as f64 * x as f64;
            bb += y as f64 * y as f64;
        }
        ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
    }

    fn env_is(k: &str, v: &str) -> bool {
        std::env::var(k).is_ok_and(|x| x == v)
    }

    /// The emulator (unless `TINYGPTV_CUDA_EMU=off` or no C++ compiler) and GPU 0 (when
    /// present).
    fn devices() -> Vec<Device> {
        let mut devices = Vec::new();
        if !env_is("TINYGPTV_CUDA_EMU", "off") {
            match Device::emulator() {
                Ok(d) => devices.push(d),
                Err(e @ CudaError::NoCompiler(_)) => {
                    eprintln!("note: CUDA emulator unavailable: {e}")
                }
                Err(e) => panic!("{e}"),
            }
        }
        match Device::cuda(0) {
            Ok(d) => devices.push(d),
            Err(e) if env_is("TINYGPTV_REQUIRE_CUDA", "1") => panic!("{e}"),
            Err(e) => eprintln!("note: no GPU for this test: {e}"),
        }
        devices
    }

    /// The miniature TinyGPT-V language model of `stage`, converted to `ty`.
    fn convert_lm(stage: u32, ty: &str, out: &Path) {
        let hf = converter::HfModelDir::open(fixtures().join("phi2-safetensors")).unwrap();
        let ck = read_stage_checkpoint(
            &fixtures().join(format!("checkpoints/tinygptv_stage{stage}.pth")),
        )
        .unwrap();
        let extra = Arc::new(TinyGptvLm {
            sd: ck.sd,
            prefix: ck.prefix,
            lora_alpha: ck.lora_alpha.unwrap_or(16.0),
            stage,
        });
        let target: Target = ty.parse().unwrap();
        plan_language_model(&hf, target, false, Some(extra))
            .unwrap()
            .write(out, true)
            .unwrap();
    }

    /// The miniature vision tower of `stage` (3: 28 px, 5 ViT tokens; 4: 56 px, 17), as `ty`.
    fn convert_vision(stage: u32, ty: &str, out: &Path) {
        let ck = read_stage_checkpoint(
            &fixtures().join(format!("checkpoints/tinygptv_stage{stage}.pth")),
        )
        .unwrap();
        let mut opts = converter::vision::VisionOptions::new(stage, ty.parse().unwrap());
        opts.vision_heads = 4;
        opts.qformer_heads = 4;
        opts.image_size = Some(if stage == 4 { 56 } else { 28 });
        converter::vision::plan_vision(
            &fixtures().join("checkpoints/eva_vit_g.pth"),
            &fixtures().join("checkpoints/blip2_pretrained.pth"),
            &ck.sd,
            &opts,
        )
        .unwrap()
        .write(out, true)
        .unwrap();
    }

    /// Largest |got − want| and the largest |want|.
    fn max_diff(got: &[f32], want: &[f32]) -> (f32, f32) {
        assert_eq!(got.len(), want.len(), "lengths");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        (diff, scale)
    }

    /// `|got − want| <= tol·(1 + max|want|)` everywhere (the bound of the full-offload test in
    /// `runtime/src/cuda/phi2.rs`).
    fn check_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        let (diff, scale) = max_diff(got, want);
        eprintln!("{what}: max |Δ| {diff:.2e}, values up to {scale:.2}");
        assert!(
            diff <= tol * (1.0 + scale),
            "{what}: max |Δ| {diff} (values up to {scale}, tolerance {tol})"
        );
    }

    /// Tolerance of prompts through the device's tensor-core GEMM (f16 activations) against the
    /// CPU with quantized weights, whose matmuls quantize the activations to 8 bits (≈ 0.4 %
    /// per element; tests/fixtures/README.md: Q8_0 logits within 1.2 % of the row maximum of
    /// the reference): measured 0.6 % (logits) and 1 % (visual tokens) of the maximum.
    const QUANT_GEMM_TOL: f32 = 2e-2;

    /// Partial offload (`--gpu-layers 1` of the miniature's 2 layers: layer 0 on the device,
    /// layer 1 and the LM head on the CPU) against the CPU forward: a 5-token prompt and a
    /// decode step (GEMV), a 12-token prompt (tensor-core GEMM), then `truncate` back into the
    /// prompt and a different continuation (both KV caches must follow). F16 weights (f32
    /// activations on both sides: the bounds of the full-offload test) and Q8_0 (the GEMV's Q8_1
    /// activations are the CPU's Q8_0 values: the same logits; the GEMM: [`QUANT_GEMM_TOL`]).
    #[test]
    fn partial_offload_matches_the_cpu() {
        let devices = devices();
        if devices.is_empty() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (ty, gemm_tol) in [("f16", 1e-3), ("q8_0", QUANT_GEMM_TOL)] {
            let path = dir.path().join(format!("lm-{ty}.gguf"));
            convert_lm(3, ty, &path);
            let lm = runtime::llm::load_language_model(&path).unwrap();
            let model = &lm.model;
            assert_eq!(model.cfg.n_layer, 2, "the miniature has 2 layers");
            let vocab = model.cfg.n_vocab as u32;
            let prompt: Vec<u32> = [5u32, 17, 300, 42, 7].iter().map(|v| v % vocab).collect();
            let long: Vec<u32> = (0..12u32).map(|i| (i * 97 + 3) % vocab).collect();
            let embed = |ids: &[u32]| model.embed_tokens(ids).unwrap();

            // CPU: prompt, decode, then back to 3 positions and a 2-token continuation
            let mut cpu = CpuLm::new(model, CacheType::F16, 64);
            let want_a = [
                cpu.forward(embed(&prompt), true).unwrap(),
                cpu.forward(embed(&[99 % vocab]), true).unwrap(),
            ];
            cpu.truncate(3);
            let want_c = cpu.forward(embed(&[11, 12]), true).unwrap();
            cpu.clear();
            let want_b = cpu.forward(embed(&long), true).unwrap();

            for dev in &devices {
                let mut g = CudaLm::load(dev, model, 64, 1, CacheType::F16).unwrap();
                assert_eq!(g.n_gpu_layers(), 1);
                assert!(!g.gpu().has_head());
                let got_a = [
                    g.forward(embed(&prompt), true).unwrap(),
                    g.forward(embed(&[99 % vocab]), true).unwrap(),
                ];
                assert_eq!(g.len(), prompt.len() + 1);
                g.truncate(3);
                assert_eq!(g.len(), 3);
                let got_c = g.forward(embed(&[11, 12]), true).unwrap();
                g.clear();
                let got_b = g.forward(embed(&long), true).unwrap();
                let who = format!("{} {ty} gpu-layers 1/2", dev.describe());
                for (i, (got, want)) in got_a.iter().zip(&want_a).enumerate() {
                    check_close(
                        &format!("{who} prompt + decode [{i}] (GEMV)"),
                        got,
                        want,
                        1e-4,
                    );
                }
                check_close(
                    &format!("{who} after truncate (GEMV)"),
                    &got_c,
                    &want_c,
                    1e-4,
                );
                check_close(
                    &format!("{who} 12-token prompt (GEMM)"),
                    &got_b,
                    &want_b,
                    gemm_tol,
                );
                // the context bound holds on both sides, and a failed call changes nothing
                assert!(g.forward(embed(&[1; 60]), false).is_err());
                assert_eq!(g.len(), long.len());
                // the whole model on the device agrees as well (last-row logits)
                let mut full = CudaLm::load(dev, model, 64, 2, CacheType::F16).unwrap();
                assert!(full.gpu().has_head());
                let last = full.forward(embed(&long), false).unwrap();
                let n = model.cfg.n_vocab;
                check_close(
                    &format!("{} {ty} gpu-layers 2/2 last row", dev.describe()),
                    &last,
                    &want_b[want_b.len() - n..],
                    gemm_tol,
                );
            }
        }
        // bad layer counts are errors, not panics
        let path = dir.path().join("lm-f16.gguf");
        let lm = runtime::llm::load_language_model(&path).unwrap();
        for dev in &devices {
            assert!(CudaLm::load(dev, &lm.model, 8, 0, CacheType::F16).is_err());
            assert!(CudaLm::load(dev, &lm.model, 8, 3, CacheType::F16).is_err());
            let mut part = CudaPhi2::load_layers(dev, &lm.model, 8, 1).unwrap();
            assert!(part.forward_tokens(&[1, 2], false).is_err());
        }
    }

    /// The vision tower on the device against `VisionTower::encode` and the float64 PyTorch
    /// reference, on the reference pixels: stage 3 (28 px: 5 ViT tokens and 8 queries, the GEMV
    /// path) and stage 4 (56 px: 17 ViT tokens, the tensor-core GEMM with f16 activations in the
    /// ViT and the cross-attention keys / values), F32 and Q8_0 weights. The device must be about as
    /// close to the reference as the CPU (1 − cosine at most 1.25 × the CPU's).
    #[test]
    fn vision_tokens_match_the_cpu() {
        let devices = devices();
        if devices.is_empty() {
            return;
        }
        let manifest = manifest();
        let dir = tempfile::tempdir().unwrap();
        for (stage, ty, tol) in [
            (3, "f32", 1e-5f32),
            (3, "q8_0", 1e-5),
            (4, "f32", 1e-3),
            (4, "q8_0", QUANT_GEMM_TOL),
        ] {
            let r = &manifest["vision_refs"][format!("stage{stage}")];
            let (pixels, _) =
                runtime::npy::read_f32(&fixtures().join(r["pixels"]["file"].as_str().unwrap()))
                    .unwrap();
            let (reference, _) =
                runtime::npy::read_f32(&fixtures().join(r["tokens"]["file"].as_str().unwrap()))
                    .unwrap();
            let path = dir.path().join(format!("vision-{stage}-{ty}.gguf"));
            convert_vision(stage, ty, &path);
            let tower = runtime::vision::load_vision_tower(&path).unwrap();
            let want = tower.encode(&pixels).unwrap();
            let cpu_cos = cosine(&want, &reference);
            for dev in &devices {
                let mut enc = CudaVision::load(dev, &tower).unwrap();
                let got = enc.encode(&pixels).unwrap();
                assert_eq!(got.len(), tower.cfg.q_count * tower.cfg.n_embd_llm);
                let what = format!("{} stage {stage} {ty}", dev.describe());
                check_close(&what, &got, &want, tol);
                let dev_cos = cosine(&got, &reference);
                eprintln!("{what}: cosine to the reference {dev_cos:.6} (CPU {cpu_cos:.6})");
                assert!(
                    1.0 - dev_cos <= 1.25 * (1.0 - cpu_cos) + 1e-7,
                    "{what}: cosine to the reference {dev_cos} (CPU {cpu_cos})"
                );
                // the same tower again (buffers reused) gives the same tokens
                assert_eq!(enc.encode(&pixels).unwrap(), got, "{what}: second encode");
                // wrong pixel counts are errors
                assert!(enc.encode(&[0.0; 12]).is_err());
            }
        }
    }

    /// The whole pipeline through `runtime::backend::Compute`, as the CLI runs it: the stage-3
    /// image encoded on the device (Q8_0 tower), spliced into the rendered prompt (78
    /// positions), logits at every position on the device (F16 language model: all layers, and
    /// 1 of 2) against the CPU pipeline; then greedy generation through `generate_with` gives
    /// the CPU's tokens.
    #[test]
    fn pipeline_logits_match_the_cpu() {
        let devices = devices();
        if devices.is_empty() {
            return;
        }
        let manifest = manifest();
        let r = &manifest["e2e_refs"]["stage3"];
        let dir = tempfile::tempdir().unwrap();
        let (lm_path, vision_path) = (dir.path().join("lm.gguf"), dir.path().join("vision.gguf"));
        convert_lm(3, "f16", &lm_path);
        convert_vision(3, "q8_0", &vision_path);
        let lm = runtime::llm::load_language_model(&lm_path).unwrap();
        let tower = runtime::vision::load_vision_tower(&vision_path).unwrap();
        let image = fixtures().join(r["image"].as_str().unwrap());
        let prompt = render_single(Template::Stage3, r["question"].as_str().unwrap(), true);

        let opts = GenerateOptions {
            max_new_tokens: 5,
            sampling: runtime::sampling::SamplingParams {
                temperature: 0.0,
                repeat_penalty: 1.0,
                ..Default::default()
            },
            stop_ids: vec![],
            stop_strings: vec![],
        };
        let e = lm.model.cfg.n_embd;
        // image → logits at every position; then back to n − 1 positions and greedy generation
        // from the last prompt row (one long forward per backend: the emulator is slow)
        let pipeline = |compute: &Compute, gpu_layers: Option<usize>| {
            let mut enc = compute.image_encoder(&tower).unwrap();
            let (_, _, visual) = enc.embed_image_file(&image, 1 << 20).unwrap();
            let spliced =
                runtime::pipeline::splice(&lm.model, &lm.tokenizer, &prompt, &visual).unwrap();
            let n = spliced.n_positions;
            let mut backend = compute
                .language_model(&lm.model, CacheType::F16, n + 8, gpu_layers)
                .unwrap();
            let logits = backend.forward(spliced.embeddings.clone(), true).unwrap();
            backend.truncate(n - 1);
            let last_row = spliced.embeddings[(n - 1) * e..].to_vec();
            let g = generate_with(
                backend.as_mut(),
                &lm.tokenizer,
                last_row,
                &[],
                &opts,
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(backend.len(), n + 4, "prompt + 4 fed-back tokens");
            (logits, g.tokens, n, visual)
        };
        let (want, want_tokens, n, want_visual) = pipeline(&Compute::Cpu, None);
        assert_eq!(n, r["prompt_len"].as_u64().unwrap() as usize);
        // `generate` (the CPU entry point) over the whole prompt gives the same tokens
        let spliced =
            runtime::pipeline::splice(&lm.model, &lm.tokenizer, &prompt, &want_visual).unwrap();
        let mut cache = lm.model.new_cache(CacheType::F16, n + 8);
        let g = generate(
            &lm.model,
            &lm.tokenizer,
            &mut cache,
            spliced.embeddings,
            &[],
            &opts,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(g.tokens, want_tokens);
        for dev in devices {
            let compute = Compute::Cuda(dev.clone());
            for gpu_layers in [None, Some(1)] {
                let (got, tokens, _, visual) = pipeline(&compute, gpu_layers);
                let what = format!("{} pipeline gpu-layers {gpu_layers:?}", dev.describe());
                check_close(
                    &format!("{what} visual tokens"),
                    &visual,
                    &want_visual,
                    1e-5,
                );
                // the 78-row prompt takes the GEMM path (f16 activations) everywhere
                check_close(&what, &got, &want, 1e-3);
                assert_eq!(tokens, want_tokens, "{what}: greedy tokens");
            }
        }
    }
}
