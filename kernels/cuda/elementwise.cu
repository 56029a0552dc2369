// Activation quantization (Q8_1), f32 → f16 conversion, GELU, adds, strided copies (KV cache
// stores), the embedding gather and argmax.
#include "common.cuh"
#include "dequant.cuh"

// gelu_new / ggml_gelu: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (Phi-2's MLP).
__device__ __forceinline__ float gelu_tanh(float z) {
    return 0.5f * z * (1.0f + tanhf(0.7978845608f * (z + 0.044715f * z * z * z)));
}

// ---- Q8_1 activation quantization ---------------------------------------------------------------
// x: m rows of k floats (row stride ldx floats, k a multiple of 32); y: m rows of k/32 groups in
// the split Q8_1 layout (common.cuh; row stride q8_1_row_stride). The values are bit-identical to
// quantize_row_q8_1_ref's blocks: d = amax/127, q = roundf(x·(1/d)), s = f16(Σq · d).
// With act = 1 the values are GELU (tanh) of x first: the MLP's activation and the quantization
// of the down projection's input in one pass (decode). Launch: block (32, 4), grid
// ceil(m·k/32 / 4); one warp per group of 32.
extern "C" __global__ void __launch_bounds__(128)
    quantize_q8_1(const float* x, u8* y, int k, int m, int ldx, int act) {
    const int groups = k / QK;
    const i64 g = (i64)blockIdx.x * 4 + threadIdx.y;
    if (g >= (i64)groups * m) return;  // whole warps
    const int lane = threadIdx.x;
    const i64 row = g / groups;
    const int gi = (int)(g - row * groups);
    float v = x[row * ldx + (i64)gi * QK + lane];
    if (act == 1) v = gelu_tanh(v);
    quantize_group_q8_1(v, y + (u64)row * q8_1_row_stride(groups), groups, gi);
}

// ---- the split weight layouts (common.cuh) ------------------------------------------------------
// dst row = [src blocks' bytes head..block_bytes-1][src blocks' bytes 0..head-1] for `rows` rows
// of nb blocks of `block_bytes` bytes (Q4_0: 18 and head 2; Q8_0: 34 and 2). Launch: block 128,
// grid (ceil(nb / 128), rows).
extern "C" __global__ void split_blocks(const u8* src, u8* dst, int nb, int block_bytes, int head) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nb) return;
    const u64 row = (u64)blockIdx.y * (u64)nb * (u64)block_bytes;
    const u8* s = src + row + (u64)b * block_bytes;
    const int qs_bytes = block_bytes - head;
    u8* q = dst + row + (u64)b * qs_bytes;
    u8* h = dst + row + (u64)nb * qs_bytes + (u64)b * head;
    for (int i = 0; i < qs_bytes; ++i) q[i] = s[head + i];
    for (int i = 0; i < head; ++i) h[i] = s[i];
}

// ---- conversions and copies ----------------------------------------------------------------------

// y[r][c] = f16(x[r][c]) for c < k, 0 for k <= c < ldy (the GEMM's zero padding).
// Launch: block 256, grid (ceil(ldy / 256), m).
extern "C" __global__ void convert_f32_f16_pad(const float* x, u16* y, int k, int m, int ldx, int ldy) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y;
    if (c >= ldy || r >= m) return;
    y[(i64)r * ldy + c] = c < k ? f32_to_f16(x[(i64)r * ldx + c]) : (u16)0;
}

// dst[r][c] = f16(src[r][c]) (strided rows; KV cache stores). Launch: block 256,
// grid (ceil(ncols / 256), nrows).
extern "C" __global__ void copy_f32_f16_2d(const float* src, int ld_src, u16* dst, int ld_dst, int ncols,
                                           int nrows) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y;
    if (c >= ncols || r >= nrows) return;
    dst[(i64)r * ld_dst + c] = f32_to_f16(src[(i64)r * ld_src + c]);
}

// dst[r][c] = src[r][c] (strided f32 rows; splitting a fused QKV output).
extern "C" __global__ void copy_f32_2d(const float* src, int ld_src, float* dst, int ld_dst, int ncols,
                                       int nrows) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y;
    if (c >= ncols || r >= nrows) return;
    dst[(i64)r * ld_dst + c] = src[(i64)r * ld_src + c];
}

// ---- element-wise ----------------------------------------------------------------------------------
// Launch: block 256, grid ceil(n / 256). x and y may be the same buffer.

// gelu_new / ggml_gelu: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (Phi-2's MLP).
extern "C" __global__ void gelu_tanh_f32(const float* x, float* y, int n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = gelu_tanh(x[i]);
}

// Exact GELU 0.5·x·(1 + erf(x/√2)) (EVA ViT, Q-Former).
extern "C" __global__ void gelu_erf_f32(const float* x, float* y, int n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float z = x[i];
    y[i] = 0.5f * z * (1.0f + erff(z * 0.70710678118654752f));
}

