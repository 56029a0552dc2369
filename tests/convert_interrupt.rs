//! Ctrl-C (SIGINT) during `tinygptv convert`, `quantize` and `synth`: the command stops, removes
//! its temporary file, leaves no output, prints one line and exits with status 130.
//!
//! Each test starts a write that takes seconds, waits until the writer's temporary file
//! (`.NAME.tmp.PID.N` next to the output) appears, sends SIGINT with `kill -INT` and checks the
//! result. The slow inputs are made in the test's temporary folder (a random-weight Phi-2 of
//! 20 M parameters, 40 MB of f16 safetensors, ~1.5 s to convert to q4_k on a loaded 2-core
//! machine) or by `synth` itself (seconds for its first tensor), so the signal, sent a few
//! milliseconds after the temporary file appears, always arrives mid-write.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fixtures;

const BIN: &str = env!("CARGO_BIN_EXE_tinygptv");
/// Longest wait for the temporary file to appear and for the process to exit.
const TIMEOUT: Duration = Duration::from_secs(25);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Runs `tinygptv args`, sends SIGINT as soon as the temporary file of `out` exists, and returns
/// the process's output.
fn run_and_interrupt(args: &[&str], out: &Path) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let temp_prefix = format!(
        ".{}.tmp.{}.",
        out.file_name().unwrap().to_string_lossy(),
        child.id()
    );
    let dir = out.parent().unwrap();
    let start = Instant::now();
    loop {
        if names_in(dir).iter().any(|n| n.starts_with(&temp_prefix)) {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            panic!(
                "{args:?} exited ({status}) before its temporary file appeared: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("{args:?}: no temporary file after {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success(), "kill -INT failed");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("{args:?}: still running {TIMEOUT:?} after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Exit status 130, one line on stderr naming the interruption, and an empty output folder.
fn assert_interrupted(what: &str, o: &Output, out_dir: &Path) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "{what}: finished before the interrupt arrived (make the input larger): {err}"
    );
    assert_eq!(o.status.code(), Some(130), "{what}: exit status; {err}");
    assert!(err.contains("interrupted"), "{what}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_eq!(
        names_in(out_dir),
        Vec::<String>::new(),
        "{what}: output or temporary files left behind"
    );
}

/// xorshift64* f16 bit patterns of magnitude 2^-7 .. 2^-5 with random signs (finite, normal).
fn random_f16_bytes(n: usize, seed: u64, out: &mut Vec<u8>) {
    let mut x = seed | 1;
    for _ in 0..n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u16;
        let bits = (r & 0x8000) | (0x2000 + (r & 0x7FFF) % 0x0C00);
        out.extend_from_slice(&bits.to_le_bytes());
    }
}

/// A split-layout Phi-2 HF folder (fixture tokenizer, vocab 1280) with hidden size 512, FFN 2048
/// and 6 layers: 20.2 M f16 parameters.
fn write_large_phi2(dir: &Path) {
    let (e, ff, layers, vocab) = (512usize, 2048usize, 6usize, 1280usize);
    std::fs::create_dir_all(dir).unwrap();
    let src = fixtures().join("phi2-safetensors");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "added_tokens.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["hidden_size"] = e.into();
    config["intermediate_size"] = ff.into();
    config["num_hidden_layers"] = layers.into();
    config["num_attention_heads"] = (e / 64).into();
    config["num_key_value_heads"] = (e / 64).into();
    config["vocab_size"] = vocab.into();
    config["torch_dtype"] = "float16".into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![vocab, e])];
    for i in 0..layers {
        let p = format!("model.layers.{i}.");
        for (name, shape) in [
            ("input_layernorm.weight", vec![e]),
            ("input_layernorm.bias", vec![e]),
            ("self_attn.q_proj.weight", vec![e, e]),
            ("self_attn.q_proj.bias", vec![e]),
            ("self_attn.k_proj.weight", vec![e, e]),
            ("self_attn.k_proj.bias", vec![e]),
            ("self_attn.v_proj.weight", vec![e, e]),
            ("self_attn.v_proj.bias", vec![e]),
            ("self_attn.dense.weight", vec![e, e]),
            ("self_attn.dense.bias", vec![e]),
            ("mlp.fc1.weight", vec![ff, e]),
            ("mlp.fc1.bias", vec![ff]),
            ("mlp.fc2.weight", vec![e, ff]),
            ("mlp.fc2.bias", vec![e]),
        ] {
            shapes.push((format!("{p}{name}"), shape));
        }
    }
    for (name, shape) in [
        ("model.final_layernorm.weight", vec![e]),
        ("model.final_layernorm.bias", vec![e]),
        ("lm_head.weight", vec![vocab, e]),
        ("lm_head.bias", vec![vocab]),
    ] {
        shapes.push((name.into(), shape));
    }
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let begin = data.len();
        random_f16_bytes(shape.iter().product(), i as u64 + 1, &mut data);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
}

#[test]
fn ctrl_c_stops_convert_and_quantize_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("phi2-large");
    write_large_phi2(&model);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("lm.gguf");

    let o = run_and_interrupt(
        &[
            "convert",
            "--phi2",
            s(&model),
            "--type",
            "q4_k",
            "--out",
            s(&out),
        ],
        &out,
    );
    assert_interrupted("convert", &o, &out_dir);

    // quantize: an f16 file of the same model, re-quantized to q4_k
    let f16 = tmp.path().join("lm-f16.gguf");
    let o = Command::new(BIN)
        .args([
            "convert",
            "--phi2",
            s(&model),
            "--type",
            "f16",
            "--out",
            s(&f16),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run_and_interrupt(&["quantize", s(&f16), s(&out), "q4_k"], &out);
    assert_interrupted("quantize", &o, &out_dir);
}

#[test]
fn ctrl_c_stops_synth_and_leaves_nothing() {
    // Full-size Phi-2: the first tensor alone (token_embd, 131 M values) takes seconds in q6_k.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth.gguf");
    let o = run_and_interrupt(
        &[
            "synth",
            "--arch",
            "phi2",
            "--type",
            "q6_k",
            "--pure",
            "--out",
            s(&out),
        ],
        &out,
    );
    assert_interrupted("synth", &o, tmp.path());
}
