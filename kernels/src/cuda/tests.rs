//! Tests of the CUDA backend that run without a GPU.
//!
//! - NVRTC: every `.cu` file compiles for compute_80, compute_90 (PTX, every kernel present)
//!   and sm_90 (CUBIN). Skipped with a message when NVRTC is not found (see [`super::nvrtc`];
//!   set `TINYGPTV_NVRTC_LIB`), failed instead when `TINYGPTV_REQUIRE_NVRTC=1`.
//! - Every kernel against the CPU reference ([`crate::formats`], f64 formulas of the runtime's
//!   ops), on each available backend: the CPU emulator (skipped with a message when no C++
//!   compiler is found, or when `TINYGPTV_CUDA_EMU=off`; required by
//!   `TINYGPTV_REQUIRE_CUDA_EMU=1`) and a real GPU (skipped with a message when there is no CUDA
//!   driver or device; required by `TINYGPTV_REQUIRE_CUDA=1`).

use std::sync::OnceLock;

use half::f16;

use super::nvrtc::{Nvrtc, Target};
use super::*;
use crate::formats::test_util::{test_data, Lcg};
use crate::formats::{dequantize_row, quantize_row, row_bytes};
use crate::matmul::matmul_ref;
use crate::types::GgmlType;

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == value)
}

/// The backends to test on, opened once per process.
fn backends() -> &'static [(&'static str, Device)] {
    static DEVICES: OnceLock<Vec<(&'static str, Device)>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        let mut v = Vec::new();
        if env_is("TINYGPTV_CUDA_EMU", "off") {
            eprintln!("note: CUDA emulator tests skipped (TINYGPTV_CUDA_EMU=off)");
        } else {
            match Device::emulator() {
                Ok(d) => v.push(("emulator", d)),
                Err(e @ CudaError::NoCompiler(_)) if !env_is("TINYGPTV_REQUIRE_CUDA_EMU", "1") => {
                    eprintln!("note: CUDA emulator tests skipped: {e}")
                }
                // sources the emulator's compiler rejects are a failure, never a skip
                Err(e) => panic!("the CUDA emulator is unavailable: {e}"),
            }
        }
        match Device::cuda(0) {
            Ok(d) => {
                eprintln!("note: CUDA tests run on {}", d.describe());
                v.push(("cuda", d));
            }
            Err(e) if env_is("TINYGPTV_REQUIRE_CUDA", "1") => {
                panic!("TINYGPTV_REQUIRE_CUDA=1 but no CUDA device is usable: {e}")
            }
            Err(e) => eprintln!("note: CUDA GPU tests skipped: {e}"),
        }
        v
    })
}

/// Runs `f` on every available backend (labelled in failure messages).
fn on_backends(f: impl Fn(&str, &Device)) {
    for (name, dev) in backends() {
        f(name, dev);
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let t = tol(i);
        assert!(
            (g as f64 - w).abs() <= t && g.is_finite(),
            "{what}[{i}]: got {g}, want {w} (tolerance {t:e})"
        );
    }
}

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; row_bytes(ty, x.len()).unwrap()];
    quantize_row(ty, x, &mut q).unwrap();
    q
}

fn dequantize(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    dequantize_row(ty, q, &mut y).unwrap();
    y
}

const QUANT_TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];
const FLOAT_TYPES: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];

// ---- NVRTC ----------------------------------------------------------------------------------

fn nvrtc_or_skip() -> Option<&'static Nvrtc> {
    match Nvrtc::get() {
        Ok(n) => Some(n),
        Err(e) if env_is("TINYGPTV_REQUIRE_NVRTC", "1") => {
            panic!("TINYGPTV_REQUIRE_NVRTC=1 but NVRTC is unavailable: {e}")
        }
        Err(e) => {
            eprintln!("note: NVRTC compile test skipped: {e}");
            None
        }
    }
}

#[test]
fn nvrtc_compiles_every_kernel_file() {
    let Some(nvrtc) = nvrtc_or_skip() else { return };
    eprintln!(
        "note: NVRTC {}.{} from {}",
        nvrtc.version().0,
        nvrtc.version().1,
        nvrtc.path().display()
    );
    for file in &sources::FILES {
        for target in [Target::Ptx(80), Target::Ptx(90), Target::Cubin(90)] {
            let c = nvrtc
                .compile(file.name, file.source, &sources::HEADERS, target, &[])
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !c.log.contains("warning"),
                "{} for {}: warnings:\n{}",
                file.name,
                target.arch_flag(),
                c.log
            );
            if let Some(ptx) = c.ptx() {
                for k in file.kernels {
                    assert!(
                        ptx.contains(&format!(".entry {k}(")),
                        "{}: kernel {k} missing from the {} PTX",
                        file.name,
                        target.arch_flag()
                    );
                }
            }
        }
    }
}

#[test]
fn nvrtc_reports_compile_errors_with_the_log() {
    let Some(nvrtc) = nvrtc_or_skip() else { return };
    let err = nvrtc
        .compile(
            "broken.cu",
            "extern \"C\" __global__ void k() { undefined_name(); }",
            &[],
            Target::Ptx(80),
            &[],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.cu") && err.contains("undefined_name"),
        "{err}"
    );
}

#[test]
fn nvrtc_missing_library_is_an_error() {
    let err = Nvrtc::load_from(std::path::Path::new("/nonexistent/libnvrtc.so.13"))
        .expect_err("no library there")
        .to_string();
    assert!(err.contains("/nonexistent/libnvrtc.so.13"), "{err}");
}

