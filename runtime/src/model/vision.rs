//! The TinyGPT-V vision tower from an mmproj-style GGUF: EVA ViT-g → `ln_vision` → BLIP-2
//! Q-Former (query branch only) → `llama_proj` → `llama_proj2`, giving `[n_query, n_embd_llm]`.
//!
//! Names and keys are documented in `crate::arch`. Every matmul goes through `linear::matmul`
//! over all tokens at once; attention works one head at a time, one query row at a time, so
//! memory stays O(T) per worker instead of `[heads, T, T]`.

use anyhow::{anyhow, bail, Context, Result};
use kernels::gguf::{GgufFile, TensorInfo};
use kernels::GgmlType;

use crate::arch;
use crate::attention::attend_head;
use crate::linear::{matmul_act, matmul_many, Activation, MatmulPart, RepackPolicy, Weight};
use crate::ops;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub n_head: usize,
    pub n_ff: usize,
    pub n_layer: usize,
    pub eps: f32,
    pub post_ln_eps: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub q_count: usize,
    pub q_width: usize,
    pub q_n_head: usize,
    pub q_n_ff: usize,
    pub q_n_layer: usize,
    pub q_eps: f32,
    pub q_cross_layers: Vec<usize>,
    pub n_embd_llm: usize,
}

impl VisionConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<VisionConfig> {
        let name = f.path().display().to_string();
        match f.architecture() {
            Some(arch::ARCH_CLIP) => {}
            other => bail!("{name}: not a vision (mmproj) file: general.architecture is {other:?}, expected \"clip\""),
        }
        let proj = f.get_str("clip.projector_type")?;
        if proj != arch::PROJECTOR_QFORMER {
            bail!(
                "{name}: projector type '{proj}' is not supported (expected '{}')",
                arch::PROJECTOR_QFORMER
            );
        }
        let u = |k: &str| -> Result<usize> { Ok(f.get_u32(k)? as usize) };
        let triple = |k: &str| -> Result<[f32; 3]> {
            let v = f
                .get(k)
                .and_then(|v| v.as_f32_array())
                .ok_or_else(|| anyhow!("{name}: {k} missing or not an array of FLOAT32"))?;
            <[f32; 3]>::try_from(v.as_slice())
                .map_err(|_| anyhow!("{name}: {k} must have 3 values"))
        };
        let cross: Vec<usize> = f
            .get(arch::KEY_QFORMER_CROSS_LAYERS)
            .and_then(|v| v.as_i32_array())
            .ok_or_else(|| {
                anyhow!(
                    "{name}: {} missing or not an array of INT32",
                    arch::KEY_QFORMER_CROSS_LAYERS
                )
            })?
            .into_iter()
            .map(|i| {
                usize::try_from(i)
                    .map_err(|_| anyhow!("{name}: negative cross-attention layer {i}"))
            })
            .collect::<Result<_>>()?;
        let cfg = VisionConfig {
            image_size: u("clip.vision.image_size")?,
            patch_size: u("clip.vision.patch_size")?,
            width: u("clip.vision.embedding_length")?,
            n_head: u("clip.vision.attention.head_count")?,
            n_ff: u("clip.vision.feed_forward_length")?,
            n_layer: u("clip.vision.block_count")?,
            eps: f.get_f32("clip.vision.attention.layer_norm_epsilon")?,
            post_ln_eps: f.get_f32(arch::KEY_VISION_POST_LN_EPS)?,
            mean: triple("clip.vision.image_mean")?,
            std: triple("clip.vision.image_std")?,
            q_count: u("clip.qformer.query_count")?,
            q_width: u("clip.qformer.embedding_length")?,
            q_n_head: u("clip.qformer.attention.head_count")?,
            q_n_ff: u("clip.qformer.feed_forward_length")?,
            q_n_layer: u("clip.qformer.block_count")?,
            q_eps: f.get_f32("clip.qformer.attention.layer_norm_epsilon")?,
            q_cross_layers: cross,
            n_embd_llm: u("clip.vision.projection_dim")?,
        };
        if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
            bail!(
                "{name}: image size {} is not a multiple of patch size {}",
                cfg.image_size,
                cfg.patch_size
            );
        }
        if cfg.n_head == 0
            || !cfg.width.is_multiple_of(cfg.n_head)
            || cfg.q_n_head == 0
            || !cfg.q_width.is_multiple_of(cfg.q_n_head)
        {
            bail!("{name}: head counts do not divide the widths");
        }
        if cfg.image_size > 4096 {
            bail!(
                "{name}: image size {} is unreasonably large",
                cfg.image_size
            );
        }
        Ok(cfg)
    }

    pub fn n_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

