#pragma once

// The stable ascending order of one row's scores (float: pairwise ranks in registers, counting, or a
// radix sort, by length; double: std::sort) and the per-thread scratch buffers.

#include "simd.h"

namespace neuralsort_kernels {

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

}  // namespace neuralsort_kernels
