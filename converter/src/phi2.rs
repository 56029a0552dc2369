//! Phi-2 language model → GGUF: stock `phi2` (llama.cpp's names and keys, gguf.md §2–3) or the
//! TinyGPT-V variant `tinygptv` (LoRA merged, QK LayerNorm, post-attention RMSNorm; see
//! `runtime::arch`).
//!
//! Source layouts, detected from tensor names: today's split `q_proj/k_proj/v_proj/dense`, the
//! transformers-4.36 fused `query_key_value` (rows per head [q|k|v], spec §6), and Microsoft's
//! original `transformer.h.N.mixer.Wqkv` (rows [q;k;v]).

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use kernels::gguf::Value;
use kernels::GgmlType;
use runtime::arch::{self, blk};

use crate::checkpoint::{CheckpointTensor, StateDict};
use crate::hf::HfModelDir;
use crate::plan::{v_f32, v_str, v_u32, Plan, Source};
use crate::policy::{choose_type, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvLayout {
    /// `model.layers.N.self_attn.{q,k,v}_proj`
    Split,
    /// `model.layers.N.self_attn.query_key_value`, rows `[heads][3][head_dim]`
    FusedPerHead,
    /// `transformer.h.N.mixer.Wqkv`, rows `[3][heads][head_dim]`
    MsftWqkv,
}

/// Hyperparameters of the language model.
#[derive(Clone, Debug)]
pub struct PhiHparams {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_ctx: usize,
    pub n_rot: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
}

/// TinyGPT-V additions to the language model.
pub struct TinyGptvLm {
    /// The stage checkpoint's tensors, names without the `llama_model.base_model.model.` prefix.
    pub sd: StateDict,
    pub prefix: String,
    pub lora_alpha: f64,
    pub stage: u32,
}

/// The base model, with names normalised for the layout.
struct Base {
    sd: StateDict,
    layout: QkvLayout,
}

impl Base {
    fn names(&self) -> BaseNames {
        match self.layout {
            QkvLayout::MsftWqkv => BaseNames {
                embd: "transformer.embd.wte.weight".into(),
                layer: |i, s| {
                    let s = match s {
                        "input_layernorm" => "ln",
                        "dense" => "mixer.out_proj",
                        "fc1" => "mlp.fc1",
                        "fc2" => "mlp.fc2",
                        "qkv" => "mixer.Wqkv",
                        other => other,
                    };
                    format!("transformer.h.{i}.{s}")
                },
                final_norm: "lm_head.ln".into(),
                lm_head: "lm_head.linear".into(),
            },
            _ => BaseNames {
                embd: "model.embed_tokens.weight".into(),
                layer: |i, s| {
                    let s = match s {
                        "dense" => "self_attn.dense",
                        "fc1" => "mlp.fc1",
                        "fc2" => "mlp.fc2",
                        "qkv" => "self_attn.query_key_value",
                        "q" => "self_attn.q_proj",
                        "k" => "self_attn.k_proj",
                        "v" => "self_attn.v_proj",
                        other => other,
                    };
                    format!("model.layers.{i}.{s}")
                },
                final_norm: "model.final_layernorm".into(),
                lm_head: "lm_head".into(),
            },
        }
    }
}

struct BaseNames {
    embd: String,
    layer: fn(usize, &str) -> String,
    final_norm: String,
    lm_head: String,
}

pub fn detect_layout(sd: &StateDict) -> Result<QkvLayout> {
    if sd.contains("model.layers.0.self_attn.q_proj.weight") {
        Ok(QkvLayout::Split)
    } else if sd.contains("model.layers.0.self_attn.query_key_value.weight") {
        Ok(QkvLayout::FusedPerHead)
    } else if sd.contains("transformer.h.0.mixer.Wqkv.weight") {
        Ok(QkvLayout::MsftWqkv)
    } else {
        bail!(
            "{}: unknown Phi-2 weight layout: found none of model.layers.0.self_attn.q_proj.weight, \
             model.layers.0.self_attn.query_key_value.weight, transformer.h.0.mixer.Wqkv.weight",
            sd.path().display()
        )
    }
}

fn config_usize(dir: &HfModelDir, keys: &[&str]) -> Option<usize> {
    keys.iter().find_map(|k| {
        dir.config
            .get(*k)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    })
}

fn config_f64(dir: &HfModelDir, keys: &[&str]) -> Option<f64> {
    keys.iter()
        .find_map(|k| dir.config.get(*k).and_then(|v| v.as_f64()))
}

/// Reads a tensor as f32, checking its PyTorch shape.
fn read_checked(t: &CheckpointTensor, shape: &[usize]) -> Result<Vec<f32>> {
    if t.shape != shape {
        bail!(
            "{}: tensor '{}' has shape {:?}, expected {:?}",
            t.file().display(),
            t.name,
            t.shape,
            shape
        );
    }
    Ok(t.read_f32()?)
}

fn get<'a>(sd: &'a StateDict, name: &str) -> Result<&'a CheckpointTensor> {
    Ok(sd.get(name)?)
}

