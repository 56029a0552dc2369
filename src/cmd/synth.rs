//! `tinygptv synth --arch phi2|tinygptv-stage3|tinygptv-stage4 --type TYPE --out FILE.gguf [--mmproj-out VISION.gguf]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use converter::policy::Target;
use converter::synth::{plan_synth_lm, plan_synth_vision, SynthArch};

use super::common::init_threads;
use super::convert::{install_interrupt_handler, write_outputs};

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Which model: phi2 (loads in llama.cpp), tinygptv-stage3 or tinygptv-stage4.
    #[arg(long)]
    pub arch: SynthArch,
    /// Weight type (as for convert).
    #[arg(long = "type")]
    pub ty: Target,
    /// Output language-model GGUF.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the vision tower (tinygptv archs only).
    #[arg(long)]
    pub mmproj_out: Option<PathBuf>,
    /// Quantize every matrix to TYPE (like llama-quantize --pure).
    #[arg(long)]
    pub pure: bool,
    /// Threads (default: physical cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

pub fn run(args: SynthArgs) -> Result<ExitCode> {
    init_threads(args.threads);
    // Ctrl-C and errors as for convert: no temporary or partial set of files is left behind.
    install_interrupt_handler();
    let lm = plan_synth_lm(args.arch, args.ty, args.pure)?;
    let vision = match &args.mmproj_out {
        Some(out) => Some((plan_synth_vision(args.arch, args.ty, args.pure)?, out)),
        None => None,
    };
    let mut jobs = vec![(&lm, args.out.as_path())];
    if let Some((plan, out)) = &vision {
        jobs.push((plan, out.as_path()));
    }
    write_outputs(&jobs)
}
