//! The type-erased entry points over raw GGUF bytes (re-exported from [`crate::formats`]).

use std::borrow::Cow;

use bytemuck::Pod;
use half::{bf16, f16};

use super::{
    dequantize_row_bf16, dequantize_row_f16, dequantize_row_f32, dequantize_row_q4_0,
    dequantize_row_q4_1, dequantize_row_q4_k, dequantize_row_q5_0, dequantize_row_q5_1,
    dequantize_row_q5_k, dequantize_row_q6_k, dequantize_row_q8_0, dequantize_row_q8_1,
    dequantize_row_q8_k, quantize_row_bf16, quantize_row_f16, quantize_row_q4_0_ref,
    quantize_row_q4_1_ref, quantize_row_q4_k_ref, quantize_row_q5_0_ref, quantize_row_q5_1_ref,
    quantize_row_q5_k_ref, quantize_row_q6_k_ref, quantize_row_q8_0_ref, quantize_row_q8_1_ref,
    quantize_row_q8_k_ref, vec_dot_bf16_f32, vec_dot_f16_f32, vec_dot_f32_f32, vec_dot_q4_0_q8_0,
    vec_dot_q4_1_q8_1, vec_dot_q4_k_q8_k, vec_dot_q5_0_q8_0, vec_dot_q5_1_q8_1, vec_dot_q5_k_q8_k,
    vec_dot_q6_k_q8_k, vec_dot_q8_0_q8_0, FormatError,
};
use crate::types::GgmlType;

/// Whether [`quantize_row`] / [`dequantize_row`] handle `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | Q4_K | Q5_K | Q6_K | Q8_K
    )
}

/// Whether `ty` can be the weight side of [`vec_dot`] / [`crate::matmul::matmul_ref`].
pub fn supports_vec_dot(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
    )
}

/// Bytes of a row of `n` elements of `ty`, or why `n` does not fit the block size.
pub fn row_bytes(ty: GgmlType, n: usize) -> Result<usize, FormatError> {
    let block = ty.block_size();
    #[allow(clippy::manual_is_multiple_of)] // rust-version 1.80 predates is_multiple_of
    if n % block != 0 {
        return Err(FormatError::NotWholeBlocks { ty, n, block });
    }
    (n / block)
        .checked_mul(ty.type_size())
        .ok_or(FormatError::TooLarge { ty, n })
}