/// Row permutation between the per-head interleaved order (`h·3·hd + t·hd + d`) and the
/// contiguous [Q;K;V] order (`t·E + h·hd + d`): `perm[contiguous_row] = interleaved_row`.
fn interleaved_rows(n_head: usize, hd: usize) -> Vec<usize> {
    let e = n_head * hd;
    let mut perm = vec![0; 3 * e];
    for t in 0..3 {
        for h in 0..n_head {
            for d in 0..hd {
                perm[t * e + h * hd + d] = h * 3 * hd + t * hd + d;
            }
        }
    }
    perm
}

/// `out[r] = src[perm[r]]` over rows of `cols` values.
fn gather_rows(src: &[f32], cols: usize, perm: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(perm.len() * cols);
    for &r in perm {
        out.extend_from_slice(&src[r * cols..(r + 1) * cols]);
    }
    out
}

/// `out[perm[r]] = src[r]`.
fn scatter_rows(src: &[f32], cols: usize, perm: &[usize]) -> Vec<f32> {
    let mut out = vec![0.0; src.len()];
    for (r, &p) in perm.iter().enumerate() {
        out[p * cols..(p + 1) * cols].copy_from_slice(&src[r * cols..(r + 1) * cols]);
    }
    out
}

/// `W += scale · B·A` with B `[out, r]`, A `[r, in]`, all f32.
pub fn merge_lora(
    w: &mut [f32],
    a: &[f32],
    b: &[f32],
    out: usize,
    inp: usize,
    r: usize,
    scale: f32,
) {
    use rayon::prelude::*;
    w.par_chunks_mut(inp).enumerate().for_each(|(o, row)| {
        for k in 0..r {
            let s = scale * b[o * r + k];
            if s != 0.0 {
                for (wv, av) in row.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                    *wv += s * av;
                }
            }
        }
    });
    debug_assert_eq!(w.len(), out * inp);
}

/// The fused QKV weight (and bias) of layer `i` in the per-head interleaved order, from any layout.
fn qkv_interleaved(
    base: &Base,
    names: &BaseNames,
    hp: &PhiHparams,
    i: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let e = hp.n_embd;
    let hd = e / hp.n_head;
    let perm = interleaved_rows(hp.n_head, hd);
    let (w, b) = match base.layout {
        QkvLayout::FusedPerHead => {
            let n = (names.layer)(i, "qkv");
            (
                read_checked(get(&base.sd, &format!("{n}.weight"))?, &[3 * e, e])?,
                read_checked(get(&base.sd, &format!("{n}.bias"))?, &[3 * e])?,
            )
        }
        QkvLayout::MsftWqkv => {
            let n = (names.layer)(i, "qkv");
            let w = read_checked(get(&base.sd, &format!("{n}.weight"))?, &[3 * e, e])?;
            let b = read_checked(get(&base.sd, &format!("{n}.bias"))?, &[3 * e])?;
            (scatter_rows(&w, e, &perm), scatter_rows(&b, 1, &perm))
        }
        QkvLayout::Split => {
            let mut w = Vec::with_capacity(3 * e * e);
            let mut b = Vec::with_capacity(3 * e);
            for p in ["q", "k", "v"] {
                let n = (names.layer)(i, p);
                w.extend(read_checked(
                    get(&base.sd, &format!("{n}.weight"))?,
                    &[e, e],
                )?);
                b.extend(read_checked(get(&base.sd, &format!("{n}.bias"))?, &[e])?);
            }
            (scatter_rows(&w, e, &perm), scatter_rows(&b, 1, &perm))
        }
    };
    Ok((w, b))
}

