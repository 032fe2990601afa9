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
// (through c_i), of a and of tau.
// The autograd node is neuralsort/_windowed.py's _Windowed; this file has no autograd.
// Its own translation unit beside extension.cpp; the vector exp comes from simd.h.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "simd.h"

namespace {

using at::Tensor;

// exp of a window's logits in place, returning their sum. float: the kernel's vector exp,
// floored kExpFloorFloat below the peak as the dense rows are (no subnormals), the last partial
// vector by masked moves (lanes past the window neither read, written nor summed); double:
// std::exp.
inline double exp_in_place(float* p, int64_t width) {
    namespace nk = neuralsort_kernels;
    nk::vf acc = {};
    int64_t j = 0;
    for (; j + nk::kLanes <= width; j += nk::kLanes) {
        const nk::vf e = nk::vexp(nk::clamp(nk::load(p + j), -nk::kExpFloorFloat, nk::kExpCeilingFloat));
        nk::store(p + j, e);
        acc += e;
    }
    if (j < width) {
        const int64_t count = width - j;
        const nk::vf t = nk::load_first(p + j, count);
        const nk::vf e = nk::vexp(nk::clamp(t, -nk::kExpFloorFloat, nk::kExpCeilingFloat));
        nk::store_first(p + j, e, count);
        nk::vf lane = {};
        for (int64_t l = 0; l < nk::kLanes; ++l) lane[l] = static_cast<float>(l);
        acc += nk::select(lane < nk::splat(static_cast<float>(count)), e, nk::vf{});
    }
    return nk::lane_sum<float>(acc);
}

inline double exp_in_place(double* p, int64_t width) {
    double sum = 0;
    for (int64_t j = 0; j < width; ++j) {
        p[j] = std::exp(p[j]);
        sum += p[j];
    }
    return sum;
}

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

// row i of Q over its window [l, h] into q (h - l + 1 values)
template <typename T>
void fill_row(const Row& row, int64_t l, int64_t h, T* q) {
    for (int64_t r = l; r <= h; ++r) q[r - l] = static_cast<T>(row.d(r) * row.inv_tau);
    const T scale = static_cast<T>(1.0 / exp_in_place(q, h - l + 1));
    for (int64_t r = 0; r <= h - l; ++r) q[r] *= scale;
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
        std::vector<T> q;
        for (int64_t b = begin; b < end; ++b) {
            for (int64_t i = 0; i < m; ++i) {
                const Row row = make_row(vp + b * n, ap + b * n, n, cp, rp, i, inv_tau);
                const int64_t l = lp[b * m + i], h = hp[b * m + i];
                q.resize(static_cast<size_t>(h - l + 1));
                T* qi = q.data();
                fill_row(row, l, h, qi);
                if (c) {
                    T* yi = yp + (b * m + i) * c;
                    for (int64_t j = 0; j < c; ++j) yi[j] = 0;
                    for (int64_t r = l; r <= h; ++r)
                        for (int64_t j = 0; j < c; ++j) yi[j] += qi[r - l] * vv[(b * n + r) * c + j];
                }
                for (int64_t j = 0; j < cw; ++j) {
                    const T wj = wv[j * m + i];
                    T* uj = up + (b * cw + j) * n + l;
                    for (int64_t r = 0; r <= h - l; ++r) uj[r] += wj * qi[r];
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

template <typename T>
void backward_rows(const Tensor& vs, const Tensor& a, const Tensor& coef, const Tensor& rank,
                   double inv_tau, const Tensor& lo, const Tensor& hi, const Tensor& v,
                   const Tensor& w, const Tensor& gy, const Tensor& gu, bool need_v,
                   Tensor& gvs, Tensor& gas, Tensor& gv, Tensor& tau_part) {
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
                const int64_t l = lp[b * m + i], h = hp[b * m + i], width = h - l + 1;
                q.resize(static_cast<size_t>(width));
                const T* qi = q.data();
                fill_row(row, l, h, q.data());
                gq.assign(width, T(0));
                if (c) {
                    const T* gyi = gyp + (b * m + i) * c;
                    for (int64_t r = l; r <= h; ++r) {
                        T s = 0;
                        for (int64_t j = 0; j < c; ++j) s += vv[(b * n + r) * c + j] * gyi[j];
                        gq[r - l] += s;
                        if (need_v)
                            for (int64_t j = 0; j < c; ++j)
                                gvp[(b * n + r) * c + j] += qi[r - l] * gyi[j];
                    }
                }
                for (int64_t j = 0; j < cw; ++j) {
                    const T wj = wv[j * m + i];
                    const T* guj = gup + (b * cw + j) * n;
                    for (int64_t r = l; r <= h; ++r) gq[r - l] += wj * guj[r];
                }
                // the two sums are reductions the compiler may reorder (omp simd: several
                // accumulators in vector lanes instead of one chain of dependent adds)
                double dot = 0;
                const T* gqp = gq.data();
#pragma omp simd reduction(+ : dot)
                for (int64_t r = 0; r < width; ++r) dot += double(qi[r]) * double(gqp[r]);
                const T ci = static_cast<T>(row.c), dot_t = static_cast<T>(dot);
                T* gvsb = gvsp + b * n + l;
                T* gasb = gasp + b * n + l;
                const double* vsr = row.vs + l;
                const double* asr = row.as + l;
                double row_tau = 0;
#pragma omp simd reduction(+ : row_tau)
                for (int64_t r = 0; r < width; ++r) {
                    const T gl = qi[r] * (gqp[r] - dot_t);
                    gvsb[r] += ci * gl;
                    gasb[r] += gl;
                    row_tau += double(gl) * (row.c * vsr[r] - asr[r] - row.peak);
                }
                tau_sum += row_tau;
            }
            tp[b] = tau_sum;
        }
    });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> windowed_backward(
    const Tensor& vs, const Tensor& a, const Tensor& coef, const Tensor& rank, double inv_tau,
    const Tensor& lo, const Tensor& hi, const Tensor& v, const Tensor& w, const Tensor& gy,
    const Tensor& gu, bool need_v) {
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
                                w.contiguous(), gyc, guc, need_v, gvs, gas, gv, tau_part);
    });
    return {gvs, gas, gv, tau_part.sum()};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(neuralsort, m) {
    m.def("windowed_forward(Tensor vs, Tensor a, Tensor coef, Tensor rank, float inv_tau, "
          "float tol, Tensor v, Tensor w) -> (Tensor, Tensor, Tensor, Tensor)");
    m.def("windowed_backward(Tensor vs, Tensor a, Tensor coef, Tensor rank, float inv_tau, "
          "Tensor lo, Tensor hi, Tensor v, Tensor w, Tensor gy, Tensor gu, bool need_v) "
          "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(neuralsort, CPU, m) {
    m.impl("windowed_forward", &windowed_forward);
    m.impl("windowed_backward", &windowed_backward);
}
