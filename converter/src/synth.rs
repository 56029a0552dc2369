//! `tinygptv synth`: random-weight models at the real shapes (Phi-2 2.7B, TinyGPT-V's ViT-g +
//! Q-Former), for benchmarks and memory tests. The `phi2` file loads in llama.cpp: it carries a
//! synthetic but well-formed GPT-2 tokenizer (256 byte tokens, 50 000 two-character merges,
//! `<|endoftext|>` at 50256, padding up to 51 200).

use anyhow::{bail, Result};
use kernels::gguf::Value;
use rayon::prelude::*;
use runtime::arch::{self, blk};

use crate::plan::{v_f32, v_str, v_u32, Plan, Source};
use crate::policy::{choose_type, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthArch {
    Phi2,
    TinyGptvStage3,
    TinyGptvStage4,
}

impl std::str::FromStr for SynthArch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "phi2" => Ok(SynthArch::Phi2),
            "tinygptv-stage3" => Ok(SynthArch::TinyGptvStage3),
            "tinygptv-stage4" => Ok(SynthArch::TinyGptvStage4),
            _ => Err(format!(
                "unknown arch '{s}' (expected phi2, tinygptv-stage3 or tinygptv-stage4)"
            )),
        }
    }
}

/// Deterministic pseudo-random values: `n` values uniform in [mean − amp, mean + amp],
/// generated in parallel chunks (SplitMix64 per chunk, seeded by `seed` and the chunk index).
pub fn random_values(n: usize, seed: u64, mean: f32, amp: f32) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![0.0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut s = seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for v in chunk {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                let u = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                *v = mean + amp * (2.0 * u - 1.0);
            }
        });
    out
}

/// Adds a random tensor: (plan, name, dims, mean, amplitude).
type AddTensor<'a> = dyn FnMut(&mut Plan, String, Vec<u64>, f32, f32) + 'a;

fn rand_source(n: usize, seed: u64, mean: f32, amp: f32) -> Source {
    Box::new(move || Ok(random_values(n, seed, mean, amp)))
}

/// GPT-2's byte → printable-character map (the `Ġ` = space spelling).
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut map = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        map[*b as usize] = char::from_u32(c).unwrap();
    }
    map
}

/// A synthetic Phi-2-sized tokenizer in llama.cpp's metadata form.
fn synth_tokenizer(plan: &mut Plan, n_vocab: usize) {
    let bytes = byte_chars();
    let mut tokens: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    let mut merges = Vec::with_capacity(50_000);
    'outer: for a in &bytes {
        for b in &bytes {
            if merges.len() == 50_000 {
                break 'outer;
            }
            merges.push(format!("{a} {b}"));
            tokens.push(format!("{a}{b}"));
        }
    }
    let eos = tokens.len() as u32; // 50256
    tokens.push("<|endoftext|>".into());
    let mut types = vec![1i32; tokens.len()];
    types[eos as usize] = 3;
    while tokens.len() < n_vocab {
        types.push(5);
        tokens.push(format!("[PAD{}]", tokens.len()));
    }
    plan.kv("tokenizer.ggml.model", v_str("gpt2"));
    plan.kv("tokenizer.ggml.pre", v_str("phi-2"));
    plan.kv("tokenizer.ggml.tokens", Value::string_array(tokens));
    plan.kv("tokenizer.ggml.token_type", Value::i32_array(&types));
    plan.kv("tokenizer.ggml.merges", Value::string_array(merges));
    for k in ["bos", "eos", "unknown"] {
        plan.kv(&format!("tokenizer.ggml.{k}_token_id"), Value::U32(eos));
    }
    plan.kv("tokenizer.ggml.add_bos_token", Value::Bool(false));
}

