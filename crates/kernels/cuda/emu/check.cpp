// Host check of the attention-KL CUDA kernels under emulation (emu.h): runs the forward and
// both backward kernels on random problems (masks of every kind, d_t != d_s, multi-tile
// lengths, unaligned head dims, every dtype) and compares them with a double-precision
// reference that materialises the scores. Built and run by `cargo xtask kernels`:
//
//   g++ -std=c++20 -O1 -g -fno-strict-aliasing -DAKL_EMULATE -pthread \
//       [-fsanitize=address,undefined | -fsanitize=thread] check.cpp -o check && ./check
//
// Exit status 0 when every case is within tolerance.
#include "../attention_kl.cu"

#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <limits>
#include <random>
#include <string>

namespace {

struct Problem {
    int b, h, l, dt, ds;
};

template <typename T> T cvt(float x);
template <> float cvt<float>(float x) { return x; }
template <> __nv_bfloat16 cvt<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __half cvt<__half>(float x) { return __float2half_rn(x); }
float back(float x) { return x; }
float back(__nv_bfloat16 x) { return __bfloat162float(x); }
float back(__half x) { return __half2float(x); }

struct Reference {
    std::vector<double> kl, lse_a, lse_b, dq, dk;
};

// KL per row and gradients of sum_i g_i KL_i, in double, materialising the scores.
Reference reference(const Problem& p, const std::vector<double>& qt, const std::vector<double>& kt,
                    const std::vector<double>& qs, const std::vector<double>& ks,
                    const std::vector<uint8_t>& mask, const std::vector<float>& grad,
                    double scale_t, double scale_s) {
    Reference r;
    const size_t rows = size_t(p.b) * p.h * p.l;
    r.kl.assign(rows, 0.0);
    r.lse_a.assign(rows, 0.0);
    r.lse_b.assign(rows, 0.0);
    r.dq.assign(rows * p.ds, 0.0);
    r.dk.assign(rows * p.ds, 0.0);
    std::vector<double> a(p.l), s(p.l);
    for (int bi = 0; bi < p.b; ++bi)
        for (int hi = 0; hi < p.h; ++hi) {
            const size_t base = (size_t(bi) * p.h + hi) * p.l;
            for (int i = 0; i < p.l; ++i) {
                if (!mask[size_t(bi) * p.l + i]) continue;
                double ma = -1e300, mb = -1e300;
                for (int j = 0; j < p.l; ++j) {
                    if (!mask[size_t(bi) * p.l + j]) continue;
                    double x = 0, y = 0;
                    for (int e = 0; e < p.dt; ++e)
                        x += qt[(base + i) * p.dt + e] * kt[(base + j) * p.dt + e];
                    for (int e = 0; e < p.ds; ++e)
                        y += qs[(base + i) * p.ds + e] * ks[(base + j) * p.ds + e];
                    a[j] = x * scale_t;
                    s[j] = y * scale_s;
                    ma = std::max(ma, a[j]);
                    mb = std::max(mb, s[j]);
                }
                double za = 0, zb = 0;
                for (int j = 0; j < p.l; ++j) {
                    if (!mask[size_t(bi) * p.l + j]) continue;
                    za += std::exp(a[j] - ma);
                    zb += std::exp(s[j] - mb);
                }
                const double la = ma + std::log(za), lb = mb + std::log(zb);
                double kl = 0;
                const double g = grad[base + i];
                for (int j = 0; j < p.l; ++j) {
                    if (!mask[size_t(bi) * p.l + j]) continue;
                    const double pa = std::exp(a[j] - la), pb = std::exp(s[j] - lb);
                    kl += pa * ((a[j] - la) - (s[j] - lb));
                    const double d = g * (pb - pa) * scale_s;
                    for (int e = 0; e < p.ds; ++e) {
                        r.dq[(base + i) * p.ds + e] += d * ks[(base + j) * p.ds + e];
                        r.dk[(base + j) * p.ds + e] += d * qs[(base + i) * p.ds + e];
                    }
                }
                r.kl[base + i] = kl;
                r.lse_a[base + i] = la;
                r.lse_b[base + i] = lb;
            }
        }
    return r;
}


int failures = 0;

void expect_close(const char* what, const std::string& tag, const std::vector<double>& want,
                  const std::vector<float>& got, double atol, double rtol) {
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double err = std::fabs(want[i] - double(got[i]));
        const double lim = atol + rtol * std::fabs(want[i]);
        if (!(err <= lim)) {
            if (!(err / lim <= worst)) {
                worst = std::isnan(err) ? std::numeric_limits<double>::infinity() : err / lim;
                at = i;
            }
        }
    }
    if (worst > 0) {
        ++failures;
        std::printf("FAIL %s %s: element %zu want %.8g got %.8g (%.3g x tolerance)\n", what,
                    tag.c_str(), at, want[at], double(got[at]), worst);
    }
}

