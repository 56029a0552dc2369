//! Load-time weight repacking into row-interleaved "×16" layouts (issue #7).
//!
//! GGUF stores a quantized matrix row after row, so a kernel that wants one SIMD lane per weight
//! row (no horizontal sums, the scale arithmetic lane-wise) has to gather and transpose 16 rows'
//! blocks on every pass: the packed GEMM (`simd/x86/packed.rs`) does that once per tile and
//! amortizes it over the activation rows, but a decode step (one activation row) cannot. A
//! [`RepackedMatrix`] does the transposition once, at load time:
//!
//! - rows are taken 16 at a time (a *group*; the last group repeats its last row);
//! - a group holds first the scales of all its blocks — block `b`: the 16 rows' f16 `d`, 32
//!   bytes — then the quantized values of all its blocks — block `b`, chunk `c`: 64 bytes, the
//!   4 bytes `qs[4c..4c+4]` of each of the 16 rows in row order, so that i32 lane `r` of a chunk
//!   is row `r`'s;
//! - Q4_0 (`Q4_0x16`): 4 chunks of packed nibbles per block (the low nibbles of a chunk are the
//!   values `4c..4c+4`, the high ones `16+4c..`); Q8_0 (`Q8_0x16`): 8 chunks of the values plus
//!   128 (unsigned, as `vpdpbusd` wants them).
//!
//! The bytes are the GGUF bytes rearranged, nothing is requantized: [`RepackedMatrix::row`]
//! gives each original row back, and the kernels on this layout return the reference's exact
//! results. Size: the same as the original (18 / 34 bytes per row and block) plus at most 15
//! padding rows; the K-quant records (Q4_K, Q5_K, Q6_K: [`Q4K_RECORD`], [`Q5K_RECORD`],
//! [`Q6K_RECORD`]) hold the same bits in 2368 / 2880 / 3360 bytes per 16 rows and super-block
//! (+2.8 %, +2.3 %, 0 %).

use crate::formats::k_common::{get_scale_min_k4, pack_scale_min_k4, K_SCALE_SIZE};
use crate::formats::{row_bytes, FormatError};
use crate::gguf::{GgufFile, SharedTensorData, TensorInfo};
use crate::types::GgmlType;

/// Weight rows per group (one 32-bit SIMD lane each in a 512-bit vector).
pub const GROUP_ROWS: usize = 16;

/// A repacked layout (named after the GGUF types).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepackLayout {
    /// Q4_0 weights, 16 rows interleaved (4 nibble chunks per block).
    Q4_0x16,
    /// Q8_0 weights, 16 rows interleaved (8 chunks of `q + 128` per block).
    Q8_0x16,
    /// Q4_K weights, 16 rows interleaved: one 2368-byte record per super-block (see
    /// [`Q4K_RECORD`]).
    Q4_Kx16,
    /// Q5_K weights, 16 rows interleaved: one 2880-byte record per super-block (see
    /// [`Q5K_RECORD`]).
    Q5_Kx16,
    /// Q6_K weights, 16 rows interleaved: one 3360-byte record per super-block (see
    /// [`Q6K_RECORD`]).
    Q6_Kx16,
}

/// Bytes of one Q6_Kx16 super-block record for 16 rows (the size of the 16 rows' blocks).
/// Chunk `x = 8s + l` (`s` in 0..8, class `l` in 0..8) covers elements `32s + l + 8t`,
/// `t` in 0..4, of each row (two of sub-block `2s`, two of `2s + 1`), as the 6-bit values
/// `q + 32`:
/// - `0..32`: the rows' f16 `d`;
/// - `32..288`: int8 sub-block scales in pairs — for `s`, 32 bytes `(sc[2s], sc[2s+1])` per row;
/// - `288..2336`: low 4 bits — vector `v` in 0..32 (64 bytes, lane `r` = row `r`, byte `t`)
///   holds chunk `v` in its low nibbles and chunk `v + 32` in its high nibbles;
/// - `2336..3360`: high 2 bits — vector `u` in 0..16 holds chunk `u + 16k` in bits `2k, 2k+1`.
pub const Q6K_RECORD: usize = 3360;

/// Bytes of one Q4_Kx16 super-block record for 16 rows, 64-byte aligned parts:
/// - `0..32`: the rows' f16 `d`; `32..64`: their f16 `dmin`;
/// - `64..192`: sub-block scales in pairs — for `c` in 0..4, 32 bytes `(sc[2c], sc[2c+1])` per
///   row (so a zero-extension to i16 gives lane `r` the pair);
/// - `192..320`: sub-block mins — for `j` in 0..8, 16 bytes `m[j]` per row;
/// - `320..2368`: values — for `c` in 0..4 and class `l` in 0..8, 64 bytes: lane `r` holds row
///   `r`'s `qs[32c + l + {0, 8, 16, 24}]`, whose low nibbles are elements `l + {0,8,16,24}` of
///   sub-block `2c` and whose high nibbles are those of sub-block `2c + 1` (mod-8 classes: the
///   order the AVX-512 kernels' packed chunks share with this layout).
pub const Q4K_RECORD: usize = 2368;

