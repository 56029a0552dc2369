//! CPU kernels chosen at run time: SIMD activation quantizers and multi-row × multi-column dot
//! product tiles (GEMV for decode, GEMM for prompts and the vision tower).
//!
//! Layout (ggml style): this file holds the level detection, the per-level function tables and
//! the safe drivers; `generic.rs` is the scalar fallback (the reference kernels of
//! [`crate::formats`]); `x86/` holds the AVX2, AVX-512 and AMX kernels, `aarch64/` the NEON
//! ones.
//!
//! **Levels.** [`detected_level`] is the best level this CPU runs; [`cpu_level`] is that level
//! lowered by the environment variable `TINYGPTV_CPU` (`scalar`, `avx2`, `avx512`, `amx` on
//! x86-64; `scalar`, `neon` on aarch64), read once. Asking for a level above the detected one gives the
//! best supported level below it; an unknown name or another architecture's level is ignored
//! (with a warning on stderr). [`kernels`] returns the table of [`cpu_level`]; tests and
//! benchmarks force a level with [`kernels_for`]. Each table is built once (`OnceLock`).
//!
//! **Exactness.** Every quantized path (activation quantizers and weight × activation dots)
//! returns bit-identical results to the scalar reference of [`crate::formats`]: integer dots
//! inside a block are exact in any order, and the f32 scale arithmetic is done per output in the
//! reference's order (one output per SIMD lane). The float weight types (F32, F16, BF16) sum
//! their products in f32 lanes instead of the reference's f64, so they agree within
//! `~k·2⁻²⁴·Σ|w·x|` (tests use a relative bound). Quantizing activations that contain NaN may
//! give different bytes than the reference (the abs-max search order differs); no other input
//! does.

use std::sync::OnceLock;

use crate::formats::{self, row_bytes, supports_vec_dot, FormatError};
use crate::repack::{RepackLayout, RepackedMatrix, GROUP_ROWS};
use crate::types::GgmlType;

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod generic;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Weight rows per tile (one f32 lane per row in the legacy-quant kernels).
pub const TILE_ROWS: usize = 8;
/// Activation rows per tile: each weight block is unpacked once for up to this many.
pub const TILE_COLS: usize = 4;
/// Bytes of quantized activation rows that one pass over the weights of a `gemm` call uses.
const ACT_GROUP_BYTES: usize = 96 << 10;

/// An instruction-set level, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The reference kernels of [`crate::formats`] (any CPU).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (plus the AVX2 set).
    Avx512,
    /// x86-64 AVX-512 plus AMX-INT8 tiles for the many-row GEMMs of Q4_0 / Q5_0 / Q8_0
    /// weights (file and ×16 layouts); the rest as [`Level::Avx512`]. Supported only once the
    /// OS grants the process the tile state (asked at detection).
    Amx,
    /// aarch64 NEON with the dot-product extension (SDOT).
    Neon,
}

impl Level {
    /// All levels, lowest first (not all exist on every architecture).
    pub const ALL: [Level; 5] = [
        Level::Scalar,
        Level::Avx2,
        Level::Avx512,
        Level::Amx,
        Level::Neon,
    ];

    /// The name `TINYGPTV_CPU` accepts.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Amx => "amx",
            Level::Neon => "neon",
        }
    }

    /// Parses a `TINYGPTV_CPU` value (case-insensitive, surrounding blanks ignored).
    pub fn parse(s: &str) -> Option<Level> {
        let s = s.trim();
        Level::ALL
            .iter()
            .copied()
            .find(|l| l.name().eq_ignore_ascii_case(s))
    }

    /// Whether the level exists on this architecture (scalar everywhere, AVX2 / AVX-512 on
    /// x86-64, NEON on aarch64), whatever this CPU supports.
    pub fn exists_on_this_arch(self) -> bool {
        match self {
            Level::Scalar => true,
            Level::Avx2 | Level::Avx512 | Level::Amx => cfg!(target_arch = "x86_64"),
            Level::Neon => cfg!(target_arch = "aarch64"),
        }
    }

    /// Whether this CPU can run the level's kernels.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => x86::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => x86::has_avx512(),
            #[cfg(target_arch = "x86_64")]
            Level::Amx => x86::has_amx(),
            #[cfg(target_arch = "aarch64")]
            Level::Neon => aarch64::has_neon_dotprod(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The best level this CPU supports.
pub fn detected_level() -> Level {
    static DETECTED: OnceLock<Level> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        Level::ALL
            .iter()
            .rev()
            .copied()
            .find(|l| l.is_supported())
            .unwrap_or(Level::Scalar)
    })
}

