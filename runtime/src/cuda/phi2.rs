//! Phi-2 / TinyGPT-V language model on the GPU: the forward pass of
//! `crate::model::phi2::Phi2Model::forward`, op for op, with the weights and the f16 KV cache in
//! device memory.
//!
//! Per layer: LayerNorm → fused QKV matmul (+bias) → (TinyGPT-V) per-head LayerNorm of q and k
//! → NeoX RoPE (q pre-scaled by 1/√head_dim) → f16 K/V stored into the cache → causal attention
//! → output matmul → (TinyGPT-V) RMSNorm; in parallel up matmul → GELU (tanh) → down matmul;
//! then `x += attn + mlp`. Then the final LayerNorm and the LM head on the rows that need
//! logits. Separate q/k/v weights are concatenated into one fused matrix at load time.
//!
//! Decode steps with quantized weights fuse launches: the LayerNorm also quantizes its output
//! for the QKV and up GEMVs, GELU and the quantization of the down projection's input are one
//! pass, and the down GEMV adds the residual itself.
//!
//! Partial offload ([`CudaPhi2::load_layers`]): only the first layers are uploaded (no
//! embedding table, final norm or LM head) and [`CudaPhi2::forward_hidden`] returns the hidden
//! state after them, for the CPU to finish (`crate::cuda::CudaLm`).

use anyhow::{anyhow, bail, Context, Result};
use kernels::cuda::{
    q8_1_bytes, AttentionShape, DevSlice, Device, DeviceBuffer, DeviceWeight, KvSlices, Rows,
    Scratch, GEMV_MAX_COLS,
};
use kernels::gguf::{GgufFile, TensorInfo};

use crate::arch::blk;
use crate::model::phi2::{tinygptv_norms, Phi2Config, Phi2Model};

struct Layer {
    attn_norm_w: DeviceBuffer,
    attn_norm_b: DeviceBuffer,
    qkv: DeviceWeight,
    qkv_b: Option<DeviceBuffer>,
    attn_out: DeviceWeight,
    attn_out_b: Option<DeviceBuffer>,
    ffn_up: DeviceWeight,
    ffn_up_b: Option<DeviceBuffer>,
    ffn_down: DeviceWeight,
    ffn_down_b: Option<DeviceBuffer>,
    q_norm: Option<(DeviceBuffer, DeviceBuffer)>,
    k_norm: Option<(DeviceBuffer, DeviceBuffer)>,
    post_attn_norm: Option<DeviceBuffer>,
}

/// The embedding table, final LayerNorm and LM head (absent when only the first layers are
/// on the device).
struct Head {
    token_embd: DeviceWeight,
    /// `None`: tied to `token_embd`.
    output: Option<DeviceWeight>,
    output_b: Option<DeviceBuffer>,
    output_norm_w: DeviceBuffer,
    output_norm_b: DeviceBuffer,
}

/// Activation buffers for up to `tokens` positions per call.
struct Work {
    tokens: usize,
    x: DeviceBuffer,
    h: DeviceBuffer,
    qkv: DeviceBuffer,
    att: DeviceBuffer,
    a: DeviceBuffer,
    up: DeviceBuffer,
    m: DeviceBuffer,
    /// Q8_1 activations of the fused decode steps (normalized input, then the GELU output).
    xq: DeviceBuffer,
    /// Absent without the head.
    logits: Option<DeviceBuffer>,
}

/// A Phi-2 / TinyGPT-V language model resident on a CUDA device, with its own KV cache of
/// `n_ctx` positions: all of it, or its first layers only ([`CudaPhi2::load_layers`]).
pub struct CudaPhi2 {
    dev: Device,
    cfg: Phi2Config,
    /// Layers `0 .. layers.len()` of the model.
    layers: Vec<Layer>,
    head: Option<Head>,
    /// `[layer][k, v][n_ctx][kv_width]` f16 (the layers on the device).
    cache: DeviceBuffer,
    n_ctx: usize,
    len: usize,
    work: Option<Work>,
    scratch: Scratch,
}

fn f32_bytes(n: usize) -> usize {
    n * std::mem::size_of::<f32>()
}

