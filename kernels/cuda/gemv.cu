// Quantized matrix × vector products for decode (and batches of at most GEMV_MAX_COLS rows):
// y[c][r] = Σ_k W[r][k] · x[c][k] (+ bias[r]).
//
// Quantized weights pair with activations quantized to Q8_1 by quantize_q8_1 (elementwise.cu;
// the split layout of common.cuh): the integer part of each 32-element dot runs on dp4a (4 int8
// products per instruction) and the scales are applied once per 32 elements in f32, like the
// CPU kernels (which use Q8_0 / Q8_K partners instead; Q8_1's values equal Q8_0's). The offsets
// (−8, −16, −32, mins) are folded in with the exact integer sum of the activation bytes, so no
// rounding beyond the f32 scale arithmetic enters.
//
// Launch: block (32, GEMV_WARPS), grid (ceil(n / (GEMV_WARPS · ROWS))); one warp per ROWS
// weight rows (1, or 2 for the _r2 variants; the host picks per type), lane l takes 32-element groups l, l + 32, ... and the warp reduces with
// shuffles. Float weights (F32 / F16 / BF16) take f32 activations instead (gemv_f32 / gemv_f16 /
// gemv_bf16: one warp per row, grid ceil(n / GEMV_WARPS)).
//
// Loads decide the speed: a warp's loads should be few and wide. The GGUF block layouts of
// Q4_0 / Q8_0 (18 / 34 bytes) allow only 2-byte loads, so their weights are repacked into the
// split layouts at upload (common.cuh; gemv_q4_0s / gemv_q8_0s) where a row allows it; the
// K-quant super-blocks (144 / 176 bytes) are read with 16-byte loads as they are.
#include "common.cuh"
#include "dequant.cuh"

#define GEMV_WARPS 4
#define GEMV_MAX_COLS 8

// Weights of one 32-element group unpacked to registers (`load(row, g, groups)`: group g of a
// row of `groups` groups), and its dot with one group of Q8_1 activations (common.cuh).

struct GroupQ4_0 {
    int q[4];
    float d;
    __device__ __forceinline__ void load(const u8* row, int g, int) {
        const u8* b = row + g * Q4_0_BYTES;
        d = load_f16(b);
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = load_i32_a2(b + 2 + 4 * i);
    }
    __device__ __forceinline__ float dot(const ActQ8_1& a) const {
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            sumi = __dp4a(q[i] & 0x0f0f0f0f, a.q[i], sumi);
            sumi = __dp4a((q[i] >> 4) & 0x0f0f0f0f, a.q[i + 4], sumi);
        }
        const int suma = a.sum();
        return d * a.d * (float)(sumi - 8 * suma);
    }
};

struct GroupQ4_1 {
    int q[4];
    float d, m;
    __device__ __forceinline__ void load(const u8* row, int g, int) {
        const u8* b = row + g * Q4_1_BYTES;
        d = load_f16(b);
        m = load_f16(b + 2);
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = load_i32_a4(b + 4 + 4 * i);
    }
    __device__ __forceinline__ float dot(const ActQ8_1& a) const {
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            sumi = __dp4a(q[i] & 0x0f0f0f0f, a.q[i], sumi);
            sumi = __dp4a((q[i] >> 4) & 0x0f0f0f0f, a.q[i + 4], sumi);
        }
        const int suma = a.sum();
        return a.d * (d * (float)sumi + m * (float)suma);
    }
};

// Bits 0..3 of `b` moved to bit 4 of bytes 0..3.
__device__ __forceinline__ int spread_bit4(u32 b) {
    return (int)(((b & 1) << 4) | ((b & 2) << 11) | ((b & 4) << 18) | ((b & 8) << 25));
}

struct GroupQ5_0 {
    int q[8];  // 5-bit values, elements 4i..4i+3
    float d;
    __device__ __forceinline__ void load(const u8* row, int g, int) {
        const u8* b = row + g * Q5_0_BYTES;
        d = load_f16(b);
        const u32 qh = (u32)load_i32_a2(b + 2);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int w = load_i32_a2(b + 6 + 4 * i);
            q[i] = (w & 0x0f0f0f0f) | spread_bit4(qh >> (4 * i));
            q[i + 4] = ((w >> 4) & 0x0f0f0f0f) | spread_bit4(qh >> (16 + 4 * i));
        }
    }
    __device__ __forceinline__ float dot(const ActQ8_1& a) const {
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) sumi = __dp4a(q[i], a.q[i], sumi);
        const int suma = a.sum();
        return d * a.d * (float)(sumi - 16 * suma);
    }
};

