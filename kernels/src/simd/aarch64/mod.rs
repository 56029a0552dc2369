//! aarch64 NEON kernels with the dot-product extension (SDOT).
//!
//! SDOT (`vdotq_s32`) is not yet a stable intrinsic in Rust, so it is emitted with inline
//! assembly in functions compiled with the `dotprod` target feature.
//!
//! The 32-element formats compute each (row, block) integer dot with SDOT and an across-lanes
//! add, then do the scale arithmetic in scalar f32 in the reference's order (bit-identical). The
//! K-quants scale each sub-block's SDOT lanes, add all lanes of a super-block into one exact
//! integer and then follow the reference's f32 steps (bit-identical). Float weights use the
//! scalar reference. The ×16 layouts (files written by `tinygptv repack`) have their own kernels
//! in `repacked.rs`.

use core::arch::aarch64::*;
use core::arch::asm;

use half::f16;

use super::{CpuKernels, Level, TileArgs, TILE_COLS, TILE_ROWS};

mod repacked;

pub(super) fn has_neon_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("dotprod")
}

pub(super) fn neon_table() -> CpuKernels {
    let mut k = CpuKernels::scalar(Level::Neon);
    k.quant_q8_0 = Some(quant_q8_0);
    k.quant_q8_1 = Some(quant_q8_1);
    k.quant_q8_k = Some(quant_q8_k);
    k.tile_q4_0 = Some(tile_q4_0);
    k.tile_q4_1 = Some(tile_q4_1);
    k.tile_q5_0 = Some(tile_q5_0);
    k.tile_q5_1 = Some(tile_q5_1);
    k.tile_q8_0 = Some(tile_q8_0);
    k.tile_q4_k = Some(tile_q4_k);
    k.tile_q5_k = Some(tile_q5_k);
    k.tile_q6_k = Some(tile_q6_k);
    k.repacked_q4_0 = Some(repacked::gemm_q4_0x16);
    k.repacked_q8_0 = Some(repacked::gemm_q8_0x16);
    k.repacked_q4_k = Some(repacked::gemm_q4_kx16);
    k.repacked_q5_k = Some(repacked::gemm_q5_kx16);
    k.repacked_q6_k = Some(repacked::gemm_q6_kx16);
    k.prepare_q4_k = Some(repacked::prepare_q4_k);
    k.prepare_q5_k = Some(repacked::prepare_q4_k);
    k.prepare_q6_k = Some(repacked::prepare_q6_k);
    k
}

/// `acc + Σ a·b` per group of 4 signed bytes (SDOT).
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    f16::from_bits((p as *const u16).read_unaligned()).to_f32()
}

/// fp32 → fp16 bits as the reference: round to nearest even, NaN → quiet NaN with the sign.
#[inline(always)]
fn fp32_to_fp16_bits(f: f32) -> u16 {
    if f.is_nan() {
        return (((f.to_bits() >> 16) & 0x8000) | 0x7e00) as u16;
    }
    f16::from_f32(f).to_bits()
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers

/// Lanes whose magnitude is below `lim` (NaN: no) keep their value, the others become 0: the
/// reference's float → int conversions turn out-of-range values into bytes of 0.
#[inline(always)]
unsafe fn zero_out_of_range(v: float32x4_t, lim: f32) -> float32x4_t {
    let ok = vcaltq_f32(v, vdupq_n_f32(lim));
    vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), ok))
}

/// Four i32 vectors → 16 bytes, keeping the low byte of each (like `as i8`).
#[inline(always)]
unsafe fn narrow(q: [int32x4_t; 4]) -> int8x16_t {
    let lo = vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1]));
    let hi = vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3]));
    vcombine_s8(vmovn_s16(lo), vmovn_s16(hi))
}

