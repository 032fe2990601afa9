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

#include "prefix_sums.h"

namespace neuralsort_kernels {

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
        const vf e = vexp(clamp(t, -logit_range, kExpCeilingFloat));
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
        t = std::min(std::max(t, -logit_range), kExpCeilingDouble);
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
                e[v] = vexp(clamp(t, -rs.logit_range, kExpCeilingFloat));
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
