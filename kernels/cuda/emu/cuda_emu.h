// A small CUDA execution emulator, so the kernels of kernels/cuda/ can be tested on machines
// without a GPU (tests only; never used for inference).
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread; blocks run one after the
// other. __syncthreads and the warp collectives (shuffles, __syncwarp, the MMA) are barriers
// the scheduler resolves, so barrier-dependent bugs (a missing __syncthreads, a collective some
// lanes skip) show up as wrong results or as a reported deadlock, not as silent luck. Shared
// memory is `static` storage: one block at a time uses it. Warp collectives require all 32
// lanes of a full warp (the kernels never call them otherwise); the emulator aborts the launch
// with a message when that is violated.
//
// The MMA is implemented from the fragment layout documented in common.cuh (the PTX ISA's), so
// the tests check the kernels' tiling against that documented layout.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#define TINYGPTV_EMU 1

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};

namespace emu {

struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    bool done;
    std::vector<char> stack;
};

// Launch state (one launch at a time; the emulator is single-threaded).
inline dim3 g_grid, g_block;
inline uint3 g_block_idx;
inline std::vector<Fiber> g_fibers;
inline Fiber* g_current = nullptr;
inline ucontext_t g_sched;
inline const std::function<void()>* g_body = nullptr;
inline int g_live = 0;
// block barrier
inline unsigned long g_bar_gen = 0;
inline int g_bar_arrived = 0;
// warp barriers and exchange slots
inline std::vector<unsigned long> g_warp_gen;
inline std::vector<int> g_warp_arrived;
inline std::vector<uint64_t> g_slots;          // [warp][lane] one word per lane
inline std::vector<uint32_t> g_mma_slots;      // [warp][lane][10] registers for the MMA
inline unsigned long g_progress = 0;
inline std::string g_error;

[[noreturn]] inline void fail(const std::string& msg) {
    // Unwinding through fibers is not possible: report and leave the launch through the
    // scheduler with the error recorded.
    if (g_error.empty()) g_error = msg;
    g_current->done = true;
    --g_live;
    setcontext(&g_sched);
    std::abort();
}

inline void check_align(const void* p, int n, const char* file, int line) {
    if ((uintptr_t)p % (uintptr_t)n != 0)
        fail(std::string("misaligned ") + std::to_string(n) + "-byte access at " + file + ":" + std::to_string(line));
}

inline void yield() { swapcontext(&g_current->ctx, &g_sched); }

inline int threads_per_block() { return (int)(g_block.x * g_block.y * g_block.z); }

inline int linear_tid() {
    const uint3 t = g_current->tid;
    return (int)(t.x + g_block.x * (t.y + g_block.y * t.z));
}

inline void try_release_block() {
    if (g_bar_arrived > 0 && g_bar_arrived >= g_live) {
        g_bar_arrived = 0;
        ++g_bar_gen;
        ++g_progress;
    }
}

inline void syncthreads() {
    const unsigned long gen = g_bar_gen;
    ++g_bar_arrived;
    ++g_progress;
    try_release_block();
    while (g_bar_gen == gen) yield();
}

inline void check_full_warp(const char* what) {
    if (threads_per_block() % 32 != 0) fail(std::string(what) + " in a block that is not a whole number of warps");
    const int w = linear_tid() / 32;
    for (int l = 0; l < 32; ++l)
        if (g_fibers[w * 32 + l].done) fail(std::string(what) + " after some lanes of the warp exited");
}

inline void warp_barrier(const char* what) {
    check_full_warp(what);
    const int w = linear_tid() / 32;
    const unsigned long gen = g_warp_gen[w];
    ++g_warp_arrived[w];
    ++g_progress;
    if (g_warp_arrived[w] == 32) {
        g_warp_arrived[w] = 0;
        ++g_warp_gen[w];
        return;
    }
    while (g_warp_gen[w] == gen) {
        yield();
        // a lane that exits instead of arriving deadlocks the warp: detect it
        for (int l = 0; l < 32; ++l)
            if (g_fibers[w * 32 + l].done && g_warp_gen[w] == gen) fail(std::string(what) + ": a lane exited");
    }
}

inline void check_mask(unsigned mask, const char* what) {
    if (mask != 0xffffffffu) fail(std::string(what) + " with a partial mask is not emulated");
}

template <class T>
T shfl_idx(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    check_mask(mask, "__shfl_sync");
    const int t = linear_tid();
    const int w = t / 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    g_slots[t] = bits;
    warp_barrier("__shfl_sync");
    T r;
    const uint64_t got = g_slots[w * 32 + (src & 31)];
    std::memcpy(&r, &got, sizeof(T));
    warp_barrier("__shfl_sync");
    return r;
}

inline void fiber_main() {
    (*g_body)();
    g_current->done = true;
    --g_live;
    ++g_progress;
    try_release_block();
    // uc_link returns to the scheduler
}