/// Q8_0 / Q8_1 block: 32 rounded bytes (two halves) and the f32 scale.
#[inline(always)]
unsafe fn q8_block(x: *const f32) -> ([int8x16_t; 2], f32) {
    let mut v = [vdupq_n_f32(0.0); 8];
    let mut m = vdupq_n_f32(0.0);
    for (i, vi) in v.iter_mut().enumerate() {
        *vi = vld1q_f32(x.add(4 * i));
        m = vmaxq_f32(m, vabsq_f32(*vi));
    }
    let amax = vmaxvq_f32(m);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [vdupq_n_s32(0); 8];
    for (qi, vi) in q.iter_mut().zip(v) {
        // FCVTAS rounds half away from zero, like roundf
        *qi = vcvtaq_s32_f32(zero_out_of_range(vmulq_n_f32(vi, id), 2_147_483_648.0));
    }
    (
        [
            narrow([q[0], q[1], q[2], q[3]]),
            narrow([q[4], q[5], q[6], q[7]]),
        ],
        d,
    )
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn quant_q8_0(x: *const f32, nb: usize, y: *mut u8) {
    for b in 0..nb {
        let (q, d) = q8_block(x.add(32 * b));
        let yb = y.add(34 * b);
        (yb as *mut u16).write_unaligned(fp32_to_fp16_bits(d).to_le());
        vst1q_s8(yb.add(2) as *mut i8, q[0]);
        vst1q_s8(yb.add(18) as *mut i8, q[1]);
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn quant_q8_1(x: *const f32, nb: usize, y: *mut u8) {
    for b in 0..nb {
        let (q, d) = q8_block(x.add(32 * b));
        let sum = vaddlvq_s8(q[0]) as i32 + vaddlvq_s8(q[1]) as i32;
        let yb = y.add(36 * b);
        (yb as *mut u16).write_unaligned(fp32_to_fp16_bits(d).to_le());
        (yb.add(2) as *mut u16).write_unaligned(fp32_to_fp16_bits(sum as f32 * d).to_le());
        vst1q_s8(yb.add(4) as *mut i8, q[0]);
        vst1q_s8(yb.add(20) as *mut i8, q[1]);
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn quant_q8_k(x: *const f32, nb: usize, y: *mut u8) {
    for b in 0..nb {
        let xb = x.add(256 * b);
        let yb = y.add(292 * b);
        let mut m = vdupq_n_f32(0.0);
        for i in 0..64 {
            m = vmaxq_f32(m, vabsq_f32(vld1q_f32(xb.add(4 * i))));
        }
        let amax = vmaxvq_f32(m);
        if amax == 0.0 {
            core::ptr::write_bytes(yb, 0, 292);
            continue;
        }
        // the first element of largest magnitude keeps its sign (the reference's strict `>`)
        let mut max = 0f32;
        for i in 0..256 {
            let v = *xb.add(i);
            if v.abs() == amax {
                max = v;
                break;
            }
        }
        let iscale = -127.0 / max;
        for g in 0..16 {
            let mut q = [vdupq_n_s32(0); 4];
            for (j, qj) in q.iter_mut().enumerate() {
                let v = vmulq_n_f32(vld1q_f32(xb.add(16 * g + 4 * j)), iscale);
                // FCVTNS rounds half to even, like nearest_int on its valid range
                let r = vcvtnq_s32_f32(zero_out_of_range(v, 4_194_304.0));
                *qj = vminq_s32(r, vdupq_n_s32(127));
            }
            let bytes = narrow(q);
            vst1q_s8(yb.add(4 + 16 * g) as *mut i8, bytes);
            (yb.add(260 + 2 * g) as *mut i16).write_unaligned(vaddlvq_s8(bytes).to_le());
        }
        (yb as *mut f32).write_unaligned(1.0 / iscale);
    }
}

// ---------------------------------------------------------------------------------------------
// 32-element formats

/// One 32-element weight format: its signed values (offset removed) and the reference's update.
trait Legacy {
    const W_BYTES: usize;
    const A_BYTES: usize;
    const A_QS: usize;
    /// The 32 values as signed bytes, element order (two halves).
    unsafe fn values(blk: *const u8) -> [int8x16_t; 2];
    /// `sumf` plus this block's term, in the reference's operation order.
    unsafe fn update(sumf: f32, sumi: i32, w_blk: *const u8, a_blk: *const u8) -> f32;
}

#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> [uint8x16_t; 2] {
    let x = vld1q_u8(qs);
    [vandq_u8(x, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(x)]
}

/// Bit j of the little-endian u32 at `qh` → 0x10 in byte j (two halves).
#[inline(always)]
unsafe fn fifth_bits(qh: *const u8) -> [uint8x16_t; 2] {
    let h = (qh as *const u32).read_unaligned();
    let bits: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bits = vld1q_u8(bits.as_ptr());
    let half = |v: u32| {
        let b = vcombine_u8(vdup_n_u8(v as u8), vdup_n_u8((v >> 8) as u8));
        vandq_u8(vtstq_u8(b, bits), vdupq_n_u8(0x10))
    };
    [half(h), half(h >> 16)]
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Q8_0;

impl Legacy for Q4_0 {
    const W_BYTES: usize = 18;
    const A_BYTES: usize = 34;
    const A_QS: usize = 2;
    #[inline(always)]
    unsafe fn values(blk: *const u8) -> [int8x16_t; 2] {
        let [lo, hi] = nibbles(blk.add(2));
        let eight = vdupq_n_s8(8);
        [
            vsubq_s8(vreinterpretq_s8_u8(lo), eight),
            vsubq_s8(vreinterpretq_s8_u8(hi), eight),
        ]
    }
    #[inline(always)]
    unsafe fn update(sumf: f32, sumi: i32, w: *const u8, a: *const u8) -> f32 {
        sumf + sumi as f32 * f16_at(w) * f16_at(a)
    }
}

impl Legacy for Q5_0 {
    const W_BYTES: usize = 22;
    const A_BYTES: usize = 34;
    const A_QS: usize = 2;
    #[inline(always)]
    unsafe fn values(blk: *const u8) -> [int8x16_t; 2] {
        let [lo, hi] = nibbles(blk.add(6));
        let [hlo, hhi] = fifth_bits(blk.add(2));
        let sixteen = vdupq_n_s8(16);
        [
            vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, hlo)), sixteen),
            vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(hi, hhi)), sixteen),
        ]
    }
    #[inline(always)]
    unsafe fn update(sumf: f32, sumi: i32, w: *const u8, a: *const u8) -> f32 {
        sumf + (f16_at(w) * f16_at(a)) * sumi as f32
    }
}

impl Legacy for Q8_0 {
    const W_BYTES: usize = 34;
    const A_BYTES: usize = 34;
    const A_QS: usize = 2;
    #[inline(always)]
    unsafe fn values(blk: *const u8) -> [int8x16_t; 2] {
        [
            vld1q_s8(blk.add(2) as *const i8),
            vld1q_s8(blk.add(18) as *const i8),
        ]
    }
    #[inline(always)]
    unsafe fn update(sumf: f32, sumi: i32, w: *const u8, a: *const u8) -> f32 {
        sumf + sumi as f32 * (f16_at(w) * f16_at(a))
    }
}

#[inline(always)]
unsafe fn update_with_min(sumf: f32, sumi: i32, w: *const u8, a: *const u8) -> f32 {
    sumf + ((f16_at(w) * f16_at(a)) * sumi as f32 + f16_at(w.add(2)) * f16_at(a.add(2)))
}

impl Legacy for Q4_1 {
    const W_BYTES: usize = 20;
    const A_BYTES: usize = 36;
    const A_QS: usize = 4;
    #[inline(always)]
    unsafe fn values(blk: *const u8) -> [int8x16_t; 2] {
        let [lo, hi] = nibbles(blk.add(4));
        [vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi)]
    }
    #[inline(always)]
    unsafe fn update(sumf: f32, sumi: i32, w: *const u8, a: *const u8) -> f32 {
        update_with_min(sumf, sumi, w, a)
    }
}