/// The level an override value selects on this CPU: the requested level if supported, else the
/// best supported level below it (scalar at worst). No value → [`detected_level`]; a value that
/// names no level of this architecture → [`detected_level`] with a warning on stderr.
pub fn level_for_override(value: Option<&str>) -> Level {
    let detected = detected_level();
    let Some(value) = value else {
        return detected;
    };
    match Level::parse(value).filter(|l| l.exists_on_this_arch()) {
        None => {
            let expected = if cfg!(target_arch = "aarch64") {
                "scalar or neon"
            } else {
                "scalar, avx2, avx512 or amx"
            };
            eprintln!("tinygptv: ignoring TINYGPTV_CPU={value:?} (expected {expected})");
            detected
        }
        Some(want) => Level::ALL
            .iter()
            .rev()
            .copied()
            .find(|l| *l <= want && l.is_supported())
            .unwrap_or(Level::Scalar),
    }
}

/// The level in use: [`detected_level`], lowered by `TINYGPTV_CPU` (read once).
pub fn cpu_level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| level_for_override(std::env::var("TINYGPTV_CPU").ok().as_deref()))
}

/// The kernel table of [`cpu_level`].
pub fn kernels() -> &'static CpuKernels {
    kernels_for(cpu_level()).expect("cpu_level is always supported")
}

/// The kernel table of `level`, or `None` if this CPU cannot run it.
pub fn kernels_for(level: Level) -> Option<&'static CpuKernels> {
    static TABLES: [OnceLock<Option<CpuKernels>>; 5] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let i = Level::ALL.iter().position(|l| *l == level).unwrap_or(0);
    TABLES[i]
        .get_or_init(|| {
            if !level.is_supported() {
                return None;
            }
            Some(build_table(level))
        })
        .as_ref()
}

/// The [`Level::Amx`] table with the tile instructions computed in scalar code (slow): for
/// testing the AMX kernels' layout and driver on CPUs without AMX. `None` without AVX-512 VNNI
/// (the rest of those kernels) or on other architectures.
#[doc(hidden)]
pub fn amx_emulated_kernels() -> Option<&'static CpuKernels> {
    static TABLE: OnceLock<Option<CpuKernels>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if Level::Avx512.is_supported() {
                return Some(x86::amx_emulated_table());
            }
            None
        })
        .as_ref()
}

/// Arguments of one tile: `out[c·ldo + r] = dot(weight row r, activation row c)` for
/// `r < nr ≤ TILE_ROWS`, `c < nc ≤ TILE_COLS`.
///
/// `nb` is the number of blocks per row (elements for the float types). Weight row `r` starts at
/// `w + r·w_stride`, activation row `c` at `a + c·a_stride`; both are plain bytes as stored in
/// GGUF (any alignment).
pub(crate) struct TileArgs {
    pub nb: usize,
    pub w: *const u8,
    pub w_stride: usize,
    pub nr: usize,
    pub a: *const u8,
    pub a_stride: usize,
    pub nc: usize,
    pub out: *mut f32,
    pub ldo: usize,
}

/// Arguments of a whole product for the packed GEMM kernels: `out[c·ldo + r] = dot(weight row
/// r, activation row c)` for `r < n`, `c < m`; `nb` blocks per row; rows as in [`TileArgs`].
#[derive(Clone, Copy)]
pub(crate) struct GemmArgs {
    pub nb: usize,
    pub w: *const u8,
    pub w_stride: usize,
    pub n: usize,
    pub a: *const u8,
    pub a_stride: usize,
    pub m: usize,
    pub out: *mut f32,
    pub ldo: usize,
    /// The activations in this level's own layout for the weight type ([`PrepareFn`]), built
    /// once for several products; null where the kernel builds it itself (if it wants one).
    // only x86-64 kernels have prepared layouts; elsewhere it is written but never read
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub prepared: *const u8,
}

/// `records` copied into 64-byte lines (the prepared-activations storage). Their type must be
/// plain data of an alignment up to 64, which every prepared record type is.
pub(crate) fn to_lines<T: Copy>(records: &[T]) -> Box<[core::mem::MaybeUninit<Line64>]> {
    const { assert!(core::mem::align_of::<T>() <= 64) };
    let bytes = core::mem::size_of_val(records);
    let mut lines = Box::new_uninit_slice(bytes.div_ceil(64));
    // SAFETY: `lines` holds at least `bytes` bytes; the two allocations are distinct
    unsafe {
        core::ptr::copy_nonoverlapping(
            records.as_ptr() as *const u8,
            lines.as_mut_ptr() as *mut u8,
            bytes,
        )
    };
    lines
}

