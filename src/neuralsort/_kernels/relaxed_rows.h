#pragma once

// Fused CPU kernels for NeuralSort's relaxed permutation rows (forward and backward), per batch
// element; extension.cpp runs them over the batch and registers them as a torch operator.
//
// For one batch element with scores x (length n) and a_j = sum_k |x_j - x_k| (the row sums A 1
// of the matrix of absolute differences), row i of the relaxed permutation is
//
//     P[i, j] = softmax_j((coef_i * x_j - a_j) / tau),
//
// its logits taken relative to the element the row peaks at (RowSetup).
// forward: the stable ascending order of x (float: pairwise ranks in registers, counting, or a
// radix sort, by length) gives a by prefix sums;
// every row is built, exponentiated and normalised while it sits in L1 (or in registers), so
// the (m, n) output is written once and no logits tensor exists.
// backward: with G the upstream gradient, the softmax backward L[i, j] = P (G - <G_i, P_i>) is
// reduced on the fly to u_j = sum_i coef_i L[i, j] and v_j = -sum_i L[i, j]; the gradient of the
// scores is (u + J_a^T v) / tau, J_a^T v by prefix sums in sorted order. Nothing of size (m, n)
// is written.
//
// No torch types here: plain arrays in, plain arrays out. Single precision is written with
// GCC/Clang vector extensions as wide as the target's registers (16 lanes with AVX-512, 8 with
// AVX, 4 otherwise: SSE2 or NEON; wider ones would be split by the compiler through the stack,
// several times slower) and its own exp: range reduction by ln 2, degree-7 Taylor polynomial,
// relative error < 2e-7. A few steps have AVX-512 / AVX2 versions (masked loads and stores,
// min/max clamps, the ranking, the rank-order prefix sums, exp's rounding and scaling). Double
// precision (used for gradient checks more than for speed) is plain scalar code with std::exp
// and std::sort.

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

// ------------------------------------------------------------------------------------------
// single precision: vectors of kLanes floats
// ------------------------------------------------------------------------------------------

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

