// Streaming attention-KL: CUDA forward and backward kernels.
//
// For batch b, head h and query row i, over the keys j with mask[b, j] != 0:
//
//   a_j = (q_t,i . k_t,j) * scale_t        b_j = (q_s,i . k_s,j) * scale_s
//   KL_i = sum_j p_j (a_j - b_j) - lse(a) + lse(b),      p = softmax(a)
//
// The conventions are those of the CPU version (src/attention_kl/cpu.rs):
// - keys with mask 0 are excluded from both distributions;
// - padded query rows (mask[b, i] = 0) get KL 0, statistics 0 and zero gradients;
// - a batch item without any valid position gives zeros everywhere, never NaN;
// - inputs are f32, bf16 or f16 (the teacher may be f32 while the student is bf16/f16), all
//   arithmetic is f32, the per-row KL and the statistics are f32, the gradients have the
//   student's dtype (rounded to nearest even, like `half::{bf16,f16}::from_f32`).
//
// Layouts (all contiguous): q_t, k_t [b, h, l, d_t]; q_s, k_s [b, h, l, d_s]; mask u8 [b, l];
// kl f32 [b, h, l]; stats f32 [b, h, l, 4] = (m_a, ln Z_a, m_b, ln Z_b) per row, so that
// lse = m + ln Z and softmax_j = exp((x_j - m) - ln Z) stays accurate for large scores; grad f32
// [b, h, l]; dq, dk [b, h, l, d_s].
//
// Kernels (one thread block of 256 threads each; 1-D grid of (row or key blocks) x (b*h)):
// - akl_fwd_*: a block owns BM = 64 query rows of one (b, h). Q_t, Q_s of those rows stay in
//   shared memory; key tiles of BN = 64 keys of K_t, K_s are streamed through shared memory.
//   Each thread owns 4 rows x 4 keys of the score tile (rows ty + 16i, keys tx + 16j) and keeps
//   its own online state (m_a, Z_a, W, m_b, Z_b) per row over its keys; the 16 threads of a row
//   group merge their states with warp shuffles at the end. Key tiles without a valid key are
//   skipped, masked keys inside a tile contribute exactly 0.
// - akl_bwd_dq_*: a block owns BM query rows, streams key tiles, recomputes the scores,
//   dS = g (softmax(b) - softmax(a)) from the saved statistics, and accumulates
//   dQ_s = scale_s dS K_s in registers.
// - akl_bwd_dk_*: a block owns BN keys, streams query tiles, recomputes the scores and dS, and
//   accumulates dK_s = scale_s dS^T Q_s in registers.
// The split (as in FlashAttention-2) needs no atomics and is deterministic; nothing of size
// l^2 exists anywhere (per block: O((BM + BN) d) shared memory).
//
// Two ways to compute the score tiles, selected per kernel by the shared-memory element type E:
// - E = float (akl_*_<tt>_<ts>, every dtype): tiles converted to f32 in shared memory, each
//   thread computes its 4x4 scores with FMAs on the CUDA cores;
// - E = bf16/f16 (akl_*_tc_<t>, teacher and student of that dtype): tiles kept in their dtype,
//   each warp computes 16x32 of the 64x64 score tiles with tensor cores (wmma 16x16x16, f32
//   accumulation; the products of 16-bit inputs are exact in f32), stores them to shared
//   memory, and each thread reads back its 4x4 scores.
// Everything after the scores (online softmax, dS, the dQ/dK accumulation) is the same f32
// code for both.
//
// Host emulation: with AKL_EMULATE defined this file compiles as plain C++ against
// cuda/emu/emu.h (one OS thread per CUDA thread, barriers for __syncthreads), which is how the
// kernels are checked on machines without a GPU (`cargo xtask kernels`).

#ifdef AKL_EMULATE
#include "emu/emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>
#define AKL_DYN_SMEM(name)                                                                     \
    extern __shared__ __align__(128) unsigned char akl_smem_raw[];                             \
    unsigned char* name = akl_smem_raw
__device__ __forceinline__ unsigned akl_dynamic_smem_size() {
    unsigned r;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
}
#endif

namespace akl {

namespace wmma = nvcuda::wmma;

constexpr int BM = 64;        // query rows per block
constexpr int BN = 64;        // keys per tile
constexpr int NTHREADS = 256; // threads per block: 16 x 16
constexpr int PAD = 4;        // floats of padding per f32 shared-memory row
constexpr int HPAD = 8;       // elements of padding per 16-bit shared-memory row
constexpr int SST = 80;       // row stride (floats) of the tensor-core score tiles
constexpr int DST = 64 + PAD; // row stride (floats) of the dS tiles
constexpr float NEG_INF = -__builtin_huge_valf();

static_assert(BM == 64 && BN == 64 && NTHREADS == 256, "the thread mappings assume 64/64/256");

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float x) {
    return __float2half_rn(x);
}

