//! Kernel-level benchmark of the CUDA backend at full TinyGPT-V sizes with random weights
//! (`scripts/cuda-check.sh` runs it on a GPU machine):
//!
//! - Phi-2 (2.7B) decode: the 129 weight matrices of one token (32 layers × QKV, output, up,
//!   down, and the LM head) as Q8_1-activation GEMVs → ms per token, GB/s, % of bandwidth;
//! - Phi-2 prompt of 512 tokens: the same matrices as tensor-core GEMMs → ms, TFLOP/s;
//! - attention: the 1025-token ViT at 448 (16 heads × 88), a causal 512-token prompt and decode
//!   steps over the f16 cache (32 heads × 80);
//! - the EVA ViT-g matmuls (40 layers, width 1408, MLP 6144) at 224 and 448.
//!
//! Run: `cargo test -p tinygptv-kernels --features cuda --lib cuda::bench -- --ignored
//! --nocapture`. With `TINYGPTV_CUDA_BENCH_OUT=FILE` the summary is also written there as
//! Markdown.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::ops::gemv_variant;
use super::*;
use crate::formats::test_util::test_data;
use crate::formats::{quantize_row, row_bytes};
use crate::types::GgmlType;

/// Model and run sizes of the benchmark.
struct Sizes {
    embd: usize,
    ff: usize,
    layers: usize,
    vocab: usize,
    prompt: usize,
    vit_width: usize,
    vit_ff: usize,
    vit_layers: usize,
    vit_heads: usize,
    vit_tokens: [usize; 2],
    decode_ctx: [usize; 2],
    copy_bytes: usize,
    /// Bytes of distinct matrix copies per timing of the per-shape GEMV table.
    shape_bytes: usize,
    reps: usize,
    weight_types: &'static [GgmlType],
    vit_types: &'static [GgmlType],
}

/// TinyGPT-V's: Phi-2 2.7B (2560 wide, 32 layers, MLP 10240, 51200 tokens; 32 heads of 80) and
/// EVA ViT-g (1408 wide, 40 layers, MLP 6144, 16 heads of 88).
const FULL: Sizes = Sizes {
    embd: 2560,
    ff: 10240,
    layers: 32,
    vocab: 51200,
    prompt: 512,
    vit_width: 1408,
    vit_ff: 6144,
    vit_layers: 40,
    vit_heads: 16,
    vit_tokens: [257, 1025],
    decode_ctx: [512, 2048],
    copy_bytes: 1 << 30,
    shape_bytes: 256 << 20,
    reps: 10,
    weight_types: &[
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ],
    vit_types: &[GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16],
};

/// Random weights: for each (type, row length) one host-quantized tile of 64 random rows,
/// repeated on the device (quantizing billions of weights on the host would dominate the run).
/// The tile is uploaded as a weight itself, so its rows are in the device layout
/// (`DeviceWeight::split`) and copy as whole rows.
#[derive(Default)]
struct RandomWeights {
    tiles: HashMap<(GgmlType, usize), DeviceWeight>,
}

impl RandomWeights {
    fn make(&mut self, dev: &Device, ty: GgmlType, rows: usize, cols: usize) -> DeviceWeight {
        const TILE_ROWS: usize = 64;
        let rb = row_bytes(ty, cols).unwrap();
        let tile = self.tiles.entry((ty, cols)).or_insert_with(|| {
            let x = test_data(TILE_ROWS * cols, 32, cols as u64);
            let mut t = vec![0u8; rb * TILE_ROWS];
            quantize_row(ty, &x, &mut t).unwrap();
            dev.upload_weight(ty, TILE_ROWS, cols, &t).unwrap()
        });
        let w = dev
            .upload_weight(ty, rows, cols, &vec![0u8; rb * rows])
            .unwrap();
        assert_eq!(w.split, tile.split, "tile and matrix layouts");
        let dst = w.bytes_slice();
        let mut r = 0;
        while r < rows {
            let n = TILE_ROWS.min(rows - r);
            dev.copy(
                dst.range(r * rb, n * rb),
                tile.bytes_slice().range(0, n * rb),
            )
            .unwrap();
            r += n;
        }
        w
    }
}

struct Phi2Weights {
    mats: Vec<DeviceWeight>,
}

