// Quantized matrix × vector products for decode (and batches of at most GEMV_MAX_COLS rows):
// y[c][r] = Σ_k W[r][k] · x[c][k] (+ bias[r]).
//
// Quantized weights pair with activations quantized to Q8_1 by quantize.cu (one Q8_1 block of
// 36 bytes per 32 activations): the integer part of each 32-element dot runs on dp4a (4 int8
// products per instruction) and the scales are applied once per 32 elements in f32, like the
// CPU kernels (which use Q8_0 / Q8_K partners instead; Q8_1's values equal Q8_0's). The offsets
// (−8, −16, −32, mins) are folded in with the exact integer sum of the activation bytes, so no
// rounding beyond the f32 scale arithmetic enters.
//
// Launch: block (32, GEMV_WARPS), grid (ceil(n / GEMV_WARPS)); one warp per weight row, lane l
// takes 32-element groups l, l + 32, ... and the warp reduces with shuffles. Float weights
// (F32 / F16 / BF16) take f32 activations instead (gemv_f32 / gemv_f16 / gemv_bf16).
#include "common.cuh"
#include "dequant.cuh"

#define GEMV_WARPS 4
#define GEMV_MAX_COLS 8

// Weights of one 32-element group unpacked to registers, and its dot with a Q8_1 block.
// `qa` points at the block's 32 int8 values (4-byte aligned), `da` is its scale.

struct GroupQ4_0 {
    int q[4];
    float d;
    __device__ __forceinline__ void load(const u8* row, int g) {
        const u8* b = row + g * Q4_0_BYTES;
        d = load_f16(b);
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = load_i32_a2(b + 2 + 4 * i);
    }
    __device__ __forceinline__ float dot(const int* qa, float da) const {
        int sumi = 0, suma = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            sumi = __dp4a(q[i] & 0x0f0f0f0f, qa[i], sumi);
            sumi = __dp4a((q[i] >> 4) & 0x0f0f0f0f, qa[i + 4], sumi);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) suma += byte_sum(qa[i]);
        return d * da * (float)(sumi - 8 * suma);
    }
};

struct GroupQ4_1 {
    int q[4];
    float d, m;
    __device__ __forceinline__ void load(const u8* row, int g) {
        const u8* b = row + g * Q4_1_BYTES;
        d = load_f16(b);
        m = load_f16(b + 2);
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = load_i32_a4(b + 4 + 4 * i);
    }
    __device__ __forceinline__ float dot(const int* qa, float da) const {
        int sumi = 0, suma = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            sumi = __dp4a(q[i] & 0x0f0f0f0f, qa[i], sumi);
            sumi = __dp4a((q[i] >> 4) & 0x0f0f0f0f, qa[i + 4], sumi);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) suma += byte_sum(qa[i]);
        return da * (d * (float)sumi + m * (float)suma);
    }
};

// Bits 0..3 of `b` moved to bit 4 of bytes 0..3.
__device__ __forceinline__ int spread_bit4(u32 b) {
    return (int)(((b & 1) << 4) | ((b & 2) << 11) | ((b & 4) << 18) | ((b & 8) << 25));
}

struct GroupQ5_0 {
    int q[8];  // 5-bit values, elements 4i..4i+3
    float d;
    __device__ __forceinline__ void load(const u8* row, int g) {
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
    __device__ __forceinline__ float dot(const int* qa, float da) const {
        int sumi = 0, suma = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            sumi = __dp4a(q[i], qa[i], sumi);
            suma += byte_sum(qa[i]);
        }
        return d * da * (float)(sumi - 16 * suma);
    }
};

struct GroupQ5_1 {
    int q[8];
    float d, m;
    __device__ __forceinline__ void load(const u8* row, int g) {
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
    __device__ __forceinline__ float dot(const int* qa, float da) const {
        int sumi = 0, suma = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            sumi = __dp4a(q[i], qa[i], sumi);
            suma += byte_sum(qa[i]);
        }
        return da * (d * (float)sumi + m * (float)suma);
    }
};

struct GroupQ8_0 {
    int q[8];
    float d;
    __device__ __forceinline__ void load(const u8* row, int g) {
        const u8* b = row + g * Q8_0_BYTES;
        d = load_f16(b);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = load_i32_a2(b + 2 + 4 * i);
    }
    __device__ __forceinline__ float dot(const int* qa, float da) const {
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) sumi = __dp4a(q[i], qa[i], sumi);
        return d * da * (float)sumi;
    }
};

// Q4_K group g = sub-block g % 8 of super-block g / 8: x = d1·q − m1.
struct GroupQ4_K {
    int q[8];
    float d1, m1;
    __device__ __forceinline__ void load(const u8* row, int g) {
        const u8* b = row + (g >> 3) * Q4_K_BYTES;
        const int j = g & 7;
        int sc, m;
        k4_scale_min(b + 4, j, &sc, &m);
        d1 = load_f16(b) * (float)sc;
        m1 = load_f16(b + 2) * (float)m;
        const u8* qs = b + 16 + 32 * (j >> 1);
        const int shift = 4 * (j & 1);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = (load_i32_a4(qs + 4 * i) >> shift) & 0x0f0f0f0f;
    }
    __device__ __forceinline__ float dot(const int* qa, float da) const {
        int sumi = 0, suma = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            sumi = __dp4a(q[i], qa[i], sumi);
            suma += byte_sum(qa[i]);
        }
        return da * (d1 * (float)sumi - m1 * (float)suma);
    }
};

