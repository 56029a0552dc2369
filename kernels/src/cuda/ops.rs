//! Typed launch wrappers, one per kernel of `kernels/cuda/`: each checks its shapes and buffer
//! lengths, computes the launch grid and passes the kernel exactly its parameters, so a wrong
//! call is an error here and never an out-of-bounds access on the device.
//!
//! Conventions: matrices are row-major; `y[r][c]` of a matmul is output `c` of activation row
//! `r` (GGUF weights are `[n outputs][k inputs]`); all activations are f32 unless said
//! otherwise. Results are asynchronous until read back ([`Device::read`]) or
//! [`Device::synchronize`].

use crate::formats::row_bytes;
use crate::types::GgmlType;

use super::device::{Arg, DevSlice, Device, DeviceBuffer};
use super::CudaError;

/// Most activation rows a GEMV launch takes (decode, and small batches).
pub const GEMV_MAX_COLS: usize = 8;
/// Largest head dimension the attention kernel takes.
pub const ATTENTION_MAX_HEAD_DIM: usize = 128;
/// Bytes of one Q8_1 block (32 activations).
pub const Q8_1_BLOCK_BYTES: usize = 36;

const GEMV_WARPS: u32 = 4;

/// Bytes of one row of `k` activations in the device's split Q8_1 layout (common.cuh): `k/32`
/// groups of 36 bytes, the 32 quants of every group first, then the (d, s) pairs, padded to 16.
pub fn q8_1_row_stride(k: usize) -> usize {
    (k / 32 * Q8_1_BLOCK_BYTES).div_ceil(16) * 16
}

/// Bytes of `m` rows of `k` activations quantized by [`Device::quantize_q8_1`].
pub fn q8_1_bytes(k: usize, m: usize) -> usize {
    m * q8_1_row_stride(k)
}
const GEMM_TILE: usize = 64;

fn shape(msg: String) -> CudaError {
    CudaError::Shape(msg)
}

fn to_i32(v: usize, what: &str) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| shape(format!("{what} = {v} exceeds the kernels' 32-bit sizes")))
}

fn need<T>(s: &DevSlice<'_, T>, n: usize, what: &str) -> Result<(), CudaError> {
    if s.len() < n {
        return Err(shape(format!(
            "{what}: needs {n} elements, the buffer holds {}",
            s.len()
        )));
    }
    Ok(())
}

/// Elements spanned by `rows` rows of `width` with row stride `ld` (0 rows: 0).
fn span(rows: usize, ld: usize, width: usize) -> Result<usize, CudaError> {
    if rows == 0 {
        return Ok(0);
    }
    (rows - 1)
        .checked_mul(ld)
        .and_then(|v| v.checked_add(width))
        .ok_or_else(|| shape(format!("{rows} rows of stride {ld} overflow")))
}

fn blocks(n: usize, per: usize) -> Result<u32, CudaError> {
    u32::try_from(n.div_ceil(per)).map_err(|_| shape(format!("{n} elements need too many blocks")))
}

/// Weight formats the CUDA kernels read (GEMV, GEMM, embedding gather).
pub fn is_supported_weight(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
    )
}

fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// Bytes at the start of each GGUF block that the split layout moves after the quants (common.cuh),
/// for the types that have one.
fn split_head(ty: GgmlType) -> Option<usize> {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q8_0).then_some(2)
}

/// The GEMV kernel for F32 / F16 / BF16 weights (f32 activations).
fn gemv_float_kernel(ty: GgmlType) -> &'static str {
    use GgmlType::*;
    match ty {
        F32 => "gemv_f32",
        F16 => "gemv_f16",
        BF16 => "gemv_bf16",
        _ => unreachable!("float weights only"),
    }
}

/// The quantized GEMV kernels of `w` (gemv.cu), one per variant, in the order of
/// [`GemvVariant::ALL`].
fn gemv_quantized_kernels(w: &DeviceWeight) -> [&'static str; 4] {
    macro_rules! variants {
        ($base:literal) => {
            [
                $base,
                concat!($base, "_r2"),
                concat!($base, "_u2"),
                concat!($base, "_r2_u2"),
            ]
        };
    }
    use GgmlType::*;
    match w.ty {
        Q4_0 if w.split => variants!("gemv_q4_0s_q8_1"),
        Q8_0 if w.split => variants!("gemv_q8_0s_q8_1"),
        Q4_0 => variants!("gemv_q4_0_q8_1"),
        Q4_1 => variants!("gemv_q4_1_q8_1"),
        Q5_0 => variants!("gemv_q5_0_q8_1"),
        Q5_1 => variants!("gemv_q5_1_q8_1"),
        Q8_0 => variants!("gemv_q8_0_q8_1"),
        Q4_K => variants!("gemv_q4_k_q8_1"),
        Q5_K => variants!("gemv_q5_k_q8_1"),
        Q6_K => variants!("gemv_q6_k_q8_1"),
        _ => unreachable!("quantized weights checked by is_supported_weight"),
    }
}

/// How a quantized GEMV kernel walks its matrix: weight rows per warp (1 or 2: each activation
/// load serves that many rows, at the cost of fewer warps in flight) and 32-element groups per
/// lane loaded before any is used (4 or 2: loads in flight against registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvVariant {
    pub rows: usize,
    pub unroll: usize,
}

impl GemvVariant {
    /// Every variant, in the order of the kernel names.
    pub const ALL: [GemvVariant; 4] = [
        GemvVariant { rows: 1, unroll: 4 },
        GemvVariant { rows: 2, unroll: 4 },
        GemvVariant { rows: 1, unroll: 2 },
        GemvVariant { rows: 2, unroll: 2 },
    ];

    pub(crate) fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|&v| v == self)
            .expect("a listed variant")
    }
}