/// Reads tensors of a GGUF file into device memory (shared with `super::vision`).
pub(super) struct Loader<'a> {
    pub(super) dev: &'a Device,
    pub(super) f: &'a GgufFile,
}

impl Loader<'_> {
    pub(super) fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.f
            .tensor_info(name)
            .ok_or_else(|| anyhow!("{}: missing tensor '{name}'", self.f.path().display()))
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.f.tensor_info(name).is_some()
    }

    /// A 1-D tensor of `len` elements as f32 on the host.
    pub(super) fn host_vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        if info.n_elements() != len as u64 {
            bail!(
                "{}: tensor '{name}' has {} elements, expected {len}",
                self.f.path().display(),
                info.n_elements()
            );
        }
        let mut v = vec![0.0; len];
        kernels::formats::dequantize_row(info.ty, self.f.tensor_data(info), &mut v)
            .with_context(|| format!("{}: tensor '{name}'", self.f.path().display()))?;
        Ok(v)
    }

    pub(super) fn vector(&self, name: &str, len: usize) -> Result<DeviceBuffer> {
        Ok(self.dev.upload(&self.host_vector(name, len)?)?)
    }

    pub(super) fn opt_vector(&self, name: &str, len: usize) -> Result<Option<DeviceBuffer>> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A `[rows, cols]` matrix (`dims == [cols, rows]`).
    pub(super) fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<DeviceWeight> {
        let info = self.info(name)?;
        if info.dims.len() != 2 || info.dims[0] as usize != cols || info.dims[1] as usize != rows {
            bail!(
                "{}: tensor '{name}' has shape {:?}, expected [{cols}, {rows}]",
                self.f.path().display(),
                info.dims
            );
        }
        self.dev
            .upload_weight(info.ty, rows, cols, self.f.tensor_data(info))
            .with_context(|| format!("uploading '{name}' to the GPU"))
    }

    /// A matrix of `rows` rows of `cols` elements stored in any shape with that many elements
    /// whose rows are whole blocks (e.g. the 4-D patch-embedding kernel).
    pub(super) fn flat_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<DeviceWeight> {
        let info = self.info(name)?;
        let whole_rows = info
            .dims
            .first()
            .is_some_and(|&d0| (d0 as usize).is_multiple_of(info.ty.block_size()))
            && cols.is_multiple_of(info.ty.block_size());
        if info.n_elements() != (rows as u64) * (cols as u64) || !whole_rows {
            bail!(
                "{}: tensor '{name}' has shape {:?} ({}), expected {rows} rows of {cols}",
                self.f.path().display(),
                info.dims,
                info.ty
            );
        }
        self.dev
            .upload_weight(info.ty, rows, cols, self.f.tensor_data(info))
            .with_context(|| format!("uploading '{name}' to the GPU"))
    }

    /// Q, K, V as one `[e + 2·kvw, e]` matrix and bias (missing biases are zeros).
    fn qkv(&self, i: usize, e: usize, kvw: usize) -> Result<(DeviceWeight, Option<DeviceBuffer>)> {
        let width = e + 2 * kvw;
        if self.has(&blk(i, "attn_qkv.weight")) {
            return Ok((
                self.matrix(&blk(i, "attn_qkv.weight"), width, e)?,
                self.opt_vector(&blk(i, "attn_qkv.bias"), width)?,
            ));
        }
        let parts = [("attn_q", e), ("attn_k", kvw), ("attn_v", kvw)];
        let infos = parts
            .iter()
            .map(|(p, _)| self.info(&blk(i, &format!("{p}.weight"))))
            .collect::<Result<Vec<_>>>()?;
        let ty = infos[0].ty;
        if infos.iter().any(|t| t.ty != ty) {
            bail!(
                "{}: layer {i} stores q, k and v in different types ({}, {}, {}); the CUDA backend \
                 fuses them and needs one type",
                self.f.path().display(),
                infos[0].ty,
                infos[1].ty,
                infos[2].ty
            );
        }
        let mut bytes = Vec::new();
        for (info, (p, rows)) in infos.iter().zip(parts) {
            if info.dims.len() != 2 || info.dims[0] as usize != e || info.dims[1] as usize != rows {
                bail!(
                    "{}: tensor '{}' has shape {:?}, expected [{e}, {rows}]",
                    self.f.path().display(),
                    blk(i, &format!("{p}.weight")),
                    info.dims
                );
            }
            bytes.extend_from_slice(self.f.tensor_data(info));
        }
        let w = self
            .dev
            .upload_weight(ty, width, e, &bytes)
            .with_context(|| format!("uploading layer {i}'s q/k/v to the GPU"))?;
        let mut bias = Vec::with_capacity(width);
        let mut any = false;
        for (p, rows) in parts {
            let name = blk(i, &format!("{p}.bias"));
            if self.has(&name) {
                any = true;
                bias.extend(self.host_vector(&name, rows)?);
            } else {
                bias.extend(std::iter::repeat_n(0.0, rows));
            }
        }
        let bias = if any {
            Some(self.dev.upload(&bias)?)
        } else {
            None
        };
        Ok((w, bias))
    }
}

