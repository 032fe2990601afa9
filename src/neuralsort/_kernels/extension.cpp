// The torch operators neuralsort::relaxed_rows and neuralsort::relaxed_sorted_values:
// NeuralSort's relaxed permutation rows on the CPU, float32 and float64, with their backward, as
// one autograd node written in C++ (a Python autograd.Function costs more than the whole kernel
// for small inputs).
//
//   relaxed_rows(x, coef, rank_of_row, tau, logit_range)[..., i, j] = P[..., i, j]
//       = softmax_j((coef_i * xc_j - (A_xc 1)_j) / tau),   xc = x - mean(x) along the last axis
//   relaxed_sorted_values(x, ...)[..., i] = sum_j P[..., i, j] x[..., j]
//       (soft_sort and soft_quantile: the backward never forms the m x n gradient of P)
//
// Built on first use by neuralsort/_native.py; the kernels are in relaxed_rows.h (and the
// windows of tol= in windowed.cpp).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "relaxed_rows.h"

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
namespace k = neuralsort_kernels;

// batch elements per task: a task of ~8k outputs takes tens of microseconds, well above the
// cost of handing it to a thread
int64_t grain(int64_t m, int64_t n) {
    return std::max<int64_t>(1, (int64_t{1} << 13) / std::max<int64_t>(1, m * n));
}

template <typename T>
void run_forward(const Tensor& x, const Tensor& coef, const Tensor& rank_of_row, T inv_tau,
                 T logit_range, Tensor& p, Tensor& xc, Tensor& a, Tensor& order, Tensor* y) {
    const int64_t n = x.size(-1), m = coef.size(0), batch = x.numel() / n;
    const T* xp = x.data_ptr<T>();
    const T* cp = coef.data_ptr<T>();
    const int64_t* rp = rank_of_row.data_ptr<int64_t>();
    T* pp = p.data_ptr<T>();
    T* xcp = xc.data_ptr<T>();
    T* ap = a.data_ptr<T>();
    int64_t* op = order.data_ptr<int64_t>();
    T* yp = y != nullptr ? y->data_ptr<T>() : nullptr;
    at::parallel_for(0, batch, grain(m, n), [&](int64_t begin, int64_t end) {
        k::Scratch<T> scratch;
        scratch.resize(n);
        for (int64_t b = begin; b < end; ++b)
            k::forward_one(xp + b * n, n, cp, rp, m, inv_tau, logit_range, pp + b * m * n,
                           xcp + b * n, ap + b * n, op + b * n, scratch,
                           yp != nullptr ? yp + b * m : nullptr);
    });
}

template <typename T>
void run_backward(const Tensor& g, const Tensor& p, const Tensor& coef, const Tensor& rank_of_row,
                  T inv_tau, const Tensor& order, const Tensor& xc, const Tensor& a, Tensor& gx,
                  double* tau_part, bool values) {
    const int64_t n = xc.size(-1), m = coef.size(0), batch = xc.numel() / n;
    const T* gp = g.data_ptr<T>();
    const T* pp = p.data_ptr<T>();
    const T* cp = coef.data_ptr<T>();
    const int64_t* rp = rank_of_row.data_ptr<int64_t>();
    const int64_t* op = order.data_ptr<int64_t>();
    const T* xcp = xc.data_ptr<T>();
    const T* ap = a.data_ptr<T>();
    T* gxp = gx.data_ptr<T>();
    const int64_t g_stride = values ? m : m * n;  // g is the gradient of y (m) or of P (m x n)
    at::parallel_for(0, batch, grain(m, n), [&](int64_t begin, int64_t end) {
        const auto un = static_cast<size_t>(n);
        std::vector<T> u(un), v(un), l(un);  // l: one row of the softmax backward
        std::vector<T> direct(values ? static_cast<size_t>(n) : 0);
        std::vector<int32_t> rank(k::kCombinesByRank<T> ? static_cast<size_t>(n) : 0);
        std::vector<double> inclusive(static_cast<size_t>(n));  // rank_combine's
        std::vector<int64_t> peak(tau_part != nullptr ? static_cast<size_t>(m) : 0);
        for (int64_t b = begin; b < end; ++b) {
            const int64_t* ob = op + b * n;
            for (size_t i = 0; i < peak.size(); ++i) peak[i] = ob[rp[i]];  // each row's peak
            k::backward_one(gp + b * g_stride, pp + b * m * n, n, cp, m, inv_tau, ob,
                            xcp + b * n, ap + b * n, gxp + b * n, peak.data(),
                            tau_part != nullptr ? tau_part + b : nullptr, u.data(), v.data(),
                            l.data(), rank.data(), inclusive.data(),
                            values ? direct.data() : nullptr);
        }
    });
}