/// The variant each weight type runs with unless forced ([`Device::force_gemv_variant`]), from
/// the per-shape table of bench/CUDA.md (H200): the split layouts take two rows per warp and four
/// groups per step (their 16-byte weight loads leave the activation loads as the larger share);
/// the K-quants run fastest with one row and two groups (more warps, fewer registers), which is
/// also what the other GGUF layouts ran with before there were variants.
pub(crate) fn gemv_variant(w: &DeviceWeight) -> GemvVariant {
    if w.split {
        GemvVariant { rows: 2, unroll: 4 }
    } else {
        GemvVariant { rows: 1, unroll: 2 }
    }
}

fn gemm_kernel(w: &DeviceWeight) -> &'static str {
    use GgmlType::*;
    match w.ty {
        Q4_0 if w.split => "gemm_q4_0s_f16",
        Q8_0 if w.split => "gemm_q8_0s_f16",
        F32 => "gemm_f32_f16",
        F16 => "gemm_f16_f16",
        BF16 => "gemm_bf16_f16",
        Q4_0 => "gemm_q4_0_f16",
        Q4_1 => "gemm_q4_1_f16",
        Q5_0 => "gemm_q5_0_f16",
        Q5_1 => "gemm_q5_1_f16",
        Q8_0 => "gemm_q8_0_f16",
        Q4_K => "gemm_q4_k_f16",
        Q5_K => "gemm_q5_k_f16",
        Q6_K => "gemm_q6_k_f16",
        _ => unreachable!("checked by is_supported_weight"),
    }
}

fn get_rows_kernel(w: &DeviceWeight) -> &'static str {
    use GgmlType::*;
    match w.ty {
        Q4_0 if w.split => "get_rows_q4_0s",
        Q8_0 if w.split => "get_rows_q8_0s",
        F32 => "get_rows_f32",
        F16 => "get_rows_f16",
        BF16 => "get_rows_bf16",
        Q4_0 => "get_rows_q4_0",
        Q4_1 => "get_rows_q4_1",
        Q5_0 => "get_rows_q5_0",
        Q5_1 => "get_rows_q5_1",
        Q8_0 => "get_rows_q8_0",
        Q4_K => "get_rows_q4_k",
        Q5_K => "get_rows_q5_k",
        Q6_K => "get_rows_q6_k",
        _ => unreachable!("checked by is_supported_weight"),
    }
}

/// A weight matrix in device memory: `rows` outputs × `cols` inputs of type `ty`, each row as in
/// the GGUF file, or for Q4_0 / Q8_0 rows of a multiple of 8 blocks in the split layout
/// (`split`; common.cuh): quants first, then the scales, so that the kernels read them with
/// aligned 16-byte loads. Rows keep their size and place either way.
#[derive(Debug)]
pub struct DeviceWeight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub split: bool,
    buf: DeviceBuffer,
}

impl DeviceWeight {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.buf.len() / self.rows.max(1)
    }

    /// Device memory held.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// The weight bytes on the device (e.g. to fill them in parts).
    pub fn bytes_slice(&self) -> DevSlice<'_, u8> {
        self.buf.slice::<u8>()
    }

    fn data(&self) -> DevSlice<'_, u8> {
        self.buf.slice::<u8>()
    }

    /// Whether the GEMV takes Q8_1 activations ([`Device::gemv_q8_1`]) for these weights
    /// (every block format; F32 / F16 / BF16 take f32 activations).
    pub fn is_quantized(&self) -> bool {
        !is_float(self.ty)
    }
}

/// Where one row of a normalization starts: row (group g, token t) is at
/// `t·ld_tok + g·ld_grp`. [`Rows::contiguous`] is the plain `[tokens, dim]` case; per-head
/// rows inside a wider buffer use `groups = heads`, `ld_grp = head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub tokens: usize,
    pub groups: usize,
    pub ld_tok: usize,
    pub ld_grp: usize,
}

impl Rows {
    pub fn contiguous(tokens: usize, dim: usize) -> Rows {
        Rows {
            tokens,
            groups: 1,
            ld_tok: dim,
            ld_grp: 0,
        }
    }

    fn extent(&self, dim: usize) -> Result<usize, CudaError> {
        if self.tokens == 0 || self.groups == 0 {
            return Ok(0);
        }
        let last_group = (self.groups - 1)
            .checked_mul(self.ld_grp)
            .ok_or_else(|| shape("row groups overflow".into()))?;
        span(self.tokens, self.ld_tok, 0)?
            .checked_add(last_group)
            .and_then(|v| v.checked_add(dim))
            .ok_or_else(|| shape("rows overflow".into()))
    }
}

/// Keys and values of an attention call: f16 (the KV cache) or f32.
#[derive(Clone, Copy, Debug)]
pub enum KvSlices<'a> {
    F16 {
        k: DevSlice<'a, u16>,
        v: DevSlice<'a, u16>,
    },
    F32 {
        k: DevSlice<'a, f32>,
        v: DevSlice<'a, f32>,
    },
}

impl KvSlices<'_> {
    fn len(&self) -> usize {
        match self {
            KvSlices::F16 { k, v } => k.len().min(v.len()),
            KvSlices::F32 { k, v } => k.len().min(v.len()),
        }
    }
}

/// Shape of a multi-head attention call. Query `t` of head `h` is `q[t·ld_q + h·head_dim ..]`,
/// key/value `p` of KV head `h / (n_head / n_head_kv)` is at `p·ld_kv + kvh·head_dim`, the
/// output of `(t, h)` goes to `out[t·ld_out + h·head_dim ..]`. Scores are `scale·q·k`; with
/// `causal = Some(pos0)`, query `t` sees keys `0 ..= pos0 + t` (the KV cache holds the new
/// positions already), else all `n_kv` keys.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub n_q: usize,
    pub n_kv: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub ld_q: usize,
    pub ld_kv: usize,
    pub ld_out: usize,
    pub scale: f32,
    pub causal: Option<usize>,
}

