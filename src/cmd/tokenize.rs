//! `tinygptv tokenize --model LLM.gguf --prompt TEXT [--json]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use kernels::gguf::GgufFile;

use super::common::read_prompt;

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// Language-model GGUF whose tokenizer to use.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Text to tokenize (`@file.txt` reads it from a file). No BOS is added.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Print ids and pieces as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: TokenizeArgs) -> Result<ExitCode> {
    let prompt = read_prompt(&args.prompt)?;
    let file = GgufFile::open(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let tok = runtime::llm::tokenizer_from_gguf(&file)?;
    let ids = tok.encode(&prompt, true);
    if args.json {
        let pieces: Vec<String> = ids
            .iter()
            .map(|&id| String::from_utf8_lossy(tok.token_bytes(id)).into_owned())
            .collect();
        println!("{}", serde_json::json!({ "ids": ids, "pieces": pieces }));
    } else {
        println!(
            "{}",
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}