impl Phi2Weights {
    /// One transformer's matrices (`layers` × QKV, output, up, down; then the LM head if
    /// `vocab > 0`); every matrix its own buffer, as in the model (no L2 reuse across them).
    #[allow(clippy::too_many_arguments)]
    fn new(
        dev: &Device,
        ty: GgmlType,
        rw: &mut RandomWeights,
        layers: usize,
        embd: usize,
        ff: usize,
        vocab: usize,
    ) -> Phi2Weights {
        let mut mats = Vec::new();
        for _ in 0..layers {
            mats.push(rw.make(dev, ty, 3 * embd, embd));
            mats.push(rw.make(dev, ty, embd, embd));
            mats.push(rw.make(dev, ty, ff, embd));
            mats.push(rw.make(dev, ty, embd, ff));
        }
        if vocab > 0 {
            mats.push(rw.make(dev, ty, vocab, embd));
        }
        Phi2Weights { mats }
    }

    fn bytes(&self) -> usize {
        self.mats.iter().map(|w| w.bytes()).sum()
    }

    fn flops(&self, m: usize) -> f64 {
        self.mats
            .iter()
            .map(|w| 2.0 * (w.rows * w.cols * m) as f64)
            .sum()
    }

    /// Runs every matrix over `m` rows of activations (inputs and outputs reuse two buffers).
    fn run(
        &self,
        dev: &Device,
        x: &DeviceBuffer,
        y: &DeviceBuffer,
        m: usize,
        scratch: &mut Scratch,
    ) -> Result<(), CudaError> {
        for w in &self.mats {
            dev.matmul(
                w,
                x.slice::<f32>().range(0, m * w.cols),
                m,
                None,
                y.slice::<f32>().range(0, m * w.rows),
                scratch,
            )?;
        }
        Ok(())
    }
}

/// Like [`time_ms`], with every launch of `f` queued behind a `spin_ns`-long busy kernel, so the
/// timing excludes the host's launch rate.
fn time_ms_queued(
    dev: &Device,
    reps: usize,
    spin_ns: u64,
    mut f: impl FnMut() -> Result<(), CudaError>,
) -> f32 {
    f().unwrap();
    dev.synchronize().unwrap();
    let times = (0..reps)
        .map(|_| {
            dev.spin(spin_ns).unwrap();
            dev.time(&mut f).unwrap().1
        })
        .collect();
    median(times)
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median milliseconds of `reps` timed runs of `f` after one warm-up.
fn time_ms(dev: &Device, reps: usize, mut f: impl FnMut() -> Result<(), CudaError>) -> f32 {
    f().unwrap();
    dev.synchronize().unwrap();
    let times = (0..reps).map(|_| dev.time(&mut f).unwrap().1).collect();
    median(times)
}

#[test]
#[ignore = "needs a CUDA GPU; run by scripts/cuda-check.sh"]
fn cuda_bench() {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) if std::env::var("TINYGPTV_REQUIRE_CUDA").is_ok_and(|v| v == "1") => panic!("{e}"),
        Err(e) => {
            eprintln!("note: CUDA benchmark skipped: {e}");
            return;
        }
    };
    let md = run_bench(&dev, &FULL);
    println!("{md}");
    if let Ok(path) = std::env::var("TINYGPTV_CUDA_BENCH_OUT") {
        std::fs::write(&path, &md).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}

/// The benchmark's code path at toy sizes on the emulator, so a GPU session does not find its
/// bugs.
#[test]
fn bench_runs_at_toy_sizes() {
    if std::env::var("TINYGPTV_CUDA_EMU").is_ok_and(|v| v == "off") {
        eprintln!("note: benchmark dry run skipped (TINYGPTV_CUDA_EMU=off)");
        return;
    }
    let dev = match Device::emulator() {
        Ok(d) => d,
        Err(e @ CudaError::NoCompiler(_)) => {
            eprintln!("note: benchmark dry run skipped: {e}");
            return;
        }
        Err(e) => panic!("the CUDA emulator is unavailable: {e}"),
    };
    let toy = Sizes {
        embd: 256,
        ff: 256,
        layers: 1,
        vocab: 40,
        prompt: 9,
        vit_width: 88,
        vit_ff: 64,
        vit_layers: 1,
        vit_heads: 1,
        vit_tokens: [5, 17],
        decode_ctx: [3, 7],
        copy_bytes: 4096,
        shape_bytes: 1,
        reps: 1,
        weight_types: &[GgmlType::Q4_0, GgmlType::Q4_K],
        vit_types: &[GgmlType::F16],
    };
    let md = run_bench(&dev, &toy);
    eprintln!("{md}");
    assert!(md.contains("| q4_K |") || md.contains("| Q4_K |"), "{md}");
}

