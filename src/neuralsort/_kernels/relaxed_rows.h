#pragma once

// Fused CPU kernels for NeuralSort's relaxed permutation rows (forward and backward), per batch
// element; extension.cpp runs them over the batch and registers them as a torch operator.
//
// For one batch element with scores x (length n), centred xc = x - mean(x), and
// a_j = sum_k |xc_j - xc_k| (the row sums A 1 of the matrix of absolute differences), row i of
// the relaxed permutation is
//
//     P[i, j] = softmax_j((coef_i * xc_j - a_j) / tau).
//
// forward: the ascending order of xc (a counting sort for short rows) gives a by prefix sums;
// every row is built, exponentiated and normalised while it sits in L1 (or in registers), so
// the (m, n) output is written once and no logits tensor exists.
// backward: with G the upstream gradient, the softmax backward L[i, j] = P (G - <G_i, P_i>) is
// reduced on the fly to u_j = sum_i coef_i L[i, j] and v_j = -sum_i L[i, j]; the gradient of the
// scores is (u + J_a^T v) / tau, J_a^T v by prefix sums in sorted order. Nothing of size (m, n)
// is written.
//
// No torch types here: plain arrays in, plain arrays out. Single precision is written with
// GCC/Clang vector extensions (16 lanes, lowered to whatever vector width the CPU has) and its
// own exp: range reduction by ln 2, degree-7 Taylor polynomial, relative error < 2e-7. Double precision (used for
// gradient checks more than for speed) is plain scalar code with std::exp.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

namespace neuralsort_kernels {

// ------------------------------------------------------------------------------------------
// single precision: 16-lane vectors
// ------------------------------------------------------------------------------------------

constexpr int64_t kLanes = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));

// (written out: `vf{} + x` would cost an add, as 0 + x is not x for x = -0)
inline vf splat(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline vf load(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline vf select(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }
inline vf clamp(vf t, float lo, float hi) {
    t = select(t < splat(lo), splat(lo), t);
    return select(t > splat(hi), splat(hi), t);
}
// Sum of the 16 lanes as a tree (4 steps, not a chain of 16 dependent adds).
template <typename S, typename V>
inline S lane_sum(V v) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
    typedef S v8 __attribute__((vector_size(8 * sizeof(S))));
    typedef S v4 __attribute__((vector_size(4 * sizeof(S))));
    const v8 h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const v4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    return (q[0] + q[2]) + (q[1] + q[3]);
#else
    S lanes[kLanes];
    std::memcpy(lanes, &v, sizeof(lanes));
    for (int64_t w = kLanes / 2; w >= 1; w /= 2)
        for (int64_t l = 0; l < w; ++l) lanes[l] += lanes[l + w];
    return lanes[0];
#endif
}

// exp(t) for t in [-88, 88]: t = k ln2 + r with |r| <= ln2 / 2, exp(r) by Horner, 2^k from
// the exponent bits.
inline vf vexp(vf t) {
    const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    const vf k = (t * 1.44269504088896341f + magic) - magic;
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
    const vi bits = (__builtin_convertvector(k, vi) + 127) << 23;
    return p * (vf)bits;
}

// ------------------------------------------------------------------------------------------
// shared pieces
// ------------------------------------------------------------------------------------------

template <typename T>
void fill_nan(T* ptr, int64_t count) {
    std::fill(ptr, ptr + count, std::numeric_limits<T>::quiet_NaN());
}

// Per-thread buffers, padded to whole vectors so that the row loop has no scalar tail. Padding
// lanes have xc = 0 and a = +inf (logit -inf, clamped to exp(-logit_range)); in `key` they
// are +inf, which never precedes a finite value.
template <typename T>
struct Scratch {
    int64_t padded = 0;
    std::vector<T> xc, a, key, row;
    std::vector<double> prefix;
    void resize(int64_t n) {
        padded = (n + kLanes - 1) / kLanes * kLanes;
        const auto size = static_cast<size_t>(padded);
        xc.assign(size, T(0));
        a.assign(size, std::numeric_limits<T>::infinity());
        key.assign(size, std::numeric_limits<T>::infinity());
        row.assign(size, T(0));
        prefix.assign(size, 0.0);
    }
};

// Ascending order of one row, ties to the lower index (the order of a stable sort).
template <typename T>
void sort_order(const T* v, int64_t n, int64_t* order) {
    std::vector<std::pair<T, int64_t>> pairs(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) pairs[j] = {v[j], j};
    std::sort(pairs.begin(), pairs.end());
    for (int64_t r = 0; r < n; ++r) order[r] = pairs[r].second;
}

// For each lane l, the number of keys key[0..n) smaller than vj[l]: the sign of
// key_k - key_j (exact in IEEE arithmetic for finite keys) as 0 / -1, summed in two chains.
inline vi count_smaller(const float* key, int64_t n, vf vj) {
    vi c0 = {}, c1 = {};
    int64_t k = 0;
    for (; k + 1 < n; k += 2) {
        c0 += (vi)(splat(key[k]) - vj) >> 31;
        c1 += (vi)(splat(key[k + 1]) - vj) >> 31;
    }
    if (k < n) c0 += (vi)(splat(key[k]) - vj) >> 31;
    return -(c0 + c1);
}

inline bool count_order_distinct(const float* key, int64_t n, int64_t* order) {
    std::fill(order, order + n, int64_t{-1});
    for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
        const vf vj = load(key + j0);
        const vi rank = count_smaller(key, n, vj);
        for (int64_t l = 0; l < kLanes && j0 + l < n; ++l) {
            if (order[rank[l]] >= 0) return false;  // two equal keys
            order[rank[l]] = j0 + l;
        }
    }
    return true;
}