// One set of kernels (CUDA-core or tensor-core) for one dtype.
template <typename T> struct Kernels {
    using Fwd = void (*)(const T*, const T*, const T*, const T*, const uint8_t*, float*, float*,
                         int, int, int, int, float, float);
    using Bwd = void (*)(const T*, const T*, const T*, const T*, const uint8_t*, const float*,
                         const float*, T*, int, int, int, int, float, float);
    const char* name;
    Fwd fwd;
    Bwd dq[3], dk[3]; // DS = 32, 64, 128
    size_t (*fwd_smem)(int, int);
    size_t (*bwd_smem)(int, int);
};

#define AKL_KERNELS(T, E, NAME)                                                                 \
    Kernels<T> {                                                                                \
        #NAME, akl_fwd_##NAME, {akl_bwd_dq_##NAME##_32, akl_bwd_dq_##NAME##_64,                 \
                                akl_bwd_dq_##NAME##_128},                                       \
            {akl_bwd_dk_##NAME##_32, akl_bwd_dk_##NAME##_64, akl_bwd_dk_##NAME##_128},          \
            &akl::fwd_smem_bytes<E>, &akl::bwd_smem_bytes<E>                                    \
    }

template <typename T>
void run_fwd(const Kernels<T>& k, const Problem& p, const std::vector<T>& qt,
             const std::vector<T>& kt, const std::vector<T>& qs, const std::vector<T>& ks,
             const std::vector<uint8_t>& mask, std::vector<float>& kl, std::vector<float>& stats,
             float st, float ss) {
    const unsigned n = unsigned(p.b * p.h * ((p.l + 63) / 64));
    emu::launch(k.fwd, n, 256, k.fwd_smem(p.dt, p.ds), qt.data(), kt.data(), qs.data(),
                ks.data(), mask.data(), kl.data(), stats.data(), p.h, p.l, p.dt, p.ds, st, ss);
}

template <typename T>
void run_bwd(const Kernels<T>& k, const Problem& p, const std::vector<T>& qt,
             const std::vector<T>& kt, const std::vector<T>& qs, const std::vector<T>& ks,
             const std::vector<uint8_t>& mask, const std::vector<float>& stats,
             const std::vector<float>& grad, std::vector<T>& dq, std::vector<T>& dk, float st,
             float ss) {
    const int i = p.ds <= 32 ? 0 : p.ds <= 64 ? 1 : 2;
    const int DS = 32 << i;
    const unsigned n = unsigned(p.b * p.h * ((p.l + 63) / 64));
    const size_t sm = k.bwd_smem(p.dt, DS);
    emu::launch(k.dq[i], n, 256, sm, qt.data(), kt.data(), qs.data(), ks.data(), mask.data(),
                stats.data(), grad.data(), dq.data(), p.h, p.l, p.dt, p.ds, st, ss);
    emu::launch(k.dk[i], n, 256, sm, qt.data(), kt.data(), qs.data(), ks.data(), mask.data(),
                stats.data(), grad.data(), dk.data(), p.h, p.l, p.dt, p.ds, st, ss);
}

// Mask kinds per batch item: 0 all valid, 1 random, 2 prefix, 3 all padded, 4 suffix.
std::vector<uint8_t> make_mask(std::mt19937_64& rng, const Problem& p, const std::vector<int>& kinds) {
    std::vector<uint8_t> m(size_t(p.b) * p.l, 1);
    for (int bi = 0; bi < p.b; ++bi) {
        const int kind = kinds[bi % kinds.size()];
        const int cut = p.l > 0 ? int(1 + rng() % p.l) : 0;
        for (int j = 0; j < p.l; ++j) {
            uint8_t v = 1;
            if (kind == 1) v = rng() % 3 != 0;
            if (kind == 2) v = j < cut;
            if (kind == 3) v = 0;
            if (kind == 4) v = j >= p.l - cut;
            m[size_t(bi) * p.l + j] = v;
        }
    }
    return m;
}

template <typename T>
void check(const Kernels<T>& kern, const Problem& p, const std::vector<int>& mask_kinds,
           double std_t, double std_s, uint64_t seed, double tol) {
    const char* dtype = kern.name;
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    const size_t rows = size_t(p.b) * p.h * p.l;
    auto gen = [&](size_t n, double sd, std::vector<T>& v, std::vector<double>& d) {
        v.resize(n);
        d.resize(n);
        for (size_t i = 0; i < n; ++i) {
            v[i] = cvt<T>(float(nd(rng) * sd));
            d[i] = back(v[i]);
        }
    };
    std::vector<T> qt, kt, qs, ks;
    std::vector<double> dqt, dkt, dqs, dks;
    gen(rows * p.dt, std_t, qt, dqt);
    gen(rows * p.dt, std_t, kt, dkt);
    gen(rows * p.ds, std_s, qs, dqs);
    gen(rows * p.ds, std_s, ks, dks);
    const auto mask = make_mask(rng, p, mask_kinds);
    std::vector<float> grad(rows);
    for (auto& g : grad) g = nd(rng);
    const float st = 1.f / std::sqrt(float(p.dt)), ss = 1.f / std::sqrt(float(p.ds));

    // Outputs start as NaN: every element must be written.
    const float nan = std::nanf("");
    std::vector<float> kl(rows, nan), stats(rows * 4, nan);
    run_fwd(kern, p, qt, kt, qs, ks, mask, kl, stats, st, ss);
    std::vector<T> dq(rows * p.ds, cvt<T>(nan)), dk(rows * p.ds, cvt<T>(nan));
    run_bwd(kern, p, qt, kt, qs, ks, mask, stats, grad, dq, dk, st, ss);

    const Reference r = reference(p, dqt, dkt, dqs, dks, mask, grad, st, ss);
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s b=%d h=%d l=%d dt=%d ds=%d seed=%" PRIu64, dtype, p.b, p.h,
                  p.l, p.dt, p.ds, seed);
    const std::string tag(buf);
    std::vector<float> lse_a(rows), lse_b(rows), gq(rows * p.ds), gk(rows * p.ds);
    for (size_t i = 0; i < rows; ++i) {
        lse_a[i] = stats[i * 4] + stats[i * 4 + 1];
        lse_b[i] = stats[i * 4 + 2] + stats[i * 4 + 3];
    }
    for (size_t i = 0; i < gq.size(); ++i) {
        gq[i] = back(dq[i]);
        gk[i] = back(dk[i]);
    }
    // Gradients are compared against their scale (largest magnitude), like the Rust tests.
    double gmax = 1e-30;
    for (double x : r.dq) gmax = std::max(gmax, std::fabs(x));
    for (double x : r.dk) gmax = std::max(gmax, std::fabs(x));
    expect_close("kl", tag, r.kl, kl, 1e-5, 1e-4);
    expect_close("lse_a", tag, r.lse_a, lse_a, 1e-5, 1e-5);
    expect_close("lse_b", tag, r.lse_b, lse_b, 1e-5, 1e-5);
    expect_close("dq", tag, r.dq, gq, tol * gmax, tol);
    expect_close("dk", tag, r.dk, gk, tol * gmax, tol);
    // Padded rows: exactly zero KL, statistics and dQ; masked keys: exactly zero dK.
    for (int bi = 0; bi < p.b; ++bi)
        for (int hi = 0; hi < p.h; ++hi)
            for (int i = 0; i < p.l; ++i) {
                if (mask[size_t(bi) * p.l + i]) continue;
                const size_t o = (size_t(bi) * p.h + hi) * p.l + i;
                bool zero = kl[o] == 0.f;
                for (int e = 0; e < 4; ++e) zero = zero && stats[o * 4 + e] == 0.f;
                for (int e = 0; e < p.ds; ++e)
                    zero = zero && gq[o * p.ds + e] == 0.f && gk[o * p.ds + e] == 0.f;
                if (!zero) {
                    ++failures;
                    std::printf("FAIL padded row %zu not zero: %s\n", o, tag.c_str());
                    return;
                }
            }
    std::printf("ok   %s\n", tag.c_str());
}

} // namespace

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    struct Case {
        Problem p;
        std::vector<int> masks;
    };
    std::vector<Case> cases = {
        {{1, 1, 1, 1, 1}, {0}},
        {{2, 2, 5, 8, 4}, {0, 1}},
        {{3, 2, 64, 64, 64}, {0, 2, 3}},
        {{2, 2, 130, 20, 36}, {1, 4}},    // odd dims (scalar loads), three tiles
        {{2, 1, 67, 33, 17}, {2, 1}},     // d_t, d_s not multiples of 4 / 8
        {{1, 2, 100, 128, 128}, {1}},     // largest dims
        {{2, 1, 150, 64, 96}, {3, 1}},    // DS = 128 with d_s < 128; one batch all padded
        {{1, 1, 129, 16, 32}, {4, 0}},    // a suffix mask: leading tiles skipped
    };
    if (quick) cases.resize(4);
    const auto f32 = AKL_KERNELS(float, float, f32_f32);
    const auto bf16 = AKL_KERNELS(__nv_bfloat16, float, bf16_bf16);
    const auto f16 = AKL_KERNELS(__half, float, f16_f16);
    const auto tc_bf16 = AKL_KERNELS(__nv_bfloat16, __nv_bfloat16, tc_bf16);
    const auto tc_f16 = AKL_KERNELS(__half, __half, tc_f16);
    uint64_t seed = 1;
    for (const auto& c : cases) {
        check(f32, c.p, c.masks, 1.0, 1.0, seed++, 2e-4);
        check(bf16, c.p, c.masks, 1.0, 1.0, seed, 2e-2);
        check(tc_bf16, c.p, c.masks, 1.0, 1.0, seed++, 2e-2);
        check(f16, c.p, c.masks, 1.0, 1.0, seed, 2e-3);
        check(tc_f16, c.p, c.masks, 1.0, 1.0, seed++, 2e-3);
    }
    // Large scores (peaked softmaxes): stats must keep the exponentials in range.
    check(f32, {2, 2, 70, 32, 32}, {0, 1}, 4.0, 4.0, 99, 1e-3);
    check(tc_bf16, {2, 2, 70, 32, 32}, {0, 1}, 4.0, 4.0, 99, 2e-2);
    if (failures) {
        std::printf("%d failure(s)\n", failures);
        return 1;
    }
    std::printf("all emulated kernel checks passed\n");
    return 0;
}