/// Keys per split of [`Device::attention`]: split when the query blocks alone would leave
/// most of a large GPU idle (aiming at ~256 blocks), in multiples of the 32-key chunk and at
/// least 64 keys per split.
fn auto_split_len(s: &AttentionShape) -> usize {
    const TARGET_BLOCKS: usize = 256;
    if s.n_q == 1 {
        // the decode kernel: 128 keys per round of its four warps; splits up to ~256 blocks
        let per_block = s.n_kv.div_ceil((TARGET_BLOCKS / s.n_head.max(1)).max(1));
        return per_block.max(1).div_ceil(128) * 128;
    }
    let blocks = s.n_q.div_ceil(16) * s.n_head;
    if blocks >= TARGET_BLOCKS / 2 || s.n_kv < 128 {
        return s.n_kv.max(1);
    }
    let splits = TARGET_BLOCKS.div_ceil(blocks).min(s.n_kv / 64).max(1);
    s.n_kv.div_ceil(splits).div_ceil(32) * 32
}

/// Device scratch memory of [`Device::matmul`] (quantized or f16 activations) and
/// [`Device::attention`] (split states), grown on demand. Its contents do not outlive a call.
#[derive(Default)]
pub struct Scratch {
    buf: Option<DeviceBuffer>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { buf: None }
    }

    fn get(&mut self, dev: &Device, bytes: usize) -> Result<&DeviceBuffer, CudaError> {
        if self.buf.as_ref().is_none_or(|b| b.len() < bytes) {
            self.buf = None; // free first: the old buffer may be large
                             // grow by half again so slowly growing batches do not reallocate every call
            let want = bytes.max(bytes / 2 * 3).max(1 << 16);
            self.buf = Some(dev.alloc(want)?);
        }
        Ok(self.buf.as_ref().expect("allocated above"))
    }
}

