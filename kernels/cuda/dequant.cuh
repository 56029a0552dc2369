// Dequantization of 16 consecutive elements of a weight row, for every weight format: the
// building block of the tiled GEMM (weights → f16 tiles) and of the embedding gather.
//
// `row` is the start of a row of `k` elements as stored in GGUF; `chunk` selects elements
// 16·chunk .. 16·chunk+15. For the block formats 16·chunk + 16 <= k always holds (k is a whole
// number of blocks); for F32 / F16 / BF16 elements at or beyond k come out as 0.
// Each formula is the one of the CPU dequantizer in kernels/src/formats/ (the truth).
#pragma once
#include "common.cuh"

template <int TY>
__device__ __forceinline__ void dequant16(const u8* row, int chunk, int k, float out[16]);

// Q4_0: x = (q − 8)·d; qs[j] holds element j (low nibble) and element j + 16 (high nibble).
template <>
__device__ __forceinline__ void dequant16<TY_Q4_0>(const u8* row, int chunk, int k, float out[16]) {
    const u8* b = row + (chunk >> 1) * Q4_0_BYTES;
    const int shift = 4 * (chunk & 1);
    const float d = load_f16(b);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        const int q = load_i32_a2(b + 2 + 4 * w);
#pragma unroll
        for (int i = 0; i < 4; ++i) out[4 * w + i] = (float)(((q >> (8 * i + shift)) & 15) - 8) * d;
    }
}

// Q4_1: x = q·d + m.
template <>
__device__ __forceinline__ void dequant16<TY_Q4_1>(const u8* row, int chunk, int k, float out[16]) {
    const u8* b = row + (chunk >> 1) * Q4_1_BYTES;
    const int shift = 4 * (chunk & 1);
    const float d = load_f16(b);
    const float m = load_f16(b + 2);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        const int q = load_i32_a4(b + 4 + 4 * w);
#pragma unroll
        for (int i = 0; i < 4; ++i) out[4 * w + i] = (float)((q >> (8 * i + shift)) & 15) * d + m;
    }
}

// Q5_0: x = (q − 16)·d; bit 4 of element e is bit e of qh.
template <>
__device__ __forceinline__ void dequant16<TY_Q5_0>(const u8* row, int chunk, int k, float out[16]) {
    const u8* b = row + (chunk >> 1) * Q5_0_BYTES;
    const int half = chunk & 1;
    const float d = load_f16(b);
    const u32 qh = (u32)load_i32_a2(b + 2) >> (16 * half);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        const int q = load_i32_a2(b + 6 + 4 * w);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int j = 4 * w + i;
            const int v = ((q >> (8 * i + 4 * half)) & 15) | (int)(((qh >> j) & 1) << 4);
            out[j] = (float)(v - 16) * d;
        }
    }
}

// Q5_1: x = q·d + m.
template <>
__device__ __forceinline__ void dequant16<TY_Q5_1>(const u8* row, int chunk, int k, float out[16]) {
    const u8* b = row + (chunk >> 1) * Q5_1_BYTES;
    const int half = chunk & 1;
    const float d = load_f16(b);
    const float m = load_f16(b + 2);
    const u32 qh = (u32)load_i32_a4(b + 4) >> (16 * half);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        const int q = load_i32_a4(b + 8 + 4 * w);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int j = 4 * w + i;
            const int v = ((q >> (8 * i + 4 * half)) & 15) | (int)(((qh >> j) & 1) << 4);
            out[j] = (float)v * d + m;
        }
    }
}

// Q8_0: x = q·d.
template <>
__device__ __forceinline__ void dequant16<TY_Q8_0>(const u8* row, int chunk, int k, float out[16]) {
    const u8* b = row + (chunk >> 1) * Q8_0_BYTES;
    const float d = load_f16(b);
    const i8* qs = (const i8*)(b + 2 + 16 * (chunk & 1));
#pragma unroll
    for (int j = 0; j < 16; ++j) out[j] = (float)qs[j] * d;
}

// The split layouts of Q4_0 / Q8_0 (common.cuh): the same values, quants and scales apart.
template <>
__device__ __forceinline__ void dequant16<TY_Q4_0S>(const u8* row, int chunk, int k, float out[16]) {
    const int blk = chunk >> 1;
    const int shift = 4 * (chunk & 1);
    const float d = load_f16(row + 16 * (u64)(k / QK) + 2 * (u64)blk);
    int q[4];
    load_16(row + 16 * (u64)blk, q);
#pragma unroll
    for (int w = 0; w < 4; ++w)
#pragma unroll
        for (int i = 0; i < 4; ++i) out[4 * w + i] = (float)(((q[w] >> (8 * i + shift)) & 15) - 8) * d;
}

template <>
__device__ __forceinline__ void dequant16<TY_Q8_0S>(const u8* row, int chunk, int k, float out[16]) {
    const int blk = chunk >> 1;
    const float d = load_f16(row + 32 * (u64)(k / QK) + 2 * (u64)blk);
    int q[4];
    load_16(row + 32 * (u64)blk + 16 * (chunk & 1), q);
#pragma unroll
    for (int w = 0; w < 4; ++w)
#pragma unroll
        for (int i = 0; i < 4; ++i) out[4 * w + i] = (float)(i8)(q[w] >> (8 * i)) * d;
}