// ---------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------

/// A linear layer: matrix in the map (or repacked, see [`VisionTower::repack_vit`]), bias
/// copied to f32.
pub(crate) struct Linear {
    w: TensorInfo,
    rows: usize,
    cols: usize,
    b: Option<Vec<f32>>,
    repacked: Option<kernels::repack::RepackedMatrix>,
}

pub(crate) struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

/// Where a tower's layers come from: views of the GGUF file on the CPU (this file), device
/// copies in the CUDA backend. [`load_layers`] walks the same tensor names for both.
pub(crate) trait TowerParams {
    type Linear;
    type Norm;
    /// `{prefix}.weight` with `rows` outputs of `cols` inputs, optional `{prefix}.bias`.
    fn linear(&self, prefix: &str, rows: usize, cols: usize) -> Result<Self::Linear>;
    /// `{prefix}.weight` and `{prefix}.bias`, `len` each.
    fn norm(&self, prefix: &str, len: usize) -> Result<Self::Norm>;
}

/// One EVA ViT block (pre-norm attention and MLP).
pub(crate) struct VitBlock<L, N> {
    pub(crate) ln1: N,
    pub(crate) qkv: L,
    pub(crate) attn_out: L,
    pub(crate) ln2: N,
    pub(crate) ffn_up: L,
    pub(crate) ffn_down: L,
}

/// One BERT-style Q-Former layer (post-norm), with cross-attention to the image every
/// `cross_attention_freq` layers.
pub(crate) struct QFormerLayer<L, N> {
    pub(crate) attn_q: L,
    pub(crate) attn_k: L,
    pub(crate) attn_v: L,
    pub(crate) attn_out: L,
    pub(crate) attn_out_norm: N,
    pub(crate) cross: Option<CrossAttention<L, N>>,
    pub(crate) ffn_up: L,
    pub(crate) ffn_down: L,
    pub(crate) ffn_out_norm: N,
}

pub(crate) struct CrossAttention<L, N> {
    pub(crate) q: L,
    pub(crate) k: L,
    pub(crate) v: L,
    pub(crate) out: L,
    pub(crate) out_norm: N,
}