fn check_bytes(ty: GgmlType, n: usize, actual: usize) -> Result<(), FormatError> {
    let expected = row_bytes(ty, n)?;
    if expected != actual {
        return Err(FormatError::ByteLength {
            ty,
            n,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Views bytes as blocks, copying only when the bytes are not aligned for `T`.
/// The length must be a whole number of blocks (checked by the callers).
fn blocks<T: Pod>(bytes: &[u8]) -> Cow<'_, [T]> {
    debug_assert_eq!(bytes.len() % std::mem::size_of::<T>(), 0);
    match bytemuck::try_cast_slice(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(
            bytes
                .chunks_exact(std::mem::size_of::<T>())
                .map(bytemuck::pod_read_unaligned)
                .collect(),
        ),
    }
}

/// Runs `f` on `bytes` viewed as blocks, through an aligned copy when they are not aligned.
fn with_blocks_mut<T: Pod>(bytes: &mut [u8], f: impl FnOnce(&mut [T])) {
    match bytemuck::try_cast_slice_mut(bytes) {
        Ok(s) => f(s),
        Err(_) => {
            let mut tmp = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
            f(&mut tmp);
            bytes.copy_from_slice(bytemuck::cast_slice(&tmp));
        }
    }
}

/// Quantizes `src` (a whole number of blocks) into `dst`, the bytes of `ty` as stored in GGUF.
/// `ty` is one of F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q4_K, Q5_K, Q6_K, Q8_K;
/// quantized types use ggml's reference quantizers (no importance matrix).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), FormatError> {
    use GgmlType::*;
    if !is_supported(ty) {
        return Err(FormatError::Unsupported { ty, op: "quantize" });
    }
    check_bytes(ty, src.len(), dst.len())?;
    match ty {
        F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
        F16 => with_blocks_mut(dst, |d: &mut [f16]| quantize_row_f16(src, d)),
        BF16 => with_blocks_mut(dst, |d: &mut [bf16]| quantize_row_bf16(src, d)),
        Q4_0 => with_blocks_mut(dst, |d| quantize_row_q4_0_ref(src, d)),
        Q4_1 => with_blocks_mut(dst, |d| quantize_row_q4_1_ref(src, d)),
        Q5_0 => with_blocks_mut(dst, |d| quantize_row_q5_0_ref(src, d)),
        Q5_1 => with_blocks_mut(dst, |d| quantize_row_q5_1_ref(src, d)),
        Q8_0 => with_blocks_mut(dst, |d| quantize_row_q8_0_ref(src, d)),
        Q8_1 => with_blocks_mut(dst, |d| quantize_row_q8_1_ref(src, d)),
        Q4_K => with_blocks_mut(dst, |d| quantize_row_q4_k_ref(src, d)),
        Q5_K => with_blocks_mut(dst, |d| quantize_row_q5_k_ref(src, d)),
        Q6_K => with_blocks_mut(dst, |d| quantize_row_q6_k_ref(src, d)),
        Q8_K => with_blocks_mut(dst, |d| quantize_row_q8_k_ref(src, d)),
        _ => unreachable!("checked by is_supported"),
    }
    Ok(())
}

/// Dequantizes the bytes of `ty` (as stored in GGUF) into `dst`, whose length gives the element
/// count. Same types as [`quantize_row`].
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), FormatError> {
    use GgmlType::*;
    if !is_supported(ty) {
        return Err(FormatError::Unsupported {
            ty,
            op: "dequantize",
        });
    }
    check_bytes(ty, dst.len(), src.len())?;
    match ty {
        F32 => dequantize_row_f32(&blocks::<f32>(src), dst),
        F16 => dequantize_row_f16(&blocks::<f16>(src), dst),
        BF16 => dequantize_row_bf16(&blocks::<bf16>(src), dst),
        Q4_0 => dequantize_row_q4_0(&blocks(src), dst),
        Q4_1 => dequantize_row_q4_1(&blocks(src), dst),
        Q5_0 => dequantize_row_q5_0(&blocks(src), dst),
        Q5_1 => dequantize_row_q5_1(&blocks(src), dst),
        Q8_0 => dequantize_row_q8_0(&blocks(src), dst),
        Q8_1 => dequantize_row_q8_1(&blocks(src), dst),
        Q4_K => dequantize_row_q4_k(&blocks(src), dst),
        Q5_K => dequantize_row_q5_k(&blocks(src), dst),
        Q6_K => dequantize_row_q6_k(&blocks(src), dst),
        Q8_K => dequantize_row_q8_k(&blocks(src), dst),
        _ => unreachable!("checked by is_supported"),
    }
    Ok(())
}

/// Activations `x` (f32, len k) converted once to `weight_ty.vec_dot_type()` bytes
/// (F32 → plain f32 bytes), replacing the contents of `dst`.
///
/// # Panics
/// If `x.len()` is not a whole number of blocks of the activation type (32 for Q8_0/Q8_1, 256
/// for Q8_K) — the row length `k` of a weight of type `weight_ty` always is.
pub fn quantize_activation_row(weight_ty: GgmlType, x: &[f32], dst: &mut Vec<u8>) {
    let act_ty = weight_ty.vec_dot_type();
    let bytes = match row_bytes(act_ty, x.len()) {
        Ok(b) => b,
        Err(e) => panic!("quantize_activation_row for {weight_ty} weights: {e}"),
    };
    dst.clear();
    dst.resize(bytes, 0);
    if let Err(e) = quantize_row(act_ty, x, dst) {
        panic!("quantize_activation_row for {weight_ty} weights: {e}");
    }
}

/// Dot of one weight row (bytes of `ty`, k elements) with one activation row already in
/// `ty.vec_dot_type()` bytes (from [`quantize_activation_row`]).
///
/// # Panics
/// If `ty` is not a weight type ([`supports_vec_dot`]) or a row's byte length does not match `k`.
pub fn vec_dot(ty: GgmlType, k: usize, w_row: &[u8], act_row: &[u8]) -> f32 {
    use GgmlType::*;
    assert!(
        supports_vec_dot(ty),
        "vec_dot: {ty} is not a supported weight type"
    );
    let act_ty = ty.vec_dot_type();
    let check = |t: GgmlType, len: usize, what: &str| {
        if let Err(e) = check_bytes(t, k, len) {
            panic!("vec_dot ({ty} weights), {what} row: {e}");
        }
    };
    check(ty, w_row.len(), "weight");
    check(act_ty, act_row.len(), "activation");
    match ty {
        F32 => vec_dot_f32_f32(&blocks(w_row), &blocks(act_row)),
        F16 => vec_dot_f16_f32(&blocks(w_row), &blocks(act_row)),
        BF16 => vec_dot_bf16_f32(&blocks(w_row), &blocks(act_row)),
        Q4_0 => vec_dot_q4_0_q8_0(&blocks(w_row), &blocks(act_row)),
        Q4_1 => vec_dot_q4_1_q8_1(&blocks(w_row), &blocks(act_row)),
        Q5_0 => vec_dot_q5_0_q8_0(&blocks(w_row), &blocks(act_row)),
        Q5_1 => vec_dot_q5_1_q8_1(&blocks(w_row), &blocks(act_row)),
        Q8_0 => vec_dot_q8_0_q8_0(&blocks(w_row), &blocks(act_row)),
        Q4_K => vec_dot_q4_k_q8_k(&blocks(w_row), &blocks(act_row)),
        Q5_K => vec_dot_q5_k_q8_k(&blocks(w_row), &blocks(act_row)),
        Q6_K => vec_dot_q6_k_q8_k(&blocks(w_row), &blocks(act_row)),
        _ => unreachable!("checked by supports_vec_dot"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::test_util::test_data;
    use crate::formats::{
        quantize_row_q4_k_ref, quantize_row_q8_k_ref, vec_dot_q4_k_q8_k, Q4_0Block, Q4_1Block,
        Q4_KBlock, Q5_0Block, Q5_1Block, Q5_KBlock, Q6_KBlock, Q8_0Block, Q8_1Block, Q8_KBlock,
    };
    use bytemuck::Zeroable;

    const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ];

    #[test]
    fn block_sizes_match_types_table() {
        use std::mem::size_of;
        assert_eq!(size_of::<Q4_0Block>(), GgmlType::Q4_0.type_size());
        assert_eq!(size_of::<Q4_1Block>(), GgmlType::Q4_1.type_size());
        assert_eq!(size_of::<Q5_0Block>(), GgmlType::Q5_0.type_size());
        assert_eq!(size_of::<Q5_1Block>(), GgmlType::Q5_1.type_size());
        assert_eq!(size_of::<Q8_0Block>(), GgmlType::Q8_0.type_size());
        assert_eq!(size_of::<Q8_1Block>(), GgmlType::Q8_1.type_size());
        assert_eq!(size_of::<Q4_KBlock>(), GgmlType::Q4_K.type_size());
        assert_eq!(size_of::<Q5_KBlock>(), GgmlType::Q5_K.type_size());
        assert_eq!(size_of::<Q6_KBlock>(), GgmlType::Q6_K.type_size());
        assert_eq!(size_of::<Q8_KBlock>(), GgmlType::Q8_K.type_size());
    }

    #[test]
    fn errors_instead_of_panics() {
        let x = vec![0.5f32; 256];
        let mut short = vec![0u8; 10];
        assert_eq!(
            quantize_row(GgmlType::Q4_0, &x, &mut short),
            Err(FormatError::ByteLength {
                ty: GgmlType::Q4_0,
                n: 256,
                expected: 144,
                actual: 10
            })
        );
        assert_eq!(
            quantize_row(GgmlType::Q4_K, &x[..100], &mut short),
            Err(FormatError::NotWholeBlocks {
                ty: GgmlType::Q4_K,
                n: 100,
                block: 256
            })
        );
        assert!(matches!(
            quantize_row(GgmlType::I8, &x, &mut short),
            Err(FormatError::Unsupported { .. })
        ));
        let mut y = vec![0f32; 64];
        assert!(matches!(
            dequantize_row(GgmlType::Q8_0, &[0u8; 67], &mut y),
            Err(FormatError::ByteLength {
                expected: 68,
                actual: 67,
                ..
            })
        ));
        assert!(matches!(
            dequantize_row(GgmlType::F64, &[0u8; 8], &mut y[..1]),
            Err(FormatError::Unsupported { .. })
        ));
        let msg = quantize_row(GgmlType::Q4_K, &x[..100], &mut short)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("q4_K") || msg.contains("Q4_K"), "{msg}");
    }

    #[test]
    fn unaligned_bytes_give_the_same_results() {
        let x = test_data(512, 32, 91);
        for ty in ALL {
            let n = row_bytes(ty, x.len()).unwrap();
            let mut aligned = vec![0u8; n];
            quantize_row(ty, &x, &mut aligned).unwrap();
            // odd offset inside a larger buffer
            let mut buf = vec![0u8; n + 1];
            quantize_row(ty, &x, &mut buf[1..]).unwrap();
            assert_eq!(&buf[1..], &aligned[..], "{ty} quantize");
            let (mut y1, mut y2) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            dequantize_row(ty, &aligned, &mut y1).unwrap();
            dequantize_row(ty, &buf[1..], &mut y2).unwrap();
            assert_eq!(
                y1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                y2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{ty} dequantize"
            );
            if supports_vec_dot(ty) {
                let mut act = Vec::new();
                quantize_activation_row(ty, &x, &mut act);
                let mut act_buf = vec![0u8; act.len() + 1];
                act_buf[1..].copy_from_slice(&act);
                let d1 = vec_dot(ty, x.len(), &aligned, &act);
                let d2 = vec_dot(ty, x.len(), &buf[1..], &act_buf[1..]);
                assert_eq!(d1.to_bits(), d2.to_bits(), "{ty} vec_dot");
            }
        }
    }

    #[test]
    fn type_erased_dot_matches_typed() {
        let x = test_data(512, 32, 92);
        let a = test_data(512, 64, 93);
        let mut w = vec![Q4_KBlock::zeroed(); 2];
        quantize_row_q4_k_ref(&x, &mut w);
        let mut q8 = vec![Q8_KBlock::zeroed(); 2];
        quantize_row_q8_k_ref(&a, &mut q8);
        let mut act = Vec::new();
        quantize_activation_row(GgmlType::Q4_K, &a, &mut act);
        assert_eq!(act.as_slice(), bytemuck::cast_slice::<_, u8>(&q8));
        let got = vec_dot(GgmlType::Q4_K, 512, bytemuck::cast_slice(&w), &act);
        assert_eq!(got.to_bits(), vec_dot_q4_k_q8_k(&w, &q8).to_bits());
        // F16 weights pair with plain f32 activations
        let mut act32 = Vec::new();
        quantize_activation_row(GgmlType::F16, &a, &mut act32);
        assert_eq!(act32.as_slice(), bytemuck::cast_slice::<_, u8>(&a));
    }

    #[test]
    #[should_panic(expected = "activation row")]
    fn vec_dot_rejects_wrong_activation_length() {
        let w = vec![0u8; 18];
        vec_dot(GgmlType::Q4_0, 32, &w, &[0u8; 33]);
    }
}
