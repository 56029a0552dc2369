// Softmax attention, flash style: keys and values stream through shared memory in chunks of
// ATT_KC positions with an online softmax, so no [queries, keys] score matrix is ever stored.
// Used for the language model over its f16 KV cache (causal) and for the ViT / Q-Former
// (non-causal, f32 or f16 keys and values).
//
// Layout: query t of head h is q[t·ld_q + h·hd]; key / value p of KV head h / (n_head /
// n_head_kv) is k[p·ld_kv + kvh·hd] (same for v); output out[t·ld_out + h·hd]. Scores are
// scale·(q·k); with `causal`, query t (at position pos0 + t) sees keys 0 ..= pos0 + t, else all
// n_kv keys. hd <= ATT_HD_MAX.
//
// Launch: block (32, ATT_WARPS), grid (ceil(n_q / ATT_QPB), n_head, n_splits). Each warp owns
// ATT_QPW queries; in a chunk lane j scores key j against each of them, the warp updates the
// running max / sum, and the probabilities are broadcast with shuffles while each lane
// accumulates its output dims lane, lane + 32, ...
//
// Split keys (flash-decoding): with `partial` non-null, block z takes only keys
// [z·split_len, (z+1)·split_len) and writes its unnormalized state (running max m, sum l, the
// hd weighted sums) to partial[((z·n_head + h)·n_q + t)·(hd + 2)]; attention_combine merges
// the splits. Decode has one query per head, so without splits only n_head blocks would run.
#include "common.cuh"

#define ATT_WARPS 4
#define ATT_QPW 4
#define ATT_QPB (ATT_WARPS * ATT_QPW)
#define ATT_KC 32
#define ATT_HD_MAX 128
#define ATT_DPL (ATT_HD_MAX / WARP_SIZE)

template <bool KV_F16>
__device__ __forceinline__ float load_kv(const void* p, i64 i) {
    if (KV_F16) return f16_to_f32(((const u16*)p)[i]);
    return ((const float*)p)[i];
}

template <bool KV_F16>
__device__ __forceinline__ void attention_impl(const float* q, int ld_q, const void* k, const void* v, int ld_kv,
                                               float* out, int ld_out, int n_q, int n_kv, int n_head,
                                               int n_head_kv, int hd, float scale, int causal, int pos0,
                                               int split_len, float* partial) {
    __shared__ float Qs[ATT_QPB][ATT_HD_MAX];
    __shared__ float Ks[ATT_KC][ATT_HD_MAX + 1];  // odd stride: lanes reading different keys hit different banks
    __shared__ float Vs[ATT_KC][ATT_HD_MAX];
    const int h = blockIdx.y;
    const int kvh = h / (n_head / n_head_kv);
    const int q0 = blockIdx.x * ATT_QPB;
    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int tid = warp * WARP_SIZE + lane;
    const int nthreads = WARP_SIZE * ATT_WARPS;

    for (int i = tid; i < ATT_QPB * hd; i += nthreads) {
        const int qi = i / hd, d = i - qi * hd;
        const int t = q0 + qi;
        Qs[qi][d] = t < n_q ? q[(i64)t * ld_q + (i64)h * hd + d] * scale : 0.0f;
    }
    // keys any query of this block can see, within this block's split
    const int kv_begin = blockIdx.z * split_len;
    const int kv_end = imin(causal ? imin(n_kv, pos0 + imin(q0 + ATT_QPB, n_q)) : n_kv, kv_begin + split_len);

    float m[ATT_QPW], l[ATT_QPW], acc[ATT_QPW][ATT_DPL];
#pragma unroll
    for (int qi = 0; qi < ATT_QPW; ++qi) {
        m[qi] = -__int_as_float(0x7f800000);
        l[qi] = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_DPL; ++i) acc[qi][i] = 0.0f;
    }

    for (int kc = kv_begin; kc < kv_end; kc += ATT_KC) {
        __syncthreads();  // Qs written / the previous chunk consumed
        for (int i = tid; i < ATT_KC * hd; i += nthreads) {
            const int j = i / hd, d = i - j * hd;
            const int p = kc + j;
            float kv = 0.0f, vv = 0.0f;
            if (p < kv_end) {
                const i64 at = (i64)p * ld_kv + (i64)kvh * hd + d;
                kv = load_kv<KV_F16>(k, at);
                vv = load_kv<KV_F16>(v, at);
            }
            Ks[j][d] = kv;
            Vs[j][d] = vv;
        }
        __syncthreads();
#pragma unroll
        for (int qi = 0; qi < ATT_QPW; ++qi) {
            const int ql = warp * ATT_QPW + qi;
            const int t = q0 + ql;
            if (t >= n_q) continue;  // warp-uniform
            const int limit = imin(causal ? imin(n_kv, pos0 + t + 1) : n_kv, kv_end);
            const int p = kc + lane;
            const bool valid = p < limit;
            float s = -__int_as_float(0x7f800000);
            if (valid) {
                s = 0.0f;
                for (int d = 0; d < hd; ++d) s += Qs[ql][d] * Ks[lane][d];
            }
            const float m_new = fmaxf(m[qi], warp_max(s));
            if (m_new == -__int_as_float(0x7f800000)) continue;  // nothing visible yet (warp-uniform)
            const float pr = valid ? expf(s - m_new) : 0.0f;
            const float corr = expf(m[qi] - m_new);
            l[qi] = l[qi] * corr + warp_sum(pr);
            m[qi] = m_new;
#pragma unroll
            for (int i = 0; i < ATT_DPL; ++i) acc[qi][i] *= corr;
            for (int j = 0; j < ATT_KC; ++j) {
                const float pj = __shfl_sync(FULL_MASK, pr, j);
#pragma unroll
                for (int i = 0; i < ATT_DPL; ++i) {
                    const int d = lane + WARP_SIZE * i;
                    if (d < hd) acc[qi][i] += pj * Vs[j][d];
                }
            }
        }
    }