/// The ViT blocks and the Q-Former layers of `cfg` (GGUF names `v.blk.N.*`,
/// `qformer.blk.N.*`).
#[allow(clippy::type_complexity)]
pub(crate) fn load_layers<P: TowerParams>(
    l: &P,
    cfg: &VisionConfig,
) -> Result<(
    Vec<VitBlock<P::Linear, P::Norm>>,
    Vec<QFormerLayer<P::Linear, P::Norm>>,
)> {
    let (d, qd) = (cfg.width, cfg.q_width);
    let blocks = (0..cfg.n_layer)
        .map(|i| {
            let pre = format!("v.blk.{i}");
            Ok(VitBlock {
                ln1: l.norm(&format!("{pre}.ln1"), d)?,
                qkv: l.linear(&format!("{pre}.attn_qkv"), 3 * d, d)?,
                attn_out: l.linear(&format!("{pre}.attn_out"), d, d)?,
                ln2: l.norm(&format!("{pre}.ln2"), d)?,
                ffn_up: l.linear(&format!("{pre}.ffn_up"), cfg.n_ff, d)?,
                ffn_down: l.linear(&format!("{pre}.ffn_down"), d, cfg.n_ff)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let qformer = (0..cfg.q_n_layer)
        .map(|i| {
            let pre = format!("qformer.blk.{i}");
            let cross = if cfg.q_cross_layers.contains(&i) {
                Some(CrossAttention {
                    q: l.linear(&format!("{pre}.cross_q"), qd, qd)?,
                    k: l.linear(&format!("{pre}.cross_k"), qd, d)?,
                    v: l.linear(&format!("{pre}.cross_v"), qd, d)?,
                    out: l.linear(&format!("{pre}.cross_out"), qd, qd)?,
                    out_norm: l.norm(&format!("{pre}.cross_out_norm"), qd)?,
                })
            } else {
                None
            };
            Ok(QFormerLayer {
                attn_q: l.linear(&format!("{pre}.attn_q"), qd, qd)?,
                attn_k: l.linear(&format!("{pre}.attn_k"), qd, qd)?,
                attn_v: l.linear(&format!("{pre}.attn_v"), qd, qd)?,
                attn_out: l.linear(&format!("{pre}.attn_out"), qd, qd)?,
                attn_out_norm: l.norm(&format!("{pre}.attn_out_norm"), qd)?,
                cross,
                ffn_up: l.linear(&format!("{pre}.ffn_up"), cfg.q_n_ff, qd)?,
                ffn_down: l.linear(&format!("{pre}.ffn_down"), qd, cfg.q_n_ff)?,
                ffn_out_norm: l.norm(&format!("{pre}.ffn_out_norm"), qd)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((blocks, qformer))
}

pub struct VisionTower {
    pub file: GgufFile,
    pub cfg: VisionConfig,
    patch_embd: Linear,
    class_embd: Vec<f32>,
    position_embd: Vec<f32>,
    blocks: Vec<VitBlock<Linear, Norm>>,
    post_ln: Norm,
    query: Vec<f32>,
    embd_norm: Norm,
    qformer: Vec<QFormerLayer<Linear, Norm>>,
    proj0: Linear,
    proj1: Linear,
}

struct Loader<'a> {
    f: &'a GgufFile,
}

impl Loader<'_> {
    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.f
            .tensor_info(name)
            .ok_or_else(|| anyhow!("{}: missing tensor '{name}'", self.f.path().display()))
    }

    fn floats(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        if info.n_elements() != len as u64 {
            bail!(
                "{}: tensor '{name}' has shape {:?}, expected {len} elements",
                self.f.path().display(),
                info.dims
            );
        }
        let mut out = vec![0.0; len];
        kernels::formats::dequantize_row(info.ty, self.f.tensor_data(info), &mut out)
            .with_context(|| format!("{}: tensor '{name}'", self.f.path().display()))?;
        Ok(out)
    }
}

impl TowerParams for Loader<'_> {
    type Linear = Linear;
    type Norm = Norm;

    fn norm(&self, prefix: &str, len: usize) -> Result<Norm> {
        Ok(Norm {
            w: self.floats(&format!("{prefix}.weight"), len)?,
            b: self.floats(&format!("{prefix}.bias"), len)?,
        })
    }

    /// `{prefix}.weight` with `cols` inputs and `rows` outputs (any shape with that many
    /// elements per row, e.g. the 4-D patch kernel), optional `{prefix}.bias`.
    fn linear(&self, prefix: &str, rows: usize, cols: usize) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        let info = self.info(&name)?;
        let ok = info.n_elements() == (rows * cols) as u64
            && (info.dims[0] as usize).is_multiple_of(info.ty.block_size());
        let row_aligned = cols.is_multiple_of(info.ty.block_size());
        if !ok || !row_aligned {
            bail!(
                "{}: tensor '{name}' has shape {:?} ({}), expected {rows} rows of {cols}",
                self.f.path().display(),
                info.dims,
                info.ty
            );
        }
        if matches!(
            info.ty,
            GgmlType::Q8_1
                | GgmlType::Q8_K
                | GgmlType::I8
                | GgmlType::I16
                | GgmlType::I32
                | GgmlType::I64
                | GgmlType::F64
        ) {
            bail!(
                "{}: tensor '{name}' has type {}, which cannot be used as a weight matrix",
                self.f.path().display(),
                info.ty
            );
        }
        let bname = format!("{prefix}.bias");
        let b = if self.f.tensor_info(&bname).is_some() {
            Some(self.floats(&bname, rows)?)
        } else {
            None
        };
        Ok(Linear {
            w: info.clone(),
            rows,
            cols,
            b,
            repacked: None,
        })
    }
}

impl VisionTower {
    pub fn load(file: GgufFile) -> Result<VisionTower> {
        if let Some(t) = file.tensors().iter().find(|t| t.layout.is_some()) {
            bail!(
                "{}: tensor '{}' is stored in a ×16 interleaved layout ({:?}), which vision \
                 files do not use",
                file.path().display(),
                t.name,
                t.layout.unwrap()
            );
        }
        let cfg = VisionConfig::from_gguf(&file)?;
        let l = Loader { f: &file };
        let (d, p) = (cfg.width, cfg.patch_size);
        let n_pos = cfg.n_patches() + 1;
        let pos_info = l.info("v.position_embd.weight")?;
        if pos_info.n_elements() != (n_pos * d) as u64 {
            bail!(
                "{}: v.position_embd.weight has shape {:?}, expected [{d}, {n_pos}] for image size {}",
                file.path().display(),
                pos_info.dims,
                cfg.image_size
            );
        }
        let (blocks, qformer) = load_layers(&l, &cfg)?;
        let qd = cfg.q_width;
        let proj0_rows = l.info("mm.0.weight")?.dims.get(1).copied().unwrap_or(0) as usize;
        let mut tower = VisionTower {
            patch_embd: l.linear("v.patch_embd", d, 3 * p * p)?,
            class_embd: l.floats("v.class_embd", d)?,
            position_embd: l.floats("v.position_embd.weight", n_pos * d)?,
            blocks,
            post_ln: l.norm("v.post_ln", d)?,
            query: l.floats("qformer.query", cfg.q_count * qd)?,
            embd_norm: l.norm("qformer.embd_norm", qd)?,
            qformer,
            proj0: l.linear("mm.0", proj0_rows, qd)?,
            proj1: l.linear("mm.1", cfg.n_embd_llm, proj0_rows)?,
            cfg,
            file,
        };
        tower.repack_vit(crate::linear::repack_policy() == RepackPolicy::On)?;
        Ok(tower)
    }

    /// Repacks the ViT blocks' matrices into the ×16 layouts where the CPU level has repacked
    /// kernels but no packed GEMM for their type (AVX2: Q4_0 and the K-quants, whose repacked
    /// GEMMs run ≈ 1.05–2× the file layout's tiles), under [`crate::linear::should_repack`]; with
    /// `force` (`TINYGPTV_REPACK=1`) wherever repacked kernels exist. With AVX-512 the packed
    /// GEMMs are as fast, so repacking would only add load time. The file map then drops the
    /// matrices' pages. Returns the bytes repacked by this call.
    pub fn repack_vit(&mut self, force: bool) -> Result<usize> {
        use rayon::prelude::*;
        let kern = kernels::simd::kernels();
        let mut lins: Vec<&mut Linear> = Vec::new();
        for b in &mut self.blocks {
            lins.extend([&mut b.qkv, &mut b.attn_out, &mut b.ffn_up, &mut b.ffn_down]);
        }
        lins.retain(|l| {
            let ty = l.w.ty;
            l.repacked.is_none()
                && crate::linear::should_repack(ty)
                && (force || !kern.has_packed_gemm(ty))
        });
        let file = &self.file;
        lins.par_iter_mut()
            .map(|l| -> Result<usize> {
                let m = kernels::repack::RepackedMatrix::new(
                    l.w.ty,
                    file.tensor_data(&l.w),
                    l.rows,
                    l.cols,
                )
                .with_context(|| format!("{}: repacking '{}'", file.path().display(), l.w.name))?;
                file.release_tensor(&l.w);
                let bytes = m.memory_bytes();
                l.repacked = Some(m);
                Ok(bytes)
            })
            .sum()
    }

    /// Bytes of the matrices held repacked.
    pub fn repacked_bytes(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| [&b.qkv, &b.attn_out, &b.ffn_up, &b.ffn_down])
            .filter_map(|l| l.repacked.as_ref())
            .map(|m| m.memory_bytes())
            .sum()
    }

    fn mm(&self, lin: &Linear, x: &[f32], t: usize) -> Vec<f32> {
        self.mm_act(lin, Activation::Identity, x, t)
    }

    /// `act(x·Wᵀ + b)` (the activation applied inside the matmul's parallel loop).
    fn mm_act(&self, lin: &Linear, act: Activation, x: &[f32], t: usize) -> Vec<f32> {
        let mut y = vec![0.0; t * lin.rows];
        self.mm_act_into(lin, act, x, t, &mut y);
        y
    }

    /// [`Self::mm_act`] into `y` (resized to `t × rows`): the ViT's blocks reuse their
    /// buffers, which zeroing fresh ones for every product would cost ~2 % of an encode.
    fn mm_act_into(&self, lin: &Linear, act: Activation, x: &[f32], t: usize, y: &mut Vec<f32>) {
        y.resize(t * lin.rows, 0.0);
        matmul_act(&self.weight(lin), lin.b.as_deref(), act, x, t, y);
    }

    /// Several products of the same `x` (Q, K, V) as one [`matmul_many`].
    fn mm_many<const N: usize>(&self, lins: [&Linear; N], x: &[f32], t: usize) -> [Vec<f32>; N] {
        let mut ys = lins.map(|lin| vec![0.0; t * lin.rows]);
        let mut parts: Vec<MatmulPart> = lins
            .iter()
            .zip(ys.iter_mut())
            .map(|(lin, y)| MatmulPart::new(self.weight(lin), lin.b.as_deref(), y))
            .collect();
        matmul_many(&mut parts, x, t);
        ys
    }

    fn weight<'a>(&'a self, lin: &'a Linear) -> Weight<'a> {
        Weight {
            ty: lin.w.ty,
            data: self.file.tensor_data(&lin.w),
            rows: lin.rows,
            cols: lin.cols,
            repacked: lin.repacked.as_ref(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Forward
    // -----------------------------------------------------------------------------------------

    /// Normalized pixels `[3, S, S]` → ViT features after `ln_vision`, `[1 + n_patches, width]`.
    pub fn encode_vit(&self, pixels: &[f32]) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let (s, p, d) = (cfg.image_size, cfg.patch_size, cfg.width);
        if pixels.len() != 3 * s * s {
            bail!(
                "expected {} pixel values for a {s}×{s} image, got {}",
                3 * s * s,
                pixels.len()
            );
        }
        // patch embedding as a matmul: each patch flattened in (channel, ky, kx) order
        let g = s / p;
        let n = g * g;
        let mut patches = vec![0.0; n * 3 * p * p];
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
        let emb = self.mm(&self.patch_embd, &patches, n);
        let t = n + 1;
        let mut x = vec![0.0; t * d];
        x[..d].copy_from_slice(&self.class_embd);
        x[d..].copy_from_slice(&emb);
        for (v, pe) in x.iter_mut().zip(&self.position_embd) {
            *v += pe;
        }

        let hd = d / cfg.n_head;
        let mut h = vec![0.0; t * d];
        let (mut qkv, mut a, mut up, mut m) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let identity = Activation::Identity;
        for b in &self.blocks {
            // x += attn(LN1(x))
            ops::layer_norm_into(&x, &mut h, d, &b.ln1.w, Some(&b.ln1.b), cfg.eps);
            self.mm_act_into(&b.qkv, identity, &h, t, &mut qkv);
            let o = attention(&qkv, 3 * d, 0, &qkv, 3 * d, d, 2 * d, t, t, cfg.n_head, hd);
            self.mm_act_into(&b.attn_out, identity, &o, t, &mut a);
            ops::add_assign(&mut x, &a);
            // x += mlp(LN2(x))
            ops::layer_norm_into(&x, &mut h, d, &b.ln2.w, Some(&b.ln2.b), cfg.eps);
            self.mm_act_into(&b.ffn_up, Activation::GeluErf, &h, t, &mut up);
            self.mm_act_into(&b.ffn_down, identity, &up, t, &mut m);
            ops::add_assign(&mut x, &m);
        }
        ops::layer_norm(
            &mut x,
            d,
            &self.post_ln.w,
            Some(&self.post_ln.b),
            cfg.post_ln_eps,
        );
        Ok(x)
    }

    /// Image features `[T, width]` → Q-Former query outputs `[n_query, q_width]`.
    pub fn qformer(&self, feats: &[f32]) -> Vec<f32> {
        let cfg = &self.cfg;
        let (qd, nq) = (cfg.q_width, cfg.q_count);
        let t_img = feats.len() / cfg.width;
        let hd = qd / cfg.q_n_head;
        let mut h = self.query.clone();
        ops::layer_norm(
            &mut h,
            qd,
            &self.embd_norm.w,
            Some(&self.embd_norm.b),
            cfg.q_eps,
        );
        // BERT post-LN: h = LN(sublayer(h) + h)
        let residual_norm = |h: &mut Vec<f32>, out: Vec<f32>, n: &Norm| {
            h.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
            ops::layer_norm(h, qd, &n.w, Some(&n.b), cfg.q_eps);
        };
        for layer in &self.qformer {
            let [q, k, v] = self.mm_many([&layer.attn_q, &layer.attn_k, &layer.attn_v], &h, nq);
            let o = scaled_attention(&q, &k, &v, qd, nq, nq, cfg.q_n_head, hd);
            let out = self.mm(&layer.attn_out, &o, nq);
            residual_norm(&mut h, out, &layer.attn_out_norm);
            if let Some(c) = &layer.cross {
                let q = self.mm(&c.q, &h, nq);
                let [k, v] = self.mm_many([&c.k, &c.v], feats, t_img);
                let o = scaled_attention(&q, &k, &v, qd, nq, t_img, cfg.q_n_head, hd);
                let out = self.mm(&c.out, &o, nq);
                residual_norm(&mut h, out, &c.out_norm);
            }
            let up = self.mm_act(&layer.ffn_up, Activation::GeluErf, &h, nq);
            let out = self.mm(&layer.ffn_down, &up, nq);
            residual_norm(&mut h, out, &layer.ffn_out_norm);
        }
        h
    }

    /// Normalized pixels → visual tokens `[n_query, n_embd_llm]` for the language model.
    pub fn encode(&self, pixels: &[f32]) -> Result<Vec<f32>> {
        let feats = self.encode_vit(pixels)?;
        let q = self.qformer(&feats);
        let p0 = self.mm(&self.proj0, &q, self.cfg.q_count);
        Ok(self.mm(&self.proj1, &p0, self.cfg.q_count))
    }
}

/// Multi-head softmax attention (scores scaled by `head_dim^-0.5`): q, k, v are read from
/// row-major buffers with the given row strides and column offsets (so a fused QKV buffer needs
/// no copies). Heads run in parallel; each gathers its q, k and transposed v into contiguous
/// buffers for [`attend_head`]. Returns `[tq, n_head·hd]`.
#[allow(clippy::too_many_arguments)]
fn attention(
    q: &[f32],
    q_stride: usize,
    q_off: usize,
    kv: &[f32],
    kv_stride: usize,
    k_off: usize,
    v_off: usize,
    tq: usize,
    tk: usize,
    n_head: usize,
    hd: usize,
) -> Vec<f32> {
    let scale = 1.0 / (hd as f32).sqrt();
    let width = n_head * hd;
    // q and k rows padded with zeros to the GEMM tiles' width (ViT-g's 88 → 96)
    let dk = hd.next_multiple_of(16);
    let per_head: Vec<Vec<f32>> = crate::pool::map_collect(n_head, |h| {
        let mut qh = vec![0.0; tq * dk];
        for (i, dst) in qh.chunks_exact_mut(dk).enumerate() {
            dst[..hd].copy_from_slice(&q[i * q_stride + q_off + h * hd..][..hd]);
        }
        let mut kh = vec![0.0; tk * dk];
        let mut vt = vec![0.0; hd * tk];
        for j in 0..tk {
            kh[j * dk..j * dk + hd].copy_from_slice(&kv[j * kv_stride + k_off + h * hd..][..hd]);
            let vj = &kv[j * kv_stride + v_off + h * hd..][..hd];
            for (d, &x) in vj.iter().enumerate() {
                vt[d * tk + j] = x;
            }
        }
        let mut out = vec![0.0; tq * hd];
        attend_head(&qh, &kh, &vt, tq, tk, dk, hd, scale, None, &mut out);
        out
    });
    let mut out = vec![0.0; tq * width];
    ops::interleave_heads(&per_head, hd, &mut out);
    out
}

/// Attention with separate q `[tq, width]`, k and v `[tk, width]` buffers.
#[allow(clippy::too_many_arguments)]
fn scaled_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    width: usize,
    tq: usize,
    tk: usize,
    n_head: usize,
    hd: usize,
) -> Vec<f32> {
    // Pack k and v side by side so the shared kernel can read both from one buffer.
    let mut kv = vec![0.0; tk * 2 * width];
    for j in 0..tk {
        kv[j * 2 * width..][..width].copy_from_slice(&k[j * width..(j + 1) * width]);
        kv[j * 2 * width + width..][..width].copy_from_slice(&v[j * width..(j + 1) * width]);
    }
    attention(q, width, 0, &kv, 2 * width, 0, width, tq, tk, n_head, hd)
}
