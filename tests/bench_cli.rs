//! `tinygptv bench` on the miniature models: the `--json` object (a contract of issue #7), the
//! roofline arithmetic, the kernel level it reports, and one-line errors for bad arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kernels::gguf::GgufFile;
use serde_json::Value as Json;

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/tiny")
        .join(name)
}

fn bench(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tinygptv"));
    cmd.arg("bench").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running tinygptv bench")
}

#[test]
fn json_object_has_the_contract_fields() {
    let model = tiny("tinygptv-stage3-f16.gguf");
    let mmproj = tiny("tinygptv-stage3-vision-f16.gguf");
    let (m, v) = (model.to_str().unwrap(), mmproj.to_str().unwrap());
    let o = bench(
        &[
            "-m", m, "--mmproj", v, "-p", "8", "-n", "4", "-r", "2", "-t", "1", "--json",
        ],
        &[("TINYGPTV_CPU", "scalar")],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bench failed: {stderr}");
    let stdout = String::from_utf8(o.stdout).unwrap();
    // one JSON object on one line
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    let j: Json = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(j["model"], m);
    assert_eq!(j["threads"], 1);
    assert_eq!(j["device"], "CPU (scalar kernels)");
    let bw = j["bandwidth_gb_s"].as_f64().unwrap();
    let roof = j["roofline_tg_tokens_per_s"].as_f64().unwrap();
    assert!(bw.is_finite() && bw > 0.0, "{bw}");
    // roofline = bandwidth ÷ the bytes of every matrix but the embedding table
    let file = GgufFile::open(&model).unwrap();
    let bytes: u64 = file
        .tensors()
        .iter()
        .filter(|t| t.name != "token_embd.weight")
        .map(|t| t.n_bytes)
        .sum();
    let want = bw * 1e9 / bytes as f64;
    assert!((roof - want).abs() <= 1e-9 * want, "{roof} vs {want}");

    let results = j["results"].as_array().unwrap();
    let tests: Vec<&str> = results
        .iter()
        .map(|r| r["test"].as_str().unwrap())
        .collect();
    assert_eq!(tests, ["pp8", "tg4", "image"]);
    for r in results {
        assert_eq!(r["engine"], "tinygptv");
        let tps = r["tokens_per_s"].as_f64().unwrap();
        let sd = r["stddev"].as_f64().unwrap();
        assert!(tps.is_finite() && tps > 0.0, "{r}");
        assert!(sd.is_finite() && sd >= 0.0, "{r}");
    }
}

#[test]
fn table_names_each_test_and_the_device() {
    let model = tiny("tinygptv-stage3-f16.gguf");
    let o = bench(
        &[
            "-m",
            model.to_str().unwrap(),
            "-p",
            "4",
            "-n",
            "2",
            "-r",
            "1",
        ],
        &[("TINYGPTV_CPU", "scalar")],
    );
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("| engine | test | t/s |"), "{out}");
    assert!(out.contains("| tinygptv | pp4 |"), "{out}");
    assert!(out.contains("| tinygptv | tg2 |"), "{out}");
    assert!(out.contains("threads: "), "{out}");
    assert!(out.contains("CPU (scalar kernels)"), "{out}");
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let model = tiny("tinygptv-stage3-f16.gguf");
    let missing = tiny("no-such-model.gguf");
    for (args, needle) in [
        (
            vec!["-m", model.to_str().unwrap(), "-r", "0"],
            "-r must be at least 1",
        ),
        (vec!["-m", missing.to_str().unwrap()], "no-such-model.gguf"),
        (
            vec![
                "-m",
                model.to_str().unwrap(),
                "-p",
                "0",
                "-n",
                "0",
                "--vs-llama-cpp",
            ],
            "--vs-llama-cpp compares the pp and tg tests",
        ),
    ] {
        let o = bench(&args, &[]);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
}

#[cfg(not(feature = "llama-cpp"))]
#[test]
fn vs_llama_cpp_without_the_feature_is_a_one_line_error() {
    let model = tiny("tinygptv-stage3-f16.gguf");
    let o = bench(
        &[
            "-m",
            model.to_str().unwrap(),
            "-p",
            "4",
            "-n",
            "0",
            "--vs-llama-cpp",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    // nothing measured before the error
    assert!(o.stdout.is_empty());
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--features llama-cpp"), "{err}");
}

/// `--vs-llama-cpp` on the stock-phi2 miniature (which llama.cpp loads): llama.cpp's pp and tg
/// after ours, in the JSON object and in the table with the ratios. (Run with
/// `cargo test --features llama-cpp --test bench_cli`.)
#[cfg(feature = "llama-cpp")]
#[test]
fn vs_llama_cpp_adds_llama_cpp_results_and_ratios() {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python-gguf/phi2-mini-f16.gguf");
    let m = model.to_str().unwrap();
    let args = [
        "-m",
        m,
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "2",
        "-t",
        "1",
        "--vs-llama-cpp",
    ];
    let o = bench(&[&args[..], &["--json"]].concat(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: Json = serde_json::from_str(String::from_utf8(o.stdout).unwrap().trim()).unwrap();
    let results = j["results"].as_array().unwrap();
    let rows: Vec<(&str, &str)> = results
        .iter()
        .map(|r| (r["engine"].as_str().unwrap(), r["test"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rows,
        [
            ("tinygptv", "pp8"),
            ("tinygptv", "tg4"),
            ("llama.cpp", "pp8"),
            ("llama.cpp", "tg4")
        ]
    );
    for r in results {
        let tps = r["tokens_per_s"].as_f64().unwrap();
        assert!(tps.is_finite() && tps > 0.0, "{r}");
        assert!(r["stddev"].as_f64().unwrap() >= 0.0, "{r}");
    }

    let o = bench(&args, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    for test in ["pp8", "tg4"] {
        assert!(out.contains(&format!("| llama.cpp | {test} |")), "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{test}: tinygptv / llama.cpp = ")))
            .unwrap_or_else(|| panic!("no {test} ratio in {out}"));
        let ratio: f64 = line
            .rsplit("= ")
            .next()
            .unwrap()
            .trim_end_matches('×')
            .parse()
            .unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{line}");
    }
}