inline void count_order_ties(const float* key, int64_t n, int64_t* order) {
    for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
        const vf vj = load(key + j0);
        vi jj;
        for (int64_t l = 0; l < kLanes; ++l) jj[l] = static_cast<int32_t>(j0 + l);
        // element k precedes element j if key_k < key_j, or key_k == key_j and k < j; away
        // from the diagonal block the index comparison is the same for all 16 lanes
        vi count = {};  // comparisons give -1 for true
        const int64_t diag_end = std::min(j0 + kLanes, n);
        for (int64_t k = 0; k < j0; ++k) count -= splat(key[k]) <= vj;
        for (int64_t k = j0; k < diag_end; ++k) {
            const vf vk = splat(key[k]);
            count -= (vk < vj) | ((vk == vj) & ((vi{} + static_cast<int32_t>(k)) < jj));
        }
        for (int64_t k = diag_end; k < n; ++k) count -= splat(key[k]) < vj;
        for (int64_t l = 0; l < kLanes && j0 + l < n; ++l) order[count[l]] = j0 + l;
    }
}

// Short float rows: the ascending rank of each element is the number of elements before it,
// counted for 16 elements at once (O(n^2) comparisons, but branch-free, 16 an instruction and
// with no horizontal sums). First pass: strict comparisons only (-0 is normalised to +0 in
// `key`). Without equal keys (almost always) the counts are the ranks; equal keys share a count,
// which the scatter detects, and then the second pass breaks ties by index. Every count lies in
// [0, n), and n distinct counts are a permutation, so `order` is always one.
inline void count_order(const Scratch<float>& sc, int64_t n, int64_t* order) {
    if (!count_order_distinct(sc.key.data(), n, order)) count_order_ties(sc.key.data(), n, order);
}

template <typename T>
void ascending_order(Scratch<T>& sc, int64_t n, int64_t* order) {
    if constexpr (std::is_same_v<T, float>) {
        if (n <= 256) return count_order(sc, n, order);
    }
    sort_order(sc.key.data(), n, order);
}

