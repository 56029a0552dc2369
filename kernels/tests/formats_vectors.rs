//! Block formats against independent implementations (vectors in tests/data/quants/, made by
//! scripts/gen_quant_vectors.py):
//! - quantization must reproduce the expected bytes exactly (gguf-py for F16/BF16/Q4_0/Q4_1/
//!   Q5_0/Q5_1/Q8_0, ggml's C reference `quantize_row_*_ref` for Q4_K/Q5_K/Q6_K/Q8_K/Q8_1);
//! - dequantizing the expected bytes must reproduce the expected f32 bit for bit (gguf-py's
//!   dequantizers, ggml's for Q8_K);
//! - dot products must equal ggml's scalar `ggml_vec_dot_*_generic` bit for bit (the K-quants:
//!   within f32 rounding, as their f32 steps run in another order, see `formats::q4_k`), and the
//!   dot of the dequantized values (f64) within rounding; matmul_ref must match a naive f64
//!   matmul.

use std::path::{Path, PathBuf};

use kernels::formats::{dequantize_row, quantize_activation_row, quantize_row, row_bytes, vec_dot};
use kernels::matmul::matmul_ref;
use kernels::GgmlType;
use serde_json::Value;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/quants")
}

fn read_bytes(name: &str) -> Vec<u8> {
    let path = data_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_f32(name: &str) -> Vec<f32> {
    let bytes = read_bytes(name);
    assert_eq!(bytes.len() % 4, 0, "{name}: not a whole number of f32");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn manifest() -> Value {
    serde_json::from_slice(&read_bytes("manifest.json")).expect("manifest.json")
}

fn type_named(name: &str, entry: &Value) -> GgmlType {
    let ty = GgmlType::from_name(name).unwrap_or_else(|| panic!("unknown type {name}"));
    assert_eq!(
        entry["id"].as_u64(),
        Some(ty.id() as u64),
        "{name}: ggml id"
    );
    assert_eq!(
        entry["block_elems"].as_u64(),
        Some(ty.block_size() as u64),
        "{name}"
    );
    assert_eq!(
        entry["block_bytes"].as_u64(),
        Some(ty.type_size() as u64),
        "{name}"
    );
    ty
}

/// Exact byte equality, reporting the first differing block and its 256-element scenario.
fn assert_same_bytes(what: &str, ty: GgmlType, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bs = ty.type_size();
    let bad: Vec<usize> = (0..got.len() / bs)
        .filter(|&b| got[b * bs..(b + 1) * bs] != want[b * bs..(b + 1) * bs])
        .collect();
    if let Some(&b) = bad.first() {
        let scenario = b * ty.block_size() / 256;
        panic!(
            "{what}: {} of {} blocks differ; first: block {b} (input super-block {scenario})\n got  {:02x?}\n want {:02x?}",
            bad.len(),
            got.len() / bs,
            &got[b * bs..(b + 1) * bs],
            &want[b * bs..(b + 1) * bs]
        );
    }
}

/// Bit equality of f32 values (NaNs must match bit for bit as well).
fn assert_same_f32(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len())
        // a NaN made by the arithmetic (∞·0) has the platform's default sign and payload
        // (x86: negative, Arm: positive): NaN matches NaN, everything else bit for bit
        .filter(|&i| {
            got[i].to_bits() != want[i].to_bits() && !(got[i].is_nan() && want[i].is_nan())
        })
        .collect();
    if let Some(&i) = bad.first() {
        panic!(
            "{what}: {} of {} values differ; first at {i} (super-block {}): got {:e} ({:#010x}), want {:e} ({:#010x})",
            bad.len(),
            got.len(),
            i / 256,
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

#[test]
fn quantize_and_dequantize_match_reference_vectors() {
    let m = manifest();
    let inputs = read_f32("inputs.f32");
    assert_eq!(inputs.len() as u64, m["n_inputs"].as_u64().unwrap());
    let types = m["types"].as_object().unwrap();
    assert_eq!(types.len(), 12, "expected 12 formats in the manifest");
    for (name, entry) in types {
        let ty = type_named(name, entry);
        let want_q = read_bytes(entry["quant"].as_str().unwrap());
        let want_d = read_f32(entry["dequant"].as_str().unwrap());

        let mut got_q = vec![0u8; row_bytes(ty, inputs.len()).unwrap()];
        quantize_row(ty, &inputs, &mut got_q).unwrap();
        assert_same_bytes(&format!("{name} quantize"), ty, &got_q, &want_q);

        let mut got_d = vec![0f32; inputs.len()];
        dequantize_row(ty, &want_q, &mut got_d).unwrap();
        assert_same_f32(&format!("{name} dequantize"), &got_d, &want_d);

        if let Some(sq) = entry.get("specials_quant") {
            let specials = read_f32("float_specials.f32");
            let want_q = read_bytes(sq.as_str().unwrap());
            let want_d = read_f32(entry["specials_dequant"].as_str().unwrap());
            let mut got_q = vec![0u8; specials.len() * 2];
            quantize_row(ty, &specials, &mut got_q).unwrap();
            assert_same_bytes(&format!("{name} specials quantize"), ty, &got_q, &want_q);
            let mut got_d = vec![0f32; specials.len()];
            dequantize_row(ty, &want_q, &mut got_d).unwrap();
            assert_same_f32(&format!("{name} specials dequantize"), &got_d, &want_d);
        }
    }
}

struct DotCase {
    name: String,
    ty: GgmlType,
    weights: Vec<u8>,
    expected: Vec<f32>,
}

struct DotData {
    k: usize,
    rows: usize,
    acts: usize,
    weights_f32: Vec<f32>,
    acts_f32: Vec<f32>,
    cases: Vec<DotCase>,
}

fn dot_data() -> DotData {
    let m = manifest();
    let d = &m["dot"];
    let k = d["k"].as_u64().unwrap() as usize;
    let rows = d["weight_rows"].as_u64().unwrap() as usize;
    let acts = d["act_rows"].as_u64().unwrap() as usize;
    let cases: Vec<DotCase> = d["cases"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, c)| {
            let ty = GgmlType::from_name(name).unwrap();
            let act_ty = GgmlType::from_name(c["act_type"].as_str().unwrap()).unwrap();
            assert_eq!(ty.vec_dot_type(), act_ty, "{name}: activation type");
            DotCase {
                name: name.clone(),
                ty,
                weights: read_bytes(c["weights"].as_str().unwrap()),
                expected: read_f32(c["expected"].as_str().unwrap()),
            }
        })
        .collect();
    assert_eq!(cases.len(), 8);
    DotData {
        k,
        rows,
        acts,
        weights_f32: read_f32(d["weights"].as_str().unwrap()),
        acts_f32: read_f32(d["acts"].as_str().unwrap()),
        cases,
    }
}

#[test]
fn dot_products_match_ggml_generic_kernels() {
    let dd = dot_data();
    let k = dd.k;
    let mut max_k_diff = 0f64;
    for case in &dd.cases {
        let ty = case.ty;
        // the weights were quantized by ggml: ours must agree
        let mut wq = vec![0u8; row_bytes(ty, dd.weights_f32.len()).unwrap()];
        quantize_row(ty, &dd.weights_f32, &mut wq).unwrap();
        assert_same_bytes(
            &format!("dot weights {}", case.name),
            ty,
            &wq,
            &case.weights,
        );
        let w_row = row_bytes(ty, k).unwrap();
        for a in 0..dd.acts {
            let x = &dd.acts_f32[a * k..(a + 1) * k];
            let mut act = Vec::new();
            quantize_activation_row(ty, x, &mut act);
            let act_ty = ty.vec_dot_type();
            let want_act = read_bytes(&format!("dot_acts_{}.quant", act_ty.name()));
            let a_row = row_bytes(act_ty, k).unwrap();
            assert_same_bytes(
                &format!("activations {act_ty} row {a}"),
                act_ty,
                &act,
                &want_act[a * a_row..(a + 1) * a_row],
            );
            for r in 0..dd.rows {
                let w = &case.weights[r * w_row..(r + 1) * w_row];
                let got = vec_dot(ty, k, w, &act);
                let want = case.expected[r * dd.acts + a];
                if matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K) {
                    // same integer parts, f32 steps in another order (formats::q4_k's
                    // `KDotAccumulator`): a few ulps of the terms' magnitude
                    let mut ad = vec![0f32; k];
                    dequantize_row(act_ty, &act, &mut ad).unwrap();
                    let wd = dequantized(ty, w, k);
                    let scale: f64 = wd
                        .iter()
                        .zip(&ad)
                        .map(|(x, y)| (*x as f64 * *y as f64).abs())
                        .sum();
                    let diff = (got as f64 - want as f64).abs();
                    assert!(
                        diff <= scale * K_ORDER_TOLERANCE,
                        "vec_dot {} row {r} act {a}: got {got:e}, ggml {want:e}",
                        case.name
                    );
                    max_k_diff = max_k_diff.max(diff / scale);
                } else {
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "vec_dot {} row {r} act {a}: got {got:e}, ggml {want:e}",
                        case.name
                    );
                }
            }
        }
    }
    eprintln!("K-quants: largest |ours − ggml| / Σ|w·a| = {max_k_diff:e}");
}

/// How far the K-quant dots may be from ggml's generic ones, relative to `Σ|w·a|` (f32 steps
/// over a few super-blocks in two orders: a few units of 2⁻²⁴ each).
const K_ORDER_TOLERANCE: f64 = 1.0 / (1u64 << 20) as f64;

fn dequantized(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize_row(ty, bytes, &mut out).unwrap();
    out
}

#[test]
fn dot_products_and_matmul_match_f64_of_dequantized() {
    let dd = dot_data();
    let (k, n, m) = (dd.k, dd.rows, dd.acts);
    let mut types: Vec<(String, GgmlType, Vec<u8>)> = dd
        .cases
        .iter()
        .map(|c| (c.name.clone(), c.ty, c.weights.clone()))
        .collect();
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        let mut w = vec![0u8; row_bytes(ty, n * k).unwrap()];
        quantize_row(ty, &dd.weights_f32, &mut w).unwrap();
        types.push((ty.name().to_string(), ty, w));
    }
    for (name, ty, w) in &types {
        let wd = dequantized(*ty, w, n * k);
        let act_ty = ty.vec_dot_type();
        let mut xq = vec![0u8; row_bytes(act_ty, m * k).unwrap()];
        quantize_row(act_ty, &dd.acts_f32, &mut xq).unwrap();
        let xd = dequantized(act_ty, &xq, m * k);
        let mut y = vec![0f32; m * n];
        matmul_ref(*ty, w, n, k, &dd.acts_f32, m, &mut y);
        for i in 0..m {
            for j in 0..n {
                let (wr, xr) = (&wd[j * k..(j + 1) * k], &xd[i * k..(i + 1) * k]);
                let want: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                let scale: f64 = wr
                    .iter()
                    .zip(xr)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                // f32 scale products and sums: a few ulps of the magnitude sum. Q4_1/Q5_1 add
                // the weights' offset through Q8_1's f16 `s` = d·Σq (relative error 2^-11).
                let offset_term: f64 = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                    let bs = ty.type_size();
                    let a_bs = act_ty.type_size();
                    let act_blocks = &xq[i * (k / 32) * a_bs..(i + 1) * (k / 32) * a_bs];
                    let w_blocks = &w[j * (k / 32) * bs..(j + 1) * (k / 32) * bs];
                    (0..k / 32)
                        .map(|b| {
                            let wm = half::f16::from_le_bytes([
                                w_blocks[b * bs + 2],
                                w_blocks[b * bs + 3],
                            ]);
                            let s = half::f16::from_le_bytes([
                                act_blocks[b * a_bs + 2],
                                act_blocks[b * a_bs + 3],
                            ]);
                            (wm.to_f64() * s.to_f64()).abs()
                        })
                        .sum::<f64>()
                        / 1024.0
                } else {
                    0.0
                };
                let tol = 1e-5 * scale + offset_term + 1e-30;
                let got = y[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= tol,
                    "{name} [{i}][{j}]: matmul {got:e} vs f64 {want:e}"
                );
                // matmul_ref is exactly vec_dot on the quantized activation row
                let mut act = Vec::new();
                quantize_activation_row(*ty, &dd.acts_f32[i * k..(i + 1) * k], &mut act);
                let w_row = row_bytes(*ty, k).unwrap();
                let d = vec_dot(*ty, k, &w[j * w_row..(j + 1) * w_row], &act);
                assert_eq!(d.to_bits(), y[i * n + j].to_bits(), "{name} [{i}][{j}]");
            }
        }
        // and the quantized result is close to the exact f32 product (quantization error only)
        for i in 0..m {
            for j in 0..n {
                let wr = &dd.weights_f32[j * k..(j + 1) * k];
                let xr = &dd.acts_f32[i * k..(i + 1) * k];
                let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                let norm = (wr.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()
                    * xr.iter().map(|v| (*v as f64).powi(2)).sum::<f64>())
                .sqrt();
                let got = y[i * n + j] as f64;
                assert!(
                    (got - exact).abs() <= 0.05 * norm,
                    "{name} [{i}][{j}]: {got} vs exact {exact}"
                );
            }
        }
    }
}
