r"""Exact reductions of the rows of :math:`\hat P` that never hold the ``(..., m, n)`` matrix.

Two forms of a reduction over the rows ``i`` (sorted positions) of :math:`\hat P`:

* ``Y = P @ V`` (``V`` of shape ``(..., n, c)``): the rows applied to vectors, as in
  :func:`~neuralsort.soft_sort` (``V = x``), :func:`~neuralsort.soft_quantile` and
  :func:`~neuralsort.ndcg_loss` (``V`` = the gains);
* ``U = W @ P`` (``W`` a constant ``(c, m)``): column sums weighted by position, as in
  :func:`~neuralsort.soft_rank` (``W`` = the positions and ones).

:func:`streamed` computes them exactly in :math:`O(mn)` time and :math:`O(n + \text{chunk})`
memory: the forward builds a chunk of rows at a time and keeps only ``x``-sized data (the
scores, :math:`A_x 1`, the order); the backward rebuilds each chunk and reduces its softmax
gradient at once. On the CPU the native operator builds each chunk and takes its backward (the
chunks' gradients add up); elsewhere the PyTorch formulas of :mod:`neuralsort._rows` do.
:mod:`neuralsort._windowed` computes the certified-sparse approximation of
``tol=``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _native
from ._checks import is_compiling
from ._dense import relaxed_rows_dense, rows_backward, tau_gradient_part
from ._rows import (
    LOGIT_RANGE,
    abs_dev_rowsum,
    abs_dev_rowsum_backward,
    softmax_rows,
)

# rows are streamed in chunks of about this many (batch x row x column) elements (4 MiB of
# float32 per temporary); problems no larger than this run the dense path
CHUNK_ELEMENTS = 1 << 20


# the native operator sorts the row again for every chunk: larger chunks spread that cost
_NATIVE_CHUNKS = 4


def _chunks(m: int, batch: int, n: int, native: bool = False) -> range:
    step = max(1, CHUNK_ELEMENTS * (_NATIVE_CHUNKS if native else 1) // max(1, batch * n))
    return range(0, m, step), step


def _native_rows(x: Tensor) -> bool:
    """Whether chunks are built by the native operator (CPU float32/float64, eager)."""
    return not is_compiling() and _native.usable(x)


def pair(out: Tensor | tuple, v: Tensor | None, w: Tensor | None) -> tuple:
    """``(for P V, for W P)`` from what a Function here returns (one tensor where only one of
    ``v``, ``w`` is given) or the gradients it receives; None where not computed."""
    outs = out if isinstance(out, tuple) else (out,)
    if v is not None and w is not None:
        return outs[0], outs[1]
    return (outs[0], None) if v is not None else (None, outs[0])


class _Streamed(torch.autograd.Function):
    """``(P @ V, W @ P)`` with the rows of ``P`` built chunk by chunk, forward and backward.

    Saved for backward: ``x``, :math:`A_x 1` (and its float64 remainder) and the order (all
    ``(..., n)``) and ``V``; never a row of ``P``. With ``create_graph=True`` the backward builds
    the dense rows once (the differentiable formulas of :func:`neuralsort._dense.rows_backward`),
    so second derivatives cost :math:`O(mn)` memory.
    """

    @staticmethod
    def forward(ctx, x, coef, tau, rank, v, w):  # type: ignore[override]
        xc = x.contiguous()  # the logits use differences of scores only: no shift needed
        order = _native.ascending_order(xc)
        a, a_lo = abs_dev_rowsum(xc, order)
        inv_tau = tau.reciprocal()
        batch, n, m = x.shape[:-1], x.shape[-1], coef.shape[0]
        native = _native_rows(x)
        starts, step = _chunks(m, math.prod(batch), n, native)
        y = x.new_empty((*batch, m, v.shape[-1])) if v is not None else None
        u = x.new_zeros((*batch, w.shape[0], n)) if w is not None else None
        for s in starts:
            e = min(m, s + step)
            if native:  # the fused rows (ranked again per chunk)
                p = _native.rows_forward(xc, coef[s:e], rank[s:e], tau, LOGIT_RANGE[x.dtype])[0]
            else:
                p = softmax_rows(xc, a, a_lo, order, coef[s:e], rank[s:e], inv_tau)
            if v is not None:
                torch.matmul(p, v, out=y[..., s:e, :])
            if w is not None:
                u += torch.matmul(w[:, s:e], p)
            del p
        ctx.save_for_backward(x, xc, a, a_lo, order, coef, tau, rank, v, w)
        if y is None:
            return u
        if u is None:
            return y
        return y, u

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        x, xc, a, a_lo, order, coef, tau, rank, v, w = ctx.saved_tensors
        gy, gu = pair(grads, v, w)
        need_x, need_tau = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        need_v = v is not None and ctx.needs_input_grad[4]
        inv_tau = tau.reciprocal()
        if torch.is_grad_enabled():  # create_graph=True: dense, differentiable
            p = relaxed_rows_dense(x, coef, tau, rank)
            gp = 0
            if gy is not None:
                gp = gp + torch.matmul(gy, v.transpose(-1, -2))
            if gu is not None:
                gp = gp + torch.matmul(w.transpose(0, 1), gu)
            gx, gt = rows_backward(gp, p, xc, a, coef, tau, order, x, need_x, need_tau)
            gv = torch.matmul(p.transpose(-1, -2), gy) if need_v else None
            return gx, None, gt, None, gv, None
        batch, n, m = x.shape[:-1], x.shape[-1], coef.shape[0]
        native = _native_rows(x)
        starts, step = _chunks(m, math.prod(batch), n, native)
        gv = torch.zeros_like(v) if need_v else None
        if native:  # each chunk's gradients, added up
            gx, gt = x.new_zeros(x.shape), torch.zeros((), dtype=tau.dtype)
        else:  # the reductions of the softmax gradients, combined once at the end
            sum_u, sum_v = x.new_zeros(x.shape), x.new_zeros(x.shape)
            tau_part = torch.zeros((), dtype=torch.float64, device=x.device)
        for s in starts:
            e = min(m, s + step)
            if native:
                p, nxc, na, norder = _native.rows_forward(
                    xc, coef[s:e], rank[s:e], tau, LOGIT_RANGE[x.dtype]
                )
            else:
                p = softmax_rows(xc, a, a_lo, order, coef[s:e], rank[s:e], inv_tau)
            gp = None
            if gy is not None:
                gp = torch.matmul(gy[..., s:e, :], v.transpose(-1, -2))
                if need_v:
                    gv += torch.matmul(p.transpose(-1, -2), gy[..., s:e, :])
            if gu is not None:
                wu = torch.matmul(w[:, s:e].transpose(0, 1), gu)
                gp = wu if gp is None else gp.add_(wu)
            if native:  # the chunk's vector-Jacobian product in C++
                gxc, gtc = _native.rows_backward(
                    gp, p, coef[s:e], rank[s:e], tau, norder, nxc, na, need_tau
                )
                gx += gxc
                if need_tau:
                    gt += gtc.reshape(())
            else:
                gl = torch._softmax_backward_data(gp, p, -1, p.dtype)
                sum_u += torch.matmul(coef[s:e], gl)
                sum_v -= gl.sum(dim=-2)
                if need_tau:
                    tau_part += tau_gradient_part(gl, p, xc, a, coef[s:e]).to(torch.float64)
                del gl
            del p, gp
        if not native:
            gx = (sum_u + abs_dev_rowsum_backward(sum_v, order)) * inv_tau
            gt = -tau_part.to(tau.dtype) * inv_tau * inv_tau
        return (gx if need_x else None), None, (gt if need_tau else None), None, gv, None


def streamed(
    x: Tensor,
    coef: Tensor,
    tau: Tensor,
    rank: Tensor,
    v: Tensor | None = None,
    w: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    r"""Exactly ``(P @ v, w @ P)`` for the rows ``coef`` of :math:`\hat P(x)`, in
    :math:`O(n + \text{chunk})` memory (either may be ``None``, then not computed)."""
    out = _Streamed.apply(x, coef, tau, rank, v, w)
    return pair(out, v, w)
