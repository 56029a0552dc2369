//! `tinygptv`: command-line front end.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
#[cfg(feature = "llama-cpp")]
mod llama_cpp;

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
    /// Generate text with a language model.
    Run(cmd::run::RunArgs),
    /// Print the token ids of a text.
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Write the logits at every position of an input to a .npy file.
    Logits(cmd::logits::LogitsArgs),
    /// Encode an image into visual tokens with a vision (mmproj) GGUF.
    EmbedImage(cmd::embed_image::EmbedImageArgs),
    /// Interactive chat (with an image when a vision model is given).
    Chat(cmd::chat::ChatArgs),
    /// Convert Phi-2 / TinyGPT-V checkpoints to GGUF.
    Convert(cmd::convert::ConvertArgs),
    /// Re-quantize an F32/F16/BF16 GGUF.
    Quantize(cmd::convert::QuantizeArgs),
    /// Store a language model's matrices in the ×16 row-interleaved layouts, read in place
    /// from the memory map: faster decode without load-time repacking (only tinygptv reads the
    /// result).
    Repack(cmd::convert::RepackArgs),
    /// Write random-weight models at the real shapes (for benchmarks).
    Synth(cmd::synth::SynthArgs),
    /// Measure prompt processing, generation and image-encode speed (optionally vs llama.cpp).
    Bench(cmd::bench::BenchArgs),
    /// Quantization accuracy (PPL, KL divergence, top-1 agreement, visual-token error) against a base file.
    Compare(cmd::compare::CompareArgs),
}

/// Sets up the threads, then runs `f`. The forward passes' parallel loops go to the worker
/// pool (`runtime::pool`), which the calling thread joins, so `f` runs right here: on a rayon
/// worker every loop would fall back to rayon. Without pool workers (one thread, or more
/// threads than CPUs) the loops run on rayon, and `f` runs on one of its workers: a caller
/// outside rayon sleeps through each fork-join and is woken at its end (measured: about 9 % of
/// decode time with 2 threads), while a worker runs its share and waits by stealing.
fn with_threads<R: Send>(threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
    cmd::common::init_threads(threads);
    if runtime::pool::has_workers() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// glibc returns every freed block above its mmap threshold (at most 32 MiB) to the kernel,
/// and the kernel hands back zeroed pages on the next allocation: a 512-token forward allocates
/// tens of MiB of activations per layer, and zeroing them took ~10 % of prompt time. Keeping
/// freed memory in the heap makes those allocations reuse warm pages.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 30);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => cmd::info::run(args),
        Command::Run(args) => with_threads(args.threads, || cmd::run::run(args)),
        Command::Tokenize(args) => cmd::tokenize::run(args),
        Command::Logits(args) => with_threads(args.threads, || cmd::logits::run(args)),
        Command::EmbedImage(args) => with_threads(args.threads, || cmd::embed_image::run(args)),
        Command::Chat(args) => with_threads(args.threads, || cmd::chat::run(args)),
        Command::Convert(args) => cmd::convert::run_convert(args),
        Command::Quantize(args) => cmd::convert::run_quantize(args),
        Command::Repack(args) => cmd::convert::run_repack(args),
        Command::Synth(args) => cmd::synth::run(args),
        Command::Bench(args) => with_threads(args.threads, || cmd::bench::run(args)),
        Command::Compare(args) => with_threads(args.threads, || cmd::compare::run(args)),
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

#[cfg(test)]
mod tests {
    #[test]
    fn commands_run_off_rayon_when_the_pool_has_workers() {
        // a command on a rayon worker would send every parallel loop of the forward passes
        // to rayon instead of the pool (the pool declines calls from rayon tasks)
        let off_rayon = super::with_threads(Some(2), || rayon::current_thread_index().is_none());
        assert_eq!(off_rayon, runtime::pool::has_workers());
    }
}
