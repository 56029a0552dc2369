// LayerNorm and RMSNorm over rows of `dim` floats, f32 statistics (two passes for the variance).
//
// Row (group g, token t) starts at x + t·ld_tok + g·ld_grp, so one launch normalizes plain
// [tokens, dim] rows (grid (1, tokens), ld_tok = dim) or every head vector inside a fused
// QKV output (grid (heads, tokens), ld_tok = QKV width, ld_grp = head_dim) for TinyGPT-V's
// per-head QK LayerNorm. y uses the same strides and may be x itself. Launch: block 128.
#include "common.cuh"

// y = (x − mean)/√(var + eps)·w + b; w or b may be null (1 / 0). With yq non-null (plain rows,
// dim a multiple of 32) the output is also quantized to split Q8_1 (common.cuh) for the decode
// GEMVs, bit for bit as quantize_q8_1 would do it from y: in the last pass warp w of iteration j
// holds elements 128j + 32w .. +31, which is one Q8_1 group.
extern "C" __global__ void __launch_bounds__(128)
    layer_norm_f32(const float* x, float* y, const float* w, const float* b, int dim, int ld_tok, int ld_grp,
                   float eps, u8* yq) {
    __shared__ float scratch[32];
    const i64 off = (i64)blockIdx.y * ld_tok + (i64)blockIdx.x * ld_grp;
    const float* xr = x + off;
    float* yr = y + off;
    float s = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i];
    const float mean = block_sum(s, scratch) / (float)dim;
    float v = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float d = xr[i] - mean;
        v += d * d;
    }
    const float var = block_sum(v, scratch) / (float)dim;
    const float inv = 1.0f / sqrtf(var + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float o = (xr[i] - mean) * inv;
        if (w) o *= w[i];
        if (b) o += b[i];
        yr[i] = o;
        if (yq) quantize_group_q8_1(o, yq + (u64)blockIdx.y * q8_1_row_stride(dim / QK), dim / QK, i / QK);
    }
}

// y = x/√(mean(x²) + eps)·w (LlamaRMSNorm); w may be null.
extern "C" __global__ void __launch_bounds__(128)
    rms_norm_f32(const float* x, float* y, const float* w, int dim, int ld_tok, int ld_grp, float eps) {
    __shared__ float scratch[32];
    const i64 off = (i64)blockIdx.y * ld_tok + (i64)blockIdx.x * ld_grp;
    const float* xr = x + off;
    float* yr = y + off;
    float s = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i] * xr[i];
    const float inv = 1.0f / sqrtf(block_sum(s, scratch) / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float o = xr[i] * inv;
        yr[i] = w ? o * w[i] : o;
    }
}
