// Partial NeoX RoPE ("rotate half") over the first n_rot dims of every head, in place.
//
// Head h of token t is x + t·ld_tok + h·hd, at position pos0 + t. For j < n_rot/2 the pair
// (j, j + n_rot/2) is rotated by the angle pos·θ^(−2j/n_rot), computed in f64 like the CPU
// runtime (runtime/src/ops.rs Rope), then every element of the head is multiplied by `scale`
// (Phi-2 pre-scales q by 1/√head_dim; pass 1 for k). Launch: block 64, grid (n_head, tokens).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(64)
    rope_neox_f32(float* x, int hd, int n_rot, int ld_tok, int pos0, float theta, float scale) {
    float* head = x + (i64)blockIdx.y * ld_tok + (i64)blockIdx.x * hd;
    const int half = n_rot / 2;
    const double pos = (double)(pos0 + (int)blockIdx.y);
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        const double inv_freq = pow((double)theta, -(2.0 * (double)j) / (double)n_rot);
        double s, c;
        sincos(pos * inv_freq, &s, &c);
        const float cf = (float)c, sf = (float)s;
        const float a = head[j];
        const float b = head[j + half];
        head[j] = (a * cf - b * sf) * scale;
        head[j + half] = (b * cf + a * sf) * scale;
    }
    for (int j = n_rot + threadIdx.x; j < hd; j += blockDim.x) head[j] *= scale;
}
