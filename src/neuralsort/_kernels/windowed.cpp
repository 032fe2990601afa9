// neuralsort::windowed_forward / windowed_backward: the certified-sparse rows of tol= (see
// neuralsort/_windowed.py, `windowed`, for the bound) on the CPU. Row i of Q over ascending
// ranks r in its window [lo_i, hi_i]:
//
//   d_ir = c_i (v_r - v_k) - (a_r - a_k)        (k = the row's peak rank; float64)
//   Q[i, r] = exp(d_ir / tau) / sum_{window} exp(d_ir' / tau)
//   y[i, :] = sum_r Q[i, r] V[r, :]      u[:, r] = sum_i W[:, i] Q[i, r]
//
// The forward finds each window by two searches on the bound and reduces each row of Q as soon
// as it is built; the backward builds every row again (the same operations, so the same values)
// rather than keep them: the rows would take O(n w) memory, whose writing and reading cost more
// than a second exp of each element. It reduces the softmax gradient to the gradients of v
// (through c_i), of a and, when asked, of tau. float32 rows are built in one vector pass (the
// differences in float64 vectors, rounded to float for the exp), and the backward of rows
// without v in two.
// The autograd node is neuralsort/_windowed.py's _Windowed; this file has no autograd.
// Its own translation unit beside extension.cpp; the vector exp comes from simd.h.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "simd.h"

namespace {

namespace nk = neuralsort_kernels;

using at::Tensor;
using nk::load_part;
using nk::store_part;

struct Row {
    const double* vs;
    const double* as;
    int64_t n, k;
    double c, peak, inv_tau;
    double d(int64_t r) const { return c * vs[r] - as[r] - peak; }
};

// The smallest R in [k, n-1] whose right tail (n-1-R elements, each <= exp(z_{R+1})) is within
// the bound, and the largest L in [0, k] likewise on the left (log_count[j] = log j). Each is the
// first index where a monotone predicate turns true (false then true), searched from a guess:
// the previous row's window shifted to this row's peak, which neighbouring rows nearly share.
// Galloping from the guess (steps 1, 2, 4, ... away from it until the predicate changes, then
// bisection of the last step) takes O(log |answer - guess|) evaluations instead of O(log n).
template <typename Pred>
int64_t first_true(Pred ok, int64_t lo, int64_t hi, int64_t guess) {
    // ok(hi) is true; the answer is the smallest r in [lo, hi] with ok(r)
    guess = std::min(std::max(guess, lo), hi);
    if (ok(guess)) {
        hi = guess;  // answer <= guess: gallop down
        for (int64_t step = 1; hi - step >= lo; step *= 2) {
            if (!ok(hi - step)) { lo = hi - step + 1; break; }
            hi -= step;
        }
    } else {
        lo = guess + 1;  // answer > guess: gallop up
        for (int64_t step = 1; lo + step - 1 < hi; step *= 2) {
            if (ok(lo + step - 1)) { hi = lo + step - 1; break; }
            lo += step;
        }
    }
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (ok(mid)) hi = mid; else lo = mid + 1;
    }
    return hi;
}

std::pair<int64_t, int64_t> window(const Row& row, double log_half_tol, const double* log_count,
                                   int64_t right_guess, int64_t left_guess) {
    const int64_t n = row.n, k = row.k;
    auto right_ok = [&](int64_t r) {
        return r == n - 1 || log_count[n - 1 - r] + row.d(r + 1) * row.inv_tau <= log_half_tol;
    };
    // in terms of s = k - l (dropping the l ranks below l), true from some s on
    auto left_ok = [&](int64_t s) {
        const int64_t l = k - s;
        return l == 0 || log_count[l] + row.d(l - 1) * row.inv_tau <= log_half_tol;
    };
    const int64_t right = first_true(right_ok, k, n - 1, k + right_guess);
    const int64_t left = k - first_true(left_ok, 0, k, left_guess);
    return {left, right};
}