/// Bytes of one Q5_Kx16 super-block record for 16 rows: a [`Q4K_RECORD`] of the values' low
/// 4 bits (`qs`), then at `2368..2880` their 5th bits — for `c` in 0..4 and `h` in 0..2, 64
/// bytes whose dword `r` holds, in byte `k`, the bits of row `r`'s value chunk `(c, l = 4h +
/// k)`: bit `t` that of its low-nibble value `t` (sub-block `2c`, element `l + 8t`), bit `4 + t`
/// that of its high-nibble value `t` (sub-block `2c + 1`). 16 rows × 176 bytes + 64.
pub const Q5K_RECORD: usize = 2880;

/// Where the 5th bits of a [`Q5K_RECORD`] start.
pub const Q5K_HIGH_BITS: usize = Q4K_RECORD;

impl RepackLayout {
    /// Every layout.
    pub const ALL: [RepackLayout; 5] = [
        RepackLayout::Q4_0x16,
        RepackLayout::Q8_0x16,
        RepackLayout::Q4_Kx16,
        RepackLayout::Q5_Kx16,
        RepackLayout::Q6_Kx16,
    ];

    /// The tensor type id under which `tinygptv repack` stores this layout in a GGUF file:
    /// 1000 + the id of the GGUF type it rearranges (1002, 1008, 1012, 1013, 1014). No ggml
    /// type has such an id, so llama.cpp and other GGUF readers refuse these files instead of
    /// reading the interleaved bytes as plain rows.
    pub fn gguf_type_id(self) -> u32 {
        1000 + self.ty().id()
    }

    /// The layout stored under GGUF tensor type id `id`, if any ([`Self::gguf_type_id`]).
    pub fn from_gguf_type_id(id: u32) -> Option<RepackLayout> {
        Self::ALL.into_iter().find(|l| l.gguf_type_id() == id)
    }

    /// Bytes of a `rows × cols` matrix in this layout (whole groups), or `None` if `cols` is not
    /// a whole number of blocks or the size overflows.
    pub fn matrix_bytes(self, rows: u64, cols: u64) -> Option<u64> {
        let block = self.ty().block_size() as u64;
        if !cols.is_multiple_of(block) {
            return None;
        }
        let nb = usize::try_from(cols / block).ok()?;
        let group = self.group_bytes_checked(nb)? as u64;
        rows.div_ceil(GROUP_ROWS as u64).checked_mul(group)
    }

    fn group_bytes_checked(self, nb: usize) -> Option<usize> {
        let per_block = match self {
            RepackLayout::Q4_Kx16 => Q4K_RECORD,
            RepackLayout::Q5_Kx16 => Q5K_RECORD,
            RepackLayout::Q6_Kx16 => Q6K_RECORD,
            _ => GROUP_ROWS * (2 + self.qs_bytes()),
        };
        nb.checked_mul(per_block)
    }

    /// The layout for weights of type `ty`, if there is one.
    pub fn for_type(ty: GgmlType) -> Option<RepackLayout> {
        match ty {
            GgmlType::Q4_0 => Some(RepackLayout::Q4_0x16),
            GgmlType::Q8_0 => Some(RepackLayout::Q8_0x16),
            GgmlType::Q4_K => Some(RepackLayout::Q4_Kx16),
            GgmlType::Q5_K => Some(RepackLayout::Q5_Kx16),
            GgmlType::Q6_K => Some(RepackLayout::Q6_Kx16),
            _ => None,
        }
    }

    /// The GGUF type whose bytes this layout rearranges.
    pub fn ty(self) -> GgmlType {
        match self {
            RepackLayout::Q4_0x16 => GgmlType::Q4_0,
            RepackLayout::Q8_0x16 => GgmlType::Q8_0,
            RepackLayout::Q4_Kx16 => GgmlType::Q4_K,
            RepackLayout::Q5_Kx16 => GgmlType::Q5_K,
            RepackLayout::Q6_Kx16 => GgmlType::Q6_K,
        }
    }

    /// Bytes of quantized values per row and block (after the 2-byte scale) of the 32-element
    /// layouts.
    const fn qs_bytes(self) -> usize {
        match self {
            RepackLayout::Q4_0x16 => 16,
            _ => 32,
        }
    }

