//! Phi-2 language model — stock (`phi2`, llama.cpp's GGUF layout) and the TinyGPT-V variant
//! (`tinygptv`: per-head QK LayerNorm before RoPE, RMSNorm on the attention branch).
//!
//! Read top to bottom: configuration from GGUF metadata, weights (views into the memory map),
//! then the forward pass over a batch of positions with the KV cache.

use anyhow::{anyhow, bail, Context, Result};
use std::sync::Arc;

use kernels::gguf::{GgufFile, TensorInfo};
use kernels::repack::RepackedMatrix;
use kernels::GgmlType;
use rayon::prelude::*;

use crate::arch::{self, blk, llm_key};
use crate::attention::attend_head_rows;
use crate::kv_cache::{CacheType, KvCache};
use crate::linear::{matmul, matmul_many, Activation, MatmulPart, Weight};
use crate::ops;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Phi2Config {
    pub arch: String,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub rope_theta: f32,
    pub norm_eps: f32,
    /// RMSNorm eps of the post-attention norm (TinyGPT-V only).
    pub rms_eps: f32,
    /// True for the TinyGPT-V variant (QK norm + post-attention RMSNorm).
    pub tinygptv: bool,
}

impl Phi2Config {
    pub fn from_gguf(f: &GgufFile) -> Result<Phi2Config> {
        let arch = f
            .architecture()
            .ok_or_else(|| anyhow!("{}: missing general.architecture", f.path().display()))?
            .to_string();
        if arch != arch::ARCH_PHI2 && arch != arch::ARCH_TINYGPTV {
            bail!(
                "{}: architecture '{arch}' is not a language model this runtime runs (expected phi2 or tinygptv)",
                f.path().display()
            );
        }
        let u = |k: &str| -> Result<usize> { Ok(f.get_u32(&llm_key(&arch, k))? as usize) };
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_head_kv = if f.get(&llm_key(&arch, "attention.head_count_kv")).is_some() {
            u("attention.head_count_kv")?
        } else {
            n_head
        };
        if n_head == 0 || n_embd % n_head != 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            bail!(
                "{}: bad head counts (n_embd {n_embd}, heads {n_head}, kv heads {n_head_kv})",
                f.path().display()
            );
        }
        let head_dim = n_embd / n_head;
        let n_rot = if f.get(&llm_key(&arch, "rope.dimension_count")).is_some() {
            u("rope.dimension_count")?
        } else {
            head_dim
        };
        if n_rot > head_dim || n_rot % 2 != 0 {
            bail!(
                "{}: rope.dimension_count {n_rot} does not fit head_dim {head_dim}",
                f.path().display()
            );
        }
        let rope_theta = match f.get(&llm_key(&arch, "rope.freq_base")) {
            Some(_) => f.get_f32(&llm_key(&arch, "rope.freq_base"))?,
            None => 10000.0,
        };
        let tinygptv = arch == arch::ARCH_TINYGPTV;
        let rms_eps = if tinygptv {
            f.get_f32(&llm_key(&arch, "attention.layer_norm_rms_epsilon"))?
        } else {
            0.0
        };
        let embd = f
            .tensor_info("token_embd.weight")
            .ok_or_else(|| anyhow!("{}: missing tensor token_embd.weight", f.path().display()))?;
        let n_vocab = embd.dims.get(1).copied().unwrap_or(1) as usize;
        Ok(Phi2Config {
            n_vocab,
            n_ctx_train: u("context_length")?,
            n_embd,
            n_layer: u("block_count")?,
            n_ff: u("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            rope_theta,
            norm_eps: f.get_f32(&llm_key(&arch, "attention.layer_norm_epsilon"))?,
            rms_eps,
            tinygptv,
            arch,
        })
    }