// (x - 0 is x for every x, -0 included, so this is a plain broadcast; 0 + x would not be)
inline vf splat(float x) { return x - vf{}; }
inline vf load(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
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

// ------------------------------------------------------------------------------------------
// shared pieces
// ------------------------------------------------------------------------------------------

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

// Whether rank_combine reads `rank` (AVX-512 float: gathers by rank in element order) or only
// `order` (elsewhere: one pass in rank order, scattering to the elements)
template <typename T>
constexpr bool kCombinesByRank =
#if defined(__AVX512F__)
    std::is_same_v<T, float>;
#else
    false;
#endif

// float rows up to this long are ranked by counting, longer ones by a radix sort
constexpr int64_t kCountingSortMax = 256;

// Per-thread buffers, padded to whole vectors so that the row loop has no scalar tail. Padding
// lanes have xc = 0 and a = +inf (logit -inf, clamped to exp(-logit_range)); in `key` they
// are +inf, which never precedes a finite value.
template <typename T>
struct Scratch {
    int64_t padded = 0;
    std::vector<T> xc, a, alo, key, row;  // alo: see RowSetup
    std::vector<int32_t> rank;  // ascending rank of each element (the inverse of `order`)
    std::vector<double> prefix;
    std::vector<uint64_t> entries;  // the radix sort's, long float rows only
    void resize(int64_t n) {
        padded = (n + kLanes - 1) / kLanes * kLanes;
        const auto size = static_cast<size_t>(padded);
        xc.assign(size, T(0));
        a.assign(size, std::numeric_limits<T>::infinity());
        alo.assign(size, T(0));
        key.assign(size, std::numeric_limits<T>::infinity());
        row.assign(size, T(0));
        rank.assign(size, 0);
        prefix.assign(size, 0.0);
        if (std::is_same_v<T, float> && n > kCountingSortMax) entries.assign(2 * size, 0);
    }
};

// rank[order[r]] = r
inline void invert_order(const int64_t* order, int64_t n, int32_t* rank) {
    for (int64_t r = 0; r < n; ++r) rank[order[r]] = static_cast<int32_t>(r);
}

// Ascending order of one row, ties to the lower index (the order of a stable sort).
template <typename T>
void sort_order(const T* v, int64_t n, int64_t* order) {
    std::vector<std::pair<T, int64_t>> pairs(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) pairs[j] = {v[j], j};
    std::sort(pairs.begin(), pairs.end());
    for (int64_t r = 0; r < n; ++r) order[r] = pairs[r].second;
}

// Long float rows: a least-significant-digit radix sort of the keys' order-preserving bits
// (four 8-bit digits, one histogram pass for all four; a digit shared by every key is skipped),
// each entry carrying its index in its low half. Every pass is stable, so equal keys keep their
// index order, as in a stable sort. `entries` holds 2n. On rows that vary, as real ones do, 4-7x
// faster than std::sort on (value, index) pairs for n = 300 .. 8192.
inline void radix_order(const float* key, int64_t n, int64_t* order, uint64_t* entries) {
    uint32_t count[4][256] = {};
    uint64_t* src = entries;
    uint64_t* dst = entries + n;
    for (int64_t j = 0; j < n; ++j) {
        uint32_t bits;
        std::memcpy(&bits, key + j, sizeof(bits));
        bits = (bits >> 31) != 0 ? ~bits : bits | 0x80000000u;  // negative: all bits flipped
        src[j] = (static_cast<uint64_t>(bits) << 32) | static_cast<uint64_t>(j);
        for (int d = 0; d < 4; ++d) ++count[d][(bits >> (8 * d)) & 0xFF];
    }
    for (int d = 0; d < 4; ++d) {
        uint32_t* c = count[d];
        if (*std::max_element(c, c + 256) == static_cast<uint32_t>(n)) continue;
        uint32_t offset = 0;
        for (int digit = 0; digit < 256; ++digit) offset += std::exchange(c[digit], offset);
        const int shift = 32 + 8 * d;
        for (int64_t j = 0; j < n; ++j) dst[c[(src[j] >> shift) & 0xFF]++] = src[j];
        std::swap(src, dst);
    }
    for (int64_t r = 0; r < n; ++r) order[r] = static_cast<int64_t>(src[r] & 0xFFFFFFFFu);
}

// For each lane l, the number of keys key[0..n) smaller than vj[l], in two chains: a compare and
// an increment a key. AVX-512 compares into a mask register and increments under the mask;
// elsewhere the compare gives -1 / 0 lanes, subtracted. Finite keys are compared exactly; the
// +inf padding never counts as smaller.
inline vi count_smaller(const float* key, int64_t n, vf vj) {
#if defined(__AVX512F__)
    const __m512 j = (__m512)vj;
    const __m512i one = _mm512_set1_epi32(1);
    __m512i c0 = _mm512_setzero_si512(), c1 = c0;
    const auto step = [&](__m512i c, float kk) {
        const __mmask16 smaller = _mm512_cmp_ps_mask(_mm512_set1_ps(kk), j, _CMP_LT_OQ);
        return _mm512_mask_add_epi32(c, smaller, c, one);
    };
    int64_t k = 0;
    for (; k + 1 < n; k += 2) {
        c0 = step(c0, key[k]);
        c1 = step(c1, key[k + 1]);
    }
    if (k < n) c0 = step(c0, key[k]);
    return (vi)_mm512_add_epi32(c0, c1);
#else
    vi c0 = {}, c1 = {};
    int64_t k = 0;
    for (; k + 1 < n; k += 2) {
        c0 -= splat(key[k]) < vj;
        c1 -= splat(key[k + 1]) < vj;
    }
    if (k < n) c0 -= splat(key[k]) < vj;
    return c0 + c1;
#endif
}

// (rank, where written, is padded to whole vectors)
inline bool count_order_distinct(const float* key, int64_t n, int64_t* order, int32_t* rank) {
    std::fill(order, order + n, int64_t{-1});
    for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
        const vi count = count_smaller(key, n, load(key + j0));
        if constexpr (kCombinesByRank<float>) std::memcpy(rank + j0, &count, sizeof(count));
        for (int64_t l = 0; l < kLanes && j0 + l < n; ++l) {
            if (order[count[l]] >= 0) return false;  // two equal keys
            order[count[l]] = j0 + l;
        }
    }
    return true;
}