#pragma unroll
    for (int qi = 0; qi < ATT_QPW; ++qi) {
        const int t = q0 + warp * ATT_QPW + qi;
        if (t >= n_q) continue;
        if (partial) {
            float* p = partial + (((i64)blockIdx.z * n_head + h) * n_q + t) * (hd + 2);
            if (lane == 0) {
                p[0] = m[qi];
                p[1] = l[qi];
            }
#pragma unroll
            for (int i = 0; i < ATT_DPL; ++i) {
                const int d = lane + WARP_SIZE * i;
                if (d < hd) p[2 + d] = acc[qi][i];
            }
            continue;
        }
        const float inv = l[qi] > 0.0f ? 1.0f / l[qi] : 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_DPL; ++i) {
            const int d = lane + WARP_SIZE * i;
            if (d < hd) out[(i64)t * ld_out + (i64)h * hd + d] = acc[qi][i] * inv;
        }
    }
}

extern "C" __global__ void __launch_bounds__(WARP_SIZE * ATT_WARPS)
    attention_f16kv(const float* q, int ld_q, const u16* k, const u16* v, int ld_kv, float* out, int ld_out,
                    int n_q, int n_kv, int n_head, int n_head_kv, int hd, float scale, int causal, int pos0,
                    int split_len, float* partial) {
    attention_impl<true>(q, ld_q, k, v, ld_kv, out, ld_out, n_q, n_kv, n_head, n_head_kv, hd, scale, causal,
                         pos0, split_len, partial);
}

extern "C" __global__ void __launch_bounds__(WARP_SIZE * ATT_WARPS)
    attention_f32kv(const float* q, int ld_q, const float* k, const float* v, int ld_kv, float* out,
                    int ld_out, int n_q, int n_kv, int n_head, int n_head_kv, int hd, float scale, int causal,
                    int pos0, int split_len, float* partial) {
    attention_impl<false>(q, ld_q, k, v, ld_kv, out, ld_out, n_q, n_kv, n_head, n_head_kv, hd, scale, causal,
                          pos0, split_len, partial);
}