// x converted to the shared-memory element type E (f32, or the input's own 16-bit type).
template <typename E, typename T> __device__ __forceinline__ E to_smem(T x) {
    if constexpr (sizeof(E) == sizeof(T)) {
        return x;
    } else {
        return to_f32(x);
    }
}

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Row stride (elements) of a shared-memory tile of width d, and how many of its columns are
// filled (the rest is padding, never read):
// - f32 tiles: a multiple of 32 plus PAD, so that float4 reads of 8 consecutive rows by 8
//   threads hit 8 distinct 16-byte bank groups;
// - 16-bit tiles: a multiple of 16 (the wmma k step) plus HPAD.
template <typename E> __host__ __device__ constexpr int tile_width(int d) {
    return sizeof(E) == 4 ? round_up(d > 0 ? d : 1, 32) : round_up(d > 0 ? d : 1, 16);
}
template <typename E> __host__ __device__ constexpr int tile_ld(int width) {
    return width + (sizeof(E) == 4 ? PAD : HPAD);
}

__device__ __forceinline__ float4 ld4(const float* p) {
#ifdef AKL_EMULATE
    emu::check_align(p, 16);
#endif
    return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ void st4(float* p, float4 v) {
#ifdef AKL_EMULATE
    emu::check_align(p, 16);
#endif
    *reinterpret_cast<float4*>(p) = v;
}
// Loads, aligned, N bytes (4, 8 or 16) from p as raw bits.
template <int N> __device__ __forceinline__ void ld_raw(const void* p, void* out) {
#ifdef AKL_EMULATE
    emu::check_align(p, N);
#endif
    if constexpr (N == 4) {
        *reinterpret_cast<unsigned*>(out) = *reinterpret_cast<const unsigned*>(p);
    } else if constexpr (N == 8) {
        *reinterpret_cast<uint2*>(out) = *reinterpret_cast<const uint2*>(p);
    } else {
        *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(p);
    }
}
// Loads N consecutive elements of a shared-memory tile (f32 or 16-bit) as f32.
template <int N, typename E> __device__ __forceinline__ void ld_f32(const E* p, float* out) {
    if constexpr (sizeof(E) == 4) {
        if constexpr (N == 2) {
            float2 t;
            ld_raw<8>(p, &t);
            out[0] = t.x;
            out[1] = t.y;
        } else {
#pragma unroll
            for (int e = 0; e < N; e += 4) {
                const float4 t = ld4(p + e);
                out[e] = t.x;
                out[e + 1] = t.y;
                out[e + 2] = t.z;
                out[e + 3] = t.w;
            }
        }
    } else {
        constexpr int BYTES = N * 2 < 16 ? N * 2 : 16;
#pragma unroll
        for (int e = 0; e < N; e += BYTES / 2) {
            alignas(16) E h[BYTES / 2];
            ld_raw<BYTES>(p + e, h);
#pragma unroll
            for (int k = 0; k < BYTES / 2; ++k) out[e + k] = to_f32(h[k]);
        }
    }
}

// Loads rows `row0 .. row0 + 64` of the row-major [.., d] matrix `src` into the shared tile
// `dst` ([64][ld] of E, the first `width` columns): rows at or past `nrows` (= the rows left
// in the (b, h)) and columns `d .. width` are zero. Called by all threads; no synchronisation.
template <typename E, typename T>
__device__ __forceinline__ void load_tile(E* dst, int ld, int width, const T* src, int row0,
                                          int nrows, int d) {
    constexpr int V = 16 / sizeof(T); // input elements per 16-byte vector
    const int tid = threadIdx.x;
    const bool vec = d % V == 0 && width % V == 0 && (reinterpret_cast<uintptr_t>(src) % 16) == 0;
    if (vec) {
        const int nv = width / V; // vectors per tile row
        for (int idx = tid; idx < 64 * nv; idx += NTHREADS) {
            const int r = idx / nv;
            const int c = (idx - r * nv) * V;
            E* out = dst + r * ld + c;
            alignas(16) T v[V];
            if (r < nrows && c < d) {
                ld_raw<16>(src + (size_t)(row0 + r) * d + c, v);
            } else {
#pragma unroll
                for (int e = 0; e < V; ++e) v[e] = from_f32<T>(0.f);
            }
            if constexpr (sizeof(E) == sizeof(T)) {
#ifdef AKL_EMULATE
                emu::check_align(out, 16);
#endif
                *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(v);
            } else {
#pragma unroll
                for (int e = 0; e < V; e += 4)
                    st4(reinterpret_cast<float*>(out) + e,
                        make_float4(to_f32(v[e]), to_f32(v[e + 1]), to_f32(v[e + 2]),
                                    to_f32(v[e + 3])));
            }
        }
    } else {
        for (int idx = tid; idx < 64 * width; idx += NTHREADS) {
            const int r = idx / width;
            const int c = idx - r * width;
            dst[r * ld + c] = (r < nrows && c < d) ? to_smem<E>(src[(size_t)(row0 + r) * d + c])
                                                   : to_smem<E>(from_f32<T>(0.f));
        }
    }
}

// acc[i][j] = Q[ty + 16 i] . K[tx + 16 j] over the first `dp` (a multiple of 4) columns of the
// f32 shared tiles Q, K ([64][ld]), on the CUDA cores.
__device__ __forceinline__ void dot_tile(float (&acc)[4][4], const float* Q, const float* K,
                                         int ld, int dp, int ty, int tx) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    const float* q = Q + ty * ld;
    const float* k = K + tx * ld;
    for (int c = 0; c < dp; c += 4) {
        float4 qv[4], kv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) qv[i] = ld4(q + i * 16 * ld + c);
#pragma unroll
        for (int j = 0; j < 4; ++j) kv[j] = ld4(k + j * 16 * ld + c);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float s = acc[i][j];
                s = fmaf(qv[i].x, kv[j].x, s);
                s = fmaf(qv[i].y, kv[j].y, s);
                s = fmaf(qv[i].z, kv[j].z, s);
                s = fmaf(qv[i].w, kv[j].w, s);
                acc[i][j] = s;
            }
    }
}