struct GroupQ5_1 {
    int q[8];
    float d, m;
    __device__ __forceinline__ void load(const u8* row, int g, int) {
        const u8* b = row + g * Q5_1_BYTES;
        d = load_f16(b);
        m = load_f16(b + 2);
        const u32 qh = (u32)load_i32_a4(b + 4);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int w = load_i32_a4(b + 8 + 4 * i);
            q[i] = (w & 0x0f0f0f0f) | spread_bit4(qh >> (4 * i));
            q[i + 4] = ((w >> 4) & 0x0f0f0f0f) | spread_bit4(qh >> (16 + 4 * i));
        }
    }
    __device__ __forceinline__ float dot(const ActQ8_1& a) const {
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) sumi = __dp4a(q[i], a.q[i], sumi);
        const int suma = a.sum();
        return a.d * (d * (float)sumi + m * (float)suma);
    }
};

struct GroupQ8_0 {
    int q[8];
    float d;
    __device__ __forceinline__ void load(const u8* row, int g, int) {
        const u8* b = row + g * Q8_0_BYTES;
        d = load_f16(b);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = load_i32_a2(b + 2 + 4 * i);
    }
    __device__ __forceinline__ float dot(const ActQ8_1& a) const {
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) sumi = __dp4a(q[i], a.q[i], sumi);
        return d * a.d * (float)sumi;
    }
};

// The split layouts (common.cuh): the same dots, quants read as aligned 16-byte vectors.
struct GroupQ4_0S : GroupQ4_0 {
    __device__ __forceinline__ void load(const u8* row, int g, int groups) {
        load_16(row + 16 * (u64)g, q);
        d = load_f16(row + 16 * (u64)groups + 2 * (u64)g);
    }
};

struct GroupQ8_0S : GroupQ8_0 {
    __device__ __forceinline__ void load(const u8* row, int g, int groups) {
        load_16(row + 32 * (u64)g, q);
        load_16(row + 32 * (u64)g + 16, q + 4);
        d = load_f16(row + 32 * (u64)groups + 2 * (u64)g);
    }
};

// Q4_K group g = sub-block g % 8 of super-block g / 8: x = d1·q − m1.
struct GroupQ4_K {
    int q[8];
    float d1, m1;
    __device__ __forceinline__ void load(const u8* row, int g, int) {
        const u8* b = row + (g >> 3) * Q4_K_BYTES;
        const int j = g & 7;
        int sc, m;
        k4_scale_min(b + 4, j, &sc, &m);
        d1 = load_f16(b) * (float)sc;
        m1 = load_f16(b + 2) * (float)m;
        const u8* qs = b + 16 + 32 * (j >> 1);  // 16-byte aligned: super-blocks are 144 bytes
        const int shift = 4 * (j & 1);
        load_16(qs, q);
        load_16(qs + 16, q + 4);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = (q[i] >> shift) & 0x0f0f0f0f;
    }
    __device__ __forceinline__ float dot(const ActQ8_1& a) const {
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) sumi = __dp4a(q[i], a.q[i], sumi);
        const int suma = a.sum();
        return a.d * (d1 * (float)sumi - m1 * (float)suma);
    }
};

struct GroupQ5_K {
    int q[8];
    float d1, m1;
    __device__ __forceinline__ void load(const u8* row, int g, int) {
        const u8* b = row + (g >> 3) * Q5_K_BYTES;
        const int j = g & 7;
        int sc, m;
        k4_scale_min(b + 4, j, &sc, &m);
        d1 = load_f16(b) * (float)sc;
        m1 = load_f16(b + 2) * (float)m;
        // 16-byte aligned: super-blocks are 176 bytes
        int h[8];
        load_16(b + 16, h);
        load_16(b + 32, h + 4);
        const u8* qs = b + 48 + 32 * (j >> 1);
        const int shift = 4 * (j & 1);
        load_16(qs, q);
        load_16(qs + 16, q + 4);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = ((q[i] >> shift) & 0x0f0f0f0f) | (((h[i] >> j) & 0x01010101) << 4);
    }
    __device__ __forceinline__ float dot(const ActQ8_1& a) const {
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) sumi = __dp4a(q[i], a.q[i], sumi);
        const int suma = a.sum();
        return a.d * (d1 * (float)sumi - m1 * (float)suma);
    }
};

