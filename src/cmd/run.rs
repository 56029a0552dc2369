//! `tinygptv run --model LLM.gguf --prompt TEXT [sampling flags] [--json]`

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use runtime::backend::Compute;
use runtime::generate::{generate_with, GenerateOptions};
use runtime::kv_cache::CacheType;
use runtime::prompt::Template;

use super::common::{init_threads, read_prompt, DeviceArgs, SamplingArgs};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Language-model GGUF (phi2 or tinygptv).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Prompt text (`@file.txt` reads it from a file). No BOS is added.
    #[arg(long, short = 'p')]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Stop when the text contains STR (repeatable); the output is cut before it.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Threads (default: physical cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Context size in tokens [default: the model's context length].
    #[arg(long, short = 'c')]
    pub ctx: Option<usize>,
    /// KV cache element type.
    #[arg(long, default_value = "f16")]
    pub cache_type: CacheType,
    /// Drop the start of a prompt that does not fit the context instead of failing.
    #[arg(long)]
    pub truncate: bool,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub vision: VisionArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Image options shared by `run` and `logits`.
#[derive(clap::Args, Clone)]
pub struct VisionArgs {
    /// Vision (mmproj) GGUF; needed with --image.
    #[arg(long, requires = "image")]
    pub mmproj: Option<PathBuf>,
    /// Image to ask about.
    #[arg(long, requires = "mmproj")]
    pub image: Option<PathBuf>,
    /// Prompt template: auto (the one stored in the model), stage3, stage4 or raw.
    #[arg(long, default_value = "auto")]
    pub template: String,
    /// Stage-4 task tag put before the question: vqa, caption, refer, grounding, detection, identify.
    #[arg(long)]
    pub task: Option<String>,
    /// Write the image with the answer's boxes drawn on it (grounding answers).
    #[arg(long)]
    pub draw_boxes: Option<PathBuf>,
    /// Refuse images with more decoded pixels than this.
    #[arg(long, default_value_t = runtime::image::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

/// Resolves `--template`: `auto` means the template stored in the model when an image is given
/// (stage3 if none is stored), and the raw prompt for text-only input.
pub fn resolve_template(arg: &str, stored: Option<&str>, has_image: bool) -> Result<Template> {
    if arg == "auto" {
        if !has_image {
            return Ok(Template::Raw);
        }
        return Ok(match stored {
            Some(s) => s.parse().map_err(anyhow::Error::msg)?,
            None => Template::Stage3,
        });
    }
    arg.parse().map_err(anyhow::Error::msg)
}

/// Generation defaults of the Python demos (spec §11) for a template, used when neither a flag
/// nor the model file says otherwise: (temperature, top_k, top_p, min_p, repeat_penalty, max_new).
pub fn template_defaults(t: Template) -> (f32, usize, f32, f32, f32, usize) {
    match t {
        Template::Stage3 => (1.0, 50, 0.9, 0.0, 1.05, 300),
        Template::Stage4 => (0.6, 50, 0.9, 0.0, 1.05, 500),
        Template::Raw => (0.8, 40, 0.95, 0.05, 1.0, 128),
    }
}

/// Default seed: from the clock.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The rendered prompt and the visual tokens for `run`/`logits`.
pub struct PreparedInput {
    pub template: Template,
    pub prompt: String,
    pub visual: Vec<f32>,
    pub image_size: Option<(usize, usize)>,
    pub image: Option<runtime::image::RgbImage>,
    pub encode_ms: f64,
}

/// The image (if any) is encoded on `compute`.
pub fn prepare_input(
    vision: &VisionArgs,
    question: &str,
    stored_template: Option<&str>,
    quiet: bool,
    compute: &Compute,
) -> Result<PreparedInput> {
    let template = resolve_template(&vision.template, stored_template, vision.image.is_some())?;
    let question = match &vision.task {
        Some(task) => format!("{}{question}", runtime::prompt::task_tag(task)?),
        None => question.to_string(),
    };
    let (Some(mmproj), Some(image)) = (&vision.mmproj, &vision.image) else {
        let prompt = runtime::prompt::render_single(template, &question, false);
        return Ok(PreparedInput {
            template,
            prompt,
            visual: Vec::new(),
            image_size: None,
            image: None,
            encode_ms: 0.0,
        });
    };
    if !quiet {
        eprintln!("loading vision model {}", mmproj.display());
    }
    let tower = runtime::vision::load_vision_tower(mmproj)?;
    let mut encoder = compute.image_encoder(&tower)?;
    let t0 = Instant::now();
    if !quiet {
        eprintln!("encoding image {}", image.display());
    }
    let (img, _, visual) = encoder.embed_image_file(image, vision.max_pixels)?;
    let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut prompt = runtime::prompt::render_single(template, &question, true);
    if template == Template::Raw && !prompt.contains(runtime::prompt::IMAGE_PLACEHOLDER) {
        // a raw prompt without a placeholder gets the image first
        prompt = format!("{}{prompt}", runtime::prompt::IMAGE_PLACEHOLDER);
    }
    Ok(PreparedInput {
        template,
        prompt,
        visual,
        image_size: Some((img.width, img.height)),
        image: Some(img),
        encode_ms,
    })
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let threads = init_threads(args.threads);
    let compute = args.device.open()?;
    let t_load = Instant::now();
    let lm = runtime::llm::load_language_model(&args.model)?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let d = &lm.defaults;

    let question = read_prompt(&args.prompt)?;
    let input = prepare_input(
        &args.vision,
        &question,
        d.prompt_template.as_deref(),
        args.json,
        &compute,
    )?;
    let (sampling, max_new) = args.sampling.resolve(d, input.template);
    let n_ctx = args.ctx.unwrap_or(lm.model.cfg.n_ctx_train).max(1);

    let mut spliced =
        runtime::pipeline::splice(&lm.model, &lm.tokenizer, &input.prompt, &input.visual)?;
    let e = lm.model.cfg.n_embd;
    if spliced.n_positions >= n_ctx {
        if !args.truncate {
            bail!(
                "the prompt has {} positions but the context holds {n_ctx} (use --ctx, or --truncate to drop its start)",
                spliced.n_positions
            );
        }
        // left-truncate the embeddings, as the Python demo does
        let keep = n_ctx.saturating_sub(max_new).clamp(1, n_ctx - 1);
        let drop = spliced.n_positions - keep;
        spliced.embeddings.drain(..drop * e);
        spliced.n_positions = keep;
    }

    let mut stop_ids: Vec<u32> = lm.tokenizer.eos().into_iter().collect();
    let mut stop_strings = args.stop.clone();
    let mut stored_stops = d.stop.clone();
    if input.template != Template::Raw && !stored_stops.iter().any(|s| s == "###") {
        stored_stops.push("###".to_string());
    }
    for s in &stored_stops {
        if !stop_strings.contains(s) {
            stop_strings.push(s.clone());
        }
    }
    for s in &stop_strings {
        // a stop string that is a single token also stops by id
        if let Some(id) = lm.tokenizer.find_token(s) {
            stop_ids.push(id);
        }
    }
    let opts = GenerateOptions {
        max_new_tokens: max_new,
        sampling,
        stop_ids,
        stop_strings,
    };

    // Repetition-penalty set: the prompt ids for text; for image prompts HF sees only the
    // placeholder BOS id plus the generated ids (spec §11).
    let penalty_ids: Vec<u32> = if input.visual.is_empty() {
        spliced.pieces.concat()
    } else {
        lm.tokenizer
            .bos()
            .or(lm.tokenizer.eos())
            .into_iter()
            .collect()
    };

    let t_upload = Instant::now();
    let mut backend =
        compute.language_model(&lm.model, args.cache_type, n_ctx, args.device.gpu_layers)?;
    if !compute.is_cpu() && !args.json {
        eprintln!(
            "language model on {} (uploaded in {:.0} ms)",
            backend.describe(),
            t_upload.elapsed().as_secs_f64() * 1e3
        );
    }
    let stdout = std::io::stdout();
    let json = args.json;
    let mut on_text = |s: &str| {
        if !json {
            let mut out = stdout.lock();
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        }
    };
    let g = generate_with(
        backend.as_mut(),
        &lm.tokenizer,
        spliced.embeddings,
        &penalty_ids,
        &opts,
        &mut on_text,
    )?;
    let t = &g.timings;
    let boxes = match input.image_size {
        Some((w, h)) => runtime::boxes::parse_boxes(&g.text, w, h),
        None => Vec::new(),
    };
    if let (Some(path), Some(img)) = (&args.vision.draw_boxes, &input.image) {
        runtime::draw::draw_boxes(img, &boxes, path)?;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "text": g.text,
                "tokens": g.tokens,
                "boxes": boxes,
                "stop_reason": g.stop_reason,
                "timings": {
                    "load_ms": load_ms,
                    "image_encode_ms": input.encode_ms,
                    "prompt_tokens": t.prompt_tokens,
                    "prompt_ms": t.prompt_ms,
                    "prompt_tokens_per_s": t.prompt_tokens_per_s,
                    "generated_tokens": t.generated_tokens,
                    "generation_ms": t.generation_ms,
                    "generation_tokens_per_s": t.generation_tokens_per_s,
                    "threads": threads,
                    "device": backend.describe(),
                }
            })
        );
    } else {
        println!();
    }
    let image_part = if input.visual.is_empty() {
        String::new()
    } else {
        format!("image encode {:.0} ms | ", input.encode_ms)
    };
    eprintln!(
        "load {:.0} ms | {image_part}prompt {} tokens, {:.1} t/s | generated {} tokens, {:.1} t/s | {} threads",
        load_ms, t.prompt_tokens, t.prompt_tokens_per_s, t.generated_tokens, t.generation_tokens_per_s, threads
    );
    Ok(ExitCode::SUCCESS)
}