impl Device {
    /// Uploads a weight matrix (`data` as stored in GGUF, e.g. a slice of the memory map).
    pub fn upload_weight(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<DeviceWeight, CudaError> {
        if !is_supported_weight(ty) {
            return Err(CudaError::Unsupported(format!("{ty} weights on CUDA")));
        }
        to_i32(rows, "weight rows")?;
        to_i32(cols, "weight columns")?;
        let rb = row_bytes(ty, cols).map_err(|e| shape(e.to_string()))?;
        let expected = rb
            .checked_mul(rows)
            .ok_or_else(|| shape(format!("{rows} rows of {ty} overflow")))?;
        if data.len() != expected {
            return Err(shape(format!(
                "{ty} weight [{rows} × {cols}]: expected {expected} bytes, got {}",
                data.len()
            )));
        }
        let nb = cols / 32;
        let head = split_head(ty).filter(|_| nb.is_multiple_of(8) && rows > 0);
        let Some(head) = head else {
            return Ok(DeviceWeight {
                ty,
                rows,
                cols,
                split: false,
                buf: self.upload(data)?,
            });
        };
        // GGUF bytes to a staging buffer, then split on the device (one pass at copy speed)
        let staged = self.upload(data)?;
        let buf = self.alloc(data.len())?;
        self.launch(
            "split_blocks",
            (blocks(nb, 128)?, to_grid_y(rows)?, 1),
            (128, 1, 1),
            &[
                staged.slice::<u8>().arg(),
                buf.slice::<u8>().arg(),
                Arg::I32(to_i32(nb, "blocks")?),
                Arg::I32(to_i32(rb / nb, "block bytes")?),
                Arg::I32(head as i32),
            ],
        )?;
        // the staging buffer is freed when it drops: make sure the kernel has read it
        self.synchronize()?;
        Ok(DeviceWeight {
            ty,
            rows,
            cols,
            split: true,
            buf,
        })
    }

    /// The quantizer behind [`Device::quantize_q8_1`] (`act` 0) and
    /// [`Device::gelu_tanh_quantize_q8_1`] (`act` 1).
    fn quantize_act_q8_1(
        &self,
        x: DevSlice<'_, f32>,
        ldx: usize,
        k: usize,
        m: usize,
        y: DevSlice<'_, u8>,
        act: i32,
    ) -> Result<(), CudaError> {
        if !k.is_multiple_of(32) || ldx < k {
            return Err(shape(format!(
                "quantize_q8_1: k = {k} must be a multiple of 32 and at most ldx = {ldx}"
            )));
        }
        need(&x, span(m, ldx, k)?, "quantize_q8_1: x")?;
        let groups = m * (k / 32);
        need(&y, q8_1_bytes(k, m), "quantize_q8_1: y")?;
        self.launch(
            "quantize_q8_1",
            (blocks(groups, 4)?, 1, 1),
            (32, 4, 1),
            &[
                x.arg(),
                y.arg(),
                Arg::I32(to_i32(k, "k")?),
                Arg::I32(to_i32(m, "m")?),
                Arg::I32(to_i32(ldx, "ldx")?),
                Arg::I32(act),
            ],
        )
    }

    /// Quantizes `m` rows of `k` activations (row stride `ldx`) to Q8_1 in `y`: the values of
    /// [`crate::formats::quantize_row_q8_1_ref`]'s blocks, bit for bit, in the device's split
    /// layout ([`q8_1_row_stride`] bytes per row: the 32 quants of every group, then each
    /// group's (d, s) as two f16).
    pub fn quantize_q8_1(
        &self,
        x: DevSlice<'_, f32>,
        ldx: usize,
        k: usize,
        m: usize,
        y: DevSlice<'_, u8>,
    ) -> Result<(), CudaError> {
        self.quantize_act_q8_1(x, ldx, k, m, y, 0)
    }

    /// GELU (tanh) of `m` contiguous rows of `k` activations, quantized to Q8_1 in `y` as
    /// [`Device::quantize_q8_1`] would quantize [`Device::gelu_tanh`]'s output, in one pass
    /// (the input of Phi-2's MLP down projection in decode).
    pub fn gelu_tanh_quantize_q8_1(
        &self,
        x: DevSlice<'_, f32>,
        k: usize,
        m: usize,
        y: DevSlice<'_, u8>,
    ) -> Result<(), CudaError> {
        self.quantize_act_q8_1(x, k, k, m, y, 1)
    }

    /// `y[r][c] = f16(x[r][c])` for `c < k`, zero for `k <= c < ldy` (`m` rows, strides `ldx`,
    /// `ldy`): the zero-padded f16 activations [`Device::gemm`] reads.
    pub fn convert_f32_f16_pad(
        &self,
        x: DevSlice<'_, f32>,
        ldx: usize,
        k: usize,
        m: usize,
        y: DevSlice<'_, u16>,
        ldy: usize,
    ) -> Result<(), CudaError> {
        if ldy < k || ldx < k {
            return Err(shape(format!(
                "convert_f32_f16_pad: k = {k} exceeds a stride ({ldx}, {ldy})"
            )));
        }
        need(&x, span(m, ldx, k)?, "convert_f32_f16_pad: x")?;
        need(&y, span(m, ldy, ldy)?, "convert_f32_f16_pad: y")?;
        self.launch(
            "convert_f32_f16_pad",
            (blocks(ldy, 256)?, to_grid_y(m)?, 1),
            (256, 1, 1),
            &[
                x.arg(),
                y.arg(),
                Arg::I32(to_i32(k, "k")?),
                Arg::I32(to_i32(m, "m")?),
                Arg::I32(to_i32(ldx, "ldx")?),
                Arg::I32(to_i32(ldy, "ldy")?),
            ],
        )
    }

    /// Matrix × vector(s) for at most [`GEMV_MAX_COLS`] activation rows:
    /// `y[r][c] = Σ_k W[c][k]·x[r][k] (+ bias[c])`, `y` is `m × w.rows`. For quantized weights
    /// `x` holds the activations as Q8_1 bytes ([`Device::quantize_q8_1`]); for F32 / F16 / BF16
    /// weights use [`Device::gemv_f32_act`].
    pub fn gemv_q8_1(
        &self,
        w: &DeviceWeight,
        xq: DevSlice<'_, u8>,
        m: usize,
        bias: Option<DevSlice<'_, f32>>,
        y: DevSlice<'_, f32>,
    ) -> Result<(), CudaError> {
        self.gemv_q8_1_checked("gemv_q8_1", w, xq, m, bias, None, y)
    }

    /// [`Device::gemv_q8_1`] followed by the residual update: `y = add0 + (add1 + (x·Wᵀ + bias))`
    /// (`add0`, `add1` laid out like `y`; `y` may be `add0`), the same bits as
    /// [`Device::add3`]`(add0, add1, gemv)` without the extra launch (Phi-2's MLP down
    /// projection closing a layer). Quantized weights only.
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_q8_1_residual(
        &self,
        w: &DeviceWeight,
        xq: DevSlice<'_, u8>,
        m: usize,
        bias: Option<DevSlice<'_, f32>>,
        add0: DevSlice<'_, f32>,
        add1: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
    ) -> Result<(), CudaError> {
        need(&add0, m * w.rows, "gemv: residual add0")?;
        need(&add1, m * w.rows, "gemv: residual add1")?;
        let residual = Some((add0, add1));
        self.gemv_q8_1_checked("gemv_q8_1_residual", w, xq, m, bias, residual, y)
    }

    /// The checks and launch behind [`Device::gemv_q8_1`] and [`Device::gemv_q8_1_residual`].
    #[allow(clippy::too_many_arguments)]
    fn gemv_q8_1_checked(
        &self,
        what: &str,
        w: &DeviceWeight,
        xq: DevSlice<'_, u8>,
        m: usize,
        bias: Option<DevSlice<'_, f32>>,
        residual: Option<(DevSlice<'_, f32>, DevSlice<'_, f32>)>,
        y: DevSlice<'_, f32>,
    ) -> Result<(), CudaError> {
        if is_float(w.ty) {
            return Err(shape(format!(
                "{what}: {} weights take f32 activations (gemv_f32_act)",
                w.ty
            )));
        }
        self.check_gemv(w, m, bias, y)?;
        need(&xq, q8_1_bytes(w.cols, m), "gemv: quantized activations")?;
        self.launch_gemv(w, xq.arg(), m, bias, residual, y)
    }

    /// [`Device::gemv_q8_1`] for F32 / F16 / BF16 weights with f32 activations `x` (`m × k`).
    pub fn gemv_f32_act(
        &self,
        w: &DeviceWeight,
        x: DevSlice<'_, f32>,
        m: usize,
        bias: Option<DevSlice<'_, f32>>,
        y: DevSlice<'_, f32>,
    ) -> Result<(), CudaError> {
        if !is_float(w.ty) {
            return Err(shape(format!(
                "gemv_f32_act: {} weights take Q8_1 activations (gemv_q8_1)",
                w.ty
            )));
        }
        self.check_gemv(w, m, bias, y)?;
        need(&x, m * w.cols, "gemv: activations")?;
        self.launch_gemv(w, x.arg(), m, bias, None, y)
    }

    fn check_gemv(
        &self,
        w: &DeviceWeight,
        m: usize,
        bias: Option<DevSlice<'_, f32>>,
        y: DevSlice<'_, f32>,
    ) -> Result<(), CudaError> {
        if m > GEMV_MAX_COLS {
            return Err(shape(format!(
                "gemv: {m} activation rows (at most {GEMV_MAX_COLS}; use gemm)"
            )));
        }
        if let Some(b) = bias {
            need(&b, w.rows, "gemv: bias")?;
        }
        need(&y, m * w.rows, "gemv: y")
    }

    fn launch_gemv(
        &self,
        w: &DeviceWeight,
        x: Arg,
        m: usize,
        bias: Option<DevSlice<'_, f32>>,
        residual: Option<(DevSlice<'_, f32>, DevSlice<'_, f32>)>,
        y: DevSlice<'_, f32>,
    ) -> Result<(), CudaError> {
        if m == 0 {
            return Ok(());
        }
        let bias = bias.map_or(Arg::Ptr(0), |b| b.arg());
        if is_float(w.ty) {
            assert!(residual.is_none(), "checked by gemv_q8_1_residual");
            return self.launch(
                gemv_float_kernel(w.ty),
                (blocks(w.rows, GEMV_WARPS as usize)?, 1, 1),
                (32, GEMV_WARPS, 1),
                &[
                    w.data().arg(),
                    x,
                    bias,
                    y.arg(),
                    Arg::I32(w.rows as i32),
                    Arg::I32(w.cols as i32),
                    Arg::I32(m as i32),
                ],
            );
        }
        let v = self
            .forced_gemv_variant()
            .unwrap_or_else(|| gemv_variant(w));
        let (kernel, rows) = (gemv_quantized_kernels(w)[v.index()], v.rows);
        let (add0, add1) = residual.map_or((Arg::Ptr(0), Arg::Ptr(0)), |(a, b)| (a.arg(), b.arg()));
        self.launch(
            kernel,
            (blocks(w.rows, GEMV_WARPS as usize * rows)?, 1, 1),
            (32, GEMV_WARPS, 1),
            &[
                w.data().arg(),
                x,
                bias,
                add0,
                add1,
                y.arg(),
                Arg::I32(w.rows as i32),
                Arg::I32(w.cols as i32),
                Arg::I32(m as i32),
            ],
        )
    }

    /// Tiled tensor-core GEMM: `y[r][c] = Σ_k W[c][k]·x[r][k] (+ bias[c])` with `x` the f16
    /// activations from [`Device::convert_f32_f16_pad`] (`m` rows of stride `ldx`, a multiple of
    /// 32 at least `k`, zero padded), `y` is `m × w.rows` f32.
    pub fn gemm(
        &self,
        w: &DeviceWeight,
        x: DevSlice<'_, u16>,
        ldx: usize,
        m: usize,
        bias: Option<DevSlice<'_, f32>>,
        y: DevSlice<'_, f32>,
    ) -> Result<(), CudaError> {
        if !ldx.is_multiple_of(32) || ldx < w.cols {
            return Err(shape(format!(
                "gemm: ldx = {ldx} must be a multiple of 32 at least k = {}",
                w.cols
            )));
        }
        need(&x, span(m, ldx, ldx)?, "gemm: activations")?;
        if let Some(b) = bias {
            need(&b, w.rows, "gemm: bias")?;
        }
        need(&y, m * w.rows, "gemm: y")?;
        self.launch(
            gemm_kernel(w),
            (
                blocks(w.rows, GEMM_TILE)?,
                to_grid_y(m.div_ceil(GEMM_TILE))?,
                1,
            ),
            (128, 1, 1),
            &[
                w.data().arg(),
                x.arg(),
                Arg::I32(to_i32(ldx, "ldx")?),
                bias.map_or(Arg::Ptr(0), |b| b.arg()),
                y.arg(),
                Arg::I32(w.rows as i32),
                Arg::I32(w.cols as i32),
                Arg::I32(to_i32(m, "m")?),
            ],
        )
    }

    /// `y = x·Wᵀ (+ bias)` for `m` rows of f32 activations `x` (`m × w.cols`, contiguous):
    /// GEMV over Q8_1 activations for `m <= GEMV_MAX_COLS` (decode), else the tensor-core GEMM
    /// over f16 activations. `scratch` holds the converted activations between calls.
    pub fn matmul(
        &self,
        w: &DeviceWeight,
        x: DevSlice<'_, f32>,
        m: usize,
        bias: Option<DevSlice<'_, f32>>,
        y: DevSlice<'_, f32>,
        scratch: &mut Scratch,
    ) -> Result<(), CudaError> {
        let k = w.cols;
        need(&x, m * k, "matmul: x")?;
        if m <= GEMV_MAX_COLS {
            if is_float(w.ty) {
                return self.gemv_f32_act(w, x, m, bias, y);
            }
            let bytes = q8_1_bytes(k, m);
            let xq = scratch.get(self, bytes)?.slice::<u8>().range(0, bytes);
            self.quantize_q8_1(x, k, k, m, xq)?;
            return self.gemv_q8_1(w, xq, m, bias, y);
        }
        let ldx = k.div_ceil(32) * 32;
        let n16 = m
            .checked_mul(ldx)
            .ok_or_else(|| shape("matmul: activations overflow".into()))?;
        let x16 = scratch.get(self, n16 * 2)?.slice::<u16>().range(0, n16);
        self.convert_f32_f16_pad(x, k, k, m, x16, ldx)?;
        self.gemm(w, x16, ldx, m, bias, y)
    }

    /// LayerNorm of every row (see [`Rows`]): `y = (x − mean)/√(var + eps)·w + b`. `y` uses the
    /// same layout and may be `x`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(
        &self,
        x: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
        w: Option<DevSlice<'_, f32>>,
        b: Option<DevSlice<'_, f32>>,
        dim: usize,
        rows: Rows,
        eps: f32,
    ) -> Result<(), CudaError> {
        self.layer_norm_impl(x, y, w, b, dim, rows, eps, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_norm_impl(
        &self,
        x: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
        w: Option<DevSlice<'_, f32>>,
        b: Option<DevSlice<'_, f32>>,
        dim: usize,
        rows: Rows,
        eps: f32,
        yq: Option<DevSlice<'_, u8>>,
    ) -> Result<(), CudaError> {
        self.check_norm("layer_norm", x, y, w, dim, rows)?;
        if let Some(b) = b {
            need(&b, dim, "layer_norm: bias")?;
        }
        self.launch(
            "layer_norm_f32",
            (to_grid_x(rows.groups)?, to_grid_y(rows.tokens)?, 1),
            (128, 1, 1),
            &[
                x.arg(),
                y.arg(),
                w.map_or(Arg::Ptr(0), |s| s.arg()),
                b.map_or(Arg::Ptr(0), |s| s.arg()),
                Arg::I32(to_i32(dim, "dim")?),
                Arg::I32(to_i32(rows.ld_tok, "ld_tok")?),
                Arg::I32(to_i32(rows.ld_grp, "ld_grp")?),
                Arg::F32(eps),
                yq.map_or(Arg::Ptr(0), |s| s.arg()),
            ],
        )
    }

    /// [`Device::layer_norm`] of `tokens` contiguous rows of `dim` (a multiple of 32) that also
    /// writes the output quantized to Q8_1 in `yq` (as [`Device::quantize_q8_1`] would from `y`)
    /// for the decode GEMVs, in the same launch.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_q8_1(
        &self,
        x: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
        yq: DevSlice<'_, u8>,
        w: Option<DevSlice<'_, f32>>,
        b: Option<DevSlice<'_, f32>>,
        dim: usize,
        tokens: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        if !dim.is_multiple_of(32) {
            return Err(shape(format!(
                "layer_norm_q8_1: dim = {dim} must be a multiple of 32"
            )));
        }
        need(&yq, q8_1_bytes(dim, tokens), "layer_norm_q8_1: yq")?;
        self.layer_norm_impl(
            x,
            y,
            w,
            b,
            dim,
            Rows::contiguous(tokens, dim),
            eps,
            Some(yq),
        )
    }

    /// RMSNorm of every row: `y = x/√(mean(x²) + eps)·w`.
    pub fn rms_norm(
        &self,
        x: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
        w: Option<DevSlice<'_, f32>>,
        dim: usize,
        rows: Rows,
        eps: f32,
    ) -> Result<(), CudaError> {
        self.check_norm("rms_norm", x, y, w, dim, rows)?;
        self.launch(
            "rms_norm_f32",
            (to_grid_x(rows.groups)?, to_grid_y(rows.tokens)?, 1),
            (128, 1, 1),
            &[
                x.arg(),
                y.arg(),
                w.map_or(Arg::Ptr(0), |s| s.arg()),
                Arg::I32(to_i32(dim, "dim")?),
                Arg::I32(to_i32(rows.ld_tok, "ld_tok")?),
                Arg::I32(to_i32(rows.ld_grp, "ld_grp")?),
                Arg::F32(eps),
            ],
        )
    }

    fn check_norm(
        &self,
        what: &str,
        x: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
        w: Option<DevSlice<'_, f32>>,
        dim: usize,
        rows: Rows,
    ) -> Result<(), CudaError> {
        if dim == 0 {
            return Err(shape(format!("{what}: dim is 0")));
        }
        let extent = rows.extent(dim)?;
        need(&x, extent, &format!("{what}: x"))?;
        need(&y, extent, &format!("{what}: y"))?;
        if let Some(w) = w {
            need(&w, dim, &format!("{what}: weight"))?;
        }
        Ok(())
    }

    /// Partial NeoX RoPE in place on `tokens` rows of `n_head` heads of `head_dim` (head `h` of
    /// token `t` at `x[t·ld_tok + h·head_dim]`, position `pos0 + t`), rotating the first
    /// `n_rot` dims with frequency base `theta`, then multiplying every element by `scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_neox(
        &self,
        x: DevSlice<'_, f32>,
        tokens: usize,
        n_head: usize,
        head_dim: usize,
        n_rot: usize,
        ld_tok: usize,
        pos0: usize,
        theta: f32,
        scale: f32,
    ) -> Result<(), CudaError> {
        if !n_rot.is_multiple_of(2) || n_rot > head_dim {
            return Err(shape(format!(
                "rope: n_rot = {n_rot} must be even and at most head_dim = {head_dim}"
            )));
        }
        need(&x, span(tokens, ld_tok, n_head * head_dim)?, "rope: x")?;
        to_i32(pos0 + tokens, "rope positions")?;
        self.launch(
            "rope_neox_f32",
            (to_grid_x(n_head)?, to_grid_y(tokens)?, 1),
            (64, 1, 1),
            &[
                x.arg(),
                Arg::I32(to_i32(head_dim, "head_dim")?),
                Arg::I32(n_rot as i32),
                Arg::I32(to_i32(ld_tok, "ld_tok")?),
                Arg::I32(pos0 as i32),
                Arg::F32(theta),
                Arg::F32(scale),
            ],
        )
    }

