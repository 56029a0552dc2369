//! NEON products on the ×16 layouts of [`crate::repack`] (Q4_0x16, Q8_0x16, Q4_Kx16, Q5_Kx16,
//! Q6_Kx16): what a file written by `tinygptv repack` is read with in place on aarch64, instead
//! of being unpacked at load time.
//!
//! In a 64-byte chunk of the layouts, i32 lane `r` holds row `r`'s 4 bytes, so the 16 bytes at
//! `16q` are the rows `4q..4q+4` of a *quad*: one NEON vector whose i32 lanes are four rows.
//! SDOT by element (`sdot v.4s, w.16b, a.4b[i]`) multiplies such a vector with 4 activation
//! bytes broadcast to every lane. So each lane accumulates one row's exact integer block dot with
//! no across-lanes add, and the scale update is lane-wise f32 in the reference's operation order:
//! the results are bit-identical to the scalar `vec_dot`, like the x86 kernels on these layouts.
//!
//! - Q4_0: 4 vectors per block and quad, split into 8 nibble vectors (unsigned; the `−8` offset
//!   is a per-block start of `−8·Σa`, computed once per activation row). Q8_0: 8 vectors of
//!   `q + 128`, their top bit flipped back. Then 8 SDOTs per activation row.
//! - K-quants: the activations are first put in the records' mod-8 class order
//!   ([`KActivation`]), so a chunk's 4 bytes per row meet 4 contiguous activation bytes. Q4_K /
//!   Q5_K chunks hold two 32-element sub-blocks (low and high nibbles); Q6_K chunks hold two
//!   bytes of each of two 16-element sub-blocks, which two SDOTs against activations with the
//!   other sub-block's bytes zeroed keep apart.
//! - Decode (one activation row) runs a group's 4 quads per block; more rows run 4 at a time
//!   per quad, each quad unpacked once for the 4.

use core::arch::aarch64::*;
use core::arch::asm;

use super::f16_at;
use core::mem::MaybeUninit;

use crate::repack::GROUP_ROWS;
use crate::simd::{prepared_or, to_lines, GemmArgs, Line64};

/// Rows per quad (the i32 lanes of a NEON vector).
const QUAD: usize = 4;
const QUADS: usize = GROUP_ROWS / QUAD;

/// Bytes of a Q8_0 activation block (f16 `d`, 32 values).
const A_BYTES: usize = 34;