#[test]
fn every_kernel_belongs_to_one_file() {
    let mut seen = std::collections::HashSet::new();
    for f in &sources::FILES {
        for k in f.kernels {
            assert!(seen.insert(*k), "{k} listed twice");
            // the GEMV variants come from one macro (NAME##_r2 ...): their base name is there
            let base = k.trim_end_matches("_u2").trim_end_matches("_r2");
            assert!(f.source.contains(base), "{k} not in {}", f.name);
        }
    }
}

// ---- device detection -----------------------------------------------------------------------

#[test]
fn missing_driver_or_device_is_a_clear_error() {
    if !driver_present() {
        let err = Device::cuda(0).expect_err("no driver").to_string();
        assert!(err.contains("no CUDA driver found"), "{err}");
        assert_eq!(device_count(), 0);
    } else {
        let err = Device::cuda(1 << 20)
            .expect_err("no such device")
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}

#[test]
fn emulator_or_gpu_has_every_kernel() {
    on_backends(|name, dev| {
        dev.precompile().unwrap_or_else(|e| panic!("{name}: {e}"));
    });
}

// ---- activation quantization and conversions ------------------------------------------------

/// ggml Q8_1 blocks (36 bytes: d, s, 32 quants) of one row → the device's split layout: the
/// quants of every block, then every (d, s), zero padded to `q8_1_row_stride`.
fn split_q8_1_row(blocks: &[u8], k: usize) -> Vec<u8> {
    let mut out: Vec<u8> = blocks.chunks(36).flat_map(|b| b[4..].to_vec()).collect();
    out.extend(blocks.chunks(36).flat_map(|b| b[..4].to_vec()));
    out.resize(super::q8_1_row_stride(k), 0);
    out
}

#[test]
fn quantize_q8_1_is_bit_identical_to_the_reference() {
    // k = 96: three groups, 108 bytes padded to 112
    for (k, m, ldx) in [(256, 3, 300), (96, 2, 100)] {
        let mut x = test_data(m * ldx, 32, 1);
        // ties of x·(1/d) at .5 and a zero block
        x[5] = 0.5;
        x[6] = 127.0;
        for v in &mut x[ldx + 64..ldx + 96] {
            *v = 0.0;
        }
        let mut want = Vec::new();
        for r in 0..m {
            let blocks = quantize(GgmlType::Q8_1, &x[r * ldx..r * ldx + k]);
            want.extend(split_q8_1_row(&blocks, k));
        }
        assert_eq!(want.len(), super::q8_1_bytes(k, m));
        on_backends(|name, dev| {
            let xd = dev.upload(&x).unwrap();
            let yd = dev.alloc_zeroed(want.len()).unwrap();
            dev.quantize_q8_1(xd.slice(), ldx, k, m, yd.slice())
                .unwrap();
            let got = dev.to_vec(yd.slice::<u8>()).unwrap();
            assert!(
                got == want,
                "{name}: k = {k}: Q8_1 values or places differ from quantize_row_q8_1_ref"
            );
        });
    }
}

/// Whether `upload_weight` stores `ty` rows of `k` in the split layout (Q4_0 / Q8_0 rows of a
/// multiple of 8 blocks).
fn splits(ty: GgmlType, k: usize) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q8_0) && (k / 32).is_multiple_of(8)
}

#[test]
fn convert_and_copies() {
    let (k, m, ldx, ldy) = (50, 3, 60, 64);
    let x = test_data(m * ldx, 8, 2);
    on_backends(|name, dev| {
        let xd = dev.upload(&x).unwrap();
        let yd = dev.alloc(m * ldy * 2).unwrap();
        dev.convert_f32_f16_pad(xd.slice(), ldx, k, m, yd.slice(), ldy)
            .unwrap();
        let got = dev.to_vec(yd.slice::<u16>()).unwrap();
        for r in 0..m {
            for c in 0..ldy {
                let want = if c < k {
                    f16::from_f32(x[r * ldx + c]).to_bits()
                } else {
                    0
                };
                assert_eq!(got[r * ldy + c], want, "{name}: convert [{r}][{c}]");
            }
        }
        // strided f32 → f16 copy into a wider destination; untouched elements stay
        let dst = dev.upload(&vec![0x7777u16; m * 70]).unwrap();
        dev.copy_f32_to_f16(xd.slice(), ldx, dst.slice::<u16>().tail(3), 70, k, m)
            .unwrap();
        let got = dev.to_vec(dst.slice::<u16>()).unwrap();
        for r in 0..m {
            for c in 0..70 - 3 {
                let want = if c < k {
                    f16::from_f32(x[r * ldx + c]).to_bits()
                } else {
                    0x7777
                };
                assert_eq!(
                    got[3 + r * 70 + c],
                    want,
                    "{name}: copy_f32_to_f16 [{r}][{c}]"
                );
            }
        }
        let dst = dev.upload(&vec![-1f32; m * 55]).unwrap();
        dev.copy_f32(xd.slice(), ldx, dst.slice(), 55, k, m)
            .unwrap();
        let got = dev.to_vec(dst.slice::<f32>()).unwrap();
        for r in 0..m {
            for c in 0..55 {
                let want = if c < k { x[r * ldx + c] } else { -1.0 };
                assert_eq!(got[r * 55 + c], want, "{name}: copy_f32 [{r}][{c}]");
            }
        }
    });
}

