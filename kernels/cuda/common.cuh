// Shared definitions of the tinygptv CUDA kernels: integer types, f16 conversions, the GGUF
// block layouts (byte offsets, as in kernels/src/formats/), warp reductions, unaligned loads and
// the f16 tensor-core MMA.
//
// Self-contained on purpose: NVRTC compiles these files with no CUDA headers at all (the PyPI
// NVRTC wheel ships none), so there is no <cuda_fp16.h>, <stdint.h> or <mma.h> here. The same
// sources also compile as host C++ with emu/cuda_emu.h (TINYGPTV_EMU) so that tests can run
// every kernel on the CPU; the few device-only pieces (inline PTX) have an emulator branch.
#pragma once

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef short i16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

// Elements per block of the 32-element formats and of the K-quant super-blocks.
#define QK 32
#define QK_K 256

// Block sizes in bytes and field offsets (gguf.md §5.2; kernels/src/formats/*.rs).
#define Q4_0_BYTES 18   // d f16 @0; qs[16] @2
#define Q4_1_BYTES 20   // d @0; m @2; qs[16] @4
#define Q5_0_BYTES 22   // d @0; qh u32 @2; qs[16] @6
#define Q5_1_BYTES 24   // d @0; m @2; qh u32 @4; qs[16] @8
#define Q8_0_BYTES 34   // d @0; qs i8[32] @2
#define Q8_1_BYTES 36   // d @0; s @2; qs i8[32] @4
#define Q4_K_BYTES 144  // d @0; dmin @2; scales[12] @4; qs[128] @16
#define Q5_K_BYTES 176  // d @0; dmin @2; scales[12] @4; qh[32] @16; qs[128] @48
#define Q6_K_BYTES 210  // ql[128] @0; qh[64] @128; scales i8[16] @192; d f16 @208

// Weight type codes shared with kernels/src/cuda/ (the ggml type ids).
#define TY_F32 0
#define TY_F16 1
#define TY_Q4_0 2
#define TY_Q4_1 3
#define TY_Q5_0 6
#define TY_Q5_1 7
#define TY_Q8_0 8
#define TY_Q4_K 12
#define TY_Q5_K 13
#define TY_Q6_K 14
#define TY_BF16 30
// Device-only "split" layouts of Q4_0 / Q8_0 (not ggml ids): upload_weight repacks a row of nb
// blocks (nb a multiple of 8) as [qs of every block][d of every block], so the quants of block b
// start at 16·b (Q4_0) or 32·b (Q8_0), 16-byte aligned, and d_b sits at qs_bytes·nb + 2·b. A
// warp then reads a row with aligned 16-byte loads instead of 2-byte ones at an 18- or 34-byte
// stride (the loads, not the DRAM, bounded the GGUF-layout GEMV). Row sizes are unchanged.
#define TY_Q4_0S 102
#define TY_Q8_0S 108

#ifndef TINYGPTV_EMU
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest even, like half::f16::from_f32 and ggml's fp32 -> fp16.
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// ---- loads -------------------------------------------------------------------------------------
// GGUF blocks of 18, 22, 34 and 210 bytes leave their fields only 2-byte aligned, so 32-bit
// words are assembled from two 16-bit loads there. A misaligned access faults on the GPU; the
// emulator checks the alignment of every access made through these helpers.
#ifdef TINYGPTV_EMU
#define CHECK_ALIGN(p, n) emu::check_align((const void*)(p), n, __FILE__, __LINE__)
#else
#define CHECK_ALIGN(p, n)
#endif

__device__ __forceinline__ u16 load_u16(const u8* p) {
    CHECK_ALIGN(p, 2);
    return *(const u16*)p;
}

__device__ __forceinline__ void store_u16(u8* p, u16 v) {
    CHECK_ALIGN(p, 2);
    *(u16*)p = v;
}

__device__ __forceinline__ int load_i32_a2(const u8* p) {
    CHECK_ALIGN(p, 2);
    const u16* q = (const u16*)p;
    return (int)((u32)q[0] | ((u32)q[1] << 16));
}

__device__ __forceinline__ int load_i32_a4(const u8* p) {
    CHECK_ALIGN(p, 4);
    return *(const int*)p;
}

// 16 bytes at a 16-byte aligned address, as four 32-bit words (one vector load on the GPU).
__device__ __forceinline__ void load_16(const u8* p, int q[4]) {
    CHECK_ALIGN(p, 16);
#ifdef TINYGPTV_EMU
    memcpy(q, p, 16);
#else
    const int4 v = *(const int4*)p;
    q[0] = v.x;
    q[1] = v.y;
    q[2] = v.z;
    q[3] = v.w;
#endif
}

