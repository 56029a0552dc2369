//! llama.cpp (through the `llama-cpp-2` bindings) as a reference implementation: load a GGUF on
//! the CPU, compute the logits of every position of a token sequence, decode greedily, and
//! quantize a GGUF with llama.cpp's own quantizer. Built only with `--features llama-cpp`.
//!
//! llama.cpp's backend is process-global and may be initialised once, so it lives in a static;
//! its log output is switched off there.
#![allow(dead_code)] // the CLI uses a subset; tests/llama_cpp.rs includes this file for all of it

use std::ffi::CString;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// Longest token sequence accepted (one batch, one context): far above any test or prompt here,
/// low enough that the logits buffer (n × n_vocab f32) stays bounded.
pub const MAX_TOKENS: usize = 8192;

/// How llama.cpp runs a context.
#[derive(Clone, Copy, Debug)]
pub struct LlamaOptions {
    /// CPU threads for prompt and generation (default: all available).
    pub threads: usize,
    /// KV cache in F32 instead of llama.cpp's default F16.
    pub kv_f32: bool,
    /// Flash attention: None = llama.cpp's default (auto), Some(on/off) forces it.
    pub flash_attn: Option<bool>,
}

impl Default for LlamaOptions {
    fn default() -> Self {
        LlamaOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kv_f32: false,
            flash_attn: None,
        }
    }
}

pub(crate) fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
            b.void_logs();
            Ok(b)
        })
        .as_ref()
        .map_err(|e| anyhow!("llama.cpp backend initialisation failed: {e}"))
}

/// A GGUF model loaded by llama.cpp (CPU only, no GPU layers).
pub struct LlamaCppModel {
    model: LlamaModel,
    path: String,
}