/// `acc + Σ w·a` per i32 lane, over the lane's 4 bytes of `w` and the 4 bytes of group `I` of
/// `a`, broadcast (SDOT by element).
#[inline(always)]
unsafe fn sdot_lane<const I: i32>(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    asm!(
        "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{i}]",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        a = in(vreg) a,
        i = const I,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Four f16 at `p` (any alignment) as f32; exact, like the reference's conversion.
#[inline(always)]
unsafe fn f16x4(p: *const u8) -> float32x4_t {
    let h = vld1_u16(p as *const u16);
    let out: float32x4_t;
    // FCVTL is base AdvSIMD; the Rust f16 vector types are not stable yet
    asm!(
        "fcvtl {o:v}.4s, {h:v}.4h",
        o = lateout(vreg) out,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    out
}

/// A format with a ×16 layout.
pub(super) trait Repacked {
    /// Bytes of one block's values for the 16 rows.
    const QS_BYTES: usize;
    /// The value offset that the per-block start `−OFFSET·Σa` corrects (Q4_0's nibbles are
    /// `q + 8`), 0 if [`Self::quad`] gives the values themselves.
    const OFFSET: i32;
    /// The 8 vectors of quad `q` of a block (`qs`: the block's values): vector `g` holds values
    /// `4g..4g+4` of the quad's rows, one row per i32 lane.
    unsafe fn quad(qs: *const u8, q: usize) -> [int8x16_t; 8];
    /// `acc` plus the block's term `sumi·dw·da` in the reference's order.
    unsafe fn update(
        acc: float32x4_t,
        sumi: int32x4_t,
        dw: float32x4_t,
        da: float32x4_t,
    ) -> float32x4_t;
}

pub(super) struct Q4_0x16;
pub(super) struct Q8_0x16;

impl Repacked for Q4_0x16 {
    const QS_BYTES: usize = 256;
    const OFFSET: i32 = 8;
    #[inline(always)]
    unsafe fn quad(qs: *const u8, q: usize) -> [int8x16_t; 8] {
        let mask = vdupq_n_u8(0x0f);
        let mut g = [vdupq_n_s8(0); 8];
        for c in 0..4 {
            // chunk c: low nibbles are values 4c.., high nibbles values 16 + 4c..
            let x = vld1q_u8(qs.add(64 * c + 16 * q));
            g[c] = vreinterpretq_s8_u8(vandq_u8(x, mask));
            g[c + 4] = vreinterpretq_s8_u8(vshrq_n_u8::<4>(x));
        }
        g
    }
    #[inline(always)]
    unsafe fn update(
        acc: float32x4_t,
        sumi: int32x4_t,
        dw: float32x4_t,
        da: float32x4_t,
    ) -> float32x4_t {
        // formats::q4_0: sumf += sumi as f32 * d_w * d_a
        vaddq_f32(acc, vmulq_f32(vmulq_f32(vcvtq_f32_s32(sumi), dw), da))
    }
}

impl Repacked for Q8_0x16 {
    const QS_BYTES: usize = 512;
    const OFFSET: i32 = 0;
    #[inline(always)]
    unsafe fn quad(qs: *const u8, q: usize) -> [int8x16_t; 8] {
        let top = vdupq_n_u8(0x80);
        let mut g = [vdupq_n_s8(0); 8];
        for (c, gc) in g.iter_mut().enumerate() {
            let x = vld1q_u8(qs.add(64 * c + 16 * q));
            *gc = vreinterpretq_s8_u8(veorq_u8(x, top));
        }
        g
    }
    #[inline(always)]
    unsafe fn update(
        acc: float32x4_t,
        sumi: int32x4_t,
        dw: float32x4_t,
        da: float32x4_t,
    ) -> float32x4_t {
        // formats::q8_0: sumf += sumi as f32 * (d_w * d_a)
        vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(sumi), vmulq_f32(dw, da)))
    }
}

/// Per activation row and block: the integer start `−OFFSET·Σa` and the scale `d` as f32.
#[inline(always)]
unsafe fn activation_block_sums<F: Repacked>(t: &GemmArgs) -> (Vec<i32>, Vec<f32>) {
    let nb = t.nb;
    let mut start = vec![0i32; t.m * nb];
    let mut ad = vec![0f32; t.m * nb];
    for c in 0..t.m {
        let row = t.a.add(c * t.a_stride);
        for b in 0..nb {
            let blk = row.add(b * A_BYTES);
            if F::OFFSET != 0 {
                let lo = vaddlvq_s8(vld1q_s8(blk.add(2) as *const i8)) as i32;
                let hi = vaddlvq_s8(vld1q_s8(blk.add(18) as *const i8)) as i32;
                start[c * nb + b] = -F::OFFSET * (lo + hi);
            }
            ad[c * nb + b] = f16_at(blk);
        }
    }
    (start, ad)
}

/// `NC` activation rows from `c0` against quads `q0..q0 + NQ` of one group (`nr` valid rows),
/// unpacking each block's quads in registers once for all `NC` rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn direct<F: Repacked, const NC: usize, const NQ: usize>(
    t: &GemmArgs,
    group: *const u8,
    start: &[i32],
    ad: &[f32],
    c0: usize,
    q0: usize,
    nr: usize,
) {
    let nb = t.nb;
    let mut acc = [[vdupq_n_f32(0.0); NC]; NQ];
    let values = group.add(nb * 32);
    for b in 0..nb {
        let qs = values.add(b * F::QS_BYTES);
        let mut act = [[vdupq_n_s8(0); 2]; NC];
        for (c, ac) in act.iter_mut().enumerate() {
            let blk = t.a.add((c0 + c) * t.a_stride + b * A_BYTES);
            *ac = [
                vld1q_s8(blk.add(2) as *const i8),
                vld1q_s8(blk.add(18) as *const i8),
            ];
        }
        for (qi, acc_q) in acc.iter_mut().enumerate() {
            let q = q0 + qi;
            let w = F::quad(qs, q);
            let dw = f16x4(group.add(b * 32 + 8 * q));
            for c in 0..NC {
                let [a0, a1] = act[c];
                let mut s = vdupq_n_s32(start[(c0 + c) * nb + b]);
                s = sdot_lane::<0>(s, w[0], a0);
                s = sdot_lane::<1>(s, w[1], a0);
                s = sdot_lane::<2>(s, w[2], a0);
                s = sdot_lane::<3>(s, w[3], a0);
                s = sdot_lane::<0>(s, w[4], a1);
                s = sdot_lane::<1>(s, w[5], a1);
                s = sdot_lane::<2>(s, w[6], a1);
                s = sdot_lane::<3>(s, w[7], a1);
                let da = vdupq_n_f32(ad[(c0 + c) * nb + b]);
                acc_q[c] = F::update(acc_q[c], s, dw, da);
            }
        }
    }
    store(t, &acc, c0, q0, nr);
}