inline void count_order_ties(const float* key, int64_t n, int64_t* order, int32_t* rank) {
    for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
        const vf vj = load(key + j0);
        vi jj;
        for (int64_t l = 0; l < kLanes; ++l) jj[l] = static_cast<int32_t>(j0 + l);
        // element k precedes element j if key_k < key_j, or key_k == key_j and k < j; away
        // from the diagonal block the index comparison is the same for all lanes
        vi count = {};  // comparisons give -1 for true
        const int64_t diag_end = std::min(j0 + kLanes, n);
        for (int64_t k = 0; k < j0; ++k) count -= splat(key[k]) <= vj;
        for (int64_t k = j0; k < diag_end; ++k) {
            const vf vk = splat(key[k]);
            count -= (vk < vj) | ((vk == vj) & ((vi{} + static_cast<int32_t>(k)) < jj));
        }
        for (int64_t k = diag_end; k < n; ++k) count -= splat(key[k]) < vj;
        if constexpr (kCombinesByRank<float>) std::memcpy(rank + j0, &count, sizeof(count));
        for (int64_t l = 0; l < kLanes && j0 + l < n; ++l) order[count[l]] = j0 + l;
    }
}

#if defined(__AVX512F__)
// Stable ascending ranks of a row of V vectors (n <= 16 V) held in registers, every pair of
// keys compared once: rank_j = #{k < j : key_k <= key_j} + #{k > j : key_k < key_j}.
// Block KB's key k against an earlier block JB: the mask (key_k < key_JB) counts k for those
// lanes of JB (k is later, so it precedes them only if strictly smaller), and the lanes of JB
// outside it precede k. Against its own block, k meets only the lanes above it: (key_k <= key_j)
// counts k for them, the rest of them precede k. The lanes of JB preceding k are counted from
// the stored masks after each block (popcounts). About half the comparisons of counting every
// key against every other, and ties need no second pass. Always inlined: keys and counts must
// stay in registers.
template <int V, int KB, int JB>
__attribute__((always_inline)) inline void rank_pairs(__m512 kk, const __m512* keys,
                                                      __m512i* counts, uint16_t* masks, int l) {
    if constexpr (JB < KB) {
        const __mmask16 m = _mm512_cmp_ps_mask(kk, keys[JB], _CMP_LT_OQ);
        counts[JB] = _mm512_mask_add_epi32(counts[JB], m, counts[JB], _mm512_set1_epi32(1));
        masks[JB * 16 + l] = static_cast<uint16_t>(m);
        rank_pairs<V, KB, JB + 1>(kk, keys, counts, masks, l);
    }
}

template <int V, int KB>
__attribute__((always_inline)) inline void rank_blocks(const float* key, int64_t n,
                                                       const __m512* keys, __m512i* counts,
                                                       uint16_t* masks, int32_t* earlier) {
    if constexpr (KB < V) {
        const int lanes = static_cast<int>(std::min<int64_t>(16, n - 16 * KB));
        const auto valid = static_cast<__mmask16>((1u << lanes) - 1);
        for (int l = 0; l < lanes; ++l) {
            const __m512 kk = _mm512_set1_ps(key[16 * KB + l]);
            rank_pairs<V, KB, 0>(kk, keys, counts, masks, l);
            const auto above = static_cast<__mmask16>(valid & (0xFFFEu << l));
            const __mmask16 m = _mm512_mask_cmp_ps_mask(above, kk, keys[KB], _CMP_LE_OQ);
            counts[KB] = _mm512_mask_add_epi32(counts[KB], m, counts[KB], _mm512_set1_epi32(1));
            masks[KB * 16 + l] = static_cast<uint16_t>(above & ~m);
        }
        // earlier[k] = lanes of block KB above k preceding it + lanes of earlier blocks that do
#if defined(__AVX512BITALG__) && defined(__AVX512VL__)
        const auto popcounts = [&](int b) {
            const auto* row = reinterpret_cast<const __m256i*>(masks + 16 * b);
            return _mm256_popcnt_epi16(_mm256_loadu_si256(row));
        };
        __m256i c = _mm256_add_epi16(_mm256_set1_epi16(16 * KB), popcounts(KB));
        for (int jb = 0; jb < KB; ++jb) c = _mm256_sub_epi16(c, popcounts(jb));
        _mm512_storeu_si512(earlier + 16 * KB, _mm512_cvtepi16_epi32(c));
#else
        for (int l = 0; l < lanes; ++l) {
            int c = 16 * KB + __builtin_popcount(masks[KB * 16 + l]);
            for (int jb = 0; jb < KB; ++jb) c -= __builtin_popcount(masks[jb * 16 + l]);
            earlier[16 * KB + l] = c;
        }
#endif
        rank_blocks<V, KB + 1>(key, n, keys, counts, masks, earlier);
    }
}