// ---- GEMV ------------------------------------------------------------------------------------

/// f64 `Σ w·x` of every (activation row, weight row) plus bias, and `Σ|w·x|`.
fn reference_matmul(
    wd: &[f32],
    xd: &[f32],
    n: usize,
    k: usize,
    m: usize,
    bias: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let mut want = vec![0f64; m * n];
    let mut scale = vec![0f64; m * n];
    for r in 0..m {
        for c in 0..n {
            let (w, x) = (&wd[c * k..(c + 1) * k], &xd[r * k..(r + 1) * k]);
            want[r * n + c] = w
                .iter()
                .zip(x)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                + bias[c] as f64;
            scale[r * n + c] = w
                .iter()
                .zip(x)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum::<f64>()
                + 1e-6;
        }
    }
    (want, scale)
}

#[test]
fn gemv_quantized_matches_the_dequantized_reference() {
    // 37 rows: a partial block of 4 warps × 2 rows and a warp with one row; k = 512 leaves lanes
    // idle, k = 2560 (Phi-2's width, 80 groups of 32) gives lanes two groups per step and then
    // one; k = 320 (10 blocks) keeps Q4_0 / Q8_0 in the GGUF layout
    let n = 37;
    let bias = test_data(n, 4, 4);
    for (k, m) in [(512, 1), (512, 8), (2560, 1), (2560, 3), (320, 2)] {
        let w32 = test_data(n * k, 32, 3);
        for ty in QUANT_TYPES {
            if k % ty.block_size() != 0 {
                continue;
            }
            let wq = quantize(ty, &w32);
            let wd = dequantize(ty, &wq, n * k);
            let x = test_data(m * k, 16, 5 + m as u64);
            // the kernels' activations: Q8_1 blocks, whose values equal Q8_0's
            let xd = dequantize(GgmlType::Q8_1, &quantize(GgmlType::Q8_1, &x), m * k);
            let (want, scale) = reference_matmul(&wd, &xd, n, k, m, &bias);
            // the CPU kernels see the same activation values for Q4_0 / Q5_0 / Q8_0 (Q8_0 blocks);
            // for Q4_1 / Q5_1 they fold the offset through Q8_1's f16-rounded sum (the kernels
            // use the exact integer sum), the K-quants pair with Q8_K (compared in
            // matmul_agrees_with_the_cpu_matmul_on_both_paths)
            let cpu_tol = match ty {
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => Some(2e-5),
                _ => None,
            };
            let mut cpu = vec![0f32; m * n];
            matmul_ref(ty, &wq, n, k, &x, m, &mut cpu);
            on_backends(|name, dev| {
                let w = dev.upload_weight(ty, n, k, &wq).unwrap();
                assert_eq!(w.split, splits(ty, k), "{name}: {ty} k = {k} layout");
                let xb = dev.upload(&x).unwrap();
                let xq = dev.alloc(super::q8_1_bytes(k, m)).unwrap();
                let bd = dev.upload(&bias).unwrap();
                let y = dev.alloc(m * n * 4).unwrap();
                dev.quantize_q8_1(xb.slice(), k, k, m, xq.slice()).unwrap();
                // every kernel variant, then the default
                let mut got = Vec::new();
                let variants = super::GemvVariant::ALL.map(Some);
                for v in variants.into_iter().chain([None]) {
                    dev.force_gemv_variant(v);
                    dev.gemv_q8_1(&w, xq.slice(), m, Some(bd.slice()), y.slice())
                        .unwrap();
                    got = dev.to_vec(y.slice::<f32>()).unwrap();
                    let what = format!("{name} gemv {ty} m={m} variant {v:?}");
                    assert_close(&what, &got, &want, |i| 2e-5 * scale[i]);
                }
                if let Some(tol) = cpu_tol {
                    let cpu_b: Vec<f64> = cpu
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| v as f64 + bias[i % n] as f64)
                        .collect();
                    let what = format!("{name} gemv {ty} m={m} vs matmul_ref");
                    assert_close(&what, &got, &cpu_b, |i| tol * scale[i]);
                }
            });
        }
    }
}

#[test]
fn gemv_float_weights() {
    let (n, k) = (21, 100);
    let w32 = test_data(n * k, 8, 6);
    let bias = vec![0f32; n];
    for ty in FLOAT_TYPES {
        let wq = quantize(ty, &w32);
        let wd = dequantize(ty, &wq, n * k);
        for m in [1, 4] {
            let x = test_data(m * k, 8, 7);
            let (want, scale) = reference_matmul(&wd, &x, n, k, m, &bias);
            on_backends(|name, dev| {
                let w = dev.upload_weight(ty, n, k, &wq).unwrap();
                let xb = dev.upload(&x).unwrap();
                let y = dev.alloc(m * n * 4).unwrap();
                dev.gemv_f32_act(&w, xb.slice(), m, None, y.slice())
                    .unwrap();
                let got = dev.to_vec(y.slice::<f32>()).unwrap();
                assert_close(&format!("{name} gemv {ty} m={m}"), &got, &want, |i| {
                    1e-5 * scale[i]
                });
            });
        }
    }
}

// ---- GEMM -----------------------------------------------------------------------------------

fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
}