/// `t`'s activation rows as `T` records: those prepared once per matmul (`t.prepared`, built
/// by this level's [`PrepareFn`] for the weight type as `T`), or `build(t)` into `owned`.
///
/// # Safety
/// A non-null `t.prepared` must hold `m·nb` records of type `T` for these rows
/// (`CpuKernels::gemm_repacked_prepared` checks that they were prepared for this type).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
#[inline(always)]
pub(crate) unsafe fn prepared_or<'a, T>(
    t: &'a GemmArgs,
    owned: &'a mut Vec<T>,
    build: impl FnOnce(&GemmArgs) -> Vec<T>,
) -> &'a [T] {
    if t.prepared.is_null() {
        *owned = build(t);
        owned
    } else {
        core::slice::from_raw_parts(t.prepared as *const T, t.m * t.nb)
    }
}

/// One 64-byte line: the unit (and alignment) of prepared activations.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line64(#[allow(dead_code)] [u8; 64]);

/// Builds the layout of the activations (`GemmArgs::a`, `a_stride`, `m`, `nb`) that a level's
/// packed kernels for one weight type use (AVX-512: the panels of `x86/packed.rs` for Q4_0,
/// Q5_0 and Q8_0), so that the row blocks of one matmul share it.
///
/// # Safety
/// The activation rows must exist as described and the CPU must support the table's level.
pub(crate) type PrepareFn = unsafe fn(&GemmArgs) -> Option<Box<[core::mem::MaybeUninit<Line64>]>>;

/// Activation rows (as [`CpuKernels::quantize_activations`] wrote them for weights of one
/// type) prepared once for several products with such weights, e.g. every row block of one
/// matmul: [`CpuKernels::gemm_prepared`] and [`CpuKernels::gemm_repacked_prepared`] then skip
/// the regrouping that some packed kernels otherwise do on each call.
pub struct PreparedActivations<'a> {
    ty: GgmlType,
    k: usize,
    act: &'a [u8],
    m: usize,
    layout: Option<Box<[core::mem::MaybeUninit<Line64>]>>,
}

impl PreparedActivations<'_> {
    /// The weight type the rows were prepared for.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// The number of activation rows.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Whether this level's kernels use a layout of their own (built here) for these rows.
    pub fn has_layout(&self) -> bool {
        self.layout.is_some()
    }

    fn layout_ptr(&self) -> *const u8 {
        self.layout
            .as_ref()
            .map_or(core::ptr::null(), |l| l.as_ptr() as *const u8)
    }
}

/// A packed GEMM kernel (weight tiles unpacked once into a scratch layout, then multiplied with
/// every activation row), for many activation rows. Returns false, having written nothing, for
/// inputs it declines (the tiles then run): the K-quant kernels decline Q8_K activations whose
/// `bsums` pairs do not fit in i16, which the quantizers never produce.
///
/// # Safety
/// As [`TileFn`], for all `n ≥ 1` rows and `m ≥ 1` activation rows; `out` valid for
/// `(m − 1)·ldo + n` floats.
pub(crate) type GemmFn = unsafe fn(&GemmArgs) -> bool;

/// Activation rows from which a packed GEMM kernel is used (its packing costs about as much as
/// a few activation rows of the plain tiles).
pub(crate) const PACKED_MIN_ROWS: usize = 8;

/// Up to this many activation rows (decode), the x86 legacy formats' prepared layout is every
/// row's per-block accumulator starts and scales (`x86::packed::prepare_block_sums`), which
/// the ×16 kernels' decode paths read; each of a matmul's row blocks computed them again.
/// Below the AVX2 ×16 kernels' 4-row passes, so those never see the layout as panels.
pub(crate) const SUMS_MAX_ROWS: usize = 3;

/// A tile kernel.
///
/// # Safety
/// The pointers in the arguments must be valid for the described rows, `1 ≤ nr ≤ TILE_ROWS`,
/// `1 ≤ nc ≤ TILE_COLS`, `nb ≥ 1`, and the CPU must support the table's level.
pub(crate) type TileFn = unsafe fn(&TileArgs);

/// An activation quantizer: `nb` blocks of f32 from `x` to the activation type's bytes at `y`.
///
/// # Safety
/// `x` valid for `nb·block` f32 reads (aligned for f32), `y` for the block bytes (any alignment),
/// and the CPU must support the table's level.
pub(crate) type QuantFn = unsafe fn(x: *const f32, nb: usize, y: *mut u8);