// `key` and `rank` padded to 16 V
template <int V>
void stable_ranks_in_registers(const float* key, int64_t n, int32_t* rank) {
    __m512 keys[V];
    __m512i counts[V];
    for (int v = 0; v < V; ++v) {
        keys[v] = _mm512_loadu_ps(key + 16 * v);
        counts[v] = _mm512_setzero_si512();
    }
    uint16_t masks[16 * V] = {};
    alignas(64) int32_t earlier[16 * V] = {};
    rank_blocks<V, 0>(key, n, keys, counts, masks, earlier);
    for (int v = 0; v < V; ++v)
        _mm512_storeu_si512(rank + 16 * v,
                            _mm512_add_epi32(counts[v], _mm512_load_si512(earlier + 16 * v)));
}
#endif

// Short float rows: the ascending rank of each element is the number of elements before it,
// counted for kLanes elements at once (O(n^2) comparisons, but branch-free, a vector of them
// an instruction or two and with no horizontal sums). First pass: strict comparisons only (-0
// is normalised to +0 in `key`). Without equal keys (almost always) the counts are the ranks;
// equal keys share a count, which the scatter detects, and then the second pass breaks ties by
// index. Every count lies in [0, n), and n distinct counts are a permutation, so `order` is
// always one. The counts go to sc.rank too where rank_combine reads it.
inline void count_order(Scratch<float>& sc, int64_t n, int64_t* order) {
    if (!count_order_distinct(sc.key.data(), n, order, sc.rank.data()))
        count_order_ties(sc.key.data(), n, order, sc.rank.data());
}

// `order` (ascending, stable) and, where rank_combine reads it, its inverse sc.rank
template <typename T>
void ascending_order(Scratch<T>& sc, int64_t n, int64_t* order) {
    if constexpr (std::is_same_v<T, float>) {
#if defined(__AVX512F__)
        if (in_registers(n, [&](auto v) {
                stable_ranks_in_registers<decltype(v)::value>(sc.key.data(), n, sc.rank.data());
            })) {
            for (int64_t j = 0; j < n; ++j) order[sc.rank[j]] = j;
            return;
        }
#endif
        if (n <= kCountingSortMax) return count_order(sc, n, order);
        radix_order(sc.key.data(), n, order, sc.entries.data());
    } else {
        sort_order(sc.key.data(), n, order);
    }
    if constexpr (kCombinesByRank<T>) invert_order(order, n, sc.rank.data());
}

// The logits of one row, relative to the element k it peaks at (unimodality: k is known before
// any logit is computed):
//     t_j = c (xc_j - xc_k) - ((a_j - a_k) + (alo_j - alo_k)) / tau,   c = coef_i / tau,
// which is 0 at j = k and negative elsewhere in exact arithmetic. Each difference is taken
// before anything is scaled or added, so its rounding is relative to the difference itself, not
// to |coef_i xc_j| or |a_j| (of size n |x| / tau, far larger for long rows at small tau: the
// logits taken whole and then shifted by the row maximum lose every digit there). `alo` holds
// the part of A 1 (summed in double) that its float32 copy `a` drops, so that a_j - a_k keeps
// the precision of the double sum; it is zero for double. A row whose sum shows a logit far
// above the peak's (rounding only) is redone shifted by its true maximum.
template <typename T>
struct RowSetup {
    const T* xc;   // centred scores (unpadded)
    const T* a;    // A 1 (unpadded)
    const T* alo;  // A 1 less its rounded copy a (zero for double)
    const int64_t* order;
    T inv_tau, logit_range, sum_ok;
    T coef(T c_i) const { return c_i * inv_tau; }
    T logit(T c, int64_t j, int64_t k) const {
        return std::fma(c, xc[j] - xc[k], (((a[j] - a[k]) + alo[j]) - alo[k]) * -inv_tau);
    }
    T true_max(T c, int64_t k, int64_t n) const {
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < n; ++j) mx = std::max(mx, logit(c, j, k));
        return mx;
    }
};

