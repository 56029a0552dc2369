//! The TinyGPT-V vision tower → an mmproj-style GGUF (`general.architecture = clip`,
//! `clip.projector_type = qformer`; names and keys in `runtime::arch`, tinygptv spec §2–5, §8,
//! gguf.md §4).
//!
//! Sources, in LAVIS load order (later writes win, spec §8):
//! 1. `eva_vit_g.pth`: the bare EVA ViT-g state dict (`cls_token`, `pos_embed`, `patch_embed.*`,
//!    `blocks.N.*`); all blocks but the last are used (BLIP-2 uses 39 of 40);
//! 2. the BLIP-2 checkpoint (`{"model": …}`): `Qformer.bert.*`, `query_tokens`, `ln_vision.*`;
//! 3. the TinyGPT-V stage checkpoint: `llama_proj*`, and any `Qformer.*`, `query_tokens`,
//!    `ln_vision.*` keys there override BLIP-2's.
//!
//! A `visual_encoder.<name>` key in the BLIP-2 or stage file overrides the EVA file's `<name>`
//! the same way (the released files have none; LAVIS would load them).
//!
//! Every width, depth, FFN size, patch size, query count and the cross-attention layers come from
//! the tensor shapes and names; head counts come from the options.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use kernels::gguf::Value;
use runtime::arch;

use crate::checkpoint::{load_state_dict, CheckpointTensor, StateDict};
use crate::interp::resize_position_table;
use crate::plan::{v_f32, v_str, v_u32, Plan, Source};
use crate::policy::{choose_type, Target};

/// BLIP-2's eval preprocessing statistics (CLIP's; spec §9), digits as published.
#[allow(clippy::excessive_precision)]
pub const IMAGE_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub const IMAGE_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// LayerNorm epsilons: EVA blocks, `ln_vision`, Q-Former (BERT).
pub const VIT_EPS: f64 = 1e-6;
pub const LN_VISION_EPS: f64 = 1e-5;
pub const QFORMER_EPS: f64 = 1e-12;

/// Stage-4 models run at 448 px (the position table is interpolated from the 224 px one).
pub const STAGE4_IMAGE_SIZE: usize = 448;
/// Largest image side the converter writes (the runtime refuses larger ones).
pub const MAX_IMAGE_SIZE: usize = 4096;

const QF: &str = "Qformer.bert.";
const QF_LAYER: &str = "Qformer.bert.encoder.layer.";

#[derive(Clone, Debug)]
pub struct VisionOptions {
    /// TinyGPT-V training stage of the checkpoint: 3 (224 px) or 4 (448 px).
    pub stage: u32,
    /// Image side in pixels; default: native (from the position table) for stage 3, 448 for 4.
    pub image_size: Option<usize>,
    /// ViT blocks to keep; default: all blocks in the EVA file but the last.
    pub vision_blocks: Option<usize>,
    /// ViT attention heads (16 for EVA ViT-g).
    pub vision_heads: usize,
    /// Q-Former attention heads (12 for BERT-base).
    pub qformer_heads: usize,
    pub target: Target,
    pub pure: bool,
}

impl VisionOptions {
    /// The options of the released model: 16 ViT heads, 12 Q-Former heads, sizes from the files.
    pub fn new(stage: u32, target: Target) -> VisionOptions {
        VisionOptions {
            stage,
            image_size: None,
            vision_blocks: None,
            vision_heads: 16,
            qformer_heads: 12,
            target,
            pure: false,
        }
    }
}

/// The sizes of the tower, read from the checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisionHparams {
    pub image_size: usize,
    /// Image size the EVA position table was trained for.
    pub native_image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub n_ff: usize,
    pub n_block: usize,
    pub n_block_in_file: usize,
    pub n_head: usize,
    pub q_count: usize,
    pub q_width: usize,
    pub q_n_ff: usize,
    pub q_n_layer: usize,
    pub q_n_head: usize,
    pub q_cross_layers: Vec<usize>,
    pub encoder_width: usize,
    /// `llama_proj` output width.
    pub proj_hidden: usize,
    /// `llama_proj2` output width = the language model's embedding width.
    pub n_embd_llm: usize,
}

/// The three checkpoints, with the override order applied on lookup.
struct Sources<'a> {
    eva: StateDict,
    blip2: StateDict,
    stage: &'a StateDict,
}

