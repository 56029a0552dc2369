//! Which GGUF type each tensor gets (llama.cpp's policy, gguf.md §2.4).
//!
//! 1-D tensors, norms, biases, position / CLS / query embeddings and the patch-embedding kernel
//! stay F32; other matrices take the target type; a matrix whose row length does not fit the
//! block size falls back to the nearest type that does; `output.weight` gets a higher-precision
//! type unless `--pure`; `q4_k_m` mixes Q4_K / Q5_K / Q6_K by layer like llama.cpp.

use kernels::GgmlType;

/// The `--type` of a conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Plain(GgmlType),
    /// llama.cpp's Q4_K_M mixture.
    Q4KM,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        if lower == "q4_k_m" {
            return Ok(Target::Q4KM);
        }
        let lower = lower
            .strip_suffix("_s")
            .filter(|b| b.ends_with("_k"))
            .unwrap_or(&lower);
        match GgmlType::from_name(lower) {
            Some(t @ (GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K)) => Ok(Target::Plain(t)),
            _ => Err(format!(
                "unknown type '{s}' (expected f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k or q4_k_m)"
            )),
        }
    }
}

impl Target {
    pub fn name(self) -> String {
        match self {
            Target::Plain(t) => t.name().to_ascii_lowercase(),
            Target::Q4KM => "q4_k_m".into(),
        }
    }

    /// `general.file_type` (llama_ftype, gguf.md §5.1).
    pub fn llama_ftype(self) -> u32 {
        match self {
            Target::Plain(t) => match t {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q4_1 => 3,
                GgmlType::Q8_0 => 7,
                GgmlType::Q5_0 => 8,
                GgmlType::Q5_1 => 9,
                GgmlType::Q4_K => 14,
                GgmlType::Q5_K => 16,
                GgmlType::Q6_K => 18,
                GgmlType::BF16 => 32,
                _ => 1024,
            },
            Target::Q4KM => 15,
        }
    }

    fn base(self) -> GgmlType {
        match self {
            Target::Plain(t) => t,
            Target::Q4KM => GgmlType::Q4_K,
        }
    }
}

/// Tensors that always stay F32 whatever the target.
pub fn keep_f32(name: &str, n_dims: usize) -> bool {
    n_dims <= 1
        || !name.ends_with(".weight")
        || name.ends_with("_norm.weight")
        || name.contains("norm")
        || name.ends_with("_ln.weight")
        || name.contains(".ln1.")
        || name.contains(".ln2.")
        || name.starts_with("v.position_embd")
        || name.starts_with("v.patch_embd")
        || name.starts_with("v.class_embd")
        || name.starts_with("qformer.query")
}

/// llama.cpp's "use more bits" layer rule of the K-quant mixtures.
fn more_bits(layer: usize, n_layer: usize) -> bool {
    // short-circuit: the last term is only reached with layer ≥ n_layer / 8
    layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2
}

fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Nearest type whose block fits rows of `ne0` elements.
pub fn fallback(ty: GgmlType, ne0: u64) -> GgmlType {
    if ne0.is_multiple_of(ty.block_size() as u64) {
        return ty;
    }
    let next = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    fallback(next, ne0)
}

/// The type of tensor `name` with GGUF dims `dims` (`dims[0]` = row length).
pub fn choose_type(
    name: &str,
    dims: &[u64],
    target: Target,
    pure: bool,
    n_layer: usize,
) -> GgmlType {
    if keep_f32(name, dims.len()) {
        return GgmlType::F32;
    }
    let base = target.base();
    let mut ty = base;
    if !pure && base.is_quantized() {
        if name == "output.weight" {
            ty = if base == GgmlType::Q8_0 {
                GgmlType::Q8_0
            } else {
                GgmlType::Q6_K
            };
        } else if target == Target::Q4KM {
            let layer = layer_of(name);
            if name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight") {
                if layer.is_some_and(|l| more_bits(l, n_layer)) {
                    ty = GgmlType::Q6_K;
                }
            } else if name.ends_with("attn_qkv.weight") {
                ty = GgmlType::Q5_K;
            }
        }
    }
    fallback(ty, dims[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        let t: Target = "q4_0".parse().unwrap();
        assert_eq!(
            choose_type("blk.0.attn_norm.weight", &[2560], t, false, 32),
            GgmlType::F32
        );
        assert_eq!(
            choose_type("blk.0.attn_q.bias", &[2560], t, false, 32),
            GgmlType::F32
        );
        assert_eq!(
            choose_type("blk.0.attn_q.weight", &[2560, 2560], t, false, 32),
            GgmlType::Q4_0
        );
        assert_eq!(
            choose_type("output.weight", &[2560, 51200], t, false, 32),
            GgmlType::Q6_K
        );
        assert_eq!(
            choose_type("output.weight", &[2560, 51200], t, true, 32),
            GgmlType::Q4_0
        );
        assert_eq!(
            choose_type("v.patch_embd.weight", &[14, 14, 3, 1408], t, false, 39),
            GgmlType::F32
        );
        let k: Target = "q4_k".parse().unwrap();
        assert_eq!(
            choose_type("v.blk.0.attn_qkv.weight", &[1408, 4224], k, false, 39),
            GgmlType::Q5_0
        );
        let m: Target = "q4_k_m".parse().unwrap();
        assert_eq!(
            choose_type("blk.0.ffn_down.weight", &[10240, 2560], m, false, 32),
            GgmlType::Q6_K
        );
        assert_eq!(
            choose_type("blk.5.ffn_down.weight", &[10240, 2560], m, false, 32),
            GgmlType::Q4_K
        );
        assert_eq!(
            choose_type("blk.6.ffn_down.weight", &[10240, 2560], m, false, 32),
            GgmlType::Q6_K
        );
        assert_eq!(
            choose_type("blk.5.attn_qkv.weight", &[2560, 7680], m, false, 32),
            GgmlType::Q5_K
        );
        assert_eq!(m.llama_ftype(), 15);
        assert_eq!(
            "Q4_K_S".parse::<Target>().unwrap(),
            Target::Plain(GgmlType::Q4_K)
        );
        assert!("q3_k".parse::<Target>().is_err());
        // 1408 is not a multiple of 32·k: F16 fallback chain for odd widths
        assert_eq!(fallback(GgmlType::Q4_0, 100), GgmlType::F16);
    }
}