/// Finds LoRA A and B for `module` (e.g. `model.layers.3.self_attn.query_key_value`) in the stage
/// checkpoint, accepting `lora_A.weight` and `lora_A.default.weight`.
fn find_lora<'a>(
    tg: &'a TinyGptvLm,
    module: &str,
) -> Option<(&'a CheckpointTensor, &'a CheckpointTensor)> {
    let p = &tg.prefix;
    for suffix in ["weight", "default.weight"] {
        let a = tg.sd.find(&format!("{p}{module}.lora_A.{suffix}"));
        let b = tg.sd.find(&format!("{p}{module}.lora_B.{suffix}"));
        if let (Some(a), Some(b)) = (a, b) {
            return Some((a, b));
        }
    }
    None
}

/// Applies a LoRA pair to `w` (`[out, inp]`), reading `r` from the shapes.
fn apply_lora(
    w: &mut [f32],
    out: usize,
    inp: usize,
    lora: (&CheckpointTensor, &CheckpointTensor),
    alpha: f64,
) -> Result<()> {
    let (a, b) = lora;
    let r = a.shape.first().copied().unwrap_or(0);
    if r == 0 || a.shape != [r, inp] || b.shape != [out, r] {
        bail!(
            "{}: LoRA shapes {:?} ({}) and {:?} ({}) do not fit a [{out}, {inp}] weight",
            a.file().display(),
            a.shape,
            a.name,
            b.shape,
            b.name
        );
    }
    let (av, bv) = (a.read_f32()?, b.read_f32()?);
    merge_lora(w, &av, &bv, out, inp, r, (alpha / r as f64) as f32);
    Ok(())
}

fn src_tensor(t: &CheckpointTensor, shape: Vec<usize>) -> Source {
    let t = t.clone();
    Box::new(move || read_checked(&t, &shape))
}

/// Hyperparameters from config.json and the tensor shapes.
pub fn hparams(dir: &HfModelDir, sd: &StateDict, layout: QkvLayout) -> Result<PhiHparams> {
    let path = dir.dir.join("config.json");
    let base = Base {
        sd: sd.clone(),
        layout,
    };
    let names = base.names();
    let embd = get(sd, &names.embd)?;
    if embd.shape.len() != 2 {
        bail!(
            "{}: {} has shape {:?}, expected 2-D",
            embd.file().display(),
            embd.name,
            embd.shape
        );
    }
    let (n_vocab, n_embd) = (embd.shape[0], embd.shape[1]);
    let mut n_layer = 0;
    while sd.contains(&format!("{}.weight", (names.layer)(n_layer, "fc1"))) {
        n_layer += 1;
    }
    if n_layer == 0 {
        bail!(
            "{}: no layers found ({} missing)",
            sd.path().display(),
            (names.layer)(0, "fc1")
        );
    }
    let n_ff = get(sd, &format!("{}.weight", (names.layer)(0, "fc1")))?.shape[0];
    let n_head = config_usize(dir, &["num_attention_heads", "n_head"])
        .ok_or_else(|| anyhow!("{}: num_attention_heads missing", path.display()))?;
    if n_head == 0 || n_embd % n_head != 0 {
        bail!(
            "{}: {n_head} heads do not divide the width {n_embd}",
            path.display()
        );
    }
    if let Some(kv) = config_usize(dir, &["num_key_value_heads"]) {
        if kv != n_head {
            bail!(
                "{}: grouped-query attention (num_key_value_heads {kv}) is not a Phi-2 model",
                path.display()
            );
        }
    }
    let hd = n_embd / n_head;
    let n_rot = match (
        config_f64(dir, &["partial_rotary_factor"]),
        config_usize(dir, &["rotary_dim"]),
    ) {
        (Some(f), _) => (f * n_embd as f64) as usize / n_head,
        (None, Some(r)) => r,
        (None, None) => hd,
    };
    Ok(PhiHparams {
        n_vocab,
        n_embd,
        n_layer,
        n_ff,
        n_head,
        n_ctx: config_usize(dir, &["max_position_embeddings", "n_positions"]).unwrap_or(2048),
        n_rot,
        norm_eps: config_f64(dir, &["layer_norm_eps", "layer_norm_epsilon"]).unwrap_or(1e-5),
        rope_theta: config_f64(dir, &["rope_theta"]).unwrap_or(10000.0),
    })
}