// Decode: one query per head (n_q = 1), the step that runs once per generated token. Launch:
// block (32, ATT_WARPS), grid (1, n_head, n_splits), the parameters and split states of
// attention_*kv. Lane j of warp w scores key kv_begin + 32·(w + ATT_WARPS·i) + j on its own (q
// is in shared memory, so a dot needs no shuffles), the warp keeps an online softmax over its
// keys and accumulates the values with the probabilities broadcast by shuffles, and the warps'
// states merge in shared memory at the end. Every warp has keys to work on, where the general
// kernel above gives the single query to one warp and stages each chunk through a barrier.
template <bool KV_F16>
__device__ __forceinline__ void attention_decode_impl(const float* q, const void* k, const void* v, int ld_kv,
                                                      float* out, int n_kv, int n_head, int n_head_kv, int hd,
                                                      float scale, int causal, int pos0, int split_len,
                                                      float* partial) {
    __shared__ float Qs[ATT_HD_MAX];
    __shared__ float Ms[ATT_WARPS], Ls[ATT_WARPS];
    __shared__ float As[ATT_WARPS][ATT_HD_MAX];
    const int h = blockIdx.y;
    const int kvh = h / (n_head / n_head_kv);
    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int tid = warp * WARP_SIZE + lane;
    const float neg_inf = -__int_as_float(0x7f800000);
    for (int d = tid; d < hd; d += WARP_SIZE * ATT_WARPS) Qs[d] = q[(i64)h * hd + d] * scale;
    __syncthreads();
    const int limit = causal ? imin(n_kv, pos0 + 1) : n_kv;
    const int kv_begin = blockIdx.z * split_len;
    const int kv_end = imin(limit, kv_begin + split_len);
    const i64 head_off = (i64)kvh * hd;
    // f16 keys whose rows start 16-byte aligned (the KV cache: head_dim and row stride multiples
    // of 8) take the vector loads below
    const bool vec8 = KV_F16 && hd % 8 == 0 && ld_kv % 8 == 0 && ((u64)k & 15) == 0;

    float m = neg_inf, l = 0.0f, acc[ATT_DPL];
#pragma unroll
    for (int i = 0; i < ATT_DPL; ++i) acc[i] = 0.0f;
    for (int base = kv_begin + warp * WARP_SIZE; base < kv_end; base += WARP_SIZE * ATT_WARPS) {
        const int p = base + lane;
        const bool valid = p < kv_end;
        float s = neg_inf;
        if (valid) {
            const i64 row = (i64)p * ld_kv + head_off;
            s = 0.0f;
            if (vec8) {
                // a lane reads its key with 16-byte loads: the warp's rows are far apart, so
                // each load instruction touches 32 lines; 8 times fewer of them than 2-byte loads
                const u8* kr = (const u8*)k + 2 * row;
                for (int d = 0; d < hd; d += 8) {
                    int w4[4];
                    load_16(kr + 2 * d, w4);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        s += Qs[d + 2 * e] * f16_to_f32((u16)(w4[e] & 0xffff));
                        s += Qs[d + 2 * e + 1] * f16_to_f32((u16)((u32)w4[e] >> 16));
                    }
                }
            } else {
#pragma unroll 8
                for (int d = 0; d < hd; ++d) s += Qs[d] * load_kv<KV_F16>(k, row + d);
            }
        }
        const float m_new = fmaxf(m, warp_max(s));  // finite: the warp has at least one key
        const float pr = valid ? expf(s - m_new) : 0.0f;
        const float corr = expf(m - m_new);
        l = l * corr + warp_sum(pr);
        m = m_new;
#pragma unroll
        for (int i = 0; i < ATT_DPL; ++i) acc[i] *= corr;
        const int nj = imin(WARP_SIZE, kv_end - base);
        for (int j = 0; j < nj; ++j) {
            const float pj = __shfl_sync(FULL_MASK, pr, j);
            const i64 row = (i64)(base + j) * ld_kv + head_off;
#pragma unroll
            for (int i = 0; i < ATT_DPL; ++i) {
                const int d = lane + WARP_SIZE * i;
                if (d < hd) acc[i] += pj * load_kv<KV_F16>(v, row + d);
            }
        }
    }
    if (lane == 0) {
        Ms[warp] = m;
        Ls[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_DPL; ++i) {
        const int d = lane + WARP_SIZE * i;
        if (d < hd) As[warp][d] = acc[i];
    }
    __syncthreads();
    if (warp != 0) return;
    float mx = neg_inf;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; ++w) mx = fmaxf(mx, Ms[w]);
    float ls = 0.0f, f[ATT_WARPS];