// buf_j = exp(clamp(c xc_j - a_j / tau - shift)) over the padded row; returns sum_j buf_j.
// The clamp from below keeps probabilities normal numbers (subnormals slow CPUs several-fold);
// the one from above only acts when `shift` is not the row's maximum (see forward_one).
inline float exp_row(const Scratch<float>& sc, float c, float neg_inv_tau, float shift,
                     float logit_range, float* buf) {
    vf acc = {};
    for (int64_t j = 0; j < sc.padded; j += kLanes) {
        vf t = load(sc.xc.data() + j) * c + load(sc.a.data() + j) * neg_inv_tau - shift;
        const vf e = vexp(clamp(t, -logit_range, 80.0f));
        store(buf + j, e);
        acc += e;
    }
    return lane_sum<float>(acc);
}

inline double exp_row(const Scratch<double>& sc, double c, double neg_inv_tau, double shift,
                      double logit_range, double* buf) {
    double sum = 0.0;
    for (int64_t j = 0; j < sc.padded; ++j) {
        double t = c * sc.xc[j] + sc.a[j] * neg_inv_tau - shift;
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

// The row of sorted position i: shift by the logit of the element it peaks at (unimodality:
// ascending rank rank_of_row[i]). That is the row's maximum up to rounding, so one pass
// suffices; should rounding put a logit far above it (only for enormous |x| / tau), the sum
// shows it and the row is redone with the true maximum.
template <typename T>
struct RowSetup {
    const T* xc;  // centred scores (unpadded)
    const T* a;   // A 1 (unpadded)
    const int64_t* order;
    T inv_tau, logit_range, sum_ok;
    T coef(T c_i) const { return c_i * inv_tau; }
    T shift(T c, int64_t peak) const { return c * xc[peak] - a[peak] * inv_tau; }
    T true_max(T c, int64_t n) const {
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < n; ++j) mx = std::max(mx, c * xc[j] - a[j] * inv_tau);
        return mx;
    }
};

template <typename T>
void rows_buffered(const RowSetup<T>& rs, const Scratch<T>& sc, int64_t n, const T* coef,
                   const int64_t* rank_of_row, int64_t m, T* p, T* buf) {
    for (int64_t i = 0; i < m; ++i) {
        const T c = rs.coef(coef[i]);
        T shift = rs.shift(c, rs.order[rank_of_row[i]]);
        T sum = exp_row(sc, c, -rs.inv_tau, shift, rs.logit_range, buf);
        if (!(sum <= rs.sum_ok)) {
            shift = rs.true_max(c, n);
            sum = exp_row(sc, c, -rs.inv_tau, shift, rs.logit_range, buf);
        }
        scale_row(buf, T(1) / sum, n, p + i * n);
    }
}

// Rows of n = 16 V floats, V = 1..4, fit in registers: calls fn(integral_constant<int, V>)
// and returns true for those n, false for any other.
template <typename F>
bool in_whole_vectors(int64_t n, F&& fn) {
    switch (n) {
        case 16: fn(std::integral_constant<int, 1>{}); return true;
        case 32: fn(std::integral_constant<int, 2>{}); return true;
        case 48: fn(std::integral_constant<int, 3>{}); return true;
        case 64: fn(std::integral_constant<int, 4>{}); return true;
        default: return false;
    }
}

// Rows of V whole vectors (n = 16 V) stay in registers from exp to store, and successive rows
// are independent, so their latencies overlap.
template <int V>
void rows_in_registers(const RowSetup<float>& rs, const Scratch<float>& sc, const float* coef,
                       const int64_t* rank_of_row, int64_t m, float* p) {
    constexpr int64_t n = V * kLanes;
    vf xc[V], a[V];
    for (int v = 0; v < V; ++v) {
        xc[v] = load(sc.xc.data() + v * kLanes);
        a[v] = load(sc.a.data() + v * kLanes) * -rs.inv_tau;
    }
    for (int64_t i = 0; i < m; ++i) {
        const float c = rs.coef(coef[i]);
        float shift = rs.shift(c, rs.order[rank_of_row[i]]);
        vf e[V];
        float sum = 0.0f;
        for (int pass = 0; pass < 2; ++pass) {
            vf acc = {};
            for (int v = 0; v < V; ++v) {
                e[v] = vexp(clamp(xc[v] * c + a[v] - shift, -rs.logit_range, 80.0f));
                acc += e[v];
            }
            sum = lane_sum<float>(acc);
            if (sum <= rs.sum_ok) break;
            shift = rs.true_max(c, n);
        }
        const float inv_sum = 1.0f / sum;
        for (int v = 0; v < V; ++v) store(p + i * n + v * kLanes, e[v] * inv_sum);
    }
}

template <typename T>
inline T row_mean(const T* x, int64_t n) {
    // any shift works (P is shift-invariant), so the mean's own rounding does not matter
    if constexpr (std::is_same_v<T, float>) {
        const int64_t whole = n / kLanes * kLanes;
        vf acc = {};
        for (int64_t j = 0; j < whole; j += kLanes) acc += load(x + j);
        float s = lane_sum<float>(acc);
        for (int64_t j = whole; j < n; ++j) s += x[j];
        return s / static_cast<float>(n);
    } else {
        double s = 0.0;
        for (int64_t j = 0; j < n; ++j) s += x[j];
        return s / static_cast<double>(n);
    }
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
        if (in_whole_vectors(n, [&](auto v) {
                rows_in_registers<decltype(v)::value>(rs, sc, coef, rank_of_row, m, p);
            }))
            return;
    }
    rows_buffered(rs, sc, n, coef, rank_of_row, m, p, sc.row.data());
}

