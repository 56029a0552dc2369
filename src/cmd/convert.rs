//! `tinygptv convert` (checkpoints → GGUF), `tinygptv quantize` (GGUF → GGUF) and
//! `tinygptv repack` (GGUF → the same GGUF in the ×16 layouts).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use converter::phi2::{plan_language_model, read_stage_checkpoint, TinyGptvLm};
use converter::plan::{Plan, INTERRUPTED};
use converter::policy::Target;

use super::common::init_threads;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// HuggingFace Phi-2 directory (config.json, tokenizer files, safetensors or pytorch_model.bin).
    #[arg(long)]
    pub phi2: PathBuf,
    /// Output type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k or q4_k_m.
    #[arg(long = "type")]
    pub ty: Target,
    /// Output language-model GGUF.
    #[arg(long)]
    pub out: PathBuf,
    /// TinyGPT-V stage checkpoint (TinyGPT-V_for_StageN.pth); without it the output is stock phi2.
    #[arg(long)]
    pub tinygptv: Option<PathBuf>,
    /// EVA ViT-g checkpoint (eva_vit_g.pth), for the vision file.
    #[arg(long, requires_all = ["blip2", "mmproj_out", "tinygptv"])]
    pub eva: Option<PathBuf>,
    /// BLIP-2 checkpoint (blip2_pretrained_flant5xxl.pth), for the vision file.
    #[arg(long, requires = "eva")]
    pub blip2: Option<PathBuf>,
    /// TinyGPT-V stage (3: 224 px, MiniGPT-4 template; 4: 448 px, MiniGPT-v2 template)
    /// [default: from the checkpoint's config, else 3].
    #[arg(long, value_parser = clap::value_parser!(u32).range(3..=4))]
    pub stage: Option<u32>,
    /// Output vision (mmproj) GGUF.
    #[arg(long, requires = "eva")]
    pub mmproj_out: Option<PathBuf>,
    /// LoRA alpha (scaling = alpha / r) [default: from the checkpoint's config, else 16].
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// ViT blocks to keep [default: all in the EVA file but the last, as BLIP-2 does].
    #[arg(long)]
    pub vision_blocks: Option<usize>,
    /// Input image size of the vision file [default: 224-native for stage 3, 448 for stage 4].
    #[arg(long)]
    pub image_size: Option<usize>,
    /// ViT attention heads.
    #[arg(long, default_value_t = 16)]
    pub vision_heads: usize,
    /// Q-Former attention heads.
    #[arg(long, default_value_t = 12)]
    pub qformer_heads: usize,
    /// Quantize every matrix to TYPE (no higher-precision output.weight, no mixtures).
    #[arg(long)]
    pub pure: bool,
    /// Threads for quantization (default: physical cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// Input GGUF (F32, F16 or BF16).
    pub input: PathBuf,
    /// Output GGUF.
    pub output: PathBuf,
    /// Target type (as for convert).
    #[arg(value_name = "TYPE")]
    pub ty: Target,
    /// Quantize every matrix to TYPE.
    #[arg(long)]
    pub pure: bool,
    /// Threads (default: physical cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

#[derive(clap::Args)]
pub struct RepackArgs {
    /// Input language-model GGUF (Phi-2 or TinyGPT-V; Q4_0, Q8_0, Q4_K, Q5_K or Q6_K matrices).
    pub input: PathBuf,
    /// Output GGUF. Only tinygptv reads it: keep the input for llama.cpp and other tools.
    pub output: PathBuf,
    /// Threads (default: physical cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

/// The outputs of this command, for Ctrl-C and failure handling.
struct Outputs {
    /// Every output of the run: a forced exit removes their temporary files itself.
    planned: Vec<PathBuf>,
    /// Outputs this run has already finished (removed again when a later one fails).
    finished: Vec<PathBuf>,
}

static OUTPUTS: Mutex<Outputs> = Mutex::new(Outputs {
    planned: Vec::new(),
    finished: Vec::new(),
});

fn outputs() -> std::sync::MutexGuard<'static, Outputs> {
    OUTPUTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// First Ctrl-C: the GGUF writer stops before the next tensor (or row batch) and removes its
/// temporary file. A second one exits at once: `exit` runs no destructors, so the handler removes
/// the temporary files (and any output this run already finished) itself.
pub(crate) fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            let o = outputs();
            for out in &o.planned {
                remove_temp_files(out);
            }
            for out in &o.finished {
                let _ = std::fs::remove_file(out);
            }
            eprintln!("interrupted: no output written");
            std::process::exit(130);
        }
        if !quiet() {
            eprintln!(
                "\ninterrupted: stopping after the current tensor (Ctrl-C again to exit now)"
            );
        }
    });
}