/// The kernels of one level. Entries that a level does not implement are `None` and use the
/// scalar reference.
pub struct CpuKernels {
    level: Level,
    /// Whether the AMX tile instructions are emulated ([`amx_emulated_kernels`]).
    emulated: bool,
    pub(crate) quant_q8_0: Option<QuantFn>,
    pub(crate) quant_q8_1: Option<QuantFn>,
    pub(crate) quant_q8_k: Option<QuantFn>,
    pub(crate) tile_f32: Option<TileFn>,
    pub(crate) tile_f16: Option<TileFn>,
    pub(crate) tile_bf16: Option<TileFn>,
    pub(crate) tile_q4_0: Option<TileFn>,
    pub(crate) tile_q4_1: Option<TileFn>,
    pub(crate) tile_q5_0: Option<TileFn>,
    pub(crate) tile_q5_1: Option<TileFn>,
    pub(crate) tile_q8_0: Option<TileFn>,
    pub(crate) tile_q4_k: Option<TileFn>,
    pub(crate) tile_q5_k: Option<TileFn>,
    pub(crate) tile_q6_k: Option<TileFn>,
    pub(crate) packed_q4_0: Option<GemmFn>,
    pub(crate) packed_q5_0: Option<GemmFn>,
    pub(crate) packed_q8_0: Option<GemmFn>,
    pub(crate) packed_f32: Option<GemmFn>,
    pub(crate) packed_f16: Option<GemmFn>,
    pub(crate) packed_bf16: Option<GemmFn>,
    pub(crate) packed_q4_k: Option<GemmFn>,
    pub(crate) packed_q5_k: Option<GemmFn>,
    pub(crate) packed_q6_k: Option<GemmFn>,
    /// Products on the ×16 layouts of [`crate::repack`] (`GemmArgs::w` = first group,
    /// `w_stride` = group bytes).
    pub(crate) repacked_q4_0: Option<GemmFn>,
    pub(crate) repacked_q8_0: Option<GemmFn>,
    pub(crate) repacked_q4_k: Option<GemmFn>,
    pub(crate) repacked_q5_k: Option<GemmFn>,
    pub(crate) repacked_q6_k: Option<GemmFn>,
    /// Activation layouts that the packed and repacked kernels of these types read when
    /// `GemmArgs::prepared` is set.
    pub(crate) prepare_q4_0: Option<PrepareFn>,
    pub(crate) prepare_q5_0: Option<PrepareFn>,
    pub(crate) prepare_q8_0: Option<PrepareFn>,
    /// K-quant activation layouts, built at any row count (NEON's ×16 kernels: decode's row
    /// blocks would otherwise each rebuild them).
    pub(crate) prepare_q4_k: Option<PrepareFn>,
    pub(crate) prepare_q5_k: Option<PrepareFn>,
    pub(crate) prepare_q6_k: Option<PrepareFn>,
}

impl CpuKernels {
    pub(crate) const fn scalar(level: Level) -> CpuKernels {
        CpuKernels {
            level,
            emulated: false,
            quant_q8_0: None,
            quant_q8_1: None,
            quant_q8_k: None,
            tile_f32: None,
            tile_f16: None,
            tile_bf16: None,
            tile_q4_0: None,
            tile_q4_1: None,
            tile_q5_0: None,
            tile_q5_1: None,
            tile_q8_0: None,
            tile_q4_k: None,
            tile_q5_k: None,
            tile_q6_k: None,
            packed_q4_0: None,
            packed_q5_0: None,
            packed_q8_0: None,
            packed_f32: None,
            packed_f16: None,
            packed_bf16: None,
            packed_q4_k: None,
            packed_q5_k: None,
            packed_q6_k: None,
            repacked_q4_0: None,
            repacked_q8_0: None,
            repacked_q4_k: None,
            repacked_q5_k: None,
            repacked_q6_k: None,
            prepare_q4_0: None,
            prepare_q5_0: None,
            prepare_q8_0: None,
            prepare_q4_k: None,
            prepare_q5_k: None,
            prepare_q6_k: None,
        }
    }
}

fn build_table(level: Level) -> CpuKernels {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => x86::avx2_table(),
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => x86::avx512_table(),
        #[cfg(target_arch = "x86_64")]
        Level::Amx => x86::amx_table(),
        #[cfg(target_arch = "aarch64")]
        Level::Neon => aarch64::neon_table(),
        _ => CpuKernels::scalar(Level::Scalar),
    }
}

/// Bytes of one activation row of `k` elements for weights of type `weight_ty`
/// (in `weight_ty.vec_dot_type()`).
pub fn activation_row_bytes(weight_ty: GgmlType, k: usize) -> Result<usize, FormatError> {
    row_bytes(weight_ty.vec_dot_type(), k)
}

/// Checks the activation (`m` rows of `a_rb` bytes) and output (`m·n`) lengths of a product;
/// `Ok(true)` when nothing is left to compute (no rows, or `k = 0`: the outputs are zeroed).
fn nothing_to_compute(
    a_rb: usize,
    k: usize,
    n: usize,
    act: &[u8],
    m: usize,
    out: &mut [f32],
) -> Result<bool, FormatError> {
    let over = |what| FormatError::Overflow { what };
    let a_len = a_rb.checked_mul(m).ok_or(over("gemm activation bytes"))?;
    if act.len() != a_len {
        return Err(length_error("gemm activation bytes", a_len, act.len()));
    }
    let o_len = m.checked_mul(n).ok_or(over("gemm output (m·n)"))?;
    if out.len() != o_len {
        return Err(length_error("gemm output (m·n)", o_len, out.len()));
    }
    if k == 0 {
        out.fill(0.0);
    }
    Ok(n == 0 || m == 0 || k == 0)
}