#[test]
fn gemm_every_weight_type() {
    // n, m not multiples of the 64 × 64 tile; k = 80 checks the zero padding of float weights;
    // Q4_0 / Q8_0 rows of k = 512 are split (common.cuh), of k = 96 not
    let (n, m) = (72, 70);
    for ty in QUANT_TYPES.iter().chain(&FLOAT_TYPES).copied() {
        for k in [512usize, 80, 96] {
            if ty.block_size() > 1 && k % ty.block_size() != 0 {
                continue;
            }
            let w32 = test_data(n * k, 32, 8);
            let wq = quantize(ty, &w32);
            let wd = round_f16(&dequantize(ty, &wq, n * k));
            let x = test_data(m * k, 16, 9);
            let bias = test_data(n, 4, 10);
            let (want, scale) = reference_matmul(&wd, &round_f16(&x), n, k, m, &bias);
            on_backends(|name, dev| {
                let w = dev.upload_weight(ty, n, k, &wq).unwrap();
                assert_eq!(w.split, splits(ty, k), "{name}: {ty} k = {k} layout");
                let xb = dev.upload(&x).unwrap();
                let bd = dev.upload(&bias).unwrap();
                let y = dev.alloc(m * n * 4).unwrap();
                let mut scratch = Scratch::new();
                dev.matmul(&w, xb.slice(), m, Some(bd.slice()), y.slice(), &mut scratch)
                    .unwrap();
                let got = dev.to_vec(y.slice::<f32>()).unwrap();
                assert_close(&format!("{name} gemm {ty} k={k}"), &got, &want, |i| {
                    1e-4 * scale[i]
                });
            });
        }
    }
}

#[test]
fn matmul_agrees_with_the_cpu_matmul_on_both_paths() {
    let (n, k) = (40, 256);
    let w32 = test_data(n * k, 32, 11);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::F16,
    ] {
        let wq = quantize(ty, &w32);
        for m in [2, 9] {
            // one magnitude per 256 values: Q8_K (the CPU's K-quant partner, one scale per 256)
            // then quantizes as finely as Q8_1 / f16 do
            let x = test_data(m * k, 256, 12);
            let mut cpu = vec![0f32; m * n];
            matmul_ref(ty, &wq, n, k, &x, m, &mut cpu);
            let wd = dequantize(ty, &wq, n * k);
            let (_, scale) = reference_matmul(&wd, &x, n, k, m, &vec![0.0; n]);
            let want: Vec<f64> = cpu.iter().map(|&v| v as f64).collect();
            on_backends(|name, dev| {
                let w = dev.upload_weight(ty, n, k, &wq).unwrap();
                let xb = dev.upload(&x).unwrap();
                let y = dev.alloc(m * n * 4).unwrap();
                let mut scratch = Scratch::new();
                dev.matmul(&w, xb.slice(), m, None, y.slice(), &mut scratch)
                    .unwrap();
                let got = dev.to_vec(y.slice::<f32>()).unwrap();
                assert_close(
                    &format!("{name} matmul {ty} m={m} vs matmul_ref"),
                    &got,
                    &want,
                    |i| 1.5e-2 * scale[i],
                );
            });
        }
    }
}

#[test]
fn fused_decode_ops_equal_their_separate_launches() {
    // LayerNorm + quantization, GELU + quantization, GEMV + residual update: the same bits as
    // the separate kernels they replace in decode (runtime/src/cuda/phi2.rs)
    let (k, n, m) = (256, 40, 3);
    let x = test_data(m * k, 8, 31);
    let (lw, lb) = (test_data(k, 2, 32), test_data(k, 2, 33));
    let w = quantize(GgmlType::Q4_0, &test_data(n * k, 32, 34));
    let (res0, res1) = (test_data(m * n, 4, 35), test_data(m * n, 4, 36));
    let bias = test_data(n, 4, 37);
    on_backends(|name, dev| {
        let xb = dev.upload(&x).unwrap();
        let (wb, bb) = (dev.upload(&lw).unwrap(), dev.upload(&lb).unwrap());
        let qb = super::q8_1_bytes(k, m);
        let (y1, y2) = (dev.alloc(m * k * 4).unwrap(), dev.alloc(m * k * 4).unwrap());
        let (q1, q2) = (dev.alloc_zeroed(qb).unwrap(), dev.alloc_zeroed(qb).unwrap());
        let (ws, bs) = (Some(wb.slice::<f32>()), Some(bb.slice::<f32>()));
        let rows = Rows::contiguous(m, k);
        dev.layer_norm(xb.slice(), y1.slice(), ws, bs, k, rows, 1e-5)
            .unwrap();
        dev.quantize_q8_1(y1.slice(), k, k, m, q1.slice()).unwrap();
        dev.layer_norm_q8_1(xb.slice(), y2.slice(), q2.slice(), ws, bs, k, m, 1e-5)
            .unwrap();
        let f32s = |b: &DeviceBuffer| dev.to_vec(b.slice::<f32>()).unwrap();
        let bytes = |b: &DeviceBuffer| dev.to_vec(b.slice::<u8>()).unwrap();
        assert!(f32s(&y1) == f32s(&y2), "{name}: layer_norm_q8_1 y");
        assert!(bytes(&q1) == bytes(&q2), "{name}: layer_norm_q8_1 yq");

        dev.gelu_tanh(xb.slice(), y1.slice(), m * k).unwrap();
        dev.quantize_q8_1(y1.slice(), k, k, m, q1.slice()).unwrap();
        dev.gelu_tanh_quantize_q8_1(xb.slice(), k, m, q2.slice())
            .unwrap();
        assert!(bytes(&q1) == bytes(&q2), "{name}: gelu_tanh_quantize_q8_1");

        let wd = dev.upload_weight(GgmlType::Q4_0, n, k, &w).unwrap();
        let (r0, r1) = (dev.upload(&res0).unwrap(), dev.upload(&res1).unwrap());
        let bd = dev.upload(&bias).unwrap();
        let (g, out) = (dev.alloc(m * n * 4).unwrap(), dev.alloc(m * n * 4).unwrap());
        dev.gemv_q8_1(&wd, q1.slice(), m, Some(bd.slice()), g.slice())
            .unwrap();
        dev.add3(r0.slice(), r1.slice(), g.slice(), out.slice(), m * n)
            .unwrap();
        // in place, as the model uses it: y is add0
        dev.gemv_q8_1_residual(
            &wd,
            q1.slice(),
            m,
            Some(bd.slice()),
            r0.slice(),
            r1.slice(),
            r0.slice(),
        )
        .unwrap();
        assert!(f32s(&out) == f32s(&r0), "{name}: gemv_q8_1_residual");
    });
}