// S = Q K^T for the 16-bit shared tiles Q, K ([64][ld], `dp` a multiple of 16 columns) into
// the f32 shared tile S ([64][SST]), on the tensor cores: warp w computes rows
// 16 (w / 2) .. + 16, columns 32 (w % 2) .. + 32.
template <typename H>
__device__ __forceinline__ void mma_tile(float* S, const H* Q, const H* K, int ld, int dp) {
    const int warp = threadIdx.x / 32;
    const int r0 = (warp / 2) * 16, c0 = (warp % 2) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc0, acc1;
    wmma::fill_fragment(acc0, 0.f);
    wmma::fill_fragment(acc1, 0.f);
    wmma::fragment<wmma::matrix_a, 16, 16, 16, H, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, H, wmma::col_major> b0, b1;
    for (int k = 0; k < dp; k += 16) {
        wmma::load_matrix_sync(a, Q + r0 * ld + k, ld);
        wmma::load_matrix_sync(b0, K + c0 * ld + k, ld);
        wmma::load_matrix_sync(b1, K + (c0 + 16) * ld + k, ld);
        wmma::mma_sync(acc0, a, b0, acc0);
        wmma::mma_sync(acc1, a, b1, acc1);
    }
    wmma::store_matrix_sync(S + r0 * SST + c0, acc0, SST, wmma::mem_row_major);
    wmma::store_matrix_sync(S + r0 * SST + c0 + 16, acc1, SST, wmma::mem_row_major);
}

// This thread's scores (rows ty + 16 i, keys tx + 16 j, unscaled) of the current tiles.
// Tensor-core path: contains a __syncthreads (call from all threads).
template <typename E>
__device__ __forceinline__ void scores(float (&sa)[4][4], float (&sb)[4][4], const E* Qt,
                                       const E* Kt, int lt, int dt, const E* Qs, const E* Ks,
                                       int ls, int ds, float* Sa, float* Sb, int ty, int tx) {
    if constexpr (sizeof(E) == 4) {
        dot_tile(sa, Qt, Kt, lt, round_up(dt, 4), ty, tx);
        dot_tile(sb, Qs, Ks, ls, round_up(ds, 4), ty, tx);
    } else {
        mma_tile(Sa, Qt, Kt, lt, round_up(dt, 16));
        mma_tile(Sb, Qs, Ks, ls, round_up(ds, 16));
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                sa[i][j] = Sa[(ty + 16 * i) * SST + tx + 16 * j];
                sb[i][j] = Sb[(ty + 16 * i) * SST + tx + 16 * j];
            }
    }
}