/// Checks that `w_len` bytes hold `n` weight rows of `k` elements of type `ty`: back to back
/// (`stride = None`, exactly `n` rows) or `stride` bytes apart (at least `(n − 1)·stride` plus
/// one row). Returns the row stride.
fn weight_rows(
    ty: GgmlType,
    k: usize,
    n: usize,
    w_len: usize,
    stride: Option<usize>,
) -> Result<usize, FormatError> {
    if !supports_vec_dot(ty) {
        return Err(FormatError::Unsupported { ty, op: "gemm" });
    }
    let w_rb = row_bytes(ty, k)?;
    let w_stride = stride.unwrap_or(w_rb);
    if w_stride < w_rb {
        return Err(length_error("gemm weight row stride", w_rb, w_stride));
    }
    let need = match n {
        0 => Some(0),
        _ => (n - 1)
            .checked_mul(w_stride)
            .and_then(|b| b.checked_add(w_rb)),
    }
    .ok_or(FormatError::Overflow {
        what: "gemm weight bytes",
    })?;
    let fits = if stride.is_some() {
        w_len >= need
    } else {
        w_len == need
    };
    if !fits {
        return Err(FormatError::ByteLength {
            ty,
            n: n.saturating_mul(k),
            expected: need,
            actual: w_len,
        });
    }
    Ok(w_stride)
}

/// Activations without a prepared layout (lengths are checked where they are used).
fn unprepared(ty: GgmlType, k: usize, act: &[u8], m: usize) -> PreparedActivations<'_> {
    PreparedActivations {
        ty,
        k,
        act,
        m,
        layout: None,
    }
}

fn length_error(what: &'static str, expected: usize, actual: usize) -> FormatError {
    FormatError::Length {
        what,
        expected,
        actual,
    }
}

impl CpuKernels {
    /// The level of this table.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Whether this is the [`amx_emulated_kernels`] table (tile instructions in scalar code).
    pub fn is_emulated(&self) -> bool {
        self.emulated
    }

    /// Whether the matrix product for weights of type `ty` runs a SIMD kernel at this level
    /// (otherwise the scalar reference runs).
    pub fn has_simd_kernel(&self, ty: GgmlType) -> bool {
        self.tile(ty).is_some()
    }

    /// Whether the activation quantizer for `act_ty` (Q8_0, Q8_1, Q8_K) is a SIMD kernel here.
    pub fn has_simd_quantizer(&self, act_ty: GgmlType) -> bool {
        self.quantizer(act_ty).is_some()
    }

    /// Whether products with many activation rows and weights of type `ty` use a packed GEMM
    /// kernel at this level.
    pub fn has_packed_gemm(&self, ty: GgmlType) -> bool {
        self.packed(ty).is_some()
    }

    /// Whether products on `layout` run a SIMD kernel at this level (otherwise
    /// [`Self::gemm_repacked`] takes the rows back and runs the scalar reference, so repacking
    /// only pays where this is true).
    pub fn has_repacked_gemm(&self, layout: RepackLayout) -> bool {
        self.repacked(layout).is_some()
    }

    fn repacked(&self, layout: RepackLayout) -> Option<GemmFn> {
        match layout {
            RepackLayout::Q4_0x16 => self.repacked_q4_0,
            RepackLayout::Q8_0x16 => self.repacked_q8_0,
            RepackLayout::Q4_Kx16 => self.repacked_q4_k,
            RepackLayout::Q5_Kx16 => self.repacked_q5_k,
            RepackLayout::Q6_Kx16 => self.repacked_q6_k,
        }
    }

    fn prepare(&self, ty: GgmlType) -> Option<PrepareFn> {
        match ty {
            GgmlType::Q4_0 => self.prepare_q4_0,
            GgmlType::Q5_0 => self.prepare_q5_0,
            GgmlType::Q8_0 => self.prepare_q8_0,
            GgmlType::Q4_K => self.prepare_q4_k,
            GgmlType::Q5_K => self.prepare_q5_k,
            GgmlType::Q6_K => self.prepare_q6_k,
            _ => None,
        }
    }

