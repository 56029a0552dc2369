// Tiled GEMM for prompts and the vision tower: y[r][c] = Σ_k x[r][k] · W[c][k] (+ bias[c]) with
// x: m rows of f16 activations (row stride ldx halves, ldx a multiple of 32 >= k, zero padded:
// convert_f32_f16_pad makes it) and W: n rows of k elements of any weight format.
//
// Each block computes a GEMM_BM × GEMM_BN tile of y: per GEMM_BK = 32 slice of k, the weight
// tile is dequantized to f16 into shared memory (dequant.cuh, 16 elements per thread) next to
// the activation tile, then four warps (2 × 2, 32 × 32 outputs each) run f16 tensor-core MMAs
// (m16n8k16, f32 accumulation). Launch: block 128, grid (ceil(n / 64), ceil(m / 64)).
#include "common.cuh"
#include "dequant.cuh"

#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 32
#define GEMM_LDS 40  // shared row stride in halves: 32 + 8 keeps fragment loads conflict-free

__device__ __forceinline__ u32 pack_f16x2(float lo, float hi) {
    return (u32)f32_to_f16(lo) | ((u32)f32_to_f16(hi) << 16);
}

template <int TY>
__device__ __forceinline__ void gemm_impl(const u8* __restrict__ w, const u16* __restrict__ x, int ldx,
                                          const float* __restrict__ bias, float* __restrict__ y, int n, int k,
                                          int m) {
    // read and written as 32-bit words: align beyond u16's 2 bytes
    __shared__ __align__(16) u16 Xs[GEMM_BM * GEMM_LDS];
    __shared__ __align__(16) u16 Ws[GEMM_BN * GEMM_LDS];
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.y * GEMM_BM;
    const int n0 = blockIdx.x * GEMM_BN;

    // loader role: thread tid fills half `lh` (16 elements) of tile row `lr`
    const int lr = tid >> 1, lh = tid & 1;
    const bool w_ok = n0 + lr < n;
    const u8* wrow = w + (u64)(w_ok ? n0 + lr : 0) * row_bytes<TY>(k);
    const bool x_ok = m0 + lr < m;
    const u16* xrow = x + (i64)(x_ok ? m0 + lr : 0) * ldx;
    u16* xs_dst = &Xs[lr * GEMM_LDS + lh * 16];
    u16* ws_dst = &Ws[lr * GEMM_LDS + lh * 16];

    float acc[2][4][4];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[a][b][i] = 0.0f;

    for (int k0 = 0; k0 < k; k0 += GEMM_BK) {
        const u16* xsrc = xrow + k0 + lh * 16;
#pragma unroll
        for (int i = 0; i < 8; ++i) store_u32(xs_dst + 2 * i, x_ok ? load_u32(xsrc + 2 * i) : 0u);
        float v[16];
        if (w_ok) {
            dequant16<TY>(wrow, (k0 >> 4) + lh, k, v);
        } else {
#pragma unroll
            for (int i = 0; i < 16; ++i) v[i] = 0.0f;
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) store_u32(ws_dst + 2 * i, pack_f16x2(v[2 * i], v[2 * i + 1]));
        __syncthreads();

#pragma unroll
        for (int kk = 0; kk < GEMM_BK; kk += 16) {
            u32 a[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int r0 = wm * 32 + mt * 16 + g;
                a[mt][0] = load_u32(&Xs[r0 * GEMM_LDS + kk + 2 * t]);
                a[mt][1] = load_u32(&Xs[(r0 + 8) * GEMM_LDS + kk + 2 * t]);
                a[mt][2] = load_u32(&Xs[r0 * GEMM_LDS + kk + 2 * t + 8]);
                a[mt][3] = load_u32(&Xs[(r0 + 8) * GEMM_LDS + kk + 2 * t + 8]);
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                const int c0 = wn * 32 + nt * 8 + g;
                u32 b[2];
                b[0] = load_u32(&Ws[c0 * GEMM_LDS + kk + 2 * t]);
                b[1] = load_u32(&Ws[c0 * GEMM_LDS + kk + 2 * t + 8]);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) mma_m16n8k16_f16(acc[mt][nt], a[mt], b);
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = m0 + wm * 32 + mt * 16 + g + 8 * (i >> 1);
                const int c = n0 + wn * 32 + nt * 8 + 2 * t + (i & 1);
                if (r < m && c < n) y[(i64)r * n + c] = acc[mt][nt][i] + (bias ? bias[c] : 0.0f);
            }
}

#define GEMM_KERNEL(NAME, TY)                                                                        \
    extern "C" __global__ void __launch_bounds__(128)                                               \
        NAME(const u8* w, const u16* x, int ldx, const float* bias, float* y, int n, int k, int m) { \
        gemm_impl<TY>(w, x, ldx, bias, y, n, k, m);                                                  \
    }

GEMM_KERNEL(gemm_f32_f16, TY_F32)
GEMM_KERNEL(gemm_f16_f16, TY_F16)
GEMM_KERNEL(gemm_bf16_f16, TY_BF16)
GEMM_KERNEL(gemm_q4_0_f16, TY_Q4_0)
GEMM_KERNEL(gemm_q4_1_f16, TY_Q4_1)
GEMM_KERNEL(gemm_q5_0_f16, TY_Q5_0)
GEMM_KERNEL(gemm_q5_1_f16, TY_Q5_1)
GEMM_KERNEL(gemm_q8_0_f16, TY_Q8_0)
GEMM_KERNEL(gemm_q4_0s_f16, TY_Q4_0S)
GEMM_KERNEL(gemm_q8_0s_f16, TY_Q8_0S)
GEMM_KERNEL(gemm_q4_k_f16, TY_Q4_K)
GEMM_KERNEL(gemm_q5_k_f16, TY_Q5_K)
GEMM_KERNEL(gemm_q6_k_f16, TY_Q6_K)