/// The language model at Phi-2's real shapes.
pub fn plan_synth_lm(arch_kind: SynthArch, target: Target, pure: bool) -> Result<Plan> {
    let (n_vocab, e, n_layer, ff, n_head, n_rot, n_ctx) = (
        51200usize, 2560usize, 32usize, 10240usize, 32usize, 32usize, 2048usize,
    );
    let hd = e / n_head;
    let tinygptv = arch_kind != SynthArch::Phi2;
    let name = if tinygptv {
        arch::ARCH_TINYGPTV
    } else {
        arch::ARCH_PHI2
    };
    let k = |s: &str| arch::llm_key(name, s);
    let mut plan = Plan::default();
    plan.kv("general.architecture", v_str(name));
    plan.kv("general.type", v_str("model"));
    plan.kv("general.name", v_str("synthetic random-weight phi-2"));
    plan.kv("general.file_type", Value::U32(target.llama_ftype()));
    plan.kv(&k("context_length"), v_u32(n_ctx));
    plan.kv(&k("embedding_length"), v_u32(e));
    plan.kv(&k("feed_forward_length"), v_u32(ff));
    plan.kv(&k("block_count"), v_u32(n_layer));
    plan.kv(&k("attention.head_count"), v_u32(n_head));
    plan.kv(&k("attention.head_count_kv"), v_u32(n_head));
    plan.kv(&k("attention.layer_norm_epsilon"), v_f32(1e-5));
    plan.kv(&k("rope.dimension_count"), v_u32(n_rot));
    plan.kv(&k("rope.freq_base"), v_f32(10000.0));
    if tinygptv {
        plan.kv(&k("attention.layer_norm_rms_epsilon"), v_f32(1e-6));
        let stage4 = arch_kind == SynthArch::TinyGptvStage4;
        plan.kv(
            arch::KEY_PROMPT_TEMPLATE,
            v_str(if stage4 { "stage4" } else { "stage3" }),
        );
        plan.kv(arch::KEY_GEN_STOP, Value::string_array(["###"]));
    }
    synth_tokenizer(&mut plan, n_vocab);

    let mut seed = 1u64;
    let mut add = |plan: &mut Plan, name: String, dims: Vec<u64>, mean: f32, amp: f32| {
        let ty = choose_type(&name, &dims, target, pure, n_layer);
        let n = dims.iter().product::<u64>() as usize;
        seed += 1;
        plan.tensor(name, ty, dims, rand_source(n, seed, mean, amp));
    };
    let (e64, ff64, v64, hd64) = (e as u64, ff as u64, n_vocab as u64, hd as u64);
    let w = 1.7 / (e as f32).sqrt(); // uniform amplitude ≈ std 1/sqrt(fan_in)
    add(
        &mut plan,
        "token_embd.weight".into(),
        vec![e64, v64],
        0.0,
        0.05,
    );
    for i in 0..n_layer {
        add(&mut plan, blk(i, "attn_norm.weight"), vec![e64], 1.0, 0.1);
        add(&mut plan, blk(i, "attn_norm.bias"), vec![e64], 0.0, 0.05);
        if tinygptv {
            add(
                &mut plan,
                blk(i, "attn_qkv.weight"),
                vec![e64, 3 * e64],
                0.0,
                w,
            );
            add(&mut plan, blk(i, "attn_qkv.bias"), vec![3 * e64], 0.0, 0.05);
        } else {
            for p in ["attn_q", "attn_k", "attn_v"] {
                add(
                    &mut plan,
                    blk(i, &format!("{p}.weight")),
                    vec![e64, e64],
                    0.0,
                    w,
                );
                add(
                    &mut plan,
                    blk(i, &format!("{p}.bias")),
                    vec![e64],
                    0.0,
                    0.05,
                );
            }
        }
        add(
            &mut plan,
            blk(i, "attn_output.weight"),
            vec![e64, e64],
            0.0,
            w * 0.5,
        );
        add(&mut plan, blk(i, "attn_output.bias"), vec![e64], 0.0, 0.02);
        if tinygptv {
            for p in ["attn_q_norm", "attn_k_norm"] {
                add(
                    &mut plan,
                    blk(i, &format!("{p}.weight")),
                    vec![hd64],
                    1.0,
                    0.1,
                );
                add(
                    &mut plan,
                    blk(i, &format!("{p}.bias")),
                    vec![hd64],
                    0.0,
                    0.0,
                );
            }
            add(
                &mut plan,
                blk(i, "post_attention_norm.weight"),
                vec![e64],
                0.3,
                0.05,
            );
        }
        add(&mut plan, blk(i, "ffn_up.weight"), vec![e64, ff64], 0.0, w);
        add(&mut plan, blk(i, "ffn_up.bias"), vec![ff64], 0.0, 0.05);
        add(
            &mut plan,
            blk(i, "ffn_down.weight"),
            vec![ff64, e64],
            0.0,
            0.5 / (ff as f32).sqrt(),
        );
        add(&mut plan, blk(i, "ffn_down.bias"), vec![e64], 0.0, 0.02);
    }
    add(&mut plan, "output_norm.weight".into(), vec![e64], 1.0, 0.1);
    add(&mut plan, "output_norm.bias".into(), vec![e64], 0.0, 0.05);
    add(&mut plan, "output.weight".into(), vec![e64, v64], 0.0, w);
    add(&mut plan, "output.bias".into(), vec![v64], 0.0, 0.1);
    if plan.tensors.iter().any(|t| t.ty.is_quantized()) {
        plan.kv("general.quantization_version", Value::U32(2));
    }
    Ok(plan)
}

