//! Cross-checks with the python `gguf` package through committed fixtures
//! (kernels/tests/data/gguf/, made by scripts/gen_gguf_fixtures.py):
//! - `python_written.gguf` (gguf-py's GGUFWriter) must parse to `python_written.json`, and
//!   re-writing its content with our writer must give the identical bytes;
//! - `rust_written.gguf` (our writer, checked by gguf-py's GGUFReader, see
//!   `rust_written.python_check.json`) must still be what our writer produces.

mod gguf_util;

use kernels::gguf::{GgufFile, GgufWriter, Value, ValueType};
use kernels::GgmlType;
use serde_json::Value as Json;

use gguf_util::{fixture, rust_sample, rust_sample_bytes, write_to_vec};

fn load_json(name: &str) -> Json {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Compares one scalar with its JSON record (`{"value": ..., "bits": ...}` for floats).
fn assert_scalar(key: &str, v: &Value, want: &Json) {
    let value = &want["value"];
    let ok = match v {
        Value::F32(x) => Some(u64::from(x.to_bits())) == want["bits"].as_u64(),
        Value::F64(x) => Some(x.to_bits()) == want["bits"].as_u64(),
        Value::Bool(b) => Some(*b) == value.as_bool(),
        Value::String(s) => Some(s.as_str()) == value.as_str(),
        Value::U64(x) => Some(*x) == value.as_u64(),
        Value::Array(_) => false,
        other => other.as_i64() == value.as_i64(),
    };
    assert!(ok, "{key}: ours {v:?}, expected {want}");
}

#[test]
fn python_written_file_matches_expectations() {
    let expected = load_json("python_written.json");
    let f = GgufFile::open(&fixture("python_written.gguf")).unwrap();
    assert_eq!(
        u64::from(f.version()),
        expected["version"].as_u64().unwrap()
    );
    assert_eq!(f.alignment(), expected["alignment"].as_u64().unwrap());
    assert_eq!(f.data_offset(), expected["data_offset"].as_u64().unwrap());
    assert_eq!(f.file_size(), expected["file_size"].as_u64().unwrap());
    assert_eq!(f.architecture(), Some("testarch"));

    let want_kvs = expected["metadata"].as_array().unwrap();
    assert_eq!(f.metadata().len(), want_kvs.len());
    for ((key, v), want) in f.metadata().iter().zip(want_kvs) {
        assert_eq!(key, want["key"].as_str().unwrap());
        assert_eq!(
            v.value_type().name(),
            want["type"].as_str().unwrap(),
            "{key}"
        );
        match v {
            Value::Array(a) => {
                assert_eq!(
                    a.elem_type.name(),
                    want["elem_type"].as_str().unwrap(),
                    "{key}"
                );
                let want_values = want["values"].as_array().unwrap();
                assert_eq!(a.values.len(), want_values.len(), "{key}");
                for (x, w) in a.values.iter().zip(want_values) {
                    assert_scalar(key, x, w);
                }
            }
            _ => assert_scalar(key, v, want),
        }
    }

    let want_tensors = expected["tensors"].as_array().unwrap();
    assert_eq!(f.tensors().len(), want_tensors.len());
    for (t, want) in f.tensors().iter().zip(want_tensors) {
        assert_eq!(t.name, want["name"].as_str().unwrap());
        assert_eq!(
            u64::from(t.ty.id()),
            want["type"].as_u64().unwrap(),
            "{}",
            t.name
        );
        let dims: Vec<u64> = want["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(t.offset, want["offset"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(t.n_bytes, want["n_bytes"].as_u64().unwrap(), "{}", t.name);
        let hex: String = f
            .tensor_data(t)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, want["data_hex"].as_str().unwrap(), "{}", t.name);
    }
    // Typed views and accessors on real python output.
    let q8 = f.tensor("t.q8_0").unwrap();
    assert_eq!(
        (q8.info.ty, q8.info.rows(), q8.info.row_bytes()),
        (GgmlType::Q8_0, 2, 68)
    );
    let f32s = f.tensor("t.f32").unwrap().as_f32().unwrap();
    assert_eq!(f32s, &[-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]);
    assert_eq!(f.get_u32("general.quantization_version").unwrap(), 2);
    assert_eq!(f.get_f32("test.f32").unwrap(), 0.1f32);
    assert_eq!(
        f.get_string_array("test.arr.str").unwrap(),
        ["a", "", "ünïcödé", "quote \" and\nnewline"]
    );
}

/// Our writer reproduces gguf-py's file byte for byte from its parsed content (same layout
/// rules: header padding, per-tensor padding, offsets, value encodings).
#[test]
fn python_written_file_rewrites_byte_identically() {
    let original = std::fs::read(fixture("python_written.gguf")).unwrap();
    let f = GgufFile::from_bytes(original.clone(), "python_written.gguf").unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.add_kv(k, v.clone()).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, t.ty, &t.dims).unwrap();
    }
    let data: Vec<Vec<u8>> = f
        .tensors()
        .iter()
        .map(|t| f.tensor_data(t).to_vec())
        .collect();
    assert_eq!(write_to_vec(&w, &data), original);
}

/// The committed `rust_written.gguf` (checked by gguf-py) is exactly what the writer makes now.
#[test]
fn rust_written_fixture_is_current() {
    let committed = std::fs::read(fixture("rust_written.gguf")).unwrap();
    assert!(
        committed == rust_sample_bytes(),
        "rust_written.gguf differs from the writer's output: regenerate it with \
         `cargo test -p tinygptv-kernels --test gguf_fixtures -- --ignored` and rerun \
         `scripts/gen_gguf_fixtures.py check`"
    );
    let report = load_json("rust_written.python_check.json");
    assert_eq!(report["file_size"].as_u64(), Some(committed.len() as u64));
    assert!(report["result"].as_str().unwrap().starts_with("ok"));
}

#[test]
fn rust_written_fixture_reads_back() {
    let (w, data) = rust_sample();
    let f = GgufFile::open(&fixture("rust_written.gguf")).unwrap();
    assert_eq!(f.metadata(), w.metadata());
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensors(), w.tensor_infos().unwrap().as_slice());
    for (t, d) in f.tensors().iter().zip(&data) {
        assert_eq!(f.tensor_data(t), d.as_slice(), "{}", t.name);
    }
    let empty = f
        .get("test.arr.empty_str")
        .unwrap()
        .as_array_value()
        .unwrap();
    assert_eq!(
        (empty.elem_type, empty.values.len()),
        (ValueType::String, 0)
    );
}

/// Regenerates `rust_written.gguf`; then run `scripts/gen_gguf_fixtures.py check`.
#[test]
#[ignore = "writes the committed fixture"]
fn regenerate_rust_written_fixture() {
    let (w, data) = rust_sample();
    w.write_to_path(&fixture("rust_written.gguf"), |i, _, out| {
        out.write_all(&data[i])
    })
    .unwrap();
}