impl LlamaCppModel {
    pub fn load(path: &Path) -> Result<LlamaCppModel> {
        let name = path.display().to_string();
        if !path.is_file() {
            bail!("{name}: no such file");
        }
        // llama.cpp refuses the ×16 type ids with a bare "null result": say why first
        if let Ok(f) = kernels::gguf::GgufFile::open(path) {
            if let Some(t) = f.tensors().iter().find(|t| t.layout.is_some()) {
                bail!(
                    "{name}: tensor '{}' is in tinygptv's ×16 layout ({:?}, written by `tinygptv \
                     repack`), which llama.cpp cannot read; compare on the file it was \
                     repacked from",
                    t.name,
                    t.layout.unwrap()
                );
            }
        }
        let backend = backend()?;
        let params = LlamaModelParams::default().with_n_gpu_layers(0);
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|e| anyhow!("{name}: llama.cpp could not load the model: {e}"))?;
        Ok(LlamaCppModel { model, path: name })
    }

    /// Rows of the logits matrix (llama.cpp's vocabulary size).
    pub fn n_vocab(&self) -> usize {
        self.model.n_vocab().max(0) as usize
    }

    /// A string metadata value (numbers are formatted), None when the key is absent.
    pub fn meta(&self, key: &str) -> Option<String> {
        self.model.meta_val_str(key).ok()
    }

    /// llama.cpp's tokenization of `text` with the file's vocabulary (no BOS/EOS added,
    /// special-token text not parsed).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        if text.len() > MAX_TOKENS * 64 {
            bail!(
                "{}: text of {} bytes is too long to tokenize",
                self.path,
                text.len()
            );
        }
        let ids = self.model.vocab().tokenize(text.as_bytes(), false, false);
        ids.iter()
            .map(|t| {
                u32::try_from(t.0)
                    .map_err(|_| anyhow!("{}: llama.cpp returned token id {}", self.path, t.0))
            })
            .collect()
    }

    fn check_tokens(&self, tokens: &[u32], extra: usize) -> Result<()> {
        if tokens.is_empty() {
            bail!("{}: empty token sequence", self.path);
        }
        if tokens.len() + extra > MAX_TOKENS {
            bail!(
                "{}: {} tokens exceed the limit of {MAX_TOKENS}",
                self.path,
                tokens.len() + extra
            );
        }
        let n_vocab = self.n_vocab();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            bail!(
                "{}: token id {bad} is outside the vocabulary of {n_vocab}",
                self.path
            );
        }
        Ok(())
    }

    fn context(&self, n_ctx: usize, opts: &LlamaOptions) -> Result<LlamaContext<'_>> {
        let threads = opts.threads.clamp(1, 512) as i32;
        // one batch holds the whole sequence so every position gets its logits in one decode;
        // llama.cpp splits it into micro-batches of at most 512 (llama-bench's default -ub)
        let n = n_ctx.max(1) as u32;
        let mut params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n))
            .with_n_batch(n)
            .with_n_ubatch(n.min(512))
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_offload_kqv(false);
        if opts.kv_f32 {
            params = params
                .with_type_k(KvCacheType::F32)
                .with_type_v(KvCacheType::F32);
        }
        if let Some(on) = opts.flash_attn {
            params = params.with_flash_attention_policy(if on {
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED
            } else {
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED
            });
        }
        self.model.new_context(backend()?, params).map_err(|e| {
            anyhow!(
                "{}: llama.cpp could not create a context of {n} tokens: {e}",
                self.path
            )
        })
    }

    /// Logits at every position of `tokens` (positions 0..n, one sequence, no BOS added):
    /// `tokens.len() × n_vocab` values, row t predicting token t + 1.
    pub fn logits(&self, tokens: &[u32], opts: &LlamaOptions) -> Result<Vec<f32>> {
        self.check_tokens(tokens, 0)?;
        let mut ctx = self.context(tokens.len(), opts)?;
        let mut batch = LlamaBatch::new(tokens.len(), 1);
        for (pos, &t) in tokens.iter().enumerate() {
            batch
                .add(LlamaToken(t as i32), pos as i32, &[0], true)
                .map_err(|e| anyhow!("{}: batch: {e}", self.path))?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| anyhow!("{}: llama.cpp decode failed: {e}", self.path))?;
        let n_vocab = self.n_vocab();
        let mut out = Vec::with_capacity(tokens.len() * n_vocab);
        for i in 0..tokens.len() {
            let row = ctx.get_logits_ith(i as i32);
            if row.len() != n_vocab {
                bail!(
                    "{}: llama.cpp returned {} logits for position {i}, expected {n_vocab}",
                    self.path,
                    row.len()
                );
            }
            out.extend_from_slice(row);
        }
        Ok(out)
    }

    /// Greedy continuation of `prompt`: `n` tokens, each the argmax (lowest id on ties) of the
    /// logits after the previous one, fed back one at a time through the KV cache.
    pub fn greedy(&self, prompt: &[u32], n: usize, opts: &LlamaOptions) -> Result<Vec<u32>> {
        self.check_tokens(prompt, n)?;
        let mut ctx = self.context(prompt.len() + n, opts)?;
        let mut batch = LlamaBatch::new(prompt.len(), 1);
        let last = prompt.len() - 1;
        for (pos, &t) in prompt.iter().enumerate() {
            batch
                .add(LlamaToken(t as i32), pos as i32, &[0], pos == last)
                .map_err(|e| anyhow!("{}: batch: {e}", self.path))?;
        }
        let mut out = Vec::with_capacity(n);
        for step in 0..n {
            ctx.decode(&mut batch).map_err(|e| {
                anyhow!("{}: llama.cpp decode failed at step {step}: {e}", self.path)
            })?;
            let id = argmax(ctx.get_logits_ith(batch.n_tokens() - 1)) as u32;
            out.push(id);
            if step + 1 == n {
                break;
            }
            batch.clear();
            batch
                .add(
                    LlamaToken(id as i32),
                    (prompt.len() + step) as i32,
                    &[0],
                    true,
                )
                .map_err(|e| anyhow!("{}: batch: {e}", self.path))?;
        }
        Ok(out)
    }

    /// llama-bench's pp/tg measurement on this model (`llama-bench -p n_prompt -n n_gen -t
    /// threads`, F16 KV cache, flash attention auto), one repetition at a time, so that a caller
    /// can alternate them with another engine's ([`BenchSession::pp`], [`BenchSession::tg`]).
    /// Token ids are pseudo-random below the vocabulary size; the caller runs the warm-ups.
    pub fn bench_session(
        &self,
        n_prompt: usize,
        n_gen: usize,
        threads: usize,
    ) -> Result<BenchSession<'_>> {
        if n_prompt + n_gen == 0 || n_prompt + n_gen > MAX_TOKENS {
            bail!(
                "{}: bench needs 1..={MAX_TOKENS} tokens in all, got pp {n_prompt} + tg {n_gen}",
                self.path
            );
        }
        let opts = LlamaOptions {
            threads,
            ..LlamaOptions::default()
        };
        Ok(BenchSession {
            ctx: self.context(n_prompt.max(n_gen), &opts)?,
            path: &self.path,
            n_vocab: self.n_vocab().max(1) as u64,
            n_prompt,
            n_gen,
        })
    }
}