#[test]
fn shape_errors_are_reported() {
    on_backends(|name, dev| {
        let bad = dev
            .upload_weight(GgmlType::Q4_0, 2, 32, &[0u8; 35])
            .expect_err("short data");
        assert!(
            bad.to_string().contains("expected 36 bytes"),
            "{name}: {bad}"
        );
        let unsupported = dev
            .upload_weight(GgmlType::Q8_K, 1, 256, &[0u8; 292])
            .expect_err("Q8_K");
        assert!(
            matches!(unsupported, CudaError::Unsupported(_)),
            "{name}: {unsupported}"
        );
        let w = dev
            .upload_weight(GgmlType::Q8_0, 2, 32, &[0u8; 68])
            .unwrap();
        let x = dev.alloc(4 * 32 * 9).unwrap();
        let y = dev.alloc(4 * 2 * 9).unwrap();
        let too_many = dev
            .gemv_q8_1(&w, x.slice(), 9, None, y.slice())
            .expect_err("m = 9");
        assert!(
            too_many.to_string().contains("at most 8"),
            "{name}: {too_many}"
        );
        let short_y = dev
            .gemv_q8_1(&w, x.slice(), 2, None, y.slice::<f32>().range(0, 3))
            .expect_err("short y");
        assert!(short_y.to_string().contains("gemv: y"), "{name}: {short_y}");
        let ids = [0u32, 2];
        let out = dev.alloc(2 * 32 * 4).unwrap();
        let oob = dev
            .get_rows_host_ids(&w, &ids, out.slice())
            .expect_err("id 2 of 2 rows");
        assert!(oob.to_string().contains("token id 2"), "{name}: {oob}");
    });
}

// ---- embedding gather --------------------------------------------------------------------------

#[test]
fn get_rows_every_weight_type() {
    let rows = 6;
    let ids = [3u32, 0, 5, 3];
    // Q4_0 / Q8_0 rows of k = 512 are split (common.cuh), of k = 96 not
    for (ty, k) in QUANT_TYPES
        .iter()
        .chain(&FLOAT_TYPES)
        .flat_map(|&ty| [(ty, 512), (ty, 96)])
    {
        if k % ty.block_size() != 0 {
            continue;
        }
        let w32 = test_data(rows * k, 32, 13);
        let wq = quantize(ty, &w32);
        let wd = dequantize(ty, &wq, rows * k);
        let want: Vec<f64> = ids
            .iter()
            .flat_map(|&i| {
                wd[i as usize * k..(i as usize + 1) * k]
                    .iter()
                    .map(|&v| v as f64)
            })
            .collect();
        on_backends(|name, dev| {
            let w = dev.upload_weight(ty, rows, k, &wq).unwrap();
            assert_eq!(w.split, splits(ty, k), "{name}: {ty} k = {k} layout");
            let out = dev.alloc(ids.len() * k * 4).unwrap();
            dev.get_rows_host_ids(&w, &ids, out.slice()).unwrap();
            let got = dev.to_vec(out.slice::<f32>()).unwrap();
            // exact up to the device's fused multiply-adds in d·q − m
            assert_close(&format!("{name} get_rows {ty} k = {k}"), &got, &want, |i| {
                1e-6 * want[i].abs() + 1e-7
            });
        });
    }
}

// ---- norms, RoPE ---------------------------------------------------------------------------------

fn layer_norm_ref(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    x.iter()
        .zip(w)
        .zip(b)
        .map(|((&v, &w), &b)| (v as f64 - mean) * inv * w as f64 + b as f64)
        .collect()
}