impl Legacy for Q5_1 {
    const W_BYTES: usize = 24;
    const A_BYTES: usize = 36;
    const A_QS: usize = 4;
    #[inline(always)]
    unsafe fn values(blk: *const u8) -> [int8x16_t; 2] {
        let [lo, hi] = nibbles(blk.add(8));
        let [hlo, hhi] = fifth_bits(blk.add(4));
        [
            vreinterpretq_s8_u8(vorrq_u8(lo, hlo)),
            vreinterpretq_s8_u8(vorrq_u8(hi, hhi)),
        ]
    }
    #[inline(always)]
    unsafe fn update(sumf: f32, sumi: i32, w: *const u8, a: *const u8) -> f32 {
        update_with_min(sumf, sumi, w, a)
    }
}

#[inline(always)]
unsafe fn legacy_tile_nc<F: Legacy, const NC: usize>(t: &TileArgs) {
    let mut sumf = [[0f32; NC]; TILE_ROWS];
    for b in 0..t.nb {
        for (r, sr) in sumf.iter_mut().enumerate().take(t.nr) {
            let wb = t.w.add(r * t.w_stride + b * F::W_BYTES);
            let [w0, w1] = F::values(wb);
            for (c, s) in sr.iter_mut().enumerate() {
                let ab = t.a.add(c * t.a_stride + b * F::A_BYTES);
                let a0 = vld1q_s8(ab.add(F::A_QS) as *const i8);
                let a1 = vld1q_s8(ab.add(F::A_QS + 16) as *const i8);
                let sumi = vaddvq_s32(sdot(sdot(vdupq_n_s32(0), w0, a0), w1, a1));
                *s = F::update(*s, sumi, wb, ab);
            }
        }
    }
    for (r, sr) in sumf.iter().enumerate().take(t.nr) {
        for (c, &s) in sr.iter().enumerate() {
            *t.out.add(c * t.ldo + r) = s;
        }
    }
}

