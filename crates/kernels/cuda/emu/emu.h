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
#define AKL_DYN_SMEM(name) unsigned char* name = emu::tl.block->smem

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
struct alignas(8) uint2 {
    unsigned x, y;
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
    size_t smem_bytes = 0;
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

inline size_t dynamic_smem_size() { return tl.block->smem_bytes; }

[[noreturn]] inline void trap(const char* why) {
    std::fprintf(stderr, "emu: trap: %s\n", why);
    std::abort();
}

inline float to_float(float x) { return x; }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float to_float(__half x) { return __half2float(x); }

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
        blk.smem = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t(128)));
        blk.smem_bytes = smem;
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
        ::operator delete(blk.smem, std::align_val_t(128));
    }
}

} // namespace emu

// The wmma subset used by the kernels, 16x16x16 only. A fragment holds the whole 16x16 tile in
// every thread (the real layout across the warp's registers is opaque, and the kernels only use
// load/mma/store); stores are done by lane 0 of the warp. Pointer alignment (256 bits) and the
// leading-dimension rules are checked.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "emulated: 16x16x16 only");
    float x[256];
};

template <typename F> inline void fill_fragment(F& f, float v) {
    for (float& e : f.x) e = v;
}

template <typename T> inline void check_ldm(const T* p, unsigned ldm) {
    emu::check_align(p, 32);
    if (ldm % (16 / sizeof(T)) != 0) emu::trap("wmma: ldm must be a multiple of 16 bytes");
}

template <typename T>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, row_major>& f, const T* p,
                             unsigned ldm) {
    check_ldm(p, ldm);
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = emu::to_float(p[r * ldm + c]);
}

// matrix_b (K x N) col_major: element (k, n) at p[n * ldm + k].
template <typename T>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, col_major>& f, const T* p,
                             unsigned ldm) {
    check_ldm(p, ldm);
    for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 16; ++n) f.x[k * 16 + n] = emu::to_float(p[n * ldm + k]);
}

template <typename T>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, T, row_major>& a,
                     const fragment<matrix_b, 16, 16, 16, T, col_major>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
    float out[256];
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 16; ++n) {
            float s = c.x[m * 16 + n];
            for (int k = 0; k < 16; ++k) s += a.x[m * 16 + k] * b.x[k * 16 + n];
            out[m * 16 + n] = s;
        }
    std::memcpy(d.x, out, sizeof out);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
    check_ldm(p, ldm);
    if (layout != mem_row_major) emu::trap("wmma: only mem_row_major is emulated");
    if (threadIdx.x % 32 != 0) return;
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) p[r * ldm + c] = f.x[r * 16 + c];
}
} // namespace wmma
} // namespace nvcuda