#[test]
fn layer_norm_plain_and_per_head() {
    let (t, dim) = (5, 300);
    let x = test_data(t * dim, 50, 14);
    let w = test_data(dim, 10, 15);
    let b = test_data(dim, 10, 16);
    let want: Vec<f64> = x
        .chunks(dim)
        .flat_map(|r| layer_norm_ref(r, &w, &b, 1e-5))
        .collect();
    // per-head: 3 tokens of 4 heads of 20 inside rows of 100, in place
    let (heads, hd, ld) = (4, 20, 100);
    let xh = test_data(3 * ld, 20, 17);
    let (wh, bh) = (test_data(hd, 4, 18), test_data(hd, 4, 19));
    let mut want_h: Vec<f64> = xh.iter().map(|&v| v as f64).collect();
    for tok in 0..3 {
        for h in 0..heads {
            let o = tok * ld + h * hd;
            let r = layer_norm_ref(&xh[o..o + hd], &wh, &bh, 1e-5);
            want_h[o..o + hd].copy_from_slice(&r);
        }
    }
    on_backends(|name, dev| {
        let (xd, yd) = (dev.upload(&x).unwrap(), dev.alloc(x.len() * 4).unwrap());
        let (wd, bd) = (dev.upload(&w).unwrap(), dev.upload(&b).unwrap());
        dev.layer_norm(
            xd.slice(),
            yd.slice(),
            Some(wd.slice()),
            Some(bd.slice()),
            dim,
            Rows::contiguous(t, dim),
            1e-5,
        )
        .unwrap();
        let got = dev.to_vec(yd.slice::<f32>()).unwrap();
        assert_close(&format!("{name} layer_norm"), &got, &want, |i| {
            2e-5 * (1.0 + want[i].abs())
        });

        let xd = dev.upload(&xh).unwrap();
        let (wd, bd) = (dev.upload(&wh).unwrap(), dev.upload(&bh).unwrap());
        let rows = Rows {
            tokens: 3,
            groups: heads,
            ld_tok: ld,
            ld_grp: hd,
        };
        dev.layer_norm(
            xd.slice(),
            xd.slice(),
            Some(wd.slice()),
            Some(bd.slice()),
            hd,
            rows,
            1e-5,
        )
        .unwrap();
        let got = dev.to_vec(xd.slice::<f32>()).unwrap();
        assert_close(&format!("{name} per-head layer_norm"), &got, &want_h, |i| {
            2e-5 * (1.0 + want_h[i].abs())
        });
    });
}

#[test]
fn rms_norm_rows() {
    let (t, dim) = (4, 200);
    let x = test_data(t * dim, 40, 20);
    let w = test_data(dim, 10, 21);
    let mut want = Vec::new();
    for r in x.chunks(dim) {
        let ms = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + 1e-6).sqrt();
        want.extend(r.iter().zip(&w).map(|(&v, &w)| v as f64 * inv * w as f64));
    }
    on_backends(|name, dev| {
        let (xd, wd) = (dev.upload(&x).unwrap(), dev.upload(&w).unwrap());
        dev.rms_norm(
            xd.slice(),
            xd.slice(),
            Some(wd.slice()),
            dim,
            Rows::contiguous(t, dim),
            1e-6,
        )
        .unwrap();
        let got = dev.to_vec(xd.slice::<f32>()).unwrap();
        assert_close(&format!("{name} rms_norm"), &got, &want, |i| {
            2e-5 * (1.0 + want[i].abs())
        });
    });
}

#[test]
fn rope_neox_partial_with_scale() {
    // 4 tokens × 3 heads × 20 dims in rows of 70 (10 untouched), 8 rotated dims
    let (t, heads, hd, n_rot, ld, pos0, theta, scale) = (4, 3, 20, 8, 70, 1000, 10000f32, 0.5f32);
    let x = test_data(t * ld, 10, 22);
    let mut want: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for tok in 0..t {
        for h in 0..heads {
            let o = tok * ld + h * hd;
            let half = n_rot / 2;
            for j in 0..half {
                let inv_freq = (theta as f64).powf(-(2.0 * j as f64) / n_rot as f64);
                let (s, c) = ((pos0 + tok) as f64 * inv_freq).sin_cos();
                let (a, b) = (x[o + j] as f64, x[o + j + half] as f64);
                want[o + j] = a * c - b * s;
                want[o + j + half] = b * c + a * s;
            }
            for v in &mut want[o..o + hd] {
                *v *= scale as f64;
            }
        }
    }
    on_backends(|name, dev| {
        let xd = dev.upload(&x).unwrap();
        dev.rope_neox(xd.slice(), t, heads, hd, n_rot, ld, pos0, theta, scale)
            .unwrap();
        let got = dev.to_vec(xd.slice::<f32>()).unwrap();
        assert_close(&format!("{name} rope"), &got, &want, |i| {
            1e-6 * (1.0 + want[i].abs())
        });
    });
}

// ---- attention ---------------------------------------------------------------------------------

