r"""NeuralSort's formulas: the row sums :math:`A_s 1`, each row's logits and softmax, the rows'
constants, and the small pieces every path shares (the stable order of the scores, the
straight-through estimator, the capped top-k mask).

Row ``i`` (1-based sorted position) of the relaxed permutation matrix of scores ``s`` is
``softmax(((n + 1 - 2i) s - A_s 1) / tau)`` (descending; the rows are always built ascending here,
with coefficients ``2i - n - 1``: the descending rows of ``s`` are the ascending rows of ``-s``).
Nothing here chooses a backend or a path: :mod:`neuralsort._dispatch` does.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from ._checks import TauLike, is_compiling, is_transformed


def accumulation_dtype(x: Tensor) -> torch.dtype:
    # float64 prefix sums keep A_s·1 accurate for large |scores|; MPS has no float64.
    if x.device.type == "mps":
        return x.dtype
    return torch.float64


def sort_order(x: Tensor, descending: bool) -> Tensor:
    """Hard sorting permutation along the last axis; ties go to the earlier index first."""
    return torch.sort(x, dim=-1, descending=descending, stable=True).indices


def ascending_order(x: Tensor) -> Tensor:
    """Indices sorting ``x`` ascending along the last axis, stably (no gradient needed).

    Ties go to the earlier index, as in the native and Triton kernels: the gradient of
    ``A_s 1`` at tied scores is a subgradient that depends on the order of the
    ties, so every backend must break them alike. On the CPU numpy sorts short rows several
    times faster than ``torch.sort``; float32 rows are sorted as unique 64-bit keys (the
    order-preserving bits of the value, then the index), which needs no stable algorithm.
    torch.compile cannot trace those numpy bit operations, and tensors seen through a
    :mod:`torch.func` transform have no numpy view, so there it sorts stably with torch.
    """
    if is_compiling() or is_transformed(x):
        return sort_order(x.detach(), descending=False)
    if x.device.type == "cpu" and x.dtype == torch.float32:
        bits = (x.detach().numpy() + np.float32(0.0)).view(np.uint32)  # (-0.0 + 0.0 = +0.0)
        ordered = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31)).astype(np.uint64)
        keys = (ordered << np.uint64(32)) | np.arange(x.shape[-1], dtype=np.uint64)
        return torch.from_numpy((np.sort(keys, axis=-1) & np.uint64(0xFFFFFFFF)).astype(np.int64))
    if x.device.type == "cpu" and x.dtype == torch.float64:
        return torch.from_numpy(np.argsort(x.detach().numpy(), axis=-1, kind="stable"))
    return sort_order(x.detach(), descending=False)


def centred(x: Tensor) -> Tensor:
    """``x`` less its mean along the last axis, the mean summed in float64 and rounded once
    (as the native kernel does): ``P`` is shift-invariant, but how ``x - mean`` rounds is not,
    and float32 results should not depend on the machine's summation order."""
    return x - x.mean(dim=-1, keepdim=True, dtype=accumulation_dtype(x)).to(x.dtype)


def cached(fn, *args):
    """``fn(*args)`` through its ``lru_cache``, except while torch.compile traces (which would
    ignore the cache and warn): small constants cost a kernel launch each to build."""
    return fn.__wrapped__(*args) if is_compiling() else fn(*args)


