//! `tinygptv chat --model LLM.gguf [--mmproj VISION.gguf] [--image IMG]`: interactive chat with
//! streaming output, line editing and history. The image is encoded once per image; the KV cache
//! keeps the conversation so each turn only processes its new text.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use runtime::backend::ImageEncoder;
use runtime::generate::{generate_with, GenerateOptions};
use runtime::kv_cache::CacheType;
use runtime::prompt::{Conversation, Template};

use super::common::{init_threads, DeviceArgs, SamplingArgs};

#[derive(clap::Args)]
pub struct ChatArgs {
    /// Language-model GGUF.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Vision (mmproj) GGUF, needed to talk about images.
    #[arg(long)]
    pub mmproj: Option<PathBuf>,
    /// Image to start the conversation with (also `/image PATH` in the chat).
    #[arg(long, requires = "mmproj")]
    pub image: Option<PathBuf>,
    /// Prompt template: auto, stage3, stage4 or raw.
    #[arg(long, default_value = "auto")]
    pub template: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Threads (default: physical cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Context size in tokens [default: the model's context length].
    #[arg(long, short = 'c')]
    pub ctx: Option<usize>,
    /// KV cache element type.
    #[arg(long, default_value = "f16")]
    pub cache_type: CacheType,
    #[command(flatten)]
    pub device: DeviceArgs,
}

const HELP: &str = "commands: /image PATH  attach or change the image (starts a new conversation)\n          /reset       start a new conversation\n          /help        this text\n          Ctrl-D       quit";

struct ChatState {
    conv: Conversation,
    /// Rendered prompt text that the KV cache holds (up to the open assistant turn).
    cached_prompt: String,
    visual: Vec<f32>,
    pending_image: bool,
}

fn encode_image(encoder: &mut dyn ImageEncoder, path: &Path) -> Result<Vec<f32>> {
    let t0 = Instant::now();
    let (_, _, tokens) = encoder.embed_image_file(path, runtime::image::DEFAULT_MAX_PIXELS)?;
    eprintln!(
        "[image {} encoded in {:.0} ms]",
        path.display(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    Ok(tokens)
}

pub fn run(args: ChatArgs) -> Result<ExitCode> {
    init_threads(args.threads);
    let compute = args.device.open()?;
    eprintln!("loading {}", args.model.display());
    let lm = runtime::llm::load_language_model(&args.model)?;
    let tower = match &args.mmproj {
        Some(p) => {
            eprintln!("loading {}", p.display());
            Some(runtime::vision::load_vision_tower(p)?)
        }
        None => None,
    };
    let mut encoder = match &tower {
        Some(t) => Some(compute.image_encoder(t)?),
        None => None,
    };
    let d = &lm.defaults;
    let template = if args.template == "auto" {
        match (&d.prompt_template, &tower) {
            (Some(t), _) => t.parse().map_err(anyhow::Error::msg)?,
            (None, Some(_)) => Template::Stage3,
            (None, None) => Template::Raw,
        }
    } else {
        args.template.parse().map_err(anyhow::Error::msg)?
    };
    let (sampling, max_new) = args.sampling.resolve(d, template);
    let mut stop_strings = d.stop.clone();
    if template != Template::Raw && !stop_strings.iter().any(|s| s == "###") {
        stop_strings.push("###".into());
    }
    let mut stop_ids: Vec<u32> = lm.tokenizer.eos().into_iter().collect();
    stop_ids.extend(
        stop_strings
            .iter()
            .filter_map(|s| lm.tokenizer.find_token(s)),
    );
    let mut opts = GenerateOptions {
        max_new_tokens: max_new,
        sampling,
        stop_ids,
        stop_strings,
    };
    let n_ctx = args.ctx.unwrap_or(lm.model.cfg.n_ctx_train);
    let mut backend =
        compute.language_model(&lm.model, args.cache_type, n_ctx, args.device.gpu_layers)?;
    if !compute.is_cpu() {
        eprintln!("language model on {}", backend.describe());
    }

    let mut state = ChatState {
        conv: Conversation::new(template),
        cached_prompt: String::new(),
        visual: Vec::new(),
        pending_image: false,
    };
    if let (Some(enc), Some(img)) = (&mut encoder, &args.image) {
        state.visual = encode_image(enc.as_mut(), img)?;
        state.pending_image = true;
    }

    let mut rl = match rustyline::DefaultEditor::new() {
        Ok(rl) => rl,
        Err(e) => bail!("cannot start the line editor: {e}"),
    };
    eprintln!("template {} | {HELP}", template.name());
    loop {
        let line = match rl.readline("> ") {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => bail!("reading input: {e}"),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = rl.add_history_entry(line);
        if let Some(rest) = line.strip_prefix('/') {
            let (cmd, arg) = rest
                .split_once(' ')
                .map_or((rest, ""), |(c, a)| (c, a.trim()));
            match cmd {
                "help" => eprintln!("{HELP}"),
                "reset" => {
                    state.conv = Conversation::new(template);
                    state.cached_prompt.clear();
                    state.pending_image = !state.visual.is_empty();
                    backend.clear();
                    eprintln!("[new conversation]");
                }
                "image" => match &mut encoder {
                    None => eprintln!("[no vision model: start chat with --mmproj VISION.gguf]"),
                    Some(enc) => match encode_image(enc.as_mut(), Path::new(arg)) {
                        Ok(v) => {
                            state.visual = v;
                            state.pending_image = true;
                            state.conv = Conversation::new(template);
                            state.cached_prompt.clear();
                            backend.clear();
                        }
                        Err(e) => eprintln!("[error: {e:#}]"),
                    },
                },
                _ => eprintln!("[unknown command /{cmd}; /help lists them]"),
            }
            continue;
        }

        // Render the conversation with the new question; the cache already holds the prefix.
        let with_image = state.pending_image && template != Template::Raw;
        state.conv.push_user(line, with_image);
        let mut rendered = state.conv.render();
        if state.pending_image && template == Template::Raw {
            rendered = format!("{}{rendered}", runtime::prompt::IMAGE_PLACEHOLDER);
        }
        let new_text = match rendered.strip_prefix(state.cached_prompt.as_str()) {
            Some(s) if !backend.is_empty() => s.to_string(),
            _ => {
                backend.clear();
                rendered.clone()
            }
        };
        let visual: &[f32] = if new_text.contains(runtime::prompt::IMAGE_PLACEHOLDER) {
            &state.visual
        } else {
            &[]
        };
        let spliced = runtime::pipeline::splice(&lm.model, &lm.tokenizer, &new_text, visual)?;
        if backend.len() + spliced.n_positions + 1 >= backend.n_ctx() {
            eprintln!(
                "[the conversation no longer fits the context ({} tokens); use /reset]",
                backend.n_ctx()
            );
            state.conv.turns.pop();
            continue;
        }
        opts.sampling.seed = opts.sampling.seed.wrapping_add(1);
        let prompt_len = backend.len() + spliced.n_positions;
        let penalty: Vec<u32> = lm.tokenizer.bos().into_iter().collect();
        let stdout = std::io::stdout();
        let mut on_text = |s: &str| {
            let mut o = stdout.lock();
            let _ = o.write_all(s.as_bytes());
            let _ = o.flush();
        };
        let g = generate_with(
            backend.as_mut(),
            &lm.tokenizer,
            spliced.embeddings,
            &penalty,
            &opts,
            &mut on_text,
        )?;
        println!();
        let t = &g.timings;
        eprintln!(
            "[prompt {} tokens, {:.1} t/s | {} tokens, {:.1} t/s]",
            t.prompt_tokens, t.prompt_tokens_per_s, t.generated_tokens, t.generation_tokens_per_s
        );
        // Keep only the prompt in the cache; the answer is re-read as part of the next turn's
        // text so the cache always matches the rendered conversation.
        backend.truncate(prompt_len);
        state.cached_prompt = rendered;
        state.conv.set_answer(g.text.trim());
        state.pending_image = false;
    }
    Ok(ExitCode::SUCCESS)
}