/// Stores the results of quads `q0..q0 + NQ` (`res[qi][c]`: activation row `c0 + c`) at
/// `t.out + (c0 + c)·ldo + row`, for the group's `nr` valid rows only.
#[inline(always)]
unsafe fn store<const NC: usize, const NQ: usize>(
    t: &GemmArgs,
    res: &[[float32x4_t; NC]; NQ],
    c0: usize,
    q0: usize,
    nr: usize,
) {
    for (qi, res_q) in res.iter().enumerate() {
        let r = (q0 + qi) * QUAD;
        for (c, v) in res_q.iter().enumerate() {
            let out = t.out.add((c0 + c) * t.ldo);
            if r + QUAD <= nr {
                vst1q_f32(out.add(r), *v);
            } else if r < nr {
                // the group's last rows: the padding lanes are not outputs
                let mut lanes = [0f32; QUAD];
                vst1q_f32(lanes.as_mut_ptr(), *v);
                for (i, &x) in lanes.iter().enumerate().take(nr - r) {
                    *out.add(r + i) = x;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// K-quants: Q4_Kx16 / Q5_Kx16 / Q6_Kx16 × Q8_K
// ---------------------------------------------------------------------------------------------

/// One activation super-block (Q8_K) prepared for the K-quant ×16 kernels: the values in the
/// records' mod-8 class order, so that one chunk's 4 bytes per row meet 4 contiguous bytes.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct KActivation {
    /// Per 32-element sub-block `j`: dword `8j + l` = elements `32j + l + {0, 8, 16, 24}`
    /// (Q6_K: with the elements of the odd 16-element sub-blocks zeroed).
    qs: [i8; 256],
    /// Q6_K only: the same with the even 16-element sub-blocks' elements zeroed.
    qs_odd: [i8; 256],
    /// Q4_K / Q5_K: `B_j = bsums[2j] + bsums[2j + 1]` for the 8 sub-blocks (the reference
    /// takes the mins' sums from `bsums`); Q6_K: the start `−32·Σa` of the 16 sub-blocks' dots
    /// (Q6_K values are stored as `q + 32`).
    sums: [i32; 16],
    d: f32,
}

/// Bytes of a Q8_K block: `d` (f32) at 0, `qs` at 4, `bsums` (16 × i16) at 260.
const Q8K_BYTES: usize = 292;

/// Every activation row's super-blocks, prepared (`six`: for Q6_K).
unsafe fn prepare_k(t: &GemmArgs, six: bool) -> Vec<KActivation> {
    let mut out = Vec::with_capacity(t.m * t.nb);
    for c in 0..t.m {
        for b in 0..t.nb {
            let blk = t.a.add(c * t.a_stride + b * Q8K_BYTES);
            let q = core::slice::from_raw_parts(blk.add(4) as *const i8, 256);
            let bsum = |i: usize| (blk.add(260 + 2 * i) as *const i16).read_unaligned() as i32;
            let mut p = KActivation {
                qs: [0; 256],
                qs_odd: [0; 256],
                sums: [0; 16],
                d: (blk as *const f32).read_unaligned(),
            };
            for j in 0..8 {
                for l in 0..8 {
                    for tt in 0..4 {
                        let (at, v) = (32 * j + 4 * l + tt, q[32 * j + l + 8 * tt]);
                        // bytes tt = 0, 1 are elements of 16-element sub-block 2j, 2 and 3
                        // of 2j + 1
                        if !six || tt < 2 {
                            p.qs[at] = v;
                        } else {
                            p.qs_odd[at] = v;
                        }
                    }
                }
            }
            for j in 0..16 {
                p.sums[j] = if six {
                    // from the values, not `bsums`: the reference's Q6_K dot never reads them
                    -32 * q[16 * j..16 * j + 16]
                        .iter()
                        .map(|&v| v as i32)
                        .sum::<i32>()
                } else if j < 8 {
                    bsum(2 * j) + bsum(2 * j + 1)
                } else {
                    0
                };
            }
            out.push(p);
        }
    }
    out
}

/// Four bytes at `p` widened to the i32 lanes of a vector (unsigned).
#[inline(always)]
unsafe fn u8x4(p: *const u8) -> int32x4_t {
    let b = vreinterpret_u8_u32(vdup_n_u32((p as *const u32).read_unaligned()));
    vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(b))))
}

/// The 8 bytes at `p`, pairs `(x_r, y_r)` of the quad's 4 rows, as lanes `(x, y)`; `signed`
/// sign-extends them (Q6_K's scales), else zero-extends (Q4_K's 6-bit scales).
#[inline(always)]
unsafe fn pairs(p: *const u8, signed: bool) -> (int32x4_t, int32x4_t) {
    let x = if signed {
        vreinterpretq_s32_s16(vmovl_s8(vld1_s8(p as *const i8)))
    } else {
        vreinterpretq_s32_u16(vmovl_u8(vld1_u8(p)))
    };
    if signed {
        (
            vshrq_n_s32::<16>(vshlq_n_s32::<16>(x)),
            vshrq_n_s32::<16>(x),
        )
    } else {
        let lo = vandq_s32(x, vdupq_n_s32(0xffff));
        (
            lo,
            vreinterpretq_s32_u32(vshrq_n_u32::<16>(vreinterpretq_u32_s32(x))),
        )
    }
}

/// Accumulates 8 chunks against 8 prepared dwords (2 vectors) of one sub-block.
#[inline(always)]
unsafe fn dot8(acc: int32x4_t, w: &[int8x16_t; 8], a: *const i8) -> int32x4_t {
    let (a0, a1) = (vld1q_s8(a), vld1q_s8(a.add(16)));
    let mut s = acc;
    s = sdot_lane::<0>(s, w[0], a0);
    s = sdot_lane::<1>(s, w[1], a0);
    s = sdot_lane::<2>(s, w[2], a0);
    s = sdot_lane::<3>(s, w[3], a0);
    s = sdot_lane::<0>(s, w[4], a1);
    s = sdot_lane::<1>(s, w[5], a1);
    s = sdot_lane::<2>(s, w[6], a1);
    sdot_lane::<3>(s, w[7], a1)
}

/// Q4_Kx16 (`FIVE`: Q5_Kx16) decode/GEMM: `NC` activation rows from `c0` against quads
/// `q0..q0 + NQ` of one group (`nr` valid rows).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn k4_direct<const FIVE: bool, const NC: usize, const NQ: usize>(
    t: &GemmArgs,
    group: *const u8,
    act: &[KActivation],
    c0: usize,
    q0: usize,
    nr: usize,
) {
    use crate::repack::{Q4K_RECORD, Q5K_HIGH_BITS, Q5K_RECORD};
    let record = if FIVE { Q5K_RECORD } else { Q4K_RECORD };
    // the reference's two f32 sums (formats::q4_k's KDotAccumulator), lane-wise
    let mut sum = [[vdupq_n_f32(0.0); NC]; NQ];
    let mut mins = [[vdupq_n_f32(0.0); NC]; NQ];
    let mask = vdupq_n_u8(0x0f);
    let five = vdupq_n_u8(0x10);
    let bits_lo = vreinterpretq_u8_u32(vdupq_n_u32(0x0804_0201));
    let bits_hi = vreinterpretq_u8_u32(vdupq_n_u32(0x8040_2010));
    // byte i: the first byte of its dword (a table index that broadcasts one byte per dword)
    let dword_starts = vreinterpretq_u8_u32(vld1q_u32(
        [0u32, 0x0404_0404, 0x0808_0808, 0x0c0c_0c0c].as_ptr(),
    ));
    for b in 0..t.nb {
        let rec = group.add(b * record);
        for (qi, (sum_q, mins_q)) in sum.iter_mut().zip(mins.iter_mut()).enumerate() {
            let q = q0 + qi;
            let mut isum = [vdupq_n_s32(0); NC];
            for c4 in 0..4 {
                let mut lo = [vdupq_n_s8(0); 8];
                let mut hi = [vdupq_n_s8(0); 8];
                for l in 0..8 {
                    let w = vld1q_u8(rec.add(320 + (8 * c4 + l) * 64 + 16 * q));
                    let (mut wl, mut wh) = (vandq_u8(w, mask), vshrq_n_u8::<4>(w));
                    if FIVE {
                        // byte l % 4 of each row's dword holds the chunk's 5th bits: bit tt
                        // for low-nibble value tt, bit 4 + tt for high-nibble value tt
                        let hb = vld1q_u8(rec.add(Q5K_HIGH_BITS + (2 * c4 + l / 4) * 64 + 16 * q));
                        let bc = vqtbl1q_u8(hb, vaddq_u8(dword_starts, vdupq_n_u8(l as u8 % 4)));
                        wl = vorrq_u8(wl, vandq_u8(vtstq_u8(bc, bits_lo), five));
                        wh = vorrq_u8(wh, vandq_u8(vtstq_u8(bc, bits_hi), five));
                    }
                    lo[l] = vreinterpretq_s8_u8(wl);
                    hi[l] = vreinterpretq_s8_u8(wh);
                }
                let (sc_e, sc_o) = pairs(rec.add(64 + 32 * c4 + 8 * q), false);
                for (c, is) in isum.iter_mut().enumerate() {
                    let a = act[(c0 + c) * t.nb + b].qs.as_ptr().add(64 * c4);
                    let de = dot8(vdupq_n_s32(0), &lo, a);
                    let dd = dot8(vdupq_n_s32(0), &hi, a.add(32));
                    *is = vmlaq_s32(vmlaq_s32(*is, de, sc_e), dd, sc_o);
                }
            }
            let dw = f16x4(rec.add(8 * q));
            let dminw = f16x4(rec.add(32 + 8 * q));
            for c in 0..NC {
                let a = &act[(c0 + c) * t.nb + b];
                let mut msum = vdupq_n_s32(0);
                for j in 0..8 {
                    msum = vmlaq_n_s32(msum, u8x4(rec.add(192 + 16 * j + 4 * q)), a.sums[j]);
                }
                let da = vdupq_n_f32(a.d);
                // sum += (d·d_a)·isum; mins −= (dmin·d_a)·Σ m·B
                sum_q[c] = vaddq_f32(
                    sum_q[c],
                    vmulq_f32(vmulq_f32(dw, da), vcvtq_f32_s32(isum[c])),
                );
                mins_q[c] = vsubq_f32(
                    mins_q[c],
                    vmulq_f32(vmulq_f32(dminw, da), vcvtq_f32_s32(msum)),
                );
            }
        }
    }
    let mut out = [[vdupq_n_f32(0.0); NC]; NQ];
    for qi in 0..NQ {
        for c in 0..NC {
            out[qi][c] = vaddq_f32(mins[qi][c], sum[qi][c]);
        }
    }
    store(t, &out, c0, q0, nr);
}