#pragma unroll
    for (int w = 0; w < ATT_WARPS; ++w) {
        f[w] = Ms[w] == neg_inf ? 0.0f : expf(Ms[w] - mx);  // a warp with no keys adds nothing
        ls += Ls[w] * f[w];
    }
    // the block's state: unnormalized into the split states, or the final output
    float* pp = partial ? partial + ((i64)blockIdx.z * n_head + h) * (hd + 2) : nullptr;
    if (pp && lane == 0) {
        pp[0] = mx;
        pp[1] = ls;
    }
    const float inv = pp ? 1.0f : (ls > 0.0f ? 1.0f / ls : 0.0f);
    float* dst = pp ? pp + 2 : out + (i64)h * hd;
    for (int d = lane; d < hd; d += WARP_SIZE) {
        float a = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; ++w) a += As[w][d] * f[w];
        dst[d] = a * inv;
    }
}

extern "C" __global__ void __launch_bounds__(WARP_SIZE * ATT_WARPS)
    attention_decode_f16kv(const float* q, int ld_q, const u16* k, const u16* v, int ld_kv, float* out,
                           int ld_out, int n_q, int n_kv, int n_head, int n_head_kv, int hd, float scale,
                           int causal, int pos0, int split_len, float* partial) {
    attention_decode_impl<true>(q, k, v, ld_kv, out, n_kv, n_head, n_head_kv, hd, scale, causal, pos0,
                                split_len, partial);
}

extern "C" __global__ void __launch_bounds__(WARP_SIZE * ATT_WARPS)
    attention_decode_f32kv(const float* q, int ld_q, const float* k, const float* v, int ld_kv, float* out,
                           int ld_out, int n_q, int n_kv, int n_head, int n_head_kv, int hd, float scale,
                           int causal, int pos0, int split_len, float* partial) {
    attention_decode_impl<false>(q, k, v, ld_kv, out, n_kv, n_head, n_head_kv, hd, scale, causal, pos0,
                                 split_len, partial);
}

// Merges the n_splits partial states of each (query t, head h) written by the split attention:
// out = Σ_s e^(m_s − M)·acc_s / Σ_s e^(m_s − M)·l_s with M = max_s m_s (0 when no split saw a
// key). Launch: block 128, grid (n_q, n_head).
extern "C" __global__ void __launch_bounds__(128)
    attention_combine(const float* partial, float* out, int ld_out, int n_q, int n_head, int hd, int n_splits) {
    const int t = blockIdx.x, h = blockIdx.y;
    const i64 stride = (i64)n_head * n_q * (hd + 2);
    const float* p0 = partial + ((i64)h * n_q + t) * (hd + 2);
    float* o = out + (i64)t * ld_out + (i64)h * hd;
    const float neg_inf = -__int_as_float(0x7f800000);
    float mx = neg_inf;
    for (int s = 0; s < n_splits; ++s) mx = fmaxf(mx, p0[s * stride]);
    float l = 0.0f;
    if (mx != neg_inf)
        for (int s = 0; s < n_splits; ++s) l += p0[s * stride + 1] * expf(p0[s * stride] - mx);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        if (mx != neg_inf)
            for (int s = 0; s < n_splits; ++s) acc += p0[s * stride + 2 + d] * expf(p0[s * stride] - mx);
        o[d] = acc * inv;
    }
}
