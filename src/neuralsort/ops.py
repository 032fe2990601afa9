r"""NeuralSort: the continuous relaxation of the sorting permutation matrix.

For scores :math:`s \in \mathbb{R}^n` let :math:`A_s[j, k] = |s_j - s_k|`. Row :math:`i`
(1-based) of the relaxed permutation matrix is

.. math::

    \hat P[i, :] = \operatorname{softmax}\big(((n + 1 - 2i)\, s - A_s \mathbf{1}) / \tau\big),

a soft one-hot of the index of the :math:`i`-th **largest** score (Grover et al., ICLR 2019).
:math:`\hat P` is unimodal row-stochastic and tends to the hard sorting permutation matrix as
:math:`\tau \to 0^+`. The ascending order is the same matrix with its rows reversed, which is what
``descending=False`` (the default, as in :func:`torch.sort`) returns.

Convention used throughout: the output has the sorted axis moved last and its rows indexed by sorted
position, so ``P @ x`` sorts ``x``; row ``i`` is a distribution over the input elements.

Implementation notes:

* On the CPU (float32/float64) the rows come from one C++ operator (``_kernels/``, built on
  first use; see :mod:`neuralsort.backends`): per batch element one ranking of the scores, then
  each row built, exponentiated and normalised in one pass; its backward reduces the softmax
  gradient on the fly. :func:`soft_sort` and :func:`soft_quantile` use a second entry point that
  also applies the rows to the scores, so their backward never forms the gradient of the rows.
* Elsewhere the same formulas run as PyTorch ops in :class:`_RelaxedRows`, with a hand-written
  backward.
* :math:`A_s \mathbf{1}` (the row sums of absolute differences) is computed in
  :math:`O(n \log n)` from one sort and a prefix sum, accumulated in float64; the matrix of
  differences is never formed and nothing is multiplied by a ones matrix.
* Only the requested rows are built, so :func:`soft_topk` costs :math:`O(kn)` and
  :func:`soft_quantile` :math:`O(n)` per quantile.
* Half-precision inputs are computed in float32 and returned in their own dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from . import _native, _streamed, _triton
from ._checks import (
    TauLike,
    check_mask,
    check_positive_int,
    check_sort_input,
    compute_dtype,
    is_compiling,
    is_transformed,
)

__all__ = [
    "neural_sort",
    "soft_sort",
    "soft_rank",
    "soft_topk",
    "soft_topk_mask",
    "soft_quantile",
    "stochastic_neural_sort",
    "permutation_matrix",
    "sample_gumbel",
]


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------


def _accumulation_dtype(x: Tensor) -> torch.dtype:
    # float64 prefix sums keep A_s·1 accurate for large |scores|; MPS has no float64.
    if x.device.type == "mps":
        return x.dtype
    return torch.float64


def _ascending_order(x: Tensor) -> Tensor:
    """Indices sorting ``x`` ascending along the last axis, stably (no gradient needed).

    Ties go to the earlier index, as in the native and Triton kernels: the gradient of
    ``A_s 1`` at tied scores is a subgradient that depends on the order of the
    ties, so every backend must break them alike. On the CPU numpy sorts short rows several
    times faster than ``torch.sort``; float32 rows are sorted as unique 64-bit keys (the
    order-preserving bits of the value, then the index), which needs no stable algorithm.
    torch.compile cannot trace those numpy bit operations, so compiled code sorts stably.
    """
    if is_compiling():
        return _sort_order(x.detach(), descending=False)
    if x.device.type == "cpu" and x.dtype == torch.float32:
        bits = (x.detach().numpy() + np.float32(0.0)).view(np.uint32)  # (-0.0 + 0.0 = +0.0)
        ordered = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31)).astype(np.uint64)
        keys = (ordered << np.uint64(32)) | np.arange(x.shape[-1], dtype=np.uint64)
        return torch.from_numpy((np.sort(keys, axis=-1) & np.uint64(0xFFFFFFFF)).astype(np.int64))
    if x.device.type == "cpu" and x.dtype == torch.float64:
        return torch.from_numpy(np.argsort(x.detach().numpy(), axis=-1, kind="stable"))
    return _sort_order(x.detach(), descending=False)


def _centred(x: Tensor) -> Tensor:
    """``x`` less its mean along the last axis, the mean summed in float64 and rounded once
    (as the native kernel does): ``P`` is shift-invariant, but how ``x - mean`` rounds is not,
    and float32 results should not depend on the machine's summation order."""
    return x - x.mean(dim=-1, keepdim=True, dtype=_accumulation_dtype(x)).to(x.dtype)


def _cached(fn, *args):
    """``fn(*args)`` through its ``lru_cache``, except while torch.compile traces (which would
    ignore the cache and warn): small constants cost a kernel launch each to build."""
    return fn.__wrapped__(*args) if is_compiling() else fn(*args)


