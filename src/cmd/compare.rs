//! `tinygptv compare`: quantization accuracy of language models and vision towers, one table.
//!
//! ```text
//! # language model: llama-perplexity-style PPL / KLD / top-1 agreement against a base file
//! tinygptv compare --base F16.gguf --model Q4_0.gguf [--model …] --text FILE [--ctx 512] [--chunks N]
//!                  [--save-base BASE.kld | --base-logits BASE.kld]
//! # vision tower: visual-token cosine / relative L2 (and the LM's answer KLD with --model --prompt)
//! tinygptv compare --mmproj-base F16.gguf --mmproj Q4_0.gguf [--mmproj …] --images DIR [--model LLM.gguf --prompt Q]
//! # sweep: quantize to temporary files, measure accuracy, size and speed, plot
//! tinygptv compare --base F16.gguf --quants q8_0,q6_k,q5_k,q4_k_m,q4_0 --text FILE
//!                  [--mmproj-base F16.gguf --images DIR] [--plot OUT.svg]
//! ```
//! Output: a markdown table, `--json` (`{"rows": [...]}`; the row field names are a contract)
//! or `--csv`. Ctrl-C stops after the current step and prints what was measured (exit 130);
//! the language-model table then covers the same chunks for every model.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use converter::plan::INTERRUPTED;
use converter::policy::Target;
use kernels::gguf::GgufFile;
use runtime::compare::eval::{
    embedding_logits, greedy_tokens, n_chunks, score_chunk, score_rows, sequence_logits, BaseRows,
};
use runtime::compare::kld_file::{KldReader, KldWriter};
use runtime::compare::stats::{KldStats, KldSummary, TokenScore};
use runtime::compare::visual::{visual_diff, VisualStats, VisualSummary};
use runtime::kv_cache::CacheType;
use runtime::llm::LanguageModel;
use runtime::model::vision::VisionTower;
use serde::Serialize;

use super::common::{init_threads, read_prompt};

mod plot;

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Base language model (F32/F16/BF16 GGUF): the reference distribution, and the file
    /// that --quants quantizes.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Quantized language model to compare with the base (repeatable). In vision mode: the
    /// language model that scores the answer positions.
    #[arg(long, short = 'm')]
    pub model: Vec<PathBuf>,
    /// Text file to evaluate on (tokenized whole, no BOS, as llama-perplexity does for phi-2).
    #[arg(long, short = 'f')]
    pub text: Option<PathBuf>,
    /// Chunk size in tokens; the second half of every chunk is scored [default: 512, or the
    /// .kld file's].
    #[arg(long, short = 'c')]
    pub ctx: Option<usize>,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Threads (default: physical cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Write the base model's log-probs as a llama.cpp .kld file (llama-perplexity
    /// --kl-divergence-base reads it).
    #[arg(long)]
    pub save_base: Option<PathBuf>,
    /// Take the base distribution (and the tokens) from a .kld file, ours or llama-perplexity's.
    #[arg(long)]
    pub base_logits: Option<PathBuf>,
    /// Base vision (mmproj) GGUF.
    #[arg(long)]
    pub mmproj_base: Option<PathBuf>,
    /// Quantized vision GGUF to compare with --mmproj-base (repeatable).
    #[arg(long)]
    pub mmproj: Vec<PathBuf>,
    /// Folder of images (png, jpg, jpeg, webp, bmp, gif) for the vision comparison.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Question asked about each image (`@file.txt` reads it); enables the answer KLD.
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// Prompt template of the answer KLD: auto (stored in the model), stage3, stage4 or raw.
    #[arg(long, default_value = "auto")]
    pub template: String,
    /// Length of the greedy base answer whose positions are scored.
    #[arg(long, default_value_t = 32)]
    pub answer_tokens: usize,
    /// Sweep: quantize the base file(s) to these types (comma-separated: q8_0,q6_k,q5_k,q4_k_m,q4_0,…).
    #[arg(long, value_delimiter = ',')]
    pub quants: Vec<String>,
    /// Sweep: quantize every matrix to the type (no K-quant mixture, no Q6_K output).
    #[arg(long)]
    pub pure: bool,
    /// Sweep: keep the quantized files in this folder, and reuse those already there that are
    /// newer than their base (default: a temporary folder, removed).
    #[arg(long)]
    pub keep_quants: Option<PathBuf>,
    /// Sweep: draw KLD (and visual-token cosine) against file size to OUT.svg and OUT.png.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Sweep: prompt length of the speed test (0 = skip).
    #[arg(long, default_value_t = 128)]
    pub speed_pp: usize,
    /// Sweep: generated tokens of the speed test (0 = skip).
    #[arg(long, default_value_t = 32)]
    pub speed_tg: usize,
    /// Sweep: repetitions of the speed tests.
    #[arg(long, default_value_t = 1)]
    pub speed_reps: usize,
    /// KV cache element type.
    #[arg(long, default_value = "f16")]
    pub cache_type: CacheType,
    /// Print one JSON object.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV (the JSON row fields as columns).
    #[arg(long)]
    pub csv: bool,
    /// Also write the JSON report to this file, whatever is printed.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Refuse images with more decoded pixels than this.
    #[arg(long, default_value_t = runtime::image::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

// ---------------------------------------------------------------------------------------------
// Output rows (JSON field names are a contract)
// ---------------------------------------------------------------------------------------------

/// The answer-position KLD of the language model with quantized visual tokens.
#[derive(Clone, Debug, Serialize)]
pub struct AnswerSummary {
    pub vis_kld_mean: f64,
    pub vis_kld_p99: f64,
    pub vis_kld_max: f64,
    pub vis_same_top_p: f64,
    pub vis_positions: usize,
}

impl AnswerSummary {
    fn from(s: &KldSummary) -> AnswerSummary {
        AnswerSummary {
            vis_kld_mean: s.kld_mean,
            vis_kld_p99: s.kld_p99,
            vis_kld_max: s.kld_max,
            vis_same_top_p: s.same_top_p,
            vis_positions: s.n_tokens,
        }
    }
}

/// One table row. `size_bytes`/`bpw` are the language model's when the row has one, else the
/// vision file's.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mmproj: Option<String>,
    pub size_bytes: u64,
    pub bpw: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_chunks: Option<usize>,
    #[serde(flatten)]
    pub lm: Option<KldSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pp_tps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tg_tps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mmproj_size_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mmproj_bpw: Option<f64>,
    #[serde(flatten)]
    pub vis: Option<VisualSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_ms: Option<f64>,
    #[serde(flatten)]
    pub answer: Option<AnswerSummary>,
}