    /// XORed into every value byte (Q8_0: signed → `q + 128`).
    const fn flip(self) -> u8 {
        match self {
            RepackLayout::Q8_0x16 => 0x80,
            _ => 0,
        }
    }

    /// Bytes of one group's scales for `nb` blocks (the values follow them; 32-element
    /// layouts).
    pub const fn scale_bytes(self, nb: usize) -> usize {
        nb * GROUP_ROWS * 2
    }

    /// Bytes of one group of `nb` blocks.
    pub const fn group_bytes(self, nb: usize) -> usize {
        match self {
            RepackLayout::Q4_Kx16 => nb * Q4K_RECORD,
            RepackLayout::Q5_Kx16 => nb * Q5K_RECORD,
            RepackLayout::Q6_Kx16 => nb * Q6K_RECORD,
            _ => nb * GROUP_ROWS * (2 + self.qs_bytes()),
        }
    }
}

/// A weight matrix in a ×16 layout (see the module notes).
pub struct RepackedMatrix {
    layout: RepackLayout,
    rows: usize,
    cols: usize,
    /// Anonymous memory (page aligned, so every 64-byte chunk is one cache line), in 2 MiB
    /// pages where the kernel allows (see [`HugePageBuf`]): the decode kernels stream it once
    /// per token, and with 4 KiB pages every 4 KiB costs a TLB miss. Or the bytes of a file
    /// written in this layout (`tinygptv repack`), read in place from its map.
    data: RepackedBytes,
}

/// Where a [`RepackedMatrix`]'s bytes live.
enum RepackedBytes {
    Owned(HugePageBuf),
    File(SharedTensorData),
}

impl std::ops::Deref for RepackedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            RepackedBytes::Owned(b) => b,
            RepackedBytes::File(b) => b,
        }
    }
}

/// Anonymous memory that starts on a 2 MiB boundary and asks for transparent huge pages
/// (`MADV_HUGEPAGE`) over its whole 2 MiB pages. The kernel backs a huge page only where the
/// mapping covers all of it, and a plain mapping starts anywhere: one matrix per mapping left
/// about a quarter of Phi-2's repacked weights in 4 KiB pages. The last partial 2 MiB stays in
/// 4 KiB pages (`MADV_NOHUGEPAGE`), so the memory used stays the length asked for; the extra
/// address space reserved for the alignment is never touched.
struct HugePageBuf {
    map: memmap2::MmapMut,
    off: usize,
    len: usize,
}

impl HugePageBuf {
    const HUGE_PAGE: usize = 2 << 20;

    fn new(len: usize) -> std::io::Result<Self> {
        let len = len.max(1);
        if len < Self::HUGE_PAGE {
            let map = memmap2::MmapMut::map_anon(len)?;
            return Ok(HugePageBuf { map, off: 0, len });
        }
        let map = memmap2::MmapMut::map_anon(len + Self::HUGE_PAGE)?;
        let addr = map.as_ptr() as usize;
        let off = addr.next_multiple_of(Self::HUGE_PAGE) - addr;
        #[cfg(target_os = "linux")]
        {
            // hints: without transparent huge pages the mapping just stays in 4 KiB pages
            let whole = len / Self::HUGE_PAGE * Self::HUGE_PAGE;
            let _ = map.advise_range(memmap2::Advice::HugePage, off, whole);
            let tail = off + whole;
            let _ = map.advise_range(memmap2::Advice::NoHugePage, tail, map.len() - tail);
        }
        Ok(HugePageBuf { map, off, len })
    }
}

impl std::ops::Deref for HugePageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for HugePageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map[self.off..self.off + self.len]
    }
}

impl RepackedMatrix {
    /// Repacks `rows` GGUF rows of `cols` elements of type `ty` (bytes back to back in `w`).
    /// Fails for types without a layout and for mismatched lengths.
    pub fn new(ty: GgmlType, w: &[u8], rows: usize, cols: usize) -> Result<Self, FormatError> {
        let layout =
            RepackLayout::for_type(ty).ok_or(FormatError::Unsupported { ty, op: "repack" })?;
        let rb = row_bytes(ty, cols)?;
        let want = rb.checked_mul(rows).ok_or(FormatError::Overflow {
            what: "repack weight bytes",
        })?;
        if w.len() != want {
            return Err(FormatError::ByteLength {
                ty,
                n: rows.saturating_mul(cols),
                expected: want,
                actual: w.len(),
            });
        }
        let nb = cols / ty.block_size();
        let gb = layout.group_bytes(nb);
        let groups = rows.div_ceil(GROUP_ROWS);
        let total = groups * gb;
        let mut data = HugePageBuf::new(total).map_err(|_| FormatError::Overflow {
            what: "repacked weights (out of memory)",
        })?;
        for (g, dst) in data[..total].chunks_exact_mut(gb).enumerate() {
            // the last group repeats the last row
            let row = |r: usize| {
                let src_row = (g * GROUP_ROWS + r).min(rows - 1);
                &w[src_row * rb..(src_row + 1) * rb]
            };
            write_group(layout, nb, row, dst);
        }
        Ok(RepackedMatrix {
            layout,
            rows,
            cols,
            data: RepackedBytes::Owned(data),
        })
    }