// create_graph=True: the PyTorch path's differentiable formulas (neuralsort._dense.rows_backward,
// registered from Python as neuralsort_py::rows_backward when neuralsort.ops is imported), so
// that the maths of the second derivatives exists once. Returns (grad_x, grad_tau); a gradient
// not asked for comes back as an empty tensor.
std::tuple<Tensor, Tensor> differentiable_backward(const Tensor& grad_p, const Tensor& p,
                                                   const Tensor& xc, const Tensor& a,
                                                   const Tensor& coef, const Tensor& tau,
                                                   const Tensor& order, const Tensor& x,
                                                   bool need_x, bool need_tau) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("neuralsort_py::rows_backward", "")
                         .typed<std::tuple<Tensor, Tensor>(
                             const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                             const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool,
                             bool)>();
    return op.call(grad_p, p, xc, a, coef, tau, order, x, need_x, need_tau);
}

// ---------------------------------------------------------------------------------------------
// kernels behind the dispatcher: CPU does the work, Meta only gives shapes (what torch.compile's
// fake tensors run)
// ---------------------------------------------------------------------------------------------

// x (..., n) -> y (..., m)
std::vector<int64_t> values_shape(const Tensor& x, int64_t m) {
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = m;
    return sizes;
}

// x (..., n) -> p (..., m, n)
std::vector<int64_t> rows_shape(const Tensor& x, int64_t m) {
    std::vector<int64_t> sizes = values_shape(x, m);
    sizes.push_back(x.size(-1));
    return sizes;
}

using Forward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// (p, xc, a, order, y): y = p x along the last axis when `values`, else an empty tensor
Forward forward_cpu(const Tensor& x, const Tensor& coef, const Tensor& rank_of_row,
                    const Tensor& tau, double logit_range, bool values) {
    TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, "neuralsort::relaxed_rows: empty last axis");
    TORCH_CHECK(x.size(-1) <= std::numeric_limits<int32_t>::max(),
                "neuralsort::relaxed_rows: rows of 2**31 or more elements are not supported "
                "(ranks are 32-bit); use the PyTorch path (neuralsort.backends.native(False))");
    const Tensor xin = x.contiguous();
    const Tensor cin = coef.to(x.scalar_type()).contiguous();
    const Tensor rin = rank_of_row.to(at::kLong).contiguous();
    const double inv_tau = 1.0 / tau.item<double>();
    Tensor p = at::empty(rows_shape(x, cin.size(0)), x.options());
    Tensor xc = at::empty_like(xin);
    Tensor a = at::empty_like(xin);
    Tensor order = at::empty(xin.sizes(), xin.options().dtype(at::kLong));
    Tensor y = values ? at::empty(values_shape(x, cin.size(0)), x.options()) : at::empty({0}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "neuralsort::relaxed_rows_forward", [&] {
        run_forward<scalar_t>(xin, cin, rin, static_cast<scalar_t>(inv_tau),
                              static_cast<scalar_t>(logit_range), p, xc, a, order,
                              values ? &y : nullptr);
    });
    return {p, xc, a, order, y};
}

Forward forward_meta(const Tensor& x, const Tensor& coef, const Tensor&, const Tensor&, double,
                     bool values) {
    const int64_t m = coef.size(0);
    return {at::empty(rows_shape(x, m), x.options()), at::empty_like(x), at::empty_like(x),
            at::empty(x.sizes(), x.options().dtype(at::kLong)),
            at::empty(values ? values_shape(x, m) : std::vector<int64_t>{0}, x.options())};
}

