//! The TinyGPT-V vision tower on the GPU: `crate::model::vision::VisionTower::encode`, op for
//! op, with every weight in device memory. Only the patches go in (cut out of the pixels on
//! the host) and the visual tokens come out.
//!
//! EVA ViT: patch-embedding matmul, class token and position table → per block
//! `x += attn(LN1(x))` (fused QKV matmul, non-causal softmax attention over f32 keys/values,
//! output matmul) and `x += fc2(gelu_erf(fc1(LN2(x))))` → `ln_vision`. Q-Former (BERT post-LN,
//! query branch only): LayerNorm of the learned queries → per layer self-attention,
//! cross-attention over the image features in the layers that have it, FFN, each followed by
//! `h = LN(h + sublayer(h))` → `llama_proj` → `llama_proj2`.

use anyhow::{bail, Result};
use kernels::cuda::{
    AttentionShape, DevSlice, Device, DeviceBuffer, DeviceWeight, KvSlices, Rows, Scratch,
};

use super::phi2::Loader;
use crate::backend::ImageEncoder;
use crate::model::vision::{self, TowerParams, VisionConfig, VisionTower};

/// A linear layer on the device.
pub(crate) struct Linear {
    w: DeviceWeight,
    b: Option<DeviceBuffer>,
}

pub(crate) struct Norm {
    w: DeviceBuffer,
    b: DeviceBuffer,
}

type VitBlock = vision::VitBlock<Linear, Norm>;
type QFormerLayer = vision::QFormerLayer<Linear, Norm>;

/// Activation buffers (the sizes are fixed by the tower).
struct Work {
    patches: DeviceBuffer,
    x: DeviceBuffer,
    h: DeviceBuffer,
    qkv: DeviceBuffer,
    att: DeviceBuffer,
    a: DeviceBuffer,
    up: DeviceBuffer,
    qh: DeviceBuffer,
    qq: DeviceBuffer,
    /// Keys / values of self- (`n_query` rows) and cross-attention (`1 + n_patches` rows).
    qk: DeviceBuffer,
    qv: DeviceBuffer,
    qo: DeviceBuffer,
    qout: DeviceBuffer,
    qup: DeviceBuffer,
    p0: DeviceBuffer,
    tokens: DeviceBuffer,
}

/// The vision tower of `tower` resident on a CUDA device.
pub struct CudaVision<'t> {
    tower: &'t VisionTower,
    dev: Device,
    patch_embd: Linear,
    class_embd: DeviceBuffer,
    position_embd: DeviceBuffer,
    blocks: Vec<VitBlock>,
    post_ln: Norm,
    query: DeviceBuffer,
    embd_norm: Norm,
    qformer: Vec<QFormerLayer>,
    proj0: Linear,
    proj1: Linear,
    work: Work,
    scratch: Scratch,
}

/// The first `len` floats of `b`.
fn f(b: &DeviceBuffer, len: usize) -> DevSlice<'_, f32> {
    b.slice::<f32>().range(0, len)
}

fn f32_buf(dev: &Device, n: usize) -> Result<DeviceBuffer> {
    Ok(dev.alloc(n.max(1) * std::mem::size_of::<f32>())?)
}

impl TowerParams for Loader<'_> {
    type Linear = Linear;
    type Norm = Norm;

    fn linear(&self, prefix: &str, rows: usize, cols: usize) -> Result<Linear> {
        Ok(Linear {
            w: self.flat_matrix(&format!("{prefix}.weight"), rows, cols)?,
            b: self.opt_vector(&format!("{prefix}.bias"), rows)?,
        })
    }

    fn norm(&self, prefix: &str, len: usize) -> Result<Norm> {
        Ok(Norm {
            w: self.vector(&format!("{prefix}.weight"), len)?,
            b: self.vector(&format!("{prefix}.bias"), len)?,
        })
    }
}