Row make_row(const double* vs, const double* as, int64_t n, const double* coef,
             const int64_t* rank, int64_t i, double inv_tau) {
    Row row{vs, as, n, rank[i], coef[i], 0.0, inv_tau};
    row.peak = row.c * vs[row.k] - as[row.k];
    return row;
}

// Doubles in vectors of half as many lanes as nk::vf (one register each: a float vector's
// logits are computed from two of them, converted and joined).
constexpr int64_t kHalf = nk::kLanes / 2;
typedef double vd __attribute__((vector_size(kHalf * sizeof(double))));
typedef float vh __attribute__((vector_size(kHalf * sizeof(float))));

// the first count (0..kHalf) lanes of p; the others 0 (masked loads: nothing past them is read)
inline vd load_first_d(const double* p, int64_t count) {
#if defined(__AVX512F__)
    return (vd)_mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << count) - 1), p);
#elif defined(__AVX2__)
    const __m256i mask =
        _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3));
    return (vd)_mm256_maskload_pd(p, mask);
#else
    vd v = {};
    std::memcpy(&v, p, static_cast<size_t>(count) * sizeof(double));
    return v;
#endif
}
// (templates, so that only the branch of the build's width is compiled)
template <typename H = vh>
inline nk::vf join(H lo, H hi) {
    if constexpr (nk::kLanes == 16)
        return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    else if constexpr (nk::kLanes == 8)
        return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
    else
        return __builtin_shufflevector(lo, hi, 0, 1, 2, 3);
}
template <typename V = nk::vf>
inline vd lower_d(V v) {
    if constexpr (nk::kLanes == 16)
        return __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), vd);
    else if constexpr (nk::kLanes == 8)
        return __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), vd);
    else
        return __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1), vd);
}
template <typename V = nk::vf>
inline vd upper_d(V v) {
    if constexpr (nk::kLanes == 16)
        return __builtin_convertvector(
            __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15), vd);
    else if constexpr (nk::kLanes == 8)
        return __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), vd);
    else
        return __builtin_convertvector(__builtin_shufflevector(v, v, 2, 3), vd);
}

// d = c v - a - peak (float64, as Row::d) at count (1..kLanes) ranks from vs, as, in two halves
struct Differences {
    vd lo, hi;
};
inline Differences differences(const Row& row, const double* vs, const double* as,
                               int64_t count) {
    const vd c = nk::splat_as<vd>(row.c), peak = nk::splat_as<vd>(row.peak);
    if (count == nk::kLanes)
        return {c * nk::load_as<vd>(vs) - nk::load_as<vd>(as) - peak,
                c * nk::load_as<vd>(vs + kHalf) - nk::load_as<vd>(as + kHalf) - peak};
    const int64_t first = std::min(count, kHalf), second = count - first;
    return {c * load_first_d(vs, first) - load_first_d(as, first) - peak,
            c * load_first_d(vs + kHalf, second) - load_first_d(as + kHalf, second) - peak};
}