    pub fn kv_width(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

// ---------------------------------------------------------------------------------------------
// Weights: matrices stay in the memory map; small 1-D tensors (norms, biases) are copied to f32.
// ---------------------------------------------------------------------------------------------

/// A 2-D weight tensor located in the GGUF file.
#[derive(Clone)]
pub struct WeightRef {
    info: TensorInfo,
    pub rows: usize,
    pub cols: usize,
    /// The matrix in a ×16 layout: repacked at load time (see [`Phi2Model::repack_weights`]),
    /// or read in place from a file that `tinygptv repack` wrote.
    repacked: Option<Arc<RepackedMatrix>>,
    /// The rows in the plain layout, unpacked at load time from such a file on a CPU without
    /// kernels for its layout.
    plain: Option<Arc<Vec<u8>>>,
}

impl WeightRef {
    pub fn ty(&self) -> GgmlType {
        self.info.ty
    }
}

// One value per layer: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Qkv {
    /// One `[n_embd + 2·kv_width, n_embd]` matrix, rows Q;K;V.
    Fused { w: WeightRef, b: Option<Vec<f32>> },
    Separate {
        q: WeightRef,
        k: WeightRef,
        v: WeightRef,
        bq: Option<Vec<f32>>,
        bk: Option<Vec<f32>>,
        bv: Option<Vec<f32>>,
    },
}

pub struct PhiLayer {
    attn_norm_w: Vec<f32>,
    attn_norm_b: Vec<f32>,
    qkv: Qkv,
    attn_out: WeightRef,
    attn_out_b: Option<Vec<f32>>,
    ffn_up: WeightRef,
    ffn_up_b: Option<Vec<f32>>,
    ffn_down: WeightRef,
    ffn_down_b: Option<Vec<f32>>,
    /// TinyGPT-V: shared per-head LayerNorm of q and k (weight, bias), `head_dim` each.
    q_norm: Option<(Vec<f32>, Vec<f32>)>,
    k_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// TinyGPT-V: RMSNorm weight on the attention branch.
    post_attn_norm: Option<Vec<f32>>,
}

pub struct Phi2Model {
    pub file: GgufFile,
    pub cfg: Phi2Config,
    token_embd: WeightRef,
    layers: Vec<PhiLayer>,
    output_norm_w: Vec<f32>,
    output_norm_b: Vec<f32>,
    output: WeightRef,
    output_b: Option<Vec<f32>>,
    rope: ops::Rope,
}

struct Loader<'a> {
    f: &'a GgufFile,
}

impl Loader<'_> {
    fn err_name(&self) -> String {
        self.f.path().display().to_string()
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.f
            .tensor_info(name)
            .ok_or_else(|| anyhow!("{}: missing tensor '{name}'", self.err_name()))
    }

    fn has(&self, name: &str) -> bool {
        self.f.tensor_info(name).is_some()
    }

    /// A matrix with `cols` input elements (ne0) and `rows` outputs (ne1).
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<WeightRef> {
        let info = self.info(name)?;
        let dims = &info.dims;
        if dims.len() != 2 || dims[0] as usize != cols || dims[1] as usize != rows {
            bail!(
                "{}: tensor '{name}' has shape {:?}, expected [{cols}, {rows}]",
                self.err_name(),
                dims
            );
        }
        match info.ty {
            GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K => {}
            t => bail!(
                "{}: tensor '{name}' has type {t}, which cannot be used as a weight matrix",
                self.err_name()
            ),
        }
        let (mut repacked, mut plain) = (None, None);
        if let Some(layout) = info.layout {
            // written by `tinygptv repack`: used in place where this CPU has kernels for it
            let m = RepackedMatrix::from_gguf(self.f, info)
                .with_context(|| format!("{}: tensor '{name}'", self.err_name()))?;
            if kernels::simd::kernels().has_repacked_gemm(layout) {
                repacked = Some(Arc::new(m));
            } else {
                plain = Some(Arc::new(m.to_rows()));
            }
        }
        Ok(WeightRef {
            info: info.clone(),
            rows,
            cols,
            repacked,
            plain,
        })
    }

    /// A 1-D tensor of `len` elements as f32.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        if info.n_elements() != len as u64 || info.dims.len() != 1 {
            bail!(
                "{}: tensor '{name}' has shape {:?}, expected [{len}]",
                self.err_name(),
                info.dims
            );
        }
        let mut out = vec![0.0; len];
        kernels::formats::dequantize_row(info.ty, self.f.tensor_data(info), &mut out)
            .with_context(|| format!("{}: tensor '{name}'", self.err_name()))?;
        Ok(out)
    }

    fn opt_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A TinyGPT-V layer's extra norms, read with `vector(name, len)`: the per-head LayerNorms of