impl CudaPhi2 {
    /// Uploads `model`'s weights to `dev` and allocates a KV cache of `n_ctx` positions.
    pub fn load(dev: &Device, model: &Phi2Model, n_ctx: usize) -> Result<CudaPhi2> {
        Self::load_layers(dev, model, n_ctx, model.cfg.n_layer)
    }

    /// Uploads the first `n_layers` layers of `model` (all of them: the whole model, with the
    /// embedding table and the LM head; fewer: those layers only, for
    /// [`CudaPhi2::forward_hidden`]) and allocates their KV cache of `n_ctx` positions.
    pub fn load_layers(
        dev: &Device,
        model: &Phi2Model,
        n_ctx: usize,
        n_layers: usize,
    ) -> Result<CudaPhi2> {
        let cfg = model.cfg.clone();
        if let Some(t) = model.file.tensors().iter().find(|t| t.layout.is_some()) {
            bail!(
                "{}: tensor '{}' is stored in tinygptv's ×16 CPU layout ({:?}); the GPU reads \
                 the plain layout, so run the file this one was repacked from",
                model.file.path().display(),
                t.name,
                t.layout.unwrap()
            );
        }
        if n_ctx == 0 {
            bail!("the context must hold at least one position");
        }
        if n_layers == 0 || n_layers > cfg.n_layer {
            bail!(
                "cannot put {n_layers} layers on the GPU: the model has {} (1 ..= {0})",
                cfg.n_layer
            );
        }
        if cfg.head_dim > kernels::cuda::ATTENTION_MAX_HEAD_DIM {
            bail!(
                "head_dim {} exceeds the CUDA attention kernel's {}",
                cfg.head_dim,
                kernels::cuda::ATTENTION_MAX_HEAD_DIM
            );
        }
        let l = Loader {
            dev,
            f: &model.file,
        };
        let (e, kvw, ff) = (cfg.n_embd, cfg.kv_width(), cfg.n_ff);
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let (qkv, qkv_b) = l.qkv(i, e, kvw)?;
            let (q_norm, k_norm, post_attn_norm) =
                tinygptv_norms(&cfg, i, |name, len| l.vector(name, len))?;
            layers.push(Layer {
                attn_norm_w: l.vector(&blk(i, "attn_norm.weight"), e)?,
                attn_norm_b: l.vector(&blk(i, "attn_norm.bias"), e)?,
                qkv,
                qkv_b,
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
        let head = if n_layers == cfg.n_layer {
            Some(Head {
                token_embd: l.matrix("token_embd.weight", cfg.n_vocab, e)?,
                output: if l.has("output.weight") {
                    Some(l.matrix("output.weight", cfg.n_vocab, e)?)
                } else {
                    None
                },
                output_b: l.opt_vector("output.bias", cfg.n_vocab)?,
                output_norm_w: l.vector("output_norm.weight", e)?,
                output_norm_b: l.vector("output_norm.bias", e)?,
            })
        } else {
            None
        };
        let cache_elems = 2usize
            .checked_mul(n_layers)
            .and_then(|v| v.checked_mul(n_ctx))
            .and_then(|v| v.checked_mul(kvw))
            .ok_or_else(|| anyhow!("a KV cache of {n_ctx} positions overflows"))?;
        let cache = dev
            .alloc_zeroed(cache_elems * 2)
            .with_context(|| format!("allocating a {n_ctx}-position KV cache on the GPU"))?;
        Ok(CudaPhi2 {
            dev: dev.clone(),
            layers,
            head,
            cache,
            n_ctx,
            len: 0,
            work: None,
            scratch: Scratch::new(),
            cfg,
        })
    }

    pub fn config(&self) -> &Phi2Config {
        &self.cfg
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Layers on the device (the first ones of the model).
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Whether the whole model is on the device (embedding table and LM head too), so that
    /// [`CudaPhi2::forward`] gives logits.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Positions in the KV cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity of the KV cache.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Forgets positions `len..` (a shorter prefix is kept; the cache rows are overwritten by
    /// the next forward).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    fn ensure_work(&mut self, t: usize) -> Result<()> {
        if self.work.as_ref().is_some_and(|w| w.tokens >= t) {
            return Ok(());
        }
        self.work = None;
        let c = &self.cfg;
        let width = c.n_embd + 2 * c.kv_width();
        let d = &self.dev;
        let logits = match self.head {
            Some(_) => Some(d.alloc(f32_bytes(t * c.n_vocab))?),
            None => None,
        };
        self.work = Some(Work {
            tokens: t,
            x: d.alloc(f32_bytes(t * c.n_embd))?,
            h: d.alloc(f32_bytes(t * c.n_embd))?,
            qkv: d.alloc(f32_bytes(t * width))?,
            att: d.alloc(f32_bytes(t * c.n_embd))?,
            a: d.alloc(f32_bytes(t * c.n_embd))?,
            up: d.alloc(f32_bytes(t * c.n_ff))?,
            m: d.alloc(f32_bytes(t * c.n_embd))?,
            xq: d.alloc(q8_1_bytes(c.n_embd.max(c.n_ff), t.min(GEMV_MAX_COLS)))?,
            logits,
        });
        Ok(())
    }

    /// Runs input embeddings `x` (`[T, n_embd]`, positions `len .. len + T`) through the model,
    /// appending to the KV cache; returns logits `[T, n_vocab]` when `all_logits`, else the last
    /// position's `[n_vocab]` (the CPU `Phi2Model::forward` contract). Needs the whole model
    /// on the device ([`CudaPhi2::has_head`]).
    pub fn forward(&mut self, x: &[f32], all_logits: bool) -> Result<Vec<f32>> {
        self.need_head("forward")?;
        let t = self.upload_input(x)?;
        self.run_layers(t)?;
        self.head(t, all_logits)
    }

    /// Runs input embeddings `x` (`[T, n_embd]`, positions `len .. len + T`) through the
    /// layers on the device, appending to their KV cache, and returns the hidden state after
    /// the last of them, `[T, n_embd]` (before the final LayerNorm).
    pub fn forward_hidden(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let t = self.upload_input(x)?;
        self.run_layers(t)?;
        let work = self.work.as_ref().expect("allocated by upload_input");
        let x = work.x.slice::<f32>().range(0, t * self.cfg.n_embd);
        Ok(self.dev.to_vec(x)?)
    }

    fn need_head(&self, what: &str) -> Result<()> {
        if self.head.is_none() {
            bail!(
                "{what}: only the first {} of {} layers are on the GPU (the LM head runs on the CPU)",
                self.layers.len(),
                self.cfg.n_layer
            );
        }
        Ok(())
    }

    /// Checks `x` and copies it into the work buffer; returns its row count.
    fn upload_input(&mut self, x: &[f32]) -> Result<usize> {
        let e = self.cfg.n_embd;
        if x.is_empty() || !x.len().is_multiple_of(e) {
            bail!("forward: input is not a whole number of {e}-wide rows");
        }
        let t = x.len() / e;
        self.check_room(t)?;
        self.ensure_work(t)?;
        let work = self.work.as_ref().expect("allocated above");
        self.dev.write(work.x.slice::<f32>().range(0, t * e), x)?;
        Ok(t)
    }

    /// [`CudaPhi2::forward`] from token ids (the embedding rows are gathered on the device).
    pub fn forward_tokens(&mut self, ids: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.need_head("forward_tokens")?;
        if ids.is_empty() {
            bail!("forward: no tokens");
        }
        let t = ids.len();
        self.check_room(t)?;
        self.ensure_work(t)?;
        let work = self.work.as_ref().expect("allocated above");
        let head = self.head.as_ref().expect("checked above");
        self.dev.get_rows_host_ids(
            &head.token_embd,
            ids,
            work.x.slice::<f32>().range(0, t * self.cfg.n_embd),
        )?;
        self.run_layers(t)?;
        self.head(t, all_logits)
    }

    fn check_room(&self, t: usize) -> Result<()> {
        if self.len + t > self.n_ctx {
            bail!(
                "the sequence needs {} positions but the context holds {} (use a larger --ctx)",
                self.len + t,
                self.n_ctx
            );
        }
        Ok(())
    }

    /// Every layer on the device over the `t` rows of the work buffer.
    fn run_layers(&mut self, t: usize) -> Result<()> {
        let pos0 = self.len;
        for il in 0..self.layers.len() {
            self.layer(il, t, pos0)?;
        }
        self.len = pos0 + t;
        Ok(())
    }

    fn layer(&mut self, il: usize, t: usize, pos0: usize) -> Result<()> {
        let CudaPhi2 {
            dev,
            cfg,
            layers,
            cache,
            n_ctx,
            work,
            scratch,
            ..
        } = self;
        let w = work.as_ref().expect("allocated by ensure_work");
        let layer = &layers[il];
        let (e, kvw, hd, ff) = (cfg.n_embd, cfg.kv_width(), cfg.head_dim, cfg.n_ff);
        let width = e + 2 * kvw;
        let x = w.x.slice::<f32>().range(0, t * e);
        let h = w.h.slice::<f32>().range(0, t * e);
        let qkv = w.qkv.slice::<f32>().range(0, t * width);
        let att = w.att.slice::<f32>().range(0, t * e);
        let a = w.a.slice::<f32>().range(0, t * e);
        let up = w.up.slice::<f32>().range(0, t * ff);
        let m = w.m.slice::<f32>().range(0, t * e);

        // decode with quantized weights: fewer launches (module documentation)
        let fused = t <= GEMV_MAX_COLS
            && [&layer.qkv, &layer.ffn_up, &layer.ffn_down]
                .iter()
                .all(|w| w.is_quantized())
            && e % 32 == 0
            && ff % 32 == 0;
        let xq = w.xq.slice::<u8>();

        // 1. shared input LayerNorm
        let (norm_w, norm_b) = (
            Some(layer.attn_norm_w.slice()),
            Some(layer.attn_norm_b.slice()),
        );
        if fused {
            dev.layer_norm_q8_1(x, h, xq, norm_w, norm_b, e, t, cfg.norm_eps)?;
        } else {
            let rows = Rows::contiguous(t, e);
            dev.layer_norm(x, h, norm_w, norm_b, e, rows, cfg.norm_eps)?;
        }

        // 2. attention branch: fused QKV projection, rows [q | k | v]; the MLP's up projection
        // reads the same normalized input, so both run here (fused decode quantizes `h` once)
        if fused {
            dev.gemv_q8_1(&layer.qkv, xq, t, opt_slice(&layer.qkv_b), qkv)?;
            dev.gemv_q8_1(&layer.ffn_up, xq, t, opt_slice(&layer.ffn_up_b), up)?;
        } else {
            dev.matmul(&layer.qkv, h, t, opt_slice(&layer.qkv_b), qkv, scratch)?;
            dev.matmul(&layer.ffn_up, h, t, opt_slice(&layer.ffn_up_b), up, scratch)?;
        }
        let q_part = qkv;
        let k_part = qkv.tail(e);
        let v_part = qkv.tail(e + kvw);
        let head_rows = |groups| Rows {
            tokens: t,
            groups,
            ld_tok: width,
            ld_grp: hd,
        };
        if let Some((nw, nb)) = &layer.q_norm {
            let r = head_rows(cfg.n_head);
            dev.layer_norm(
                q_part,
                q_part,
                Some(nw.slice()),
                Some(nb.slice()),
                hd,
                r,
                cfg.norm_eps,
            )?;
        }
        if let Some((nw, nb)) = &layer.k_norm {
            let r = head_rows(cfg.n_head_kv);
            dev.layer_norm(
                k_part,
                k_part,
                Some(nw.slice()),
                Some(nb.slice()),
                hd,
                r,
                cfg.norm_eps,
            )?;
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let (nr, theta) = (cfg.n_rot, cfg.rope_theta);
        dev.rope_neox(q_part, t, cfg.n_head, hd, nr, width, pos0, theta, scale)?;
        dev.rope_neox(k_part, t, cfg.n_head_kv, hd, nr, width, pos0, theta, 1.0)?;
        let (k_cache, v_cache) = layer_cache(cache, il, *n_ctx, kvw);
        let k_new = k_cache.range(pos0 * kvw, t * kvw);
        let v_new = v_cache.range(pos0 * kvw, t * kvw);
        dev.copy_f32_to_f16(k_part, width, k_new, kvw, kvw, t)?;
        dev.copy_f32_to_f16(v_part, width, v_new, kvw, kvw, t)?;
        let n_kv = pos0 + t;
        let shape = AttentionShape {
            n_q: t,
            n_kv,
            n_head: cfg.n_head,
            n_head_kv: cfg.n_head_kv,
            head_dim: hd,
            ld_q: width,
            ld_kv: kvw,
            ld_out: e,
            scale: 1.0, // q is pre-scaled
            causal: Some(pos0),
        };
        let kv = KvSlices::F16 {
            k: k_cache.range(0, n_kv * kvw),
            v: v_cache.range(0, n_kv * kvw),
        };
        dev.attention(q_part, kv, att, &shape, scratch)?;
        dev.matmul(
            &layer.attn_out,
            att,
            t,
            opt_slice(&layer.attn_out_b),
            a,
            scratch,
        )?;
        if let Some(g) = &layer.post_attn_norm {
            dev.rms_norm(
                a,
                a,
                Some(g.slice()),
                e,
                Rows::contiguous(t, e),
                cfg.rms_eps,
            )?;
        }

        // 3. MLP branch on the same normalized input (parallel residual; `up` came with QKV),
        // 4. x ← x + (attn + mlp)
        let down_b = opt_slice(&layer.ffn_down_b);
        if fused {
            dev.gelu_tanh_quantize_q8_1(up, ff, t, xq)?;
            dev.gemv_q8_1_residual(&layer.ffn_down, xq, t, down_b, x, a, x)?;
        } else {
            dev.gelu_tanh(up, up, t * ff)?;
            dev.matmul(&layer.ffn_down, up, t, down_b, m, scratch)?;
            dev.add3(x, a, m, x, t * e)?;
        }
        Ok(())
    }

    fn head(&mut self, t: usize, all_logits: bool) -> Result<Vec<f32>> {
        let CudaPhi2 {
            dev,
            cfg,
            work,
            scratch,
            head,
            ..
        } = self;
        let Head {
            token_embd,
            output,
            output_b,
            output_norm_w,
            output_norm_b,
        } = head.as_ref().expect("checked by the callers");
        let w = work.as_ref().expect("allocated by ensure_work");
        let e = cfg.n_embd;
        let (first, rows) = if all_logits { (0, t) } else { (t - 1, 1) };
        let x = w.x.slice::<f32>().range(first * e, rows * e);
        let h = w.h.slice::<f32>().range(0, rows * e);
        dev.layer_norm(
            x,
            h,
            Some(output_norm_w.slice()),
            Some(output_norm_b.slice()),
            e,
            Rows::contiguous(rows, e),
            cfg.norm_eps,
        )?;
        let logits = w
            .logits
            .as_ref()
            .expect("allocated with the head")
            .slice::<f32>()
            .range(0, rows * cfg.n_vocab);
        let head = output.as_ref().unwrap_or(token_embd);
        let bias = output_b.as_ref().map(|b| b.slice::<f32>());
        dev.matmul(head, h, rows, bias, logits, scratch)?;
        Ok(dev.to_vec(logits)?)
    }
}

fn opt_slice(b: &Option<DeviceBuffer>) -> Option<DevSlice<'_, f32>> {
    b.as_ref().map(|b| b.slice::<f32>())
}

/// Layer `il`'s K and V cache matrices (`[n_ctx, kvw]` f16 each).
fn layer_cache(
    cache: &DeviceBuffer,
    il: usize,
    n_ctx: usize,
    kvw: usize,
) -> (DevSlice<'_, u16>, DevSlice<'_, u16>) {
    let per = n_ctx * kvw;
    let all = cache.slice::<u16>();
    (
        all.range(2 * il * per, per),
        all.range((2 * il + 1) * per, per),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::CacheType;

    /// `models/tiny/tinygptv-stage3-f16.gguf` (or `TINYGPTV_TINY_MODEL`, for test binaries run
    /// away from the source tree).
    fn tiny_model() -> Option<Phi2Model> {
        let path = std::env::var_os("TINYGPTV_TINY_MODEL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../models/tiny/tinygptv-stage3-f16.gguf")
            });
        if !path.is_file() {
            eprintln!("note: {} missing; test skipped", path.display());
            return None;
        }
        Some(crate::llm::load_language_model(&path).unwrap().model)
    }

    /// The device forward against the CPU forward, on the CPU emulator of the kernels (and on
    /// a GPU when there is one): a 5-token prompt (GEMV path, f32 activations for the F16
    /// weights), a decode step, and a 12-token prompt (tensor-core GEMM over f16 activations).
    #[test]
    fn forward_matches_the_cpu_on_the_tiny_model() {
        let Some(model) = tiny_model() else { return };
        let env_is = |k: &str, v: &str| std::env::var(k).is_ok_and(|x| x == v);
        let mut devices = Vec::new();
        if !env_is("TINYGPTV_CUDA_EMU", "off") {
            match Device::emulator() {
                Ok(d) => devices.push(d),
                Err(e @ kernels::cuda::CudaError::NoCompiler(_)) => {
                    eprintln!("note: CUDA emulator unavailable: {e}")
                }
                Err(e) => panic!("{e}"),
            }
        }
        match Device::cuda(0) {
            Ok(d) => devices.push(d),
            Err(e) if env_is("TINYGPTV_REQUIRE_CUDA", "1") => panic!("{e}"),
            Err(e) => eprintln!("note: no GPU for this test: {e}"),
        }
        let vocab = model.cfg.n_vocab as u32;
        let prompt: Vec<u32> = [5u32, 17, 300, 42, 7].iter().map(|v| v % vocab).collect();
        let long: Vec<u32> = (0..12u32).map(|i| (i * 97 + 3) % vocab).collect();
        let cpu_run = |ids_list: &[&[u32]]| -> Vec<Vec<f32>> {
            let mut cache = model.new_cache(CacheType::F16, 64);
            ids_list
                .iter()
                .map(|ids| {
                    let x = model.embed_tokens(ids).unwrap();
                    model.forward(x, &mut cache, true).unwrap()
                })
                .collect()
        };
        let want_a = cpu_run(&[&prompt, &[99 % vocab]]);
        let want_b = cpu_run(&[&long]);
        for dev in devices {
            let mut g = CudaPhi2::load(&dev, &model, 64).unwrap();
            let got_a = vec![
                g.forward_tokens(&prompt, true).unwrap(),
                g.forward(&model.embed_tokens(&[99 % vocab]).unwrap(), true)
                    .unwrap(),
            ];
            g.clear();
            let got_b = vec![g.forward_tokens(&long, true).unwrap()];
            for (what, got, want, tol) in [
                ("prompt + decode (GEMV)", &got_a, &want_a, 1e-4f32),
                ("12-token prompt (GEMM)", &got_b, &want_b, 1e-3),
            ] {
                for (g, w) in got.iter().zip(want) {
                    assert_eq!(g.len(), w.len());
                    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    eprintln!(
                        "{} {what}: max |Δlogit| {diff:.2e}, logits up to {scale:.2}",
                        dev.describe()
                    );
                    assert!(
                        diff <= tol * (1.0 + scale),
                        "{} {what}: max |Δlogit| {diff} (logits up to {scale})",
                        dev.describe()
                    );
                }
            }
        }
    }
}