/// Size facts of a GGUF file.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct FileInfo {
    pub size_bytes: u64,
    pub bpw: f64,
    pub n_params: u64,
}

fn file_info(f: &GgufFile) -> FileInfo {
    let bytes: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    let n: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
    FileInfo {
        size_bytes: f.file_size(),
        bpw: if n > 0 {
            bytes as f64 * 8.0 / n as f64
        } else {
            0.0
        },
        n_params: n,
    }
}

// ---------------------------------------------------------------------------------------------
// Progress and interruption
// ---------------------------------------------------------------------------------------------

fn stopped() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// The sweep's folder (and whether it is a temporary one), for the second Ctrl-C: exiting at
/// once skips `QuantDir`'s drop, so the handler cleans up itself.
static SWEEP_DIR: std::sync::Mutex<Option<(PathBuf, bool)>> = std::sync::Mutex::new(None);

fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            if let Some((dir, temporary)) = SWEEP_DIR.lock().ok().and_then(|d| d.clone()) {
                if temporary {
                    let _ = std::fs::remove_dir_all(&dir);
                } else {
                    // a kept folder: only this process's unfinished files (`.NAME.tmp.PID.N`)
                    let mark = format!(".tmp.{}.", std::process::id());
                    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if name.starts_with('.') && name.contains(&mark) {
                            let _ = std::fs::remove_file(e.path());
                        }
                    }
                }
            }
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: finishing the current step, then printing what was measured (Ctrl-C again to quit now)");
    });
}

/// A one-line progress bar on a terminal; one line per step otherwise (unless quiet).
struct Progress {
    tty: bool,
    quiet: bool,
    total: usize,
    done: usize,
    start: Instant,
}

impl Progress {
    fn new(total: usize, quiet: bool) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            quiet,
            total,
            done: 0,
            start: Instant::now(),
        }
    }

    fn step(&mut self, what: &str) {
        self.done += 1;
        if self.quiet {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64();
        let eta = secs / self.done as f64 * (self.total - self.done.min(self.total)) as f64;
        if self.tty {
            let width = 30;
            let fill = width * self.done.min(self.total) / self.total.max(1);
            eprint!(
                "\r\x1b[2K[{}{}] {}/{} {what} | {secs:.0} s, eta {eta:.0} s",
                "=".repeat(fill),
                " ".repeat(width - fill),
                self.done,
                self.total
            );
        } else {
            eprintln!("{}/{} {what} ({secs:.1} s)", self.done, self.total);
        }
    }

    fn finish(&self) {
        if self.tty && !self.quiet {
            eprint!("\r\x1b[2K");
        }
    }
}