    /// A matrix that a GGUF file stores in a ×16 layout (`info.layout`, as `tinygptv repack`
    /// writes them), read in place from the file's map: nothing is copied, and the pages stay
    /// the kernel's to drop and re-read like any other part of the map. Fails for tensors in a
    /// plain layout and for shapes other than `[cols, rows]`.
    pub fn from_gguf(file: &GgufFile, info: &TensorInfo) -> Result<Self, FormatError> {
        let layout = info.layout.ok_or(FormatError::Unsupported {
            ty: info.ty,
            op: "reading a plain-layout tensor as a ×16 matrix",
        })?;
        let [cols, rows] = info.dims[..] else {
            return Err(FormatError::Unsupported {
                ty: info.ty,
                op: "a ×16 tensor that is not a matrix",
            });
        };
        let too_large = || FormatError::Overflow {
            what: "×16 matrix shape",
        };
        let (rows, cols) = (
            usize::try_from(rows).map_err(|_| too_large())?,
            usize::try_from(cols).map_err(|_| too_large())?,
        );
        let data = file.shared_tensor_data(info);
        let want = layout
            .matrix_bytes(rows as u64, cols as u64)
            .ok_or_else(too_large)?;
        if rows == 0 || cols == 0 || data.len() as u64 != want {
            return Err(FormatError::ByteLength {
                ty: info.ty,
                n: rows.saturating_mul(cols),
                expected: want as usize,
                actual: data.len(),
            });
        }
        Ok(RepackedMatrix {
            layout,
            rows,
            cols,
            data: RepackedBytes::File(data),
        })
    }

    /// The same matrix in anonymous memory of its own, in 2 MiB pages where the kernel allows
    /// ([`HugePageBuf`]): a copy of a ×16 tensor read from a file's map, for machines that
    /// keep repacked weights in memory anyway (`runtime`'s repack policy).
    pub fn to_memory(&self) -> Result<Self, FormatError> {
        let src = self.bytes();
        let mut data = HugePageBuf::new(src.len()).map_err(|_| FormatError::Overflow {
            what: "repacked weights (out of memory)",
        })?;
        data.copy_from_slice(src);
        Ok(RepackedMatrix {
            layout: self.layout,
            rows: self.rows,
            cols: self.cols,
            data: RepackedBytes::Owned(data),
        })
    }

    /// All rows in the GGUF layout, back to back (for a CPU without kernels for this layout).
    pub fn to_rows(&self) -> Vec<u8> {
        let rb = row_bytes(self.ty(), self.cols).expect("checked when built");
        let mut out = Vec::with_capacity(rb * self.rows);
        let mut row = Vec::with_capacity(rb);
        for r in 0..self.rows {
            self.row(r, &mut row);
            out.extend_from_slice(&row);
        }
        out
    }