@functools.lru_cache(maxsize=256)
def _ramp(n: int, offset: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``2 r - offset`` for ``r = 0..n-1`` (cached: small constants cost a kernel launch each)."""
    return torch.arange(n, device=device, dtype=dtype).mul_(2).sub_(offset)


def abs_dev_rowsum(
    x: Tensor, order: Tensor, *, differentiable: bool = False
) -> tuple[Tensor, Tensor | None]:
    r"""``(A_s 1)_j = sum_k |x_j - x_k|`` along the last axis in O(n log n), without autograd.

    ``order`` is the ascending sorting permutation of ``x``. With the values sorted ascending,
    ``v_0 <= ... <= v_{n-1}``, exclusive prefix sums ``S_r = sum_{t<r} v_t`` and total ``T``,
    the element of ascending rank ``r`` has ``sum_k |v_r - v_k| = (2r - n) v_r + T - 2 S_r``.

    Returns ``(a, a_lo)``: the sums, summed in float64 and rounded to ``x``'s dtype, and what
    that rounding dropped (``None`` where nothing is dropped). Differences ``a_j - a_k`` taken as
    ``(a_j - a_k) + (a_lo_j - a_lo_k)`` keep float64's precision (see :func:`softmax_rows`).
    With ``differentiable``, only out-of-place ops that autograd and :mod:`torch.func` follow
    (the order is fixed: at ties, the subgradient of that order).
    """
    n = x.shape[-1]
    wide = x.to(accumulation_dtype(x))
    # about the mean (the sums are shift-invariant): no cancellation for large |x|
    v = (wide - wide.mean(dim=-1, keepdim=True)).gather(-1, order)
    inclusive = torch.cumsum(v, dim=-1)
    # (2r - n) v + T - 2 (inclusive - v) = (2r - n + 2) v + T - 2 inclusive
    ramp = cached(_ramp, n, n - 2, x.device, v.dtype)
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


def abs_dev_rowsum_backward(grad_a: Tensor, order: Tensor) -> Tensor:
    r"""Vector-Jacobian product of :func:`abs_dev_rowsum`: ``g_k = sum_j ga_j d a_j / d x_k``.

    ``d a_j / d x_k = -sign(x_j - x_k)`` for ``j != k`` and ``sum_t sign(x_k - x_t)`` for
    ``j = k``. In ascending order, with ``G`` the exclusive prefix sums of ``ga``, this is
    ``2 G_r - (sum ga - ga_r) + ga_r (2r - n + 1)`` for the element of rank ``r`` (ties follow
    ``order``, as the forward's prefix sums do).
    """
    sorted_grad = abs_dev_rowsum_backward_sorted(grad_a.gather(-1, order))
    return torch.empty_like(grad_a).scatter_(-1, order, sorted_grad)


def abs_dev_rowsum_backward_sorted(gs: Tensor) -> Tensor:
    """:func:`abs_dev_rowsum_backward` with ``grad_a`` and the result in ascending order."""
    n = gs.shape[-1]
    inclusive = torch.cumsum(gs, dim=-1)
    # 2 (inclusive - gs) - total + gs + gs (2r - n + 1) = 2 inclusive - total + gs (2r - n)
    ramp = cached(_ramp, n, n, gs.device, gs.dtype)
    return torch.addcmul(2 * inclusive - inclusive[..., -1:], ramp, gs)


# exp(-range) stays a normal number with room to spare for the products of the backward pass:
# float32's smallest normal is exp(-87.3), float64's exp(-708.4)
LOGIT_RANGE = {torch.float32: 64.0, torch.float64: 600.0}


def softmax_rows(
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
    dropped part ``a_lo``, :func:`abs_dev_rowsum`) and their order.

    Each row's logits are taken relative to the element ``k`` the row peaks at (the unimodality
    theorem gives ``k`` in advance),

    .. math::

        t_{ij} = \big(c_i (x_j - x_k) - (a_j - a_k)\big) / \tau \;\le\; 0,

    with every difference taken before anything is scaled: its rounding is then relative to the
    difference, not to :math:`|c_i x_j|` or :math:`|a_j|`, which are of size :math:`n |x|` and
    would leave no correct digit in float32 for long rows at small ``tau``. On the CPU the
    logits are floored at ``-LOGIT_RANGE`` (see :class:`RelaxedRows`); then one softmax (in
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
            logits = logits.clamp(min=-LOGIT_RANGE[xc.dtype])
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
        logits.clamp_(min=-LOGIT_RANGE[xc.dtype])
    if on_cpu and logits.is_contiguous():
        # in place (only safe on contiguous memory): saves one (..., m, n) allocation and its
        # page faults per call
        return torch.ops.aten._softmax.out(logits, -1, False, out=logits)
    return torch.softmax(logits, dim=-1)


@functools.lru_cache(maxsize=256)
def _scalar(value: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(value, device=device, dtype=dtype)


def as_tau_tensor(tau: TauLike, like: Tensor) -> Tensor:
    if isinstance(tau, Tensor):
        return tau.to(device=like.device, dtype=like.dtype)
    return cached(_scalar, tau, like.device, like.dtype)


@functools.lru_cache(maxsize=256)
def leading_rows(n: int, k: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(coef, rank_of_row)`` for the first ``k`` ascending sorted positions (cached)."""
    return row_constants(torch.arange(1, k + 1, device=device), n, dtype)


def row_constants(positions: Tensor, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Row ``p``'s coefficient ``-(n + 1 - 2p)`` and the ascending rank of its argmax, ``p - 1``
    (the unimodality theorem), for 1-based ascending sorted positions ``p``."""
    return (2 * positions - n - 1).to(dtype), positions - 1


def rows_times(p: Tensor, x: Tensor) -> Tensor:
    """``sum_j p[..., i, j] x[..., j]``: a batched matrix-vector product.

    On the CPU, for short rows, a multiply and a sum beat ``matmul``, whose backward runs one tiny
    matrix product per batch element (2.5x slower at B=256, n=16).
    """
    if p.device.type == "cpu" and p.shape[-1] <= 32:
        return (p * x.unsqueeze(-2)).sum(dim=-1)
    return torch.matmul(p, x.unsqueeze(-1)).squeeze(-1)


def straight(soft: Tensor, hard: Tensor) -> Tensor:
    """The straight-through estimator: the value of ``hard`` (exactly: ``soft - soft`` is 0) with
    the derivative of ``soft``, in both modes of AD, as plain ops that torch.compile and
    torch.func trace."""
    return hard + (soft - soft.detach())


def straight_through(soft: Tensor, index: Tensor) -> Tensor:
    hard = torch.zeros_like(soft).scatter(-1, index.unsqueeze(-1), 1.0)
    return straight(soft, hard)


def capped_at_one(m: Tensor, k: int) -> Tensor:
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


# scores spread over more than this many units of tau, times n, can lose the differences of A 1
# that matter even in float64 (a padding score of -1e30 among scores of size 1)
_SPREAD_LIMIT = 1e12


def bounded_gaps(x: Tensor, tau: Tensor) -> Tensor:
    r"""``x`` (the scores, last axis) with every gap between neighbours in sorted order capped at
    ``2 LOGIT_RANGE tau``, which changes no row of :math:`\hat P` beyond its floor, where the
    scores span so many units of ``tau`` that :math:`A_s 1` would lose their differences.

    The logit of element ``j`` in the row that peaks at ``k`` depends only on the gaps between
    them, and falls by at least each gap over ``tau`` (it is a sum over those gaps of terms at
    least as large), so across a capped gap it stays below ``-2 LOGIT_RANGE``: floored, as it
    was. The capped scores are rebuilt from the median in float64 (the median's cluster keeps
    its values exactly); the value is theirs, the gradient that of ``x`` (identity).
    """
    n = x.shape[-1]
    if n < 2 or x.numel() == 0 or is_compiling() or is_transformed(x):
        return x
    lo, hi = torch.aminmax(x.detach())  # over the whole batch: one cheap check per call
    if float(hi - lo) * n <= _SPREAD_LIMIT * float(tau.detach()):
        return x
    order = sort_order(x.detach(), descending=False)
    v = x.detach().double().gather(-1, order)
    cap = 2 * LOGIT_RANGE[x.dtype] * tau.detach().double()
    steps = torch.cat((torch.zeros_like(v[..., :1]), torch.diff(v, dim=-1).clamp(max=cap)), -1)
    offsets = torch.cumsum(steps, dim=-1)
    mid = n // 2
    capped = v[..., mid : mid + 1] + (offsets - offsets[..., mid : mid + 1])
    return straight(x, torch.empty_like(v).scatter_(-1, order, capped).to(x.dtype))