/// f64 softmax attention with the semantics of [`AttentionShape`].
fn attention_ref(q: &[f32], k: &[f32], v: &[f32], s: &AttentionShape) -> Vec<f64> {
    let hd = s.head_dim;
    let group = s.n_head / s.n_head_kv;
    let mut out = vec![0f64; s.n_q * s.ld_out];
    for t in 0..s.n_q {
        let limit = s.causal.map_or(s.n_kv, |p0| (p0 + t + 1).min(s.n_kv));
        for h in 0..s.n_head {
            let kvh = h / group;
            let qv = &q[t * s.ld_q + h * hd..t * s.ld_q + (h + 1) * hd];
            let scores: Vec<f64> = (0..limit)
                .map(|p| {
                    let kr = &k[p * s.ld_kv + kvh * hd..p * s.ld_kv + (kvh + 1) * hd];
                    s.scale as f64
                        * qv.iter()
                            .zip(kr)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|&x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                let acc: f64 = (0..limit)
                    .map(|p| e[p] * v[p * s.ld_kv + kvh * hd + d] as f64)
                    .sum();
                out[t * s.ld_out + h * hd + d] = if limit > 0 { acc / sum } else { 0.0 };
            }
        }
    }
    out
}

/// Runs one attention case on every backend: with the automatic key split, and with
/// `split_len` (if given) to exercise the split-and-combine path.
fn check_attention(s: AttentionShape, f16_kv: bool, seed: u64, split_len: Option<usize>) {
    let q = test_data(s.n_q * s.ld_q, 8, seed);
    let mut k = test_data(s.n_kv * s.ld_kv, 8, seed + 1);
    let mut v = test_data(s.n_kv * s.ld_kv, 8, seed + 2);
    if f16_kv {
        k = round_f16(&k);
        v = round_f16(&v);
    }
    let want_full = attention_ref(&q, &k, &v, &s);
    let width = s.n_head * s.head_dim;
    on_backends(|name, dev| {
        let qd = dev.upload(&q).unwrap();
        let out = dev.upload(&vec![f32::NAN; s.n_q * s.ld_out]).unwrap();
        let (kb, vb);
        let kv = if f16_kv {
            let to16 = |x: &[f32]| {
                x.iter()
                    .map(|&a| f16::from_f32(a).to_bits())
                    .collect::<Vec<u16>>()
            };
            kb = dev.upload(&to16(&k)).unwrap();
            vb = dev.upload(&to16(&v)).unwrap();
            KvSlices::F16 {
                k: kb.slice(),
                v: vb.slice(),
            }
        } else {
            kb = dev.upload(&k).unwrap();
            vb = dev.upload(&v).unwrap();
            KvSlices::F32 {
                k: kb.slice(),
                v: vb.slice(),
            }
        };
        let mut scratch = Scratch::new();
        let mut runs = vec![("auto split", None)];
        if let Some(len) = split_len {
            runs.push(("split", Some(len)));
        }
        for (how, len) in runs {
            dev.write(out.slice(), &vec![f32::NAN; s.n_q * s.ld_out])
                .unwrap();
            match len {
                None => dev.attention(qd.slice(), kv, out.slice(), &s, &mut scratch),
                Some(l) => dev.attention_split(qd.slice(), kv, out.slice(), &s, l, &mut scratch),
            }
            .unwrap();
            let got_full = dev.to_vec(out.slice::<f32>()).unwrap();
            // compare the written part; the padding between rows must stay NaN (untouched)
            let mut got = Vec::new();
            let mut want = Vec::new();
            for t in 0..s.n_q {
                got.extend_from_slice(&got_full[t * s.ld_out..t * s.ld_out + width]);
                want.extend_from_slice(&want_full[t * s.ld_out..t * s.ld_out + width]);
                assert!(
                    got_full[t * s.ld_out + width..(t + 1) * s.ld_out]
                        .iter()
                        .all(|v| v.is_nan()),
                    "{name} {how}: wrote past a row"
                );
            }
            assert_close(
                &format!("{name} attention ({how}) {s:?}"),
                &got,
                &want,
                |i| 2e-5 * (1.0 + want[i].abs()),
            );
        }
    });
}

#[test]
fn attention_causal_over_an_f16_cache_with_grouped_heads() {
    // 5 new positions at 37..42 after 37 cached ones; 4 heads over 2 KV heads of 80 dims
    let s = AttentionShape {
        n_q: 5,
        n_kv: 42,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 80,
        ld_q: 4 * 80,
        ld_kv: 2 * 80 + 16,
        ld_out: 4 * 80 + 8,
        scale: 1.0 / 80f32.sqrt(),
        causal: Some(37),
    };
    check_attention(s, true, 30, Some(7));
}

#[test]
fn attention_decode_step() {
    let s = AttentionShape {
        n_q: 1,
        n_kv: 65,
        n_head: 2,
        n_head_kv: 2,
        head_dim: 64,
        ld_q: 128,
        ld_kv: 128,
        ld_out: 128,
        scale: 0.125,
        causal: Some(64),
    };
    check_attention(s, true, 40, Some(32));
    // Phi-2's heads (80 dims) grouped over KV heads, 300 keys: several key rounds per warp
    // with one split, a split per 128 keys (auto), and splits that leave some warps keyless
    let s = AttentionShape {
        n_q: 1,
        n_kv: 300,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 80,
        ld_q: 4 * 80,
        ld_kv: 2 * 80 + 8,
        ld_out: 4 * 80 + 4,
        scale: 1.0 / 80f32.sqrt(),
        causal: Some(299),
    };
    check_attention(s, true, 41, Some(300));
    check_attention(s, true, 42, Some(40));
    // a query that sees only part of the keys (causal position 30 of 42), f32 keys and values
    let s = AttentionShape {
        n_q: 1,
        n_kv: 42,
        n_head: 2,
        n_head_kv: 1,
        head_dim: 40,
        ld_q: 80,
        ld_kv: 40,
        ld_out: 80,
        scale: 0.2,
        causal: Some(30),
    };
    check_attention(s, false, 43, Some(16));
    check_attention(AttentionShape { causal: None, ..s }, false, 44, Some(16));
}

#[test]
fn attention_non_causal_f32_several_query_blocks() {
    // ViT-like: head_dim 88, 40 queries (3 blocks of 16), 70 keys (3 chunks of 32)
    let s = AttentionShape {
        n_q: 40,
        n_kv: 70,
        n_head: 2,
        n_head_kv: 2,
        head_dim: 88,
        ld_q: 176,
        ld_kv: 176,
        ld_out: 176,
        scale: 1.0 / 88f32.sqrt(),
        causal: None,
    };
    check_attention(s, false, 50, Some(40));
    // the largest head dim, one head
    let s = AttentionShape {
        n_q: 3,
        n_kv: 33,
        n_head: 1,
        n_head_kv: 1,
        head_dim: 128,
        ld_q: 128,
        ld_kv: 128,
        ld_out: 128,
        scale: 0.1,
        causal: None,
    };
    check_attention(s, false, 60, None);
}

// ---- element-wise ------------------------------------------------------------------------------

/// erf by its Maclaurin series (f64, |x| <= 4; ±1 beyond, where erfc < 2e-8).
fn erf_ref(x: f64) -> f64 {
    if x.abs() > 4.0 {
        return x.signum();
    }
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 {
            break;
        }
    }
    sum * std::f64::consts::FRAC_2_SQRT_PI
}