    /// Softmax attention over all heads (see [`AttentionShape`]). When the queries alone
    /// would give the GPU few blocks (decode: one query per head), the keys are split across
    /// blocks (flash-decoding) and merged by a second kernel through `scratch`.
    pub fn attention(
        &self,
        q: DevSlice<'_, f32>,
        kv: KvSlices<'_>,
        out: DevSlice<'_, f32>,
        s: &AttentionShape,
        scratch: &mut Scratch,
    ) -> Result<(), CudaError> {
        let split_len = auto_split_len(s);
        self.attention_split(q, kv, out, s, split_len, scratch)
    }

    /// [`Device::attention`] with the keys split into blocks of `split_len` positions (`>= n_kv`:
    /// no split).
    pub fn attention_split(
        &self,
        q: DevSlice<'_, f32>,
        kv: KvSlices<'_>,
        out: DevSlice<'_, f32>,
        s: &AttentionShape,
        split_len: usize,
        scratch: &mut Scratch,
    ) -> Result<(), CudaError> {
        if s.head_dim == 0 || s.head_dim > ATTENTION_MAX_HEAD_DIM {
            return Err(shape(format!(
                "attention: head_dim = {} (1 ..= {ATTENTION_MAX_HEAD_DIM})",
                s.head_dim
            )));
        }
        if s.n_head == 0 || s.n_head_kv == 0 || !s.n_head.is_multiple_of(s.n_head_kv) {
            return Err(shape(format!(
                "attention: {} heads over {} KV heads",
                s.n_head, s.n_head_kv
            )));
        }
        let width = s.n_head * s.head_dim;
        need(&q, span(s.n_q, s.ld_q, width)?, "attention: q")?;
        need(&out, span(s.n_q, s.ld_out, width)?, "attention: out")?;
        let kv_need = span(s.n_kv, s.ld_kv, s.n_head_kv * s.head_dim)?;
        if kv.len() < kv_need {
            return Err(shape(format!(
                "attention: k/v need {kv_need} elements, hold {}",
                kv.len()
            )));
        }
        let pos0 = s.causal.unwrap_or(0);
        to_i32(pos0 + s.n_q, "attention positions")?;
        let split_len = split_len.clamp(1, s.n_kv.max(1));
        let splits = s.n_kv.div_ceil(split_len).max(1);
        if splits > 65535 {
            return Err(shape(format!(
                "attention: {splits} key splits (at most 65535)"
            )));
        }
        let partial_len = if splits > 1 {
            splits
                .checked_mul(s.n_head * s.n_q)
                .and_then(|v| v.checked_mul(s.head_dim + 2))
                .ok_or_else(|| shape("attention: split state overflows".into()))?
        } else {
            0
        };
        let partial = if splits > 1 {
            Some(
                scratch
                    .get(self, partial_len * 4)?
                    .slice::<f32>()
                    .range(0, partial_len),
            )
        } else {
            None
        };
        // one query per head (decode): the kernel whose warps all take keys
        let decode = s.n_q == 1;
        let (kernel, k, v) = match (kv, decode) {
            (KvSlices::F16 { k, v }, false) => ("attention_f16kv", k.arg(), v.arg()),
            (KvSlices::F32 { k, v }, false) => ("attention_f32kv", k.arg(), v.arg()),
            (KvSlices::F16 { k, v }, true) => ("attention_decode_f16kv", k.arg(), v.arg()),
            (KvSlices::F32 { k, v }, true) => ("attention_decode_f32kv", k.arg(), v.arg()),
        };
        self.launch(
            kernel,
            (blocks(s.n_q, 16)?, to_grid_y(s.n_head)?, splits as u32),
            (32, 4, 1),
            &[
                q.arg(),
                Arg::I32(to_i32(s.ld_q, "ld_q")?),
                k,
                v,
                Arg::I32(to_i32(s.ld_kv, "ld_kv")?),
                out.arg(),
                Arg::I32(to_i32(s.ld_out, "ld_out")?),
                Arg::I32(to_i32(s.n_q, "n_q")?),
                Arg::I32(to_i32(s.n_kv, "n_kv")?),
                Arg::I32(s.n_head as i32),
                Arg::I32(s.n_head_kv as i32),
                Arg::I32(s.head_dim as i32),
                Arg::F32(s.scale),
                Arg::I32(s.causal.is_some() as i32),
                Arg::I32(pos0 as i32),
                Arg::I32(split_len as i32),
                partial.map_or(Arg::Ptr(0), |p| p.arg()),
            ],
        )?;
        if let Some(p) = partial {
            self.launch(
                "attention_combine",
                (to_grid_x(s.n_q)?, to_grid_y(s.n_head)?, 1),
                (128, 1, 1),
                &[
                    p.arg(),
                    out.arg(),
                    Arg::I32(s.ld_out as i32),
                    Arg::I32(s.n_q as i32),
                    Arg::I32(s.n_head as i32),
                    Arg::I32(s.head_dim as i32),
                    Arg::I32(splits as i32),
                ],
            )?;
        }
        Ok(())
    }