impl Sources<'_> {
    /// An EVA tensor (`blocks.0.norm1.weight`), or its `visual_encoder.` override.
    fn vit(&self, name: &str) -> Result<&CheckpointTensor> {
        let full = format!("visual_encoder.{name}");
        if let Some(t) = self.stage.find(&full).or_else(|| self.blip2.find(&full)) {
            return Ok(t);
        }
        Ok(self.eva.get(name)?)
    }

    /// A BLIP-2 tensor, or the stage file's tensor of the same name.
    fn qf_find(&self, name: &str) -> Option<&CheckpointTensor> {
        self.stage.find(name).or_else(|| self.blip2.find(name))
    }

    fn qf(&self, name: &str) -> Result<&CheckpointTensor> {
        self.qf_find(name).ok_or_else(|| {
            anyhow!(
                "no tensor `{name}` in {} or {}",
                self.stage.path().display(),
                self.blip2.path().display()
            )
        })
    }

    fn stage_tensor(&self, name: &str) -> Result<&CheckpointTensor> {
        Ok(self.stage.get(name)?)
    }
}

/// Checks a tensor's PyTorch shape.
fn expect_shape(t: &CheckpointTensor, shape: &[usize]) -> Result<()> {
    if t.shape != shape {
        bail!(
            "{}: tensor `{}` has shape {:?}, expected {:?}",
            t.file().display(),
            t.name,
            t.shape,
            shape
        );
    }
    Ok(())
}

/// A tensor's shape with the expected rank; the error names file and tensor.
fn shape_of<const N: usize>(t: &CheckpointTensor) -> Result<[usize; N]> {
    <[usize; N]>::try_from(t.shape.as_slice()).map_err(|_| {
        anyhow!(
            "{}: tensor `{}` has shape {:?}, expected {N} dimensions",
            t.file().display(),
            t.name,
            t.shape
        )
    })
}

/// Reads a tensor as f32 (after checking its shape again, in case the source is reused).
fn read(t: &CheckpointTensor, shape: &[usize]) -> Result<Vec<f32>> {
    expect_shape(t, shape)?;
    t.read_f32()
        .with_context(|| format!("reading `{}`", t.name))
}

/// A lazy source for tensor `t`, whose shape has been checked to be `shape`.
fn tensor_source(t: &CheckpointTensor, shape: &[usize]) -> Result<Source> {
    expect_shape(t, shape)?;
    let (t, shape) = (t.clone(), shape.to_vec());
    Ok(Box::new(move || read(&t, &shape)))
}

