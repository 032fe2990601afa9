r"""The one place that chooses how the rows of :math:`\hat P` are computed.

* :func:`relaxed_rows`: the rows themselves, by backend: plain differentiable ops under
  :mod:`torch.func`, the Triton kernels (CUDA, when switched on), the native C++ operator (CPU
  float32/float64, when built and enabled), else the PyTorch path.
* :func:`reduced_rows`: ``P @ v`` and ``w @ P`` for the rows, dense where the matrix fits and
  ``tol`` resolves to 0, else streamed exactly (:mod:`neuralsort._streamed`) or over certified
  windows (:mod:`neuralsort._windowed`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _native, _streamed, _triton, _windowed
from ._axes import as_dtype
from ._checks import TauLike, compute_dtype, is_compiling, is_transformed
from ._dense import RelaxedRows, TritonRows, functional_rows
from ._rows import (
    LOGIT_RANGE,
    as_tau_tensor,
    bounded_gaps,
    cached,
    leading_rows,
    row_constants,
    rows_times,
)


def _row_inputs(
    x: Tensor, rows: Tensor | int, tau: TauLike, descending: bool
) -> tuple[Tensor, Tensor, bool, Tensor, Tensor, Tensor]:
    """``x`` in its compute dtype, the scores the rows are built from, whether those are ``x``
    (or ``-x``) with bounded gaps (:func:`~neuralsort._rows.bounded_gaps`, where their spread
    over ``tau`` calls for it), the rows' coefficients and peak ranks, and ``tau`` as a tensor.

    The rows are always built in ascending order: the descending rows of ``x`` are the ascending
    rows of ``-x`` (the same logits, bit for bit), and the stable ascending sort of ``-x`` puts
    tied scores in the order ``hard=True``'s stable descending sort gives them (the earlier index
    first), so the gradient at exact ties is the one-sided limit that agrees with it.
    """
    n = x.shape[-1]
    xc = as_dtype(x, compute_dtype(x.dtype))
    tau_t = as_tau_tensor(tau, xc)
    flipped = -xc if descending else xc
    scores = bounded_gaps(flipped, tau_t)
    if isinstance(rows, int):
        coef, rank_of_row = cached(leading_rows, n, rows, xc.device, xc.dtype)
    else:
        coef, rank_of_row = row_constants(rows, n, xc.dtype)
    return xc, scores, scores is not flipped, coef, rank_of_row, tau_t


def relaxed_rows(
    x: Tensor, rows: Tensor | int, tau: TauLike, descending: bool, *, times_x: bool = False
) -> Tensor:
    """Rows of the relaxed permutation of ``x`` along its last axis.

    ``rows`` is either an int ``k`` (the first ``k`` sorted positions) or a tensor of 1-based
    sorted positions. Returns ``(..., m, n)`` in the compute dtype (float32 for half inputs), or
    with ``times_x`` the rows applied to ``x`` itself, ``(..., m)``: the relaxed sorted values.
    """
    xc, scores, bounded, coef, rank_of_row, tau_t = _row_inputs(x, rows, tau, descending)
    if is_transformed(scores) or is_transformed(tau_t):
        p = functional_rows(scores, coef, tau_t, rank_of_row)
        return rows_times(p, xc) if times_x else p
    if _triton.usable(xc) and not is_compiling():
        p = TritonRows.apply(scores, coef, tau_t)
        return rows_times(p, xc) if times_x else p
    if _native.usable(xc):
        # the fused C++ operators (see _kernels/): one pass, backward in C++; applied to x, the
        # backward never forms the (..., m, n) gradient of the rows
        if not times_x or bounded:  # (the fused values op applies the rows to the scores)
            p = _native.relaxed_rows(scores, coef, rank_of_row, tau_t, LOGIT_RANGE[xc.dtype])
            return rows_times(p, xc) if times_x else p
        y = _native.relaxed_sorted_values(scores, coef, rank_of_row, tau_t, LOGIT_RANGE[xc.dtype])
        return -y if descending else y  # (the rows applied to the scores, -x when descending)
    p = RelaxedRows.apply(scores, coef, tau_t, rank_of_row)
    return rows_times(p, xc) if times_x else p


# tol=None's choice for long float32 rows: float32's unit roundoff, so each row of P drops less
# of its mass than float32 itself rounds away
AUTO_TOL = 2.0**-24


def auto_tol(tol: float | None, x: Tensor, m: int) -> float:
    """``tol``, or for ``tol=None``: :data:`AUTO_TOL` where ``m`` rows of ``x`` would be streamed
    and ``x`` is not float64, else 0 (exact). Exact under torch.func, which builds the rows
    without windows."""
    if tol is not None:
        return tol
    if x.dtype == torch.float64 or is_transformed(x):
        return 0.0
    return AUTO_TOL if streams(x, m, 0.0) else 0.0


def streams(x: Tensor, m: int, tol: float) -> bool:
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
    r"""``(P @ v, w @ P)`` for the rows ``rows`` of :math:`\hat P(x)` (as :func:`relaxed_rows`)
    without the ``(..., m, n)`` matrix: exactly by streamed chunks of rows, or with ``tol > 0``
    over certified windows (:mod:`neuralsort._windowed`). ``v``: ``(..., n, c)``; ``w``: a
    constant ``(c, m)``; both in the compute dtype of ``x``."""
    _, scores, _, coef, rank_of_row, tau_t = _row_inputs(x, rows, tau, descending)
    if is_transformed(scores) or is_transformed(tau_t):
        # torch.func: the dense rows as plain ops (O(mn) memory; no tol= windows)
        p = functional_rows(scores, coef, tau_t, rank_of_row)
        return (None if v is None else p @ v), (None if w is None else w @ p)
    if tol > 0:
        return _windowed.windowed(scores, coef, tau_t, rank_of_row, tol, v, w)
    return _streamed.streamed(scores, coef, tau_t, rank_of_row, v, w)


def reduced_rows(
    x: Tensor,
    rows: Tensor | int,
    tau: TauLike,
    descending: bool,
    *,
    values: bool = False,
    v: Tensor | None = None,
    w: Tensor | None = None,
    tol: float | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    r"""``(P @ v, w @ P)`` for the rows ``rows`` of :math:`\hat P(x)` along the last axis, in
    the compute dtype; ``None`` for what is not asked. With ``values``, ``v`` is ``x`` itself and
    ``P @ x`` (the relaxed sorted values) has shape ``(..., m)``; ``v``: ``(..., n, c)``; ``w``: a
    constant ``(c, m)``.

    The one choice between the dense rows (:func:`relaxed_rows`, where the ``(..., m, n)`` matrix
    fits and ``tol`` resolves to 0: :func:`auto_tol`) and a reduction that never holds them
    (streamed exactly, or over certified windows with ``tol > 0``).
    """
    m = rows if isinstance(rows, int) else rows.numel()
    tol = auto_tol(tol, x, m)
    xc = as_dtype(x, compute_dtype(x.dtype))
    if streams(x, m, tol):
        pv, wp = _reduce_rows(
            xc, rows, tau, descending, v=xc.unsqueeze(-1) if values else v, w=w, tol=tol
        )
        return (pv.squeeze(-1) if values else pv), wp
    if values and w is None:
        return relaxed_rows(x, rows, tau, descending, times_x=True), None
    p = relaxed_rows(x, rows, tau, descending)
    pv = rows_times(p, xc) if values else (None if v is None else torch.matmul(p, v))
    return pv, (None if w is None else torch.matmul(w, p))