// buf_j = exp(clamp(t_j - shift)) over the padded row (t_j as in RowSetup, k the peak); returns
// sum_j buf_j. The clamp from below keeps probabilities normal numbers (subnormals slow CPUs
// several-fold); the one from above only acts when the peak is not the row's maximum.
inline float exp_row(const Scratch<float>& sc, float c, int64_t k, float neg_inv_tau,
                     float shift, float logit_range, float* buf) {
    const vf xk = splat(sc.xc[k]), ak = splat(sc.a[k]), alok = splat(sc.alo[k]);
    vf acc = {};
    for (int64_t j = 0; j < sc.padded; j += kLanes) {
        const vf da = ((load(sc.a.data() + j) - ak) + load(sc.alo.data() + j)) - alok;
        const vf t = fmadd(load(sc.xc.data() + j) - xk, splat(c), da * neg_inv_tau) - shift;
        const vf e = vexp(clamp(t, -logit_range, 80.0f));
        store(buf + j, e);
        acc += e;
    }
    return lane_sum<float>(acc);
}

inline double exp_row(const Scratch<double>& sc, double c, int64_t k, double neg_inv_tau,
                      double shift, double logit_range, double* buf) {
    const double xk = sc.xc[k], ak = sc.a[k];
    double sum = 0.0;
    for (int64_t j = 0; j < sc.padded; ++j) {
        double t = std::fma(c, sc.xc[j] - xk, (sc.a[j] - ak) * neg_inv_tau) - shift;
        t = std::min(std::max(t, -logit_range), 700.0);
        buf[j] = std::exp(t);
        sum += buf[j];
    }
    return sum;
}

inline void scale_row(const double* buf, double scale, int64_t n, double* row) {
    for (int64_t j = 0; j < n; ++j) row[j] = buf[j] * scale;
}

inline void scale_row(const float* buf, float scale, int64_t n, float* row) {
    const int64_t whole = n / kLanes * kLanes;
    for (int64_t j = 0; j < whole; j += kLanes) store(row + j, load(buf + j) * scale);
    for (int64_t j = whole; j < n; ++j) row[j] = buf[j] * scale;
}

template <typename T>
void rows_buffered(const RowSetup<T>& rs, const Scratch<T>& sc, int64_t n, const T* coef,
                   const int64_t* rank_of_row, int64_t m, T* p, T* buf) {
    for (int64_t i = 0; i < m; ++i) {
        const T c = rs.coef(coef[i]);
        const int64_t k = rs.order[rank_of_row[i]];
        T sum = exp_row(sc, c, k, -rs.inv_tau, T(0), rs.logit_range, buf);
        if (!(sum <= rs.sum_ok))
            sum = exp_row(sc, c, k, -rs.inv_tau, rs.true_max(c, k, n), rs.logit_range, buf);
        scale_row(buf, T(1) / sum, n, p + i * n);
    }
}

// Rows of V vectors (n in (kLanes (V - 1), kLanes V]) stay in registers from exp to store, and
// successive rows are independent, so their latencies overlap. The padding lanes of the last
// vector are computed (exp(-logit_range), as in exp_row) but never stored.
template <int V>
void rows_in_registers(const RowSetup<float>& rs, const Scratch<float>& sc, int64_t n,
                       const float* coef, const int64_t* rank_of_row, int64_t m, float* p) {
    const int64_t tail = n - (V - 1) * kLanes;
    vf xc[V], a[V], alo[V];
    for (int v = 0; v < V; ++v) {
        xc[v] = load(sc.xc.data() + v * kLanes);
        a[v] = load(sc.a.data() + v * kLanes);
        alo[v] = load(sc.alo.data() + v * kLanes);
    }
    const vf nit = splat(-rs.inv_tau);
    for (int64_t i = 0; i < m; ++i) {
        const float c = rs.coef(coef[i]);
        const int64_t k = rs.order[rank_of_row[i]];
        const vf xk = splat(sc.xc[k]), ak = splat(sc.a[k]), alok = splat(sc.alo[k]);
        vf e[V];
        float sum = 0.0f, shift = 0.0f;
        for (int pass = 0; pass < 2; ++pass) {
            vf acc = {};
            for (int v = 0; v < V; ++v) {
                const vf da = ((a[v] - ak) + alo[v]) - alok;
                const vf t = fmadd(xc[v] - xk, splat(c), da * nit) - shift;
                e[v] = vexp(clamp(t, -rs.logit_range, 80.0f));
                acc += e[v];
            }
            sum = lane_sum<float>(acc);
            if (sum <= rs.sum_ok) break;
            shift = rs.true_max(c, k, n);
        }
        const float inv_sum = 1.0f / sum;
        float* row = p + i * n;
        for (int v = 0; v < V - 1; ++v) store(row + v * kLanes, e[v] * inv_sum);
        store_first(row + (V - 1) * kLanes, e[V - 1] * inv_sum, tail);
    }
}

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