/// Tokenizer metadata (`tokenizer.ggml.*`) from the directory's tokenizer files.
fn tokenizer_kv(plan: &mut Plan, dir: &HfModelDir, n_vocab: usize) -> Result<()> {
    let read = |p: &Option<std::path::PathBuf>| -> Result<Option<String>> {
        match p {
            Some(p) => Ok(Some(
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )),
            None => Ok(None),
        }
    };
    let tf = &dir.tokenizer;
    let tok_cfg = read(&tf.tokenizer_config_json)?;
    let cfg_text = std::fs::read_to_string(dir.dir.join("config.json")).ok();
    let mut vocab = if let Some(tj) = read(&tf.tokenizer_json)? {
        runtime::tokenizer::gguf_vocab_from_tokenizer_json(&tj, Some(n_vocab))
            .map_err(|e| anyhow!("{}: {e}", tf.tokenizer_json.as_ref().unwrap().display()))?
    } else if let (Some(v), Some(m)) = (read(&tf.vocab_json)?, read(&tf.merges_txt)?) {
        runtime::tokenizer::gguf_vocab_from_vocab_merges(
            &v,
            &m,
            read(&tf.added_tokens_json)?.as_deref(),
            tok_cfg.as_deref(),
            Some(n_vocab),
        )
        .map_err(|e| anyhow!("{}: vocab.json/merges.txt: {e}", dir.dir.display()))?
    } else {
        bail!(
            "{}: no tokenizer files (tokenizer.json, or vocab.json + merges.txt)",
            dir.dir.display()
        );
    };
    vocab
        .resolve_special_tokens(tok_cfg.as_deref(), cfg_text.as_deref())
        .map_err(|e| anyhow!("{}: {e}", dir.dir.display()))?;
    plan.kv("tokenizer.ggml.model", v_str("gpt2"));
    plan.kv("tokenizer.ggml.pre", v_str("phi-2"));
    plan.kv(
        "tokenizer.ggml.tokens",
        Value::string_array(vocab.tokens.iter().cloned()),
    );
    plan.kv(
        "tokenizer.ggml.token_type",
        Value::i32_array(&vocab.token_types),
    );
    plan.kv(
        "tokenizer.ggml.merges",
        Value::string_array(vocab.merges.iter().cloned()),
    );
    let s = &vocab.special;
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", s.bos),
        ("tokenizer.ggml.eos_token_id", s.eos),
        ("tokenizer.ggml.unknown_token_id", s.unk),
        ("tokenizer.ggml.seperator_token_id", s.sep),
        ("tokenizer.ggml.padding_token_id", s.pad),
    ] {
        if let Some(id) = id {
            plan.kv(key, Value::U32(id));
        }
    }
    plan.kv("tokenizer.ggml.add_bos_token", Value::Bool(false));
    if let Some(add_eos) = s.add_eos {
        plan.kv("tokenizer.ggml.add_eos_token", Value::Bool(add_eos));
    }
    if let Some(t) = &s.chat_template {
        plan.kv("tokenizer.chat_template", v_str(t));
    }
    Ok(())
}