    fn packed(&self, ty: GgmlType) -> Option<GemmFn> {
        match ty {
            GgmlType::Q4_0 => self.packed_q4_0,
            GgmlType::Q5_0 => self.packed_q5_0,
            GgmlType::Q8_0 => self.packed_q8_0,
            GgmlType::Q4_K => self.packed_q4_k,
            GgmlType::Q5_K => self.packed_q5_k,
            GgmlType::Q6_K => self.packed_q6_k,
            GgmlType::F32 => self.packed_f32,
            GgmlType::F16 => self.packed_f16,
            GgmlType::BF16 => self.packed_bf16,
            _ => None,
        }
    }

    fn tile(&self, ty: GgmlType) -> Option<TileFn> {
        use GgmlType::*;
        match ty {
            F32 => self.tile_f32,
            F16 => self.tile_f16,
            BF16 => self.tile_bf16,
            Q4_0 => self.tile_q4_0,
            Q4_1 => self.tile_q4_1,
            Q5_0 => self.tile_q5_0,
            Q5_1 => self.tile_q5_1,
            Q8_0 => self.tile_q8_0,
            Q4_K => self.tile_q4_k,
            Q5_K => self.tile_q5_k,
            Q6_K => self.tile_q6_k,
            _ => None,
        }
    }

    fn quantizer(&self, act_ty: GgmlType) -> Option<QuantFn> {
        match act_ty {
            GgmlType::Q8_0 => self.quant_q8_0,
            GgmlType::Q8_1 => self.quant_q8_1,
            GgmlType::Q8_K => self.quant_q8_k,
            _ => None,
        }
    }

    /// Converts `m = x.len() / k` activation rows of `k` f32 to `weight_ty.vec_dot_type()`
    /// (Q8_0 / Q8_1 / Q8_K, or plain f32 bytes for float weights), rows back to back in `dst`
    /// ([`activation_row_bytes`] each). The bytes equal [`formats::quantize_row`]'s (see the
    /// module notes for NaN inputs).
    pub fn quantize_activations(
        &self,
        weight_ty: GgmlType,
        x: &[f32],
        k: usize,
        dst: &mut [u8],
    ) -> Result<(), FormatError> {
        if !supports_vec_dot(weight_ty) {
            return Err(FormatError::Unsupported {
                ty: weight_ty,
                op: "quantize_activations",
            });
        }
        let act_ty = weight_ty.vec_dot_type();
        let rb = row_bytes(act_ty, k)?;
        if k == 0 {
            return if x.is_empty() && dst.is_empty() {
                Ok(())
            } else {
                Err(length_error("activations (k = 0)", 0, x.len()))
            };
        }
        if !x.len().is_multiple_of(k) {
            return Err(length_error(
                "activations x (m·k)",
                x.len() / k * k,
                x.len(),
            ));
        }
        let m = x.len() / k;
        let want = m.checked_mul(rb).ok_or(FormatError::Overflow {
            what: "activation bytes (m·row bytes)",
        })?;
        if dst.len() != want {
            return Err(length_error("quantized activations", want, dst.len()));
        }
        match self.quantizer(act_ty) {
            Some(q) => {
                let nb = k / act_ty.block_size();
                for (xr, yr) in x.chunks_exact(k).zip(dst.chunks_exact_mut(rb)) {
                    // SAFETY: lengths checked above (k = nb·block elements, rb bytes); the table
                    // exists only on CPUs that run its level.
                    unsafe { q(xr.as_ptr(), nb, yr.as_mut_ptr()) };
                }
            }
            None => {
                for (xr, yr) in x.chunks_exact(k).zip(dst.chunks_exact_mut(rb)) {
                    formats::quantize_row(act_ty, xr, yr)?;
                }
            }
        }
        Ok(())
    }

