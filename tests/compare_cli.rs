//! `tinygptv compare` on the miniature fixtures: KLD of a file against itself is exactly 0,
//! perplexity and KLD equal a straightforward computation from the logits, the `.kld` file
//! holds llama.cpp's exact layout and round-trips, the vision mode, the sweep (JSON contract,
//! CSV, plot) and Ctrl-C.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use runtime::compare::kld_file::{encode_log_probs, record_words, KldReader};
use runtime::kv_cache::CacheType;

// (the file allows its own dead code: this test uses a subset)
#[cfg(feature = "llama-cpp")]
#[path = "../src/llama_cpp.rs"]
mod llama_cpp;

fn tinygptv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinygptv"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("field '{key}' missing or not a number in {v}"))
}

/// Deterministic English-like text of `n` words.
fn sample_text(n: usize) -> String {
    let words = [
        "the", "model", "reads", "a", "picture", "of", "small", "red", "house", "near", "river",
        "and", "answers", "question", "about", "it", "with", "short", "words", "cat", "dog",
        "tree", "sky", "blue", "is", "on",
    ];
    let mut x = 12345u32;
    let mut out = String::new();
    for i in 0..n {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        out += words[(x >> 16) as usize % words.len()];
        out += if i % 11 == 10 { ". " } else { " " };
    }
    out
}

struct Files {
    dir: tempfile::TempDir,
    lm_f32: PathBuf,
    lm_q8: PathBuf,
    text: PathBuf,
}

fn requantize(input: &Path, ty: &str, out: &Path) {
    converter::requantize::plan_requantize(input, ty.parse().unwrap(), false)
        .unwrap()
        .write(out, true)
        .unwrap();
}

fn lm_files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let lm_f32 = dir.path().join("lm-f32.gguf");
    let lm_q8 = dir.path().join("lm-q8_0.gguf");
    convert_lm("phi2-safetensors", "f32", Some(3), &lm_f32);
    requantize(&lm_f32, "q8_0", &lm_q8);
    let text = dir.path().join("text.txt");
    std::fs::write(&text, sample_text(400)).unwrap();
    Files {
        dir,
        lm_f32,
        lm_q8,
        text,
    }
}