// A 32-bit word of a u16 array (shared-memory tiles): `p` must be 4-byte aligned.
__device__ __forceinline__ u32 load_u32(const u16* p) {
    CHECK_ALIGN(p, 4);
    return *(const u32*)p;
}

__device__ __forceinline__ void store_u32(u16* p, u32 v) {
    CHECK_ALIGN(p, 4);
    *(u32*)p = v;
}

__device__ __forceinline__ float load_f16(const u8* p) { return f16_to_f32(load_u16(p)); }

// ---- warp reductions (every lane of the warp must take part) -----------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ int warp_sum_int(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over a block of blockDim.x * blockDim.y threads (a multiple of 32, at most 1024); every
// thread gets the result. `scratch` holds 32 floats of shared memory; the function ends with a
// barrier, so the same scratch can be reused right away.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    const int nwarps = (blockDim.x * blockDim.y) / WARP_SIZE;
    v = warp_sum(v);
    if ((tid & 31) == 0) scratch[tid >> 5] = v;
    __syncthreads();
    float r = (tid & 31) < nwarps ? scratch[tid & 31] : 0.0f;
    r = warp_sum(r);
    __syncthreads();
    return r;
}

// ---- Q8_1 activation blocks ----------------------------------------------------------------------

// Sum of the four signed bytes of `a` (as dp4a with ones).
__device__ __forceinline__ int byte_sum(int a) { return __dp4a(a, 0x01010101, 0); }

// On the device, quantized activations use a split Q8_1 layout: each row (activation vector) of
// G = k/32 groups is [qs: G × 32 int8][ds: G × (d f16, s f16)], padded to a multiple of 16 bytes,
// so a lane reads a group's 32 values as two aligned 16-byte loads. The values are those of
// ggml's Q8_1 blocks (quantize_q8_1); only their places differ.
__device__ __forceinline__ u64 q8_1_row_stride(int groups) { return ((u64)groups * Q8_1_BYTES + 15) & ~(u64)15; }

// Quantizes the warp's 32 values (lane l holds element l of group g) into group g of a split
// Q8_1 row of `groups` groups: d = amax/127, q = roundf(v·(1/d)), s = f16(Σq·d), bit-identical
// to quantize_row_q8_1_ref. Every lane of the warp must call it.
__device__ __forceinline__ void quantize_group_q8_1(float v, u8* yrow, int groups, int g) {
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const int q = (int)roundf(v * id);
    const int sum = warp_sum_int(q);
    yrow[32 * (u64)g + (threadIdx.x & 31)] = (u8)(i8)q;
    if ((threadIdx.x & 31) == 0) {
        u8* ds = yrow + 32 * (u64)groups + 4 * (u64)g;
        store_u16(ds, f32_to_f16(d));
        store_u16(ds + 2, f32_to_f16((float)sum * d));
    }
}

// One group of Q8_1 activations: 32 int8 values, the scale, and the exact integer sums of the
// first and second 16 values (the offset terms of the weight formats use them).
struct ActQ8_1 {
    int q[8];
    float d;
    int sum_lo, sum_hi;
    __device__ __forceinline__ void load(const u8* xrow, int g, int groups) {
        load_16(xrow + 32 * (u64)g, q);
        load_16(xrow + 32 * (u64)g + 16, q + 4);
        d = f16_to_f32(load_u16(xrow + 32 * (u64)groups + 4 * (u64)g));
        sum_lo = 0;
        sum_hi = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            sum_lo += byte_sum(q[i]);
            sum_hi += byte_sum(q[i + 4]);
        }
    }
    __device__ __forceinline__ int sum() const { return sum_lo + sum_hi; }
};

// ---- f16 tensor cores ------------------------------------------------------------------------------
// D = A·B + C for one warp, m16n8k16, f16 inputs, f32 accumulators (sm_80+). Fragment layout of
// the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type"), with
// g = lane / 4, t = lane % 4:
//   a[r] holds A[g + 8·(r&1)][2t + 8·(r>>1) + {0,1}]   (low half first)
//   b[r] holds B[2t + 8·r + {0,1}][g]
//   c[i] is    C[g + 8·(i>>1)][2t + (i&1)]
#ifndef TINYGPTV_EMU
__device__ __forceinline__ void mma_m16n8k16_f16(float c[4], const u32 a[4], const u32 b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif
