//! `tinygptv logits --model LLM.gguf (--prompt TEXT | --tokens 1,2,3) --out FILE.npy`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use runtime::kv_cache::CacheType;

use super::common::{init_threads, parse_token_list, read_prompt, DeviceArgs};

#[derive(clap::Args)]
pub struct LogitsArgs {
    /// Language-model GGUF.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Text input (`@file.txt` reads a file); no BOS is added.
    #[arg(long, short = 'p', conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// Token ids, comma separated.
    #[arg(long)]
    pub tokens: Option<String>,
    /// Output `.npy`: float32 [positions, vocab], the logits at every input position.
    #[arg(long)]
    pub out: PathBuf,
    /// Threads (default: physical cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// KV cache element type.
    #[arg(long, default_value = "f16")]
    pub cache_type: CacheType,
    #[command(flatten)]
    pub vision: super::run::VisionArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: LogitsArgs) -> Result<ExitCode> {
    init_threads(args.threads);
    let compute = args.device.open()?;
    let lm = runtime::llm::load_language_model(&args.model)?;
    let x = match (&args.prompt, &args.tokens) {
        (Some(p), None) => {
            let input = super::run::prepare_input(
                &args.vision,
                &read_prompt(p)?,
                lm.defaults.prompt_template.as_deref(),
                false,
                &compute,
            )?;
            runtime::pipeline::splice(&lm.model, &lm.tokenizer, &input.prompt, &input.visual)?
                .embeddings
        }
        (None, Some(t)) => {
            if args.vision.image.is_some() {
                bail!("--image needs --prompt (the image is spliced into the rendered prompt)");
            }
            let ids = parse_token_list(t)?;
            if ids.is_empty() {
                bail!("the input has no tokens");
            }
            lm.model.embed_tokens(&ids)?
        }
        _ => bail!("give exactly one of --prompt or --tokens"),
    };
    let n = x.len() / lm.model.cfg.n_embd;
    let mut backend =
        compute.language_model(&lm.model, args.cache_type, n, args.device.gpu_layers)?;
    let logits = backend.forward(x, true)?;
    runtime::npy::write_f32(&args.out, &logits, &[n, lm.model.cfg.n_vocab])?;
    let device = if compute.is_cpu() {
        String::new()
    } else {
        format!(" ({})", backend.describe())
    };
    eprintln!(
        "wrote logits [{n}, {}] to {}{device}",
        lm.model.cfg.n_vocab,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