// One batch element: xc, a, order and the m rows p; with `y` also the relaxed sorted values
// y_i = sum_j p_ij x_j (= sum_j p_ij xc_j + mean, as the rows sum to one).
template <typename T>
void forward_one(const T* x, int64_t n, const T* coef, const int64_t* rank_of_row, int64_t m,
                 T inv_tau, T logit_range, T* p, T* xc, T* a, int64_t* order, Scratch<T>& sc,
                 T* y = nullptr) {
    const T mean = row_mean(x, n);
    if (!std::isfinite(mean)) {  // a NaN or inf poisons only this batch element
        fill_nan(p, m * n);
        fill_nan(xc, n);
        fill_nan(a, n);
        if (y != nullptr) fill_nan(y, m);
        std::iota(order, order + n, int64_t{0});
        return;
    }
    for (int64_t j = 0; j < n; ++j) xc[j] = x[j] - mean;
    std::copy(xc, xc + n, sc.xc.data());
    for (int64_t j = 0; j < n; ++j) sc.key[j] = xc[j] + T(0);  // (-0 + 0 = +0)
    ascending_order(sc, n, order);
    // element of ascending rank r: sum_k |v_r - v_k| = (2r - n + 2) v_r + total - 2 inclusive_r,
    // with prefix sums in double (cancellation when |x| is large)
    double* inclusive = sc.prefix.data();
    const double total = sorted_prefix_sums(xc, order, n, inclusive);
    for (int64_t r = 0; r < n; ++r) {
        const double v = static_cast<double>(xc[order[r]]);
        a[order[r]] = static_cast<T>(static_cast<double>(2 * r - n + 2) * v + total - 2.0 * inclusive[r]);
    }
    std::copy(a, a + n, sc.a.data());
    // with the shift at the true maximum the sum lies in [1, n]; far above means it was not
    const RowSetup<T> rs{xc, a, order, inv_tau, logit_range, T(4) * static_cast<T>(n) * std::exp(T(8))};
    rows(rs, sc, n, coef, rank_of_row, m, p);
    if (y != nullptr)
        for (int64_t i = 0; i < m; ++i) y[i] = dot(p + i * n, xc, n) + mean;
}