template <typename T>
inline T dot(const T* x, const T* y, int64_t n) {
    T s = 0;
    int64_t whole = 0;
    if constexpr (std::is_same_v<T, float>) {
        whole = n / kLanes * kLanes;
        vf acc = {};
        for (int64_t j = 0; j < whole; j += kLanes) acc += load(x + j) * load(y + j);
        s = lane_sum<float>(acc);
    }
    for (int64_t j = whole; j < n; ++j) s += x[j] * y[j];
    return s;
}

template <typename T>
void rows(const RowSetup<T>& rs, Scratch<T>& sc, int64_t n, const T* coef,
          const int64_t* rank_of_row, int64_t m, T* p) {
    if constexpr (std::is_same_v<T, float>) {
        if (in_registers(n, [&](auto v) {
                rows_in_registers<decltype(v)::value>(rs, sc, n, coef, rank_of_row, m, p);
            }))
            return;
    }
    rows_buffered(rs, sc, n, coef, rank_of_row, m, p, sc.row.data());
}

// One batch element: xc (a copy of x: the logits use only differences of scores, which x gives
// more accurately than any shifted copy), a, order and the m rows p; with `y` also the relaxed
// sorted values y_i = sum_j p_ij x_j.
template <typename T>
void forward_one(const T* x, int64_t n, const T* coef, const int64_t* rank_of_row, int64_t m,
                 T inv_tau, T logit_range, T* p, T* xc, T* a, int64_t* order, Scratch<T>& sc,
                 T* y = nullptr) {
    const double mean = row_mean(x, n);
    if (!std::isfinite(mean)) {  // a NaN or inf poisons only this batch element
        fill_nan(p, m * n);
        fill_nan(xc, n);
        fill_nan(a, n);
        if (y != nullptr) fill_nan(y, m);
        std::iota(order, order + n, int64_t{0});
        return;
    }
    std::copy(x, x + n, xc);
    std::copy(x, x + n, sc.xc.data());
    for (int64_t j = 0; j < n; ++j) sc.key[j] = x[j] + T(0);  // (-0 + 0 = +0)
    ascending_order(sc, n, order);
    // a_j = sum_k |x_j - x_k| in double, of the scores less their mean (no cancellation for
    // large |x|): for ascending rank r, (2r - n + 2) v_r + total - 2 inclusive_r; stored rounded
    // to T, with what float drops in sc.alo (see RowSetup)
    double* inclusive = sc.prefix.data();
    double total = 0.0;
    for (int64_t r = 0; r < n; ++r) inclusive[r] = total += static_cast<double>(x[order[r]]) - mean;
    for (int64_t r = 0; r < n; ++r) {
        const int64_t j = order[r];
        const double exact = static_cast<double>(2 * r - n + 2) * (static_cast<double>(x[j]) - mean) +
                             (total - 2.0 * inclusive[r]);
        a[j] = static_cast<T>(exact);
        if constexpr (std::is_same_v<T, float>) sc.alo[j] = static_cast<float>(exact - static_cast<double>(a[j]));
    }
    std::copy(a, a + n, sc.a.data());
    // with the shift at the true maximum the sum lies in [1, n]; far above means it was not
    const RowSetup<T> rs{sc.xc.data(), sc.a.data(), sc.alo.data(), order, inv_tau, logit_range,
                         T(4) * static_cast<T>(n) * std::exp(T(8))};
    rows(rs, sc, n, coef, rank_of_row, m, p);
    if (y != nullptr)
        for (int64_t i = 0; i < m; ++i) y[i] = dot(p + i * n, xc, n);
}

// The tau gradient's part of one batch element, sum_ij L[i, j] (coef_i xc_j - a_j), is a sum of
// terms of size n |x| that cancel to a result far smaller (the rows of L sum to zero). It is
// accumulated as sum_ij L[i, j] d[i, j] instead, d[i, j] = coef_i (xc_j - xc_k) - (a_j - a_k)
// with k = peak[i] the element row i peaks at: the same sum, as sum_j L[i, j] = 0, but of terms
// that are small where L is large. Each row's sum is added in double.
template <typename T>
struct TauPart {
    const T* xc;
    const T* a;
    const int64_t* peak;  // element index of each row's peak; null: the tau gradient is not needed
    double sum = 0.0;
    explicit operator bool() const { return peak != nullptr; }
};

