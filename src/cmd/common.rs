//! Argument helpers shared by the subcommands.

use anyhow::{bail, Context, Result};
use runtime::backend::{Compute, DeviceChoice};
use runtime::llm::StoredDefaults;
use runtime::prompt::Template;
use runtime::sampling::SamplingParams;

/// `--prompt @file.txt` reads the prompt from a file; anything else is the prompt itself.
pub fn read_prompt(arg: &str) -> Result<String> {
    match arg.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading prompt file {path}"))
        }
        None => Ok(arg.to_string()),
    }
}

/// Sets up the global rayon pool with `threads` workers (default: physical cores).
pub fn init_threads(threads: Option<usize>) -> usize {
    let n = threads
        .filter(|&n| n > 0)
        .unwrap_or_else(num_cpus::get_physical)
        .max(1);
    // Only the first call in a process takes effect; later ones keep the existing pool.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    rayon::current_num_threads()
}

/// Parses `1,2,3` into token ids.
pub fn parse_token_list(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("'{t}' is not a token id"))
        })
        .collect()
}

/// Sampling and length flags shared by `run` and `chat`. Each falls back to the value the
/// converter stored in the model file, then to the prompt template's default
/// ([`super::run::template_defaults`]).
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Maximum number of new tokens (per answer in `chat`) [default: from the model file, else
    /// the template's: 128 for raw prompts].
    #[arg(short = 'n', long = "n-predict")]
    pub n_predict: Option<usize>,
    /// Sampling temperature; 0 = greedy [default: from the model file, else 0.8].
    #[arg(long)]
    pub temp: Option<f32>,
    /// Top-k; 0 = off [default: from the model file, else 40].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Top-p (nucleus); 1.0 = off [default: from the model file, else 0.95].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Min-p; 0 = off [default: 0.05].
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Repetition penalty (HF semantics); 1.0 = off [default: from the model file, else 1.0].
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// Random seed [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The sampling parameters and the maximum of new tokens: each flag, else the model
    /// file's value, else `template`'s default.
    pub fn resolve(&self, stored: &StoredDefaults, template: Template) -> (SamplingParams, usize) {
        let (temp, top_k, top_p, min_p, rep, max_new) = super::run::template_defaults(template);
        let sampling = SamplingParams {
            temperature: self.temp.or(stored.temperature).unwrap_or(temp),
            top_k: self
                .top_k
                .or(stored.top_k.map(|v| v as usize))
                .unwrap_or(top_k),
            top_p: self.top_p.or(stored.top_p).unwrap_or(top_p),
            min_p: self.min_p.unwrap_or(min_p),
            repeat_penalty: self.repeat_penalty.or(stored.repeat_penalty).unwrap_or(rep),
            seed: self.seed.unwrap_or_else(super::run::clock_seed),
        };
        let max_new = self
            .n_predict
            .or(stored.max_new_tokens.map(|v| v as usize))
            .unwrap_or(max_new);
        (sampling, max_new)
    }
}

/// `--device` and `--gpu-layers` (`run`, `chat`, `logits`, `bench`).
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Where the models run: cpu, cuda (GPU 0) or cuda:N (builds with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// With --device cuda: language-model layers on the GPU, the rest and the LM head on the
    /// CPU (partial offload for small GPUs; 0 = all on the CPU) [default: all].
    #[arg(long)]
    pub gpu_layers: Option<usize>,
}

impl DeviceArgs {
    /// Opens the device: one-line errors for `cuda` without CUDA support, driver or device.
    pub fn open(&self) -> Result<Compute> {
        let compute = Compute::open(self.device)?;
        if compute.is_cpu() && self.gpu_layers.is_some_and(|n| n > 0) {
            bail!("--gpu-layers needs --device cuda");
        }
        if !compute.is_cpu() {
            // the device uploads its weights from the file map; CPU repacks would go unused
            runtime::linear::set_repack_policy(runtime::linear::RepackPolicy::Off);
        }
        Ok(compute)
    }
}