#[test]
fn gelu_variants() {
    let mut rng = Lcg::new(70);
    let x: Vec<f32> = (0..1000).map(|_| rng.uniform() * 6.0).collect();
    let want_erf: Vec<f64> = x
        .iter()
        .map(|&z| 0.5 * z as f64 * (1.0 + erf_ref(z as f64 / std::f64::consts::SQRT_2)))
        .collect();
    let want_tanh: Vec<f64> = x
        .iter()
        .map(|&z| {
            let z = z as f64;
            0.5 * z
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z)).tanh())
        })
        .collect();
    on_backends(|name, dev| {
        let xd = dev.upload(&x).unwrap();
        let y = dev.alloc(x.len() * 4).unwrap();
        dev.gelu_erf(xd.slice(), y.slice(), x.len()).unwrap();
        let got = dev.to_vec(y.slice::<f32>()).unwrap();
        assert_close(&format!("{name} gelu_erf"), &got, &want_erf, |i| {
            1e-6 * (1.0 + want_erf[i].abs())
        });
        dev.gelu_tanh(xd.slice(), xd.slice(), x.len()).unwrap();
        let got = dev.to_vec(xd.slice::<f32>()).unwrap();
        assert_close(&format!("{name} gelu_tanh"), &got, &want_tanh, |i| {
            1e-6 * (1.0 + want_tanh[i].abs())
        });
    });
}

#[test]
fn adds_scale_bias() {
    let n = 600;
    let (a, b, c) = (
        test_data(n, 8, 71),
        test_data(n, 8, 72),
        test_data(n, 8, 73),
    );
    let bias = test_data(150, 8, 74);
    on_backends(|name, dev| {
        let (ad, bd, cd) = (
            dev.upload(&a).unwrap(),
            dev.upload(&b).unwrap(),
            dev.upload(&c).unwrap(),
        );
        let y = dev.alloc(n * 4).unwrap();
        dev.add(ad.slice(), bd.slice(), y.slice(), n).unwrap();
        let got = dev.to_vec(y.slice::<f32>()).unwrap();
        assert!(
            got.iter().enumerate().all(|(i, &v)| v == a[i] + b[i]),
            "{name}: add"
        );
        dev.add3(ad.slice(), bd.slice(), cd.slice(), y.slice(), n)
            .unwrap();
        let got = dev.to_vec(y.slice::<f32>()).unwrap();
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, &v)| v == a[i] + (b[i] + c[i])),
            "{name}: add3"
        );
        dev.scale(ad.slice(), y.slice(), 0.3, n).unwrap();
        let got = dev.to_vec(y.slice::<f32>()).unwrap();
        assert!(
            got.iter().enumerate().all(|(i, &v)| v == a[i] * 0.3),
            "{name}: scale"
        );
        // 3 rows of 150 with stride 200
        let biasd = dev.upload(&bias).unwrap();
        dev.add_bias(ad.slice(), biasd.slice(), 150, 3, 200)
            .unwrap();
        let got = dev.to_vec(ad.slice::<f32>()).unwrap();
        for (i, &v) in got.iter().enumerate() {
            let (r, col) = (i / 200, i % 200);
            let want = if r < 3 && col < 150 {
                a[i] + bias[col]
            } else {
                a[i]
            };
            assert_eq!(v, want, "{name}: add_bias [{i}]");
        }
    });
}

#[test]
fn argmax_takes_the_first_maximum() {
    let mut x = test_data(1000, 8, 75);
    let max = x.iter().copied().fold(f32::MIN, f32::max) + 1.0;
    x[700] = max;
    x[313] = max;
    x[313 + 256] = max; // the same thread's stride as 313: the kernel's per-thread scan must keep the first
    x[999] = max;
    let flat = vec![-2.5f32; 77];
    on_backends(|name, dev| {
        let out = dev.alloc(4).unwrap();
        let xd = dev.upload(&x).unwrap();
        dev.argmax(xd.slice(), out.slice()).unwrap();
        assert_eq!(dev.to_vec(out.slice::<i32>()).unwrap(), [313], "{name}");
        let fd = dev.upload(&flat).unwrap();
        dev.argmax(fd.slice(), out.slice()).unwrap();
        assert_eq!(dev.to_vec(out.slice::<i32>()).unwrap(), [0], "{name}");
    });
}