// Rows of V vectors (n <= kLanes V): u and v stay in registers across all m rows; the padding
// lanes of the last vector load as 0 and are not stored.
template <int V, bool kTau>
void reduce_rows_in_registers(const float* g, const float* p, int64_t n, const float* coef,
                              int64_t m, float* u, float* v, TauPart<float>& tp) {
    const int64_t tail = n - (V - 1) * kLanes;
    vf U[V] = {}, W[V] = {};
    for (int64_t i = 0; i < m; ++i) {
        const float* gi = g + i * n;
        const float* pi = p + i * n;
        vf G[V], P[V], acc = {};
        for (int k = 0; k < V; ++k) {
            G[k] = k < V - 1 ? load(gi + k * kLanes) : load_first(gi + k * kLanes, tail);
            P[k] = k < V - 1 ? load(pi + k * kLanes) : load_first(pi + k * kLanes, tail);
            acc += G[k] * P[k];
        }
        const float gp = lane_sum<float>(acc), ci = coef[i];
        vf tacc = {};
        float xk = 0.0f, ak = 0.0f;
        if constexpr (kTau) xk = tp.xc[tp.peak[i]], ak = tp.a[tp.peak[i]];
        for (int k = 0; k < V; ++k) {
            const vf l = P[k] * (G[k] - gp);
            U[k] += l * ci;
            W[k] -= l;
            if constexpr (kTau) {  // padding lanes: l = 0 and d finite
                const float* xs = tp.xc + k * kLanes;
                const float* as = tp.a + k * kLanes;
                const vf x = k < V - 1 ? load(xs) : load_first(xs, tail);
                const vf av = k < V - 1 ? load(as) : load_first(as, tail);
                tacc += l * ((x - xk) * ci - (av - ak));
            }
        }
        if constexpr (kTau) tp.sum += static_cast<double>(lane_sum<float>(tacc));
    }
    for (int k = 0; k < V - 1; ++k) {
        store(u + k * kLanes, U[k]);
        store(v + k * kLanes, W[k]);
    }
    store_first(u + (V - 1) * kLanes, U[V - 1], tail);
    store_first(v + (V - 1) * kLanes, W[V - 1], tail);
}

// sum_j l_j d_j over one row, d_j = c (xc_j - xc_k) - (a_j - a_k), for TauPart
template <typename T>
double tau_row(const T* l, const TauPart<T>& tp, T c, int64_t i, int64_t n) {
    const T xk = tp.xc[tp.peak[i]], ak = tp.a[tp.peak[i]];
    T s = 0;
    int64_t whole = 0;
    if constexpr (std::is_same_v<T, float>) {
        whole = n / kLanes * kLanes;
        vf acc = {};
        for (int64_t j = 0; j < whole; j += kLanes)
            acc += load(l + j) * ((load(tp.xc + j) - xk) * c - (load(tp.a + j) - ak));
        s = lane_sum<float>(acc);
    }
    for (int64_t j = whole; j < n; ++j) s += l[j] * ((tp.xc[j] - xk) * c - (tp.a[j] - ak));
    return static_cast<double>(s);
}