/// The sorted set of `N` in names `{prefix}N.…`.
fn indices_after<'a>(names: impl Iterator<Item = &'a str>, prefix: &str) -> BTreeSet<usize> {
    names
        .filter_map(|n| n.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect()
}

/// `n` if `set` is exactly `0..n`, else an error naming the gap.
fn contiguous(set: &BTreeSet<usize>, what: &str, file: &Path) -> Result<usize> {
    for (want, &got) in set.iter().enumerate() {
        if want != got {
            bail!("{}: {what} {want} is missing (found {got})", file.display());
        }
    }
    Ok(set.len())
}

fn isqrt_exact(n: usize) -> Option<usize> {
    let r = (n as f64).sqrt().round() as usize;
    (r * r == n).then_some(r)
}

fn hparams(src: &Sources, opts: &VisionOptions) -> Result<VisionHparams> {
    let eva_path = src.eva.path().display().to_string();
    // ViT
    let [d, c, p, p2] = shape_of::<4>(src.vit("patch_embed.proj.weight")?)?;
    if c != 3 || p != p2 || p == 0 || d == 0 {
        bail!("{eva_path}: patch_embed.proj.weight has shape [{d}, {c}, {p}, {p2}], expected [width, 3, P, P]");
    }
    let pos = src.vit("pos_embed")?;
    let [one, n_pos, pd] = shape_of::<3>(pos)?;
    let native_grid = isqrt_exact(n_pos.saturating_sub(1)).filter(|&g| g > 0);
    let native_grid = match (one, pd == d, native_grid) {
        (1, true, Some(g)) => g,
        _ => bail!(
            "{}: pos_embed has shape {:?}, expected [1, 1 + g², {d}]",
            pos.file().display(),
            pos.shape
        ),
    };
    let blocks = indices_after(src.eva.names(), "blocks.");
    let n_block_in_file = contiguous(&blocks, "ViT block", src.eva.path())?;
    let n_block = match opts.vision_blocks {
        Some(n) if n == 0 || n > n_block_in_file => bail!(
            "{eva_path}: --vision-blocks {n} is out of range: the file has {n_block_in_file} blocks"
        ),
        Some(n) => n,
        None if n_block_in_file < 2 => bail!(
            "{eva_path}: the file has {n_block_in_file} ViT block(s); BLIP-2 drops the last one, so at least 2 are needed (or pass --vision-blocks)"
        ),
        None => n_block_in_file - 1,
    };
    let [n_ff, fd] = shape_of::<2>(src.vit("blocks.0.mlp.fc1.weight")?)?;
    if fd != d || n_ff == 0 {
        bail!("{eva_path}: blocks.0.mlp.fc1.weight has shape [{n_ff}, {fd}], expected [ffn, {d}]");
    }
    let native_image_size = native_grid * p;
    let image_size = match (opts.image_size, opts.stage) {
        (Some(s), 3 | 4) => s,
        (None, 3) => native_image_size,
        (None, 4) => STAGE4_IMAGE_SIZE,
        (_, s) => bail!("unknown TinyGPT-V stage {s} (expected 3 or 4)"),
    };
    if image_size == 0 || image_size % p != 0 || image_size > MAX_IMAGE_SIZE {
        bail!(
            "image size {image_size} must be a positive multiple of the patch size {p} (at most {MAX_IMAGE_SIZE})"
        );
    }
    if opts.vision_heads == 0 || d % opts.vision_heads != 0 {
        bail!(
            "{} ViT heads do not divide the ViT width {d} ({eva_path})",
            opts.vision_heads
        );
    }

    // Q-Former
    let qt = src.qf("query_tokens")?;
    let [one, q_count, q_width] = shape_of::<3>(qt)?;
    if one != 1 || q_count == 0 || q_width == 0 {
        bail!(
            "{}: query_tokens has shape {:?}, expected [1, n_query, width]",
            qt.file().display(),
            qt.shape
        );
    }
    let layer_names = src.blip2.names().chain(src.stage.names());
    let layers = indices_after(layer_names, QF_LAYER);
    let q_n_layer = contiguous(&layers, "Q-Former layer", src.blip2.path())?;
    if q_n_layer == 0 {
        bail!(
            "{}: no Q-Former layers ({QF_LAYER}0.… missing)",
            src.blip2.path().display()
        );
    }
    let q_cross_layers: Vec<usize> = (0..q_n_layer)
        .filter(|l| {
            let pre = format!("{QF_LAYER}{l}.crossattention.");
            src.blip2
                .names()
                .chain(src.stage.names())
                .any(|n| n.starts_with(&pre))
        })
        .collect();
    let Some(&first_cross) = q_cross_layers.first() else {
        bail!(
            "{}: no Q-Former layer has cross-attention ({QF_LAYER}N.crossattention.* missing)",
            src.blip2.path().display()
        );
    };
    let ck = src.qf(&format!(
        "{QF_LAYER}{first_cross}.crossattention.self.key.weight"
    ))?;
    let [kd, encoder_width] = shape_of::<2>(ck)?;
    if kd != q_width || encoder_width != d {
        bail!(
            "{}: {} has shape {:?}, expected [{q_width}, {d}] (Q-Former width × ViT width)",
            ck.file().display(),
            ck.name,
            ck.shape
        );
    }
    let fi = src.qf(&format!("{QF_LAYER}0.intermediate_query.dense.weight"))?;
    let [q_n_ff, fid] = shape_of::<2>(fi)?;
    if fid != q_width || q_n_ff == 0 {
        bail!(
            "{}: {} has shape {:?}, expected [ffn, {q_width}]",
            fi.file().display(),
            fi.name,
            fi.shape
        );
    }
    if opts.qformer_heads == 0 || q_width % opts.qformer_heads != 0 {
        bail!(
            "{} Q-Former heads do not divide the Q-Former width {q_width}",
            opts.qformer_heads
        );
    }

    // projections
    let p1 = src.stage_tensor("llama_proj.weight")?;
    let [proj_hidden, p1in] = shape_of::<2>(p1)?;
    if p1in != q_width || proj_hidden == 0 {
        bail!(
            "{}: llama_proj.weight has shape {:?}, expected [hidden, {q_width}]",
            p1.file().display(),
            p1.shape
        );
    }
    let p2 = src.stage_tensor("llama_proj2.weight")?;
    let [n_embd_llm, p2in] = shape_of::<2>(p2)?;
    if p2in != proj_hidden || n_embd_llm == 0 {
        bail!(
            "{}: llama_proj2.weight has shape {:?}, expected [n_embd, {proj_hidden}]",
            p2.file().display(),
            p2.shape
        );
    }

    Ok(VisionHparams {
        image_size,
        native_image_size,
        patch_size: p,
        width: d,
        n_ff,
        n_block,
        n_block_in_file,
        n_head: opts.vision_heads,
        q_count,
        q_width,
        q_n_ff,
        q_n_layer,
        q_n_head: opts.qformer_heads,
        q_cross_layers,
        encoder_width,
        proj_hidden,
        n_embd_llm,
    })
}

/// Builds the vision plan from the EVA file, the BLIP-2 file and the stage checkpoint's tensors.
pub fn plan_vision(
    eva: &Path,
    blip2: &Path,
    stage_sd: &StateDict,
    opts: &VisionOptions,
) -> Result<Plan> {
    let eva_sd = load_state_dict(eva)?;
    let blip2_sd = load_state_dict(blip2)?;
    plan_vision_from(eva_sd, blip2_sd, stage_sd, opts)
}

/// [`plan_vision`] from already loaded state dicts.
pub fn plan_vision_from(
    eva: StateDict,
    blip2: StateDict,
    stage: &StateDict,
    opts: &VisionOptions,
) -> Result<Plan> {
    let src = Sources { eva, blip2, stage };
    let hp = hparams(&src, opts)?;
    let (d, p, ff) = (hp.width, hp.patch_size, hp.n_ff);
    let (qd, qff) = (hp.q_width, hp.q_n_ff);

    let mut plan = Plan::default();
    plan.kv("general.architecture", v_str(arch::ARCH_CLIP));
    plan.kv("general.type", v_str("mmproj"));
    plan.kv(
        "general.name",
        v_str(&format!("TinyGPT-V stage {} vision tower", opts.stage)),
    );
    plan.kv("general.file_type", Value::U32(opts.target.llama_ftype()));
    plan.kv("clip.projector_type", v_str(arch::PROJECTOR_QFORMER));
    plan.kv("clip.has_vision_encoder", Value::Bool(true));
    plan.kv("clip.vision.image_size", v_u32(hp.image_size));
    plan.kv("clip.vision.patch_size", v_u32(p));
    plan.kv("clip.vision.embedding_length", v_u32(d));
    plan.kv("clip.vision.feed_forward_length", v_u32(ff));
    plan.kv("clip.vision.block_count", v_u32(hp.n_block));
    plan.kv("clip.vision.attention.head_count", v_u32(hp.n_head));
    plan.kv("clip.vision.attention.layer_norm_epsilon", v_f32(VIT_EPS));
    plan.kv(arch::KEY_VISION_POST_LN_EPS, v_f32(LN_VISION_EPS));
    plan.kv("clip.vision.projection_dim", v_u32(hp.n_embd_llm));
    plan.kv("clip.vision.image_mean", Value::f32_array(&IMAGE_MEAN));
    plan.kv("clip.vision.image_std", Value::f32_array(&IMAGE_STD));
    plan.kv("clip.vision.gelu_erf", Value::Bool(true));
    plan.kv("clip.qformer.query_count", v_u32(hp.q_count));
    plan.kv("clip.qformer.embedding_length", v_u32(qd));
    plan.kv("clip.qformer.block_count", v_u32(hp.q_n_layer));
    plan.kv("clip.qformer.attention.head_count", v_u32(hp.q_n_head));
    plan.kv("clip.qformer.feed_forward_length", v_u32(qff));
    plan.kv(
        "clip.qformer.attention.layer_norm_epsilon",
        v_f32(QFORMER_EPS),
    );
    plan.kv("clip.qformer.encoder_width", v_u32(hp.encoder_width));
    plan.kv("clip.qformer.gelu_erf", Value::Bool(true));
    let cross: Vec<i32> = hp.q_cross_layers.iter().map(|&l| l as i32).collect();
    plan.kv(arch::KEY_QFORMER_CROSS_LAYERS, Value::i32_array(&cross));

    let add = |plan: &mut Plan, name: String, dims: Vec<u64>, source: Source| {
        let ty = choose_type(&name, &dims, opts.target, opts.pure, hp.n_block);
        plan.tensor(name, ty, dims, source);
    };
    let u = |v: usize| v as u64;

    // --- ViT -----------------------------------------------------------------------------
    add(
        &mut plan,
        "v.patch_embd.weight".into(),
        vec![u(p), u(p), 3, u(d)],
        tensor_source(src.vit("patch_embed.proj.weight")?, &[d, 3, p, p])?,
    );
    add(
        &mut plan,
        "v.patch_embd.bias".into(),
        vec![u(d)],
        tensor_source(src.vit("patch_embed.proj.bias")?, &[d])?,
    );
    add(
        &mut plan,
        "v.class_embd".into(),
        vec![u(d)],
        tensor_source(src.vit("cls_token")?, &[1, 1, d])?,
    );
    let grid = hp.image_size / p;
    let n_pos = 1 + grid * grid;
    add(
        &mut plan,
        "v.position_embd.weight".into(),
        vec![u(d), u(n_pos)],
        position_source(&src, &hp)?,
    );
    for i in 0..hp.n_block {
        let b = |s: &str| format!("blocks.{i}.{s}");
        let g = |s: &str| format!("v.blk.{i}.{s}");
        for (from, to) in [("norm1", "ln1"), ("norm2", "ln2")] {
            for part in ["weight", "bias"] {
                add(
                    &mut plan,
                    g(&format!("{to}.{part}")),
                    vec![u(d)],
                    tensor_source(src.vit(&b(&format!("{from}.{part}")))?, &[d])?,
                );
            }
        }
        add(
            &mut plan,
            g("attn_qkv.weight"),
            vec![u(d), u(3 * d)],
            tensor_source(src.vit(&b("attn.qkv.weight"))?, &[3 * d, d])?,
        );
        add(
            &mut plan,
            g("attn_qkv.bias"),
            vec![u(3 * d)],
            qkv_bias_source(&src, i, d)?,
        );
        for (from, to, rows, cols) in [
            ("attn.proj", "attn_out", d, d),
            ("mlp.fc1", "ffn_up", ff, d),
            ("mlp.fc2", "ffn_down", d, ff),
        ] {
            add(
                &mut plan,
                g(&format!("{to}.weight")),
                vec![u(cols), u(rows)],
                tensor_source(src.vit(&b(&format!("{from}.weight")))?, &[rows, cols])?,
            );
            add(
                &mut plan,
                g(&format!("{to}.bias")),
                vec![u(rows)],
                tensor_source(src.vit(&b(&format!("{from}.bias")))?, &[rows])?,
            );
        }
    }
    for part in ["weight", "bias"] {
        add(
            &mut plan,
            format!("v.post_ln.{part}"),
            vec![u(d)],
            tensor_source(src.qf(&format!("ln_vision.{part}"))?, &[d])?,
        );
    }

    // --- Q-Former --------------------------------------------------------------------------
    add(
        &mut plan,
        "qformer.query".into(),
        vec![u(qd), u(hp.q_count)],
        tensor_source(src.qf("query_tokens")?, &[1, hp.q_count, qd])?,
    );
    for part in ["weight", "bias"] {
        add(
            &mut plan,
            format!("qformer.embd_norm.{part}"),
            vec![u(qd)],
            tensor_source(src.qf(&format!("{QF}embeddings.LayerNorm.{part}"))?, &[qd])?,
        );
    }
    let enc = hp.encoder_width;
    for l in 0..hp.q_n_layer {
        // (LAVIS module, GGUF name, out rows, in cols); norms have cols = 0
        let mut parts: Vec<(&str, &str, usize, usize)> = vec![
            ("attention.self.query", "attn_q", qd, qd),
            ("attention.self.key", "attn_k", qd, qd),
            ("attention.self.value", "attn_v", qd, qd),
            ("attention.output.dense", "attn_out", qd, qd),
            ("attention.output.LayerNorm", "attn_out_norm", qd, 0),
        ];
        if hp.q_cross_layers.contains(&l) {
            parts.extend([
                ("crossattention.self.query", "cross_q", qd, qd),
                ("crossattention.self.key", "cross_k", qd, enc),
                ("crossattention.self.value", "cross_v", qd, enc),
                ("crossattention.output.dense", "cross_out", qd, qd),
                ("crossattention.output.LayerNorm", "cross_out_norm", qd, 0),
            ]);
        }
        parts.extend([
            ("intermediate_query.dense", "ffn_up", qff, qd),
            ("output_query.dense", "ffn_down", qd, qff),
            ("output_query.LayerNorm", "ffn_out_norm", qd, 0),
        ]);
        for (from, to, rows, cols) in parts {
            let f = |part: &str| format!("{QF_LAYER}{l}.{from}.{part}");
            let g = |part: &str| format!("qformer.blk.{l}.{to}.{part}");
            let (wdims, wshape) = if cols == 0 {
                (vec![u(rows)], vec![rows])
            } else {
                (vec![u(cols), u(rows)], vec![rows, cols])
            };
            add(
                &mut plan,
                g("weight"),
                wdims,
                tensor_source(src.qf(&f("weight"))?, &wshape)?,
            );
            add(
                &mut plan,
                g("bias"),
                vec![u(rows)],
                tensor_source(src.qf(&f("bias"))?, &[rows])?,
            );
        }
    }

    // --- projections into the language model ----------------------------------------------
    for (from, to, rows, cols) in [
        ("llama_proj", "mm.0", hp.proj_hidden, qd),
        ("llama_proj2", "mm.1", hp.n_embd_llm, hp.proj_hidden),
    ] {
        add(
            &mut plan,
            format!("{to}.weight"),
            vec![u(cols), u(rows)],
            tensor_source(src.stage_tensor(&format!("{from}.weight"))?, &[rows, cols])?,
        );
        add(
            &mut plan,
            format!("{to}.bias"),
            vec![u(rows)],
            tensor_source(src.stage_tensor(&format!("{from}.bias"))?, &[rows])?,
        );
    }

    if plan.tensors.iter().any(|t| t.ty.is_quantized()) {
        plan.kv("general.quantization_version", Value::U32(2));
    }
    Ok(plan)
}

/// The fused QKV bias `[q_bias | 0 | v_bias]` (EVA has no K bias), or a plain `attn.qkv.bias`.
fn qkv_bias_source(src: &Sources, i: usize, d: usize) -> Result<Source> {
    let q_name = format!("blocks.{i}.attn.q_bias");
    if src.vit(&q_name).is_err() {
        if let Ok(t) = src.vit(&format!("blocks.{i}.attn.qkv.bias")) {
            return tensor_source(t, &[3 * d]);
        }
    }
    let q = src.vit(&q_name)?.clone();
    let v = src.vit(&format!("blocks.{i}.attn.v_bias"))?.clone();
    expect_shape(&q, &[d])?;
    expect_shape(&v, &[d])?;
    Ok(Box::new(move || {
        let mut b = read(&q, &[d])?;
        b.resize(2 * d, 0.0);
        b.extend(read(&v, &[d])?);
        Ok(b)
    }))
}

/// The position table for the output image size: the file's table, or its grid rows resized
/// with torch's bicubic interpolation (CLS row kept), as LAVIS `interpolate_pos_embed` does.
fn position_source(src: &Sources, hp: &VisionHparams) -> Result<Source> {
    let t = src.vit("pos_embed")?.clone();
    let d = hp.width;
    let grid_out = hp.image_size / hp.patch_size;
    let rows_in = t.shape[1];
    let grid_in = isqrt_exact(rows_in - 1).unwrap_or(0);
    Ok(Box::new(move || {
        let table = read(&t, &[1, rows_in, d])?;
        if grid_in == grid_out {
            return Ok(table);
        }
        resize_position_table(&table, d, 1, grid_in, grid_out)
            .with_context(|| format!("{}: resizing `{}`", t.file().display(), t.name))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_and_gaps() {
        let names = [
            "blocks.0.a",
            "blocks.1.b",
            "blocks.1.c",
            "blocksx.5",
            "cls_token",
        ];
        let set = indices_after(names.iter().copied(), "blocks.");
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![0, 1]);
        let gap: BTreeSet<usize> = [0, 2].into_iter().collect();
        let err = contiguous(&gap, "ViT block", Path::new("eva.pth")).unwrap_err();
        assert!(err.to_string().contains("ViT block 1 is missing"), "{err}");
        assert_eq!(isqrt_exact(256), Some(16));
        assert_eq!(isqrt_exact(255), None);
    }
}