// float32 rows in one pass: e[r] = exp(z_{l+r} - z_k) over the window starting at rank l
// (width values), the differences d in float64, times 1/tau, rounded once to float, clamped
// and exponentiated, stored and summed; returns the sum of e. gq(j, count), when given, is
// the vector of the row's gradient of Q at window positions j.. (count of them; the other
// lanes any finite value): the pass then also returns sum_r e[r] gq[r], for the backward.
template <typename GQ>
inline std::pair<double, double> row_exps(const Row& row, int64_t l, int64_t width, float* e,
                                          GQ gq) {
    constexpr bool with_gq = !std::is_same_v<GQ, std::nullptr_t>;
    const vd inv_tau = nk::splat_as<vd>(row.inv_tau);
    nk::vf acc = {}, dot_acc = {};
    for (int64_t j = 0; j < width; j += nk::kLanes) {
        const int64_t count = std::min(nk::kLanes, width - j);
        const Differences d = differences(row, row.vs + l + j, row.as + l + j, count);
        const nk::vf t = join(__builtin_convertvector(d.lo * inv_tau, vh),
                              __builtin_convertvector(d.hi * inv_tau, vh));
        nk::vf ex = nk::vexp(nk::clamp(t, -nk::kExpFloorFloat, nk::kExpCeilingFloat));
        if (count < nk::kLanes) {
            nk::vf lane = {};
            for (int64_t q = 0; q < nk::kLanes; ++q) lane[q] = static_cast<float>(q);
            ex = nk::select(lane < nk::splat(static_cast<float>(count)), ex, nk::vf{});
        }
        store_part(e + j, ex, count);
        acc += ex;
        // in float lanes (each sums a few terms; gq itself is float), the lanes in float64
        if constexpr (with_gq) dot_acc = nk::fmadd(ex, gq(j, count), dot_acc);
    }
    const double dot = with_gq ? nk::lane_sum<double>(lower_d(dot_acc) + upper_d(dot_acc)) : 0.0;
    return {nk::lane_sum<float>(acc), dot};
}

// The row's window, not normalised: e[r] = exp(z_{l+r} - z_k) for r < width, returning their
// sum (float: row_exps; double: std::exp of the same differences).
inline double window_exps(const Row& row, int64_t l, int64_t width, float* e) {
    return row_exps(row, l, width, e, nullptr).first;
}
inline double window_exps(const Row& row, int64_t l, int64_t width, double* e) {
    double sum = 0;
    for (int64_t r = 0; r < width; ++r) {
        e[r] = std::exp(row.d(l + r) * row.inv_tau);
        sum += e[r];
    }
    return sum;
}

// sum_r gl[r] d_r over count (1..kLanes) ranks of the window (d in float64: tau (z - z_k))
inline double tau_terms(const Row& row, const double* vs, const double* as, nk::vf gl,
                        int64_t count) {
    const Differences d = differences(row, vs, as, count);
    return nk::lane_sum<double>(lower_d(gl) * d.lo + upper_d(gl) * d.hi);
}