/// Q6_Kx16 decode/GEMM: `NC` activation rows from `c0` against quads `q0..q0 + NQ` of one
/// group (`nr` valid rows).
#[inline(always)]
unsafe fn q6k_direct<const NC: usize, const NQ: usize>(
    t: &GemmArgs,
    group: *const u8,
    act: &[KActivation],
    c0: usize,
    q0: usize,
    nr: usize,
) {
    use crate::repack::Q6K_RECORD;
    // the reference's f32 sum (its `mins` stays 0 for Q6_K), lane-wise
    let mut sum = [[vdupq_n_f32(0.0); NC]; NQ];
    let mask = vdupq_n_u8(0x0f);
    let three = vdupq_n_u8(3);
    for b in 0..t.nb {
        let rec = group.add(b * Q6K_RECORD);
        for (qi, sum_q) in sum.iter_mut().enumerate() {
            let q = q0 + qi;
            let mut isum = [vdupq_n_s32(0); NC];
            for s in 0..8 {
                // chunks x = 8s + l: elements 32s + l + 8tt of each row, tt = 0, 1 in
                // 16-element sub-block 2s and tt = 2, 3 in 2s + 1
                let mut w = [vdupq_n_s8(0); 8];
                for (l, wl) in w.iter_mut().enumerate() {
                    let x = 8 * s + l;
                    let lv = vld1q_u8(rec.add(288 + (x % 32) * 64 + 16 * q));
                    let low = if x < 32 {
                        vandq_u8(lv, mask)
                    } else {
                        vshrq_n_u8::<4>(lv)
                    };
                    let hv = vld1q_u8(rec.add(2336 + (x % 16) * 64 + 16 * q));
                    let high = match x / 16 {
                        0 => vandq_u8(hv, three),
                        1 => vandq_u8(vshrq_n_u8::<2>(hv), three),
                        2 => vandq_u8(vshrq_n_u8::<4>(hv), three),
                        _ => vshrq_n_u8::<6>(hv),
                    };
                    *wl = vreinterpretq_s8_u8(vorrq_u8(low, vshlq_n_u8::<4>(high)));
                }
                let (sc_e, sc_o) = pairs(rec.add(32 + 32 * s + 8 * q), true);
                for (c, is) in isum.iter_mut().enumerate() {
                    let a = &act[(c0 + c) * t.nb + b];
                    // each sub-block's dot starts at −32·bsum: the values are stored as q + 32
                    let de = dot8(vdupq_n_s32(a.sums[2 * s]), &w, a.qs.as_ptr().add(32 * s));
                    let dd = dot8(
                        vdupq_n_s32(a.sums[2 * s + 1]),
                        &w,
                        a.qs_odd.as_ptr().add(32 * s),
                    );
                    *is = vmlaq_s32(vmlaq_s32(*is, de, sc_e), dd, sc_o);
                }
            }
            let dw = f16x4(rec.add(8 * q));
            for (c, sq) in sum_q.iter_mut().enumerate() {
                let da = vdupq_n_f32(act[(c0 + c) * t.nb + b].d);
                *sq = vaddq_f32(*sq, vmulq_f32(vmulq_f32(dw, da), vcvtq_f32_s32(isum[c])));
            }
        }
    }
    // the reference's finish: mins (0.0) + sum
    let mut out = sum;
    for o in out.iter_mut().flatten() {
        *o = vaddq_f32(vdupq_n_f32(0.0), *o);
    }
    store(t, &out, c0, q0, nr);
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// A kernel for `NC` activation rows from `c0` against quads `q0..q0 + NQ` of one group
/// (`nr` valid rows), its activations prepared.
trait GroupKernel {
    unsafe fn run<const NC: usize, const NQ: usize>(
        &self,
        t: &GemmArgs,
        group: *const u8,
        c0: usize,
        q0: usize,
        nr: usize,
    );
}

/// The Q4_0 / Q8_0 kernels (named apart from `super::Legacy`, the plain tiles' trait).
struct LegacyKernel<'a, F> {
    start: &'a [i32],
    ad: &'a [f32],
    format: core::marker::PhantomData<F>,
}