// Q6_K group g: elements 32·(g%8) .. +31 of super-block g / 8, i.e. half h = (g%8)/4 and
// quarter = g%4 of dequant.cuh's description; two 16-element scales.
struct GroupQ6_K {
    int q[8];  // unsigned 6-bit values (q − 32 is the signed value)
    float d0, d1;
    __device__ __forceinline__ void load(const u8* row, int g, int) {
        const u8* b = row + (g >> 3) * Q6_K_BYTES;
        const int a = g & 7;
        const int h = a >> 2;
        const int quarter = a & 3;
        const float d = load_f16(b + 208);
        const i8* sc = (const i8*)(b + 192) + 8 * h + 2 * quarter;
        d0 = d * (float)sc[0];
        d1 = d * (float)sc[1];
        const u8* ql = b + 64 * h + 32 * (quarter & 1);
        const u8* qh = b + 128 + 32 * h;
        const int lshift = 4 * (quarter >> 1);
        const int hshift = 2 * quarter;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int lo = (load_i32_a2(ql + 4 * i) >> lshift) & 0x0f0f0f0f;
            const int hi = ((load_i32_a2(qh + 4 * i) >> hshift) & 0x03030303) << 4;
            q[i] = lo | hi;
        }
    }
    __device__ __forceinline__ float dot(const ActQ8_1& a) const {
        int s0 = 0, s1 = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            s0 = __dp4a(q[i], a.q[i], s0);
            s1 = __dp4a(q[i + 4], a.q[i + 4], s1);
        }
        return a.d * (d0 * (float)(s0 - 32 * a.sum_lo) + d1 * (float)(s1 - 32 * a.sum_hi));
    }
};