    fn unary(
        &self,
        kernel: &'static str,
        x: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        need(&x, n, kernel)?;
        need(&y, n, kernel)?;
        self.launch(
            kernel,
            (blocks(n, 256)?, 1, 1),
            (256, 1, 1),
            &[x.arg(), y.arg(), Arg::I32(to_i32(n, "n")?)],
        )
    }

    /// `y = gelu(x)` with tanh (Phi-2's `gelu_new`); `y` may be `x`.
    pub fn gelu_tanh(
        &self,
        x: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        self.unary("gelu_tanh_f32", x, y, n)
    }

    /// `y = gelu(x)` with erf (EVA ViT, Q-Former); `y` may be `x`.
    pub fn gelu_erf(
        &self,
        x: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        self.unary("gelu_erf_f32", x, y, n)
    }

    /// `y = a + b` over `n` elements.
    pub fn add(
        &self,
        a: DevSlice<'_, f32>,
        b: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        for s in [&a, &b, &y] {
            need(s, n, "add")?;
        }
        self.launch(
            "add_f32",
            (blocks(n, 256)?, 1, 1),
            (256, 1, 1),
            &[a.arg(), b.arg(), y.arg(), Arg::I32(to_i32(n, "n")?)],
        )
    }

    /// `y = x + (a + b)` over `n` elements (Phi-2's parallel residual).
    pub fn add3(
        &self,
        x: DevSlice<'_, f32>,
        a: DevSlice<'_, f32>,
        b: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        for s in [&x, &a, &b, &y] {
            need(s, n, "add3")?;
        }
        self.launch(
            "add3_f32",
            (blocks(n, 256)?, 1, 1),
            (256, 1, 1),
            &[
                x.arg(),
                a.arg(),
                b.arg(),
                y.arg(),
                Arg::I32(to_i32(n, "n")?),
            ],
        )
    }