/// Q and K (weight, bias) and the post-attention RMSNorm weight; all `None` for stock Phi-2.
/// Shared by the CPU model and the CUDA backend's loader.
#[allow(clippy::type_complexity)]
pub(crate) fn tinygptv_norms<V>(
    cfg: &Phi2Config,
    i: usize,
    vector: impl Fn(&str, usize) -> Result<V>,
) -> Result<(Option<(V, V)>, Option<(V, V)>, Option<V>)> {
    if !cfg.tinygptv {
        return Ok((None, None, None));
    }
    let hd = cfg.head_dim;
    let pair = |what: &str| -> Result<(V, V)> {
        Ok((
            vector(&blk(i, &format!("{what}.weight")), hd)?,
            vector(&blk(i, &format!("{what}.bias")), hd)?,
        ))
    };
    Ok((
        Some(pair("attn_q_norm")?),
        Some(pair("attn_k_norm")?),
        Some(vector(&blk(i, "post_attention_norm.weight"), cfg.n_embd)?),
    ))
}

impl Phi2Model {
    pub fn load(file: GgufFile) -> Result<Phi2Model> {
        let cfg = Phi2Config::from_gguf(&file)?;
        let l = Loader { f: &file };
        let (e, kvw, ff) = (cfg.n_embd, cfg.kv_width(), cfg.n_ff);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let qkv = if l.has(&blk(i, "attn_qkv.weight")) {
                Qkv::Fused {
                    w: l.matrix(&blk(i, "attn_qkv.weight"), e + 2 * kvw, e)?,
                    b: l.opt_vector(&blk(i, "attn_qkv.bias"), e + 2 * kvw)?,
                }
            } else {
                Qkv::Separate {
                    q: l.matrix(&blk(i, "attn_q.weight"), e, e)?,
                    k: l.matrix(&blk(i, "attn_k.weight"), kvw, e)?,
                    v: l.matrix(&blk(i, "attn_v.weight"), kvw, e)?,
                    bq: l.opt_vector(&blk(i, "attn_q.bias"), e)?,
                    bk: l.opt_vector(&blk(i, "attn_k.bias"), kvw)?,
                    bv: l.opt_vector(&blk(i, "attn_v.bias"), kvw)?,
                }
            };
            let (q_norm, k_norm, post_attn_norm) =
                tinygptv_norms(&cfg, i, |name, len| l.vector(name, len))?;
            layers.push(PhiLayer {
                attn_norm_w: l.vector(&blk(i, "attn_norm.weight"), e)?,
                attn_norm_b: l.vector(&blk(i, "attn_norm.bias"), e)?,
                qkv,
                attn_out: l.matrix(&blk(i, "attn_output.weight"), e, e)?,
                attn_out_b: l.opt_vector(&blk(i, "attn_output.bias"), e)?,
                ffn_up: l.matrix(&blk(i, "ffn_up.weight"), ff, e)?,
                ffn_up_b: l.opt_vector(&blk(i, "ffn_up.bias"), ff)?,
                ffn_down: l.matrix(&blk(i, "ffn_down.weight"), e, ff)?,
                ffn_down_b: l.opt_vector(&blk(i, "ffn_down.bias"), e)?,
                q_norm,
                k_norm,
                post_attn_norm,
            });
        }
        let token_embd = l.matrix("token_embd.weight", cfg.n_vocab, e)?;
        if token_embd.info.layout.is_some() {
            // it is read a row at a time, which the ×16 layouts do not serve
            bail!(
                "{}: token_embd.weight is stored interleaved; the embedding table must keep \
                 the plain layout (write the file again with `tinygptv repack`)",
                file.path().display()
            );
        }
        // llama.cpp ties output to token_embd when output.weight is absent.
        let output = if l.has("output.weight") {
            l.matrix("output.weight", cfg.n_vocab, e)?
        } else {
            token_embd.clone()
        };
        let rope = ops::Rope::new(cfg.n_rot, cfg.rope_theta);
        let mut model = Phi2Model {
            output_norm_w: l.vector("output_norm.weight", e)?,
            output_norm_b: l.vector("output_norm.bias", e)?,
            output_b: l.opt_vector("output.bias", cfg.n_vocab)?,
            output,
            token_embd,
            layers,
            rope,
            cfg,
            file,
        };
        model.repack_weights()?;
        Ok(model)
    }

    /// Repacks the layers' and the LM head's matrices into the ×16 layouts where
    /// [`crate::linear::should_repack`] says so (Q4_0 / Q8_0 / K-quants with AVX-512 VNNI or
    /// AVX2 kernels, machines with enough memory, `TINYGPTV_REPACK`), then lets the file map
    /// drop their pages: the resident size stays about the file's, and load time grows by one
    /// pass over the weights. Matrices that a `tinygptv repack` file already holds in a ×16
    /// layout are copied into memory under the same rule: on the Cascade Lake VM of
    /// `bench/REPORT.md`, anonymous 2 MiB pages streamed up to 1.3× faster than the page
    /// cache's (fifteenth session), and the copy costs less than repacking.
    /// Returns the bytes repacked or copied.
    pub fn repack_weights(&mut self) -> Result<usize> {
        let tied = self.output.info.name == self.token_embd.info.name;
        let mut refs: Vec<&mut WeightRef> = Vec::new();
        for layer in &mut self.layers {
            match &mut layer.qkv {
                Qkv::Fused { w, .. } => refs.push(w),
                Qkv::Separate { q, k, v, .. } => refs.extend([q, k, v]),
            }
            refs.extend([&mut layer.attn_out, &mut layer.ffn_up, &mut layer.ffn_down]);
        }
        refs.push(&mut self.output);
        refs.retain(|r| {
            r.repacked.as_ref().is_none_or(|m| m.is_mapped())
                && crate::linear::should_repack(r.info.ty)
        });
        let file = &self.file;
        let token_embd = &self.token_embd.info.name;
        refs.par_iter_mut()
            .map(|r| -> Result<usize> {
                let m = match &r.repacked {
                    Some(mapped) => mapped.to_memory(),
                    None => {
                        RepackedMatrix::new(r.info.ty, file.tensor_data(&r.info), r.rows, r.cols)
                    }
                }
                .with_context(|| {
                    format!("{}: repacking '{}'", file.path().display(), r.info.name)
                })?;
                // the embedding table is still read from the map when the head is tied to it
                if !(tied && &r.info.name == token_embd) {
                    file.release_tensor(&r.info);
                }
                let bytes = m.memory_bytes();
                r.repacked = Some(Arc::new(m));
                Ok(bytes)
            })
            .sum()
    }

    /// The matrices (layers and LM head) that are read in a ×16 layout in place from the file's
    /// map (a file written by `tinygptv repack`, on a CPU with kernels for its layouts).
    pub fn interleaved_in_place(&self) -> usize {
        let mut refs: Vec<&WeightRef> = vec![&self.output];
        for layer in &self.layers {
            match &layer.qkv {
                Qkv::Fused { w, .. } => refs.push(w),
                Qkv::Separate { q, k, v, .. } => refs.extend([q, k, v]),
            }
            refs.extend([&layer.attn_out, &layer.ffn_up, &layer.ffn_down]);
        }
        refs.iter()
            .filter(|r| r.repacked.as_ref().is_some_and(|m| m.is_mapped()))
            .count()
    }

    fn w<'a>(&'a self, r: &'a WeightRef) -> Weight<'a> {
        // a ×16 tensor's bytes are not rows: it has no plain data unless unpacked
        let data = match (&r.plain, r.info.layout) {
            (Some(rows), _) => rows.as_slice(),
            (None, Some(_)) => &[],
            (None, None) => self.file.tensor_data(&r.info),
        };
        Weight {
            ty: r.info.ty,
            data,
            rows: r.rows,
            cols: r.cols,
            repacked: r.repacked.as_deref(),
        }
    }

    /// A KV cache for this model with room for `n_ctx` positions.
    pub fn new_cache(&self, ty: CacheType, n_ctx: usize) -> KvCache {
        KvCache::new(
            ty,
            self.cfg.n_layer,
            n_ctx,
            self.cfg.kv_width(),
            self.cfg.head_dim,
        )
    }

    /// Token embeddings `[ids.len(), n_embd]`.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let e = self.cfg.n_embd;
        let w = self.w(&self.token_embd);
        let mut x = vec![0.0; ids.len() * e];
        for (row, &id) in x.chunks_exact_mut(e).zip(ids) {
            if id as usize >= self.cfg.n_vocab {
                bail!(
                    "token id {id} is out of range (vocabulary has {} entries)",
                    self.cfg.n_vocab
                );
            }
            w.dequantize_row(id as usize, row);
        }
        Ok(x)
    }

    // -----------------------------------------------------------------------------------------
    // Forward pass
    // -----------------------------------------------------------------------------------------

    /// Runs `x` (`[T, n_embd]` input embeddings at positions `cache.len .. cache.len+T`)
    /// through the model, appending to the KV cache. Returns logits `[T, n_vocab]` when
    /// `all_logits`, else only the last position's `[n_vocab]`.
    pub fn forward(&self, x: Vec<f32>, cache: &mut KvCache, all_logits: bool) -> Result<Vec<f32>> {
        let mut x = x;
        self.forward_layers(&mut x, 0..self.cfg.n_layer, cache)?;
        self.logits(&mut x, all_logits)
    }

    /// The transformer layers `layers` of [`Phi2Model::forward`] only: updates the hidden
    /// states `x` (`[T, n_embd]`, positions `cache.len .. cache.len+T`) in place and appends
    /// to `cache`, whose layer `i` holds the keys and values of model layer `layers.start + i`
    /// (a cache of `layers.len()` layers is enough). Partial GPU offload runs the first layers
    /// on the device and the rest with this.
    pub fn forward_layers(
        &self,
        x: &mut [f32],
        layers: std::ops::Range<usize>,
        cache: &mut KvCache,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let e = cfg.n_embd;
        if !x.len().is_multiple_of(e) || x.is_empty() {
            bail!("forward: input is not a whole number of {e}-wide rows");
        }
        if layers.start > layers.end || layers.end > cfg.n_layer {
            bail!(
                "forward: layers {}..{} are not a range of the model's {} layers",
                layers.start,
                layers.end,
                cfg.n_layer
            );
        }
        let t = x.len() / e;
        let pos0 = cache.len;
        if pos0 + t > cache.n_ctx {
            bail!(
                "the sequence needs {} positions but the context holds {} (use a larger --ctx)",
                pos0 + t,
                cache.n_ctx
            );
        }
        if cache.width != cfg.kv_width()
            || cache.head_dim != cfg.head_dim
            || cache_layers(cache) < layers.len()
        {
            bail!(
                "forward: the KV cache does not fit layers {}..{} of this model",
                layers.start,
                layers.end
            );
        }
        let mut h = vec![0.0; t * e];
        // every layer overwrites all of these: allocated (and zeroed) once per call, not once
        // per layer (zeroing them per layer was 2.6 % of a 512-token prompt)
        let mut buf = LayerBuffers::new(cfg, t);
        for (il, layer) in self.layers[layers].iter().enumerate() {
            // 1. shared input LayerNorm
            ops::layer_norm_into(
                x,
                &mut h,
                e,
                &layer.attn_norm_w,
                Some(&layer.attn_norm_b),
                cfg.norm_eps,
            );

            // 2. the projections of h: Q, K, V and the MLP's up projection + GELU (parallel
            //    residual: both branches read the same h, quantized once, in one parallel loop)
            self.input_projections(layer, &h, t, &mut buf);

            // 3. attention branch (`il` counts from `layers.start`: the cache's layer index)
            self.attention(il, layer, t, pos0, cache, &mut buf);
            let a = &mut buf.a;
            if let Some(g) = &layer.post_attn_norm {
                ops::rms_norm(a, e, g, cfg.rms_eps);
            }

            // 4. MLP branch: down projection
            let m = &mut buf.m;
            matmul(
                &self.w(&layer.ffn_down),
                layer.ffn_down_b.as_deref(),
                &buf.up,
                t,
                m,
            );

            // 5. x ← x + attn + mlp
            ops::add_sum_assign(x, &buf.a, &buf.m);
        }
        cache.len = pos0 + t;
        Ok(())
    }

    /// The final LayerNorm and LM head of [`Phi2Model::forward`] over hidden states `x`
    /// (`[T, n_embd]`, normalized in place): logits `[T, n_vocab]` when `all_logits`, else only
    /// the last position's `[n_vocab]`.
    pub fn logits(&self, x: &mut [f32], all_logits: bool) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let e = cfg.n_embd;
        if !x.len().is_multiple_of(e) || x.is_empty() {
            bail!("logits: input is not a whole number of {e}-wide rows");
        }
        let t = x.len() / e;
        // only the rows that need logits
        let rows: &mut [f32] = if all_logits { x } else { &mut x[(t - 1) * e..] };
        let n_rows = rows.len() / e;
        ops::layer_norm(
            rows,
            e,
            &self.output_norm_w,
            Some(&self.output_norm_b),
            cfg.norm_eps,
        );
        let mut logits = vec![0.0; n_rows * cfg.n_vocab];
        matmul(
            &self.w(&self.output),
            self.output_b.as_deref(),
            rows,
            n_rows,
            &mut logits,
        );
        Ok(logits)
    }

    /// `h·W_qᵀ, h·W_kᵀ, h·W_vᵀ` (with biases) and `gelu(h·W_upᵀ + b_up)` for one layer's
    /// normalized input `h` (`[t, n_embd]`), as one [`matmul_many`], into `buf.q`, `buf.k`,
    /// `buf.v` and `buf.up`.
    fn input_projections(&self, layer: &PhiLayer, h: &[f32], t: usize, buf: &mut LayerBuffers) {
        let cfg = &self.cfg;
        let (e, kvw) = (cfg.n_embd, cfg.kv_width());
        let LayerBuffers {
            q, k, v, up, qkv, ..
        } = buf;
        let up_part = MatmulPart {
            w: self.w(&layer.ffn_up),
            bias: layer.ffn_up_b.as_deref(),
            act: Activation::GeluTanh,
            out: up,
        };
        match &layer.qkv {
            Qkv::Fused { w, b } => {
                let width = e + 2 * kvw;
                qkv.resize(t * width, 0.0);
                matmul_many(
                    &mut [MatmulPart::new(self.w(w), b.as_deref(), qkv), up_part],
                    h,
                    t,
                );
                ops::copy_columns(qkv, width, 0, q, e);
                ops::copy_columns(qkv, width, e, k, kvw);
                ops::copy_columns(qkv, width, e + kvw, v, kvw);
            }
            Qkv::Separate {
                q: wq,
                k: wk,
                v: wv,
                bq,
                bk,
                bv,
            } => {
                matmul_many(
                    &mut [
                        MatmulPart::new(self.w(wq), bq.as_deref(), q),
                        MatmulPart::new(self.w(wk), bk.as_deref(), k),
                        MatmulPart::new(self.w(wv), bv.as_deref(), v),
                        up_part,
                    ],
                    h,
                    t,
                );
            }
        }
    }

    /// The attention branch from the layer's projections `buf.q` (`[t, n_embd]`), `buf.k`,
    /// `buf.v` (`[t, kv_width]`): QK-norm, RoPE, KV cache store, causal attention, output
    /// projection into `buf.a` (`q` and `k` are changed on the way).
    fn attention(
        &self,
        cache_layer: usize,
        layer: &PhiLayer,
        t: usize,
        pos0: usize,
        cache: &mut KvCache,
        buf: &mut LayerBuffers,
    ) {
        let cfg = &self.cfg;
        let (e, kvw, hd) = (cfg.n_embd, cfg.kv_width(), cfg.head_dim);
        let LayerBuffers {
            q, k, v, attn, a, ..
        } = buf;
        let (q, k, v) = (&mut q[..], &mut k[..], &v[..]);

        // TinyGPT-V: LayerNorm of every head vector (shared parameters), before RoPE
        if let Some((w, b)) = &layer.q_norm {
            ops::layer_norm(q, hd, w, Some(b), cfg.norm_eps);
        }
        if let Some((w, b)) = &layer.k_norm {
            ops::layer_norm(k, hd, w, Some(b), cfg.norm_eps);
        }

        // partial NeoX RoPE on the first n_rot dims of each head; q pre-scaled by 1/√head_dim
        let scale = 1.0 / (hd as f32).sqrt();
        self.rope.apply_rows(&mut q[..t * e], e, hd, pos0, scale);
        self.rope.apply_rows(&mut k[..t * kvw], kvw, hd, pos0, 1.0);
        cache.store(cache_layer, pos0, k, v);

        // causal softmax attention per head, f32 scores
        let n_kv = pos0 + t;
        let group = cfg.n_head / cfg.n_head_kv;
        let cache_ref: &KvCache = cache;
        let heads: Vec<Vec<f32>> = crate::pool::map_collect(cfg.n_head, |hh| {
            let kvh = hh / group;
            let mut qh = vec![0.0; t * hd];
            for (i, dst) in qh.chunks_exact_mut(hd).enumerate() {
                dst.copy_from_slice(&q[i * e + hh * hd..i * e + (hh + 1) * hd]);
            }
            let mut out = vec![0.0; t * hd];
            // q is pre-scaled; causal: query i sees positions 0..=pos0+i
            attend_head_rows(
                &qh,
                &cache_ref.head_keys(cache_layer, kvh),
                &cache_ref.head_values_t(cache_layer, kvh),
                t,
                n_kv,
                hd,
                hd,
                1.0,
                Some(pos0),
                &mut out,
            );
            out
        });
        ops::interleave_heads(&heads, hd, &mut attn[..t * e]);
        matmul(
            &self.w(&layer.attn_out),
            layer.attn_out_b.as_deref(),
            attn,
            t,
            a,
        );
    }
}