fn note(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("{msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// Language model comparison
// ---------------------------------------------------------------------------------------------

struct LmEntry {
    label: String,
    path: PathBuf,
    lm: LanguageModel,
    info: FileInfo,
    stats: KldStats,
    speed: Option<((f64, f64), (f64, f64))>,
}

struct LmOutcome {
    base_path: PathBuf,
    base_info: Option<FileInfo>,
    base_stats: KldStats,
    base_speed: Option<((f64, f64), (f64, f64))>,
    models: Vec<LmEntry>,
    n_ctx: usize,
    chunks_done: usize,
    chunks_planned: usize,
}

fn load_lm(path: &Path) -> Result<(LanguageModel, FileInfo)> {
    let lm = runtime::llm::load_language_model(path)?;
    let info = file_info(&lm.model.file);
    Ok((lm, info))
}

/// Evaluates `models` against the base over the text (or the .kld file's tokens), chunk by
/// chunk; a chunk's scores are kept only when every model finished it.
fn compare_lms(
    args: &CompareArgs,
    base: Option<&Path>,
    models: Vec<(String, PathBuf)>,
) -> Result<LmOutcome> {
    let quiet = args.quiet;
    let mut reader = match &args.base_logits {
        Some(p) => Some(KldReader::open(p)?),
        None => None,
    };
    let base_lm = match (&reader, base) {
        (None, Some(b)) => {
            note(quiet, &format!("loading base {}", b.display()));
            let (lm, info) = load_lm(b)?;
            if let Some(t) = lm.model.file.tensors().iter().find(|t| t.ty.is_quantized()) {
                note(quiet, &format!(
                    "warning: the base {} is quantized ('{}' is {}); compare against an F32/F16/BF16 file",
                    b.display(),
                    t.name,
                    t.ty
                ));
            }
            Some((lm, info))
        }
        (None, None) => bail!("give the base as --base BASE.gguf or --base-logits BASE.kld"),
        (Some(_), _) => None,
    };
    let mut entries = Vec::new();
    for (label, path) in models {
        note(quiet, &format!("loading {}", path.display()));
        let (lm, info) = load_lm(&path)?;
        entries.push(LmEntry {
            label,
            path,
            lm,
            info,
            stats: KldStats::default(),
            speed: None,
        });
    }

    // tokens, chunk size and vocabulary
    let (tokens, n_ctx, n_vocab, base_path) = match (&reader, &base_lm) {
        (Some(r), _) => {
            let h = &r.header;
            if let Some(c) = args.ctx.filter(|&c| c != h.n_ctx) {
                bail!(
                    "--ctx {c} differs from the {}-token chunks of {}",
                    h.n_ctx,
                    r.path().display()
                );
            }
            if args.text.is_some() {
                note(
                    quiet,
                    &format!(
                        "note: the tokens come from {}; --text is not used",
                        r.path().display()
                    ),
                );
            }
            (h.tokens.clone(), h.n_ctx, h.n_vocab, r.path().to_path_buf())
        }
        (None, Some((lm, _))) => {
            let text_path = args
                .text
                .as_ref()
                .ok_or_else(|| anyhow!("--base needs --text FILE (or use --base-logits)"))?;
            let text = std::fs::read_to_string(text_path)
                .with_context(|| format!("reading {}", text_path.display()))?;
            let tokens = lm.tokenizer.encode(&text, false);
            (
                tokens,
                args.ctx.unwrap_or(512),
                lm.model.cfg.n_vocab,
                base.unwrap().to_path_buf(),
            )
        }
        _ => unreachable!(),
    };
    let chunks = n_chunks(tokens.len(), n_ctx, args.chunks)?;
    for e in &entries {
        if e.lm.model.cfg.n_vocab != n_vocab {
            bail!(
                "{} has {} logits per position but the base has {n_vocab}: not the same model family",
                e.path.display(),
                e.lm.model.cfg.n_vocab
            );
        }
    }
    if let Some((lm, _)) = &base_lm {
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= lm.model.cfg.n_vocab) {
            bail!(
                "token id {t} is not below the vocabulary size {}",
                lm.model.cfg.n_vocab
            );
        }
    }
    let mut writer = match (&args.save_base, &base_lm) {
        (Some(p), Some(_)) => Some(KldWriter::create(
            p,
            n_ctx,
            n_vocab,
            &tokens[..chunks * n_ctx],
        )?),
        (Some(_), None) => bail!("--save-base needs the base model (--base), not --base-logits"),
        _ => None,
    };
    note(
        quiet,
        &format!(
            "{} tokens → {chunks} chunk(s) of {n_ctx}, {} scored positions each, {} model(s)",
            tokens.len(),
            runtime::compare::kld_file::scored_positions(n_ctx),
            entries.len()
        ),
    );

    let mut base_stats = KldStats::default();
    let mut progress = Progress::new(chunks * (entries.len() + base_lm.is_some() as usize), quiet);
    let mut packed = Vec::new();
    let mut chunks_done = 0;
    'chunks: for c in 0..chunks {
        if stopped() {
            break;
        }
        let chunk = &tokens[c * n_ctx..(c + 1) * n_ctx];
        let base_logits = match &base_lm {
            Some((lm, _)) => {
                let mut cache = lm.model.new_cache(args.cache_type, n_ctx);
                let l = sequence_logits(&lm.model, &mut cache, chunk)
                    .with_context(|| format!("base model, chunk {c}"))?;
                progress.step(&format!("chunk {}/{chunks} base", c + 1));
                if let Some(w) = writer.as_mut() {
                    w.write_chunk(&l)?;
                }
                Some(l)
            }
            None => {
                reader.as_mut().unwrap().read_chunk(&mut packed)?;
                None
            }
        };
        let base_rows = match &base_logits {
            Some(l) => BaseRows::Logits(l),
            None => BaseRows::Packed(&packed),
        };
        let mut chunk_scores: Vec<Vec<TokenScore>> = Vec::new();
        for e in &entries {
            if stopped() {
                break 'chunks;
            }
            let mut cache = e.lm.model.new_cache(args.cache_type, n_ctx);
            let q = sequence_logits(&e.lm.model, &mut cache, chunk)
                .with_context(|| format!("{}, chunk {c}", e.path.display()))?;
            chunk_scores.push(
                score_chunk(base_rows, &q, chunk, n_vocab)
                    .with_context(|| format!("{}, chunk {c}", e.path.display()))?,
            );
            progress.step(&format!("chunk {}/{chunks} {}", c + 1, e.label));
        }
        // base PPL: the nll_base of any model's scores, or the base against itself
        let base_scores = match (chunk_scores.first(), &base_logits) {
            (Some(s), _) => s.clone(),
            (None, Some(l)) => score_chunk(BaseRows::Logits(l), l, chunk, n_vocab)?,
            (None, None) => Vec::new(),
        };
        for s in &base_scores {
            base_stats.push(&TokenScore {
                nll: s.nll_base,
                kld: 0.0,
                p_diff: 0.0,
                same_top: true,
                ..*s
            });
        }
        for (e, scores) in entries.iter_mut().zip(&chunk_scores) {
            scores.iter().for_each(|s| e.stats.push(s));
        }
        chunks_done += 1;
    }
    progress.finish();
    if let Some(w) = writer {
        let p = args.save_base.as_ref().unwrap();
        if w.chunks_written() == chunks {
            w.finish()?;
            note(quiet, &format!("wrote {} ({chunks} chunks)", p.display()));
        } else {
            let n = w.chunks_written();
            if w.finish_partial()? {
                note(
                    quiet,
                    &format!(
                        "wrote {} with the {n} chunk(s) evaluated before the interruption",
                        p.display()
                    ),
                );
            }
        }
    }

    // speed (sweep only): after accuracy, so the weights are paged in
    let mut base_speed = None;
    if !args.quants.is_empty() && (args.speed_pp > 0 || args.speed_tg > 0) && !stopped() {
        let measure = |lm: &LanguageModel| -> Result<((f64, f64), (f64, f64))> {
            let vocab = lm.tokenizer.vocab_size().min(lm.model.cfg.n_vocab);
            let pp = if args.speed_pp > 0 {
                super::bench::speed_pp(&lm.model, vocab, args.speed_pp, args.speed_reps)?
            } else {
                (f64::NAN, 0.0)
            };
            let tg = if args.speed_tg > 0 {
                super::bench::speed_tg(&lm.model, vocab, args.speed_tg, args.speed_reps)?
            } else {
                (f64::NAN, 0.0)
            };
            Ok((pp, tg))
        };
        let mut progress = Progress::new(entries.len() + base_lm.is_some() as usize, quiet);
        if let Some((lm, _)) = &base_lm {
            base_speed = Some(measure(lm)?);
            progress.step("speed base");
        }
        for e in entries.iter_mut() {
            if stopped() {
                break;
            }
            e.speed = Some(measure(&e.lm)?);
            progress.step(&format!("speed {}", e.label));
        }
        progress.finish();
    }
    Ok(LmOutcome {
        base_path,
        base_info: base_lm.as_ref().map(|(_, i)| *i),
        base_stats,
        base_speed,
        models: entries,
        n_ctx,
        chunks_done,
        chunks_planned: chunks,
    })
}

