#pragma once

// Single precision vectors as wide as the target's registers (GCC/Clang vector extensions: 16
// lanes with AVX-512, 8 with AVX, 4 otherwise), their loads, stores, fused multiply-add, clamp,
// lane sums and exp (range reduction by ln 2, degree-7 Taylor polynomial, relative error < 2e-7),
// and the exp limits every kernel uses.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX__) || defined(__SSE2__)
#include <immintrin.h>
#endif

namespace neuralsort_kernels {

// exp's argument is clamped to [-floor, ceiling]: below, the probabilities are floored at a normal
// number (subnormals slow CPUs several-fold; the dense operator takes its floor from Python,
// neuralsort._rows.LOGIT_RANGE, 64 for float and 600 for double, as the windows here do);
// above, only a logit that rounding put over the row's peak is capped.
constexpr float kExpFloorFloat = 64.0f;
constexpr float kExpCeilingFloat = 80.0f;
constexpr double kExpCeilingDouble = 700.0;


#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#elif defined(__AVX__)
constexpr int64_t kLanes = 8;
#else
constexpr int64_t kLanes = 4;
#endif
// rows of up to this many vectors are kept in registers (32 vector registers with AVX-512 and
// on AArch64, 16 on other x86 targets)
#if defined(__AVX512F__) || defined(__aarch64__)
constexpr int64_t kRegisterVectors = 8;
#else
constexpr int64_t kRegisterVectors = 4;
#endif
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

// Broadcast and whole-vector load for any vector type V of elements S (float vf here, the
// windowed kernels' half-width double vectors too). x - 0 is x for every x, -0 included, so
// this is a plain broadcast; 0 + x would not be.
template <typename V, typename S>
inline V splat_as(S x) { return x - V{}; }
template <typename V, typename S>
inline V load_as(const S* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
inline vf splat(float x) { return splat_as<vf>(x); }
inline vf load(const float* p) { return load_as<vf>(p); }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
// The first `count` (1..kLanes) lanes only: the others load as 0 / are not written. Nothing
// past p + count is touched (masked moves do not fault there).
#if defined(__AVX2__) && !defined(__AVX512F__)
inline __m256i first_lanes(int64_t count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(count)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif
inline vf load_first(const float* p, int64_t count) {
#if defined(__AVX512F__)
    return (vf)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p);
#elif defined(__AVX2__)
    return (vf)_mm256_maskload_ps(p, first_lanes(count));
#else
    vf v = {};
    std::memcpy(&v, p, static_cast<size_t>(count) * sizeof(float));
    return v;
#endif
}
inline void store_first(float* p, vf v, int64_t count) {
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1), (__m512)v);
#elif defined(__AVX2__)
    _mm256_maskstore_ps(p, first_lanes(count), (__m256)v);
#else
    std::memcpy(p, &v, static_cast<size_t>(count) * sizeof(float));
#endif
}
// the first `count` lanes of p (all of them when count == kLanes; the rest load as 0 and are
// not written)
inline vf load_part(const float* p, int64_t count) {
    return count == kLanes ? load(p) : load_first(p, count);
}
inline void store_part(float* p, vf v, int64_t count) {
    if (count == kLanes) store(p, v); else store_first(p, v, count);
}
// a * b + c rounded once, as the PyTorch path's addcmul computes the logits (its kernels fuse
// the multiply and add where the CPU can): the logits' rounding is most of the float32 error of
// P and of its tau gradient, and rounding the product first would add an error of size |a b|,
// far above the logit's own. Builds without FMA (plain x86-64, SSE2) compute it in double.
inline vf fmadd(vf a, vf b, vf c) {
#if defined(__AVX512F__)
    return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
    return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    typedef double vd __attribute__((vector_size(kLanes * sizeof(double))));
    const vd r = __builtin_convertvector(a, vd) * __builtin_convertvector(b, vd) +
                 __builtin_convertvector(c, vd);
    return __builtin_convertvector(r, vf);
#endif
}
inline vf select(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }
inline vf clamp(vf t, float lo, float hi) {
    // one instruction a side where there is one (a NaN t, which only inf - inf can make,
    // gives lo there and stays NaN in the generic version)
#if defined(__AVX512F__)
    return (vf)_mm512_min_ps(_mm512_max_ps((__m512)t, _mm512_set1_ps(lo)), _mm512_set1_ps(hi));
#elif defined(__AVX__)
    return (vf)_mm256_min_ps(_mm256_max_ps((__m256)t, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
#elif defined(__SSE2__)
    return (vf)_mm_min_ps(_mm_max_ps((__m128)t, _mm_set1_ps(lo)), _mm_set1_ps(hi));
#else
    t = select(t < splat(lo), splat(lo), t);
    return select(t > splat(hi), splat(hi), t);
#endif
}
// Sum of the lanes as a tree (log2(lanes) steps, not a chain of dependent adds): the upper half
// added to the lower until four lanes are left, then (q0 + q2) + (q1 + q3).
template <typename S, typename V>
inline S lane_sum(V v) {
    constexpr int lanes = static_cast<int>(sizeof(V) / sizeof(S));
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
    typedef S v8 __attribute__((vector_size(8 * sizeof(S))));
    typedef S v4 __attribute__((vector_size(4 * sizeof(S))));
    if constexpr (lanes == 16) {
        return lane_sum<S>(v8(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                              __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15)));
    } else if constexpr (lanes == 8) {
        return lane_sum<S>(v4(__builtin_shufflevector(v, v, 0, 1, 2, 3) +
                              __builtin_shufflevector(v, v, 4, 5, 6, 7)));
    } else if constexpr (lanes == 4) {
        return (v[0] + v[2]) + (v[1] + v[3]);
    }
#endif
    S values[lanes];
    std::memcpy(values, &v, sizeof(values));
    for (int w = lanes / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) values[l] += values[l + w];
    return values[0];
}

// exp(t) for t in [-88, 88]: t = k ln2 + r with |r| <= ln2 / 2, exp(r) by Horner, 2^k from
// the exponent bits (AVX-512: scalef).
inline vf vexp(vf t) {
#if defined(__AVX512F__)
    // round to nearest even and scale by 2^k in one instruction each (same results)
    const vf k = (vf)_mm512_roundscale_ps((__m512)(t * 1.44269504088896341f),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    const vf k = (t * 1.44269504088896341f + magic) - magic;
#endif
    vf r = t - k * 0.693145751953125f;    // ln 2 split so that k * ln2_hi is exact
    r = r - k * 1.428606765330187045e-06f;
    vf p = splat(1.0f / 5040.0f);
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
#if defined(__AVX512F__)
    return (vf)_mm512_scalef_ps((__m512)p, (__m512)k);
#else
    const vi bits = (__builtin_convertvector(k, vi) + 127) << 23;
    return p * (vf)bits;
#endif
}


template <typename T>
void fill_nan(T* ptr, int64_t count) {
    std::fill(ptr, ptr + count, std::numeric_limits<T>::quiet_NaN());
}

// Rows of up to kRegisterVectors vectors (n <= 128 with AVX-512) fit in registers: calls
// fn(integral_constant<int, V>) with V = ceil(n / kLanes) and returns true for those n, false
// for longer rows.
template <int V = 1, typename F>
bool in_registers(int64_t n, F&& fn) {
    // only V <= kRegisterVectors is instantiated (builds with 16 registers have no use for more)
    if constexpr (V > kRegisterVectors) {
        return false;
    } else {
        if ((n + kLanes - 1) / kLanes == V) {
            fn(std::integral_constant<int, V>{});
            return true;
        }
        return in_registers<V + 1>(n, std::forward<F>(fn));
    }
}

}  // namespace neuralsort_kernels