/// Straightforward softmax of one row in f64.
fn probs(row: &[f32]) -> Vec<f64> {
    let e: Vec<f64> = row.iter().map(|&x| (x as f64).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// Logits of every chunk (F16 cache, as the command's default).
fn chunk_logits(model: &Path, tokens: &[u32], n_ctx: usize, n_chunk: usize) -> Vec<Vec<f32>> {
    let lm = runtime::llm::load_language_model(model).unwrap();
    (0..n_chunk)
        .map(|c| {
            let mut cache = lm.model.new_cache(CacheType::F16, n_ctx);
            let x = lm
                .model
                .embed_tokens(&tokens[c * n_ctx..(c + 1) * n_ctx])
                .unwrap();
            lm.model.forward(x, &mut cache, true).unwrap()
        })
        .collect()
}

#[test]
fn self_kld_is_zero_and_ppl_and_kld_match_a_hand_computation() {
    let fl = lm_files();
    let kld = fl.dir.path().join("base.kld");
    let (n_ctx, n_chunk) = (32usize, 3usize);
    let o = tinygptv(&[
        "compare",
        "--base",
        s(&fl.lm_f32),
        "--model",
        s(&fl.lm_f32),
        "--model",
        s(&fl.lm_q8),
        "--text",
        s(&fl.text),
        "--ctx",
        "32",
        "--chunks",
        "3",
        "--save-base",
        s(&kld),
        "--json",
        "-t",
        "2",
    ]);
    let j = json_of(&o);
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(j["interrupted"], false);

    // the contract fields
    for r in rows {
        for key in [
            "size_bytes",
            "ppl",
            "ppl_err",
            "kld_mean",
            "kld_p99",
            "same_top_p",
            "bpw",
            "delta_ppl",
            "kld_median",
            "kld_p90",
            "kld_max",
            "rms_dp",
        ] {
            assert!(r[key].is_number(), "{key} in {r}");
        }
        assert!(r["model"].is_string());
        assert_eq!(r["n_tokens"], 45, "3 chunks × 15 scored positions");
    }
    assert_eq!(
        rows[1]["size_bytes"].as_u64().unwrap(),
        std::fs::metadata(&fl.lm_q8).unwrap().len()
    );

    // a file against itself
    let me = &rows[0];
    for key in [
        "kld_mean",
        "kld_max",
        "kld_p99",
        "delta_ppl",
        "rms_dp",
        "dp_mean",
    ] {
        assert_eq!(f(me, key), 0.0, "{key} of a file against itself");
    }
    assert_eq!(f(me, "same_top_p"), 1.0);

    // hand computation from the logits
    let lm = runtime::llm::load_language_model(&fl.lm_f32).unwrap();
    let tokens = lm
        .tokenizer
        .encode(&std::fs::read_to_string(&fl.text).unwrap(), false);
    assert!(tokens.len() >= n_ctx * n_chunk);
    let v = lm.model.cfg.n_vocab;
    let base = chunk_logits(&fl.lm_f32, &tokens, n_ctx, n_chunk);
    let q8 = chunk_logits(&fl.lm_q8, &tokens, n_ctx, n_chunk);
    let (mut nll_b, mut nll_q, mut kl, mut same, mut n) = (0.0f64, 0.0f64, 0.0f64, 0usize, 0usize);
    let argmax = |p: &[f64]| (0..p.len()).fold(0, |m, i| if p[i] > p[m] { i } else { m });
    for c in 0..n_chunk {
        for j in n_ctx / 2..n_ctx - 1 {
            let next = tokens[c * n_ctx + j + 1] as usize;
            let pb = probs(&base[c][j * v..(j + 1) * v]);
            let pq = probs(&q8[c][j * v..(j + 1) * v]);
            nll_b -= pb[next].ln();
            nll_q -= pq[next].ln();
            kl += pb
                .iter()
                .zip(&pq)
                .filter(|(b, _)| b.ln() > -16.0)
                .map(|(b, q)| b * (b / q).ln())
                .sum::<f64>();
            same += (argmax(&pb) == argmax(&pq)) as usize;
            n += 1;
        }
    }
    let ppl_b = (nll_b / n as f64).exp();
    let ppl_q = (nll_q / n as f64).exp();
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1e-12),
            "{what}: {a} vs hand {b}"
        )
    };
    close(f(&j["base"]["lm"], "ppl"), ppl_b, "base PPL");
    close(f(me, "ppl"), ppl_b, "PPL of the base file as a model");
    close(f(&rows[1], "ppl"), ppl_q, "q8_0 PPL");
    close(f(&rows[1], "ppl_base"), ppl_b, "q8_0 row's base PPL");
    close(f(&rows[1], "kld_mean"), kl / n as f64, "q8_0 mean KLD");
    assert_eq!(f(&rows[1], "same_top_p"), same as f64 / n as f64);
    assert!(f(&rows[1], "kld_mean") > 0.0, "q8_0 must differ from f32");

    // the .kld file: llama.cpp's layout with our logits
    let mut r = KldReader::open(&kld).unwrap();
    assert_eq!(
        (r.header.n_ctx, r.header.n_vocab, r.header.n_chunk),
        (n_ctx, v, n_chunk)
    );
    assert_eq!(r.header.tokens, tokens[..n_ctx * n_chunk]);
    let bytes = std::fs::read(&kld).unwrap();
    let nv = 2 * v.div_ceil(2) + 4;
    assert_eq!(
        bytes.len(),
        20 + 4 * n_ctx * n_chunk + 2 * nv * (n_ctx - 1 - n_ctx / 2) * n_chunk
    );
    let mut words = Vec::new();
    let mut want = vec![0u16; record_words(v)];
    for chunk in &base {
        r.read_chunk(&mut words).unwrap();
        for (p, j) in (n_ctx / 2..n_ctx - 1).enumerate() {
            encode_log_probs(&chunk[j * v..(j + 1) * v], &mut want).unwrap();
            assert_eq!(
                &words[p * nv..(p + 1) * nv],
                &want[..],
                "record of position {j}"
            );
        }
    }

    // the same comparison from the saved file: tokens and base distribution come from it
    let o = tinygptv(&[
        "compare",
        "--base-logits",
        s(&kld),
        "--model",
        s(&fl.lm_q8),
        "--json",
        "-q",
    ]);
    let j2 = json_of(&o);
    let r2 = &j2["rows"][0];
    assert_eq!(r2["n_tokens"], 45);
    assert_eq!(
        f(r2, "ppl"),
        f(&rows[1], "ppl"),
        "the model side is computed identically"
    );
    let (a, b) = (f(r2, "kld_mean"), f(&rows[1], "kld_mean"));
    assert!(
        (a - b).abs() <= 0.01 * b + 2e-5,
        "KLD through the 16-bit file {a} vs exact {b}"
    );
    // a chunk size that disagrees with the file is refused
    let o = tinygptv(&[
        "compare",
        "--base-logits",
        s(&kld),
        "--model",
        s(&fl.lm_q8),
        "--ctx",
        "64",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("differs"));
}