struct GroupQ5_K {
    int q[8];
    float d1, m1;
    __device__ __forceinline__ void load(const u8* row, int g) {
        const u8* b = row + (g >> 3) * Q5_K_BYTES;
        const int j = g & 7;
        int sc, m;
        k4_scale_min(b + 4, j, &sc, &m);
        d1 = load_f16(b) * (float)sc;
        m1 = load_f16(b + 2) * (float)m;
        const u8* qh = b + 16;
        const u8* qs = b + 48 + 32 * (j >> 1);
        const int shift = 4 * (j & 1);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int lo = (load_i32_a4(qs + 4 * i) >> shift) & 0x0f0f0f0f;
            const int hi = ((load_i32_a4(qh + 4 * i) >> j) & 0x01010101) << 4;
            q[i] = lo | hi;
        }
    }
    __device__ __forceinline__ float dot(const int* qa, float da) const {
        int sumi = 0, suma = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            sumi = __dp4a(q[i], qa[i], sumi);
            suma += byte_sum(qa[i]);
        }
        return da * (d1 * (float)sumi - m1 * (float)suma);
    }
};

// Q6_K group g: elements 32·(g%8) .. +31 of super-block g / 8, i.e. half h = (g%8)/4 and
// quarter = g%4 of dequant.cuh's description; two 16-element scales.
struct GroupQ6_K {
    int q[8];  // unsigned 6-bit values (q − 32 is the signed value)
    float d0, d1;
    __device__ __forceinline__ void load(const u8* row, int g) {
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
    __device__ __forceinline__ float dot(const int* qa, float da) const {
        int s0 = 0, s1 = 0, a0 = 0, a1 = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            s0 = __dp4a(q[i], qa[i], s0);
            a0 += byte_sum(qa[i]);
            s1 = __dp4a(q[i + 4], qa[i + 4], s1);
            a1 += byte_sum(qa[i + 4]);
        }
        return da * (d0 * (float)(s0 - 32 * a0) + d1 * (float)(s1 - 32 * a1));
    }
};

// y[c·n + r] for r < n, c < m <= GEMV_MAX_COLS; `w` rows of `w_row_bytes`; `xq` holds m rows of
// k/32 Q8_1 blocks.
template <class G>
__device__ __forceinline__ void gemv_q8_1_impl(const u8* __restrict__ w, u64 w_row_bytes,
                                               const u8* __restrict__ xq, const float* __restrict__ bias,
                                               float* __restrict__ y, int n, int k, int m) {
    const int r = blockIdx.x * GEMV_WARPS + threadIdx.y;
    if (r >= n) return;  // whole warps leave together; no block-wide barrier below
    const int lane = threadIdx.x;
    const int groups = k / QK;
    const u64 x_row_bytes = (u64)groups * Q8_1_BYTES;
    const u8* row = w + (u64)r * w_row_bytes;
    float acc[GEMV_MAX_COLS];
#pragma unroll
    for (int c = 0; c < GEMV_MAX_COLS; ++c) acc[c] = 0.0f;
    // two groups per lane and step, both loaded before either is used: twice the loads in
    // flight per warp (decode is bound by memory latency × parallelism)
    for (int g = lane; g < groups; g += 2 * WARP_SIZE) {
        const int g2 = g + WARP_SIZE;
        const bool two = g2 < groups;
        G ga, gb;
        ga.load(row, g);
        if (two) gb.load(row, g2);
#pragma unroll
        for (int c = 0; c < GEMV_MAX_COLS; ++c) {
            if (c < m) {
                const u8* blk = xq + (u64)c * x_row_bytes + (u64)g * Q8_1_BYTES;
                CHECK_ALIGN(blk + 4, 4);
                acc[c] += ga.dot((const int*)(blk + 4), load_f16(blk));
                if (two) {
                    const u8* blk2 = blk + WARP_SIZE * Q8_1_BYTES;
                    acc[c] += gb.dot((const int*)(blk2 + 4), load_f16(blk2));
                }
            }
        }
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

#define GEMV_Q8_1_KERNEL(NAME, GROUP, GROUP_ELEMS, BLOCK_BYTES)                                     \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)                                    \
        NAME(const u8* w, const u8* xq, const float* bias, float* y, int n, int k, int m) {         \
        gemv_q8_1_impl<GROUP>(w, (u64)(k / GROUP_ELEMS) * BLOCK_BYTES, xq, bias, y, n, k, m);       \
    }

GEMV_Q8_1_KERNEL(gemv_q4_0_q8_1, GroupQ4_0, QK, Q4_0_BYTES)
GEMV_Q8_1_KERNEL(gemv_q4_1_q8_1, GroupQ4_1, QK, Q4_1_BYTES)
GEMV_Q8_1_KERNEL(gemv_q5_0_q8_1, GroupQ5_0, QK, Q5_0_BYTES)
GEMV_Q8_1_KERNEL(gemv_q5_1_q8_1, GroupQ5_1, QK, Q5_1_BYTES)
GEMV_Q8_1_KERNEL(gemv_q8_0_q8_1, GroupQ8_0, QK, Q8_0_BYTES)
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