// y[c·n + r] for r < n, c < m <= GEMV_MAX_COLS; `w` rows of `w_row_bytes`; `xq` holds m rows of
// k/32 groups of split Q8_1 activations (common.cuh). Each warp takes ROWS consecutive weight
// rows, so every activation load serves ROWS rows (at the cost of fewer warps in flight). With
// add0 / add1 non-null (both or neither; laid out like y) the output is add0 + (add1 + (Σ + bias)),
// the residual update add3_f32 would make afterwards, in the same order; y may then be add0.
template <class G, int ROWS, int UNROLL>
__device__ __forceinline__ void gemv_q8_1_impl(const u8* __restrict__ w, u64 w_row_bytes,
                                               const u8* __restrict__ xq, const float* __restrict__ bias,
                                               const float* add0, const float* add1, float* y, int n, int k,
                                               int m) {
    const int r0 = (blockIdx.x * GEMV_WARPS + threadIdx.y) * ROWS;
    if (r0 >= n) return;  // whole warps leave together; no block-wide barrier below
    const int lane = threadIdx.x;
    const int groups = k / QK;
    const u64 x_stride = q8_1_row_stride(groups);
    const u8* rows[ROWS];
#pragma unroll
    for (int i = 0; i < ROWS; ++i) rows[i] = w + (u64)imin(r0 + i, n - 1) * w_row_bytes;  // a past-the-end row repeats the last
    float acc[ROWS][GEMV_MAX_COLS];
#pragma unroll
    for (int i = 0; i < ROWS; ++i)
#pragma unroll
        for (int c = 0; c < GEMV_MAX_COLS; ++c) acc[i][c] = 0.0f;
    // UNROLL groups per lane and step, all weights loaded before any is used: with Phi-2's
    // widths a lane has 2.5 (k = 2560) or 10 (k = 10240) groups, so most rows take one or three
    // round trips to memory (small matrices are bound by that latency, not by bandwidth)
    for (int g0 = lane; g0 < groups; g0 += UNROLL * WARP_SIZE) {
        G gw[UNROLL][ROWS];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int g = g0 + u * WARP_SIZE;
            if (g < groups) {
#pragma unroll
                for (int i = 0; i < ROWS; ++i) gw[u][i].load(rows[i], g, groups);
            }
        }
#pragma unroll
        for (int c = 0; c < GEMV_MAX_COLS; ++c) {
            if (c < m) {
                const u8* xc = xq + (u64)c * x_stride;
#pragma unroll
                for (int u = 0; u < UNROLL; ++u) {
                    const int g = g0 + u * WARP_SIZE;
                    if (g < groups) {
                        ActQ8_1 a;
                        a.load(xc, g, groups);
#pragma unroll
                        for (int i = 0; i < ROWS; ++i) acc[i][c] += gw[u][i].dot(a);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
        const int r = r0 + i;
        const float b = bias && r < n ? bias[r] : 0.0f;
#pragma unroll
        for (int c = 0; c < GEMV_MAX_COLS; ++c) {
            if (c < m) {
                const float s = warp_sum(acc[i][c]);
                if (lane == 0 && r < n) {
                    const u64 o = (u64)c * n + r;
                    y[o] = add0 ? add0[o] + (add1[o] + (s + b)) : s + b;
                }
            }
        }
    }
}

#define GEMV_Q8_1_VARIANT(NAME, GROUP, GROUP_ELEMS, BLOCK_BYTES, ROWS, UNROLL)                       \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)                                    \
        NAME(const u8* w, const u8* xq, const float* bias, const float* add0, const float* add1,     \
             float* y, int n, int k, int m) {                                                       \
        gemv_q8_1_impl<GROUP, ROWS, UNROLL>(w, (u64)(k / GROUP_ELEMS) * BLOCK_BYTES, xq, bias, add0, \
                                            add1, y, n, k, m);                                      \
    }

// Four variants per type: 1 or 2 weight rows per warp (_r2), 4 or 2 groups per lane and step
// (_u2); the host picks one per type (ops.rs, gemv_variant), the benchmark times them all.
#define GEMV_Q8_1_KERNEL(NAME, GROUP, GROUP_ELEMS, BLOCK_BYTES)                      \
    GEMV_Q8_1_VARIANT(NAME, GROUP, GROUP_ELEMS, BLOCK_BYTES, 1, 4)                   \
    GEMV_Q8_1_VARIANT(NAME##_r2, GROUP, GROUP_ELEMS, BLOCK_BYTES, 2, 4)              \
    GEMV_Q8_1_VARIANT(NAME##_u2, GROUP, GROUP_ELEMS, BLOCK_BYTES, 1, 2)              \
    GEMV_Q8_1_VARIANT(NAME##_r2_u2, GROUP, GROUP_ELEMS, BLOCK_BYTES, 2, 2)

GEMV_Q8_1_KERNEL(gemv_q4_0_q8_1, GroupQ4_0, QK, Q4_0_BYTES)
GEMV_Q8_1_KERNEL(gemv_q4_1_q8_1, GroupQ4_1, QK, Q4_1_BYTES)
GEMV_Q8_1_KERNEL(gemv_q5_0_q8_1, GroupQ5_0, QK, Q5_0_BYTES)
GEMV_Q8_1_KERNEL(gemv_q5_1_q8_1, GroupQ5_1, QK, Q5_1_BYTES)
GEMV_Q8_1_KERNEL(gemv_q8_0_q8_1, GroupQ8_0, QK, Q8_0_BYTES)
GEMV_Q8_1_KERNEL(gemv_q4_0s_q8_1, GroupQ4_0S, QK, Q4_0_BYTES)
GEMV_Q8_1_KERNEL(gemv_q8_0s_q8_1, GroupQ8_0S, QK, Q8_0_BYTES)
GEMV_Q8_1_KERNEL(gemv_q4_k_q8_1, GroupQ4_K, QK_K, Q4_K_BYTES)
GEMV_Q8_1_KERNEL(gemv_q5_k_q8_1, GroupQ5_K, QK_K, Q5_K_BYTES)
GEMV_Q8_1_KERNEL(gemv_q6_k_q8_1, GroupQ6_K, QK_K, Q6_K_BYTES)

// Float weights with f32 activations: lane l takes elements l, l + 32, ...
template <int TY>
__device__ __forceinline__ float load_float_weight(const u8* row, int e) {
    if (TY == TY_F32) return ((const float*)row)[e];
    if (TY == TY_F16) return f16_to_f32(((const u16*)row)[e]);
    return bf16_to_f32(((const u16*)row)[e]);
}

template <int TY>
__device__ __forceinline__ void gemv_float_impl(const u8* __restrict__ w, const float* __restrict__ x,
                                                const float* __restrict__ bias, float* __restrict__ y,
                                                int n, int k, int m) {
    const int r = blockIdx.x * GEMV_WARPS + threadIdx.y;
    if (r >= n) return;
    const int lane = threadIdx.x;
    const u8* row = w + (u64)r * (u64)k * (TY == TY_F32 ? 4 : 2);
    float acc[GEMV_MAX_COLS];
#pragma unroll
    for (int c = 0; c < GEMV_MAX_COLS; ++c) acc[c] = 0.0f;
    for (int e = lane; e < k; e += WARP_SIZE) {
        const float wv = load_float_weight<TY>(row, e);
#pragma unroll
        for (int c = 0; c < GEMV_MAX_COLS; ++c)
            if (c < m) acc[c] += wv * x[(u64)c * k + e];
    }
    const float b = bias ? bias[r] : 0.0f;
#pragma unroll
    for (int c = 0; c < GEMV_MAX_COLS; ++c) {
        if (c < m) {
            const float s = warp_sum(acc[c]);
            if (lane == 0) y[(u64)c * n + r] = s + b;
        }
    }
}

extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)
    gemv_f32(const u8* w, const float* x, const float* bias, float* y, int n, int k, int m) {
    gemv_float_impl<TY_F32>(w, x, bias, y, n, k, m);
}
extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)
    gemv_f16(const u8* w, const float* x, const float* bias, float* y, int n, int k, int m) {
    gemv_float_impl<TY_F16>(w, x, bias, y, n, k, m);
}
extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)
    gemv_bf16(const u8* w, const float* x, const float* bias, float* y, int n, int k, int m) {
    gemv_float_impl<TY_BF16>(w, x, bias, y, n, k, m);
}