fn run_bench(dev: &Device, sz: &Sizes) -> String {
    let t0 = std::time::Instant::now();
    dev.precompile().unwrap();
    let compile_s = t0.elapsed().as_secs_f64();
    let mut md = String::new();
    let _ = writeln!(md, "# CUDA kernel benchmark\n");
    let _ = writeln!(md, "Device: {}  ", dev.describe());
    let peak = dev.peak_bandwidth_gbs();
    // measured copy bandwidth (bytes read + written)
    let big = sz.copy_bytes;
    let (a, b) = (
        dev.alloc_zeroed(big).unwrap(),
        dev.alloc_zeroed(big).unwrap(),
    );
    let copy_ms = time_ms(dev, 5.min(sz.reps), || {
        dev.copy(b.slice::<u8>(), a.slice::<u8>())
    });
    drop((a, b));
    let copy_gbs = 2.0 * big as f64 / (copy_ms.max(1e-6) as f64 * 1e-3) / 1e9;
    let _ = writeln!(
        md,
        "Memory bandwidth: {} theoretical, {copy_gbs:.0} GB/s measured ({} MiB device copy, read + write)  ",
        peak.map_or("unknown".to_string(), |p| format!("{p:.0} GB/s")),
        big >> 20
    );
    let _ = writeln!(
        md,
        "Kernel compilation (NVRTC or disk cache): {compile_s:.1} s  "
    );
    for line in dev.build_log() {
        let _ = writeln!(md, "- {line}");
    }
    let bw_ref = peak.unwrap_or(copy_gbs);
    let reps = sz.reps;

    // ---- Phi-2 matmuls ----
    let p = sz.prompt;
    let _ = writeln!(
        md,
        "\n## Phi-2 matmuls, random weights ({} matrices per token)\n",
        4 * sz.layers + 1
    );
    let _ = writeln!(
        md,
        "Decode is timed twice: as launched one by one from the host (what a token costs today), \
         and with every launch queued behind a busy kernel first (`Device::spin`), which times \
         the device alone: the GEMV kernels and the gaps between them.\n"
    );
    let _ = writeln!(md, "| weights | size | decode ms/token | decode GB/s | % of bandwidth | queued: ms | queued: GB/s | queued: % of bandwidth | tokens/s (matmuls only) | pp{p} ms | pp{p} TFLOP/s |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    let x = dev
        .upload(&test_data(p * sz.ff.max(sz.embd), 64, 1))
        .unwrap();
    let y = dev
        .alloc(p * sz.vocab.max(sz.ff).max(3 * sz.embd) * 4)
        .unwrap();
    let mut scratch = Scratch::new();
    let mut rw = RandomWeights::default();
    for &ty in sz.weight_types {
        let w = Phi2Weights::new(dev, ty, &mut rw, sz.layers, sz.embd, sz.ff, sz.vocab);
        let gb = w.bytes() as f64 / 1e9;
        let tg = time_ms(dev, reps, || w.run(dev, &x, &y, 1, &mut scratch)).max(1e-6);
        let pp = time_ms(dev, reps.div_ceil(3), || {
            w.run(dev, &x, &y, p, &mut scratch)
        })
        .max(1e-6);
        // the host queues the 2 × 129 launches (~1.5 ms) while the device spins for 5
        let queued =
            time_ms_queued(dev, reps, 5_000_000, || w.run(dev, &x, &y, 1, &mut scratch)).max(1e-6);
        let gbs = gb / (tg as f64 * 1e-3);
        let qgbs = gb / (queued as f64 * 1e-3);
        let _ = writeln!(
            md,
            "| {ty} | {gb:.2} GB | {tg:.2} | {gbs:.0} | {:.0} % | {queued:.2} | {qgbs:.0} | {:.0} % | {:.0} | {pp:.1} | {:.0} |",
            100.0 * gbs / bw_ref,
            100.0 * qgbs / bw_ref,
            1e3 / tg as f64,
            w.flops(p) / (pp as f64 * 1e-3) / 1e12
        );
    }
    drop((x, y));
    gemv_shapes(dev, sz, &mut rw, bw_ref, &mut md);

    // ---- attention ----
    let _ = writeln!(md, "\n## Attention\n");
    let _ = writeln!(md, "| case | ms per layer |");
    let _ = writeln!(md, "|---|---|");
    let phi_heads = sz.embd / 80;
    let [v0, v1] = sz.vit_tokens;
    let [c0, c1] = sz.decode_ctx;
    let cases = [
        (
            format!("ViT: {v1} tokens, {} × 88, f32, full", sz.vit_heads),
            vit_attention(sz, v1),
            false,
        ),
        (
            format!("ViT: {v0} tokens, {} × 88, f32, full", sz.vit_heads),
            vit_attention(sz, v0),
            false,
        ),
        (
            format!("Phi-2 prompt: {p} causal, {phi_heads} × 80, f16 cache"),
            phi2_attention(sz, p, p, Some(0)),
            true,
        ),
        (
            format!("Phi-2 decode at {c0}: {phi_heads} × 80, f16 cache"),
            phi2_attention(sz, 1, c0, Some(c0 - 1)),
            true,
        ),
        (
            format!("Phi-2 decode at {c1}: {phi_heads} × 80, f16 cache"),
            phi2_attention(sz, 1, c1, Some(c1 - 1)),
            true,
        ),
    ];
    for (label, s, f16_kv) in cases {
        let q = dev.upload(&test_data(s.n_q * s.ld_q, 8, 2)).unwrap();
        let out = dev.alloc(s.n_q * s.ld_out * 4).unwrap();
        let kv_len = s.n_kv * s.ld_kv;
        let ms = if f16_kv {
            let k = dev.alloc_zeroed(kv_len * 2).unwrap();
            let v = dev.alloc_zeroed(kv_len * 2).unwrap();
            let kv = KvSlices::F16 {
                k: k.slice(),
                v: v.slice(),
            };
            time_ms(dev, reps, || {
                dev.attention(q.slice(), kv, out.slice(), &s, &mut scratch)
            })
        } else {
            let k = dev.upload(&test_data(kv_len, 8, 3)).unwrap();
            let v = dev.upload(&test_data(kv_len, 8, 4)).unwrap();
            let kv = KvSlices::F32 {
                k: k.slice(),
                v: v.slice(),
            };
            time_ms(dev, reps, || {
                dev.attention(q.slice(), kv, out.slice(), &s, &mut scratch)
            })
        };
        let _ = writeln!(md, "| {label} | {ms:.3} |");
    }

    // ---- ViT-g matmuls ----
    let _ = writeln!(
        md,
        "\n## EVA ViT-g matmuls ({} layers), random weights\n",
        sz.vit_layers
    );
    let _ = writeln!(
        md,
        "| weights | {v0} tokens ms | {v1} tokens ms | TFLOP/s at {v1} |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    let x = dev
        .upload(&test_data(v1 * sz.vit_ff.max(sz.vit_width), 64, 5))
        .unwrap();
    let y = dev.alloc(v1 * sz.vit_ff.max(3 * sz.vit_width) * 4).unwrap();
    for &ty in sz.vit_types {
        let w = Phi2Weights::new(dev, ty, &mut rw, sz.vit_layers, sz.vit_width, sz.vit_ff, 0);
        let ms0 = time_ms(dev, reps.div_ceil(3), || {
            w.run(dev, &x, &y, v0, &mut scratch)
        });
        let ms1 = time_ms(dev, reps.div_ceil(3), || {
            w.run(dev, &x, &y, v1, &mut scratch)
        })
        .max(1e-6);
        let _ = writeln!(
            md,
            "| {ty} | {ms0:.2} | {ms1:.2} | {:.0} |",
            w.flops(v1) / (ms1 as f64 * 1e-3) / 1e12
        );
    }
    let _ = writeln!(
        md,
        "\nTotal benchmark time: {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    md
}

/// The decode GEMV per Phi-2 matrix shape: enough distinct copies of the matrix to exceed the
/// L2 cache, run back to back over one quantized activation vector with the launches queued
/// ahead, for one and two weight rows per warp. Shows the kernel's bandwidth apart from the
/// per-token sequence's small matrices.
fn gemv_shapes(dev: &Device, sz: &Sizes, rw: &mut RandomWeights, bw_ref: f64, md: &mut String) {
    let (e, ff) = (sz.embd, sz.ff);
    let shapes = [
        ("QKV", 3 * e, e),
        ("attention output", e, e),
        ("MLP up", ff, e),
        ("MLP down", e, ff),
        ("LM head", sz.vocab, e),
    ];
    let _ = writeln!(
        md,
        "\n## Decode GEMV per matrix shape (launches queued, ≥ {} MiB of distinct copies per timing)\n",
        sz.shape_bytes >> 20
    );
    let _ = writeln!(
        md,
        "Time and GB/s of each kernel variant (weight rows per warp × groups per lane and \
         step); the last column names the variant the type runs with.\n"
    );
    let mut head = "| matrix | type |".to_string();
    for v in GemvVariant::ALL {
        let _ = write!(head, " {}×{} µs | GB/s |", v.rows, v.unroll);
    }
    let _ = writeln!(md, "{head} best % of bandwidth | default |");
    let _ = writeln!(
        md,
        "|---|---|{}---|---|",
        "---|---|".repeat(GemvVariant::ALL.len())
    );
    for &ty in sz.weight_types {
        for &(label, n, k) in &shapes {
            let one = n * row_bytes(ty, k).unwrap();
            let copies = sz.shape_bytes.div_ceil(one).clamp(2, 64);
            let mats: Vec<DeviceWeight> = (0..copies).map(|_| rw.make(dev, ty, n, k)).collect();
            let x = dev.upload(&test_data(k, 64, 2)).unwrap();
            let xq = dev.alloc(q8_1_bytes(k, 1)).unwrap();
            dev.quantize_q8_1(x.slice(), k, k, 1, xq.slice()).unwrap();
            let y = dev.alloc(n * 4).unwrap();
            let mut cells = String::new();
            let mut best = 0f64;
            for v in GemvVariant::ALL {
                dev.force_gemv_variant(Some(v));
                let ms = time_ms_queued(dev, sz.reps.div_ceil(2), 5_000_000, || {
                    for w in &mats {
                        dev.gemv_q8_1(w, xq.slice(), 1, None, y.slice())?;
                    }
                    Ok(())
                });
                let us = (ms as f64 * 1e3 / copies as f64).max(1e-6);
                let gbs = one as f64 / (us * 1e-6) / 1e9;
                best = best.max(gbs);
                let _ = write!(cells, " {us:.1} | {gbs:.0} |");
            }
            dev.force_gemv_variant(None);
            let d = gemv_variant(&mats[0]);
            let _ = writeln!(
                md,
                "| {label} ({n} × {k}) | {ty} |{cells} {:.0} % | {}×{} |",
                100.0 * best / bw_ref,
                d.rows,
                d.unroll
            );
        }
    }
}

fn vit_attention(sz: &Sizes, n: usize) -> AttentionShape {
    AttentionShape {
        n_q: n,
        n_kv: n,
        n_head: sz.vit_heads,
        n_head_kv: sz.vit_heads,
        head_dim: 88,
        ld_q: sz.vit_heads * 88,
        ld_kv: sz.vit_heads * 88,
        ld_out: sz.vit_heads * 88,
        scale: 1.0 / 88f32.sqrt(),
        causal: None,
    }
}

fn phi2_attention(sz: &Sizes, n_q: usize, n_kv: usize, causal: Option<usize>) -> AttentionShape {
    let heads = (sz.embd / 80).max(1);
    AttentionShape {
        n_q,
        n_kv,
        n_head: heads,
        n_head_kv: heads,
        head_dim: 80,
        ld_q: heads * 80,
        ld_kv: heads * 80,
        ld_out: heads * 80,
        scale: 1.0,
        causal,
    }
}