// ---------------------------------------------------------------------------------------------
// Vision tower comparison
// ---------------------------------------------------------------------------------------------

struct TowerEntry {
    label: String,
    path: PathBuf,
    tower: VisionTower,
    info: FileInfo,
    stats: VisualStats,
    answer: KldStats,
    encode_s: f64,
    n_encoded: usize,
}

struct VisionOutcome {
    base: TowerEntry,
    towers: Vec<TowerEntry>,
    images_done: usize,
    images_planned: usize,
    answer_lm: Option<PathBuf>,
}

const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "bmp", "gif"];

fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("reading the image folder {}", dir.display()))?
    {
        let p = e
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if p.is_file() && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        bail!(
            "{}: no images ({})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    Ok(out)
}

fn load_tower(label: String, path: &Path) -> Result<TowerEntry> {
    let tower = runtime::vision::load_vision_tower(path)?;
    let info = file_info(&tower.file);
    Ok(TowerEntry {
        label,
        path: path.to_path_buf(),
        tower,
        info,
        stats: VisualStats::default(),
        answer: KldStats::default(),
        encode_s: 0.0,
        n_encoded: 0,
    })
}

/// The visual tokens of `img` from `t`, timing the encode.
fn encode(t: &mut TowerEntry, img: &runtime::image::RgbImage) -> Result<Vec<f32>> {
    let pixels = runtime::vision::image_pixels(&t.tower, img);
    let t0 = Instant::now();
    let tokens = t
        .tower
        .encode(&pixels)
        .with_context(|| format!("encoding with {}", t.path.display()))?;
    t.encode_s += t0.elapsed().as_secs_f64();
    t.n_encoded += 1;
    Ok(tokens)
}

fn compare_towers(
    args: &CompareArgs,
    base: &Path,
    towers: Vec<(String, PathBuf)>,
    answer_lm: Option<&Path>,
) -> Result<VisionOutcome> {
    let quiet = args.quiet;
    let images = list_images(
        args.images
            .as_ref()
            .ok_or_else(|| anyhow!("--mmproj-base needs --images DIR"))?,
    )?;
    note(quiet, &format!("loading vision base {}", base.display()));
    let mut base_t = load_tower("base".into(), base)?;
    let mut entries = Vec::new();
    for (label, p) in towers {
        note(quiet, &format!("loading {}", p.display()));
        let t = load_tower(label, &p)?;
        if t.tower.cfg.n_embd_llm != base_t.tower.cfg.n_embd_llm
            || t.tower.cfg.q_count != base_t.tower.cfg.q_count
        {
            bail!(
                "{} makes {}×{} visual tokens but the base makes {}×{}",
                p.display(),
                t.tower.cfg.q_count,
                t.tower.cfg.n_embd_llm,
                base_t.tower.cfg.q_count,
                base_t.tower.cfg.n_embd_llm
            );
        }
        entries.push(t);
    }

    // the language model and prompt of the answer KLD
    let answer = match (answer_lm, &args.prompt) {
        (Some(p), Some(q)) => {
            note(quiet, &format!("loading language model {}", p.display()));
            let lm = runtime::llm::load_language_model(p)?;
            if lm.model.cfg.n_embd != base_t.tower.cfg.n_embd_llm {
                bail!("{} is {}-wide but the visual tokens are {}-wide: vision and language files do not belong together", p.display(), lm.model.cfg.n_embd, base_t.tower.cfg.n_embd_llm);
            }
            let question = read_prompt(q)?;
            let template = super::run::resolve_template(
                &args.template,
                lm.defaults.prompt_template.as_deref(),
                true,
            )?;
            let mut prompt = runtime::prompt::render_single(template, &question, true);
            if !prompt.contains(runtime::prompt::IMAGE_PLACEHOLDER) {
                prompt = format!("{}{prompt}", runtime::prompt::IMAGE_PLACEHOLDER);
            }
            Some((lm, prompt))
        }
        (Some(_), None) => bail!("the answer KLD needs --prompt QUESTION"),
        (None, Some(_)) => {
            bail!("--prompt in vision mode needs the language model (--model LLM.gguf)")
        }
        (None, None) => None,
    };
    if args.answer_tokens == 0 && answer.is_some() {
        bail!("--answer-tokens must be at least 1");
    }

    let mut progress = Progress::new(images.len(), quiet);
    let mut images_done = 0;
    for path in &images {
        if stopped() {
            break;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let img = runtime::image::load_rgb(path, args.max_pixels)?;
        let base_tokens = encode(&mut base_t, &img)?;
        // base answer: greedy tokens after the prompt with the base visual tokens
        let answer_ctx = match &answer {
            Some((lm, prompt)) => {
                let m = &lm.model;
                let sp = runtime::pipeline::splice(m, &lm.tokenizer, prompt, &base_tokens)?;
                let n_ctx = sp.n_positions + args.answer_tokens;
                let mut cache = m.new_cache(args.cache_type, n_ctx);
                let stop: Vec<u32> = lm.tokenizer.eos().into_iter().collect();
                let ans = greedy_tokens(
                    m,
                    &mut cache,
                    sp.embeddings.clone(),
                    args.answer_tokens,
                    &stop,
                )?;
                let mut x = sp.embeddings;
                x.extend(m.embed_tokens(&ans[..ans.len() - 1])?);
                let logits = embedding_logits(m, &mut cache, x)?;
                let v = m.cfg.n_vocab;
                let rows =
                    logits[(sp.n_positions - 1) * v..(sp.n_positions - 1 + ans.len()) * v].to_vec();
                Some((ans, rows, n_ctx))
            }
            None => None,
        };
        let mut per_tower = Vec::new();
        for t in entries.iter_mut() {
            if stopped() {
                break;
            }
            let q_tokens = encode(t, &img)?;
            let d = visual_diff(&q_tokens, &base_tokens, base_t.tower.cfg.n_embd_llm)
                .with_context(|| format!("{}, image {name}", t.path.display()))?;
            let scores = match (&answer, &answer_ctx) {
                (Some((lm, prompt)), Some((ans, base_rows, n_ctx))) => {
                    let m = &lm.model;
                    let sp = runtime::pipeline::splice(m, &lm.tokenizer, prompt, &q_tokens)?;
                    let mut x = sp.embeddings;
                    x.extend(m.embed_tokens(&ans[..ans.len() - 1])?);
                    let mut cache = m.new_cache(args.cache_type, *n_ctx);
                    let logits = embedding_logits(m, &mut cache, x)?;
                    let v = m.cfg.n_vocab;
                    let q_rows =
                        &logits[(sp.n_positions - 1) * v..(sp.n_positions - 1 + ans.len()) * v];
                    score_rows(BaseRows::Logits(base_rows), q_rows, ans, v)?
                }
                _ => Vec::new(),
            };
            per_tower.push((d, scores));
        }
        if per_tower.len() < entries.len() {
            break; // interrupted mid-image: keep every tower on the same images
        }
        for (t, (d, scores)) in entries.iter_mut().zip(per_tower) {
            t.stats.push(&name, d);
            scores.iter().for_each(|s| t.answer.push(s));
        }
        images_done += 1;
        progress.step(&name);
    }
    progress.finish();
    Ok(VisionOutcome {
        base: base_t,
        towers: entries,
        images_done,
        images_planned: images.len(),
        answer_lm: answer_lm
            .filter(|_| answer.is_some())
            .map(Path::to_path_buf),
    })
}

// ---------------------------------------------------------------------------------------------
// Sweep: quantize to a folder
// ---------------------------------------------------------------------------------------------

/// The folder of the sweep's quantized files; a temporary one is removed on drop.
struct QuantDir {
    path: PathBuf,
    remove: bool,
}

impl QuantDir {
    fn new(keep: Option<&Path>) -> Result<QuantDir> {
        let (path, remove) = match keep {
            Some(p) => (p.to_path_buf(), false),
            None => (
                std::env::temp_dir().join(format!("tinygptv-compare-{}", std::process::id())),
                true,
            ),
        };
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        if let Ok(mut d) = SWEEP_DIR.lock() {
            *d = Some((path.clone(), remove));
        }
        Ok(QuantDir { path, remove })
    }
}

impl Drop for QuantDir {
    fn drop(&mut self) {
        if let Ok(mut d) = SWEEP_DIR.lock() {
            *d = None;
        }
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// Quantizes `input` to `target` into `dir`; None when interrupted.
fn quantize_to(
    input: &Path,
    target: Target,
    pure: bool,
    dir: &QuantDir,
    quiet: bool,
) -> Result<Option<PathBuf>> {
    let suffix = if pure { "-pure" } else { "" };
    let out = dir.path.join(format!(
        "{}-{}{suffix}.gguf",
        file_stem(input),
        target.name()
    ));
    // a kept folder's file from an earlier sweep is reused when it is newer than its input
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if !dir.remove {
        if let (Some(o), Some(i)) = (modified(&out), modified(input)) {
            if o >= i && GgufFile::open(&out).is_ok() {
                note(quiet, &format!("reusing {}", out.display()));
                return Ok(Some(out));
            }
        }
    }
    note(
        quiet,
        &format!("quantizing {} to {}", input.display(), target.name()),
    );
    let plan = converter::requantize::plan_requantize(input, target, pure)?;
    match plan.write(&out, quiet) {
        Ok(_) => Ok(Some(out)),
        Err(_) if stopped() => Ok(None),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------------

fn display(p: &Path) -> String {
    p.display().to_string()
}

pub fn run(args: CompareArgs) -> Result<ExitCode> {
    init_threads(args.threads);
    install_interrupt_handler();
    let sweep = !args.quants.is_empty();
    let lm_mode = args.base.is_some() || args.base_logits.is_some();
    let vision_mode = args.mmproj_base.is_some();
    if !lm_mode && !vision_mode {
        bail!("nothing to compare: give --base (or --base-logits) for the language model, or --mmproj-base for the vision tower");
    }
    if args.text.is_some() && !lm_mode {
        bail!("--text needs the base language model (--base)");
    }
    if args.images.is_some() && !vision_mode {
        bail!("--images needs --mmproj-base");
    }
    if !args.mmproj.is_empty() && !vision_mode {
        bail!("--mmproj needs --mmproj-base");
    }
    if args.base_logits.is_some() && args.save_base.is_some() {
        bail!("--save-base writes the base model's log-probs; with --base-logits they come from a file already");
    }

    // what to compare
    let quants: Vec<Target> = args
        .quants
        .iter()
        .map(|q| q.trim().parse::<Target>().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    let mut lm_models: Vec<(String, PathBuf)> = Vec::new();
    let mut towers: Vec<(String, PathBuf)> = Vec::new();
    let mut answer_lm: Option<PathBuf> = None;
    let mut quant_dir = None;
    if sweep {
        if !args.model.is_empty() && lm_mode {
            bail!("--quants makes the models to compare; --model is only the answer-KLD language model of a vision-only sweep");
        }
        if !args.mmproj.is_empty() {
            bail!("--quants makes the vision files to compare; drop --mmproj");
        }
        if lm_mode && args.base.is_none() {
            bail!("--quants needs the base model file (--base) to quantize");
        }
        if lm_mode && args.text.is_none() && args.base_logits.is_none() {
            bail!("--quants with --base needs --text FILE (or --base-logits)");
        }
        if args.model.len() > 1 {
            bail!("a vision sweep takes one --model (the language model of the answer KLD)");
        }
        answer_lm = args.base.clone().or_else(|| args.model.first().cloned());
        let dir = QuantDir::new(args.keep_quants.as_deref())?;
        for &t in &quants {
            if stopped() {
                break;
            }
            if let Some(b) = &args.base {
                match quantize_to(b, t, args.pure, &dir, args.quiet)? {
                    Some(p) => lm_models.push((t.name(), p)),
                    None => break,
                }
            }
            if let Some(b) = &args.mmproj_base {
                match quantize_to(b, t, args.pure, &dir, args.quiet)? {
                    Some(p) => towers.push((t.name(), p)),
                    None => {
                        lm_models.retain(|(n, _)| *n != t.name());
                        break;
                    }
                }
            }
        }
        quant_dir = Some(dir);
    } else {
        if args.plot.is_some() {
            bail!("--plot draws a sweep: use it with --quants");
        }
        if lm_mode && vision_mode {
            bail!("compare the language model and the vision tower in separate runs, or together in a --quants sweep");
        }
        if lm_mode {
            if args.model.is_empty() && args.save_base.is_none() {
                bail!("nothing to compare with the base: give --model Q.gguf (repeatable) or --quants");
            }
            lm_models = args.model.iter().map(|p| (display(p), p.clone())).collect();
        } else {
            if args.mmproj.is_empty() {
                bail!("nothing to compare with the vision base: give --mmproj Q.gguf (repeatable) or --quants");
            }
            if args.model.len() > 1 {
                bail!("vision mode takes one --model: the language model of the answer KLD");
            }
            towers = args
                .mmproj
                .iter()
                .map(|p| (display(p), p.clone()))
                .collect();
            answer_lm = args.model.first().cloned();
        }
    }

    let lm = if lm_mode && !stopped() {
        Some(compare_lms(&args, args.base.as_deref(), lm_models)?)
    } else {
        None
    };
    let vision = match &args.mmproj_base {
        // a sweep scores answers only when asked (--prompt); vision mode insists on both
        Some(b) if !stopped() => Some(compare_towers(
            &args,
            b,
            towers,
            answer_lm
                .as_deref()
                .filter(|_| !sweep || args.prompt.is_some()),
        )?),
        _ => None,
    };
    let report = Report::build(&args, lm.as_ref(), vision.as_ref(), sweep);
    drop(quant_dir);

    if let Some(p) = &args.json_out {
        std::fs::write(p, report.json()? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if args.json {
        println!("{}", report.json()?);
    } else if args.csv {
        print!("{}", report.csv());
    } else {
        print!("{}", report.markdown());
    }
    if let Some(p) = &args.plot {
        match plot::plot(p, &report.title(), &report.rows) {
            Ok(files) => note(
                args.quiet,
                &format!(
                    "wrote {}",
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            ),
            // an interrupted sweep may have nothing to draw yet
            Err(e) if report.interrupted => note(args.quiet, &format!("no plot: {e:#}")),
            Err(e) => return Err(e.context("drawing the plot")),
        }
    }
    if report.interrupted {
        eprintln!("interrupted: the table covers what was measured before Ctrl-C");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Report: rows, markdown, JSON, CSV
// ---------------------------------------------------------------------------------------------

pub struct Report {
    pub rows: Vec<Row>,
    base: serde_json::Value,
    header: Vec<String>,
    interrupted: bool,
    sweep: bool,
    base_name: String,
}

impl Report {
    fn build(
        args: &CompareArgs,
        lm: Option<&LmOutcome>,
        vision: Option<&VisionOutcome>,
        sweep: bool,
    ) -> Report {
        let mut rows: Vec<Row> = Vec::new();
        let mut header = Vec::new();
        let mut base = serde_json::Map::new();
        let mut interrupted = INTERRUPTED.load(Ordering::Relaxed);
        let mut base_name = String::new();
        if let Some(o) = lm {
            interrupted |= o.chunks_done < o.chunks_planned;
            let bs = o.base_stats.summary();
            base_name = file_stem(&o.base_path);
            let mut b = serde_json::json!({
                "model": display(&o.base_path),
                "n_ctx": o.n_ctx,
                "n_chunks": o.chunks_done,
                "n_chunks_planned": o.chunks_planned,
            });
            if let Some(i) = o.base_info {
                b["size_bytes"] = i.size_bytes.into();
                b["bpw"] = i.bpw.into();
                b["n_params"] = i.n_params.into();
            }
            if let Some(s) = &bs {
                b["ppl"] = s.ppl.into();
                b["ppl_err"] = s.ppl_err.into();
                b["n_tokens"] = s.n_tokens.into();
            }
            if let Some(((pp, _), (tg, _))) = o.base_speed {
                b["pp_tps"] = pp.into();
                b["tg_tps"] = tg.into();
            }
            base.insert("lm".into(), b);
            let size = o
                .base_info
                .map(|i| format!(" — {}, {:.2} bpw", human_size(i.size_bytes), i.bpw))
                .unwrap_or_default();
            let ppl = bs
                .map(|s| {
                    format!(
                        ", PPL {:.4} ± {:.4} over {} tokens",
                        s.ppl, s.ppl_err, s.n_tokens
                    )
                })
                .unwrap_or_default();
            header.push(format!(
                "base: {}{size}{ppl} ({} of {} chunk(s) × {} tokens, second half scored)",
                display(&o.base_path),
                o.chunks_done,
                o.chunks_planned,
                o.n_ctx
            ));
            for e in &o.models {
                rows.push(Row {
                    quant: sweep.then(|| e.label.clone()),
                    model: Some(display(&e.path)),
                    size_bytes: e.info.size_bytes,
                    bpw: e.info.bpw,
                    n_chunks: Some(o.chunks_done),
                    lm: e.stats.summary(),
                    pp_tps: e.speed.map(|s| s.0 .0).filter(|v| v.is_finite()),
                    tg_tps: e.speed.map(|s| s.1 .0).filter(|v| v.is_finite()),
                    ..Row::default()
                });
            }
        }
        if let Some(v) = vision {
            interrupted |= v.images_done < v.images_planned;
            if base_name.is_empty() {
                base_name = file_stem(&v.base.path);
            }
            let b = serde_json::json!({
                "mmproj": display(&v.base.path),
                "size_bytes": v.base.info.size_bytes,
                "bpw": v.base.info.bpw,
                "n_images": v.images_done,
                "image_ms": 1e3 * v.base.encode_s / v.base.n_encoded.max(1) as f64,
                "answer_model": v.answer_lm.as_ref().map(|p| display(p)),
            });
            base.insert("vision".into(), b);
            header.push(format!(
                "vision base: {} — {}, {:.2} bpw; {} of {} image(s){}",
                display(&v.base.path),
                human_size(v.base.info.size_bytes),
                v.base.info.bpw,
                v.images_done,
                v.images_planned,
                match &v.answer_lm {
                    Some(p) => format!(
                        "; answer KLD with {} over its greedy {}-token answers",
                        display(p),
                        args.answer_tokens
                    ),
                    None => String::new(),
                }
            ));
            for t in &v.towers {
                let vis = t.stats.summary();
                let answer = t.answer.summary().map(|s| AnswerSummary::from(&s));
                let image_ms = (t.n_encoded > 0).then(|| 1e3 * t.encode_s / t.n_encoded as f64);
                match rows
                    .iter_mut()
                    .find(|r| sweep && r.quant.as_deref() == Some(t.label.as_str()))
                {
                    Some(r) => {
                        r.mmproj = Some(display(&t.path));
                        r.mmproj_size_bytes = Some(t.info.size_bytes);
                        r.mmproj_bpw = Some(t.info.bpw);
                        r.vis = vis;
                        r.answer = answer;
                        r.image_ms = image_ms;
                    }
                    None => rows.push(Row {
                        quant: sweep.then(|| t.label.clone()),
                        mmproj: Some(display(&t.path)),
                        size_bytes: t.info.size_bytes,
                        bpw: t.info.bpw,
                        mmproj_size_bytes: Some(t.info.size_bytes),
                        mmproj_bpw: Some(t.info.bpw),
                        vis,
                        answer,
                        image_ms,
                        ..Row::default()
                    }),
                }
            }
        }
        if sweep {
            rows.sort_by(|a, b| {
                b.size_bytes
                    .cmp(&a.size_bytes)
                    .then(b.mmproj_size_bytes.cmp(&a.mmproj_size_bytes))
            });
        }
        Report {
            rows,
            base: serde_json::Value::Object(base),
            header,
            interrupted,
            sweep,
            base_name,
        }
    }

    fn title(&self) -> String {
        format!("{}: accuracy vs size", self.base_name)
    }

    fn json(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Out<'a> {
            base: &'a serde_json::Value,
            interrupted: bool,
            rows: &'a [Row],
        }
        Ok(serde_json::to_string_pretty(&Out {
            base: &self.base,
            interrupted: self.interrupted,
            rows: &self.rows,
        })?)
    }

    /// Union of the rows' JSON fields, in first-seen order, as CSV.
    fn csv(&self) -> String {
        let objs: Vec<serde_json::Map<String, serde_json::Value>> = self
            .rows
            .iter()
            .filter_map(|r| match serde_json::to_value(r) {
                Ok(serde_json::Value::Object(m)) => Some(m),
                _ => None,
            })
            .collect();
        // identity and size first, then the metrics in alphabetical order
        let first = [
            "quant",
            "model",
            "mmproj",
            "size_bytes",
            "bpw",
            "mmproj_size_bytes",
            "mmproj_bpw",
        ];
        let mut keys: Vec<String> = first
            .iter()
            .filter(|k| objs.iter().any(|o| o.contains_key(**k)))
            .map(|k| k.to_string())
            .collect();
        let mut rest: Vec<String> = objs
            .iter()
            .flat_map(|o| o.keys().cloned())
            .filter(|k| !first.contains(&k.as_str()))
            .collect();
        rest.sort();
        rest.dedup();
        keys.extend(rest);
        let cell = |v: Option<&serde_json::Value>| -> String {
            match v {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) if s.contains([',', '"', '\n']) => {
                    format!("\"{}\"", s.replace('"', "\"\""))
                }
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            }
        };
        let mut out = keys.join(",") + "\n";
        for o in &objs {
            out += &keys
                .iter()
                .map(|k| cell(o.get(k)))
                .collect::<Vec<_>>()
                .join(",");
            out += "\n";
        }
        out
    }

    fn markdown(&self) -> String {
        type Col = (&'static str, bool, fn(&Row) -> Option<String>);
        let cols: Vec<Col> = vec![
            ("type", false, |r| r.quant.clone()),
            ("model", false, |r| {
                if r.quant.is_none() {
                    r.model.clone()
                } else {
                    None
                }
            }),
            ("mmproj", false, |r| {
                if r.quant.is_none() && r.model.is_none() {
                    r.mmproj.clone()
                } else {
                    None
                }
            }),
            ("size", true, |r| {
                r.model
                    .as_ref()
                    .or(r.mmproj.as_ref())
                    .map(|_| human_size(r.size_bytes))
            }),
            ("bpw", true, |r| {
                r.model
                    .as_ref()
                    .or(r.mmproj.as_ref())
                    .map(|_| format!("{:.2}", r.bpw))
            }),
            ("PPL", true, |r| {
                r.lm.as_ref()
                    .map(|s| format!("{:.4} ± {:.4}", s.ppl, s.ppl_err))
            }),
            ("ΔPPL", true, |r| {
                r.lm.as_ref()
                    .map(|s| format!("{:+.4} ± {:.4}", s.delta_ppl, s.delta_ppl_err))
            }),
            ("KLD", true, |r| {
                r.lm.as_ref()
                    .map(|s| format!("{:.6} ± {:.6}", s.kld_mean, s.kld_err))
            }),
            ("KLD median", true, |r| {
                r.lm.as_ref().map(|s| format!("{:.6}", s.kld_median))
            }),
            ("KLD p90", true, |r| {
                r.lm.as_ref().map(|s| format!("{:.6}", s.kld_p90))
            }),
            ("KLD p99", true, |r| {
                r.lm.as_ref().map(|s| format!("{:.6}", s.kld_p99))
            }),
            ("KLD max", true, |r| {
                r.lm.as_ref().map(|s| format!("{:.6}", s.kld_max))
            }),
            ("same top p", true, |r| {
                r.lm.as_ref().map(|s| {
                    format!(
                        "{:.3} ± {:.3} %",
                        100.0 * s.same_top_p,
                        100.0 * s.same_top_p_err
                    )
                })
            }),
            ("mean Δp", true, |r| {
                r.lm.as_ref()
                    .map(|s| format!("{:+.3} ± {:.3} %", 100.0 * s.dp_mean, 100.0 * s.dp_mean_err))
            }),
            ("RMS Δp", true, |r| {
                r.lm.as_ref()
                    .map(|s| format!("{:.3} ± {:.3} %", 100.0 * s.rms_dp, 100.0 * s.rms_dp_err))
            }),
            ("pp t/s", true, |r| r.pp_tps.map(|v| format!("{v:.2}"))),
            ("tg t/s", true, |r| r.tg_tps.map(|v| format!("{v:.2}"))),
            ("mmproj size", true, |r| {
                r.mmproj_size_bytes
                    .filter(|_| r.model.is_some())
                    .map(human_size)
            }),
            ("mmproj bpw", true, |r| {
                r.mmproj_bpw
                    .filter(|_| r.model.is_some())
                    .map(|v| format!("{v:.2}"))
            }),
            ("cos mean", true, |r| {
                r.vis.as_ref().map(|v| format!("{:.6}", v.cosine_mean))
            }),
            ("cos worst image", true, |r| {
                r.vis.as_ref().map(|v| format!("{:.6}", v.cosine_min))
            }),
            ("cos min token", true, |r| {
                r.vis.as_ref().map(|v| format!("{:.6}", v.cosine_min_token))
            }),
            ("rel L2 mean", true, |r| {
                r.vis.as_ref().map(|v| format!("{:.5}", v.rel_l2_mean))
            }),
            ("rel L2 max", true, |r| {
                r.vis.as_ref().map(|v| format!("{:.5}", v.rel_l2_max))
            }),
            ("answer KLD", true, |r| {
                r.answer.as_ref().map(|a| format!("{:.6}", a.vis_kld_mean))
            }),
            ("answer KLD max", true, |r| {
                r.answer.as_ref().map(|a| format!("{:.6}", a.vis_kld_max))
            }),
            ("answer same top", true, |r| {
                r.answer
                    .as_ref()
                    .map(|a| format!("{:.2} %", 100.0 * a.vis_same_top_p))
            }),
            ("image ms", true, |r| r.image_ms.map(|v| format!("{v:.1}"))),
        ];
        // the sweep table keeps to the headline numbers
        let hidden_in_sweep = [
            "KLD median",
            "KLD p90",
            "KLD max",
            "mean Δp",
            "cos min token",
            "rel L2 max",
            "answer KLD max",
        ];
        let used: Vec<&Col> = cols
            .iter()
            .filter(|(h, _, f)| {
                !(self.sweep && hidden_in_sweep.contains(h))
                    && self.rows.iter().any(|r| f(r).is_some())
            })
            .collect();
        let mut out = String::new();
        for h in &self.header {
            out += h;
            out += "\n";
        }
        out += "\n";
        if self.rows.is_empty() {
            out += "(no rows)\n";
            return out;
        }
        out += &format!(
            "| {} |\n",
            used.iter().map(|c| c.0).collect::<Vec<_>>().join(" | ")
        );
        out += &format!(
            "|{}|\n",
            used.iter()
                .map(|c| if c.1 { "---:" } else { "---" })
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            out += &format!(
                "| {} |\n",
                used.iter()
                    .map(|c| c.2(r).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        out
    }
}

pub fn human_size(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.2} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}
