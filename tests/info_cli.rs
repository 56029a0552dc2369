//! End-to-end tests of `tinygptv info` on the committed GGUF fixtures
//! (kernels/tests/data/gguf/: written by gguf-py and by our writer) and on corrupted copies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kernels::gguf::{GgufWriter, Value};
use kernels::GgmlType;
use serde_json::Value as Json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kernels/tests/data/gguf")
        .join(name)
}

fn info(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinygptv"))
        .arg("info")
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Runs `info` expecting failure: exit code 1, nothing on stdout, one stderr line naming the
/// file. Returns that line.
fn info_error(file: &Path) -> String {
    let o = info(&[], file);
    assert_eq!(o.status.code(), Some(1), "stdout: {}", stdout(&o));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(
        err.starts_with(&format!("error: {}: ", file.display())),
        "{err:?}"
    );
    err
}

#[test]
fn info_on_python_written_file() {
    let path = fixture("python_written.gguf");
    let o = info(&[], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for expected in [
        "GGUF:        version 3, little-endian",
        "alignment:   32",
        "data offset: 1408 (0x580)",
        "metadata:    28 keys",
        "tensors:     7",
        "  general.architecture          str           \"testarch\"",
        "  test.arr.str                  arr[str,4]    [\"a\", \"\", \"ünïcödé\", \"quote \\\" and\\nnewline\"]",
        "  test.arr.f64                  arr[f64,3]    [1e-300, -0.0, 1e300]",
        "  3  t.q8_0  Q8_0   [64, 2]",
        "  Q8_0        1 tensors               128 elements  136 bytes",
        "total:       7 tensors, 218 parameters (218), tensor data 239 bytes, file size 1792 bytes (1.75 KiB)",
        "validation:  OK",
        "warnings:    none",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // The q8_0 row: 128 elements, 136 bytes at offset 96.
    let row = text.lines().find(|l| l.contains("t.q8_0")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[cols.len() - 3..], ["128", "136", "96"]);
}

#[test]
fn info_json_on_our_file() {
    let o = info(&["--json"], &fixture("rust_written.gguf"));
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["valid"], true);
    assert_eq!(j["version"], 3);
    assert_eq!(j["alignment"], 64);
    assert_eq!(j["data_offset"], 1408);
    assert_eq!(j["file_size"], 1792);
    assert_eq!(j["kv_count"], 30);
    assert_eq!(j["tensor_count"], 5);
    assert_eq!(j["total_parameters"], 6 + 5 + 128 + 4);
    assert_eq!(j["total_tensor_bytes"], 24 + 10 + 136 + 16);

    let kv = |key: &str| {
        j["metadata"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["key"] == key)
            .unwrap()
            .clone()
    };
    assert_eq!(kv("general.architecture")["value"], "testarch");
    assert_eq!(kv("test.u64")["value"], (1u64 << 63) + 5);
    assert_eq!(kv("test.i8")["type"], "i8");
    assert_eq!(kv("test.f32")["value"], 0.1);
    let strs = kv("test.arr.str");
    assert_eq!(
        (strs["elem_type"].as_str(), strs["len"].as_u64()),
        (Some("str"), Some(4))
    );
    assert_eq!(strs["values"][3], "with \"quotes\" and\nnewline");
    assert_eq!(kv("test.arr.empty_u32")["len"], 0);

    let q8 = &j["tensors"][2];
    assert_eq!(q8["name"], "t.q8_0");
    assert_eq!(q8["type"], "Q8_0");
    assert_eq!(q8["type_id"], 8);
    assert_eq!(q8["dims"], serde_json::json!([64, 2]));
    assert_eq!(
        (q8["offset"].as_u64(), q8["file_offset"].as_u64()),
        (Some(128), Some(1536))
    );
    assert_eq!(q8["n_bytes"], 136);
    let f32_totals = &j["by_type"][0];
    assert_eq!(
        (f32_totals["type"].as_str(), f32_totals["count"].as_u64()),
        (Some("F32"), Some(2))
    );
    // Our sample has a Q8_0 tensor but no general.quantization_version: a warning, not an error.
    assert_eq!(j["warnings"].as_array().unwrap().len(), 1);
    assert!(j["warnings"][0]
        .as_str()
        .unwrap()
        .contains("quantization_version"));
}

#[test]
fn long_arrays_are_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::from("phi2"))
        .unwrap();
    let tokens: Vec<String> = (0..1000).map(|i| format!("tok{i}")).collect();
    w.add_kv("tokenizer.ggml.tokens", Value::string_array(tokens))
        .unwrap();
    w.add_kv("general.quantization_version", Value::U32(2))
        .unwrap();
    w.add_tensor("w", GgmlType::Q4_0, &[64, 2]).unwrap();
    w.write_to_path(&path, |_, t, o| o.write_all(&vec![0; t.n_bytes as usize]))
        .unwrap();

    let o = info(&[], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains(
            "arr[str,1000]  [\"tok0\", \"tok1\", \"tok2\", \"tok3\", \"tok4\", … 995 more]"
        ),
        "{text}"
    );
    assert!(!text.contains("tok5\""), "{text}");

    let o = info(&["--json"], &path);
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    let toks = &j["metadata"][1];
    assert_eq!(toks["len"], 1000);
    assert_eq!(toks["truncated"], true);
    assert_eq!(toks["values"].as_array().unwrap().len(), 8);
    assert_eq!(j["warnings"].as_array().unwrap().len(), 0);
}

#[test]
fn corrupted_files_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(fixture("python_written.gguf")).unwrap();

    // Truncated inside the tensor data.
    let path = dir.path().join("truncated.gguf");
    std::fs::write(&path, &original[..1500]).unwrap();
    let err = info_error(&path);
    assert!(
        err.contains("tensor 't.f16'") || err.contains("exceeds file size 1500"),
        "{err}"
    );

    // The type id of the first tensor ('t.f32', right after the KVs) set to 99.
    let mut bytes = original.clone();
    let record = [&5u64.to_le_bytes()[..], b"t.f32"].concat(); // not the key "test.f32"
    let name_at = bytes.windows(13).position(|w| w == record).unwrap() + 8;
    let type_at = name_at + 5 + 4 + 2 * 8;
    bytes[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let path = dir.path().join("bad type.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let err = info_error(&path);
    assert!(
        err.ends_with(&format!(
            "tensor 't.f32': unknown or unsupported ggml type id 99 (at byte {type_at})\n"
        )),
        "{err}"
    );

    // Not a GGUF file at all.
    let path = dir.path().join("magic.gguf");
    std::fs::write(&path, b"PK\x03\x04 this is a zip file, not a model").unwrap();
    assert!(info_error(&path).contains("not a GGUF file"));

    // Missing file.
    let err = info_error(&dir.path().join("missing.gguf"));
    assert!(err.contains("cannot open"), "{err}");
}
