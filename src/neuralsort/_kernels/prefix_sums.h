#pragma once

// The O(n) prefix sums in sorted order: A 1 in the forward, J_a^T v in the backward (AVX-512 float:
// combined by rank with gathers), and the dot product of the rows with the scores.

#include "ranking.h"

namespace neuralsort_kernels {

template <typename T>
inline double row_mean(const T* x, int64_t n) {
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) s += static_cast<double>(x[j]);
    return s / static_cast<double>(n);
}

// Inclusive prefix sums, in double, of values[order[r]] over r; returns the total. Four
// segments are summed as independent chains (a single chain waits on every add's latency),
// then offset.
template <typename T>
double sorted_prefix_sums(const T* values, const int64_t* order, int64_t n, double* inclusive) {
    const int64_t q = (n + 3) / 4;
    const int64_t b1 = std::min(q, n), b2 = std::min(2 * q, n), b3 = std::min(3 * q, n);
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    for (int64_t t = 0; t < q; ++t) {
        if (t < b1) inclusive[t] = s0 += static_cast<double>(values[order[t]]);
        if (b1 + t < b2) inclusive[b1 + t] = s1 += static_cast<double>(values[order[b1 + t]]);
        if (b2 + t < b3) inclusive[b2 + t] = s2 += static_cast<double>(values[order[b2 + t]]);
        if (b3 + t < n) inclusive[b3 + t] = s3 += static_cast<double>(values[order[b3 + t]]);
    }
    for (int64_t r = b1; r < b2; ++r) inclusive[r] += s0;
    s1 += s0;
    for (int64_t r = b2; r < b3; ++r) inclusive[r] += s1;
    s2 += s1;
    for (int64_t r = b3; r < n; ++r) inclusive[r] += s2;
    return s2 + s3;
}

#if defined(__AVX512F__)
// The upper 8 lanes of a 16-lane vector (AVX-512F only, no DQ needed).
inline __m256 upper8(__m512 v) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}
inline __m256i upper8(__m512i v) { return _mm512_extracti64x4_epi64(v, 1); }
// Masked 8-lane moves through the 16-lane forms (AVX-512VL's 8-lane ones are not needed).
inline __m256 load8(__mmask8 mask, const float* p) {
    return _mm512_castps512_ps256(_mm512_maskz_loadu_ps(mask, p));
}
inline __m256i load8(__mmask8 mask, const int32_t* p) {
    return _mm512_castsi512_si256(_mm512_maskz_loadu_epi32(mask, p));
}
inline void store8(float* p, __mmask8 mask, __m256 v) {
    _mm512_mask_storeu_ps(p, mask, _mm512_castps256_ps512(v));
}

// Inclusive prefix sums of the 8 lanes of v (three shifted adds).
inline __m512d scan8(__m512d v) {
    const __m512i shift1 = _mm512_set_epi64(6, 5, 4, 3, 2, 1, 0, 0);
    const __m512i shift2 = _mm512_set_epi64(5, 4, 3, 2, 1, 0, 0, 0);
    const __m512i shift4 = _mm512_set_epi64(3, 2, 1, 0, 0, 0, 0, 0);
    v = _mm512_add_pd(v, _mm512_maskz_permutexvar_pd(0xFE, shift1, v));
    v = _mm512_add_pd(v, _mm512_maskz_permutexvar_pd(0xFC, shift2, v));
    return _mm512_add_pd(v, _mm512_maskz_permutexvar_pd(0xF0, shift4, v));
}

// rank_combine for rows of n <= 16 on AVX-512: the whole row in registers, permutes where the
// longer version gathers (a gather's latency is most of the work at this size). The same
// additions in the same order as rank_combine_avx512.
inline void rank_combine_16(const float* values, const float* add, const int64_t* order,
                            const int32_t* rank, int64_t n, double sign, int64_t offset,
                            double scale, float* out) {
    const auto valid = static_cast<__mmask16>((1u << n) - 1);
    const __m512 x = _mm512_maskz_loadu_ps(valid, values);
    const __m512i r = _mm512_maskz_loadu_epi32(valid, rank);
    const __m256i ord_lo = _mm512_cvtepi64_epi32(_mm512_maskz_loadu_epi64(valid & 0xFF, order));
    const __m256i ord_hi = _mm512_cvtepi64_epi32(_mm512_maskz_loadu_epi64(valid >> 8, order + 8));
    const __m512i ord = _mm512_inserti64x4(_mm512_castsi256_si512(ord_lo), ord_hi, 1);
    const __m512 sorted = _mm512_maskz_permutexvar_ps(valid, ord, x);  // 0 past n
    const __m512d lo = scan8(_mm512_cvtps_pd(_mm512_castps512_ps256(sorted)));
    const __m512d carry = _mm512_permutexvar_pd(_mm512_set1_epi64(7), lo);
    const __m512d hi = _mm512_add_pd(scan8(_mm512_cvtps_pd(upper8(sorted))), carry);
    const __m512d total = _mm512_permutexvar_pd(_mm512_set1_epi64(7), hi);
    const __m512 extra = add != nullptr ? _mm512_maskz_loadu_ps(valid, add) : _mm512_setzero_ps();
    const __m512i coef32 = _mm512_add_epi32(_mm512_add_epi32(r, r),
                                            _mm512_set1_epi32(static_cast<int32_t>(offset - n)));
    const auto half = [&](int h) {  // elements 8h .. 8h + 7
        const __m512i rh = _mm512_cvtepi32_epi64(h == 0 ? _mm512_castsi512_si256(r) : upper8(r));
        const __m512d inc = _mm512_permutex2var_pd(lo, rh, hi);
        const __m256i ch = h == 0 ? _mm512_castsi512_si256(coef32) : upper8(coef32);
        const __m256 xh = h == 0 ? _mm512_castps512_ps256(x) : upper8(x);
        const __m256 eh = h == 0 ? _mm512_castps512_ps256(extra) : upper8(extra);
        const __m512d rest = _mm512_fnmadd_pd(_mm512_set1_pd(2.0), inc, total);  // total - 2 inc
        __m512d t = _mm512_fmadd_pd(_mm512_cvtepi32_pd(ch), _mm512_cvtps_pd(xh),
                                    _mm512_mul_pd(_mm512_set1_pd(sign), rest));
        if (add != nullptr) t = _mm512_add_pd(t, _mm512_cvtps_pd(eh));
        return _mm512_cvtpd_ps(_mm512_mul_pd(t, _mm512_set1_pd(scale)));
    };
    store8(out, static_cast<__mmask8>(valid), half(0));
    if (n > 8) store8(out + 8, static_cast<__mmask8>(valid >> 8), half(1));
}