@functools.lru_cache(maxsize=256)
def _ramp(n: int, offset: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``2 r - offset`` for ``r = 0..n-1`` (cached: small constants cost a kernel launch each)."""
    return torch.arange(n, device=device, dtype=dtype).mul_(2).sub_(offset)


def _abs_dev_rowsum(
    x: Tensor, order: Tensor, *, differentiable: bool = False
) -> tuple[Tensor, Tensor | None]:
    r"""``(A_s 1)_j = sum_k |x_j - x_k|`` along the last axis in O(n log n), without autograd.

    ``order`` is the ascending sorting permutation of ``x``. With the values sorted ascending,
    ``v_0 <= ... <= v_{n-1}``, exclusive prefix sums ``S_r = sum_{t<r} v_t`` and total ``T``,
    the element of ascending rank ``r`` has ``sum_k |v_r - v_k| = (2r - n) v_r + T - 2 S_r``.

    Returns ``(a, a_lo)``: the sums, summed in float64 and rounded to ``x``'s dtype, and what
    that rounding dropped (``None`` where nothing is dropped). Differences ``a_j - a_k`` taken as
    ``(a_j - a_k) + (a_lo_j - a_lo_k)`` keep float64's precision (see :func:`_softmax_rows`).
    With ``differentiable``, only out-of-place ops that autograd and :mod:`torch.func` follow
    (the order is fixed: at ties, the subgradient of that order).
    """
    n = x.shape[-1]
    wide = x.to(_accumulation_dtype(x))
    # about the mean (the sums are shift-invariant): no cancellation for large |x|
    v = (wide - wide.mean(dim=-1, keepdim=True)).gather(-1, order)
    inclusive = torch.cumsum(v, dim=-1)
    # (2r - n) v + T - 2 (inclusive - v) = (2r - n + 2) v + T - 2 inclusive
    ramp = _cached(_ramp, n, n - 2, x.device, v.dtype)
    rowsum_sorted = torch.addcmul(inclusive[..., -1:] - 2 * inclusive, ramp, v)
    rounded = rowsum_sorted.to(x.dtype)
    dropped = None
    if rowsum_sorted.dtype != x.dtype:
        dropped = (rowsum_sorted - rounded.to(rowsum_sorted.dtype)).to(x.dtype)
    if differentiable:
        inverse = torch.argsort(order, dim=-1)
        return rounded.gather(-1, inverse), None if dropped is None else dropped.gather(-1, inverse)
    a = torch.empty_like(x).scatter_(-1, order, rounded)
    return a, None if dropped is None else torch.empty_like(x).scatter_(-1, order, dropped)


def _abs_dev_rowsum_backward(grad_a: Tensor, order: Tensor) -> Tensor:
    r"""Vector-Jacobian product of :func:`_abs_dev_rowsum`: ``g_k = sum_j ga_j d a_j / d x_k``.

    ``d a_j / d x_k = -sign(x_j - x_k)`` for ``j != k`` and ``sum_t sign(x_k - x_t)`` for
    ``j = k``. In ascending order, with ``G`` the exclusive prefix sums of ``ga``, this is
    ``2 G_r - (sum ga - ga_r) + ga_r (2r - n + 1)`` for the element of rank ``r`` (ties follow
    ``order``, as the forward's prefix sums do).
    """
    n = grad_a.shape[-1]
    gs = grad_a.gather(-1, order)
    inclusive = torch.cumsum(gs, dim=-1)
    # 2 (inclusive - gs) - total + gs + gs (2r - n + 1) = 2 inclusive - total + gs (2r - n)
    ramp = _cached(_ramp, n, n, grad_a.device, gs.dtype)
    sorted_grad = torch.addcmul(2 * inclusive - inclusive[..., -1:], ramp, gs)
    return torch.empty_like(grad_a).scatter_(-1, order, sorted_grad)


# exp(-range) stays a normal number with room to spare for the products of the backward pass:
# float32's smallest normal is exp(-87.3), float64's exp(-708.4)
_LOGIT_RANGE = {torch.float32: 64.0, torch.float64: 600.0}


def _softmax_rows(
    xc: Tensor,
    a: Tensor,
    a_lo: Tensor | None,
    order: Tensor,
    coef: Tensor,
    rank_of_row: Tensor,
    inv_tau: Tensor,
    *,
    differentiable: bool = False,
) -> Tensor:
    r"""The rows ``coef`` of :math:`\hat P` from the scores, ``A 1`` (``a`` and its
    dropped part ``a_lo``, :func:`_abs_dev_rowsum`) and their order.

    Each row's logits are taken relative to the element ``k`` the row peaks at (the unimodality
    theorem gives ``k`` in advance),

    .. math::

        t_{ij} = \big(c_i (x_j - x_k) - (a_j - a_k)\big) / \tau \;\le\; 0,

    with every difference taken before anything is scaled: its rounding is then relative to the
    difference, not to :math:`|c_i x_j|` or :math:`|a_j|`, which are of size :math:`n |x|` and
    would leave no correct digit in float32 for long rows at small ``tau``. On the CPU the
    logits are floored at ``-_LOGIT_RANGE`` (see :class:`_RelaxedRows`); then one softmax (in
    place where that is safe, never with ``differentiable``: then autograd and :mod:`torch.func`
    follow every op).
    """
    peak = order.index_select(-1, rank_of_row)
    peak_of = lambda t: t.gather(-1, peak).unsqueeze(-1)  # noqa: E731
    if differentiable:
        da = a.unsqueeze(-2) - peak_of(a)
        if a_lo is not None:
            da = (da + a_lo.unsqueeze(-2)) - peak_of(a_lo)
        dx = xc.unsqueeze(-2) - peak_of(xc)
        logits = torch.addcmul(da * -inv_tau, dx, (coef * inv_tau).unsqueeze(-1))
        if logits.device.type == "cpu":
            logits = logits.clamp(min=-_LOGIT_RANGE[xc.dtype])
        return torch.softmax(logits, dim=-1)
    logits = a.unsqueeze(-2) - peak_of(a)
    if a_lo is not None:
        logits.add_(a_lo.unsqueeze(-2)).sub_(peak_of(a_lo))
    logits.mul_(-inv_tau)
    dx = xc.unsqueeze(-2) - peak_of(xc)
    logits.addcmul_(dx, (coef * inv_tau).unsqueeze(-1))
    del dx
    on_cpu = logits.device.type == "cpu"
    if on_cpu:
        logits.clamp_(min=-_LOGIT_RANGE[xc.dtype])
    if on_cpu and logits.is_contiguous():
        # in place (only safe on contiguous memory): saves one (..., m, n) allocation and its
        # page faults per call
        return torch.ops.aten._softmax.out(logits, -1, False, out=logits)
    return torch.softmax(logits, dim=-1)


class _RelaxedRows(torch.autograd.Function):
    """``softmax((coef_i * x_j - (A_x 1)_j) / tau)`` over ``j`` for the rows ``i`` in ``coef``.

    One autograd node for the whole operator (small inputs are dominated by per-op overhead):

    * forward: sort ``x`` once (the order gives both ``A_x 1`` by prefix sums and each row's
      argmax), build the ``(..., m, n)`` logits relative to each row's peak
      (:func:`_softmax_rows`), floor them, and take one softmax (in place on the CPU);
    * backward: one fused softmax backward, one ``(2, m) @ (..., m, n)`` product for the two
      reductions over rows, and O(n) prefix sums for the path through ``A_x 1``.

    ``rank_of_row`` holds, for each row, the ascending rank of the element it peaks at (the
    unimodality theorem). On the CPU, logits further than ``_LOGIT_RANGE`` below their row's
    maximum are raised to that bound, so the softmax never produces subnormal numbers (which
    slow CPU arithmetic several-fold); the mass this adds is below ``n * 1e-27``. Other devices
    compute subnormals at full speed and skip the six kernel launches this takes.
    """

    @staticmethod
    def forward(ctx, x: Tensor, coef: Tensor, tau: Tensor, rank_of_row: Tensor) -> Tensor:  # type: ignore[override]
        xc = x.contiguous()  # the logits use differences of scores only: no shift needed
        order = _ascending_order(xc)
        a, a_lo = _abs_dev_rowsum(xc, order)
        p = _softmax_rows(xc, a, a_lo, order, coef, rank_of_row, tau.reciprocal())
        ctx.save_for_backward(p, xc, a, coef, tau, order, x)
        return p

    @staticmethod
    def backward(ctx, grad_p: Tensor):  # type: ignore[override]
        p, xc, a, coef, tau, order, x = ctx.saved_tensors
        need_x, need_tau = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        grad_x, grad_tau = _rows_backward(grad_p, p, xc, a, coef, tau, order, x, need_x, need_tau)
        return grad_x, None, grad_tau, None


def _rows_backward(
    grad_p: Tensor,
    p: Tensor,
    xc: Tensor,
    a: Tensor,
    coef: Tensor,
    tau: Tensor,
    order: Tensor,
    x: Tensor,
    need_x: bool,
    need_tau: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """``(grad_x, grad_tau)`` of the rows ``p`` (``None`` where not needed), with differentiable
    ops throughout, so that ``create_graph=True`` gives second derivatives."""
    if torch.is_grad_enabled() and need_tau:
        # create_graph=True: grad_tau depends on x through xc (= x) and a as well
        xc, a = x, _abs_dev_differentiable(x)
    grad_logits = torch._softmax_backward_data(grad_p, p, -1, p.dtype)
    weights = torch.stack((coef, -torch.ones_like(coef)))
    u, v = torch.matmul(weights, grad_logits).unbind(-2)
    inv_tau = tau.reciprocal()
    grad_x = (u + _abs_dev_rowsum_backward(v, order)) * inv_tau if need_x else None
    grad_tau = None
    if need_tau:
        grad_tau = -_tau_part(grad_logits, p, xc, a, coef).to(tau.dtype) * inv_tau * inv_tau
    return grad_x, grad_tau


def _tau_part(grad_logits: Tensor, p: Tensor, xc: Tensor, a: Tensor, coef: Tensor) -> Tensor:
    r"""``sum_ij L_ij (coef_i xc_j - a_j)``, the tau gradient times ``-tau^2``, accurately.

    Its terms are of size ``n |x|`` and cancel to a far smaller result, so it is summed as
    ``sum_ij L_ij d_ij`` with ``d_ij = coef_i (xc_j - xc_k) - (a_j - a_k)``, ``k`` the element
    row ``i`` peaks at: equal, as each row of ``L`` (a softmax gradient) sums to zero, but with
    terms that are small where ``L`` is large. The native kernel sums the same way.
    """
    peak = p.detach().argmax(-1)  # (..., m)
    xk = xc.gather(-1, peak).unsqueeze(-1)
    ak = a.gather(-1, peak).unsqueeze(-1)
    d = (xc.unsqueeze(-2) - xk) * coef.unsqueeze(-1) - (a.unsqueeze(-2) - ak)
    return (grad_logits * d).sum(dtype=_accumulation_dtype(d))


# The native operator's second derivatives take these same formulas: its C++ autograd node calls
# them through the dispatcher as neuralsort_py::rows_backward (one copy of the maths).
def _rows_backward_op(*args) -> tuple[Tensor, Tensor]:
    grad_x, grad_tau = _rows_backward(*args)
    unused = args[1].new_empty(0)  # the schema has no optional outputs
    return (unused if grad_x is None else grad_x), (unused if grad_tau is None else grad_tau)


if not hasattr(torch.ops.neuralsort_py, "rows_backward"):  # (once: not again on a reload)
    _LIBRARY = torch.library.Library("neuralsort_py", "DEF")  # kept: it unregisters when freed
    _LIBRARY.define(
        "rows_backward(Tensor grad_p, Tensor p, Tensor xc, Tensor a, Tensor coef, Tensor tau, "
        "Tensor order, Tensor x, bool need_x, bool need_tau) -> (Tensor, Tensor)"
    )
    _LIBRARY.impl("rows_backward", _rows_backward_op, "CompositeImplicitAutograd")


class _TritonRows(torch.autograd.Function):
    """The rows by the fused Triton kernels of :mod:`neuralsort._triton` (CUDA, short rows,
    experimental); second derivatives through :func:`_rows_backward`."""

    @staticmethod
    def forward(ctx, x: Tensor, coef: Tensor, tau: Tensor) -> Tensor:  # type: ignore[override]
        p, xc, a = _triton.forward(x, coef, tau, _LOGIT_RANGE[x.dtype])
        ctx.save_for_backward(p, xc, a, coef, tau, x)
        return p

    @staticmethod
    def backward(ctx, grad_p: Tensor):  # type: ignore[override]
        p, xc, a, coef, tau, x = ctx.saved_tensors
        need_x, need_tau = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        if torch.is_grad_enabled():  # create_graph=True
            order = _sort_order(xc.detach(), descending=False)  # stable, as the kernels
            grads = _rows_backward(grad_p, p, xc, a, coef, tau, order, x, need_x, need_tau)
            return grads[0], None, grads[1]
        grad_x, tau_part = _triton.backward(grad_p, p, coef, xc, a, tau, need_tau)
        grad_tau = None
        if need_tau:
            grad_tau = (-tau_part / (tau.double() * tau.double())).to(tau.dtype)
        return (grad_x if need_x else None), None, grad_tau


def _abs_dev_differentiable(x: Tensor) -> Tensor:
    """``A_x 1`` with autograd: O(n^2), for second derivatives with a learnt tau only."""
    return (x.unsqueeze(-1) - x.unsqueeze(-2)).abs().sum(-1)


def _functional_rows(scores: Tensor, coef: Tensor, tau: Tensor, rank_of_row: Tensor) -> Tensor:
    """The rows of :class:`_RelaxedRows` as plain differentiable PyTorch ops, for
    :mod:`torch.func` transforms and forward-mode AD (which custom autograd nodes, the C++ one
    included, do not support): the same formulas, the same order at ties, autograd's backward."""
    order = _sort_order(scores.detach(), descending=False)
    a, a_lo = _abs_dev_rowsum(scores, order, differentiable=True)
    inv_tau = tau.reciprocal()
    return _softmax_rows(scores, a, a_lo, order, coef, rank_of_row, inv_tau, differentiable=True)


def _straight(soft: Tensor, hard: Tensor) -> Tensor:
    """The straight-through estimator: the value of ``hard`` (exactly: ``soft - soft`` is 0) with
    the derivative of ``soft``, in both modes of AD, as plain ops that torch.compile and
    torch.func trace."""
    return hard + (soft - soft.detach())


@functools.lru_cache(maxsize=256)
def _scalar(value: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(value, device=device, dtype=dtype)


def _as_tau_tensor(tau: TauLike, like: Tensor) -> Tensor:
    if isinstance(tau, Tensor):
        return tau.to(device=like.device, dtype=like.dtype)
    return _cached(_scalar, tau, like.device, like.dtype)


@functools.lru_cache(maxsize=256)
def _leading_rows(
    n: int, k: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``(coef, rank_of_row)`` for the first ``k`` ascending sorted positions (cached)."""
    return _row_constants(torch.arange(1, k + 1, device=device), n, dtype)


def _row_constants(positions: Tensor, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Row ``p``'s coefficient ``-(n + 1 - 2p)`` and the ascending rank of its argmax, ``p - 1``
    (the unimodality theorem), for 1-based ascending sorted positions ``p``."""
    return (2 * positions - n - 1).to(dtype), positions - 1


def _row_inputs(
    x: Tensor, rows: Tensor | int, tau: TauLike, descending: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``x`` in its compute dtype, the scores the rows are built from, the rows' coefficients and
    peak ranks, and ``tau`` as a tensor.

    The rows are always built in ascending order: the descending rows of ``x`` are the ascending
    rows of ``-x`` (the same logits, bit for bit), and the stable ascending sort of ``-x`` puts
    tied scores in the order ``hard=True``'s stable descending sort gives them (the earlier index
    first), so the gradient at exact ties is the one-sided limit that agrees with it.
    """
    n = x.shape[-1]
    xc = _as_dtype(x, compute_dtype(x.dtype))
    scores = -xc if descending else xc
    if isinstance(rows, int):
        coef, rank_of_row = _cached(_leading_rows, n, rows, xc.device, xc.dtype)
    else:
        coef, rank_of_row = _row_constants(rows, n, xc.dtype)
    return xc, scores, coef, rank_of_row, _as_tau_tensor(tau, xc)


def _relaxed_rows(
    x: Tensor, rows: Tensor | int, tau: TauLike, descending: bool, *, times_x: bool = False
) -> Tensor:
    """Rows of the relaxed permutation of ``x`` along its last axis.

    ``rows`` is either an int ``k`` (the first ``k`` sorted positions) or a tensor of 1-based
    sorted positions. Returns ``(..., m, n)`` in the compute dtype (float32 for half inputs), or
    with ``times_x`` the rows applied to ``x`` itself, ``(..., m)``: the relaxed sorted values.
    """
    xc, scores, coef, rank_of_row, tau_t = _row_inputs(x, rows, tau, descending)
    if is_transformed(scores) or is_transformed(tau_t):
        p = _functional_rows(scores, coef, tau_t, rank_of_row)
        return _rows_times(p, xc) if times_x else p
    if _triton.usable(xc) and not is_compiling():
        p = _TritonRows.apply(scores, coef, tau_t)
        return _rows_times(p, xc) if times_x else p
    if _native.usable(xc):
        # the fused C++ operators (see _kernels/): one pass, backward in C++; applied to x, the
        # backward never forms the (..., m, n) gradient of the rows
        if not times_x:
            return _native.relaxed_rows(scores, coef, rank_of_row, tau_t, _LOGIT_RANGE[xc.dtype])
        y = _native.relaxed_sorted_values(scores, coef, rank_of_row, tau_t, _LOGIT_RANGE[xc.dtype])
        return -y if descending else y  # (the rows applied to the scores, -x when descending)
    p = _RelaxedRows.apply(scores, coef, tau_t, rank_of_row)
    return _rows_times(p, xc) if times_x else p


def _rows_times(p: Tensor, x: Tensor) -> Tensor:
    """``sum_j p[..., i, j] x[..., j]``: a batched matrix-vector product.

    On the CPU, for short rows, a multiply and a sum beat ``matmul``, whose backward runs one tiny
    matrix product per batch element (2.5x slower at B=256, n=16).
    """
    if p.device.type == "cpu" and p.shape[-1] <= 32:
        return (p * x.unsqueeze(-2)).sum(dim=-1)
    return torch.matmul(p, x.unsqueeze(-1)).squeeze(-1)


def _relaxed_rows_dense(x: Tensor, coef: Tensor, tau: Tensor, rank_of_row: Tensor) -> Tensor:
    """The dense rows on the PyTorch path (differentiable twice): the streamed path's
    ``create_graph=True`` fallback."""
    return _RelaxedRows.apply(x, coef, tau, rank_of_row)


# tol=None's choice for long float32 rows: float32's unit roundoff, so each row of P drops less
# of its mass than float32 itself rounds away
AUTO_TOL = 2.0**-24


def _check_tol(tol: object, fn: str) -> float | None:
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"{fn}: `tol` must be None or a float in [0, 1), got {type(tol).__name__}")
    if not 0.0 <= float(tol) < 1.0:
        raise ValueError(f"{fn}: `tol` must be None or lie in [0, 1), got {tol!r}")
    return float(tol)


def _auto_tol(tol: float | None, x: Tensor, m: int) -> float:
    """``tol``, or for ``tol=None``: :data:`AUTO_TOL` where ``m`` rows of ``x`` would be streamed
    and ``x`` is not float64, else 0 (exact). Exact under torch.compile and torch.func, which
    build the rows without windows."""
    if tol is not None:
        return tol
    if x.dtype == torch.float64 or is_compiling() or is_transformed(x):
        return 0.0
    return AUTO_TOL if _streams(x, m, 0.0) else 0.0


def _streams(x: Tensor, m: int, tol: float) -> bool:
    """Whether rows are reduced without the dense ``(..., m, n)`` matrix: always with ``tol``,
    else when that matrix would exceed ``_streamed.CHUNK_ELEMENTS`` elements."""
    return tol > 0 or x.numel() * m > _streamed.CHUNK_ELEMENTS


def _reduce_rows(
    x: Tensor,
    rows: Tensor | int,
    tau: TauLike,
    descending: bool,
    *,
    v: Tensor | None = None,
    w: Tensor | None = None,
    tol: float = 0.0,
) -> tuple[Tensor | None, Tensor | None]:
    r"""``(P @ v, w @ P)`` for the rows ``rows`` of :math:`\hat P(x)` (as :func:`_relaxed_rows`)
    without the ``(..., m, n)`` matrix: exactly by streamed chunks of rows, or with ``tol > 0``
    over certified windows (:mod:`neuralsort._streamed`). ``v``: ``(..., n, c)``; ``w``: a
    constant ``(c, m)``; both in the compute dtype of ``x``."""
    _, scores, coef, rank_of_row, tau_t = _row_inputs(x, rows, tau, descending)
    if is_transformed(scores) or is_transformed(tau_t):
        # torch.func: the dense rows as plain ops (O(mn) memory; no tol= windows)
        p = _functional_rows(scores, coef, tau_t, rank_of_row)
        return (None if v is None else p @ v), (None if w is None else w @ p)
    if tol > 0:
        return _streamed.windowed(scores, coef, tau_t, rank_of_row, tol, v, w)
    return _streamed.streamed(scores, coef, tau_t, rank_of_row, v, w)


def _last(x: Tensor, dim: int) -> Tensor:
    """``x`` with axis ``dim`` moved last (no view, so no autograd node, when it already is)."""
    return x if dim == x.dim() - 1 else x.movedim(dim, -1)


def _from_last(x: Tensor, dim: int) -> Tensor:
    return x if dim == x.dim() - 1 else x.movedim(-1, dim)


def _sort_order(x: Tensor, descending: bool) -> Tensor:
    """Hard sorting permutation along the last axis; ties go to the earlier index first."""
    return torch.sort(x, dim=-1, descending=descending, stable=True).indices


def _as_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.to(dtype)`` without its call cost when nothing changes (this runs on every call)."""
    return x if x.dtype == dtype else x.to(dtype)


def _straight_through(soft: Tensor, index: Tensor) -> Tensor:
    hard = torch.zeros_like(soft).scatter(-1, index.unsqueeze(-1), 1.0)
    return _straight(soft, hard)


def _real_mask(mask: object, x: Tensor, name: str, fn: str) -> Tensor | None:
    """The checked ``mask``, or ``None`` when there is none or every element is real."""
    m = check_mask(mask, x, name, fn)
    if m is None or bool(m.all()):
        return None
    return m


def _masked_apply(
    x: Tensor, mask: Tensor, op: Callable[[Tensor, Tensor], Tensor], tail: tuple[int, ...]
) -> Tensor:
    """Apply ``op`` to the real elements of every row of ``x`` alone (the sorted axis last).

    Rows are grouped by their number ``L`` of real elements; for each distinct ``L`` the rows of
    that length have their real elements gathered to the front in their original order
    (``xs``, ``(b, L)``, with their positions ``idx`` in ``0..n-1``) and ``op(xs, idx)`` returns
    the placed result ``(b, *tail)``. Rows with no real element give zeros (and zero gradients).
    Padded values never reach ``op`` (they are replaced by 0 first, so neither an infinite nor a
    NaN padding value leaks into values or gradients). Returns ``(*batch, *tail)``.
    """
    batch, n = x.shape[:-1], x.shape[-1]
    xf = torch.where(mask, x, x.new_zeros(())).reshape(-1, n)
    mf = mask.reshape(-1, n)
    lengths = mf.sum(dim=-1)
    # stable: real elements first, each group in its original order
    front = torch.sort((~mf).to(torch.uint8), dim=-1, stable=True).indices
    pieces, rows = [], []
    for length in torch.unique(lengths).tolist():
        sel = (lengths == length).nonzero().squeeze(1)
        if length == 0:
            zero = xf.index_select(0, sel).sum(dim=-1)  # all zeros, but on the autograd graph
            piece = zero.reshape(-1, *([1] * len(tail))).expand(-1, *tail)
        else:
            idx = front.index_select(0, sel)[:, :length]
            piece = op(xf.index_select(0, sel).gather(-1, idx), idx)
        pieces.append(piece)
        rows.append(sel)
    perm = torch.cat(rows)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    out = torch.cat(pieces).index_select(0, inverse)
    return out.reshape(*batch, *tail)


def _scatter_columns(piece: Tensor, idx: Tensor, n: int) -> Tensor:
    """``(b, ..., L)`` values of the real elements -> ``(b, ..., n)``, zero at padded ones."""
    index = idx.reshape(idx.shape[0], *([1] * (piece.dim() - 2)), idx.shape[1]).expand_as(piece)
    return piece.new_zeros((*piece.shape[:-1], n)).scatter(-1, index, piece)


def _pad_axis(piece: Tensor, axis: int, size: int) -> Tensor:
    """Zero-pad axis ``axis`` of ``piece`` at its end up to ``size``."""
    missing = size - piece.shape[axis]
    if missing == 0:
        return piece
    shape = list(piece.shape)
    shape[axis] = missing
    return torch.cat((piece, piece.new_zeros(shape)), dim=axis)


def _capped_at_one(m: Tensor, k: int) -> Tensor:
    """The projection of ``m`` (``>= 0``, summing to ``k`` along the last axis) onto the vectors
    in ``[0, 1]`` that sum to ``k``: ``min(m - theta, 1)`` with ``theta <= 0``.

    The elements capped at 1 are the ``t`` largest for the smallest ``t`` at which the next one
    stays at most 1 once shifted, ``theta_t = (sum of the others + t - k) / (n - t)``; the choice
    is made without gradient, ``theta`` then recomputed with it.
    """
    n = m.shape[-1]
    ms, order = m.detach().sort(dim=-1, descending=True)
    above = torch.cumsum(ms, dim=-1) - ms  # sum of the t largest, t = 0..n-1
    t = torch.arange(n, device=m.device, dtype=m.dtype)
    theta = (m.detach().sum(-1, keepdim=True) - above + t - k) / (n - t)
    fits = ms - theta <= 1  # the (t+1)-th largest is not above 1 once shifted
    first = torch.where(fits, t, torch.full_like(t, n - 1)).amin(dim=-1, keepdim=True)
    capped = torch.zeros_like(fits).scatter(-1, order, (t < first).expand_as(fits))
    free = (~capped).to(m.dtype)
    theta = (torch.where(capped, 0.0, m).sum(-1, keepdim=True) + first - k) / free.sum(
        -1, keepdim=True
    ).clamp(min=1)
    return torch.where(capped, torch.ones_like(m), (m - theta).clamp(min=0))  # (rounding)


def _check_k(k: object, x: Tensor, d: int, fn: str) -> int:
    n = x.shape[d]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(
            f"{fn}: `k` must be an int in 1..{n} (the size of dim={d} of `scores` with "
            f"shape {tuple(x.shape)}), got {k!r}"
        )
    return k


# ----------------------------------------------------------------------------------------------
# public operators
# ----------------------------------------------------------------------------------------------


def neural_sort(
    scores: Tensor,
    tau: TauLike = 1.0,
    *,
    dim: int = -1,
    descending: bool = False,
    hard: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Relaxed sorting permutation matrix (relaxes :func:`torch.sort`'s permutation).

    .. math::

        \hat P[i, :] = \operatorname{softmax}\big(((n + 1 - 2i)\, s - A_s \mathbf{1}) / \tau\big)

    for ``descending=True`` (the paper's order); ``descending=False`` reverses the rows.

    Args:
        scores: floating-point tensor of any shape; sorted along ``dim``.
        tau: temperature > 0 (a float or a scalar tensor, which may require grad). Smaller is
            sharper; :math:`\hat P \to P_{sort}` as ``tau -> 0``.
        dim: the axis to sort.
        descending: sort order of the rows (default ascending, like :func:`torch.sort`).
        hard: straight-through estimator: the forward value is the exact permutation matrix of a
            stable sort (each row's argmax, ties to the earlier index), the gradient that of
            the relaxed matrix.
        mask: optional bool tensor of the shape of ``scores``, True at real elements (ragged
            lists padded to a common length). A row with ``m`` real elements gets the matrix of
            its real elements alone (same values and gradients; :math:`n` above is ``m``) in its
            first ``m`` rows and at the real elements' columns; the other rows and columns are
            zero, and padded elements get zero gradient. A row with no real element is all zero.
            Cost: one call per distinct number of real elements in a row.

    Returns:
        ``(..., n, n)``: the batch axes of ``scores`` with ``dim`` removed, then sorted position
        ``i`` (rows) and input element ``j`` (columns). Rows sum to 1 and ``P @ x`` sorts ``x``.

    Example:
        >>> s = torch.tensor([9.0, 10.0, 5.0, 2.0])
        >>> neural_sort(s, tau=0.01, descending=True).argmax(-1)
        tensor([1, 0, 2, 3])
    """
    fn = "neural_sort"
    x, d, tau = check_sort_input(scores, dim, tau, "scores", fn)
    mask = _real_mask(mask, x, "scores", fn)
    xm = _last(x, d)
    n = xm.shape[-1]
    if mask is not None:

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            p = neural_sort(xs, tau, descending=descending, hard=hard)
            return _pad_axis(_scatter_columns(p, idx, n), -2, n)

        return _masked_apply(xm, _last(mask, d), op, (n, n))
    p = _relaxed_rows(xm, n, tau, descending)
    if hard:
        p = _straight_through(p, _sort_order(xm, descending))
    return _as_dtype(p, x.dtype)


def soft_sort(
    values: Tensor,
    tau: TauLike = 1.0,
    *,
    dim: int = -1,
    descending: bool = False,
    mask: Tensor | None = None,
    tol: float | None = None,
) -> Tensor:
    r"""Relaxed sorted values (relaxes ``torch.sort(values, dim).values``).

    ``soft_sort(x) = P_hat(x) @ x`` along ``dim``, with :math:`\hat P` from :func:`neural_sort`.
    Returns a tensor of the same shape as ``values``; it tends to the sorted values as ``tau -> 0``.
    With a bool ``mask`` (True = real element, the shape of ``values``), a row with ``m`` real
    elements holds the relaxed sort of those alone in its first ``m`` positions and zeros after
    (see :func:`neural_sort`).

    ``tol`` skips, in each row of :math:`\hat P`, the elements outside a
    window around the row's peak that together hold at most a fraction ``tol`` of the row's
    mass, and renormalises over the window: :math:`O(n w)` time and memory for windows of
    ``w`` elements instead of :math:`O(n^2)` (the bound and its proof:
    :func:`neuralsort._streamed.windowed`; gradients are those of the truncated rows). With
    ``tol=0`` large inputs are computed exactly in :math:`O(n)` extra memory (rows streamed in
    chunks, rebuilt in the backward). The default ``tol=None`` is exact for float64 and for
    inputs whose rows fit in memory; for longer float32 (or half) rows it takes ``2**-24``, less
    than float32's own rounding, at a small fraction of the exact cost.
    """
    fn = "soft_sort"
    x, d, tau = check_sort_input(values, dim, tau, "values", fn)
    tol = _check_tol(tol, fn)
    mask = _real_mask(mask, x, "values", fn)
    xm = _last(x, d)
    n = xm.shape[-1]
    if mask is not None:

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            return _pad_axis(soft_sort(xs, tau, descending=descending, tol=tol), -1, n)

        return _from_last(_masked_apply(xm, _last(mask, d), op, (n,)), d)
    tol = _auto_tol(tol, xm, n)
    if _streams(xm, n, tol):
        xc = _as_dtype(xm, compute_dtype(xm.dtype))
        out = _reduce_rows(xc, n, tau, descending, v=xc.unsqueeze(-1), tol=tol)[0].squeeze(-1)
    else:
        out = _relaxed_rows(xm, n, tau, descending, times_x=True)
    return _from_last(_as_dtype(out, x.dtype), d)


def soft_rank(
    values: Tensor,
    tau: TauLike = 1.0,
    *,
    dim: int = -1,
    descending: bool = False,
    mask: Tensor | None = None,
    tol: float | None = None,
) -> Tensor:
    r"""Relaxed ranks in ``[1, n]`` (relaxes the rank, i.e. the inverse sorting permutation).

    The rank of element :math:`j` is the expected sorted position under column :math:`j` of
    :math:`\hat P`,

    .. math::

        \mathrm{rank}_j = \frac{\sum_i i\, \hat P[i, j]}{\sum_i \hat P[i, j]},

    which equals :math:`\sum_i i\, \hat P[i, j]` whenever the columns sum to one (as
    ``tau -> 0``) and, unlike that sum, always lies in ``[1, n]`` (a row-stochastic
    :math:`\hat P` need not have unit column sums). Rank 1 is the first element of the sort order
    (the smallest when ``descending=False``). Same shape as ``values``. With a bool ``mask``
    (True = real element), real elements are ranked among the real ones of their row (in
    ``[1, m]``) and padded elements get rank 0 (see :func:`neural_sort`).

    ``tol`` skips, in each row of :math:`\hat P`, the elements outside a
    window around the row's peak that together hold at most a fraction ``tol`` of the row's
    mass, and renormalises over the window: :math:`O(n w)` time and memory for windows of
    ``w`` elements instead of :math:`O(n^2)` (the bound and its proof:
    :func:`neuralsort._streamed.windowed`; gradients are those of the truncated rows). With
    ``tol=0`` large inputs are computed exactly in :math:`O(n)` extra memory (rows streamed in
    chunks, rebuilt in the backward). The default ``tol=None`` is exact for float64 and for
    inputs whose rows fit in memory; for longer float32 (or half) rows it takes ``2**-24``, less
    than float32's own rounding, at a small fraction of the exact cost.
    """
    fn = "soft_rank"
    x, d, tau = check_sort_input(values, dim, tau, "values", fn)
    tol = _check_tol(tol, fn)
    mask = _real_mask(mask, x, "values", fn)
    xm = _last(x, d)
    n = xm.shape[-1]
    if mask is not None:

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            return _scatter_columns(soft_rank(xs, tau, descending=descending, tol=tol), idx, n)

        return _from_last(_masked_apply(xm, _last(mask, d), op, (n,)), d)
    tol = _auto_tol(tol, xm, n)
    if _streams(xm, n, tol):
        cdt = compute_dtype(xm.dtype)
        positions = torch.arange(1, n + 1, dtype=cdt, device=xm.device)
        weights = torch.stack((positions, torch.ones_like(positions)))
        weighted, mass = _reduce_rows(xm, n, tau, descending, w=weights, tol=tol)[1].unbind(-2)
    else:
        p = _relaxed_rows(xm, n, tau, descending)
        positions = torch.arange(1, n + 1, dtype=p.dtype, device=p.device)
        weighted = _rows_times(p.transpose(-1, -2), positions)
        mass = p.sum(dim=-2)
    ranks = weighted / mass
    return _from_last(_as_dtype(ranks, x.dtype), d)


def soft_topk(
    scores: Tensor,
    k: int,
    tau: TauLike = 1.0,
    *,
    dim: int = -1,
    largest: bool = True,
    hard: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    r"""The first ``k`` rows of :func:`neural_sort` (relaxes :func:`torch.topk`'s indices).

    Equal to ``neural_sort(scores, tau, dim=dim, descending=largest, hard=hard)[..., :k, :]``
    but computed in :math:`O(kn)` without the :math:`n \times n` matrix. Row ``i`` is a soft
    one-hot of the ``i``-th largest element (smallest if ``largest=False``); summing the rows gives
    a relaxed "is in the top k" indicator (:func:`soft_topk_mask`), as used by the differentiable
    kNN. With a bool ``mask`` (True = real element), a row with ``m < k`` real elements has zero
    rows after its first ``m`` (see :func:`neural_sort`).

    Returns:
        ``(..., k, n)`` with the batch axes of ``scores`` (``dim`` removed).
    """
    fn = "soft_topk"
    x, d, tau = check_sort_input(scores, dim, tau, "scores", fn)
    k = _check_k(k, x, d, fn)
    mask = _real_mask(mask, x, "scores", fn)
    xm = _last(x, d)
    if mask is not None:
        n = xm.shape[-1]

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            p = soft_topk(xs, min(k, xs.shape[-1]), tau, largest=largest, hard=hard)
            return _pad_axis(_scatter_columns(p, idx, n), -2, k)

        return _masked_apply(xm, _last(mask, d), op, (k, n))
    p = _relaxed_rows(xm, k, tau, largest)
    if hard:
        p = _straight_through(p, _sort_order(xm, largest)[..., :k])
    return _as_dtype(p, x.dtype)


def soft_topk_mask(
    scores: Tensor,
    k: int,
    tau: TauLike = 1.0,
    *,
    dim: int = -1,
    largest: bool = True,
    hard: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Relaxed indicator of the top ``k`` elements (relaxes ``torch.topk``'s membership mask).

    The column sums of the first ``k`` rows of :math:`\hat P` (:func:`soft_topk`),

    .. math::

        m_j = \sum_{i=1}^{k} \hat P[i, j],

    in :math:`O(kn)`, made a probability: as :math:`\hat P` is row- but not column-stochastic,
    at moderate ``tau`` some :math:`m_j` exceed 1 (by up to about 0.15). The result is the
    Euclidean projection of :math:`m` onto :math:`\{y \in [0, 1]^n : \sum_j y_j = k\}`,

    .. math::

        y_j = \min(m_j - \theta, 1), \qquad \theta \le 0 \text{ such that } \sum_j y_j = k,

    which leaves :math:`m` unchanged wherever it is already at most 1 (always as ``tau -> 0``,
    where both tend to the exact 0/1 indicator) and otherwise caps the excess at 1 and spreads it
    evenly over the other elements: every value lies in :math:`[0, 1]` and they sum to ``k``,
    element :math:`j`'s relaxed probability of being among the ``k`` largest (smallest with
    ``largest=False``). Gradients flow through :math:`m` and :math:`\theta` (zero for capped
    elements). The uncapped column sums, as the differentiable kNN of the paper uses them, are
    ``soft_topk(scores, k, tau).sum(-2)``. When ``k`` equals the number of (real) elements the
    indicator is exactly 1 everywhere (with zero gradient).

    Args:
        scores: floating-point tensor; ranked along ``dim``.
        k: how many elements are selected, ``1 <= k <= n``.
        tau: temperature > 0 (float or scalar tensor).
        dim: the axis to rank.
        largest: select the largest (default) or the smallest.
        hard: straight-through estimator: the forward value is the exact 0/1 indicator of a
            stable top-k (ties to the earlier index), the gradient that of the relaxed one.
        mask: optional bool tensor of the shape of ``scores``, True at real elements; a row with
            ``m`` real elements selects ``min(k, m)`` of them, padded elements are 0 (with zero
            gradient). One call per distinct ``m``.

    Returns:
        The shape of ``scores``.
    """
    fn = "soft_topk_mask"
    x, d, tau = check_sort_input(scores, dim, tau, "scores", fn)
    k = _check_k(k, x, d, fn)
    mask = _real_mask(mask, x, "scores", fn)
    xm = _last(x, d)
    n = xm.shape[-1]
    if mask is not None:

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            kk = min(k, xs.shape[-1])
            out = soft_topk_mask(xs, kk, tau, largest=largest, hard=hard)
            return _scatter_columns(out, idx, n)

        return _from_last(_masked_apply(xm, _last(mask, d), op, (n,)), d)
    out = _capped_at_one(_relaxed_rows(xm, k, tau, largest).sum(dim=-2), k)
    if k == n:
        out = out * 0 + 1  # every element is selected: exactly 1, still on the autograd graph
    elif hard:
        exact = torch.zeros_like(out).scatter(-1, _sort_order(xm, largest)[..., :k], 1.0)
        out = _straight(out, exact)
    return _from_last(_as_dtype(out, x.dtype), d)


def soft_quantile(
    values: Tensor,
    q: float | Sequence[float] | Tensor,
    tau: TauLike = 1.0,
    *,
    dim: int = -1,
    mask: Tensor | None = None,
    tol: float | None = None,
) -> Tensor:
    r"""Relaxed ``q``-quantile (relaxes :func:`torch.quantile`, linear interpolation).

    With ascending sorted position :math:`h = q (n - 1)` (0-based), :math:`l = \lfloor h \rfloor`
    and :math:`w = h - l`, the quantile is
    :math:`(1 - w)\, \hat P[l, :] \cdot x + w\, \hat P[l + 1, :] \cdot x`: only the selector
    rows are built (:math:`O(n)` per quantile). ``q = 0.5`` is the relaxed median. With a bool
    ``mask`` (True = real element), each row's quantile is that of its real elements alone
    (:math:`n` above is their number); a row with none gives 0.

    ``tol`` skips, in each row of :math:`\hat P`, the elements outside a
    window around the row's peak that together hold at most a fraction ``tol`` of the row's
    mass, and renormalises over the window: :math:`O(w + \log n)` per row instead of
    :math:`O(n)`, for windows of ``w`` elements (the bound and its proof:
    :func:`neuralsort._streamed.windowed`; gradients are those of the truncated rows). With
    ``tol=0`` large inputs are computed exactly in :math:`O(n)` extra memory (rows streamed in
    chunks, rebuilt in the backward). The default ``tol=None`` is exact for float64 and for
    inputs whose rows fit in memory; for longer float32 (or half) rows it takes ``2**-24``, less
    than float32's own rounding, at a small fraction of the exact cost.

    Returns:
        For a float ``q``, the shape of ``values`` with ``dim`` removed; for a 1-D ``q`` of length
        ``Q``, a leading axis of size ``Q`` (as :func:`torch.quantile`).
    """
    fn = "soft_quantile"
    x, d, tau = check_sort_input(values, dim, tau, "values", fn)
    tol = _check_tol(tol, fn)
    scalar_q = not isinstance(q, (Tensor, Sequence))
    qt = torch.as_tensor(q, dtype=torch.float64).reshape(-1)
    if isinstance(q, Tensor) and q.dim() > 1:
        raise ValueError(f"soft_quantile: `q` must be a float or 1-D, got shape {tuple(q.shape)}")
    if is_compiling():  # a tensor's values cannot be read while torch.compile traces
        in_range = isinstance(q, Tensor) or all(0 <= v <= 1 for v in ([q] if scalar_q else q))
    else:
        in_range = bool(((qt >= 0) & (qt <= 1)).all())
    if qt.numel() == 0 or not in_range:
        raise ValueError(f"soft_quantile: `q` must lie in [0, 1], got {q!r}")
    mask = _real_mask(mask, x, "values", fn)
    xm = _last(x, d)
    if mask is not None:

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            out = soft_quantile(xs, q, tau, tol=tol)
            return out if scalar_q else out.movedim(0, -1)

        out = _masked_apply(xm, _last(mask, d), op, () if scalar_q else (qt.numel(),))
        return out if scalar_q else out.movedim(-1, 0)
    n = xm.shape[-1]
    h = qt * (n - 1)
    lo = h.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (h - lo).to(device=x.device)
    positions = torch.cat((lo, hi)).to(x.device) + 1
    tol = _auto_tol(tol, xm, positions.numel())
    if _streams(xm, positions.numel(), tol):
        xc = _as_dtype(xm, compute_dtype(xm.dtype))
        picked = _reduce_rows(xc, positions, tau, False, v=xc.unsqueeze(-1), tol=tol)[0]
        picked = picked.squeeze(-1)
    else:
        picked = _relaxed_rows(xm, positions, tau, descending=False, times_x=True)  # (..., 2Q)
    at_lo, at_hi = picked.split(qt.numel(), dim=-1)
    w = w.to(picked.dtype)
    out = (1 - w) * at_lo + w * at_hi  # (..., Q)
    out = _as_dtype(out, x.dtype)
    return out.squeeze(-1) if scalar_q else out.movedim(-1, 0)


def sample_gumbel(
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """I.i.d. standard Gumbel noise, ``-log(E)`` with ``E ~ Exponential(1)``."""
    e = torch.empty(tuple(shape), dtype=dtype, device=device).exponential_(generator=generator)
    return e.clamp_(min=torch.finfo(dtype).tiny).log_().neg_()


def stochastic_neural_sort(
    log_scores: Tensor,
    tau: TauLike = 1.0,
    n_samples: int = 1,
    *,
    dim: int = -1,
    descending: bool = False,
    hard: bool = False,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Relaxed Plackett-Luce samples: :math:`\hat P(\log s + g;\, \tau)`, :math:`g` i.i.d. Gumbel.

    Sorting ``log_scores + g`` in descending order draws an exact sample from the Plackett-Luce
    distribution with scores :math:`s = \exp(\text{log\_scores})`; relaxing that sort with
    :func:`neural_sort` gives a reparameterized sample. Noise is independent for every sample and
    every batch element. No axis is squeezed: ``n_samples=1`` keeps its axis. With a bool
    ``mask`` (True = real element, the shape of ``log_scores``), each sample is
    ``neural_sort(log_scores + g, mask=mask)`` with the same noise ``g`` (drawn for every element,
    padded ones included), i.e. a sample over the real elements alone.

    Returns:
        ``(n_samples, ..., n, n)``.
    """
    fn = "stochastic_neural_sort"
    x, d, tau = check_sort_input(log_scores, dim, tau, "log_scores", fn)
    n_samples = check_positive_int(n_samples, "n_samples", fn)
    mask = _real_mask(mask, x, "log_scores", fn)
    xm = _last(x, d)
    cdt = compute_dtype(x.dtype)
    noise = sample_gumbel((n_samples, *xm.shape), dtype=cdt, device=x.device, generator=generator)
    perturbed = xm.to(cdt).unsqueeze(0) + noise
    if mask is not None:
        mm = _last(mask, d).unsqueeze(0).expand_as(perturbed)
        p = neural_sort(perturbed, tau, descending=descending, hard=hard, mask=mm)
        return _as_dtype(p, x.dtype)
    p = _relaxed_rows(perturbed, xm.shape[-1], tau, descending)
    if hard:
        p = _straight_through(p, _sort_order(perturbed, descending))
    return _as_dtype(p, x.dtype)


def permutation_matrix(indices: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Hard permutation matrix from a permutation ``(..., n)``: ``P[..., i, indices[..., i]] = 1``.

    With ``indices = torch.sort(x).indices``, ``P @ x`` sorts ``x``: the same convention as
    :func:`neural_sort`.
    """
    if not isinstance(indices, Tensor) or indices.dtype not in (
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
    ):
        raise TypeError("permutation_matrix: `indices` must be an integer tensor of shape (..., n)")
    if indices.dim() == 0:
        raise ValueError("permutation_matrix: `indices` must have at least one dimension")
    n = indices.shape[-1]
    out = torch.zeros((*indices.shape, n), dtype=dtype, device=indices.device)
    return out.scatter_(-1, indices.long().unsqueeze(-1), 1.0)