#[test]
fn vision_mode_on_the_miniature_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let vis = |ty: &str| dir.path().join(format!("vision-{ty}.gguf"));
    convert_vision(3, "f32", &vis("f32"));
    requantize(&vis("f32"), "q8_0", &vis("q8_0"));
    requantize(&vis("f32"), "q4_0", &vis("q4_0"));
    let lm = dir.path().join("lm.gguf");
    convert_lm("phi2-safetensors", "f32", Some(3), &lm);
    let images = fixtures().join("images");
    let o = tinygptv(&[
        "compare",
        "--mmproj-base",
        s(&vis("f32")),
        "--mmproj",
        s(&vis("f32")),
        "--mmproj",
        s(&vis("q8_0")),
        "--mmproj",
        s(&vis("q4_0")),
        "--images",
        s(&images),
        "--model",
        s(&lm),
        "--prompt",
        "What is in the image?",
        "--answer-tokens",
        "6",
        "--json",
        "-q",
    ]);
    let j = json_of(&o);
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let n_images = std::fs::read_dir(&images).unwrap().count() as u64;
    for r in rows {
        for key in [
            "cosine_mean",
            "cosine_min",
            "rel_l2_mean",
            "rel_l2_max",
            "size_bytes",
            "vis_kld_mean",
            "vis_same_top_p",
        ] {
            assert!(r[key].is_number(), "{key} in {r}");
        }
        assert!(r["mmproj"].is_string());
        assert_eq!(r["n_images"].as_u64().unwrap(), n_images);
    }
    let (me, q8, q4) = (&rows[0], &rows[1], &rows[2]);
    assert!(f(me, "cosine_mean") > 1.0 - 1e-12 && f(me, "cosine_min") > 1.0 - 1e-12);
    assert_eq!(f(me, "rel_l2_mean"), 0.0);
    assert_eq!(f(me, "vis_kld_mean"), 0.0);
    assert_eq!(f(me, "vis_same_top_p"), 1.0);
    for (r, name) in [(q8, "q8_0"), (q4, "q4_0")] {
        let c = f(r, "cosine_mean");
        assert!(c > 0.9 && c < 1.0, "{name} mean cosine {c}");
        assert!(
            f(r, "cosine_min") <= c && f(r, "cosine_min") > 0.8,
            "{name}"
        );
        assert!(f(r, "rel_l2_mean") > 0.0, "{name}");
        assert!(f(r, "vis_kld_mean") >= 0.0);
    }
    assert!(
        f(q4, "cosine_mean") < f(q8, "cosine_mean"),
        "4 bits are further from the base than 8"
    );
    assert!(f(q4, "rel_l2_mean") > f(q8, "rel_l2_mean"));
    assert!(
        f(q4, "vis_kld_mean") > 0.0,
        "the q4_0 visual tokens move the answer distribution"
    );
}

