//! Helpers shared by the `gguf_*` integration tests: the sample file our writer produces (the
//! committed `rust_written.gguf`), fixture paths, and a raw byte builder for hostile files.
#![allow(dead_code)]

use std::path::PathBuf;

use kernels::gguf::{GgufWriter, Value, ValueType};
use kernels::GgmlType;

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf")
}

pub fn fixture(name: &str) -> PathBuf {
    fixture_dir().join(name)
}

/// Every metadata type, arrays of each (and empty ones), alignment 64, five tensors.
/// Mirrored independently by `RUST_KVS` / `rust_tensors()` in scripts/gen_gguf_fixtures.py.
pub fn rust_sample() -> (GgufWriter, Vec<Vec<u8>>) {
    let mut w = GgufWriter::new();
    let kvs: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::from("testarch")),
        ("general.alignment", Value::U32(64)),
        ("test.u8", Value::U8(200)),
        ("test.i8", Value::I8(-100)),
        ("test.u16", Value::U16(60000)),
        ("test.i16", Value::I16(-30000)),
        ("test.u32", Value::U32(4_000_000_000)),
        ("test.i32", Value::I32(-2_000_000_000)),
        ("test.f32", Value::F32(0.1)),
        ("test.bool_true", Value::Bool(true)),
        ("test.bool_false", Value::Bool(false)),
        ("test.string", Value::from("héllo, wörld ✓")),
        ("test.empty_string", Value::from("")),
        ("test.u64", Value::U64((1 << 63) + 5)),
        ("test.i64", Value::I64(-(1 << 62) - 3)),
        ("test.f64", Value::F64(std::f64::consts::E)), // 2.718281828459045
        (
            "test.arr.u8",
            arr(ValueType::U8, [0u8, 1, 255].map(Value::U8)),
        ),
        (
            "test.arr.i8",
            arr(ValueType::I8, [-128i8, 0, 127].map(Value::I8)),
        ),
        (
            "test.arr.u16",
            arr(ValueType::U16, [0u16, 65535].map(Value::U16)),
        ),
        (
            "test.arr.i16",
            arr(ValueType::I16, [-32768i16, 32767].map(Value::I16)),
        ),
        ("test.arr.u32", Value::u32_array(&[0, u32::MAX])),
        ("test.arr.i32", Value::i32_array(&[i32::MIN, 7])),
        ("test.arr.f32", Value::f32_array(&[1.5, -0.25, f32::MAX])),
        (
            "test.arr.bool",
            arr(ValueType::Bool, [true, false, true].map(Value::Bool)),
        ),
        (
            "test.arr.str",
            Value::string_array(["a", "", "ünïcode", "with \"quotes\" and\nnewline"]),
        ),
        (
            "test.arr.u64",
            arr(ValueType::U64, [0, u64::MAX].map(Value::U64)),
        ),
        (
            "test.arr.i64",
            arr(ValueType::I64, [i64::MIN, i64::MAX].map(Value::I64)),
        ),
        (
            "test.arr.f64",
            arr(ValueType::F64, [1e-300, -0.0].map(Value::F64)),
        ),
        ("test.arr.empty_u32", Value::array(ValueType::U32, vec![])),
        (
            "test.arr.empty_str",
            Value::array(ValueType::String, vec![]),
        ),
    ];
    for (k, v) in kvs {
        w.add_kv(k, v).unwrap();
    }
    let f32_data: Vec<u8> = (0..6)
        .flat_map(|i| (i as f32 * 0.5 - 1.0).to_le_bytes())
        .collect();
    let f16_data: Vec<u8> = [0.0f32, 1.0, -2.0, 0.5, 65504.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let q8_data: Vec<u8> = (0..2 * 2 * 34).map(|i| ((i * 7 + 3) % 256) as u8).collect();
    let i32_data: Vec<u8> = [-1i32, 0, 1, i32::MAX]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    w.add_tensor("t.f32", GgmlType::F32, &[3, 2]).unwrap();
    w.add_tensor("t.f16", GgmlType::F16, &[5]).unwrap();
    w.add_tensor("t.q8_0", GgmlType::Q8_0, &[64, 2]).unwrap();
    w.add_tensor("t.empty", GgmlType::F32, &[0]).unwrap();
    w.add_tensor("t.i32", GgmlType::I32, &[4]).unwrap();
    (w, vec![f32_data, f16_data, q8_data, vec![], i32_data])
}

fn arr<const N: usize>(elem_type: ValueType, values: [Value; N]) -> Value {
    Value::array(elem_type, values.to_vec())
}

/// Writes a writer's file into memory with the given per-tensor data.
pub fn write_to_vec(w: &GgufWriter, data: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    w.write_to(&mut out, |i, _, o| o.write_all(&data[i]))
        .unwrap();
    out
}

pub fn rust_sample_bytes() -> Vec<u8> {
    let (w, data) = rust_sample();
    write_to_vec(&w, &data)
}

/// Little-endian byte builder for hand-made (often hostile) GGUF files.
#[derive(Default, Clone)]
pub struct Raw {
    pub buf: Vec<u8>,
}

impl Raw {
    /// Magic, version, tensor count, KV count.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v])
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn string(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64).bytes(s)
    }
    /// A KV record with a u32 value.
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.string(key.as_bytes()).u32(4).u32(v)
    }
    pub fn tensor_info(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.string(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    pub fn pad_to(&mut self, align: usize) -> &mut Self {
        let padded = self.buf.len().div_ceil(align) * align;
        self.buf.resize(padded, 0);
        self
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf.resize(self.buf.len() + n, 0);
        self
    }
    pub fn build(&self) -> Vec<u8> {
        self.buf.clone()
    }
}