// u_j = sum_i coef_i L[i, j] and v_j = -sum_i L[i, j] with L[i, j] = P[i, j] (G[i, j] - <G_i, P_i>)
// (the softmax backward), and the tau gradient's part (if tp), without storing L: one row of it
// at a time in `l` (n values) when kTau.
template <bool kTau, typename T>
void reduce_rows(const T* g, const T* p, int64_t n, const T* coef, int64_t m, T* u, T* v, T* l,
                 TauPart<T>& tp) {
    int64_t whole = 0;
    if constexpr (std::is_same_v<T, float>) {
        if (in_registers(n, [&](auto vectors) {
                reduce_rows_in_registers<decltype(vectors)::value, kTau>(g, p, n, coef, m, u, v,
                                                                         tp);
            }))
            return;
        whole = n / kLanes * kLanes;
    }
    std::fill(u, u + n, T(0));
    std::fill(v, v + n, T(0));
    for (int64_t i = 0; i < m; ++i) {
        const T* gi = g + i * n;
        const T* pi = p + i * n;
        const T gp = dot(gi, pi, n), c = coef[i];
        if constexpr (std::is_same_v<T, float>) {
            for (int64_t j = 0; j < whole; j += kLanes) {
                const vf lj = load(pi + j) * (load(gi + j) - gp);
                if constexpr (kTau) store(l + j, lj);
                store(u + j, load(u + j) + lj * c);
                store(v + j, load(v + j) - lj);
            }
        }
        for (int64_t j = whole; j < n; ++j) {
            const T lj = pi[j] * (gi[j] - gp);
            l[j] = lj;
            u[j] += c * lj;
            v[j] -= lj;
        }
        if constexpr (kTau) tp.sum += tau_row(l, tp, c, i, n);
    }
}

// The same reduction when the upstream gradient is gy (length m) of y = P x rather than of P:
// G[i, j] = gy_i x_j, so L[i, j] = P[i, j] gy_i (xc_j - yc_i) with yc_i = <P_i, xc>; also the
// direct path through x as the values, direct_j = sum_i gy_i P[i, j].
template <bool kTau, typename T>
void reduce_rows_values(const T* gy, const T* p, const T* xc, int64_t n, const T* coef,
                        int64_t m, T* u, T* v, T* direct, T* l, TauPart<T>& tp) {
    std::fill(u, u + n, T(0));
    std::fill(v, v + n, T(0));
    std::fill(direct, direct + n, T(0));
    int64_t whole = 0;
    if constexpr (std::is_same_v<T, float>) whole = n / kLanes * kLanes;
    for (int64_t i = 0; i < m; ++i) {
        const T* pi = p + i * n;
        const T g = gy[i], c = coef[i], yc = dot(pi, xc, n);
        if constexpr (std::is_same_v<T, float>) {
            for (int64_t j = 0; j < whole; j += kLanes) {
                const vf gp = load(pi + j) * g;
                const vf lj = gp * (load(xc + j) - yc);
                if constexpr (kTau) store(l + j, lj);
                store(u + j, load(u + j) + lj * c);
                store(v + j, load(v + j) - lj);
                store(direct + j, load(direct + j) + gp);
            }
        }
        for (int64_t j = whole; j < n; ++j) {
            const T gp = pi[j] * g;
            const T lj = gp * (xc[j] - yc);
            l[j] = lj;
            u[j] += c * lj;
            v[j] -= lj;
            direct[j] += gp;
        }
        if constexpr (kTau) tp.sum += tau_row(l, tp, c, i, n);
    }
}

// One batch element's backward. `peak` (m element indices, or null when the tau gradient is not
// needed) gives each row's peak; *tau_part receives sum_ij L[i, j] (coef_i xc_j - a_j).
template <typename T>
void backward_one(const T* g, const T* p, int64_t n, const T* coef, int64_t m, T inv_tau,
                  const int64_t* order, const T* xc, const T* a, T* gx, const int64_t* peak,
                  double* tau_part, T* u, T* v, T* l, int32_t* rank, double* inclusive,
                  T* direct = nullptr) {
    TauPart<T> tp{xc, a, tau_part != nullptr ? peak : nullptr};
    // `direct` given: g is the gradient of y = P x (length m), else of P (m x n)
    const auto reduce = [&](auto tau) {
        constexpr bool kTau = decltype(tau)::value;
        if (direct != nullptr)
            reduce_rows_values<kTau>(g, p, xc, n, coef, m, u, v, direct, l, tp);
        else
            reduce_rows<kTau>(g, p, n, coef, m, u, v, l, tp);
    };
    if (tp)
        reduce(std::true_type{});
    else
        reduce(std::false_type{});
    // J_a^T v in ascending order: 2 inclusive_r - total + v_r (2r - n) + u_r, times 1 / tau
    if constexpr (kCombinesByRank<T>) invert_order(order, n, rank);
    rank_combine<T>(v, u, order, rank, n, -1.0, 0, static_cast<double>(inv_tau), inclusive, gx);
    if (direct != nullptr)
        for (int64_t j = 0; j < n; ++j) gx[j] += direct[j];
    if (tau_part != nullptr) *tau_part = tp.sum;
}

}  // namespace neuralsort_kernels