    /// Whether the bytes are read in place from a file ([`Self::from_gguf`]) rather than held
    /// in memory of their own.
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, RepackedBytes::File(_))
    }

    pub fn layout(&self) -> RepackLayout {
        self.layout
    }

    pub fn ty(&self) -> GgmlType {
        self.layout.ty()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Blocks per row.
    pub fn blocks_per_row(&self) -> usize {
        self.cols / self.ty().block_size()
    }

    /// Bytes of one group of 16 rows.
    pub fn group_bytes(&self) -> usize {
        self.layout.group_bytes(self.blocks_per_row())
    }

    /// Number of 16-row groups.
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP_ROWS)
    }

    /// All groups' bytes (64-byte aligned).
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.groups() * self.group_bytes()]
    }

    /// Bytes this matrix occupies in memory of its own (0 when read from a file's map).
    pub fn memory_bytes(&self) -> usize {
        match &self.data {
            RepackedBytes::Owned(b) => b.len(),
            RepackedBytes::File(_) => 0,
        }
    }

    /// Row `r`'s original GGUF bytes, written to `out` (the inverse of the repacking).
    ///
    /// # Panics
    /// If `r ≥ rows`.
    pub fn row(&self, r: usize, out: &mut Vec<u8>) {
        assert!(
            r < self.rows,
            "RepackedMatrix::row: row {r} of {}",
            self.rows
        );
        let nb = self.blocks_per_row();
        let (qb, flip) = (self.layout.qs_bytes(), self.layout.flip());
        let group = &self.bytes()[r / GROUP_ROWS * self.group_bytes()..][..self.group_bytes()];
        let (scales, values) = group.split_at(self.layout.scale_bytes(nb).min(group.len()));
        let lane = r % GROUP_ROWS;
        out.clear();
        if self.layout == RepackLayout::Q4_Kx16 {
            for rec in group.chunks_exact(Q4K_RECORD) {
                q4k_row_from_record(rec, lane, out);
            }
            return;
        }
        if self.layout == RepackLayout::Q5_Kx16 {
            for rec in group.chunks_exact(Q5K_RECORD) {
                q5k_row_from_record(rec, lane, out);
            }
            return;
        }
        if self.layout == RepackLayout::Q6_Kx16 {
            for rec in group.chunks_exact(Q6K_RECORD) {
                q6k_row_from_record(rec, lane, out);
            }
            return;
        }
        for b in 0..nb {
            out.extend_from_slice(&scales[(b * GROUP_ROWS + lane) * 2..][..2]);
            let vb = &values[b * GROUP_ROWS * qb..];
            for c in 0..qb / 4 {
                out.extend(vb[c * 64 + lane * 4..][..4].iter().map(|v| v ^ flip));
            }
        }
    }
}

/// Writes one group of `layout` (`nb` blocks per row, `dst` exactly
/// [`RepackLayout::group_bytes`] long) from its 16 rows in the GGUF layout: `row(r)` is row
/// `r`'s bytes, `r` in `0..16` (the caller repeats a last row where the matrix ends). Used at
/// load time and, by GEMMs that pack the file layout per call, for one group at a time.
pub(crate) fn write_group<'a>(
    layout: RepackLayout,
    nb: usize,
    row: impl Fn(usize) -> &'a [u8],
    dst: &mut [u8],
) {
    let ty = layout.ty();
    let bs = ty.type_size();
    debug_assert_eq!(dst.len(), layout.group_bytes(nb));
    let record = match layout {
        RepackLayout::Q4_Kx16 => Some((Q4K_RECORD, q4k_record_row as fn(&[u8], usize, &mut [u8]))),
        RepackLayout::Q5_Kx16 => Some((Q5K_RECORD, q5k_record_row as fn(&[u8], usize, &mut [u8]))),
        RepackLayout::Q6_Kx16 => Some((Q6K_RECORD, q6k_record_row as fn(&[u8], usize, &mut [u8]))),
        RepackLayout::Q4_0x16 | RepackLayout::Q8_0x16 => None,
    };
    // every writer below sets every byte of its part of `dst`
    if let Some((record, write)) = record {
        for r in 0..GROUP_ROWS {
            for (b, blk) in row(r)[..nb * bs].chunks_exact(bs).enumerate() {
                write(blk, r, &mut dst[b * record..][..record]);
            }
        }
        return;
    }
    let qb = layout.qs_bytes();
    let flip = u32::from_ne_bytes([layout.flip(); 4]);
    let (scales, values) = dst.split_at_mut(layout.scale_bytes(nb));
    for r in 0..GROUP_ROWS {
        for (b, sblk) in row(r)[..nb * bs].chunks_exact(bs).enumerate() {
            scales[(b * GROUP_ROWS + r) * 2..][..2].copy_from_slice(&sblk[..2]);
            let vb = &mut values[b * GROUP_ROWS * qb..][..GROUP_ROWS * qb];
            for (c, q) in sblk[2..].chunks_exact(4).enumerate() {
                let v = u32::from_ne_bytes(q.try_into().expect("4 bytes")) ^ flip;
                vb[c * 64 + r * 4..][..4].copy_from_slice(&v.to_ne_bytes());
            }
        }
    }
}

/// Writes row `r`'s part of a Q4_Kx16 record from its 144-byte Q4_K block.
fn q4k_record_row(blk: &[u8], r: usize, rec: &mut [u8]) {
    rec[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
    rec[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&blk[2..4]);
    let packed: &[u8; K_SCALE_SIZE] = blk[4..16].try_into().expect("12 scale bytes");
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, packed);
        rec[64 + (j / 2) * 32 + 2 * r + j % 2] = sc;
        rec[192 + j * 16 + r] = m;
    }
    let qs = &blk[16..144];
    for c in 0..4 {
        for l in 0..8 {
            let chunk = &mut rec[320 + (c * 8 + l) * 64 + 4 * r..][..4];
            for (t, o) in chunk.iter_mut().enumerate() {
                *o = qs[32 * c + l + 8 * t];
            }
        }
    }
}

