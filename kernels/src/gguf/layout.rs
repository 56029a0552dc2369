//! The container's layout rules, shared by the reader and the writer (gguf.md §1.1-1.4, §9):
//! magic and version, alignment, tensor-name and dimension limits, tensor byte sizes, and the
//! strict data-offset rule of llama.cpp.

use crate::repack::RepackLayout;
use crate::types::GgmlType;

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version this writer produces. The reader also accepts 2 (same layout).
pub const GGUF_VERSION: u32 = 3;
/// Alignment of the data blob and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// The metadata key that overrides the alignment; must be a UINT32 power of two.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Longest tensor name in bytes: ggml's `GGML_MAX_NAME` is 64 including the NUL.
pub const MAX_TENSOR_NAME_BYTES: usize = 63;
/// `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Longest string ggml's reader accepts (1 GiB).
pub const MAX_STRING_BYTES: u64 = 1 << 30;
/// Longest metadata key (the ggml GGUF spec: at most 65535 bytes).
pub const MAX_KEY_BYTES: usize = 65535;

/// One tensor-info record plus the byte size it implies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// ggml `ne` order: `dims[0]` is the contiguous (innermost) dimension, the reverse of the
    /// PyTorch/NumPy shape. A `Linear.weight` `[out, in]` has `dims == [in, out]`.
    pub dims: Vec<u64>,
    /// Offset of the data relative to the start of the data blob ([`GgufFile::data_offset`]).
    ///
    /// [`GgufFile::data_offset`]: super::GgufFile::data_offset
    pub offset: u64,
    /// Bytes of data (without the padding that follows it).
    pub n_bytes: u64,
    /// `Some` for a matrix that `tinygptv repack` stored in one of the ×16 row-interleaved
    /// layouts (type id [`RepackLayout::gguf_type_id`]; `ty` is then the type it rearranges):
    /// its bytes are not rows of `ty`, and only [`crate::repack::RepackedMatrix::from_gguf`]
    /// reads them.
    pub layout: Option<RepackLayout>,
}

impl TensorInfo {
    /// Product of all dimensions (1 for zero dimensions).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Number of rows: the product of `dims[1..]` (1 for a vector).
    pub fn rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Elements per row, `dims[0]` (1 for zero dimensions).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Bytes of one row of `dims[0]` elements (0 if `dims[0]` is not a multiple of the block
    /// size, which a validated tensor never has).
    pub fn row_bytes(&self) -> u64 {
        self.ty.row_bytes(self.row_len()).unwrap_or(0)
    }
}

/// Validates the shape of a ×16 interleaved matrix (`dims == [cols, rows]`) and returns
/// `(n_elements, n_bytes)`: whole 16-row groups, so up to 15 padding rows' bytes.
pub fn interleaved_tensor_size(layout: RepackLayout, dims: &[u64]) -> Result<(u64, u64), String> {
    if dims.len() != 2 {
        return Err(format!(
            "is stored in the {layout:?} layout, which needs 2 dimensions, not {}",
            dims.len()
        ));
    }
    let (n_elements, _) = tensor_size(layout.ty(), dims)?;
    match layout.matrix_bytes(dims[1], dims[0]) {
        Some(n) if n <= i64::MAX as u64 => Ok((n_elements, n)),
        _ => Err(format!("shape {dims:?} overflows the int64 byte size")),
    }
}

/// `x` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// ggml accepts any non-zero power of two (the GGUF spec asks for a multiple of 8).
pub fn check_alignment(align: u64) -> Result<(), String> {
    if align == 0 || !align.is_power_of_two() {
        return Err(format!("alignment {align} is not a non-zero power of two"));
    }
    Ok(())
}

pub fn check_tensor_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_TENSOR_NAME_BYTES {
        return Err(format!(
            "name is {} bytes long, the limit is {MAX_TENSOR_NAME_BYTES} (GGML_MAX_NAME)",
            name.len()
        ));
    }
    Ok(())
}

/// Validates a shape for `ty` and returns `(n_elements, n_bytes)`.
///
/// Rules of ggml's reader: at most 4 dims, each a non-negative int64, the element count fits in
/// int64, `dims[0]` a multiple of the block size; the byte size must fit in int64 too.
pub fn tensor_size(ty: GgmlType, dims: &[u64]) -> Result<(u64, u64), String> {
    if dims.len() > MAX_DIMS {
        return Err(format!(
            "has {} dimensions, at most {MAX_DIMS} are supported",
            dims.len()
        ));
    }
    let limit = i64::MAX as u64;
    let mut n_elements: u64 = 1;
    for (i, &d) in dims.iter().enumerate() {
        if d > limit {
            return Err(format!("dimension {i} is {d}, which is negative as int64"));
        }
        n_elements = match n_elements.checked_mul(d) {
            Some(n) if n <= limit => n,
            _ => return Err(format!("shape {dims:?} overflows the int64 element count")),
        };
    }
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % ty.block_size() as u64 != 0 {
        return Err(format!(
            "dimension 0 is {ne0}, not a multiple of the {} block size {}",
            ty,
            ty.block_size()
        ));
    }
    let row_bytes = ty
        .row_bytes(ne0)
        .ok_or_else(|| format!("shape {dims:?} overflows the int64 byte size"))?;
    // Checked on its own: with a zero dimension the element count no longer bounds it.
    let rows = dims.iter().skip(1).try_fold(1u64, |acc, &d| {
        acc.checked_mul(d)
            .ok_or_else(|| format!("shape {dims:?} overflows the row count"))
    })?;
    match row_bytes.checked_mul(rows) {
        Some(n) if n <= limit => Ok((n_elements, n)),
        _ => Err(format!("shape {dims:?} overflows the int64 byte size")),
    }
}
