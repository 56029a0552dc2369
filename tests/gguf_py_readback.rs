//! gguf-py (the Python `gguf` package, llama.cpp's own reader) reads all three kinds of our
//! output — stock `phi2` LM, TinyGPT-V LM, vision (mmproj) — the way our reader does.
//!
//! `scripts/gguf_py_readback.py` converted the fixtures with `tinygptv convert`, read every
//! output with `gguf.GGUFReader` and `gguf.quants.dequantize`, and stored what it saw in
//! `tests/fixtures/gguf-py-readback.json`. This test runs the same conversions (the argument
//! lists come from the JSON) and checks our reader and dequantizers against it: names, types,
//! shapes, byte sizes and metadata exactly, and the float64 sum / sum of squares of every
//! dequantized tensor within 1e-9 (both sides dequantize bit-identically; only the summation
//! order differs).
//!
//! This test FAILS WHENEVER THE CONVERTER'S OUTPUT CHANGES (a new key, another tensor type, a
//! different rounding ...). If the change is intended, rerun
//! `/work/venv/bin/python scripts/gguf_py_readback.py target/release/tinygptv` and commit the JSON.

mod common;

use std::path::Path;
use std::process::Command;

use common::fixtures;
use kernels::gguf::{GgufFile, Value, ValueType};
use serde_json::Value as Json;

/// gguf-py's `GGUFValueType` names, indexed by the GGUF value type id.
const GGUF_PY_VALUE_TYPES: [&str; 13] = [
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY",
    "UINT64", "INT64", "FLOAT64",
];

/// Relative tolerance of the sums (the scale of `sum` is the sum of |x|).
const SUM_REL_TOL: f64 = 1e-9;

const RERUN: &str = "converter output changed? If intended, rerun \
    scripts/gguf_py_readback.py (see tests/fixtures/README.md)";

fn py_type_name(t: ValueType) -> &'static str {
    GGUF_PY_VALUE_TYPES
        .get(t.id() as usize)
        .copied()
        .unwrap_or("?")
}

/// A scalar metadata value against its JSON form: integers and strings exactly, floats as the
/// exact f64 of the stored f32/f64.
fn scalar_matches(v: &Value, want: &Json) -> bool {
    match v {
        Value::Bool(b) => want.as_bool() == Some(*b),
        Value::String(s) => want.as_str() == Some(s.as_str()),
        Value::F32(x) => want.as_f64() == Some(*x as f64),
        Value::F64(x) => want.as_f64() == Some(*x),
        Value::Array(_) => false,
        other => match (other.as_i64(), other.as_u64()) {
            (Some(i), _) if want.as_i64() == Some(i) => true,
            (_, Some(u)) => want.as_u64() == Some(u),
            _ => false,
        },
    }
}

/// The canonical bytes of an array element hashed by the script: as stored (little-endian),
/// strings as u64 LE length + UTF-8 bytes.
fn canonical_bytes(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(_) => panic!("nested array"),
    }
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    format!("{h:016x}")
}

fn elements_match(values: &[Value], want: &Json) -> bool {
    want.as_array().is_some_and(|w| {
        w.len() == values.len() && values.iter().zip(w).all(|(v, j)| scalar_matches(v, j))
    })
}

fn check_metadata(file: &str, f: &GgufFile, want: &Json) {
    let want = want.as_array().expect("metadata list");
    let got = f.metadata();
    let keys = |v: &[(String, Value)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    let want_keys: Vec<String> = want
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys(got), want_keys, "{file}: metadata keys ({RERUN})");
    for ((key, v), w) in got.iter().zip(want) {
        let ctx = format!("{file}: {key} ({RERUN})");
        assert_eq!(py_type_name(v.value_type()), w["type"], "{ctx}: type");
        let Value::Array(arr) = v else {
            assert!(
                scalar_matches(v, &w["value"]),
                "{ctx}: ours {v:?}, gguf-py {}",
                w["value"]
            );
            continue;
        };
        if arr.values.is_empty() {
            assert_eq!(w["value"], serde_json::json!([]), "{ctx}: empty array");
            continue;
        }
        assert_eq!(
            py_type_name(arr.elem_type),
            w["elem_type"],
            "{ctx}: elements"
        );
        let wv = &w["value"];
        if wv.is_array() {
            assert!(elements_match(&arr.values, wv), "{ctx}: values");
            continue;
        }
        let n = arr.values.len();
        assert_eq!(wv["len"].as_u64(), Some(n as u64), "{ctx}: length");
        let ends = wv["first"].as_array().unwrap().len();
        assert!(
            elements_match(&arr.values[..ends], &wv["first"]),
            "{ctx}: first"
        );
        assert!(
            elements_match(&arr.values[n - ends..], &wv["last"]),
            "{ctx}: last"
        );
        let mut bytes = Vec::new();
        for e in &arr.values {
            canonical_bytes(e, &mut bytes);
        }
        assert_eq!(fnv1a64(&bytes), wv["fnv1a64"], "{ctx}: content hash");
    }
}