/// `N` little-endian u64 words from `8·N` bytes.
#[inline]
fn byte_words<const N: usize>(b: &[u8]) -> [u64; N] {
    core::array::from_fn(|t| u64::from_le_bytes(b[8 * t..8 * t + 8].try_into().expect("8 bytes")))
}

#[inline]
fn write_u32(rec: &mut [u8], at: usize, v: u32) {
    rec[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Appends lane `r`'s 144-byte Q4_K block from a Q4_Kx16 record (the inverse of
/// [`q4k_record_row`]).
fn q4k_row_from_record(rec: &[u8], r: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&rec[2 * r..2 * r + 2]);
    out.extend_from_slice(&rec[32 + 2 * r..32 + 2 * r + 2]);
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        sc[j] = rec[64 + (j / 2) * 32 + 2 * r + j % 2];
        m[j] = rec[192 + j * 16 + r];
    }
    out.extend_from_slice(&pack_scale_min_k4(&sc, &m));
    let mut qs = [0u8; 128];
    for c in 0..4 {
        for l in 0..8 {
            let chunk = &rec[320 + (c * 8 + l) * 64 + 4 * r..][..4];
            for (t, &v) in chunk.iter().enumerate() {
                qs[32 * c + l + 8 * t] = v;
            }
        }
    }
    out.extend_from_slice(&qs);
}

/// Writes row `r`'s part of a Q5_Kx16 record from its 176-byte Q5_K block (`d`, `dmin`, 12
/// scale bytes, `qh[32]`, `qs[128]`): the Q4_K part from `qs`, then the 5th bits (`qh[e]` bit
/// `j` is element `e` of sub-block `j`).
fn q5k_record_row(blk: &[u8], r: usize, rec: &mut [u8]) {
    let mut q4 = [0u8; 144];
    q4[..16].copy_from_slice(&blk[..16]);
    q4[16..].copy_from_slice(&blk[48..176]);
    q4k_record_row(&q4, r, &mut rec[..Q4K_RECORD]);
    // word t holds qh[8t + l] in byte l; output byte l of chunk pair c: bit t = bit 2c of
    // qh[l + 8t], bit 4 + t = bit 2c + 1, all 8 bytes at once
    let words = byte_words::<4>(&blk[16..48]);
    const LOW: u64 = 0x0101_0101_0101_0101;
    for c in 0..4 {
        let mut bits = 0u64;
        for (t, w) in words.iter().enumerate() {
            bits |= ((w >> (2 * c)) & LOW) << t;
            bits |= ((w >> (2 * c + 1)) & LOW) << (4 + t);
        }
        let at = Q5K_HIGH_BITS + 2 * c * 64 + 4 * r;
        write_u32(rec, at, bits as u32);
        write_u32(rec, at + 64, (bits >> 32) as u32);
    }
}

/// Appends lane `r`'s 176-byte Q5_K block from a Q5_Kx16 record (the inverse of
/// [`q5k_record_row`]).
fn q5k_row_from_record(rec: &[u8], r: usize, out: &mut Vec<u8>) {
    let start = out.len();
    q4k_row_from_record(&rec[..Q4K_RECORD], r, out);
    let mut qh = [0u8; 32];
    for c in 0..4 {
        for l in 0..8 {
            let bits = rec[Q5K_HIGH_BITS + (2 * c + l / 4) * 64 + 4 * r + l % 4];
            for t in 0..4 {
                qh[l + 8 * t] |= ((bits >> t) & 1) << (2 * c);
                qh[l + 8 * t] |= ((bits >> (4 + t)) & 1) << (2 * c + 1);
            }
        }
    }
    // d, dmin and the scales (16 bytes), then qh, then qs
    let qs_at = start + 16;
    out.splice(qs_at..qs_at, qh);
}