impl<'t> CudaVision<'t> {
    /// Uploads `tower`'s weights to `dev` and allocates the activations of one image.
    pub fn load(dev: &Device, tower: &'t VisionTower) -> Result<CudaVision<'t>> {
        let cfg = &tower.cfg;
        let l = Loader {
            dev,
            f: &tower.file,
        };
        let (d, p, qd) = (cfg.width, cfg.patch_size, cfg.q_width);
        for (what, width, heads) in [("ViT", d, cfg.n_head), ("Q-Former", qd, cfg.q_n_head)] {
            let hd = width / heads.max(1);
            if hd > kernels::cuda::ATTENTION_MAX_HEAD_DIM {
                bail!(
                    "{}: the {what}'s head_dim {hd} exceeds the CUDA attention kernel's {}",
                    tower.file.path().display(),
                    kernels::cuda::ATTENTION_MAX_HEAD_DIM
                );
            }
        }
        let n_pos = cfg.n_patches() + 1;
        let (blocks, qformer) = vision::load_layers(&l, cfg)?;
        let proj0_rows = l.info("mm.0.weight")?.dims.get(1).copied().unwrap_or(0) as usize;
        let proj0 = l.linear("mm.0", proj0_rows, qd)?;
        let proj1 = l.linear("mm.1", cfg.n_embd_llm, proj0_rows)?;

        let (t, nq) = (n_pos, cfg.q_count);
        let work = Work {
            patches: f32_buf(dev, cfg.n_patches() * 3 * p * p)?,
            x: f32_buf(dev, t * d)?,
            h: f32_buf(dev, t * d)?,
            qkv: f32_buf(dev, t * 3 * d)?,
            att: f32_buf(dev, t * d)?,
            a: f32_buf(dev, t * d)?,
            up: f32_buf(dev, t * cfg.n_ff)?,
            qh: f32_buf(dev, nq * qd)?,
            qq: f32_buf(dev, nq * qd)?,
            qk: f32_buf(dev, t.max(nq) * qd)?,
            qv: f32_buf(dev, t.max(nq) * qd)?,
            qo: f32_buf(dev, nq * qd)?,
            qout: f32_buf(dev, nq * qd)?,
            qup: f32_buf(dev, nq * cfg.q_n_ff)?,
            p0: f32_buf(dev, nq * proj0_rows)?,
            tokens: f32_buf(dev, nq * cfg.n_embd_llm)?,
        };
        Ok(CudaVision {
            tower,
            dev: dev.clone(),
            patch_embd: l.linear("v.patch_embd", d, 3 * p * p)?,
            class_embd: l.vector("v.class_embd", d)?,
            position_embd: l.vector("v.position_embd.weight", n_pos * d)?,
            blocks,
            post_ln: l.norm("v.post_ln", d)?,
            query: l.vector("qformer.query", nq * qd)?,
            embd_norm: l.norm("qformer.embd_norm", qd)?,
            qformer,
            proj0,
            proj1,
            work,
            scratch: Scratch::new(),
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.tower.cfg
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Normalized pixels `[3, S, S]` → visual tokens `[n_query, n_embd_llm]`.
    pub fn encode(&mut self, pixels: &[f32]) -> Result<Vec<f32>> {
        let cfg = self.tower.cfg.clone();
        let (s, p) = (cfg.image_size, cfg.patch_size);
        if pixels.len() != 3 * s * s {
            bail!(
                "expected {} pixel values for a {s}×{s} image, got {}",
                3 * s * s,
                pixels.len()
            );
        }
        // patches flattened in (channel, ky, kx) order, as the CPU tower cuts them
        let g = s / p;
        let mut patches = vec![0.0; g * g * 3 * p * p];
        for gy in 0..g {
            for gx in 0..g {
                let row = &mut patches[(gy * g + gx) * 3 * p * p..][..3 * p * p];
                for c in 0..3 {
                    for ky in 0..p {
                        let src = &pixels[c * s * s + (gy * p + ky) * s + gx * p..][..p];
                        row[(c * p + ky) * p..][..p].copy_from_slice(src);
                    }
                }
            }
        }
        self.dev.write(
            self.work.patches.slice::<f32>().range(0, patches.len()),
            &patches,
        )?;
        self.vit(&cfg)?;
        self.qformer(&cfg)?;
        let nq = cfg.q_count;
        let w = &self.work;
        let q = w.qh.slice::<f32>().range(0, nq * cfg.q_width);
        let p0 = w.p0.slice::<f32>().range(0, nq * self.proj0.w.rows);
        let tokens = w.tokens.slice::<f32>().range(0, nq * cfg.n_embd_llm);
        mm(&self.dev, &mut self.scratch, &self.proj0, q, nq, p0)?;
        mm(&self.dev, &mut self.scratch, &self.proj1, p0, nq, tokens)?;
        Ok(self.dev.to_vec(tokens)?)
    }

    /// The ViT over the patches in the work buffer: features after `ln_vision` in `work.x`.
    fn vit(&mut self, cfg: &VisionConfig) -> Result<()> {
        let CudaVision {
            dev,
            work: w,
            scratch,
            patch_embd,
            class_embd,
            position_embd,
            blocks,
            post_ln,
            ..
        } = self;
        let dev = &*dev;
        let d = cfg.width;
        let n = cfg.n_patches();
        let t = n + 1;
        let x = f(&w.x, t * d);
        let h = f(&w.h, t * d);
        let qkv = f(&w.qkv, t * 3 * d);
        let att = f(&w.att, t * d);
        let a = f(&w.a, t * d);
        let up = f(&w.up, t * cfg.n_ff);
        let patches = f(&w.patches, n * patch_embd.w.cols);

        // x = [class; patches·Wᵀ + b] + position table
        mm(dev, scratch, patch_embd, patches, n, x.tail(d))?;
        dev.copy_f32(class_embd.slice(), d, x, d, d, 1)?;
        dev.add(x, position_embd.slice(), x, t * d)?;

        let hd = d / cfg.n_head;
        let shape = AttentionShape {
            n_q: t,
            n_kv: t,
            n_head: cfg.n_head,
            n_head_kv: cfg.n_head,
            head_dim: hd,
            ld_q: 3 * d,
            ld_kv: 3 * d,
            ld_out: d,
            scale: 1.0 / (hd as f32).sqrt(),
            causal: None,
        };
        let rows = Rows::contiguous(t, d);
        for b in blocks.iter() {
            // x += attn(LN1(x))
            layer_norm(dev, x, h, &b.ln1, d, rows, cfg.eps)?;
            mm(dev, scratch, &b.qkv, h, t, qkv)?;
            let kv = KvSlices::F32 {
                k: qkv.tail(d),
                v: qkv.tail(2 * d),
            };
            dev.attention(qkv, kv, att, &shape, scratch)?;
            mm(dev, scratch, &b.attn_out, att, t, a)?;
            dev.add(x, a, x, t * d)?;
            // x += mlp(LN2(x))
            layer_norm(dev, x, h, &b.ln2, d, rows, cfg.eps)?;
            mm(dev, scratch, &b.ffn_up, h, t, up)?;
            dev.gelu_erf(up, up, t * cfg.n_ff)?;
            mm(dev, scratch, &b.ffn_down, up, t, a)?;
            dev.add(x, a, x, t * d)?;
        }
        layer_norm(dev, x, x, post_ln, d, rows, cfg.post_ln_eps)?;
        Ok(())
    }

    /// The Q-Former over the features in `work.x`: query outputs in `work.qh`.
    fn qformer(&mut self, cfg: &VisionConfig) -> Result<()> {
        let CudaVision {
            dev,
            work: w,
            scratch,
            query,
            embd_norm,
            qformer,
            ..
        } = self;
        let dev = &*dev;
        let (qd, nq, d) = (cfg.q_width, cfg.q_count, cfg.width);
        let t_img = cfg.n_patches() + 1;
        let feats = f(&w.x, t_img * d);
        let h = f(&w.qh, nq * qd);
        let q = f(&w.qq, nq * qd);
        let o = f(&w.qo, nq * qd);
        let out = f(&w.qout, nq * qd);
        let up = f(&w.qup, nq * cfg.q_n_ff);
        let rows = Rows::contiguous(nq, qd);
        let hd = qd / cfg.q_n_head;
        let shape = |n_kv| AttentionShape {
            n_q: nq,
            n_kv,
            n_head: cfg.q_n_head,
            n_head_kv: cfg.q_n_head,
            head_dim: hd,
            ld_q: qd,
            ld_kv: qd,
            ld_out: qd,
            scale: 1.0 / (hd as f32).sqrt(),
            causal: None,
        };

        layer_norm(dev, query.slice(), h, embd_norm, qd, rows, cfg.q_eps)?;
        // BERT post-LN: h = LN(h + sublayer(h))
        let residual_norm = |dev: &Device, out: DevSlice<'_, f32>, n: &Norm| -> Result<()> {
            dev.add(h, out, h, nq * qd)?;
            layer_norm(dev, h, h, n, qd, rows, cfg.q_eps)
        };
        for layer in qformer.iter() {
            let k = f(&w.qk, nq * qd);
            let v = f(&w.qv, nq * qd);
            mm(dev, scratch, &layer.attn_q, h, nq, q)?;
            mm(dev, scratch, &layer.attn_k, h, nq, k)?;
            mm(dev, scratch, &layer.attn_v, h, nq, v)?;
            dev.attention(q, KvSlices::F32 { k, v }, o, &shape(nq), scratch)?;
            mm(dev, scratch, &layer.attn_out, o, nq, out)?;
            residual_norm(dev, out, &layer.attn_out_norm)?;
            if let Some(c) = &layer.cross {
                let k = f(&w.qk, t_img * qd);
                let v = f(&w.qv, t_img * qd);
                mm(dev, scratch, &c.q, h, nq, q)?;
                mm(dev, scratch, &c.k, feats, t_img, k)?;
                mm(dev, scratch, &c.v, feats, t_img, v)?;
                dev.attention(q, KvSlices::F32 { k, v }, o, &shape(t_img), scratch)?;
                mm(dev, scratch, &c.out, o, nq, out)?;
                residual_norm(dev, out, &c.out_norm)?;
            }
            mm(dev, scratch, &layer.ffn_up, h, nq, up)?;
            dev.gelu_erf(up, up, nq * cfg.q_n_ff)?;
            mm(dev, scratch, &layer.ffn_down, up, nq, out)?;
            residual_norm(dev, out, &layer.ffn_out_norm)?;
        }
        Ok(())
    }
}

impl ImageEncoder for CudaVision<'_> {
    fn tower(&self) -> &VisionTower {
        self.tower
    }

    fn encode(&mut self, pixels: &[f32]) -> Result<Vec<f32>> {
        CudaVision::encode(self, pixels)
    }
}

/// `y = x·Wᵀ + b` for `m` rows.
fn mm(
    dev: &Device,
    scratch: &mut Scratch,
    lin: &Linear,
    x: DevSlice<'_, f32>,
    m: usize,
    y: DevSlice<'_, f32>,
) -> Result<()> {
    let bias = lin.b.as_ref().map(|b| b.slice::<f32>());
    Ok(dev.matmul(&lin.w, x, m, bias, y, scratch)?)
}

/// LayerNorm with weight and bias; `y` may be `x`.
fn layer_norm(
    dev: &Device,
    x: DevSlice<'_, f32>,
    y: DevSlice<'_, f32>,
    n: &Norm,
    dim: usize,
    rows: Rows,
    eps: f32,
) -> Result<()> {
    Ok(dev.layer_norm(x, y, Some(n.w.slice()), Some(n.b.slice()), dim, rows, eps)?)
}