fn check_tensors(file: &str, f: &GgufFile, want: &Json) {
    let want = want.as_array().expect("tensor list");
    assert_eq!(
        f.tensors().len(),
        want.len(),
        "{file}: tensor count ({RERUN})"
    );
    for (info, w) in f.tensors().iter().zip(want) {
        let ctx = format!("{file}: {} ({RERUN})", info.name);
        assert_eq!(
            info.name,
            w["name"].as_str().unwrap(),
            "{file}: tensor order"
        );
        assert_eq!(
            info.ty.name().to_ascii_uppercase(),
            w["type"],
            "{ctx}: type"
        );
        // both in GGUF ne order (innermost first)
        let shape: Vec<u64> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(info.dims, shape, "{ctx}: shape");
        assert_eq!(Some(info.n_bytes), w["n_bytes"].as_u64(), "{ctx}: bytes");
        let mut values = vec![0.0f32; info.n_elements() as usize];
        kernels::formats::dequantize_row(info.ty, f.tensor_data(info), &mut values)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let (mut sum, mut sum_abs, mut sum_sq) = (0.0f64, 0.0f64, 0.0f64);
        for &x in &values {
            let x = x as f64;
            sum += x;
            sum_abs += x.abs();
            sum_sq += x * x;
        }
        let (want_sum, want_sq) = (w["sum"].as_f64().unwrap(), w["sum_sq"].as_f64().unwrap());
        assert!(
            (sum - want_sum).abs() <= SUM_REL_TOL * sum_abs,
            "{ctx}: sum {sum:e}, gguf-py {want_sum:e}"
        );
        assert!(
            (sum_sq - want_sq).abs() <= SUM_REL_TOL * want_sq,
            "{ctx}: sum of squares {sum_sq:e}, gguf-py {want_sq:e}"
        );
    }
}

#[test]
fn gguf_py_reads_what_we_read() {
    let path = fixtures().join("gguf-py-readback.json");
    let doc: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fix = fixtures();
    let (fix_s, out_s) = (fix.to_str().unwrap(), tmp.path().to_str().unwrap());
    let mut kinds = std::collections::BTreeSet::new();
    for run in doc["runs"].as_array().unwrap() {
        let args: Vec<String> = run["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a.as_str()
                    .unwrap()
                    .replace("{fixtures}", fix_s)
                    .replace("{out}", out_s)
            })
            .collect();
        let o = Command::new(env!("CARGO_BIN_EXE_tinygptv"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for out in run["outputs"].as_array().unwrap() {
            let file = out["file"].as_str().unwrap();
            let f = GgufFile::open(&Path::new(out_s).join(file)).unwrap();
            let h = &out["header"];
            assert_eq!(Some(f.version() as u64), h["version"].as_u64(), "{file}");
            assert_eq!(
                Some(f.tensors().len() as u64),
                h["tensor_count"].as_u64(),
                "{file}: tensor count ({RERUN})"
            );
            assert_eq!(
                Some(f.metadata().len() as u64),
                h["kv_count"].as_u64(),
                "{file}: key count ({RERUN})"
            );
            check_metadata(file, &f, &out["metadata"]);
            check_tensors(file, &f, &out["tensors"]);
            kinds.insert(f.architecture().unwrap_or("?").to_string());
        }
    }
    // the three kinds of output are all covered
    let want: std::collections::BTreeSet<String> = ["clip", "phi2", "tinygptv"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(kinds, want);
}