/// Removes this process's temporary files for `out` (the GGUF writer names them
/// `.NAME.tmp.PID.N`, next to `out`).
fn remove_temp_files(out: &Path) {
    let Some(name) = out.file_name() else { return };
    let prefix = format!(".{}.tmp.{}.", name.to_string_lossy(), std::process::id());
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes each plan to its output, in order, as one unit: when a write fails or Ctrl-C stops
/// it, the outputs already finished are removed again, so no partial set of files is left.
/// An interruption prints one line and gives exit status 130.
pub(crate) fn write_outputs(jobs: &[(&Plan, &Path)]) -> Result<ExitCode> {
    {
        let mut o = outputs();
        o.planned = jobs.iter().map(|(_, p)| p.to_path_buf()).collect();
        o.finished.clear();
    }
    for (plan, out) in jobs {
        match plan.write(out, false) {
            Ok(_) => outputs().finished.push(out.to_path_buf()),
            Err(e) => {
                let finished = std::mem::take(&mut outputs().finished);
                for p in &finished {
                    let _ = std::fs::remove_file(p);
                }
                if INTERRUPTED.load(Ordering::SeqCst) {
                    eprintln!(
                        "interrupted: stopped before {} was finished; no output written",
                        out.display()
                    );
                    return Ok(ExitCode::from(130));
                }
                if finished.is_empty() {
                    return Err(e);
                }
                let names: Vec<String> = finished.iter().map(|p| p.display().to_string()).collect();
                return Err(anyhow!(
                    "{e:#} (removed the finished {} as well)",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn quiet() -> bool {
    use std::io::IsTerminal;
    !std::io::stderr().is_terminal()
}

pub fn run_convert(args: ConvertArgs) -> Result<ExitCode> {
    init_threads(args.threads);
    install_interrupt_handler();
    let dir = converter::HfModelDir::open(&args.phi2)?;

    let stage_ck = match &args.tinygptv {
        Some(p) => {
            Some(read_stage_checkpoint(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let stage = args
        .stage
        .or(stage_ck.as_ref().and_then(|s| s.stage))
        .unwrap_or(3);
    let lm_extra = stage_ck.as_ref().map(|s| {
        Arc::new(TinyGptvLm {
            sd: s.sd.clone(),
            prefix: s.prefix.clone(),
            lora_alpha: args.lora_alpha.or(s.lora_alpha).unwrap_or(16.0),
            stage,
        })
    });
    let plan = plan_language_model(&dir, args.ty, args.pure, lm_extra)?;
    // Plan the vision file before writing anything, so that its errors come first.
    let vision = match (&args.eva, &args.blip2, &args.mmproj_out, &stage_ck) {
        (Some(eva), Some(blip2), Some(out), Some(ck)) => {
            let opts = converter::vision::VisionOptions {
                stage,
                image_size: args
                    .image_size
                    .or(if stage == 4 { ck.image_size } else { None }),
                vision_blocks: args.vision_blocks,
                vision_heads: args.vision_heads,
                qformer_heads: args.qformer_heads,
                target: args.ty,
                pure: args.pure,
            };
            Some((
                converter::vision::plan_vision(eva, blip2, &ck.sd, &opts)?,
                out,
            ))
        }
        _ if args.eva.is_some() => bail!("--eva needs --blip2, --tinygptv and --mmproj-out"),
        _ => None,
    };
    if !quiet() {
        eprintln!(
            "converting {} → {} ({})",
            args.phi2.display(),
            args.out.display(),
            args.ty.name()
        );
    }
    let mut jobs = vec![(&plan, args.out.as_path())];
    if let Some((vision_plan, out)) = &vision {
        jobs.push((vision_plan, out.as_path()));
    }
    write_outputs(&jobs)
}

pub fn run_quantize(args: QuantizeArgs) -> Result<ExitCode> {
    init_threads(args.threads);
    install_interrupt_handler();
    let plan = converter::requantize::plan_requantize(&args.input, args.ty, args.pure)?;
    write_outputs(&[(&plan, args.output.as_path())])
}

pub fn run_repack(args: RepackArgs) -> Result<ExitCode> {
    init_threads(args.threads);
    install_interrupt_handler();
    let same = match (args.input.canonicalize(), args.output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        bail!(
            "{}: the output would replace the input it is read from; choose another name",
            args.output.display()
        );
    }
    {
        let mut o = outputs();
        o.planned = vec![args.output.clone()];
        o.finished.clear();
    }
    if !quiet() {
        eprintln!(
            "repacking {} → {} (×16 layouts)",
            args.input.display(),
            args.output.display()
        );
    }
    match converter::interleave::interleave_gguf(&args.input, &args.output, false) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("interrupted: no output written");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}
