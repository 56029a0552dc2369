//! Argument helpers shared by the subcommands.

use anyhow::{bail, Context, Result};
use runtime::backend::{Compute, DeviceChoice};

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
