// Host emulation of the CUDA subset used by ../attention_kl.cu, so that the kernels can be
// checked on a machine without a GPU: one OS thread per CUDA thread, a std::barrier per block
// for __syncthreads, a shared buffer for warp shuffles. Blocks run one after the other.
//
// Shared memory is a fresh heap buffer of exactly the requested size, filled with NaNs, so that
// AddressSanitizer catches out-of-bounds accesses and reads of unwritten shared memory show up
// as NaN; ThreadSanitizer (-fsanitize=thread) sees the barriers, so a missing __syncthreads
// shows up as a data race. Vector loads check their alignment.
//
// Not emulated: warp-synchronous execution (nothing here relies on it), bank conflicts, the
// approximate __expf (std::exp is used).
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define AKL_DYN_SMEM(name) float* name = reinterpret_cast<float*>(emu::tl.block->smem)

struct dim3s {
    unsigned x, y, z;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t u = uint32_t(h.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return {uint16_t(0x7fc0)};
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest even
    return {uint16_t(u >> 16)};
}
struct __half {
    _Float16 v;
};
inline float __half2float(__half h) { return float(h.v); }
inline __half __float2half_rn(float f) { return {_Float16(f)}; } // IEEE round to nearest even

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }




inline thread_local dim3s threadIdx;
inline thread_local dim3s blockIdx;

namespace emu {

struct Block {
    std::barrier<>* bar = nullptr;
    unsigned char* smem = nullptr;
    std::atomic<int> orflag[2] = {0, 0};
    std::vector<float> shfl;
};

struct ThreadState {
    Block* block = nullptr;
    unsigned or_calls = 0;
};
inline thread_local ThreadState tl;

inline void check_align(const void* p, uintptr_t n) {
    if (reinterpret_cast<uintptr_t>(p) % n != 0) {
        std::fprintf(stderr, "emu: misaligned %u-byte access at %p\n", unsigned(n), p);
        std::abort();
    }
}

} // namespace emu

inline void __syncthreads() { emu::tl.block->bar->arrive_and_wait(); }

inline int __syncthreads_or(int pred) {
    emu::Block& b = *emu::tl.block;
    // Two flags used alternately: a flag is reset (by thread 0, after everyone read it) before
    // thread 0 reaches the barrier of the next call, which uses the other flag.
    const unsigned gen = emu::tl.or_calls++ & 1u;
    if (pred) b.orflag[gen].store(1);
    __syncthreads();
    const int r = b.orflag[gen].load();
    __syncthreads();
    if (threadIdx.x == 0) b.orflag[gen].store(0);
    return r;
}

inline float __shfl_xor_sync(unsigned /*mask*/, float v, int lane_mask) {
    emu::Block& b = *emu::tl.block;
    const unsigned t = threadIdx.x;
    b.shfl[t] = v;
    __syncthreads();
    const float r = b.shfl[(t & ~31u) | ((t & 31u) ^ unsigned(lane_mask))];
    __syncthreads();
    return r;
}

namespace emu {

// Runs `kernel(args...)` on a 1-D grid of `grid` blocks of `block` threads with `smem` bytes of
// dynamic shared memory.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), unsigned grid, unsigned block, size_t smem, A... args) {
    for (unsigned bid = 0; bid < grid; ++bid) {
        Block blk;
        std::barrier<> bar(block);
        blk.bar = &bar;
        blk.shfl.assign(block, 0.f);
        const size_t bytes = smem > 0 ? smem : 16;
        blk.smem = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t(16)));
        const float nan = std::nanf("");
        for (size_t i = 0; i + 4 <= bytes; i += 4) std::memcpy(blk.smem + i, &nan, 4);
        std::vector<std::thread> threads;
        threads.reserve(block);
        for (unsigned t = 0; t < block; ++t) {
            threads.emplace_back([&, t] {
                threadIdx = {t, 0, 0};
                blockIdx = {bid, 0, 0};
                tl.block = &blk;
                tl.or_calls = 0;
                kernel(args...);
            });
        }
        for (auto& th : threads) th.join();
        ::operator delete(blk.smem, std::align_val_t(16));
    }
}

} // namespace emu