// e^(m_old - m_new) for a running maximum that moved from m_old to m_new; 0 when there was
// nothing before (m_old = -inf) and 1 when there is still nothing (both -inf).
__device__ __forceinline__ float rescale(float m_old, float m_new) {
    return m_new == NEG_INF ? 1.f : __expf(m_old - m_new);
}

// Merges the online state (m, z) of another, disjoint key set into (m, z); returns the factors
// (s1, s2) that rescale this and the other set's sums to the new maximum.
__device__ __forceinline__ float2 merge(float& m, float& z, float om, float oz) {
    const float mn = fmaxf(m, om);
    const float s1 = m == NEG_INF ? 0.f : __expf(m - mn);
    const float s2 = om == NEG_INF ? 0.f : __expf(om - mn);
    z = z * s1 + oz * s2;
    m = mn;
    return make_float2(s1, s2);
}

// Bump allocator over the dynamic shared memory (every piece 128-byte aligned, as wmma needs 32).
struct Carve {
    unsigned char* p;
    template <typename X> __device__ __forceinline__ X* take(int n) {
        X* r = reinterpret_cast<X*>(p);
        p += round_up(n * (int)sizeof(X), 128);
        return r;
    }
};
__host__ __device__ constexpr size_t carve_bytes(int n, int size) {
    return (size_t)round_up(n * size, 128);
}