// Q4_K / Q5_K sub-block j scale and min (ggml's get_scale_min_k4).
__device__ __forceinline__ void k4_scale_min(const u8* scales, int j, int* sc, int* m) {
    if (j < 4) {
        *sc = scales[j] & 63;
        *m = scales[j + 4] & 63;
    } else {
        *sc = (scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4);
        *m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
}

// Q4_K: x = (d·sc_j)·q − (dmin·m_j); qs[32c + l] holds element 64c + l (low nibble) and
// element 64c + 32 + l (high nibble).
template <>
__device__ __forceinline__ void dequant16<TY_Q4_K>(const u8* row, int chunk, int k, float out[16]) {
    const u8* b = row + (chunk >> 4) * Q4_K_BYTES;
    const int e0 = 16 * (chunk & 15);  // first element inside the super-block
    const int j = e0 >> 5;             // sub-block
    const int l0 = e0 & 31;
    int sc, m;
    k4_scale_min(b + 4, j, &sc, &m);
    const float d1 = load_f16(b) * (float)sc;
    const float m1 = load_f16(b + 2) * (float)m;
    const u8* qs = b + 16 + 32 * (j >> 1) + l0;
    const int shift = 4 * (j & 1);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        const int q = load_i32_a4(qs + 4 * w);
#pragma unroll
        for (int i = 0; i < 4; ++i) out[4 * w + i] = d1 * (float)((q >> (8 * i + shift)) & 15) - m1;
    }
}

// Q5_K: as Q4_K plus bit 4 of element 32j + l in bit j of qh[l].
template <>
__device__ __forceinline__ void dequant16<TY_Q5_K>(const u8* row, int chunk, int k, float out[16]) {
    const u8* b = row + (chunk >> 4) * Q5_K_BYTES;
    const int e0 = 16 * (chunk & 15);
    const int j = e0 >> 5;
    const int l0 = e0 & 31;
    int sc, m;
    k4_scale_min(b + 4, j, &sc, &m);
    const float d1 = load_f16(b) * (float)sc;
    const float m1 = load_f16(b + 2) * (float)m;
    const u8* qh = b + 16 + l0;
    const u8* qs = b + 48 + 32 * (j >> 1) + l0;
    const int shift = 4 * (j & 1);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        const int q = load_i32_a4(qs + 4 * w);
        const int h = load_i32_a4(qh + 4 * w);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int v = ((q >> (8 * i + shift)) & 15) | (((h >> (8 * i + j)) & 1) << 4);
            out[4 * w + i] = d1 * (float)v - m1;
        }
    }
}

// Q6_K: x = d·sc·(q − 32). Element 128h + 32·quarter + l (l < 32): low 4 bits from
// ql[64h + l + 32·(quarter&1)] (high nibble when quarter >= 2), high 2 bits from
// qh[32h + l] >> 2·quarter, scale index 8h + 2·quarter + l/16.
template <>
__device__ __forceinline__ void dequant16<TY_Q6_K>(const u8* row, int chunk, int k, float out[16]) {
    const u8* b = row + (chunk >> 4) * Q6_K_BYTES;
    const int e0 = 16 * (chunk & 15);
    const int h = e0 >> 7;
    const int quarter = (e0 >> 5) & 3;
    const int l0 = e0 & 31;
    const float d = load_f16(b + 208) * (float)((const i8*)(b + 192))[8 * h + 2 * quarter + (l0 >> 4)];
    const u8* ql = b + 64 * h + 32 * (quarter & 1) + l0;
    const u8* qh = b + 128 + 32 * h + l0;
    const int lshift = 4 * (quarter >> 1);
    const int hshift = 2 * quarter;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        const int lo = load_i32_a2(ql + 4 * w);
        const int hi = load_i32_a2(qh + 4 * w);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int v = ((lo >> (8 * i + lshift)) & 15) | (((hi >> (8 * i + hshift)) & 3) << 4);
            out[4 * w + i] = d * (float)(v - 32);
        }
    }
}

template <>
__device__ __forceinline__ void dequant16<TY_F32>(const u8* row, int chunk, int k, float out[16]) {
    const float* x = (const float*)row;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const int e = 16 * chunk + j;
        out[j] = e < k ? x[e] : 0.0f;
    }
}

template <>
__device__ __forceinline__ void dequant16<TY_F16>(const u8* row, int chunk, int k, float out[16]) {
    const u16* x = (const u16*)row;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const int e = 16 * chunk + j;
        out[j] = e < k ? f16_to_f32(x[e]) : 0.0f;
    }
}

template <>
__device__ __forceinline__ void dequant16<TY_BF16>(const u8* row, int chunk, int k, float out[16]) {
    const u16* x = (const u16*)row;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const int e = 16 * chunk + j;
        out[j] = e < k ? bf16_to_f32(x[e]) : 0.0f;
    }
}

// Bytes of a row of k elements.
template <int TY>
__device__ __forceinline__ u64 row_bytes(int k) {
    switch (TY) {
        case TY_F32: return (u64)k * 4;
        case TY_F16:
        case TY_BF16: return (u64)k * 2;
        case TY_Q4_0:
        case TY_Q4_0S: return (u64)(k / QK) * Q4_0_BYTES;
        case TY_Q4_1: return (u64)(k / QK) * Q4_1_BYTES;
        case TY_Q5_0: return (u64)(k / QK) * Q5_0_BYTES;
        case TY_Q5_1: return (u64)(k / QK) * Q5_1_BYTES;
        case TY_Q8_0:
        case TY_Q8_0S: return (u64)(k / QK) * Q8_0_BYTES;
        case TY_Q4_K: return (u64)(k / QK_K) * Q4_K_BYTES;
        case TY_Q5_K: return (u64)(k / QK_K) * Q5_K_BYTES;
        case TY_Q6_K: return (u64)(k / QK_K) * Q6_K_BYTES;
    }
    return 0;
}
