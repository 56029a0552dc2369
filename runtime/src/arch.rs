//! GGUF names for the language models: architectures, metadata keys and tensor names.
//!
//! Stock Phi-2 uses llama.cpp's `phi2` names exactly (gguf.md §2). The TinyGPT-V variant is the
//! architecture `tinygptv`: the same phi2-style keys under the `tinygptv.` prefix, plus
//! - `blk.N.attn_q_norm.{weight,bias}`, `blk.N.attn_k_norm.{weight,bias}`: the per-head QK
//!   LayerNorm (one `head_dim` parameter set shared by all heads, applied before RoPE),
//! - `blk.N.post_attention_norm.weight`: the RMSNorm on the attention branch,
//! - `tinygptv.attention.layer_norm_rms_epsilon` (FLOAT32, 1e-6),
//! - `tinygptv.prompt_template` (STRING: `stage3` | `stage4`).
//!
//! Generation defaults the converter stores (any architecture):
//! `tinygptv.generation.{temperature,top_p,repetition_penalty}` (FLOAT32),
//! `tinygptv.generation.{top_k,max_new_tokens}` (UINT32), `tinygptv.generation.stop` (ARRAY of STRING).

pub const ARCH_PHI2: &str = "phi2";
pub const ARCH_TINYGPTV: &str = "tinygptv";

pub const KEY_PROMPT_TEMPLATE: &str = "tinygptv.prompt_template";
pub const KEY_GEN_TEMPERATURE: &str = "tinygptv.generation.temperature";
pub const KEY_GEN_TOP_P: &str = "tinygptv.generation.top_p";
pub const KEY_GEN_TOP_K: &str = "tinygptv.generation.top_k";
pub const KEY_GEN_REPEAT_PENALTY: &str = "tinygptv.generation.repetition_penalty";
pub const KEY_GEN_MAX_NEW_TOKENS: &str = "tinygptv.generation.max_new_tokens";
pub const KEY_GEN_STOP: &str = "tinygptv.generation.stop";

/// `{arch}.{suffix}`, e.g. `llm_key("phi2", "block_count")`.
pub fn llm_key(arch: &str, suffix: &str) -> String {
    format!("{arch}.{suffix}")
}

/// `blk.{layer}.{suffix}`.
pub fn blk(layer: usize, suffix: &str) -> String {
    format!("blk.{layer}.{suffix}")
}

// ---------------------------------------------------------------------------------------------
// Vision file (mmproj-style, `general.architecture = clip`, `clip.projector_type = qformer`)
// ---------------------------------------------------------------------------------------------
//
// Keys: llama.cpp's `clip.vision.*` (gguf.md §4.2) plus our extension:
// - `clip.vision.post_ln_epsilon` (FLOAT32): eps of `v.post_ln` (= LAVIS `ln_vision`, 1e-5);
// - `clip.vision.gelu_erf`, `clip.qformer.gelu_erf` (BOOL, true): exact GELU;
// - `clip.qformer.{query_count, embedding_length, block_count, attention.head_count,
//   feed_forward_length, encoder_width}` (UINT32), `clip.qformer.attention.layer_norm_epsilon`
//   (FLOAT32), `clip.qformer.cross_attention_layers` (ARRAY of INT32: layer indices).
// Tensors: `v.patch_embd.{weight,bias}` (ne [P, P, 3, D]), `v.class_embd`, `v.position_embd.weight`
// ([D, n_pos], already interpolated for the image size), `v.blk.N.{ln1, attn_qkv, attn_out, ln2,
// ffn_up, ffn_down}.{weight,bias}` (attn_qkv bias = [q_bias | 0 | v_bias]), `v.post_ln.*`;
// `qformer.query` ([Dq, n_query]), `qformer.embd_norm.*`, `qformer.blk.N.{attn_q, attn_k, attn_v,
// attn_out, attn_out_norm, cross_q, cross_k, cross_v, cross_out, cross_out_norm, ffn_up,
// ffn_down, ffn_out_norm}.{weight,bias}`; projections `mm.0.*` (llama_proj), `mm.1.*` (llama_proj2).

pub const ARCH_CLIP: &str = "clip";
pub const PROJECTOR_QFORMER: &str = "qformer";
pub const KEY_VISION_POST_LN_EPS: &str = "clip.vision.post_ln_epsilon";
pub const KEY_QFORMER_CROSS_LAYERS: &str = "clip.qformer.cross_attention_layers";