#[inline(always)]
unsafe fn legacy_tile<F: Legacy>(t: &TileArgs) {
    match t.nc {
        1 => legacy_tile_nc::<F, 1>(t),
        2 => legacy_tile_nc::<F, 2>(t),
        3 => legacy_tile_nc::<F, 3>(t),
        _ => legacy_tile_nc::<F, 4>(t),
    }
}

// ---------------------------------------------------------------------------------------------
// K-quants

const _: () = assert!(TILE_COLS == 4);

/// 32 bytes at `p` as two vectors (a 32-element group: two 16-element halves).
#[inline(always)]
unsafe fn load32(p: *const u8) -> [uint8x16_t; 2] {
    [vld1q_u8(p), vld1q_u8(p.add(16))]
}

/// The reference's two f32 sums (`formats::q4_k`'s `KDotAccumulator`) per (row, activation).
struct KAcc<const NC: usize> {
    sums: [[f32; NC]; TILE_ROWS],
    mins: [[f32; NC]; TILE_ROWS],
}

impl<const NC: usize> KAcc<NC> {
    fn new() -> Self {
        KAcc {
            sums: [[0.0; NC]; TILE_ROWS],
            mins: [[0.0; NC]; TILE_ROWS],
        }
    }

    /// `sum += d·isum`, `isum` the lanes of `aux` added (exact in i32).
    #[inline(always)]
    unsafe fn add(&mut self, r: usize, c: usize, d: f32, aux: [int32x4_t; 2]) {
        let isum = vaddvq_s32(vaddq_s32(aux[0], aux[1]));
        self.sums[r][c] += d * isum as f32;
    }

    unsafe fn store(&self, t: &TileArgs) {
        for r in 0..t.nr {
            for c in 0..NC {
                *t.out.add(c * t.ldo + r) = self.mins[r][c] + self.sums[r][c];
            }
        }
    }
}

/// Activation super-block `b` of row `c`: `d`, the 8 groups of 32 values, and the 16 sums.
#[inline(always)]
unsafe fn k_act(t: &TileArgs, c: usize, b: usize) -> (f32, [[int8x16_t; 2]; 8], *const i16) {
    let ab = t.a.add(c * t.a_stride + b * 292);
    let mut q = [[vdupq_n_s8(0); 2]; 8];
    for (g, qg) in q.iter_mut().enumerate() {
        let [lo, hi] = load32(ab.add(4 + 32 * g));
        *qg = [vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi)];
    }
    (
        (ab as *const f32).read_unaligned(),
        q,
        ab.add(260) as *const i16,
    )
}

/// Q4_K / Q5_K sub-block scales and mins (6 bits each).
#[inline(always)]
unsafe fn scales_mins_k4(p: *const u8) -> ([i32; 8], [i32; 8]) {
    let q = core::slice::from_raw_parts(p, 12);
    let (mut sc, mut m) = ([0i32; 8], [0i32; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = (q[j] & 63) as i32;
            m[j] = (q[j + 4] & 63) as i32;
        } else {
            sc[j] = ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4)) as i32;
            m[j] = ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as i32;
        }
    }
    (sc, m)
}

#[inline(always)]
unsafe fn tile_q45_k_nc<const NC: usize>(t: &TileArgs, five_bits: bool) {
    let w_bytes = if five_bits { 176 } else { 144 };
    let qs_off = if five_bits { 48 } else { 16 };
    let mut acc = KAcc::<NC>::new();
    for b in 0..t.nb {
        let mut acts = [(0f32, [[vdupq_n_s8(0); 2]; 8], core::ptr::null()); NC];
        for (c, a) in acts.iter_mut().enumerate() {
            *a = k_act(t, c, b);
        }
        for r in 0..t.nr {
            let wb = t.w.add(r * t.w_stride + b * w_bytes);
            let (d, dmin) = (f16_at(wb), f16_at(wb.add(2)));
            let (sc, mins) = scales_mins_k4(wb.add(4));
            let mut q = [[vdupq_n_s8(0); 2]; 8];
            let qh = if five_bits {
                load32(wb.add(16))
            } else {
                [vdupq_n_u8(0); 2]
            };
            for ch in 0..4 {
                let raw = load32(wb.add(qs_off + 32 * ch));
                for h in 0..2 {
                    let mut lo = vandq_u8(raw[h], vdupq_n_u8(0x0f));
                    let mut hi = vshrq_n_u8::<4>(raw[h]);
                    if five_bits {
                        let fifth =
                            |bit: u8| vandq_u8(vtstq_u8(qh[h], vdupq_n_u8(bit)), vdupq_n_u8(0x10));
                        lo = vorrq_u8(lo, fifth(1 << (2 * ch)));
                        hi = vorrq_u8(hi, fifth(1 << (2 * ch + 1)));
                    }
                    q[2 * ch][h] = vreinterpretq_s8_u8(lo);
                    q[2 * ch + 1][h] = vreinterpretq_s8_u8(hi);
                }
            }
            for (c, (yd, aq, bsums)) in acts.iter().enumerate() {
                let mut aux = [vdupq_n_s32(0); 2];
                for g in 0..8 {
                    for h in 0..2 {
                        let dot = sdot(vdupq_n_s32(0), q[g][h], aq[g][h]);
                        aux[h] = vmlaq_n_s32(aux[h], dot, sc[g]);
                    }
                }
                acc.add(r, c, d * yd, aux);
                let mut sumi = 0i32;
                for j in 0..16 {
                    sumi += bsums.add(j).read_unaligned() as i32 * mins[j / 2];
                }
                acc.mins[r][c] -= (dmin * yd) * sumi as f32;
            }
        }
    }
    acc.store(t);
}