    /// `out[c·n + r] = Σ_i W[r][i]·A[c][i]` for `n` weight rows of `k` elements of type `ty`
    /// (GGUF bytes, rows back to back) and `m` activation rows from
    /// [`Self::quantize_activations`]. Quantized types give the reference's exact f32 results.
    /// (Activation bytes are assumed to be what the quantizers produce: values in −127..=127.
    /// A hand-made −128 in Q8_0 activations is not exact with Q8_0 weights at the AVX2 level.)
    ///
    /// Weight rows are taken [`TILE_ROWS`] at a time and each activation row [`TILE_COLS`] at a
    /// time, so a weight block is unpacked once per `TILE_COLS` activation rows.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        ty: GgmlType,
        k: usize,
        w: &[u8],
        n: usize,
        act: &[u8],
        m: usize,
        out: &mut [f32],
    ) -> Result<(), FormatError> {
        let stride = weight_rows(ty, k, n, w.len(), None)?;
        self.gemm_rows(ty, k, w, stride, n, &unprepared(ty, k, act, m), out)
    }

    /// Prepares `m` activation rows (`act`, from [`Self::quantize_activations`] for weights
    /// of type `ty` and `k` columns) for several products: where this level's packed kernels
    /// regroup the activations on every call (AVX-512 with Q4_0, Q5_0, Q8_0), that happens
    /// here once.
    pub fn prepare_activations<'a>(
        &self,
        ty: GgmlType,
        k: usize,
        act: &'a [u8],
        m: usize,
    ) -> Result<PreparedActivations<'a>, FormatError> {
        if !supports_vec_dot(ty) {
            return Err(FormatError::Unsupported {
                ty,
                op: "prepare_activations",
            });
        }
        let a_rb = row_bytes(ty.vec_dot_type(), k)?;
        let a_len = a_rb.checked_mul(m).ok_or(FormatError::Overflow {
            what: "activation bytes (m·row bytes)",
        })?;
        if act.len() != a_len {
            return Err(length_error("prepared activation bytes", a_len, act.len()));
        }
        let mut prep = unprepared(ty, k, act, m);
        // the legacy formats' layouts serve the packed GEMMs (from PACKED_MIN_ROWS rows) and
        // the ×16 kernels' decode (up to SUMS_MAX_ROWS); the K-quants' serve every row count
        let rows_enough = m >= PACKED_MIN_ROWS || m <= SUMS_MAX_ROWS || ty.block_size() == 256;
        if let Some(prepare) = self.prepare(ty).filter(|_| rows_enough && k > 0) {
            let args = GemmArgs {
                nb: k / ty.block_size(),
                w: core::ptr::null(),
                w_stride: 0,
                n: 0,
                a: act.as_ptr(),
                a_stride: a_rb,
                m,
                out: core::ptr::null_mut(),
                ldo: 0,
                prepared: core::ptr::null(),
            };
            // SAFETY: m rows of a_rb bytes (checked above); the table's level runs here.
            prep.layout = unsafe { prepare(&args) };
        }
        Ok(prep)
    }

    /// [`Self::gemm`] with prepared activations (weights of the type they were prepared for,
    /// `n` rows back to back in `w`): the same results.
    pub fn gemm_prepared(
        &self,
        w: &[u8],
        n: usize,
        act: &PreparedActivations,
        out: &mut [f32],
    ) -> Result<(), FormatError> {
        let stride = weight_rows(act.ty, act.k, n, w.len(), None)?;
        self.gemm_rows(act.ty, act.k, w, stride, n, act, out)
    }

    /// [`Self::gemm`] with weight rows `w_stride` bytes apart (≥ a row's bytes), e.g. one
    /// head's slice of every row of a KV cache; `w` holds at least `(n − 1)·w_stride` bytes plus
    /// one row.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_strided(
        &self,
        ty: GgmlType,
        k: usize,
        w: &[u8],
        w_stride: usize,
        n: usize,
        act: &[u8],
        m: usize,
        out: &mut [f32],
    ) -> Result<(), FormatError> {
        weight_rows(ty, k, n, w.len(), Some(w_stride))?;
        self.gemm_rows(ty, k, w, w_stride, n, &unprepared(ty, k, act, m), out)
    }

    /// The product once the weight rows are known to exist (`n` rows, `w_stride` apart).
    #[allow(clippy::too_many_arguments)]
    fn gemm_rows(
        &self,
        ty: GgmlType,
        k: usize,
        w: &[u8],
        w_stride: usize,
        n: usize,
        prep: &PreparedActivations,
        out: &mut [f32],
    ) -> Result<(), FormatError> {
        debug_assert!(prep.ty == ty && prep.k == k);
        let (act, m) = (prep.act, prep.m);
        let a_rb = row_bytes(ty.vec_dot_type(), k)?;
        if nothing_to_compute(a_rb, k, n, act, m, out)? {
            return Ok(());
        }
        let tile = match self.tile(ty) {
            Some(t) => t,
            None => {
                generic::gemm_ref(ty, k, w, w_stride, n, act, a_rb, m, out);
                return Ok(());
            }
        };
        let nb = k / ty.block_size();
        if m >= PACKED_MIN_ROWS {
            if let Some(packed) = self.packed(ty) {
                let args = GemmArgs {
                    nb,
                    w: w.as_ptr(),
                    w_stride,
                    n,
                    a: act.as_ptr(),
                    a_stride: a_rb,
                    m,
                    out: out.as_mut_ptr(),
                    ldo: n,
                    prepared: prep.layout_ptr(),
                };
                // SAFETY: lengths checked above (n rows of w, m rows of act, m·n outputs; a
                // prepared layout was built from these rows for this type); the table's level
                // runs on this CPU.
                if unsafe { packed(&args) } {
                    return Ok(());
                }
            }
        }
        // activation rows in groups of about 96 KiB (kept in L2 while every weight tile of
        // this call passes over them); weights are re-read once per group
        let group = (ACT_GROUP_BYTES / a_rb / TILE_COLS * TILE_COLS)
            .clamp(TILE_COLS, m.next_multiple_of(TILE_COLS));
        for g0 in (0..m).step_by(group) {
            let g1 = (g0 + group).min(m);
            for r0 in (0..n).step_by(TILE_ROWS) {
                let nr = (n - r0).min(TILE_ROWS);
                for c0 in (g0..g1).step_by(TILE_COLS) {
                    let nc = (g1 - c0).min(TILE_COLS);
                    let args = TileArgs {
                        nb,
                        // in bounds: r0 < n, c0 < m
                        w: w[r0 * w_stride..].as_ptr(),
                        w_stride,
                        nr,
                        a: act[c0 * a_rb..].as_ptr(),
                        a_stride: a_rb,
                        nc,
                        out: out[c0 * n + r0..].as_mut_ptr(),
                        ldo: n,
                    };
                    // SAFETY: rows r0..r0+nr of w and c0..c0+nc of act exist (lengths
                    // checked above); out[(c0+c)·n + r0 + r] < m·n; the table's level runs on
                    // this CPU.
                    unsafe { tile(&args) };
                }
            }
        }
        Ok(())
    }

    /// [`Self::gemm`] for rows `row0..row0 + n` of a repacked matrix: `out[c·n + r] =
    /// dot(W[row0 + r], A[c])`, with the same (exact) results. `row0` must start a 16-row group.
    pub fn gemm_repacked(
        &self,
        w: &RepackedMatrix,
        row0: usize,
        n: usize,
        act: &[u8],
        m: usize,
        out: &mut [f32],
    ) -> Result<(), FormatError> {
        let prep = unprepared(w.ty(), w.cols(), act, m);
        self.gemm_repacked_prepared(w, row0, n, &prep, out)
    }

    /// [`Self::gemm_repacked`] with prepared activations (prepared for the matrix's type and
    /// row length): the same results.
    pub fn gemm_repacked_prepared(
        &self,
        w: &RepackedMatrix,
        row0: usize,
        n: usize,
        prep: &PreparedActivations,
        out: &mut [f32],
    ) -> Result<(), FormatError> {
        let ty = w.ty();
        let k = w.cols();
        if prep.ty != ty {
            return Err(FormatError::Unsupported {
                ty,
                op:
                    "gemm_repacked_prepared (the activations were prepared for another weight type)",
            });
        }
        if prep.k != k {
            return Err(length_error(
                "prepared activations' row length for this matrix",
                k,
                prep.k,
            ));
        }
        let (act, m) = (prep.act, prep.m);
        let a_rb = row_bytes(ty.vec_dot_type(), k)?;
        if !row0.is_multiple_of(GROUP_ROWS) || row0 > w.rows() || n > w.rows() - row0 {
            return Err(length_error(
                "repacked gemm rows",
                w.rows(),
                row0.saturating_add(n),
            ));
        }
        if nothing_to_compute(a_rb, k, n, act, m, out)? {
            return Ok(());
        }
        let Some(kernel) = self.repacked(w.layout()) else {
            // the rows back in GGUF layout, through the reference dot products
            let mut row = Vec::new();
            for r in 0..n {
                w.row(row0 + r, &mut row);
                for (c, a_row) in act.chunks_exact(a_rb).enumerate() {
                    out[c * n + r] = formats::vec_dot(ty, k, &row, a_row);
                }
            }
            return Ok(());
        };
        let gb = w.group_bytes();
        let args = GemmArgs {
            nb: w.blocks_per_row(),
            // in bounds: row0 < rows, so its group exists
            w: w.bytes()[row0 / GROUP_ROWS * gb..].as_ptr(),
            w_stride: gb,
            n,
            a: act.as_ptr(),
            a_stride: a_rb,
            m,
            out: out.as_mut_ptr(),
            ldo: n,
            prepared: prep.layout_ptr(),
        };
        // SAFETY: the groups of rows row0..row0+n exist (checked above), m activation rows and
        // m·n outputs (checked above); the table's level runs on this CPU.
        let done = unsafe { kernel(&args) };
        debug_assert!(done, "repacked kernels never decline");
        Ok(())
    }

    /// Dot of one weight row with one activation row (as [`formats::vec_dot`]).
    ///
    /// # Panics
    /// On mismatched lengths or an unsupported type, like [`formats::vec_dot`].
    pub fn vec_dot(&self, ty: GgmlType, k: usize, w_row: &[u8], act_row: &[u8]) -> f32 {
        let mut out = [0f32];
        if let Err(e) = self.gemm(ty, k, w_row, 1, act_row, 1, &mut out) {
            panic!("vec_dot ({ty} weights): {e}");
        }
        out[0]
    }
}