// Stops the kernel if the launch gave it less dynamic shared memory than it carves: a
// host/device mismatch of the size formulas must fail loudly, never corrupt memory.
__device__ __forceinline__ void check_smem(size_t needed) {
#ifdef AKL_EMULATE
    if (emu::dynamic_smem_size() < needed) emu::trap("dynamic shared memory too small");
#else
    if (akl_dynamic_smem_size() < needed) __trap();
#endif
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// Shared memory: Qt, Kt [64][lt] E; Qs, Ks [64][ls] E; tensor cores: Sa, Sb [64][SST] f32;
// key flags [64] int.
template <typename E> __host__ __device__ constexpr size_t fwd_smem_bytes(int dt, int ds) {
    return 2 * carve_bytes(64 * tile_ld<E>(tile_width<E>(dt)), sizeof(E)) +
           2 * carve_bytes(64 * tile_ld<E>(tile_width<E>(ds)), sizeof(E)) +
           (sizeof(E) == 4 ? 0 : 2 * carve_bytes(64 * SST, 4)) + carve_bytes(64, 4);
}

template <typename TT, typename TS, typename E>
__device__ __forceinline__ void fwd(const TT* __restrict__ qt, const TT* __restrict__ kt,
                                    const TS* __restrict__ qs, const TS* __restrict__ ks,
                                    const uint8_t* __restrict__ mask, float* __restrict__ kl,
                                    float* __restrict__ stats, int H, int L, int dt, int ds,
                                    float scale_t, float scale_s) {
    AKL_DYN_SMEM(smem);
    check_smem(fwd_smem_bytes<E>(dt, ds));
    const int nrb = (L + BM - 1) / BM;
    const int bh = blockIdx.x / nrb;
    const int row0 = (blockIdx.x - bh * nrb) * BM;
    const int b = bh / H;
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const uint8_t* mk = mask + (size_t)b * L;
    const size_t base = (size_t)bh * L; // first row of this (b, h)
    const int wt = tile_width<E>(dt), ws = tile_width<E>(ds);
    const int lt = tile_ld<E>(wt), ls = tile_ld<E>(ws);
    Carve c{smem};
    E* Qt = c.take<E>(BM * lt);
    E* Kt = c.take<E>(BN * lt);
    E* Qs = c.take<E>(BM * ls);
    E* Ks = c.take<E>(BN * ls);
    float* Sa = sizeof(E) == 4 ? nullptr : c.take<float>(64 * SST);
    float* Sb = sizeof(E) == 4 ? nullptr : c.take<float>(64 * SST);
    int* kflag = c.take<int>(BN);

    const int rvalid = tid < BM && row0 + tid < L && mk[row0 + tid] != 0;
    if (!__syncthreads_or(rvalid)) {
        // No valid query row here: KL and statistics are 0.
        for (int r = tid; r < BM && row0 + r < L; r += NTHREADS) {
            kl[base + row0 + r] = 0.f;
            for (int e = 0; e < 4; ++e) stats[(base + row0 + r) * 4 + e] = 0.f;
        }
        return;
    }
    load_tile(Qt, lt, wt, qt + base * dt, row0, L - row0, dt);
    load_tile(Qs, ls, ws, qs + base * ds, row0, L - row0, ds);

    // Online state of rows ty + 16 i over this thread's keys.
    float m_a[4], z_a[4], w_a[4], m_b[4], z_b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        m_a[i] = NEG_INF;
        m_b[i] = NEG_INF;
        z_a[i] = 0.f;
        w_a[i] = 0.f;
        z_b[i] = 0.f;
    }

    for (int k0 = 0; k0 < L; k0 += BN) {
        __syncthreads(); // the previous tile is consumed
        int f = 0;
        if (tid < BN) {
            f = k0 + tid < L && mk[k0 + tid] != 0;
            kflag[tid] = f;
        }
        if (!__syncthreads_or(f)) continue; // no valid key in this tile
        load_tile(Kt, lt, wt, kt + base * dt, k0, L - k0, dt);
        load_tile(Ks, ls, ws, ks + base * ds, k0, L - k0, ds);
        __syncthreads();
        bool kv[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) kv[j] = kflag[tx + 16 * j] != 0;
        float sa[4][4], sb[4][4];
        scores(sa, sb, Qt, Kt, lt, dt, Qs, Ks, ls, ds, Sa, Sb, ty, tx);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            float ta = NEG_INF, tb = NEG_INF;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                sa[i][j] *= scale_t;
                sb[i][j] *= scale_s;
                if (kv[j]) {
                    ta = fmaxf(ta, sa[i][j]);
                    tb = fmaxf(tb, sb[i][j]);
                }
            }
            const float na = fmaxf(m_a[i], ta), nb = fmaxf(m_b[i], tb);
            const float ra = rescale(m_a[i], na), rb = rescale(m_b[i], nb);
            float za = z_a[i] * ra, wa = w_a[i] * ra, zb = z_b[i] * rb;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (kv[j]) {
                    const float ea = __expf(sa[i][j] - na);
                    za += ea;
                    wa = fmaf(ea, sa[i][j] - sb[i][j], wa);
                    zb += __expf(sb[i][j] - nb);
                }
            }
            m_a[i] = na;
            m_b[i] = nb;
            z_a[i] = za;
            w_a[i] = wa;
            z_b[i] = zb;
        }
    }

    // Merge the 16 partial states of each row (lanes tx = 0..15 of a half-warp).
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int off = 8; off >= 1; off /= 2) {
            const float oma = __shfl_xor_sync(0xffffffffu, m_a[i], off);
            const float oza = __shfl_xor_sync(0xffffffffu, z_a[i], off);
            const float owa = __shfl_xor_sync(0xffffffffu, w_a[i], off);
            const float omb = __shfl_xor_sync(0xffffffffu, m_b[i], off);
            const float ozb = __shfl_xor_sync(0xffffffffu, z_b[i], off);
            const float2 f = merge(m_a[i], z_a[i], oma, oza);
            w_a[i] = w_a[i] * f.x + owa * f.y;
            merge(m_b[i], z_b[i], omb, ozb);
        }
    }
    if (tx == 0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = row0 + ty + 16 * i;
            if (r >= L) continue;
            const size_t o = base + r;
            if (mk[r] != 0) {
                // A valid row has at least one valid key (itself), so Z_a, Z_b >= 1.
                const float lza = logf(z_a[i]), lzb = logf(z_b[i]);
                kl[o] = w_a[i] / z_a[i] - (m_a[i] - m_b[i]) - lza + lzb;
                stats[o * 4 + 0] = m_a[i];
                stats[o * 4 + 1] = lza;
                stats[o * 4 + 2] = m_b[i];
                stats[o * 4 + 3] = lzb;
            } else {
                kl[o] = 0.f;
                for (int e = 0; e < 4; ++e) stats[o * 4 + e] = 0.f;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

// dS = g (softmax(b) - softmax(a)) of one score pair, given the row's statistics.
__device__ __forceinline__ float d_score(float a, float b, float g, float m_a, float lz_a,
                                         float m_b, float lz_b) {
    const float pa = __expf((a - m_a) - lz_a);
    const float pb = __expf((b - m_b) - lz_b);
    return g * (pb - pa);
}

// out[i][e] += A[j][ty*4 + i] * B[j][tx*CPT + e] summed over j < 64, for the f32 shared tile A
// ([64][DST]) and the shared tile B ([64][ld] of E, at least 16*CPT columns).
template <int CPT, typename E>
__device__ __forceinline__ void accumulate(float (&out)[4][CPT], const float* A, const E* B,
                                           int ld, int ty, int tx) {
    static_assert(CPT == 2 || CPT % 4 == 0, "CPT must be 2 or a multiple of 4");
#pragma unroll 4
    for (int j = 0; j < 64; ++j) {
        const float4 a = ld4(A + j * DST + ty * 4);
        const float av[4] = {a.x, a.y, a.z, a.w};
        float bv[CPT];
        ld_f32<CPT>(B + j * ld + tx * CPT, bv);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int e = 0; e < CPT; ++e) out[i][e] = fmaf(av[i], bv[e], out[i][e]);
    }
}

// Writes rows `r0 + ty*4 + i` (< L), columns `tx*CPT + e` (< ds) of `acc * scale` to `out`
// ([.., ds], rows counted from `base`).
template <typename TS, int CPT>
__device__ __forceinline__ void store_rows(TS* out, size_t base, int r0, int L, int ds,
                                           const float (&acc)[4][CPT], float scale, int ty,
                                           int tx) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = r0 + ty * 4 + i;
        if (r >= L) continue;
#pragma unroll
        for (int e = 0; e < CPT; ++e) {
            const int c = tx * CPT + e;
            if (c < ds) out[(base + r) * ds + c] = from_f32<TS>(acc[i][e] * scale);
        }
    }
}