#[inline(always)]
unsafe fn tile_q6_k_nc<const NC: usize>(t: &TileArgs) {
    let mut acc = KAcc::<NC>::new();
    for b in 0..t.nb {
        let mut acts = [(0f32, [[vdupq_n_s8(0); 2]; 8], core::ptr::null()); NC];
        for (c, a) in acts.iter_mut().enumerate() {
            *a = k_act(t, c, b);
        }
        for r in 0..t.nr {
            let wb = t.w.add(r * t.w_stride + b * 210);
            let d = f16_at(wb.add(208));
            let scales = core::slice::from_raw_parts(wb.add(192) as *const i8, 16);
            let mut q = [[vdupq_n_s8(0); 2]; 8];
            for hb in 0..2 {
                let ql0 = load32(wb.add(64 * hb));
                let ql1 = load32(wb.add(64 * hb + 32));
                let qh = load32(wb.add(128 + 32 * hb));
                for h in 0..2 {
                    let m4 = vdupq_n_u8(0x0f);
                    let hbits = |shift_mask: u8| vandq_u8(qh[h], vdupq_n_u8(shift_mask));
                    let v = [
                        vorrq_u8(vandq_u8(ql0[h], m4), vshlq_n_u8::<4>(hbits(0x03))),
                        vorrq_u8(vandq_u8(ql1[h], m4), vshlq_n_u8::<2>(hbits(0x0c))),
                        vorrq_u8(vshrq_n_u8::<4>(ql0[h]), hbits(0x30)),
                        vorrq_u8(vshrq_n_u8::<4>(ql1[h]), vshrq_n_u8::<2>(hbits(0xc0))),
                    ];
                    for (k, vk) in v.into_iter().enumerate() {
                        q[4 * hb + k][h] = vsubq_s8(vreinterpretq_s8_u8(vk), vdupq_n_s8(32));
                    }
                }
            }
            for (c, (yd, aq, _)) in acts.iter().enumerate() {
                let mut aux = [vdupq_n_s32(0); 2];
                for g in 0..8 {
                    // half h of group g is the 16-element sub-block 2g + h
                    for h in 0..2 {
                        let dot = sdot(vdupq_n_s32(0), q[g][h], aq[g][h]);
                        aux[h] = vmlaq_n_s32(aux[h], dot, scales[2 * g + h] as i32);
                    }
                }
                acc.add(r, c, d * yd, aux);
            }
        }
    }
    acc.store(t);
}

macro_rules! by_nc {
    ($t:ident, $f:ident $(, $arg:expr)*) => {
        match $t.nc {
            1 => $f::<1>($t $(, $arg)*),
            2 => $f::<2>($t $(, $arg)*),
            3 => $f::<3>($t $(, $arg)*),
            _ => $f::<4>($t $(, $arg)*),
        }
    };
}

macro_rules! entry {
    ($name:ident, $t:ident, $body:expr) => {
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn $name($t: &TileArgs) {
            $body
        }
    };
}

entry!(tile_q4_0, t, legacy_tile::<Q4_0>(t));
entry!(tile_q4_1, t, legacy_tile::<Q4_1>(t));
entry!(tile_q5_0, t, legacy_tile::<Q5_0>(t));
entry!(tile_q5_1, t, legacy_tile::<Q5_1>(t));
entry!(tile_q8_0, t, legacy_tile::<Q8_0>(t));
entry!(tile_q4_k, t, by_nc!(t, tile_q45_k_nc, false));
entry!(tile_q5_k, t, by_nc!(t, tile_q45_k_nc, true));
entry!(tile_q6_k, t, by_nc!(t, tile_q6_k_nc));