// grad is the gradient of p, or with `values` of y = p x
std::tuple<Tensor, Tensor> backward_cpu(const Tensor& grad, const Tensor& p, const Tensor& coef,
                                        const Tensor& rank_of_row, const Tensor& tau,
                                        const Tensor& order, const Tensor& xc, const Tensor& a,
                                        bool need_tau, bool values) {
    const double inv_tau = 1.0 / tau.item<double>();
    const Tensor g = grad.to(p.scalar_type()).contiguous();
    const Tensor cin = coef.to(p.scalar_type()).contiguous();
    const Tensor rin = rank_of_row.to(at::kLong).contiguous();
    Tensor grad_x = at::empty_like(xc);
    const int64_t batch = xc.numel() / xc.size(-1);
    Tensor tau_part = at::empty({need_tau ? batch : 0}, xc.options().dtype(at::kDouble));
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "neuralsort::relaxed_rows_backward", [&] {
        run_backward<scalar_t>(g, p, cin, rin, static_cast<scalar_t>(inv_tau), order, xc, a,
                               grad_x, need_tau ? tau_part.data_ptr<double>() : nullptr, values);
    });
    Tensor grad_tau = need_tau ? (tau_part.sum() * (-inv_tau * inv_tau)).to(tau.scalar_type())
                               : at::empty({}, tau.options());  // not used
    return {grad_x, grad_tau};
}

std::tuple<Tensor, Tensor> backward_meta(const Tensor&, const Tensor&, const Tensor&,
                                         const Tensor&, const Tensor& tau, const Tensor&,
                                         const Tensor& xc, const Tensor&, bool, bool) {
    return {at::empty_like(xc), at::empty({}, tau.options())};
}

// ---------------------------------------------------------------------------------------------
// autograd: one C++ node that calls the two operators above through the dispatcher
// ---------------------------------------------------------------------------------------------

Forward call_forward(const Tensor& x, const Tensor& coef, const Tensor& rank_of_row,
                     const Tensor& tau, double logit_range, bool values) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("neuralsort::relaxed_rows_forward", "")
                         .typed<decltype(forward_cpu)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // this node is the autograd
    return op.call(x, coef, rank_of_row, tau, logit_range, values);
}

std::tuple<Tensor, Tensor> call_backward(const Tensor& grad, const Tensor& p, const Tensor& coef,
                                         const Tensor& rank_of_row, const Tensor& tau,
                                         const Tensor& order, const Tensor& xc, const Tensor& a,
                                         bool need_tau, bool values) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("neuralsort::relaxed_rows_backward", "")
                         .typed<decltype(backward_cpu)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(grad, p, coef, rank_of_row, tau, order, xc, a, need_tau, values);
}

// `values` false: the output is P (..., m, n); true: y = P x (..., m), the relaxed sorted values.
struct RelaxedRows : public torch::autograd::Function<RelaxedRows> {
    static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& coef,
                          const Tensor& rank_of_row, const Tensor& tau, double logit_range,
                          bool values) {
        auto [p, xc, a, order, y] = call_forward(x, coef, rank_of_row, tau, logit_range, values);
        ctx->save_for_backward({p, xc, a, coef, tau, order, x, rank_of_row});
        ctx->saved_data["values"] = values;
        ctx->saved_data["logit_range"] = logit_range;
        return values ? y : p;
    }

    static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
        const auto saved = ctx->get_saved_variables();
        const Tensor &p = saved[0], &xc = saved[1], &a = saved[2], &coef = saved[3];
        const Tensor &tau = saved[4], &order = saved[5], &x = saved[6], &rank_of_row = saved[7];
        const bool values = ctx->saved_data["values"].toBool();
        const bool need_x = ctx->needs_input_grad(0), need_tau = ctx->needs_input_grad(3);
        Tensor grad_x, grad_tau;
        const Tensor& grad = grads[0];
        if (!grad.defined() || !(need_x || need_tau)) return {grad_x, {}, {}, grad_tau, {}, {}};
        if (at::GradMode::is_enabled()) {
            // create_graph=True: differentiable formulas. P must depend on x in the graph: it
            // does as this node's output; as an intermediate (values) it is built again by a
            // differentiable call.
            const Tensor pd =
                values ? RelaxedRows::apply(x, coef, rank_of_row, tau,
                                            ctx->saved_data["logit_range"].toDouble(), false)
                       : p;
            const Tensor grad_p = values ? grad.unsqueeze(-1) * x.unsqueeze(-2) : grad;
            std::tie(grad_x, grad_tau) = differentiable_backward(
                grad_p, pd, xc, a, coef.to(pd.scalar_type()), tau, order, x, need_x, need_tau);
            if (need_x && values)  // x as the values, too
                grad_x = grad_x + (grad.unsqueeze(-1) * pd).sum(-2);
            return {need_x ? grad_x : Tensor(), {}, {}, need_tau ? grad_tau : Tensor(), {}, {}};
        }
        std::tie(grad_x, grad_tau) =
            call_backward(grad, p, coef, rank_of_row, tau, order, xc, a, need_tau, values);
        return {need_x ? grad_x : Tensor(), {}, {}, need_tau ? grad_tau : Tensor(), {}, {}};
    }
};