inline void run_block() {
    const int n = threads_per_block();
    g_live = n;
    g_bar_arrived = 0;
    for (int i = 0; i < n / 32 + 1; ++i) {
        g_warp_arrived[i] = 0;
    }
    for (int i = 0; i < n; ++i) {
        Fiber& f = g_fibers[i];
        f.done = false;
        f.tid = uint3{(unsigned)(i % g_block.x), (unsigned)((i / g_block.x) % g_block.y),
                      (unsigned)(i / (g_block.x * g_block.y))};
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = &g_sched;
        makecontext(&f.ctx, fiber_main, 0);
    }
    for (;;) {
        const unsigned long before = g_progress;
        bool any = false;
        for (int i = 0; i < n; ++i) {
            Fiber& f = g_fibers[i];
            if (f.done) continue;
            any = true;
            g_current = &f;
            swapcontext(&g_sched, &f.ctx);
            if (!g_error.empty()) return;
        }
        if (!any) return;
        if (g_progress == before) {
            g_error = "deadlock: threads wait at barriers that never complete (divergent __syncthreads?)";
            return;
        }
    }
}

// Runs `body` as a kernel over grid × block. Returns "" or the error.
inline std::string launch(dim3 grid, dim3 block, const std::function<void()>& body) {
    const int n = (int)(block.x * block.y * block.z);
    if (n <= 0 || n > 1024) return "block size out of range";
    g_grid = grid;
    g_block = block;
    g_body = &body;
    g_error.clear();
    g_fibers.resize(n);
    for (auto& f : g_fibers)
        if (f.stack.size() != (64 << 10)) f.stack.assign(64 << 10, 0);
    const int nw = n / 32 + 1;
    g_warp_gen.assign(nw, 0);
    g_warp_arrived.assign(nw, 0);
    g_slots.assign((size_t)nw * 32, 0);
    g_mma_slots.assign((size_t)nw * 32 * 10, 0);
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                g_block_idx = uint3{x, y, z};
                run_block();
                if (!g_error.empty()) return g_error;
            }
    return "";
}

inline float h2f(uint16_t h) {
    _Float16 v;
    std::memcpy(&v, &h, 2);
    return (float)v;
}

inline uint16_t f2h(float f) {
    _Float16 v = (_Float16)f;  // round to nearest even
    uint16_t h;
    std::memcpy(&h, &v, 2);
    return h;
}

// D = A·B + C with the PTX m16n8k16 fragment layout (see common.cuh).
inline void mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    check_full_warp("mma");
    const int t = linear_tid();
    const int w = t / 32;
    uint32_t* mine = &g_mma_slots[(size_t)t * 10];
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    for (int i = 0; i < 2; ++i) mine[4 + i] = b[i];
    warp_barrier("mma");
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        const uint32_t* s = &g_mma_slots[((size_t)w * 32 + l) * 10];
        const int g = l >> 2, tg = l & 3;
        for (int r = 0; r < 4; ++r)
            for (int h = 0; h < 2; ++h) {
                const uint16_t bits = (uint16_t)(s[r] >> (16 * h));
                A[g + 8 * (r & 1)][2 * tg + h + 8 * (r >> 1)] = h2f(bits);
            }
        for (int r = 0; r < 2; ++r)
            for (int h = 0; h < 2; ++h) {
                const uint16_t bits = (uint16_t)(s[4 + r] >> (16 * h));
                B[2 * tg + h + 8 * r][g] = h2f(bits);
            }
    }
    warp_barrier("mma");
    const int lane = t & 31;
    const int g = lane >> 2, tg = lane & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >> 1), col = 2 * tg + (i & 1);
        double s = 0.0;  // the hardware's accumulation order is unspecified; sum exactly-ish
        for (int kk = 0; kk < 16; ++kk) s += (double)A[row][kk] * (double)B[kk][col];
        c[i] = (float)((double)c[i] + s);
    }
}

}  // namespace emu

// ---- CUDA C surface used by the kernels ----------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

#define threadIdx (emu::g_current->tid)
#define blockIdx (emu::g_block_idx)
#define blockDim (emu::g_block)
#define gridDim (emu::g_grid)

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::check_mask(mask, "__syncwarp");
    emu::warp_barrier("__syncwarp");
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    (void)width;
    return emu::shfl_idx(mask, v, src);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    (void)width;
    const int lane = emu::linear_tid() & 31;
    // every lane publishes, then reads its partner: a shuffle by index with per-lane sources
    emu::check_mask(mask, "__shfl_xor_sync");
    const int t = emu::linear_tid();
    const int w = t / 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emu::g_slots[t] = bits;
    emu::warp_barrier("__shfl_xor_sync");
    T r;
    const uint64_t got = emu::g_slots[w * 32 + ((lane ^ lane_mask) & 31)];
    std::memcpy(&r, &got, sizeof(T));
    emu::warp_barrier("__shfl_xor_sync");
    return r;
}

inline int __dp4a(int a, int b, int c) {
    int s = c;
    for (int i = 0; i < 4; ++i) s += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return s;
}

inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline float f16_to_f32(unsigned short h) { return emu::h2f(h); }
inline unsigned short f32_to_f16(float f) { return emu::f2h(f); }
inline void mma_m16n8k16_f16(float c[4], const unsigned a[4], const unsigned b[2]) { emu::mma_m16n8k16(c, a, b); }