/// One context measuring llama-bench's `pp<n_prompt>` and `tg<n_gen>`
/// ([`LlamaCppModel::bench_session`]).
pub struct BenchSession<'m> {
    ctx: LlamaContext<'m>,
    path: &'m str,
    n_vocab: u64,
    n_prompt: usize,
    n_gen: usize,
}

impl BenchSession<'_> {
    fn token(&self, i: usize) -> LlamaToken {
        LlamaToken(((i as u64).wrapping_mul(2_654_435_761) % self.n_vocab) as i32)
    }

    /// One `pp` repetition: tokens per second of one batched decode of `n_prompt` tokens into
    /// an empty cache.
    pub fn pp(&mut self) -> Result<f64> {
        self.ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(self.n_prompt, 1);
        for i in 0..self.n_prompt {
            batch
                .add(self.token(i), i as i32, &[0], i + 1 == self.n_prompt)
                .map_err(|e| anyhow!("{}: batch: {e}", self.path))?;
        }
        let t = std::time::Instant::now();
        self.ctx
            .decode(&mut batch)
            .map_err(|e| anyhow!("{}: llama.cpp decode failed: {e}", self.path))?;
        self.ctx.synchronize();
        Ok(self.n_prompt as f64 / t.elapsed().as_secs_f64())
    }

    /// One `tg` repetition: tokens per second of `n_gen` single-token decodes from an empty
    /// cache.
    pub fn tg(&mut self) -> Result<f64> {
        self.ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(1, 1);
        let t = std::time::Instant::now();
        for i in 0..self.n_gen {
            batch.clear();
            batch
                .add(self.token(i), i as i32, &[0], true)
                .map_err(|e| anyhow!("{}: batch: {e}", self.path))?;
            self.ctx
                .decode(&mut batch)
                .map_err(|e| anyhow!("{}: llama.cpp decode failed: {e}", self.path))?;
        }
        self.ctx.synchronize();
        Ok(self.n_gen as f64 / t.elapsed().as_secs_f64())
    }
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Logits at every position of `tokens` from the GGUF at `path` (F16 KV cache, as llama.cpp's default).
pub fn llama_logits(path: &Path, tokens: &[u32], threads: usize) -> Result<Vec<f32>> {
    LlamaCppModel::load(path)?.logits(
        tokens,
        &LlamaOptions {
            threads,
            ..LlamaOptions::default()
        },
    )
}

/// `n` greedy tokens after `prompt` from the GGUF at `path`.
pub fn llama_greedy(path: &Path, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    LlamaCppModel::load(path)?.greedy(prompt, n, &LlamaOptions::default())
}

/// llama.cpp's quantization types used here (`llama_ftype`, gguf.md §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlamaFtype {
    Q4_0,
    Q8_0,
    Q4KM,
    Q6K,
}

impl LlamaFtype {
    fn raw(self) -> llama_cpp_sys_2::llama_ftype {
        match self {
            LlamaFtype::Q4_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0,
            LlamaFtype::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
            LlamaFtype::Q4KM => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            LlamaFtype::Q6K => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q6_K,
        }
    }
}

/// Quantizes the F32/F16 GGUF `input` into `output` with llama.cpp's quantizer (what
/// `llama-quantize input output TYPE` does; `pure` = `--pure`, no K-quant mixture and no Q6_K output).
pub fn llama_quantize(
    input: &Path,
    output: &Path,
    ftype: LlamaFtype,
    pure: bool,
    threads: usize,
) -> Result<()> {
    backend()?;
    let c_path = |p: &Path| -> Result<CString> {
        let s = p
            .to_str()
            .ok_or_else(|| anyhow!("{}: path is not UTF-8", p.display()))?;
        CString::new(s).with_context(|| format!("{}: path contains a NUL byte", p.display()))
    };
    let (inp, out) = (c_path(input)?, c_path(output)?);
    if !input.is_file() {
        bail!("{}: no such file", input.display());
    }
    // SAFETY: the default parameters are a plain struct; the paths are valid NUL-terminated strings
    // that outlive the call, and the parameter struct is passed by pointer to a live local.
    let rc = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = ftype.raw();
        params.nthread = threads.clamp(1, 512) as i32;
        params.pure_ = pure;
        llama_cpp_sys_2::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params)
    };
    if rc != 0 {
        bail!(
            "llama.cpp failed to quantize {} to {:?} (status {rc})",
            input.display(),
            ftype
        );
    }
    Ok(())
}
