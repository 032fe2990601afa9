r"""The rows of :math:`\hat P` as autograd nodes: the PyTorch path (:class:`RelaxedRows`, a
hand-written backward, differentiable twice), the experimental Triton kernels
(:class:`TritonRows`), and :func:`functional_rows`, plain differentiable ops for
:mod:`torch.func` and forward-mode AD.

Also registers ``neuralsort_py::rows_backward``, the Python op through which the native C++
operator takes its second derivatives (:mod:`neuralsort._native` imports this module for it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _triton
from ._rows import (
    LOGIT_RANGE,
    abs_dev_rowsum,
    abs_dev_rowsum_backward,
    accumulation_dtype,
    ascending_order,
    softmax_rows,
    sort_order,
)


class RelaxedRows(torch.autograd.Function):
    """``softmax((coef_i * x_j - (A_x 1)_j) / tau)`` over ``j`` for the rows ``i`` in ``coef``.

    One autograd node for the whole operator (small inputs are dominated by per-op overhead):

    * forward: sort ``x`` once (the order gives both ``A_x 1`` by prefix sums and each row's
      argmax), build the ``(..., m, n)`` logits relative to each row's peak
      (:func:`softmax_rows`), floor them, and take one softmax (in place on the CPU);
    * backward: one fused softmax backward, one ``(2, m) @ (..., m, n)`` product for the two
      reductions over rows, and O(n) prefix sums for the path through ``A_x 1``.

    ``rank_of_row`` holds, for each row, the ascending rank of the element it peaks at (the
    unimodality theorem). On the CPU, logits further than ``LOGIT_RANGE`` below their row's
    maximum are raised to that bound, so the softmax never produces subnormal numbers (which
    slow CPU arithmetic several-fold); the mass this adds is below ``n * 1e-27``. Other devices
    compute subnormals at full speed and skip the six kernel launches this takes.
    """

    @staticmethod
    def forward(ctx, x: Tensor, coef: Tensor, tau: Tensor, rank_of_row: Tensor) -> Tensor:  # type: ignore[override]
        xc = x.contiguous()  # the logits use differences of scores only: no shift needed
        order = ascending_order(xc)
        a, a_lo = abs_dev_rowsum(xc, order)
        p = softmax_rows(xc, a, a_lo, order, coef, rank_of_row, tau.reciprocal())
        ctx.save_for_backward(p, xc, a, coef, tau, order, x)
        return p

    @staticmethod
    def backward(ctx, grad_p: Tensor):  # type: ignore[override]
        p, xc, a, coef, tau, order, x = ctx.saved_tensors
        need_x, need_tau = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        grad_x, grad_tau = rows_backward(grad_p, p, xc, a, coef, tau, order, x, need_x, need_tau)
        return grad_x, None, grad_tau, None


def rows_backward(
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
    grad_x = (u + abs_dev_rowsum_backward(v, order)) * inv_tau if need_x else None
    grad_tau = None
    if need_tau:
        grad_tau = -tau_gradient_part(grad_logits, p, xc, a, coef).to(tau.dtype) * inv_tau * inv_tau
    return grad_x, grad_tau


def tau_gradient_part(
    grad_logits: Tensor, p: Tensor, xc: Tensor, a: Tensor, coef: Tensor
) -> Tensor:
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
    return (grad_logits * d).sum(dtype=accumulation_dtype(d))


# The native operator's second derivatives take these same formulas: its C++ autograd node calls
# them through the dispatcher as neuralsort_py::rows_backward (one copy of the maths).
def _rows_backward_op(*args) -> tuple[Tensor, Tensor]:
    grad_x, grad_tau = rows_backward(*args)
    unused = args[1].new_empty(0)  # the schema has no optional outputs
    return (unused if grad_x is None else grad_x), (unused if grad_tau is None else grad_tau)


if not hasattr(torch.ops.neuralsort_py, "rows_backward"):  # (once: not again on a reload)
    _LIBRARY = torch.library.Library("neuralsort_py", "DEF")  # kept: it unregisters when freed
    _LIBRARY.define(
        "rows_backward(Tensor grad_p, Tensor p, Tensor xc, Tensor a, Tensor coef, Tensor tau, "
        "Tensor order, Tensor x, bool need_x, bool need_tau) -> (Tensor, Tensor)"
    )
    _LIBRARY.impl("rows_backward", _rows_backward_op, "CompositeImplicitAutograd")


class TritonRows(torch.autograd.Function):
    """The rows by the fused Triton kernels of :mod:`neuralsort._triton` (CUDA, short rows,
    experimental); second derivatives through :func:`rows_backward`."""

    @staticmethod
    def forward(ctx, x: Tensor, coef: Tensor, tau: Tensor) -> Tensor:  # type: ignore[override]
        p, xc, a = _triton.forward(x, coef, tau, LOGIT_RANGE[x.dtype])
        ctx.save_for_backward(p, xc, a, coef, tau, x)
        return p

    @staticmethod
    def backward(ctx, grad_p: Tensor):  # type: ignore[override]
        p, xc, a, coef, tau, x = ctx.saved_tensors
        need_x, need_tau = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        if torch.is_grad_enabled():  # create_graph=True
            order = sort_order(xc.detach(), descending=False)  # stable, as the kernels
            grads = rows_backward(grad_p, p, xc, a, coef, tau, order, x, need_x, need_tau)
            return grads[0], None, grads[1]
        grad_x, tau_part = _triton.backward(grad_p, p, coef, xc, a, tau, need_tau)
        grad_tau = None
        if need_tau:
            grad_tau = (-tau_part / (tau.double() * tau.double())).to(tau.dtype)
        return (grad_x if need_x else None), None, grad_tau


def _abs_dev_differentiable(x: Tensor) -> Tensor:
    """``A_x 1`` with autograd: O(n^2), for second derivatives with a learnt tau only."""
    return (x.unsqueeze(-1) - x.unsqueeze(-2)).abs().sum(-1)


def functional_rows(scores: Tensor, coef: Tensor, tau: Tensor, rank_of_row: Tensor) -> Tensor:
    """The rows of :class:`RelaxedRows` as plain differentiable PyTorch ops, for
    :mod:`torch.func` transforms and forward-mode AD (which custom autograd nodes, the C++ one
    included, do not support): the same formulas, the same order at ties, autograd's backward."""
    order = sort_order(scores.detach(), descending=False)
    a, a_lo = abs_dev_rowsum(scores, order, differentiable=True)
    inv_tau = tau.reciprocal()
    return softmax_rows(scores, a, a_lo, order, coef, rank_of_row, inv_tau, differentiable=True)


def relaxed_rows_dense(x: Tensor, coef: Tensor, tau: Tensor, rank_of_row: Tensor) -> Tensor:
    """The dense rows on the PyTorch path (differentiable twice): the streamed path's
    ``create_graph=True`` fallback."""
    return RelaxedRows.apply(x, coef, tau, rank_of_row)