/// Builds the language-model plan. `tinygptv = None` gives a stock `phi2` file.
pub fn plan_language_model(
    dir: &HfModelDir,
    target: Target,
    pure: bool,
    tinygptv: Option<Arc<TinyGptvLm>>,
) -> Result<Plan> {
    let sd = dir.state_dict()?;
    let layout = detect_layout(&sd)?;
    let hp = hparams(dir, &sd, layout)?;
    let base = Arc::new(Base { sd, layout });
    let names = base.names();
    let (e, ff, nv) = (hp.n_embd, hp.n_ff, hp.n_vocab);
    let arch_name = if tinygptv.is_some() {
        arch::ARCH_TINYGPTV
    } else {
        arch::ARCH_PHI2
    };

    let mut plan = Plan::default();
    let k = |s: &str| arch::llm_key(arch_name, s);
    plan.kv("general.architecture", v_str(arch_name));
    plan.kv("general.type", v_str("model"));
    plan.kv(
        "general.name",
        v_str(
            dir.dir
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("phi-2"),
        ),
    );
    plan.kv("general.file_type", Value::U32(target.llama_ftype()));
    plan.kv(&k("context_length"), v_u32(hp.n_ctx));
    plan.kv(&k("embedding_length"), v_u32(e));
    plan.kv(&k("feed_forward_length"), v_u32(ff));
    plan.kv(&k("block_count"), v_u32(hp.n_layer));
    plan.kv(&k("attention.head_count"), v_u32(hp.n_head));
    plan.kv(&k("attention.head_count_kv"), v_u32(hp.n_head));
    plan.kv(&k("attention.layer_norm_epsilon"), v_f32(hp.norm_eps));
    plan.kv(&k("rope.dimension_count"), v_u32(hp.n_rot));
    plan.kv(&k("rope.freq_base"), v_f32(hp.rope_theta));
    if let Some(tg) = &tinygptv {
        plan.kv(&k("attention.layer_norm_rms_epsilon"), v_f32(1e-6));
        let (template, temp, max_new) = if tg.stage == 4 {
            ("stage4", 0.6, 500)
        } else {
            ("stage3", 1.0, 300)
        };
        plan.kv(arch::KEY_PROMPT_TEMPLATE, v_str(template));
        plan.kv(arch::KEY_GEN_TEMPERATURE, v_f32(temp));
        plan.kv(arch::KEY_GEN_TOP_P, v_f32(0.9));
        plan.kv(arch::KEY_GEN_TOP_K, Value::U32(50));
        plan.kv(arch::KEY_GEN_REPEAT_PENALTY, v_f32(1.05));
        plan.kv(arch::KEY_GEN_MAX_NEW_TOKENS, Value::U32(max_new));
        plan.kv(arch::KEY_GEN_STOP, Value::string_array(["###"]));
    }
    tokenizer_kv(&mut plan, dir, nv)?;

    let add = |plan: &mut Plan, name: String, dims: Vec<u64>, source: Source| {
        let ty = choose_type(&name, &dims, target, pure, hp.n_layer);
        plan.tensor(name, ty, dims, source);
    };
    // A base tensor, optionally replaced by the stage checkpoint's tensor of the same HF name.
    let base_or_override = |hf_name: &str, shape: Vec<usize>| -> Result<Source> {
        if let Some(tg) = &tinygptv {
            if let Some(t) = tg.sd.find(&format!("{}{hf_name}", tg.prefix)) {
                return Ok(src_tensor(t, shape));
            }
        }
        Ok(src_tensor(get(&base.sd, hf_name)?, shape))
    };

    add(
        &mut plan,
        "token_embd.weight".into(),
        vec![e as u64, nv as u64],
        src_tensor(get(&base.sd, &names.embd)?, vec![nv, e]),
    );
    for i in 0..hp.n_layer {
        let ln = (names.layer)(i, "input_layernorm");
        // TinyGPT-V's file always uses the HF (non-msft) names for its overrides.
        let hf_ln = format!("model.layers.{i}.input_layernorm");
        let ln_w: Source = match &tinygptv {
            Some(_) if layout != QkvLayout::MsftWqkv => {
                base_or_override(&format!("{hf_ln}.weight"), vec![e])?
            }
            Some(tg) => match tg.sd.find(&format!("{}{hf_ln}.weight", tg.prefix)) {
                Some(t) => src_tensor(t, vec![e]),
                None => src_tensor(get(&base.sd, &format!("{ln}.weight"))?, vec![e]),
            },
            None => src_tensor(get(&base.sd, &format!("{ln}.weight"))?, vec![e]),
        };
        add(&mut plan, blk(i, "attn_norm.weight"), vec![e as u64], ln_w);
        add(
            &mut plan,
            blk(i, "attn_norm.bias"),
            vec![e as u64],
            src_tensor(get(&base.sd, &format!("{ln}.bias"))?, vec![e]),
        );

        // Q/K/V
        if tinygptv.is_none() && layout == QkvLayout::Split {
            for (p, g) in [("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v")] {
                let n = (names.layer)(i, p);
                add(
                    &mut plan,
                    blk(i, &format!("{g}.weight")),
                    vec![e as u64, e as u64],
                    src_tensor(get(&base.sd, &format!("{n}.weight"))?, vec![e, e]),
                );
                add(
                    &mut plan,
                    blk(i, &format!("{g}.bias")),
                    vec![e as u64],
                    src_tensor(get(&base.sd, &format!("{n}.bias"))?, vec![e]),
                );
            }
        } else {
            // one fused [Q;K;V] matrix: interleaved order → LoRA merge (TinyGPT-V) → contiguous
            let (base2, tg2, hp2) = (base.clone(), tinygptv.clone(), hp.clone());
            let weight: Source = Box::new(move || {
                let names = base2.names();
                let (mut w, _) = qkv_interleaved(&base2, &names, &hp2, i)?;
                let e = hp2.n_embd;
                if let Some(tg) = &tg2 {
                    // every trainable key of a stage file is optional (spec §19): no LoRA, no merge
                    if let Some(lora) =
                        find_lora(tg, &format!("model.layers.{i}.self_attn.query_key_value"))
                    {
                        apply_lora(&mut w, 3 * e, e, lora, tg.lora_alpha)?;
                    }
                }
                Ok(gather_rows(
                    &w,
                    e,
                    &interleaved_rows(hp2.n_head, e / hp2.n_head),
                ))
            });
            let (base3, hp3) = (base.clone(), hp.clone());
            let bias: Source = Box::new(move || {
                let names = base3.names();
                let (_, b) = qkv_interleaved(&base3, &names, &hp3, i)?;
                Ok(gather_rows(
                    &b,
                    1,
                    &interleaved_rows(hp3.n_head, hp3.n_embd / hp3.n_head),
                ))
            });
            add(
                &mut plan,
                blk(i, "attn_qkv.weight"),
                vec![e as u64, 3 * e as u64],
                weight,
            );
            add(&mut plan, blk(i, "attn_qkv.bias"), vec![3 * e as u64], bias);
        }

        // attention output (dense), LoRA-merged for TinyGPT-V
        let dense = (names.layer)(i, "dense");
        let dense_w = get(&base.sd, &format!("{dense}.weight"))?.clone();
        let dense_source: Source = match &tinygptv {
            None => src_tensor(&dense_w, vec![e, e]),
            Some(tg) => {
                let tg = tg.clone();
                Box::new(move || {
                    let mut w = read_checked(&dense_w, &[e, e])?;
                    if let Some(lora) = find_lora(&tg, &format!("model.layers.{i}.self_attn.dense"))
                    {
                        apply_lora(&mut w, e, e, lora, tg.lora_alpha)?;
                    }
                    Ok(w)
                })
            }
        };
        add(
            &mut plan,
            blk(i, "attn_output.weight"),
            vec![e as u64, e as u64],
            dense_source,
        );
        add(
            &mut plan,
            blk(i, "attn_output.bias"),
            vec![e as u64],
            src_tensor(get(&base.sd, &format!("{dense}.bias"))?, vec![e]),
        );

        // TinyGPT-V norms
        if let Some(tg) = &tinygptv {
            let hd = e / hp.n_head;
            for (hf, g) in [
                ("q_layernorm", "attn_q_norm"),
                ("k_layernorm", "attn_k_norm"),
            ] {
                // absent from the stage file: the freshly initialised LayerNorm (weight 1, bias 0)
                let wname = format!("{}model.layers.{i}.self_attn.{hf}.weight", tg.prefix);
                let weight: Source = match tg.sd.find(&wname) {
                    Some(t) => src_tensor(t, vec![hd]),
                    None => Box::new(move || Ok(vec![1.0; hd])),
                };
                add(
                    &mut plan,
                    blk(i, &format!("{g}.weight")),
                    vec![hd as u64],
                    weight,
                );
                // bias absent from the stage file: stays at its init value 0 (spec §6)
                let bname = format!("{}model.layers.{i}.self_attn.{hf}.bias", tg.prefix);
                let bias: Source = match tg.sd.find(&bname) {
                    Some(t) => src_tensor(t, vec![hd]),
                    None => Box::new(move || Ok(vec![0.0; hd])),
                };
                add(
                    &mut plan,
                    blk(i, &format!("{g}.bias")),
                    vec![hd as u64],
                    bias,
                );
            }
            let pname = format!("{}model.layers.{i}.post_layernorm.weight", tg.prefix);
            let post: Source = match tg.sd.find(&pname) {
                Some(t) => src_tensor(t, vec![e]),
                None => Box::new(move || Ok(vec![1.0; e])),
            };
            add(
                &mut plan,
                blk(i, "post_attention_norm.weight"),
                vec![e as u64],
                post,
            );
        }

        // MLP
        let fc1 = (names.layer)(i, "fc1");
        let fc2 = (names.layer)(i, "fc2");
        add(
            &mut plan,
            blk(i, "ffn_up.weight"),
            vec![e as u64, ff as u64],
            src_tensor(get(&base.sd, &format!("{fc1}.weight"))?, vec![ff, e]),
        );
        add(
            &mut plan,
            blk(i, "ffn_up.bias"),
            vec![ff as u64],
            src_tensor(get(&base.sd, &format!("{fc1}.bias"))?, vec![ff]),
        );
        add(
            &mut plan,
            blk(i, "ffn_down.weight"),
            vec![ff as u64, e as u64],
            src_tensor(get(&base.sd, &format!("{fc2}.weight"))?, vec![e, ff]),
        );
        add(
            &mut plan,
            blk(i, "ffn_down.bias"),
            vec![e as u64],
            src_tensor(get(&base.sd, &format!("{fc2}.bias"))?, vec![e]),
        );
    }
    let fw: Source = match (&tinygptv, layout) {
        (Some(tg), _) => match tg
            .sd
            .find(&format!("{}model.final_layernorm.weight", tg.prefix))
        {
            Some(t) => src_tensor(t, vec![e]),
            None => src_tensor(
                get(&base.sd, &format!("{}.weight", names.final_norm))?,
                vec![e],
            ),
        },
        (None, _) => src_tensor(
            get(&base.sd, &format!("{}.weight", names.final_norm))?,
            vec![e],
        ),
    };
    add(&mut plan, "output_norm.weight".into(), vec![e as u64], fw);
    add(
        &mut plan,
        "output_norm.bias".into(),
        vec![e as u64],
        src_tensor(
            get(&base.sd, &format!("{}.bias", names.final_norm))?,
            vec![e],
        ),
    );
    add(
        &mut plan,
        "output.weight".into(),
        vec![e as u64, nv as u64],
        src_tensor(
            get(&base.sd, &format!("{}.weight", names.lm_head))?,
            vec![nv, e],
        ),
    );
    add(
        &mut plan,
        "output.bias".into(),
        vec![nv as u64],
        src_tensor(get(&base.sd, &format!("{}.bias", names.lm_head))?, vec![nv]),
    );

    if plan.tensors.iter().any(|t| t.ty.is_quantized()) {
        plan.kv("general.quantization_version", Value::U32(2));
    }
    let _ = GgmlType::F32;
    Ok(plan)
}