// Shared memory of both backward kernels: Qt, Kt [64][lt] E; Qs, Ks [64][DS + pad] E (DS
// columns filled, for the accumulation); tensor cores: Sa, Sb [64][SST] f32; dS [64][DST] f32;
// flags [64] int; per-row stats [64][4] and g [64] f32.
template <typename E> __host__ __device__ constexpr size_t bwd_smem_bytes(int dt, int DS) {
    return 2 * carve_bytes(64 * tile_ld<E>(tile_width<E>(dt)), sizeof(E)) +
           2 * carve_bytes(64 * tile_ld<E>(DS), sizeof(E)) +
           (sizeof(E) == 4 ? 0 : 2 * carve_bytes(64 * SST, 4)) + carve_bytes(64 * DST, 4) +
           carve_bytes(64, 4) + carve_bytes(64 * 4, 4) + carve_bytes(64, 4);
}

// The shared-memory pieces of a backward kernel, in the order of bwd_smem_bytes.
template <typename E> struct BwdSmem {
    E *Qt, *Kt, *Qs, *Ks;
    float *Sa, *Sb, *dS;
    int* flag;
    float *rstat, *rg;
    __device__ __forceinline__ BwdSmem(unsigned char* smem, int lt, int ls) {
        Carve c{smem};
        Qt = c.take<E>(64 * lt);
        Kt = c.take<E>(64 * lt);
        Qs = c.take<E>(64 * ls);
        Ks = c.take<E>(64 * ls);
        Sa = sizeof(E) == 4 ? nullptr : c.take<float>(64 * SST);
        Sb = sizeof(E) == 4 ? nullptr : c.take<float>(64 * SST);
        dS = c.take<float>(64 * DST);
        flag = c.take<int>(64);
        rstat = c.take<float>(64 * 4);
        rg = c.take<float>(64);
    }
};