impl<F: Repacked> GroupKernel for LegacyKernel<'_, F> {
    #[inline(always)]
    unsafe fn run<const NC: usize, const NQ: usize>(
        &self,
        t: &GemmArgs,
        group: *const u8,
        c0: usize,
        q0: usize,
        nr: usize,
    ) {
        direct::<F, NC, NQ>(t, group, self.start, self.ad, c0, q0, nr)
    }
}

/// The K-quant kernels: Q4_K (`KIND` 4), Q5_K (5), Q6_K (6).
struct KQuant<'a, const KIND: u8> {
    act: &'a [KActivation],
}

impl<const KIND: u8> GroupKernel for KQuant<'_, KIND> {
    #[inline(always)]
    unsafe fn run<const NC: usize, const NQ: usize>(
        &self,
        t: &GemmArgs,
        group: *const u8,
        c0: usize,
        q0: usize,
        nr: usize,
    ) {
        match KIND {
            4 => k4_direct::<false, NC, NQ>(t, group, self.act, c0, q0, nr),
            5 => k4_direct::<true, NC, NQ>(t, group, self.act, c0, q0, nr),
            _ => q6k_direct::<NC, NQ>(t, group, self.act, c0, q0, nr),
        }
    }
}

/// The whole product on a ×16 matrix: `t.w` is the first group, `t.w_stride` the group stride,
/// `t.n` the rows (the last group may be partial).
#[inline(always)]
unsafe fn each_group<K: GroupKernel>(t: &GemmArgs, kernel: &K) {
    for (gi, r0) in (0..t.n).step_by(GROUP_ROWS).enumerate() {
        let nr = (t.n - r0).min(GROUP_ROWS);
        let quads = nr.div_ceil(QUAD);
        let group = t.w.add(gi * t.w_stride);
        // the kernels write row r of the group at out + r: shift the output to the group's rows
        let g = GemmArgs {
            out: t.out.add(r0),
            ..*t
        };
        let mut c0 = 0;
        // 4 activation rows share each unpacked quad; decode (one row) takes all quads at once
        while c0 + 4 <= t.m {
            for q in 0..quads {
                kernel.run::<4, 1>(&g, group, c0, q, nr);
            }
            c0 += 4;
        }
        match t.m - c0 {
            0 => {}
            // a partial group still stores 16 rows (padding repeats its last row), so every
            // quad can be read; the kernels store only the `nr` valid rows
            1 => kernel.run::<1, QUADS>(&g, group, c0, 0, nr),
            2 => {
                for q in (0..quads).step_by(2) {
                    kernel.run::<2, 2>(&g, group, c0, q, nr);
                }
            }
            _ => {
                for q in 0..quads {
                    kernel.run::<3, 1>(&g, group, c0, q, nr);
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn gemm_legacy<F: Repacked>(t: &GemmArgs) -> bool {
    let (start, ad) = activation_block_sums::<F>(t);
    let kernel = LegacyKernel::<F> {
        start: &start,
        ad: &ad,
        format: core::marker::PhantomData,
    };
    each_group(t, &kernel);
    true
}

#[inline(always)]
unsafe fn gemm_k<const KIND: u8>(t: &GemmArgs) -> bool {
    let mut owned = Vec::new();
    // prepared: built by `prepare_q4_k` / `prepare_q6_k` for these rows and this weight type
    let act: &[KActivation] = prepared_or(t, &mut owned, |t| prepare_k(t, KIND == 6));
    each_group(t, &KQuant::<KIND> { act });
    true
}

/// The Q4_K / Q5_K activation layout, once per matmul (`CpuKernels::prepare_activations`).
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn prepare_q4_k(t: &GemmArgs) -> Option<Box<[MaybeUninit<Line64>]>> {
    Some(to_lines(&prepare_k(t, false)))
}

/// The Q6_K activation layout, once per matmul.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn prepare_q6_k(t: &GemmArgs) -> Option<Box<[MaybeUninit<Line64>]>> {
    Some(to_lines(&prepare_k(t, true)))
}

#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn gemm_q4_0x16(t: &GemmArgs) -> bool {
    gemm_legacy::<Q4_0x16>(t)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn gemm_q8_0x16(t: &GemmArgs) -> bool {
    gemm_legacy::<Q8_0x16>(t)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn gemm_q4_kx16(t: &GemmArgs) -> bool {
    gemm_k::<4>(t)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn gemm_q5_kx16(t: &GemmArgs) -> bool {
    gemm_k::<5>(t)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn gemm_q6_kx16(t: &GemmArgs) -> bool {
    gemm_k::<6>(t)
}