/// Reads the TinyGPT-V stage checkpoint: its model tensors, the key prefix of the language
/// model, and the hyperparameters its `config` dict gives (stage, LoRA alpha, image size).
pub struct StageCheckpoint {
    pub sd: StateDict,
    pub prefix: String,
    pub stage: Option<u32>,
    pub lora_alpha: Option<f64>,
    pub image_size: Option<usize>,
}

pub fn read_stage_checkpoint(path: &Path) -> Result<StageCheckpoint> {
    let ck = crate::torch::TorchCheckpoint::open(path)?;
    let sd = ck.state_dict()?;
    let config = ck.get_json("config");
    let model_cfg = config.as_ref().and_then(|c| c.get("model"));
    let stage = model_cfg
        .and_then(|m| m.get("arch"))
        .and_then(|a| a.as_str())
        .and_then(|a| match a {
            "minigpt4" => Some(3),
            "minigpt_v2" => Some(4),
            _ => None,
        });
    let lora_alpha = model_cfg
        .and_then(|m| m.get("lora_alpha"))
        .and_then(|v| v.as_f64());
    let image_size = model_cfg
        .and_then(|m| m.get("image_size"))
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    let prefix = ["llama_model.base_model.model.", "llama_model.", ""]
        .into_iter()
        .find(|p| {
            sd.names()
                .any(|n| n.starts_with(p) && n.contains("model.layers."))
        })
        .unwrap_or("llama_model.base_model.model.")
        .to_string();
    if !sd.contains("llama_proj.weight")
        && !sd
            .names()
            .any(|n| n.starts_with(&prefix) && n.contains("model.layers."))
    {
        bail!(
            "{}: does not look like a TinyGPT-V stage checkpoint (no llama_proj.weight and no {prefix}model.layers.* keys)",
            path.display()
        );
    }
    Ok(StageCheckpoint {
        sd,
        prefix,
        stage,
        lora_alpha,
        image_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleave_permutation_round_trips() {
        let perm = interleaved_rows(2, 3);
        // 2 heads of 3: contiguous row 6 = K of head 0, dim 0 = interleaved row 0·9 + 1·3 + 0
        assert_eq!(perm[6], 3);
        // contiguous row 3 = Q of head 1, dim 0 = interleaved row 1·9 + 0·3 + 0
        assert_eq!(perm[3], 9);
        // contiguous row 13 = V of head 0, dim 1 = interleaved row 0·9 + 2·3 + 1
        assert_eq!(perm[13], 7);
        let src: Vec<f32> = (0..18).map(|v| v as f32).collect();
        let back = scatter_rows(&gather_rows(&src, 1, &perm), 1, &perm);
        assert_eq!(back, src);
    }

    #[test]
    fn lora_merge_adds_scaled_product() {
        // W 2×2 zeros, A 1×2 = [1, 2], B 2×1 = [3, 4], scale 0.5 → W = 0.5·[[3,6],[4,8]]
        let mut w = vec![0.0; 4];
        merge_lora(&mut w, &[1.0, 2.0], &[3.0, 4.0], 2, 2, 1, 0.5);
        assert_eq!(w, vec![1.5, 3.0, 2.0, 4.0]);
    }
}