// dQ_s for the BM query rows of this block; DS = the smallest of 32, 64, 128 that is >= d_s.
template <typename TT, typename TS, typename E, int DS>
__device__ __forceinline__ void bwd_dq(const TT* __restrict__ qt, const TT* __restrict__ kt,
                                       const TS* __restrict__ qs, const TS* __restrict__ ks,
                                       const uint8_t* __restrict__ mask,
                                       const float* __restrict__ stats,
                                       const float* __restrict__ grad, TS* __restrict__ dq, int H,
                                       int L, int dt, int ds, float scale_t, float scale_s) {
    constexpr int CPT = DS / 16; // output columns per thread
    AKL_DYN_SMEM(smem);
    check_smem(bwd_smem_bytes<E>(dt, DS));
    const int nrb = (L + BM - 1) / BM;
    const int bh = blockIdx.x / nrb;
    const int row0 = (blockIdx.x - bh * nrb) * BM;
    const int b = bh / H;
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const uint8_t* mk = mask + (size_t)b * L;
    const size_t base = (size_t)bh * L;
    const int wt = tile_width<E>(dt), lt = tile_ld<E>(wt), ls = tile_ld<E>(DS);
    const BwdSmem<E> sm(smem, lt, ls);
    float* dSt = sm.dS; // [key][row]
    int* kflag = sm.flag;

    float acc[4][CPT]; // rows ty*4 + i, columns tx*CPT + e
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < CPT; ++e) acc[i][e] = 0.f;

    // Per row of the block: g and the statistics (0 for padded rows).
    const int rvalid = tid < BM && row0 + tid < L && mk[row0 + tid] != 0;
    if (tid < BM) {
        const size_t o = base + row0 + tid;
        sm.rg[tid] = rvalid ? grad[o] : 0.f;
#pragma unroll
        for (int e = 0; e < 4; ++e) sm.rstat[tid * 4 + e] = rvalid ? stats[o * 4 + e] : 0.f;
    }
    if (!__syncthreads_or(rvalid)) {
        store_rows<TS, CPT>(dq, base, row0, L, ds, acc, scale_s, ty, tx);
        return;
    }
    load_tile(sm.Qt, lt, wt, qt + base * dt, row0, L - row0, dt);
    load_tile(sm.Qs, ls, DS, qs + base * ds, row0, L - row0, ds);
    bool rv[4]; // rows ty + 16 i of the score tiles
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = row0 + ty + 16 * i;
        rv[i] = r < L && mk[r] != 0;
    }

    for (int k0 = 0; k0 < L; k0 += BN) {
        __syncthreads();
        int f = 0;
        if (tid < BN) {
            f = k0 + tid < L && mk[k0 + tid] != 0;
            kflag[tid] = f;
        }
        if (!__syncthreads_or(f)) continue;
        load_tile(sm.Kt, lt, wt, kt + base * dt, k0, L - k0, dt);
        load_tile(sm.Ks, ls, DS, ks + base * ds, k0, L - k0, ds);
        __syncthreads();
        float sa[4][4], sb[4][4];
        scores(sa, sb, sm.Qt, sm.Kt, lt, dt, sm.Qs, sm.Ks, ls, ds, sm.Sa, sm.Sb, ty, tx);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = ty + 16 * i;
            const float4 s = ld4(sm.rstat + r * 4);
            const float g = sm.rg[r];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const bool kv = kflag[tx + 16 * j] != 0;
                const float d =
                    (rv[i] && kv)
                        ? d_score(sa[i][j] * scale_t, sb[i][j] * scale_s, g, s.x, s.y, s.z, s.w)
                        : 0.f;
                dSt[(tx + 16 * j) * DST + r] = d;
            }
        }
        __syncthreads();
        accumulate<CPT>(acc, dSt, sm.Ks, ls, ty, tx); // dQ += dS K_s
    }
    store_rows<TS, CPT>(dq, base, row0, L, ds, acc, scale_s, ty, tx);
}

// dK_s for the BN keys of this block.
template <typename TT, typename TS, typename E, int DS>
__device__ __forceinline__ void bwd_dk(const TT* __restrict__ qt, const TT* __restrict__ kt,
                                       const TS* __restrict__ qs, const TS* __restrict__ ks,
                                       const uint8_t* __restrict__ mask,
                                       const float* __restrict__ stats,
                                       const float* __restrict__ grad, TS* __restrict__ dk, int H,
                                       int L, int dt, int ds, float scale_t, float scale_s) {
    constexpr int CPT = DS / 16;
    AKL_DYN_SMEM(smem);
    check_smem(bwd_smem_bytes<E>(dt, DS));
    const int nkb = (L + BN - 1) / BN;
    const int bh = blockIdx.x / nkb;
    const int key0 = (blockIdx.x - bh * nkb) * BN;
    const int b = bh / H;
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const uint8_t* mk = mask + (size_t)b * L;
    const size_t base = (size_t)bh * L;
    const int wt = tile_width<E>(dt), lt = tile_ld<E>(wt), ls = tile_ld<E>(DS);
    const BwdSmem<E> sm(smem, lt, ls);
    float* dS = sm.dS; // [row][key]
    int* rflag = sm.flag;

    float acc[4][CPT]; // keys ty*4 + i, columns tx*CPT + e
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < CPT; ++e) acc[i][e] = 0.f;

    const int kvalid = tid < BN && key0 + tid < L && mk[key0 + tid] != 0;
    if (!__syncthreads_or(kvalid)) {
        store_rows<TS, CPT>(dk, base, key0, L, ds, acc, scale_s, ty, tx);
        return;
    }
    load_tile(sm.Kt, lt, wt, kt + base * dt, key0, L - key0, dt);
    load_tile(sm.Ks, ls, DS, ks + base * ds, key0, L - key0, ds);
    bool kv[4]; // keys tx + 16 j of the score tiles
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int k = key0 + tx + 16 * j;
        kv[j] = k < L && mk[k] != 0;
    }

    for (int q0 = 0; q0 < L; q0 += BM) {
        __syncthreads();
        int f = 0;
        if (tid < BM) {
            const int r = q0 + tid;
            f = r < L && mk[r] != 0;
            rflag[tid] = f;
            sm.rg[tid] = f ? grad[base + r] : 0.f;
#pragma unroll
            for (int e = 0; e < 4; ++e)
                sm.rstat[tid * 4 + e] = f ? stats[(base + r) * 4 + e] : 0.f;
        }
        if (!__syncthreads_or(f)) continue;
        load_tile(sm.Qt, lt, wt, qt + base * dt, q0, L - q0, dt);
        load_tile(sm.Qs, ls, DS, qs + base * ds, q0, L - q0, ds);
        __syncthreads();
        float sa[4][4], sb[4][4]; // rows ty + 16 i, keys tx + 16 j
        scores(sa, sb, sm.Qt, sm.Kt, lt, dt, sm.Qs, sm.Ks, ls, ds, sm.Sa, sm.Sb, ty, tx);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = ty + 16 * i;
            const bool rv = rflag[r] != 0;
            const float4 s = ld4(sm.rstat + r * 4);
            const float g = sm.rg[r];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float d =
                    (rv && kv[j])
                        ? d_score(sa[i][j] * scale_t, sb[i][j] * scale_s, g, s.x, s.y, s.z, s.w)
                        : 0.f;
                dS[r * DST + tx + 16 * j] = d;
            }
        }
        __syncthreads();
        accumulate<CPT>(acc, dS, sm.Qs, ls, ty, tx); // dK += dS^T Q_s
    }
    store_rows<TS, CPT>(dk, base, key0, L, ds, acc, scale_s, ty, tx);
}

} // namespace akl