// rank_combine for float on AVX-512, 8 elements at a time. In rank order: gathers, an
// in-register scan (three shifted adds) carried across blocks. Then in element order (plain
// loads and stores): each element's prefix sum gathered by its rank.
inline void rank_combine_avx512(const float* values, const float* add, const int64_t* order,
                                const int32_t* rank, int64_t n, double sign, int64_t offset,
                                double scale, double* inclusive, float* out) {
    if (n <= 16) return rank_combine_16(values, add, order, rank, n, sign, offset, scale, out);
    const auto block_mask = [n](int64_t r0) {
        return static_cast<__mmask8>(n - r0 >= 8 ? 0xFF : (1u << (n - r0)) - 1);
    };
    __m512d carry = _mm512_setzero_pd();  // the running total in every lane
    for (int64_t r0 = 0; r0 < n; r0 += 8) {
        const __mmask8 mask = block_mask(r0);
        const __m512i idx = _mm512_maskz_loadu_epi64(mask, order + r0);
        const __m512d v =
            _mm512_cvtps_pd(_mm512_mask_i64gather_ps(_mm256_setzero_ps(), mask, idx, values, 4));
        // masked-out lanes gathered 0, so lane 7 is the total
        const __m512d s = _mm512_add_pd(scan8(v), carry);
        _mm512_mask_storeu_pd(inclusive + r0, mask, s);
        carry = _mm512_permutexvar_pd(_mm512_set1_epi64(7), s);
    }
    const __m512d total = carry, two = _mm512_set1_pd(2.0), sgn = _mm512_set1_pd(sign);
    const __m512d sc = _mm512_set1_pd(scale);
    const __m256i rank_offset = _mm256_set1_epi32(static_cast<int32_t>(offset - n));
    for (int64_t j0 = 0; j0 < n; j0 += 8) {
        const __mmask8 mask = block_mask(j0);
        const __m256i r = load8(mask, rank + j0);
        const __m512d inc = _mm512_mask_i32gather_pd(_mm512_setzero_pd(), mask, r, inclusive, 8);
        const __m512d v = _mm512_cvtps_pd(load8(mask, values + j0));
        const __m512d coef =
            _mm512_cvtepi32_pd(_mm256_add_epi32(_mm256_add_epi32(r, r), rank_offset));
        __m512d t = _mm512_fmadd_pd(coef, v, _mm512_mul_pd(sgn, _mm512_fnmadd_pd(two, inc, total)));
        if (add != nullptr) t = _mm512_add_pd(t, _mm512_cvtps_pd(load8(mask, add + j0)));
        store8(out + j0, mask, _mm512_cvtpd_ps(_mm512_mul_pd(t, sc)));
    }
}
#endif

// The O(n) step shared by forward (a = A 1) and backward (J_a^T v): with the values in
// ascending order of the scores, v_r = values[order[r]], and their inclusive prefix sums inc_r
// (in double: cancellation when |x| is large), for the element j of rank r (rank[j] = r,
// order[r] = j)
//     out[j] = (add[j] + sign (total - 2 inc_r) + (2r - n + offset) values[j]) * scale
// (add may be null). `inclusive` holds n doubles; `rank` is read only if kCombinesByRank<T>.
template <typename T>
void rank_combine(const T* values, const T* add, const int64_t* order, const int32_t* rank,
                  int64_t n, double sign, int64_t offset, double scale, double* inclusive,
                  T* out) {
    if constexpr (kCombinesByRank<T>) {
#if defined(__AVX512F__)
        return rank_combine_avx512(values, add, order, rank, n, sign, offset, scale, inclusive,
                                   out);
#endif
    }
    const double total = sorted_prefix_sums(values, order, n, inclusive);
    for (int64_t r = 0; r < n; ++r) {
        const int64_t j = order[r];
        double t = sign * (total - 2.0 * inclusive[r]) +
                   static_cast<double>(2 * r - n + offset) * static_cast<double>(values[j]);
        if (add != nullptr) t += static_cast<double>(add[j]);
        out[j] = static_cast<T>(t * scale);
    }
}

}  // namespace neuralsort_kernels
