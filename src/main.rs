//! `tinygptv`: command-line front end.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "tinygptv",
    version,
    about = "Run TinyGPT-V (Phi-2 + EVA ViT-g + Q-Former) from GGUF files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a GGUF file's header, metadata and tensor table, and validate it.
    Info(cmd::info::InfoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => cmd::info::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, no backtrace: `{:#}` joins the context chain with ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