// ---------------------------------------------------------------------------------------------
// Entry points. CUDA cores, every dtype: akl_fwd_<t>_<t>, akl_bwd_dq_<t>_<t>_<DS>,
// akl_bwd_dk_<t>_<t>_<DS>; tensor cores, bf16 and f16: akl_fwd_tc_<t>, akl_bwd_dq_tc_<t>_<DS>,
// akl_bwd_dk_tc_<t>_<DS>. DS is 32, 64 or 128 (the smallest >= d_s).
// ---------------------------------------------------------------------------------------------

#define AKL_BWD(TT, TS, E, NAME, DS)                                                            \
    extern "C" __global__ void __launch_bounds__(akl::NTHREADS, 2)                              \
        akl_bwd_dq_##NAME##_##DS(const TT* qt, const TT* kt, const TS* qs, const TS* ks,        \
                                 const uint8_t* mask, const float* stats, const float* grad,    \
                                 TS* dq, int H, int L, int dt, int ds, float scale_t,           \
                                 float scale_s) {                                               \
        akl::bwd_dq<TT, TS, E, DS>(qt, kt, qs, ks, mask, stats, grad, dq, H, L, dt, ds,         \
                                   scale_t, scale_s);                                           \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(akl::NTHREADS, 2)                              \
        akl_bwd_dk_##NAME##_##DS(const TT* qt, const TT* kt, const TS* qs, const TS* ks,        \
                                 const uint8_t* mask, const float* stats, const float* grad,    \
                                 TS* dk, int H, int L, int dt, int ds, float scale_t,           \
                                 float scale_s) {                                               \
        akl::bwd_dk<TT, TS, E, DS>(qt, kt, qs, ks, mask, stats, grad, dk, H, L, dt, ds,         \
                                   scale_t, scale_s);                                           \
    }

#define AKL_ALL(TT, TS, E, NAME)                                                                \
    extern "C" __global__ void __launch_bounds__(akl::NTHREADS, 2)                              \
        akl_fwd_##NAME(const TT* qt, const TT* kt, const TS* qs, const TS* ks,                  \
                       const uint8_t* mask, float* kl, float* stats, int H, int L, int dt,      \
                       int ds, float scale_t, float scale_s) {                                  \
        akl::fwd<TT, TS, E>(qt, kt, qs, ks, mask, kl, stats, H, L, dt, ds, scale_t, scale_s);   \
    }                                                                                           \
    AKL_BWD(TT, TS, E, NAME, 32)                                                                \
    AKL_BWD(TT, TS, E, NAME, 64)                                                                \
    AKL_BWD(TT, TS, E, NAME, 128)

// Teacher and student of one dtype; the host converts mixed inputs to f32 first (exact for
// bf16/f16, and the kernels compute in f32 anyway).
AKL_ALL(float, float, float, f32_f32)
AKL_ALL(__nv_bfloat16, __nv_bfloat16, float, bf16_bf16)
AKL_ALL(__half, __half, float, f16_f16)
AKL_ALL(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16, tc_bf16)
AKL_ALL(__half, __half, __half, tc_f16)