    /// `y = x·s` over `n` elements.
    pub fn scale(
        &self,
        x: DevSlice<'_, f32>,
        y: DevSlice<'_, f32>,
        s: f32,
        n: usize,
    ) -> Result<(), CudaError> {
        need(&x, n, "scale")?;
        need(&y, n, "scale")?;
        self.launch(
            "scale_f32",
            (blocks(n, 256)?, 1, 1),
            (256, 1, 1),
            &[x.arg(), y.arg(), Arg::F32(s), Arg::I32(to_i32(n, "n")?)],
        )
    }

    /// `x[r][c] += bias[c]` for `nrows` rows of `ncols` (row stride `ldx`).
    pub fn add_bias(
        &self,
        x: DevSlice<'_, f32>,
        bias: DevSlice<'_, f32>,
        ncols: usize,
        nrows: usize,
        ldx: usize,
    ) -> Result<(), CudaError> {
        need(&x, span(nrows, ldx, ncols)?, "add_bias: x")?;
        need(&bias, ncols, "add_bias: bias")?;
        self.launch(
            "add_bias_f32",
            (blocks(ncols, 256)?, to_grid_y(nrows)?, 1),
            (256, 1, 1),
            &[
                x.arg(),
                bias.arg(),
                Arg::I32(to_i32(ncols, "ncols")?),
                Arg::I32(nrows as i32),
                Arg::I32(to_i32(ldx, "ldx")?),
            ],
        )
    }