/// The vision file at TinyGPT-V's real shapes: ViT-g (39 blocks, 1408 wide) at 224 (stage 3)
/// or 448 (stage 4), Q-Former (12 layers, 768 wide, 32 queries), projections 768→4096→2560.
pub fn plan_synth_vision(arch_kind: SynthArch, target: Target, pure: bool) -> Result<Plan> {
    if arch_kind == SynthArch::Phi2 {
        bail!("--mmproj-out needs --arch tinygptv-stage3 or tinygptv-stage4");
    }
    let image = if arch_kind == SynthArch::TinyGptvStage4 {
        448usize
    } else {
        224
    };
    let (p, d, heads, ff, blocks) = (14usize, 1408usize, 16usize, 6144usize, 39usize);
    let (qd, q_layers, q_heads, q_ff, nq) = (768usize, 12usize, 12usize, 3072usize, 32usize);
    let (proj_mid, n_embd) = (4096usize, 2560usize);
    let n_pos = (image / p).pow(2) + 1;
    let cross: Vec<i32> = (0..q_layers as i32).filter(|l| l % 2 == 0).collect();
    let mut plan = Plan::default();
    plan.kv("general.architecture", v_str(arch::ARCH_CLIP));
    plan.kv("general.type", v_str("mmproj"));
    plan.kv(
        "general.name",
        v_str("synthetic random-weight TinyGPT-V vision tower"),
    );
    plan.kv("general.file_type", Value::U32(target.llama_ftype()));
    plan.kv("clip.projector_type", v_str(arch::PROJECTOR_QFORMER));
    plan.kv("clip.has_vision_encoder", Value::Bool(true));
    plan.kv("clip.vision.image_size", v_u32(image));
    plan.kv("clip.vision.patch_size", v_u32(p));
    plan.kv("clip.vision.embedding_length", v_u32(d));
    plan.kv("clip.vision.feed_forward_length", v_u32(ff));
    plan.kv("clip.vision.block_count", v_u32(blocks));
    plan.kv("clip.vision.attention.head_count", v_u32(heads));
    plan.kv("clip.vision.attention.layer_norm_epsilon", v_f32(1e-6));
    plan.kv(arch::KEY_VISION_POST_LN_EPS, v_f32(1e-5));
    plan.kv("clip.vision.projection_dim", v_u32(n_embd));
    plan.kv(
        "clip.vision.image_mean",
        Value::f32_array(&crate::vision::IMAGE_MEAN),
    );
    plan.kv(
        "clip.vision.image_std",
        Value::f32_array(&crate::vision::IMAGE_STD),
    );
    plan.kv("clip.vision.gelu_erf", Value::Bool(true));
    plan.kv("clip.qformer.query_count", v_u32(nq));
    plan.kv("clip.qformer.embedding_length", v_u32(qd));
    plan.kv("clip.qformer.block_count", v_u32(q_layers));
    plan.kv("clip.qformer.attention.head_count", v_u32(q_heads));
    plan.kv("clip.qformer.feed_forward_length", v_u32(q_ff));
    plan.kv("clip.qformer.attention.layer_norm_epsilon", v_f32(1e-12));
    plan.kv("clip.qformer.encoder_width", v_u32(d));
    plan.kv("clip.qformer.gelu_erf", Value::Bool(true));
    plan.kv(arch::KEY_QFORMER_CROSS_LAYERS, Value::i32_array(&cross));

    let mut seed = 1000u64;
    let mut add = |plan: &mut Plan, name: String, dims: Vec<u64>, mean: f32, amp: f32| {
        let ty = choose_type(&name, &dims, target, pure, blocks);
        let n = dims.iter().product::<u64>() as usize;
        seed += 1;
        plan.tensor(name, ty, dims, rand_source(n, seed, mean, amp));
    };
    let u = |v: usize| v as u64;
    let lin = |plan: &mut Plan, add: &mut AddTensor, name: &str, rows: usize, cols: usize| {
        add(
            plan,
            format!("{name}.weight"),
            vec![u(cols), u(rows)],
            0.0,
            1.7 / (cols as f32).sqrt(),
        );
        add(plan, format!("{name}.bias"), vec![u(rows)], 0.0, 0.02);
    };
    let norm = |plan: &mut Plan, add: &mut AddTensor, name: &str, n: usize| {
        add(plan, format!("{name}.weight"), vec![u(n)], 1.0, 0.1);
        add(plan, format!("{name}.bias"), vec![u(n)], 0.0, 0.02);
    };
    add(
        &mut plan,
        "v.patch_embd.weight".into(),
        vec![u(p), u(p), 3, u(d)],
        0.0,
        0.05,
    );
    add(&mut plan, "v.patch_embd.bias".into(), vec![u(d)], 0.0, 0.02);
    add(&mut plan, "v.class_embd".into(), vec![u(d)], 0.0, 0.1);
    add(
        &mut plan,
        "v.position_embd.weight".into(),
        vec![u(d), u(n_pos)],
        0.0,
        0.1,
    );
    for i in 0..blocks {
        let pre = format!("v.blk.{i}");
        norm(&mut plan, &mut add, &format!("{pre}.ln1"), d);
        lin(&mut plan, &mut add, &format!("{pre}.attn_qkv"), 3 * d, d);
        lin(&mut plan, &mut add, &format!("{pre}.attn_out"), d, d);
        norm(&mut plan, &mut add, &format!("{pre}.ln2"), d);
        lin(&mut plan, &mut add, &format!("{pre}.ffn_up"), ff, d);
        lin(&mut plan, &mut add, &format!("{pre}.ffn_down"), d, ff);
    }
    norm(&mut plan, &mut add, "v.post_ln", d);
    add(
        &mut plan,
        "qformer.query".into(),
        vec![u(qd), u(nq)],
        0.0,
        0.5,
    );
    norm(&mut plan, &mut add, "qformer.embd_norm", qd);
    for i in 0..q_layers {
        let pre = format!("qformer.blk.{i}");
        for n in ["attn_q", "attn_k", "attn_v", "attn_out"] {
            lin(&mut plan, &mut add, &format!("{pre}.{n}"), qd, qd);
        }
        norm(&mut plan, &mut add, &format!("{pre}.attn_out_norm"), qd);
        if i % 2 == 0 {
            lin(&mut plan, &mut add, &format!("{pre}.cross_q"), qd, qd);
            lin(&mut plan, &mut add, &format!("{pre}.cross_k"), qd, d);
            lin(&mut plan, &mut add, &format!("{pre}.cross_v"), qd, d);
            lin(&mut plan, &mut add, &format!("{pre}.cross_out"), qd, qd);
            norm(&mut plan, &mut add, &format!("{pre}.cross_out_norm"), qd);
        }
        lin(&mut plan, &mut add, &format!("{pre}.ffn_up"), q_ff, qd);
        lin(&mut plan, &mut add, &format!("{pre}.ffn_down"), qd, q_ff);
        norm(&mut plan, &mut add, &format!("{pre}.ffn_out_norm"), qd);
    }
    lin(&mut plan, &mut add, "mm.0", proj_mid, qd);
    lin(&mut plan, &mut add, "mm.1", n_embd, proj_mid);
    if plan.tensors.iter().any(|t| t.ty.is_quantized()) {
        plan.kv("general.quantization_version", Value::U32(2));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_are_deterministic_and_bounded() {
        let a = random_values(200_000, 7, 1.0, 0.5);
        assert_eq!(a, random_values(200_000, 7, 1.0, 0.5));
        assert!(a.iter().all(|&v| (0.5..=1.5).contains(&v)));
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
        assert!((mean - 1.0).abs() < 0.01);
    }

    #[test]
    fn synthetic_tokenizer_is_well_formed() {
        let mut plan = Plan::default();
        synth_tokenizer(&mut plan, 51200);
        let get = |k: &str| {
            plan.kv
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let tokens = get("tokenizer.ggml.tokens");
        let tokens = tokens.as_string_array().unwrap();
        assert_eq!(tokens.len(), 51200);
        assert_eq!(tokens[50256], "<|endoftext|>");
        assert_eq!(
            get("tokenizer.ggml.merges").as_array().unwrap().len(),
            50_000
        );
        let tok = runtime::tokenizer::Tokenizer::from_parts(
            tokens.iter().map(|s| s.to_string()).collect(),
            get("tokenizer.ggml.token_type").as_i32_array().unwrap(),
            get("tokenizer.ggml.merges")
                .as_string_array()
                .unwrap()
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            Some(50256),
            Some(50256),
        )
        .unwrap();
        let ids = tok.encode("hello world", true);
        assert!(!ids.is_empty());
        assert_eq!(tok.decode(&ids), "hello world");
    }
}