template <typename T>
void forward_rows(const Tensor& vs, const Tensor& a, const Tensor& coef, const Tensor& rank,
                  double inv_tau, const Tensor& lo, const Tensor& hi, const Tensor& v,
                  const Tensor& w, Tensor& y, Tensor& u) {
    const int64_t n = vs.size(-1), batch = vs.numel() / n, m = coef.size(0);
    const int64_t c = v.numel() ? v.size(-1) : 0, cw = w.numel() ? w.size(0) : 0;
    const double *vp = vs.data_ptr<double>(), *ap = a.data_ptr<double>();
    const double* cp = coef.data_ptr<double>();
    const int64_t *rp = rank.data_ptr<int64_t>(), *lp = lo.data_ptr<int64_t>();
    const int64_t* hp = hi.data_ptr<int64_t>();
    const T* vv = c ? v.data_ptr<T>() : nullptr;
    const T* wv = cw ? w.data_ptr<T>() : nullptr;
    T* yp = c ? y.data_ptr<T>() : nullptr;
    T* up = cw ? u.data_ptr<T>() : nullptr;
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> buffer;
        for (int64_t b = begin; b < end; ++b) {
            for (int64_t i = 0; i < m; ++i) {
                const Row row = make_row(vp + b * n, ap + b * n, n, cp, rp, i, inv_tau);
                const int64_t l = lp[b * m + i], width = hp[b * m + i] - l + 1;
                buffer.resize(static_cast<size_t>(width));
                const T* __restrict e = buffer.data();
                const T scale = static_cast<T>(1.0 / window_exps(row, l, width, buffer.data()));
                if (c) {
                    T* yi = yp + (b * m + i) * c;
                    for (int64_t j = 0; j < c; ++j) yi[j] = 0;
                    for (int64_t r = 0; r < width; ++r)
                        for (int64_t j = 0; j < c; ++j) yi[j] += e[r] * vv[(b * n + l + r) * c + j];
                    for (int64_t j = 0; j < c; ++j) yi[j] *= scale;
                }
                int64_t j = 0;
                for (; j + 2 <= cw; j += 2) {  // two rows of w a pass (soft_rank has two)
                    const T w0 = wv[j * m + i] * scale, w1 = wv[(j + 1) * m + i] * scale;
                    T* __restrict u0 = up + (b * cw + j) * n + l;
                    T* __restrict u1 = u0 + n;
                    for (int64_t r = 0; r < width; ++r) {
                        u0[r] += w0 * e[r];
                        u1[r] += w1 * e[r];
                    }
                }
                if (j < cw) {
                    const T w0 = wv[j * m + i] * scale;
                    T* __restrict u0 = up + (b * cw + j) * n + l;
                    for (int64_t r = 0; r < width; ++r) u0[r] += w0 * e[r];
                }
            }
        }
    });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> windowed_forward(
    const Tensor& vs, const Tensor& a, const Tensor& coef, const Tensor& rank, double inv_tau,
    double tol, const Tensor& v, const Tensor& w) {
    TORCH_CHECK(vs.scalar_type() == at::kDouble && a.scalar_type() == at::kDouble &&
                    coef.scalar_type() == at::kDouble && rank.scalar_type() == at::kLong,
                "windowed_forward: vs, a, coef float64 and rank int64");
    const Tensor vsc = vs.contiguous(), ac = a.contiguous(), cc = coef.contiguous();
    const Tensor rc = rank.contiguous(), vc = v.contiguous(), wc = w.contiguous();
    const auto dtype = v.numel() ? v.scalar_type() : w.scalar_type();
    const int64_t n = vs.size(-1), batch = vs.numel() / n, m = coef.size(0);
    auto shape = vs.sizes().vec();
    shape.back() = m;
    Tensor lo = at::empty(shape, vs.options().dtype(at::kLong));
    Tensor hi = at::empty(shape, vs.options().dtype(at::kLong));
    const double log_half_tol = std::log(tol / 2);
    std::vector<double> log_count(static_cast<size_t>(n) + 1);
    for (int64_t j = 1; j <= n; ++j) log_count[j] = std::log(double(j));
    {
        const double *vp = vsc.data_ptr<double>(), *ap = ac.data_ptr<double>();
        const double* cp = cc.data_ptr<double>();
        const int64_t* rp = rc.data_ptr<int64_t>();
        int64_t *lp = lo.data_ptr<int64_t>(), *hp = hi.data_ptr<int64_t>();
        at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
            for (int64_t b = begin; b < end; ++b) {
                int64_t right_guess = 0, left_guess = 0;  // the previous row's reach
                for (int64_t i = 0; i < m; ++i) {
                    const Row row = make_row(vp + b * n, ap + b * n, n, cp, rp, i, inv_tau);
                    const auto [l, h] =
                        window(row, log_half_tol, log_count.data(), right_guess, left_guess);
                    lp[b * m + i] = l;
                    hp[b * m + i] = h;
                    right_guess = h - row.k;
                    left_guess = row.k - l;
                }
            }
        });
    }
    auto yshape = vs.sizes().vec();
    yshape.back() = m;
    if (v.numel()) yshape.push_back(v.size(-1));
    const auto options = vs.options().dtype(dtype);
    Tensor y = v.numel() ? at::empty(yshape, options) : at::empty({0}, options);
    auto ushape = vs.sizes().vec();
    if (w.numel()) ushape.insert(ushape.end() - 1, w.size(0));
    Tensor u = w.numel() ? at::zeros(ushape, options) : at::empty({0}, options);
    AT_DISPATCH_FLOATING_TYPES(dtype, "windowed_forward", [&] {
        forward_rows<scalar_t>(vsc, ac, cc, rc, inv_tau, lo, hi, vc, wc, y, u);
    });
    return {y, u, lo, hi};
}