    /// `dst[r][c] = f16(src[r][c])` over `nrows × ncols` with row strides (e.g. storing new keys
    /// into the f16 KV cache).
    pub fn copy_f32_to_f16(
        &self,
        src: DevSlice<'_, f32>,
        ld_src: usize,
        dst: DevSlice<'_, u16>,
        ld_dst: usize,
        ncols: usize,
        nrows: usize,
    ) -> Result<(), CudaError> {
        let kernel = ("copy_f32_f16_2d", "copy_f32_to_f16");
        self.copy_2d(kernel, src, ld_src, dst, ld_dst, ncols, nrows)
    }

    /// `dst[r][c] = src[r][c]` over `nrows × ncols` with row strides.
    pub fn copy_f32(
        &self,
        src: DevSlice<'_, f32>,
        ld_src: usize,
        dst: DevSlice<'_, f32>,
        ld_dst: usize,
        ncols: usize,
        nrows: usize,
    ) -> Result<(), CudaError> {
        self.copy_2d(
            ("copy_f32_2d", "copy_f32"),
            src,
            ld_src,
            dst,
            ld_dst,
            ncols,
            nrows,
        )
    }

    /// A strided 2-D copy kernel (`kernel`: its name and the caller's, for errors).
    #[allow(clippy::too_many_arguments)]
    fn copy_2d<S, D>(
        &self,
        (kernel, what): (&'static str, &str),
        src: DevSlice<'_, S>,
        ld_src: usize,
        dst: DevSlice<'_, D>,
        ld_dst: usize,
        ncols: usize,
        nrows: usize,
    ) -> Result<(), CudaError> {
        need(&src, span(nrows, ld_src, ncols)?, &format!("{what}: src"))?;
        need(&dst, span(nrows, ld_dst, ncols)?, &format!("{what}: dst"))?;
        self.launch(
            kernel,
            (blocks(ncols, 256)?, to_grid_y(nrows)?, 1),
            (256, 1, 1),
            &[
                src.arg(),
                Arg::I32(to_i32(ld_src, "ld_src")?),
                dst.arg(),
                Arg::I32(to_i32(ld_dst, "ld_dst")?),
                Arg::I32(to_i32(ncols, "ncols")?),
                Arg::I32(nrows as i32),
            ],
        )
    }

    /// Embedding gather: `out[i][:] = W[ids[i]][:]` dequantized to f32 (`ids.len()` rows of
    /// `w.cols`). Ids out of range give rows of zeros; check host-side ids first
    /// ([`Device::get_rows_host_ids`] does).
    pub fn get_rows(
        &self,
        w: &DeviceWeight,
        ids: DevSlice<'_, i32>,
        out: DevSlice<'_, f32>,
    ) -> Result<(), CudaError> {
        let n = ids.len();
        need(&out, n * w.cols, "get_rows: out")?;
        self.launch(
            get_rows_kernel(w),
            (to_grid_x(n)?, 1, 1),
            (128, 1, 1),
            &[
                w.data().arg(),
                ids.arg(),
                out.arg(),
                Arg::I32(w.cols as i32),
                Arg::I32(w.rows as i32),
            ],
        )
    }

    /// [`Device::get_rows`] for ids given on the host, checked against the row count.
    pub fn get_rows_host_ids(
        &self,
        w: &DeviceWeight,
        ids: &[u32],
        out: DevSlice<'_, f32>,
    ) -> Result<(), CudaError> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= w.rows) {
            return Err(shape(format!(
                "token id {bad} is out of range (the table has {} rows)",
                w.rows
            )));
        }
        let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let buf = self.upload(&ids)?;
        self.get_rows(w, buf.slice::<i32>(), out)
        // `buf` is freed here; cuMemFree waits for the device, so the kernel has read it
    }

    /// Keeps the device busy for `ns` nanoseconds (one thread on the GPU's timer; nothing on
    /// the emulator): launches made right after it queue up behind it, so a timing of them
    /// ([`Device::time`]) measures the device alone, not how fast the host can launch.
    pub fn spin(&self, ns: u64) -> Result<(), CudaError> {
        self.launch("spin_ns", (1, 1, 1), (1, 1, 1), &[Arg::U64(ns)])
    }

    /// `out[0]` = index of the first maximum of `x` (greedy sampling on the device).
    pub fn argmax(&self, x: DevSlice<'_, f32>, out: DevSlice<'_, i32>) -> Result<(), CudaError> {
        need(&out, 1, "argmax: out")?;
        self.launch(
            "argmax_f32",
            (1, 1, 1),
            (256, 1, 1),
            &[x.arg(), Arg::I32(to_i32(x.len(), "n")?), out.arg()],
        )
    }
}

fn to_grid_x(n: usize) -> Result<u32, CudaError> {
    u32::try_from(n)
        .ok()
        .filter(|&v| v <= i32::MAX as u32)
        .ok_or_else(|| shape(format!("{n} blocks exceed the grid limit")))
}

fn to_grid_y(n: usize) -> Result<u32, CudaError> {
    u32::try_from(n)
        .ok()
        .filter(|&v| v <= 65535)
        .ok_or_else(|| shape(format!("{n} rows exceed the grid's y limit of 65535")))
}