/// The per-layer activations of [`Phi2Model::forward_layers`] for `t` positions, reused by
/// every layer (each overwrites all of them).
struct LayerBuffers {
    /// `[t, n_embd]`
    q: Vec<f32>,
    /// `[t, kv_width]`
    k: Vec<f32>,
    v: Vec<f32>,
    /// The MLP's up projection after GELU, `[t, n_ff]`.
    up: Vec<f32>,
    /// The fused QKV projection, `[t, n_embd + 2·kv_width]` (sized at first use).
    qkv: Vec<f32>,
    /// The heads' outputs side by side, `[t, n_embd]`.
    attn: Vec<f32>,
    /// The attention branch's output, `[t, n_embd]`.
    a: Vec<f32>,
    /// The MLP branch's output, `[t, n_embd]`.
    m: Vec<f32>,
}

impl LayerBuffers {
    fn new(cfg: &Phi2Config, t: usize) -> Self {
        let (e, kvw) = (cfg.n_embd, cfg.kv_width());
        LayerBuffers {
            q: vec![0.0; t * e],
            k: vec![0.0; t * kvw],
            v: vec![0.0; t * kvw],
            up: vec![0.0; t * cfg.n_ff],
            qkv: Vec::new(),
            attn: vec![0.0; t * e],
            a: vec![0.0; t * e],
            m: vec![0.0; t * e],
        }
    }
}

/// Layers held by `cache` (KvCache keeps its per-layer stores private; its byte count gives
/// them).
fn cache_layers(cache: &KvCache) -> usize {
    let el = match cache.ty {
        CacheType::F16 => 2,
        CacheType::F32 => 4,
    };
    let per_layer = 2 * cache.n_ctx * cache.width * el;
    cache.bytes().checked_div(per_layer).unwrap_or(0)
}