// The backward of one row: gl = Q (gq - <Q, gq>) with gq = dQ = V gy + W^T gu over the window,
// into the gradients of v (through c_i), of a and, with need_tau, of tau (sum gl d).
// float32 rows without v: two vector passes (the row's exps with <e, gq>, then gl); the
// others build Q, then gq, then reduce.
template <typename T>
void backward_rows(const Tensor& vs, const Tensor& a, const Tensor& coef, const Tensor& rank,
                   double inv_tau, const Tensor& lo, const Tensor& hi, const Tensor& v,
                   const Tensor& w, const Tensor& gy, const Tensor& gu, bool need_v,
                   bool need_tau, Tensor& gvs, Tensor& gas, Tensor& gv, Tensor& tau_part) {
    const int64_t n = vs.size(-1), batch = vs.numel() / n, m = coef.size(0);
    const int64_t c = gy.numel() ? v.size(-1) : 0, cw = gu.numel() ? w.size(0) : 0;
    const double *vp = vs.data_ptr<double>(), *ap = a.data_ptr<double>();
    const double* cp = coef.data_ptr<double>();
    const int64_t *rp = rank.data_ptr<int64_t>(), *lp = lo.data_ptr<int64_t>();
    const int64_t* hp = hi.data_ptr<int64_t>();
    const T* vv = c ? v.data_ptr<T>() : nullptr;
    const T* gyp = c ? gy.data_ptr<T>() : nullptr;
    const T* wv = cw ? w.data_ptr<T>() : nullptr;
    const T* gup = cw ? gu.data_ptr<T>() : nullptr;
    T *gvsp = gvs.data_ptr<T>(), *gasp = gas.data_ptr<T>();
    T* gvp = need_v ? gv.data_ptr<T>() : nullptr;
    double* tp = tau_part.data_ptr<double>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> q, gq;
        for (int64_t b = begin; b < end; ++b) {
            double tau_sum = 0;
            for (int64_t i = 0; i < m; ++i) {
                const Row row = make_row(vp + b * n, ap + b * n, n, cp, rp, i, inv_tau);
                const int64_t l = lp[b * m + i], width = hp[b * m + i] - l + 1;
                T* gvsb = gvsp + b * n + l;
                T* gasb = gasp + b * n + l;
                const double* vsr = row.vs + l;
                const double* asr = row.as + l;
                q.resize(static_cast<size_t>(width));
                if constexpr (std::is_same_v<T, float>) {
                    if (!c) {
                        const float* gub = gup + b * cw * n + l;
                        auto grad_q = [&](int64_t at, int64_t count) {
                            nk::vf g = {};
                            for (int64_t j = 0; j < cw; ++j)
                                g += nk::splat(wv[j * m + i]) * load_part(gub + j * n + at, count);
                            return g;
                        };
                        const auto [sum, e_dot] = row_exps(row, l, width, q.data(), grad_q);
                        const double scale = 1.0 / sum;
                        const nk::vf vscale = nk::splat(static_cast<float>(scale));
                        const nk::vf vdot = nk::splat(static_cast<float>(e_dot * scale));
                        const nk::vf vc = nk::splat(static_cast<float>(row.c));
                        for (int64_t at = 0; at < width; at += nk::kLanes) {
                            const int64_t count = std::min(nk::kLanes, width - at);
                            const nk::vf gl =
                                vscale * load_part(q.data() + at, count) * (grad_q(at, count) - vdot);
                            store_part(gvsb + at, load_part(gvsb + at, count) + vc * gl, count);
                            store_part(gasb + at, load_part(gasb + at, count) + gl, count);
                            if (need_tau) tau_sum += tau_terms(row, vsr + at, asr + at, gl, count);
                        }
                        continue;
                    }
                }
                const T scale = static_cast<T>(1.0 / window_exps(row, l, width, q.data()));
                for (int64_t r = 0; r < width; ++r) q[r] *= scale;
                const T* qi = q.data();
                gq.assign(width, T(0));
                if (c) {
                    const T* gyi = gyp + (b * m + i) * c;
                    for (int64_t r = 0; r < width; ++r) {
                        const int64_t at = (b * n + l + r) * c;
                        T s = 0;
                        for (int64_t j = 0; j < c; ++j) s += vv[at + j] * gyi[j];
                        gq[r] += s;
                        if (need_v)
                            for (int64_t j = 0; j < c; ++j) gvp[at + j] += qi[r] * gyi[j];
                    }
                }
                for (int64_t j = 0; j < cw; ++j) {
                    const T wj = wv[j * m + i];
                    const T* guj = gup + (b * cw + j) * n + l;
                    for (int64_t r = 0; r < width; ++r) gq[r] += wj * guj[r];
                }
                // the sums are reductions the compiler may reorder (omp simd: several
                // accumulators in vector lanes instead of one chain of dependent adds)
                double dot = 0;
                const T* gqp = gq.data();
#pragma omp simd reduction(+ : dot)
                for (int64_t r = 0; r < width; ++r) dot += double(qi[r]) * double(gqp[r]);
                const T ci = static_cast<T>(row.c), dot_t = static_cast<T>(dot);
#pragma omp simd
                for (int64_t r = 0; r < width; ++r) {
                    const T gl = qi[r] * (gqp[r] - dot_t);
                    gvsb[r] += ci * gl;
                    gasb[r] += gl;
                }
                if (need_tau) {
                    double row_tau = 0;
#pragma omp simd reduction(+ : row_tau)
                    for (int64_t r = 0; r < width; ++r)
                        row_tau += double(qi[r] * (gqp[r] - dot_t)) *
                                   (row.c * vsr[r] - asr[r] - row.peak);
                    tau_sum += row_tau;
                }
            }
            tp[b] = tau_sum;
        }
    });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> windowed_backward(
    const Tensor& vs, const Tensor& a, const Tensor& coef, const Tensor& rank, double inv_tau,
    const Tensor& lo, const Tensor& hi, const Tensor& v, const Tensor& w, const Tensor& gy,
    const Tensor& gu, bool need_v, bool need_tau) {
    const Tensor vc = v.contiguous(), gyc = gy.contiguous(), guc = gu.contiguous();
    const int64_t n = vs.size(-1), batch = vs.numel() / n;
    const auto options = vs.options().dtype(gy.numel() ? gy.scalar_type() : gu.scalar_type());
    Tensor gvs = at::zeros(vs.sizes(), options);
    Tensor gas = at::zeros(vs.sizes(), options);
    Tensor gv = need_v ? at::zeros(v.sizes(), options) : at::empty({0}, options);
    Tensor tau_part = at::zeros({batch}, vs.options());
    AT_DISPATCH_FLOATING_TYPES(options.dtype().toScalarType(), "windowed_backward", [&] {
        backward_rows<scalar_t>(vs.contiguous(), a.contiguous(), coef.contiguous(),
                                rank.contiguous(), inv_tau, lo.contiguous(), hi.contiguous(), vc,
                                w.contiguous(), gyc, guc, need_v, need_tau, gvs, gas, gv,
                                tau_part);
    });
    return {gvs, gas, gv, tau_part.sum()};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(neuralsort, m) {
    m.def("windowed_forward(Tensor vs, Tensor a, Tensor coef, Tensor rank, float inv_tau, "
          "float tol, Tensor v, Tensor w) -> (Tensor, Tensor, Tensor, Tensor)");
    m.def("windowed_backward(Tensor vs, Tensor a, Tensor coef, Tensor rank, float inv_tau, "
          "Tensor lo, Tensor hi, Tensor v, Tensor w, Tensor gy, Tensor gu, bool need_v, "
          "bool need_tau) "
          "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(neuralsort, CPU, m) {
    m.impl("windowed_forward", &windowed_forward);
    m.impl("windowed_backward", &windowed_backward);
}