#[test]
fn sweep_quantizes_measures_and_plots() {
    let fl = lm_files();
    let vis = fl.dir.path().join("vision-f32.gguf");
    convert_vision(3, "f32", &vis);
    let keep = fl.dir.path().join("quants");
    let plot = fl.dir.path().join("sweep.svg");
    let images = fixtures().join("images");
    let common = [
        "compare",
        "--base",
        s(&fl.lm_f32),
        "--quants",
        "q4_0,q8_0",
        "--text",
        s(&fl.text),
        "--ctx",
        "32",
        "--chunks",
        "2",
        "--mmproj-base",
        s(&vis),
        "--images",
        s(&images),
        "--speed-pp",
        "8",
        "--speed-tg",
        "4",
        "-q",
    ];
    let mut args = common.to_vec();
    args.extend(["--json", "--plot", s(&plot), "--keep-quants", s(&keep)]);
    let j = json_of(&tinygptv(&args));
    let rows = j["rows"].as_array().unwrap();
    let types: Vec<&str> = rows.iter().map(|r| r["quant"].as_str().unwrap()).collect();
    assert_eq!(types, ["q8_0", "q4_0"], "sorted by size, largest first");
    for r in rows {
        for key in [
            "size_bytes",
            "ppl",
            "ppl_err",
            "kld_mean",
            "kld_p99",
            "pp_tps",
            "tg_tps",
            "cosine_mean",
            "cosine_min",
            "rel_l2_mean",
            "mmproj_size_bytes",
        ] {
            assert!(r[key].is_number(), "{key} in {r}");
        }
        let p = f(r, "same_top_p");
        assert!((0.0..=1.0).contains(&p));
        assert!(f(r, "kld_mean") > 0.0 && f(r, "pp_tps") > 0.0);
        assert!(
            Path::new(r["model"].as_str().unwrap()).exists(),
            "kept quantized file"
        );
        assert!(
            Path::new(r["mmproj"].as_str().unwrap()).exists(),
            "kept quantized vision file"
        );
    }
    assert!(f(&rows[0], "kld_mean") < f(&rows[1], "kld_mean"));
    assert!(f(&rows[0], "size_bytes") > f(&rows[1], "size_bytes"));
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.contains("q4_0")
            && svg.contains("KL divergence")
            && svg.contains("cosine")
    );
    let png = std::fs::read(plot.with_extension("png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // a kept folder's files are reused by the next sweep
    let kept = keep.join("lm-f32-q4_0.gguf");
    let before = std::fs::metadata(&kept).unwrap().modified().unwrap();
    let o = tinygptv(&[
        "compare",
        "--base",
        s(&fl.lm_f32),
        "--quants",
        "q4_0",
        "--text",
        s(&fl.text),
        "--ctx",
        "32",
        "--chunks",
        "1",
        "--speed-pp",
        "0",
        "--speed-tg",
        "0",
        "--keep-quants",
        s(&keep),
    ]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("reusing"));
    assert_eq!(
        std::fs::metadata(&kept).unwrap().modified().unwrap(),
        before
    );

    // CSV: the JSON fields as columns, one line per type
    let mut args = common.to_vec();
    args.push("--csv");
    let o = tinygptv(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(&header[..3], ["quant", "model", "mmproj"]);
    for key in ["size_bytes", "kld_mean", "same_top_p", "cosine_mean"] {
        assert!(header.contains(&key), "{key} in {}", lines[0]);
    }
    assert!(lines[1].starts_with("q8_0,") && lines[2].starts_with("q4_0,"));

    // markdown (default): one table, the base line above it; --json-out writes the JSON too
    let json_out = fl.dir.path().join("report.json");
    let mut args = common.to_vec();
    args.extend(["--json-out", s(&json_out)]);
    let o = tinygptv(&args);
    let md = String::from_utf8(o.stdout).unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    assert_eq!(j["rows"].as_array().unwrap().len(), 2);
    assert!(
        md.contains("base: ") && md.contains("| type | size |") && md.contains("| q4_0 |"),
        "{md}"
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_prints_what_was_measured() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let fl = lm_files();
    let long = fl.dir.path().join("long.txt");
    std::fs::write(&long, sample_text(60_000)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinygptv"))
        .args([
            "compare",
            "--base",
            s(&fl.lm_f32),
            "--model",
            s(&fl.lm_q8),
            "--text",
            s(&long),
            "--ctx",
            "16",
            "--json",
            "-t",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let drain = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("chunk 5/") {
                let _ = tx.send(());
            }
            all += &line;
            all += "\n";
        }
        all
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("progress lines on stderr");
    let k = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    let out = child.wait_with_output().unwrap();
    let err = drain.join().unwrap();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["interrupted"], true);
    let base = &j["base"]["lm"];
    let (done, planned) = (
        base["n_chunks"].as_u64().unwrap(),
        base["n_chunks_planned"].as_u64().unwrap(),
    );
    assert!(done >= 2 && done < planned, "{done} of {planned} chunks");
    let row = &j["rows"][0];
    assert_eq!(row["n_chunks"].as_u64().unwrap(), done);
    assert_eq!(
        row["n_tokens"].as_u64().unwrap(),
        done * 7,
        "whole chunks only: 7 scored positions each"
    );
    assert!(f(row, "kld_mean") > 0.0);
}

#[test]
fn bad_inputs_give_one_line_errors() {
    let fl = lm_files();
    let junk = fl.dir.path().join("junk.kld");
    std::fs::write(&junk, b"not a kld file at all").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["compare", "--text", s(&fl.text)], "nothing to compare"),
        (
            vec!["compare", "--base", s(&fl.lm_f32), "--model", s(&fl.lm_q8)],
            "--text",
        ),
        (
            vec![
                "compare",
                "--base-logits",
                s(&junk),
                "--model",
                s(&fl.lm_q8),
            ],
            "junk.kld",
        ),
        (
            vec![
                "compare",
                "--base",
                s(&fl.lm_f32),
                "--model",
                s(&fl.lm_q8),
                "--text",
                s(&fl.text),
                "--ctx",
                "4096",
            ],
            "fewer than one",
        ),
        (
            vec![
                "compare",
                "--base",
                s(&fl.lm_f32),
                "--model",
                s(&fl.lm_q8),
                "--text",
                s(&fl.text),
                "--plot",
                "x.svg",
            ],
            "--quants",
        ),
        (
            vec![
                "compare",
                "--base",
                s(&fl.lm_f32),
                "--quants",
                "q3_xs",
                "--text",
                s(&fl.text),
            ],
            "unknown type",
        ),
        (
            vec![
                "compare",
                "--mmproj-base",
                s(&fl.lm_f32),
                "--text",
                s(&fl.text),
            ],
            "--text needs",
        ),
        (
            vec![
                "compare",
                "--base-logits",
                s(&junk),
                "--save-base",
                s(&junk),
            ],
            "--save-base",
        ),
    ];
    for (args, needle) in cases {
        let o = tinygptv(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} must fail");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(
            err.trim()
                .lines()
                .filter(|l| l.starts_with("error:"))
                .count(),
            1,
            "{err}"
        );
    }
}

/// On stock-phi2 files, our KLD and top-1 agreement equal the same statistics computed from
/// llama.cpp's own logits of the same files (llama-perplexity's chunking), within 1 % (with
/// an absolute floor of 1e-6 for the KLD, see below).
#[cfg(feature = "llama-cpp")]
#[test]
fn kld_agrees_with_llama_cpp_logits() {
    use llama_cpp::{LlamaCppModel, LlamaOptions};
    use runtime::compare::eval::{score_chunk, BaseRows};
    use runtime::compare::stats::KldStats;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("phi2-f16.gguf");
    convert_lm("phi2-safetensors", "f16", None, &base);
    let lm = runtime::llm::load_language_model(&base).unwrap();
    let text = sample_text(2000);
    let tokens = lm.tokenizer.encode(&text, false);
    let (n_ctx, n_chunk, v) = (128usize, 4usize, lm.model.cfg.n_vocab);
    assert!(tokens.len() >= n_ctx * n_chunk);
    let opts = LlamaOptions {
        threads: 2,
        ..LlamaOptions::default()
    };
    let llama_chunks = |path: &Path| -> Vec<Vec<f32>> {
        let m = LlamaCppModel::load(path).unwrap();
        assert_eq!(m.n_vocab(), v);
        (0..n_chunk)
            .map(|c| {
                m.logits(&tokens[c * n_ctx..(c + 1) * n_ctx], &opts)
                    .unwrap()
            })
            .collect()
    };
    let stats = |base: &[Vec<f32>], q: &[Vec<f32>]| {
        let mut st = KldStats::default();
        for c in 0..n_chunk {
            let chunk = &tokens[c * n_ctx..(c + 1) * n_ctx];
            for s in score_chunk(BaseRows::Logits(&base[c]), &q[c], chunk, v).unwrap() {
                st.push(&s);
            }
        }
        st.summary().unwrap()
    };
    let ours_base = chunk_logits(&base, &tokens, n_ctx, n_chunk);
    let llama_base = llama_chunks(&base);
    for ty in ["q8_0", "q4_0", "q4_k_m"] {
        let q = dir.path().join(format!("phi2-{ty}.gguf"));
        requantize(&base, ty, &q);
        let ours = stats(&ours_base, &chunk_logits(&q, &tokens, n_ctx, n_chunk));
        let theirs = stats(&llama_base, &llama_chunks(&q));
        eprintln!(
            "{ty}: KLD ours {:.6e} llama.cpp {:.6e}; same top p ours {:.4} llama.cpp {:.4}; PPL ours {:.4} llama.cpp {:.4}",
            ours.kld_mean, theirs.kld_mean, ours.same_top_p, theirs.same_top_p, ours.ppl, theirs.ppl
        );
        // within 1 %, or 1e-6 absolute: at q8_0 the mean KLD (about 6e-5 here) is near the
        // float rounding of the two engines' different summation orders. On an AVX2-only
        // Zen 3 (both engines at their AVX2 level) it differed by 6.5e-7 (1.06 %), with our
        // numbers bit-identical to the previous commits' (`bench/REPORT.md`, eighteenth
        // session). q4_0's and q4_k_m's KLDs (4–5e-3) still get the 1 %.
        let diff = (ours.kld_mean - theirs.kld_mean).abs();
        assert!(
            diff <= (0.01 * theirs.kld_mean).max(1e-6),
            "{ty}: mean KLD differs by {:.2} % ({diff:.3e})",
            100.0 * diff / theirs.kld_mean
        );
        assert!(
            (ours.same_top_p - theirs.same_top_p).abs() <= 0.01,
            "{ty}: same top p"
        );
    }
}

/// Our converter's `--pure` conversion of the miniature stock phi2 (what the `.kld` fixture's
/// numbers were measured on, scripts/gen_kld_fixture.sh).
fn convert_pure(ty: &str, out: &Path) {
    let o = tinygptv(&[
        "convert",
        "--phi2",
        s(&fixtures().join("phi2-safetensors")),
        "--type",
        ty,
        "--pure",
        "--out",
        s(out),
        "-t",
        "2",
    ]);
    assert!(
        o.status.success(),
        "convert {ty}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn rel_diff(ours: f64, theirs: f64) -> f64 {
    (ours - theirs).abs() / theirs.abs()
}

/// Issue #8, `.kld` interoperability: a base file written by llama.cpp's own
/// `llama-perplexity --kl-divergence-base` (tests/fixtures/kld, made by
/// scripts/gen_kld_fixture.sh) is read by `compare --base-logits`, and our numbers for the same
/// quantized files equal what `llama-perplexity --kl-divergence` printed: the base PPL (decoded
/// from the file's 16-bit records by both) to 1e-3, PPL(Q), the mean KLD and the top-1 agreement
/// to 1 %. Exception: q8_0's mean KLD on this random-weight miniature is ~5e-5, the size of the
/// two runtimes' own numeric differences (llama.cpp moves it by 4 % between `-fa on` and
/// `-fa off`, we by 10 % between an f16 and an f32 KV cache), so it is held to 10 %.
#[test]
fn reads_llama_perplexity_kld_and_reproduces_its_numbers() {
    let fx = fixtures().join("kld");
    let kld = fx.join("phi2-mini-f32-c64.kld");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("llama-perplexity.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q8 = dir.path().join("q8_0.gguf");
    let q4 = dir.path().join("q4_0.gguf");
    convert_pure("q8_0", &q8);
    convert_pure("q4_0", &q4);

    // llama.cpp's tokens are what our tokenizer makes of the same text
    let header = KldReader::open(&kld).unwrap().header;
    assert_eq!(
        (header.n_ctx, header.n_vocab, header.n_chunk),
        (64, 1280, 6)
    );
    let text = std::fs::read_to_string(fx.join("sample.txt")).unwrap();
    let ours = runtime::llm::load_language_model(&q4)
        .unwrap()
        .tokenizer
        .encode(&text, false);
    assert!(ours.len() >= header.tokens.len());
    assert_eq!(&ours[..header.tokens.len()], &header.tokens[..]);

    let report = json_of(&tinygptv(&[
        "compare",
        "--base-logits",
        s(&kld),
        "--model",
        s(&q8),
        "--model",
        s(&q4),
        "--json",
        "-q",
        "-t",
        "2",
    ]));
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, ty, kld_tol) in [(&rows[0], "q8_0", 0.10), (&rows[1], "q4_0", 0.01)] {
        let w = &want[ty];
        eprintln!(
            "{ty}: KLD ours {:.6e} llama.cpp {:.6e}; same top p ours {:.4} llama.cpp {:.4} %; \
             PPL ours {:.4} llama.cpp {:.4}; PPL(base) ours {:.4} llama.cpp {:.4}",
            f(row, "kld_mean"),
            f(w, "kld_mean"),
            100.0 * f(row, "same_top_p"),
            f(w, "same_top_p_percent"),
            f(row, "ppl"),
            f(w, "ppl"),
            f(row, "ppl_base"),
            f(w, "ppl_base"),
        );
        assert_eq!(f(row, "n_chunks"), 6.0, "{ty}");
        assert_eq!(f(row, "n_tokens"), 6.0 * 31.0, "{ty}");
        let d = rel_diff(f(row, "ppl_base"), f(w, "ppl_base"));
        assert!(d <= 1e-3, "{ty}: PPL(base) differs by {d:.2e}");
        let d = rel_diff(f(row, "ppl"), f(w, "ppl"));
        assert!(d <= 0.01, "{ty}: PPL(Q) differs by {:.3} %", 100.0 * d);
        let d = rel_diff(f(row, "kld_mean"), f(w, "kld_mean"));
        assert!(d <= kld_tol, "{ty}: mean KLD differs by {:.2} %", 100.0 * d);
        let d = rel_diff(100.0 * f(row, "same_top_p"), f(w, "same_top_p_percent"));
        assert!(d <= 0.01, "{ty}: same top p differs by {:.2} %", 100.0 * d);
    }
}

/// The other direction of the `.kld` interoperability: `llama-perplexity --kl-divergence` reads
/// a base file written by `compare --save-base` and finds our numbers (q4_0, 1 %). Needs
/// llama.cpp's tools (scripts/gen_kld_fixture.sh says how to build them):
/// `LLAMA_PERPLEXITY=/work/llama-build/bin/llama-perplexity cargo test --test compare_cli -- --ignored llama_perplexity_reads`.
#[test]
#[ignore = "needs llama-perplexity (set LLAMA_PERPLEXITY)"]
fn llama_perplexity_reads_our_kld() {
    let Some(ppl_bin) = std::env::var_os("LLAMA_PERPLEXITY") else {
        panic!("set LLAMA_PERPLEXITY to the llama-perplexity binary");
    };
    let dir = tempfile::tempdir().unwrap();
    let (f32_path, q4) = (dir.path().join("f32.gguf"), dir.path().join("q4_0.gguf"));
    convert_pure("f32", &f32_path);
    convert_pure("q4_0", &q4);
    let kld = dir.path().join("ours.kld");
    let text = fixtures().join("kld/sample.txt");
    let report = json_of(&tinygptv(&[
        "compare",
        "--base",
        s(&f32_path),
        "--model",
        s(&q4),
        "--text",
        s(&text),
        "--ctx",
        "64",
        "--chunks",
        "6",
        "--save-base",
        s(&kld),
        "--json",
        "-q",
        "-t",
        "2",
    ]));
    let ours = &report["rows"][0];
    let o = Command::new(ppl_bin)
        .args(["-m", s(&q4), "--kl-divergence-base", s(&kld)])
        .args(["--kl-divergence", "-b", "64", "-t", "2"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "llama-perplexity failed: {log}");
    // "Label : value ± error" lines of its final report
    let value = |label: &str| -> f64 {
        let line = log
            .lines()
            .find(|l| l.starts_with(label) && l.contains(':'))
            .unwrap_or_else(|| panic!("no '{label}' line in: {log}"));
        let v = line
            .split_once(':')
            .unwrap()
            .1
            .split_whitespace()
            .next()
            .unwrap();
        v.trim_end_matches('%').parse().unwrap()
    };
    let (kld_l, same_l, ppl_l) = (
        value("Mean    KLD"),
        value("Same top p"),
        value("Mean PPL(Q)"),
    );
    eprintln!(
        "KLD ours {:.6} llama.cpp {kld_l}; same top p ours {:.3} llama.cpp {same_l} %; PPL ours {:.4} llama.cpp {ppl_l}",
        f(ours, "kld_mean"),
        100.0 * f(ours, "same_top_p"),
        f(ours, "ppl")
    );
    assert!(rel_diff(f(ours, "kld_mean"), kld_l) <= 0.01, "mean KLD");
    assert!(
        rel_diff(100.0 * f(ours, "same_top_p"), same_l) <= 0.01,
        "same top p"
    );
    assert!(rel_diff(f(ours, "ppl"), ppl_l) <= 0.01, "PPL(Q)");
}