// y = a + b.
extern "C" __global__ void add_f32(const float* a, const float* b, float* y, int n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = a[i] + b[i];
}

// y = x + (a + b): Phi-2's parallel residual, summed in the CPU runtime's order.
extern "C" __global__ void add3_f32(const float* x, const float* a, const float* b, float* y, int n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = x[i] + (a[i] + b[i]);
}

// y = x · s.
extern "C" __global__ void scale_f32(const float* x, float* y, float s, int n) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = x[i] * s;
}

// x[r][c] += bias[c] (rows of ncols, stride ldx). Launch: block 256, grid (ceil(ncols/256), nrows).
extern "C" __global__ void add_bias_f32(float* x, const float* bias, int ncols, int nrows, int ldx) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y;
    if (c >= ncols || r >= nrows) return;
    x[(i64)r * ldx + c] += bias[c];
}

// ---- embedding gather ------------------------------------------------------------------------------
// out[i][:] = W[ids[i]][:] dequantized (k elements per row, n_rows rows); an id out of range
// gives a row of zeros (the host checks ids it supplies). Launch: block 128, grid n_ids.
template <int TY>
__device__ __forceinline__ void get_rows_impl(const u8* w, const int* ids, float* out, int k, int n_rows) {
    const int i = blockIdx.x;
    const int id = ids[i];
    const bool ok = id >= 0 && id < n_rows;
    const u8* row = w + (ok ? (u64)id : 0) * row_bytes<TY>(k);
    float* o = out + (i64)i * k;
    const int chunks = (k + 15) / 16;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        float v[16];
        dequant16<TY>(row, c, k, v);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int e = 16 * c + j;
            if (e < k) o[e] = ok ? v[j] : 0.0f;
        }
    }
}

#define GET_ROWS_KERNEL(NAME, TY)                                                                 \
    extern "C" __global__ void NAME(const u8* w, const int* ids, float* out, int k, int n_rows) { \
        get_rows_impl<TY>(w, ids, out, k, n_rows);                                                \
    }

GET_ROWS_KERNEL(get_rows_f32, TY_F32)
GET_ROWS_KERNEL(get_rows_f16, TY_F16)
GET_ROWS_KERNEL(get_rows_bf16, TY_BF16)
GET_ROWS_KERNEL(get_rows_q4_0, TY_Q4_0)
GET_ROWS_KERNEL(get_rows_q4_1, TY_Q4_1)
GET_ROWS_KERNEL(get_rows_q5_0, TY_Q5_0)
GET_ROWS_KERNEL(get_rows_q5_1, TY_Q5_1)
GET_ROWS_KERNEL(get_rows_q8_0, TY_Q8_0)
GET_ROWS_KERNEL(get_rows_q4_0s, TY_Q4_0S)
GET_ROWS_KERNEL(get_rows_q8_0s, TY_Q8_0S)
GET_ROWS_KERNEL(get_rows_q4_k, TY_Q4_K)
GET_ROWS_KERNEL(get_rows_q5_k, TY_Q5_K)
GET_ROWS_KERNEL(get_rows_q6_k, TY_Q6_K)

// ---- a busy wait (benchmarks) -----------------------------------------------------------------------
// One thread spins for `ns` nanoseconds of the GPU's global timer, so that the host can queue a
// whole sequence of launches behind it and the timed part runs without waiting for the host.
// Launch: block 1, grid 1. The emulator returns at once.
extern "C" __global__ void spin_ns(u64 ns) {
#ifndef TINYGPTV_EMU
    u64 t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
#else
    (void)ns;
#endif
}

// ---- argmax (greedy sampling on the device) ----------------------------------------------------------
// out[0] = the first index of the largest value of x[0..n), like the CPU sampler's argmax for
// inputs without NaN. Launch: one block of 256 threads.
extern "C" __global__ void __launch_bounds__(256) argmax_f32(const float* x, int n, int* out) {
    __shared__ float best_v[256];
    __shared__ int best_i[256];
    const int t = threadIdx.x;
    float bv = 0.0f;
    int bi = -1;  // none yet
    for (int i = t; i < n; i += blockDim.x) {
        const float v = x[i];
        if (bi < 0 || v > bv) {  // strict: a thread sees its indices in increasing order
            bv = v;
            bi = i;
        }
    }
    best_v[t] = bv;
    best_i[t] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) {
            const float ov = best_v[t + s];
            const int oi = best_i[t + s];
            const int mi = best_i[t];
            if (oi >= 0 && (mi < 0 || ov > best_v[t] || (ov == best_v[t] && oi < mi))) {
                best_v[t] = ov;
                best_i[t] = oi;
            }
        }
        __syncthreads();
    }
    if (t == 0) out[0] = best_i[0] < 0 ? 0 : best_i[0];
}
