// The kernels of kernels/cuda/ compiled as host C++ on top of cuda_emu.h, with a C entry point
// that launches one by name (used by kernels/src/cuda/emu.rs in tests).
#include "cuda_emu.h"

#include <type_traits>
#include <utility>

#include "../common.cuh"
#include "../dequant.cuh"
#include "../attention.cu"
#include "../elementwise.cu"
#include "../gemm.cu"
#include "../gemv.cu"
#include "../norm.cu"
#include "../rope.cu"

namespace {

// Calls k with its parameters read from `args` (args[i] points at parameter i's value, as for
// cuLaunchKernel).
template <class... A, std::size_t... I>
void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A>
std::string run(void (*k)(A...), dim3 grid, dim3 block, void** args) {
    std::function<void()> body = [&] { call_with(k, args, std::index_sequence_for<A...>{}); };
    return emu::launch(grid, block, body);
}

struct Entry {
    const char* name;
    std::string (*launch)(dim3, dim3, void**);
};

#define K(name) {#name, [](dim3 g, dim3 b, void** a) { return run(name, g, b, a); }},

const Entry kKernels[] = {
    K(attention_f16kv) K(attention_f32kv) K(attention_decode_f16kv) K(attention_decode_f32kv) K(attention_combine)
    K(quantize_q8_1) K(split_blocks) K(convert_f32_f16_pad) K(copy_f32_f16_2d) K(copy_f32_2d)
    K(gelu_tanh_f32) K(gelu_erf_f32) K(add_f32) K(add3_f32) K(scale_f32) K(add_bias_f32)
    K(get_rows_f32) K(get_rows_f16) K(get_rows_bf16) K(get_rows_q4_0) K(get_rows_q4_1)
    K(get_rows_q5_0) K(get_rows_q5_1) K(get_rows_q8_0) K(get_rows_q4_0s) K(get_rows_q8_0s) K(get_rows_q4_k) K(get_rows_q5_k)
    K(get_rows_q6_k) K(argmax_f32) K(spin_ns)
    K(gemm_f32_f16) K(gemm_f16_f16) K(gemm_bf16_f16) K(gemm_q4_0_f16) K(gemm_q4_1_f16)
    K(gemm_q5_0_f16) K(gemm_q5_1_f16) K(gemm_q8_0_f16) K(gemm_q4_0s_f16) K(gemm_q8_0s_f16) K(gemm_q4_k_f16) K(gemm_q5_k_f16)
    K(gemm_q6_k_f16)
    K(gemv_q4_0_q8_1) K(gemv_q4_0_q8_1_r2) K(gemv_q4_0_q8_1_u2) K(gemv_q4_0_q8_1_r2_u2) K(gemv_q4_1_q8_1) K(gemv_q4_1_q8_1_r2) K(gemv_q4_1_q8_1_u2) K(gemv_q4_1_q8_1_r2_u2) K(gemv_q5_0_q8_1) K(gemv_q5_0_q8_1_r2) K(gemv_q5_0_q8_1_u2) K(gemv_q5_0_q8_1_r2_u2) K(gemv_q5_1_q8_1) K(gemv_q5_1_q8_1_r2) K(gemv_q5_1_q8_1_u2) K(gemv_q5_1_q8_1_r2_u2) K(gemv_q8_0_q8_1) K(gemv_q8_0_q8_1_r2) K(gemv_q8_0_q8_1_u2) K(gemv_q8_0_q8_1_r2_u2) K(gemv_q4_0s_q8_1) K(gemv_q4_0s_q8_1_r2) K(gemv_q4_0s_q8_1_u2) K(gemv_q4_0s_q8_1_r2_u2) K(gemv_q8_0s_q8_1) K(gemv_q8_0s_q8_1_r2) K(gemv_q8_0s_q8_1_u2) K(gemv_q8_0s_q8_1_r2_u2)
    K(gemv_q4_k_q8_1) K(gemv_q4_k_q8_1_r2) K(gemv_q4_k_q8_1_u2) K(gemv_q4_k_q8_1_r2_u2) K(gemv_q5_k_q8_1) K(gemv_q5_k_q8_1_r2) K(gemv_q5_k_q8_1_u2) K(gemv_q5_k_q8_1_r2_u2) K(gemv_q6_k_q8_1) K(gemv_q6_k_q8_1_r2) K(gemv_q6_k_q8_1_u2) K(gemv_q6_k_q8_1_r2_u2) K(gemv_f32) K(gemv_f16) K(gemv_bf16)
    K(layer_norm_f32) K(rms_norm_f32)
    K(rope_neox_f32)
};

const Entry* find(const char* name) {
    for (const Entry& e : kKernels)
        if (std::strcmp(e.name, name) == 0) return &e;
    return nullptr;
}

}  // namespace

extern "C" int tinygptv_emu_has(const char* name) { return find(name) != nullptr; }

// 0: ran; 1: unknown kernel; 2: the emulator stopped the launch (message in err).
extern "C" int tinygptv_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                   unsigned by, unsigned bz, void** args, char* err, unsigned long err_len) {
    const Entry* e = find(name);
    if (!e) return 1;
    const std::string msg = e->launch(dim3{gx, gy, gz}, dim3{bx, by, bz}, args);
    if (msg.empty()) return 0;
    if (err_len > 0) {
        std::snprintf(err, err_len, "%s: %s", name, msg.c_str());
    }
    return 2;
}