/// The 256 six-bit values (`q + 32`) of a 210-byte Q6_K block, in element order (ggml's
/// `ql` / `qh` layout: per half of 128, low nibbles of `ql[0..64]`, then their high nibbles,
/// with two bits each from `qh[0..32]`).
fn q6k_values(blk: &[u8]) -> [u8; 256] {
    let mut v = [0u8; 256];
    for h in 0..2 {
        let (ql, qh) = (
            &blk[64 * h..64 * h + 64],
            &blk[128 + 32 * h..128 + 32 * h + 32],
        );
        for l in 0..32 {
            let o = 128 * h + l;
            v[o] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
            v[o + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
            v[o + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            v[o + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    v
}

/// Element `t` of chunk `x` (see [`Q6K_RECORD`]).
const fn q6k_element(x: usize, t: usize) -> usize {
    32 * (x / 8) + x % 8 + 8 * t
}

/// Writes row `r`'s part of a Q6_Kx16 record from its 210-byte Q6_K block.
fn q6k_record_row(blk: &[u8], r: usize, rec: &mut [u8]) {
    rec[2 * r..2 * r + 2].copy_from_slice(&blk[208..210]);
    for j in 0..16 {
        rec[32 + (j / 2) * 32 + 2 * r + j % 2] = blk[192 + j];
    }
    let v = q6k_values(blk);
    // each byte written once: low 4 bits of chunks v and v + 32, high 2 bits of u + 16k
    for x in 0..32 {
        let lo: [u8; 4] = core::array::from_fn(|t| {
            (v[q6k_element(x, t)] & 0x0f) | (v[q6k_element(x + 32, t)] & 0x0f) << 4
        });
        rec[288 + x * 64 + 4 * r..][..4].copy_from_slice(&lo);
    }
    for u in 0..16 {
        let hi: [u8; 4] = core::array::from_fn(|t| {
            (0..4).fold(0u8, |b, k| {
                b | (v[q6k_element(u + 16 * k, t)] >> 4) << (2 * k)
            })
        });
        rec[2336 + u * 64 + 4 * r..][..4].copy_from_slice(&hi);
    }
}

/// Appends lane `r`'s 210-byte Q6_K block from a Q6_Kx16 record (the inverse of
/// [`q6k_record_row`]).
fn q6k_row_from_record(rec: &[u8], r: usize, out: &mut Vec<u8>) {
    let mut v = [0u8; 256];
    for x in 0..64 {
        for t in 0..4 {
            let lo = (rec[288 + (x % 32) * 64 + 4 * r + t] >> (4 * (x / 32))) & 0x0f;
            let hi = (rec[2336 + (x % 16) * 64 + 4 * r + t] >> (2 * (x / 16))) & 3;
            v[q6k_element(x, t)] = lo | (hi << 4);
        }
    }
    let mut blk = [0u8; 210];
    for h in 0..2 {
        for l in 0..32 {
            let o = 128 * h + l;
            blk[64 * h + l] = (v[o] & 0x0f) | ((v[o + 64] & 0x0f) << 4);
            blk[64 * h + l + 32] = (v[o + 32] & 0x0f) | ((v[o + 96] & 0x0f) << 4);
            blk[128 + 32 * h + l] = (v[o] >> 4)
                | ((v[o + 32] >> 4) << 2)
                | ((v[o + 64] >> 4) << 4)
                | ((v[o + 96] >> 4) << 6);
        }
    }
    for j in 0..16 {
        blk[192 + j] = rec[32 + (j / 2) * 32 + 2 * r + j % 2];
    }
    blk[208..210].copy_from_slice(&rec[2 * r..2 * r + 2]);
    out.extend_from_slice(&blk);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_buf_is_aligned_and_exactly_as_long() {
        let big = 5 * HugePageBuf::HUGE_PAGE + 123;
        let mut b = HugePageBuf::new(big).unwrap();
        assert_eq!(b.len(), big);
        assert_eq!(b.as_ptr() as usize % HugePageBuf::HUGE_PAGE, 0);
        b[0] = 1;
        b[big - 1] = 2;
        assert_eq!((b[0], b[big - 1], b[big / 2]), (1, 2, 0));
        // small ones are a plain mapping; empty ones still map a byte
        assert_eq!(HugePageBuf::new(4096).unwrap().len(), 4096);
        assert_eq!(HugePageBuf::new(0).unwrap().len(), 1);
    }
    use crate::formats::quantize_row;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn rows_come_back_unchanged() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            for (rows, cols) in [(1, 256), (16, 512), (37, 768), (48, 256)] {
                let rb = row_bytes(ty, cols).unwrap();
                let mut w = vec![0u8; rb * rows];
                quantize_row(ty, &data(rows * cols, 9), &mut w).unwrap();
                let m = RepackedMatrix::new(ty, &w, rows, cols).unwrap();
                assert_eq!(m.groups(), rows.div_ceil(16));
                assert_eq!(m.bytes().len(), m.groups() * m.group_bytes());
                assert_eq!(m.bytes().as_ptr() as usize % 64, 0);
                let mut row = Vec::new();
                for r in 0..rows {
                    m.row(r, &mut row);
                    assert_eq!(row, &w[r * rb..(r + 1) * rb], "{ty} {rows}x{cols} row {r}");
                }
            }
        }
    }

    /// A GGUF holding `m` in its layout (and a plain 1-D tensor), read back in memory.
    fn gguf_with(m: &RepackedMatrix, dims: &[u64]) -> Result<GgufFile, crate::gguf::GgufError> {
        let mut w = crate::gguf::GgufWriter::new();
        w.add_tensor("norm", GgmlType::F32, &[4])?;
        w.add_interleaved_tensor("w", m.layout(), dims)?;
        let mut out = Vec::new();
        w.write_to(&mut out, |i, _, sink| {
            sink.write_all(if i == 0 { &[0u8; 16][..] } else { m.bytes() })
        })?;
        GgufFile::from_bytes(out, "test.gguf")
    }

    #[test]
    fn gguf_files_hold_the_layouts() {
        for layout in RepackLayout::ALL {
            let ty = layout.ty();
            assert_eq!(
                RepackLayout::from_gguf_type_id(layout.gguf_type_id()),
                Some(layout)
            );
            assert!(GgmlType::from_id(layout.gguf_type_id()).is_none());
            let (rows, cols) = (37, 512);
            let rb = row_bytes(ty, cols).unwrap();
            let mut w = vec![0u8; rb * rows];
            quantize_row(ty, &data(rows * cols, 5), &mut w).unwrap();
            let m = RepackedMatrix::new(ty, &w, rows, cols).unwrap();
            let f = gguf_with(&m, &[cols as u64, rows as u64]).unwrap();
            let info = f.tensor_info("w").unwrap();
            assert_eq!((info.ty, info.layout), (ty, Some(layout)));
            assert_eq!(
                info.n_bytes,
                m.bytes().len() as u64,
                "{layout:?}: 3 padding rows"
            );
            let back = RepackedMatrix::from_gguf(&f, info).unwrap();
            assert!(back.is_mapped() && back.memory_bytes() == 0);
            assert_eq!(
                (back.rows(), back.cols(), back.layout()),
                (rows, cols, layout)
            );
            assert_eq!(back.to_rows(), w, "{layout:?}");
            // a plain tensor is not a ×16 matrix
            assert!(RepackedMatrix::from_gguf(&f, f.tensor_info("norm").unwrap()).is_err());
            // only matrices, whole blocks
            for dims in [
                &[cols as u64][..],
                &[cols as u64, 1, rows as u64],
                &[100, 37],
            ] {
                let err = gguf_with(&m, dims).map(|_| ()).unwrap_err().to_string();
                assert!(err.contains("'w'"), "{layout:?} {dims:?}: {err}");
            }
        }
    }

    #[test]
    fn any_bytes_come_back_unchanged() {
        // every bit of a block survives, including the 12 packed scale bytes of Q4_K (96 bits =
        // 8 six-bit scales + 8 six-bit mins: unpacking and packing them is a bijection)
        let mut state = 0x1234_5678u32;
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let (rows, cols) = (21, 512);
            let rb = row_bytes(ty, cols).unwrap();
            let w: Vec<u8> = (0..rb * rows)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 24) as u8
                })
                .collect();
            let m = RepackedMatrix::new(ty, &w, rows, cols).unwrap();
            let mut row = Vec::new();
            for r in 0..rows {
                m.row(r, &mut row);
                assert_eq!(row, &w[r * rb..(r + 1) * rb], "{ty} row {r}");
            }
        }
    }

    #[test]
    fn layout_places_lane_r_at_row_r() {
        // Q4_0, one block per row: row r has d = r and qs bytes 16·r + j
        let rows = 16;
        let mut w = Vec::new();
        for r in 0..rows {
            w.extend_from_slice(&(r as u16).to_le_bytes());
            w.extend((0..16).map(|j| (16 * r + j) as u8));
        }
        let m = RepackedMatrix::new(GgmlType::Q4_0, &w, rows, 32).unwrap();
        let g = m.bytes();
        for r in 0..16 {
            assert_eq!(u16::from_le_bytes([g[2 * r], g[2 * r + 1]]), r as u16);
            for c in 0..4 {
                for j in 0..4 {
                    assert_eq!(g[32 + c * 64 + r * 4 + j], (16 * r + 4 * c + j) as u8);
                }
            }
        }
    }

    #[test]
    fn rejects_other_types_and_bad_lengths() {
        assert!(matches!(
            RepackedMatrix::new(GgmlType::Q4_1, &[], 0, 32),
            Err(FormatError::Unsupported { .. })
        ));
        assert!(matches!(
            RepackedMatrix::new(GgmlType::Q4_0, &[0; 17], 1, 32),
            Err(FormatError::ByteLength { .. })
        ));
    }
}