Tensor relaxed_rows(const Tensor& x, const Tensor& coef, const Tensor& rank_of_row,
                    const Tensor& tau, double logit_range) {
    return RelaxedRows::apply(x, coef, rank_of_row, tau, logit_range, false);
}

Tensor relaxed_sorted_values(const Tensor& x, const Tensor& coef, const Tensor& rank_of_row,
                             const Tensor& tau, double logit_range) {
    return RelaxedRows::apply(x, coef, rank_of_row, tau, logit_range, true);
}

}  // namespace

// What the build targets: the width of the kernel's float vectors and the instruction set.
// The stable ascending order of each row of float32 x (-0 sorts as +0, so equal values keep
// their index order): the kernels' radix sort, for the Python paths' sorts of long rows.
Tensor ascending_order(const Tensor& x) {
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() >= 1, "ascending_order: float32 rows");
    const Tensor xc = x.contiguous();
    const int64_t n = x.size(-1), batch = n ? x.numel() / n : 0;
    Tensor order = at::empty(x.sizes(), x.options().dtype(at::kLong));
    const float* xp = xc.data_ptr<float>();
    int64_t* op = order.data_ptr<int64_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> key(static_cast<size_t>(n));
        std::vector<uint64_t> entries(2 * static_cast<size_t>(n));
        for (int64_t b = begin; b < end; ++b) {
            for (int64_t j = 0; j < n; ++j) key[j] = xp[b * n + j] + 0.0f;
            k::radix_order(key.data(), n, op + b * n, entries.data());
        }
    });
    return order;
}

std::string build_info() {
    const std::string isa =
#if defined(__AVX512F__)
        "AVX-512";
#elif defined(__AVX2__)
        "AVX2";
#elif defined(__AVX__)
        "AVX";
#elif defined(__aarch64__)
        "NEON";
#elif defined(__SSE2__)
        "SSE2";
#else
        "generic";
#endif
    return std::to_string(k::kLanes) + "-float vectors (" + isa + ")";
}

TORCH_LIBRARY(neuralsort, m) {
    m.def("build_info() -> str", &build_info);
    m.def("ascending_order(Tensor x) -> Tensor");
    // public, differentiable (their autograd is the C++ node above): the rows of P, or P x
    m.def("relaxed_rows(Tensor x, Tensor coef, Tensor rank_of_row, Tensor tau, float logit_range)"
          " -> Tensor");
    m.def("relaxed_sorted_values(Tensor x, Tensor coef, Tensor rank_of_row, Tensor tau, "
          "float logit_range) -> Tensor");
    // the two halves, as opaque operators (so torch.compile traces them without reading data)
    m.def("relaxed_rows_forward(Tensor x, Tensor coef, Tensor rank_of_row, Tensor tau, "
          "float logit_range, bool values) -> (Tensor p, Tensor xc, Tensor a, Tensor order, "
          "Tensor y)");
    m.def("relaxed_rows_backward(Tensor grad, Tensor p, Tensor coef, Tensor rank_of_row, "
          "Tensor tau, Tensor order, Tensor xc, Tensor a, bool need_tau, bool values) "
          "-> (Tensor grad_x, Tensor grad_tau)");
}

TORCH_LIBRARY_IMPL(neuralsort, CompositeImplicitAutograd, m) {
    m.impl("relaxed_rows", &relaxed_rows);
    m.impl("relaxed_sorted_values", &relaxed_sorted_values);
}

TORCH_LIBRARY_IMPL(neuralsort, CPU, m) {
    m.impl("ascending_order", &ascending_order);
    m.impl("relaxed_rows_forward", &forward_cpu);
    m.impl("relaxed_rows_backward", &backward_cpu);
}

TORCH_LIBRARY_IMPL(neuralsort, Meta, m) {
    m.impl("relaxed_rows_forward", &forward_meta);
    m.impl("relaxed_rows_backward", &backward_meta);
}