// Rows of V whole vectors: u and v stay in registers across all m rows.
template <int V>
void reduce_rows_in_registers(const float* g, const float* p, const float* coef, int64_t m,
                              float* u, float* v) {
    constexpr int64_t n = V * kLanes;
    vf U[V] = {}, W[V] = {};
    for (int64_t i = 0; i < m; ++i) {
        vf G[V], P[V], acc = {};
        for (int k = 0; k < V; ++k) {
            G[k] = load(g + i * n + k * kLanes);
            P[k] = load(p + i * n + k * kLanes);
            acc += G[k] * P[k];
        }
        const float gp = lane_sum<float>(acc), ci = coef[i];
        for (int k = 0; k < V; ++k) {
            const vf l = P[k] * (G[k] - gp);
            U[k] += l * ci;
            W[k] -= l;
        }
    }
    for (int k = 0; k < V; ++k) {
        store(u + k * kLanes, U[k]);
        store(v + k * kLanes, W[k]);
    }
}

// u_j = sum_i coef_i L[i, j] and v_j = -sum_i L[i, j] with L[i, j] = P[i, j] (G[i, j] - <G_i, P_i>)
// (the softmax backward), without storing L.
template <typename T>
void reduce_rows(const T* g, const T* p, int64_t n, const T* coef, int64_t m, T* u, T* v) {
    int64_t whole = 0;
    if constexpr (std::is_same_v<T, float>) {
        if (in_whole_vectors(n, [&](auto vectors) {
                reduce_rows_in_registers<decltype(vectors)::value>(g, p, coef, m, u, v);
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
                const vf l = load(pi + j) * (load(gi + j) - gp);
                store(u + j, load(u + j) + l * c);
                store(v + j, load(v + j) - l);
            }
        }
        for (int64_t j = whole; j < n; ++j) {
            const T l = pi[j] * (gi[j] - gp);
            u[j] += c * l;
            v[j] -= l;
        }
    }
}

// The same reduction when the upstream gradient is gy (length m) of y = P x rather than of P:
// G[i, j] = gy_i x_j, so L[i, j] = P[i, j] gy_i (xc_j - yc_i) with yc_i = <P_i, xc>; also the
// direct path through x as the values, direct_j = sum_i gy_i P[i, j].
template <typename T>
void reduce_rows_values(const T* gy, const T* p, const T* xc, int64_t n, const T* coef,
                        int64_t m, T* u, T* v, T* direct) {
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
                const vf l = gp * (load(xc + j) - yc);
                store(u + j, load(u + j) + l * c);
                store(v + j, load(v + j) - l);
                store(direct + j, load(direct + j) + gp);
            }
        }
        for (int64_t j = whole; j < n; ++j) {
            const T gp = pi[j] * g;
            const T l = gp * (xc[j] - yc);
            u[j] += c * l;
            v[j] -= l;
            direct[j] += gp;
        }
    }
}

template <typename T>
void backward_one(const T* g, const T* p, int64_t n, const T* coef, int64_t m, T inv_tau,
                  const int64_t* order, const T* xc, const T* a, T* gx, double* tau_part,
                  T* u, T* v, double* inclusive, T* direct = nullptr) {
    // `direct` given: g is the gradient of y = P x (length m), else of P (m x n)
    if (direct != nullptr)
        reduce_rows_values(g, p, xc, n, coef, m, u, v, direct);
    else
        reduce_rows(g, p, n, coef, m, u, v);
    // J_a^T v in ascending order: 2 inclusive_r - total + v_r (2r - n)
    const double total = sorted_prefix_sums(v, order, n, inclusive);
    for (int64_t r = 0; r < n; ++r) {
        const int64_t j = order[r];
        const double vr = static_cast<double>(v[j]);
        const double through_a = 2.0 * inclusive[r] - total + vr * static_cast<double>(2 * r - n);
        gx[j] = static_cast<T>((static_cast<double>(u[j]) + through_a) * static_cast<double>(inv_tau));
    }
    if (direct != nullptr)
        for (int64_t j = 0; j < n; ++j) gx[j] += direct[j];
    if (tau_part != nullptr) {
        double s = 0.0;
        for (int64_t j = 0; j < n; ++j)
            s += static_cast<double>(xc[j]) * u[j] + static_cast<double>(a[j]) * v[j];
        *tau_part = s;
    }
}

}  // namespace neuralsort_kernels
