//! `tinygptv bench --model FILE.gguf [-p 512] [-n 128] [-t N] [-r 5] [--vs-llama-cpp] [--json] [--mmproj VISION.gguf]`
//!
//! llama-bench-style measurements: `pp<N>` = one batched forward over N prompt tokens from an
//! empty cache, `tg<N>` = N single-token forwards, `image` = one image encode; mean ± sd of
//! tokens (or images) per second over the repetitions. Also measures the memory read bandwidth
//! and the decode roofline (bytes of weights read per token ÷ bandwidth). With `--device cuda`
//! the language model and the vision tower run on the GPU (engine `tinygptv-cuda`; `--gpu-layers`
//! for partial offload) and the roofline uses the GPU's theoretical bandwidth. With
//! `--vs-llama-cpp`, llama.cpp runs the same file with the same thread count in this process,
//! each of its repetitions right after one of ours.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use rayon::prelude::*;
use runtime::backend::{CpuLm, LmBackend};
use runtime::kv_cache::CacheType;
use runtime::model::phi2::Phi2Model;

use super::common::{init_threads, DeviceArgs};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Language-model GGUF.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Prompt length of the pp test (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens of the tg test (0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Threads (default: physical cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Repetitions.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Also run llama.cpp on the same file and thread count, its repetitions alternating with
    /// ours (needs the `llama-cpp` feature).
    #[arg(long)]
    pub vs_llama_cpp: bool,
    /// Vision GGUF: adds the image-encode test.
    #[arg(long)]
    pub mmproj: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(serde::Serialize, Clone)]
pub struct BenchResult {
    pub engine: String,
    pub test: String,
    pub tokens_per_s: f64,
    pub stddev: f64,
}

pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Read bandwidth of the machine with the current thread pool: repeated sums over a buffer
/// much larger than the caches, best of 3.
pub fn read_bandwidth_gb_s() -> f64 {
    let n = 256 << 20; // 1 GiB of f32
    let buf: Vec<f32> = (0..n).into_par_iter().map(|i| (i & 7) as f32).collect();
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        // 16 independent sums per chunk: one running sum would be bound by the add latency
        // (~1 element per 4 cycles), not by memory
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0f32; 16];
                for block in c.chunks_exact(16) {
                    for (a, &v) in acc.iter_mut().zip(block) {
                        *a += v;
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((n * 4) as f64 / secs / 1e9);
    }
    best
}

/// Deterministic "random" token id `i` below `vocab` (the tokenizer's size).
pub fn bench_token(i: usize, vocab: usize) -> u32 {
    ((i as u64).wrapping_mul(2_654_435_761) % (vocab as u64).max(1)) as u32
}

/// `pp<n>`: one batched forward over `n` tokens from an empty cache, `reps` times;
/// tokens/s (mean, sd). On the CPU.
pub fn speed_pp(model: &Phi2Model, vocab: usize, n: usize, reps: usize) -> Result<(f64, f64)> {
    speed_pp_lm(
        &mut CpuLm::new(model, CacheType::F16, n + 1),
        vocab,
        n,
        reps,
    )
}

/// `tg<n>`: `n` single-token forwards, `reps` times; tokens/s (mean, sd). On the CPU.
pub fn speed_tg(model: &Phi2Model, vocab: usize, n: usize, reps: usize) -> Result<(f64, f64)> {
    speed_tg_lm(
        &mut CpuLm::new(model, CacheType::F16, n + 1),
        vocab,
        n,
        reps,
    )
}

/// [`speed_pp`] on any backend (its KV cache is cleared before each repetition).
pub fn speed_pp_lm(
    lm: &mut dyn LmBackend,
    vocab: usize,
    n: usize,
    reps: usize,
) -> Result<(f64, f64)> {
    let ids: Vec<u32> = (0..n).map(|i| bench_token(i, vocab)).collect();
    speed(lm, n, reps, |lm| lm.forward(lm.embed_tokens(&ids)?, false))
}

/// [`speed_tg`] on any backend.
pub fn speed_tg_lm(
    lm: &mut dyn LmBackend,
    vocab: usize,
    n: usize,
    reps: usize,
) -> Result<(f64, f64)> {
    speed(lm, n, reps, |lm| {
        for i in 0..n {
            lm.forward(lm.embed_tokens(&[bench_token(i, vocab)])?, false)?;
        }
        Ok(())
    })
}

/// `n` tokens per run of `work` from an empty cache, `reps` times: tokens/s (mean, sd).
fn speed<T>(
    lm: &mut dyn LmBackend,
    n: usize,
    reps: usize,
    mut work: impl FnMut(&mut dyn LmBackend) -> Result<T>,
) -> Result<(f64, f64)> {
    let mut tps = Vec::new();
    for _ in 0..reps.max(1) {
        lm.clear();
        let t = Instant::now();
        work(lm)?;
        tps.push(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(mean_sd(&tps))
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let threads = init_threads(args.threads);
    if args.reps == 0 {
        bail!("-r must be at least 1");
    }
    let compute = args.device.open()?;
    let lm = runtime::llm::load_language_model(&args.model)?;
    let model = &lm.model;
    let cfg = &model.cfg;
    let mut results = Vec::new();
    let vocab = lm.tokenizer.vocab_size().min(cfg.n_vocab);
    let engine = if compute.is_cpu() {
        "tinygptv"
    } else {
        "tinygptv-cuda"
    };
    let mut device_desc = compute.describe();

    // --vs-llama-cpp: llama.cpp loads the same file before anything is measured, so that the
    // two engines' repetitions can alternate (see `alternate`)
    if args.vs_llama_cpp && args.n_prompt + args.n_gen == 0 {
        bail!("--vs-llama-cpp compares the pp and tg tests: give -p or -n above 0");
    }
    #[cfg(feature = "llama-cpp")]
    let llama = match args.vs_llama_cpp {
        true => Some(crate::llama_cpp::LlamaCppModel::load(&args.model)?),
        false => None,
    };
    #[cfg(feature = "llama-cpp")]
    let mut session = match &llama {
        Some(m) => Some(m.bench_session(args.n_prompt, args.n_gen, threads)?),
        None => None,
    };
    #[cfg(feature = "llama-cpp")]
    let mut rival = session.as_mut().map(|s| s as &mut dyn Rival);
    #[cfg(not(feature = "llama-cpp"))]
    let mut rival: Option<&mut dyn Rival> = match args.vs_llama_cpp {
        true => bail!("--vs-llama-cpp needs a build with the llama-cpp feature: cargo build --release --features llama-cpp"),
        false => None,
    };
    let mut rival_results = Vec::new();
    if args.n_prompt > 0 || args.n_gen > 0 {
        let n_ctx = args.n_prompt.max(args.n_gen).max(1) + 1;
        let mut backend =
            compute.language_model(model, CacheType::F16, n_ctx, args.device.gpu_layers)?;
        device_desc = backend.describe();
        // warm-up: pages in the weights; on a GPU also compiles the kernels (or reads them
        // from the disk cache) for both paths
        let warm_prompt = if compute.is_cpu() { 0 } else { args.n_prompt };
        for n in [1, warm_prompt.min(n_ctx - 1)] {
            if n > 0 {
                speed_pp_lm(backend.as_mut(), vocab, n, 1)?;
            }
        }
        if args.n_prompt > 0 {
            if let Some(r) = rival.as_deref_mut() {
                r.pp()?; // llama.cpp's warm-up (as llama-bench)
            }
            let (ours, theirs) = alternate(
                args.reps,
                || Ok(speed_pp_lm(backend.as_mut(), vocab, args.n_prompt, 1)?.0),
                rival.as_deref_mut().map(|r| move || r.pp()),
            )?;
            let test = format!("pp{}", args.n_prompt);
            push_result(&mut results, engine, test.clone(), &ours);
            push_result(&mut rival_results, "llama.cpp", test, &theirs);
        }
        if args.n_gen > 0 {
            if let Some(r) = rival.as_deref_mut() {
                r.tg()?;
            }
            let (ours, theirs) = alternate(
                args.reps,
                || Ok(speed_tg_lm(backend.as_mut(), vocab, args.n_gen, 1)?.0),
                rival.map(|r| move || r.tg()),
            )?;
            let test = format!("tg{}", args.n_gen);
            push_result(&mut results, engine, test.clone(), &ours);
            push_result(&mut rival_results, "llama.cpp", test, &theirs);
        }
    }
    if let Some(mmproj) = &args.mmproj {
        let tower = runtime::vision::load_vision_tower(mmproj)?;
        let mut encoder = compute.image_encoder(&tower)?;
        let s = tower.cfg.image_size;
        let pixels: Vec<f32> = (0..3 * s * s)
            .map(|i| ((i % 255) as f32 / 255.0 - 0.45) / 0.27)
            .collect();
        encoder.encode(&pixels)?; // warm-up
        let mut ips = Vec::new();
        for _ in 0..args.reps {
            let t = Instant::now();
            encoder.encode(&pixels)?;
            ips.push(1.0 / t.elapsed().as_secs_f64());
        }
        let test = if compute.is_cpu() {
            "image".into()
        } else {
            format!("image{s}")
        };
        push_result(&mut results, engine, test, &ips);
    }
    results.extend(rival_results);

    // decode roofline: every weight matrix except the embedding table is read once per token
    let weight_bytes: u64 = model
        .file
        .tensors()
        .iter()
        .filter(|t| t.name != "token_embd.weight")
        .map(|t| t.n_bytes)
        .sum();
    let (bw, bw_what) = match compute.peak_bandwidth_gbs() {
        Some(bw) => (bw, "GPU peak memory bandwidth"),
        None if compute.is_cpu() => (read_bandwidth_gb_s(), "memory read bandwidth"),
        // the emulator, or a driver that does not say
        None => (f64::NAN, "GPU memory bandwidth unknown"),
    };
    let roofline = bw * 1e9 / weight_bytes as f64;

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": args.model,
                "threads": threads,
                "device": device_desc,
                "bandwidth_gb_s": bw,
                "roofline_tg_tokens_per_s": roofline,
                "results": results,
            })
        );
    } else {
        let size = model.file.file_size() as f64 / (1u64 << 30) as f64;
        if compute.is_cpu() {
            println!(
                "model: {} ({size:.2} GiB), threads: {threads}, {device_desc}",
                args.model.display()
            );
        } else {
            println!(
                "model: {} ({size:.2} GiB), device: {device_desc}",
                args.model.display()
            );
        }
        println!("{bw_what}: {bw:.1} GB/s; decode roofline: {roofline:.2} t/s ({:.2} GB read per token)\n", weight_bytes as f64 / 1e9);
        println!("| engine | test | t/s |");
        println!("|---|---|---:|");
        for r in &results {
            println!(
                "| {} | {} | {:.2} ± {:.2} |",
                r.engine, r.test, r.tokens_per_s, r.stddev
            );
        }
        for test in results.iter().filter(|r| r.engine == engine) {
            if let Some(l) = results
                .iter()
                .find(|r| r.engine == "llama.cpp" && r.test == test.test)
            {
                println!(
                    "\n{}: tinygptv / llama.cpp = {:.2}×",
                    test.test,
                    test.tokens_per_s / l.tokens_per_s
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Appends the mean ± sd of `tps` as `engine`'s result of `test` (nothing if there are no
/// repetitions).
fn push_result(to: &mut Vec<BenchResult>, engine: &str, test: String, tps: &[f64]) {
    if !tps.is_empty() {
        let (m, sd) = mean_sd(tps);
        to.push(BenchResult {
            engine: engine.into(),
            test,
            tokens_per_s: m,
            stddev: sd,
        });
    }
}

/// The other engine of `--vs-llama-cpp`: one repetition of a test at a time.
trait Rival {
    fn pp(&mut self) -> Result<f64>;
    fn tg(&mut self) -> Result<f64>;
}

#[cfg(feature = "llama-cpp")]
impl Rival for crate::llama_cpp::BenchSession<'_> {
    fn pp(&mut self) -> Result<f64> {
        crate::llama_cpp::BenchSession::pp(self)
    }
    fn tg(&mut self) -> Result<f64> {
        crate::llama_cpp::BenchSession::tg(self)
    }
}

/// `reps` repetitions of a test on our engine and, if there is one, on the other engine,
/// alternating (ours, theirs, ours, …): a shared machine's speed can drift by 10–20 % within
/// minutes (the VM of `bench/REPORT.md`), and alternation spreads a slow spell over both
/// engines instead of over one engine's whole series. Tokens per second of each repetition,
/// ours and theirs.
fn alternate(
    reps: usize,
    mut ours: impl FnMut() -> Result<f64>,
    mut theirs: Option<impl FnMut() -> Result<f64>>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut a, mut b) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for _ in 0..reps {
        a.push(ours()?);
        if let Some(t) = theirs.as_mut() {
            b.push(t()?);
        }
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn repetitions_alternate_between_the_engines() {
        let log = RefCell::new(Vec::new());
        let ours = || {
            log.borrow_mut().push("ours");
            Ok(2.0)
        };
        let theirs = || {
            log.borrow_mut().push("theirs");
            Ok(1.0)
        };
        let (a, b) = alternate(3, ours, Some(theirs)).unwrap();
        assert_eq!((a, b), (vec![2.0; 3], vec![1.0; 3]));
        assert_eq!(
            *log.borrow(),
            ["ours", "theirs", "ours", "theirs", "ours", "theirs"]
        );

        log.borrow_mut().clear();
        let none: Option<fn() -> Result<f64>> = None;
        let (a, b) = alternate(2, ours, none).unwrap();
        assert_eq!((a.len(), b.len()), (2, 0));
        assert_eq!(*log.borrow(), ["ours", "ours"]);
    }

    #[test]
    fn a_failed_repetition_stops_the_series() {
        let mut calls = 0;
        let r = alternate(
            3,
            || {
                calls += 1;
                if calls == 2 {
                    bail!("broken")
                } else {
                    Ok(1.0)
                }
            },
            None::<fn() -> Result<f64>>,
        );
        assert!(r.is_err());
        assert_eq!(calls, 2);
    }
}
