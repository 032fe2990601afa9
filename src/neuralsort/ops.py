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
* Elsewhere the same formulas run as PyTorch ops in :class:`RelaxedRows`, with a hand-written
  backward.
* :math:`A_s \mathbf{1}` (the row sums of absolute differences) is computed in
  :math:`O(n \log n)` from one sort and a prefix sum, accumulated in float64; the matrix of
  differences is never formed and nothing is multiplied by a ones matrix.
* Only the requested rows are built, so :func:`soft_topk` costs :math:`O(kn)` and
  :func:`soft_quantile` :math:`O(n)` per quantile.
* Half-precision inputs are computed in float32 and returned in their own dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._axes import as_dtype, from_last, to_last
from ._checks import (
    TauLike,
    check_k,
    check_positive_int,
    check_sort_input,
    check_tol,
    compute_dtype,
    is_compiling,
)
from ._dispatch import reduced_rows, relaxed_rows
from ._masking import masked_apply, pad_axis, real_mask, scatter_columns
from ._rows import capped_at_one, sort_order, straight, straight_through

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


def neural_sort(
    scores: Tensor,
    *,
    tau: TauLike,
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
    mask = real_mask(mask, x, "scores", fn)
    xm = to_last(x, d)
    n = xm.shape[-1]
    if mask is not None:

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            p = neural_sort(xs, tau=tau, descending=descending, hard=hard)
            return pad_axis(scatter_columns(p, idx, n), -2, n)

        return masked_apply(xm, to_last(mask, d), op, (n, n))
    p = relaxed_rows(xm, n, tau, descending)
    if hard:
        p = straight_through(p, sort_order(xm, descending))
    return as_dtype(p, x.dtype)


def soft_sort(
    values: Tensor,
    *,
    tau: TauLike,
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
    :func:`neuralsort._windowed.windowed`; gradients are those of the truncated rows). With
    ``tol=0`` large inputs are computed exactly in :math:`O(n)` extra memory (rows streamed in
    chunks, rebuilt in the backward). The default ``tol=None`` is exact for float64 and for
    inputs whose rows fit in memory; for longer float32 (or half) rows it takes ``2**-24``, less
    than float32's own rounding, at a small fraction of the exact cost.
    """
    fn = "soft_sort"
    x, d, tau = check_sort_input(values, dim, tau, "values", fn)
    tol = check_tol(tol, fn)
    mask = real_mask(mask, x, "values", fn)
    xm = to_last(x, d)
    n = xm.shape[-1]
    if mask is not None:

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            return pad_axis(soft_sort(xs, tau=tau, descending=descending, tol=tol), -1, n)

        return from_last(masked_apply(xm, to_last(mask, d), op, (n,)), d)
    out = reduced_rows(xm, n, tau, descending, values=True, tol=tol)[0]
    return from_last(as_dtype(out, x.dtype), d)


def soft_rank(
    values: Tensor,
    *,
    tau: TauLike,
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

    ``tol`` (window truncation of the rows of :math:`\hat P`, exact streaming with ``tol=0``,
    and the default) works as in :func:`soft_sort`.
    """
    fn = "soft_rank"
    x, d, tau = check_sort_input(values, dim, tau, "values", fn)
    tol = check_tol(tol, fn)
    mask = real_mask(mask, x, "values", fn)
    xm = to_last(x, d)
    n = xm.shape[-1]
    if mask is not None:

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            return scatter_columns(soft_rank(xs, tau=tau, descending=descending, tol=tol), idx, n)

        return from_last(masked_apply(xm, to_last(mask, d), op, (n,)), d)
    positions = torch.arange(1, n + 1, dtype=compute_dtype(xm.dtype), device=xm.device)
    weights = torch.stack((positions, torch.ones_like(positions)))
    weighted, mass = reduced_rows(xm, n, tau, descending, w=weights, tol=tol)[1].unbind(-2)
    ranks = weighted / mass
    return from_last(as_dtype(ranks, x.dtype), d)


def soft_topk(
    scores: Tensor,
    k: int,
    *,
    tau: TauLike,
    dim: int = -1,
    largest: bool = True,
    hard: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    r"""The first ``k`` rows of :func:`neural_sort` (relaxes :func:`torch.topk`'s indices).

    Equal to ``neural_sort(scores, tau=tau, dim=dim, descending=largest, hard=hard)[..., :k, :]``
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
    k = check_k(k, x, d, fn)
    mask = real_mask(mask, x, "scores", fn)
    xm = to_last(x, d)
    if mask is not None:
        n = xm.shape[-1]

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            p = soft_topk(xs, min(k, xs.shape[-1]), tau=tau, largest=largest, hard=hard)
            return pad_axis(scatter_columns(p, idx, n), -2, k)

        return masked_apply(xm, to_last(mask, d), op, (k, n))
    p = relaxed_rows(xm, k, tau, largest)
    if hard:
        p = straight_through(p, sort_order(xm, largest)[..., :k])
    return as_dtype(p, x.dtype)


def soft_topk_mask(
    scores: Tensor,
    k: int,
    *,
    tau: TauLike,
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
    ``soft_topk(scores, k, tau=tau).sum(-2)``. When ``k`` equals the number of (real) elements the
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
    k = check_k(k, x, d, fn)
    mask = real_mask(mask, x, "scores", fn)
    xm = to_last(x, d)
    n = xm.shape[-1]
    if mask is not None:

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            kk = min(k, xs.shape[-1])
            out = soft_topk_mask(xs, kk, tau=tau, largest=largest, hard=hard)
            return scatter_columns(out, idx, n)

        return from_last(masked_apply(xm, to_last(mask, d), op, (n,)), d)
    out = capped_at_one(relaxed_rows(xm, k, tau, largest).sum(dim=-2), k)
    if k == n:
        out = out * 0 + 1  # every element is selected: exactly 1, still on the autograd graph
    elif hard:
        exact = torch.zeros_like(out).scatter(-1, sort_order(xm, largest)[..., :k], 1.0)
        out = straight(out, exact)
    return from_last(as_dtype(out, x.dtype), d)


def soft_quantile(
    values: Tensor,
    q: float | Sequence[float] | Tensor,
    *,
    tau: TauLike,
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

    ``tol`` works as in :func:`soft_sort` (window truncation of the selector rows, exact
    streaming with ``tol=0``, and the default); a truncated row costs :math:`O(w + \log n)`
    instead of :math:`O(n)` for a window of ``w`` elements.

    Returns:
        For a float ``q``, the shape of ``values`` with ``dim`` removed; for a 1-D ``q`` of length
        ``Q``, a leading axis of size ``Q`` (as :func:`torch.quantile`).
    """
    fn = "soft_quantile"
    x, d, tau = check_sort_input(values, dim, tau, "values", fn)
    tol = check_tol(tol, fn)
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
    mask = real_mask(mask, x, "values", fn)
    xm = to_last(x, d)
    if mask is not None:

        def op(xs: Tensor, idx: Tensor) -> Tensor:
            out = soft_quantile(xs, q, tau=tau, tol=tol)
            return out if scalar_q else out.movedim(0, -1)

        out = masked_apply(xm, to_last(mask, d), op, () if scalar_q else (qt.numel(),))
        return out if scalar_q else out.movedim(-1, 0)
    n = xm.shape[-1]
    h = qt * (n - 1)
    lo = h.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (h - lo).to(device=x.device)
    positions = torch.cat((lo, hi)).to(x.device) + 1
    picked = reduced_rows(xm, positions, tau, False, values=True, tol=tol)[0]  # (..., 2Q)
    at_lo, at_hi = picked.split(qt.numel(), dim=-1)
    w = w.to(picked.dtype)
    out = (1 - w) * at_lo + w * at_hi  # (..., Q)
    out = as_dtype(out, x.dtype)
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
    *,
    tau: TauLike,
    n_samples: int = 1,
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
    mask = real_mask(mask, x, "log_scores", fn)
    xm = to_last(x, d)
    cdt = compute_dtype(x.dtype)
    noise = sample_gumbel((n_samples, *xm.shape), dtype=cdt, device=x.device, generator=generator)
    perturbed = xm.to(cdt).unsqueeze(0) + noise
    if mask is not None:
        mm = to_last(mask, d).unsqueeze(0).expand_as(perturbed)
        p = neural_sort(perturbed, tau=tau, descending=descending, hard=hard, mask=mm)
        return as_dtype(p, x.dtype)
    p = relaxed_rows(perturbed, xm.shape[-1], tau, descending)
    if hard:
        p = straight_through(p, sort_order(perturbed, descending))
    return as_dtype(p, x.dtype)


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
