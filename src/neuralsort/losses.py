r"""Losses built on the relaxed sort: Spearman correlation, NDCG and top-k classification.

Each relaxes a metric defined through a hard sort by replacing that sort with NeuralSort's
:math:`\hat P` (:func:`neuralsort.neural_sort`), so the metric's gradient reaches the scores:

* :func:`spearman_loss`: :math:`1 - \rho`, Spearman's rank correlation with soft ranks of the
  predictions (:func:`neuralsort.soft_rank`);
* :func:`ndcg_loss`: :math:`1 - \mathrm{NDCG@k}` with the gains permuted by :math:`\hat P`
  (NeuralNDCG, Pobrotyn & Bialobrzeski 2021, without its Sinkhorn scaling), deterministic or
  averaged over Plackett-Luce samples (as in PiRank, Swezey et al. 2021);
* :func:`topk_cross_entropy`: :math:`-\log P(\text{target in the top } k)` with the relaxed top-k
  indicator (:func:`neuralsort.soft_topk_mask`).

All take ragged lists through a bool ``mask`` (True = real element) with the contract of the
operators: a padded element changes nothing and gets zero gradient.

Examples:
    Predictions in the target's order have Spearman loss 0, in the reverse order 2; a larger
    ``tau`` blurs the ranks, and the gradient reaches the predictions:

    >>> import torch
    >>> from neuralsort.losses import ndcg_loss, spearman_loss, topk_cross_entropy
    >>> pred = torch.tensor([[0.2, 1.5, 0.9, 3.0]], requires_grad=True)
    >>> target = torch.tensor([[1.0, 3.0, 2.0, 4.0]])
    >>> round(spearman_loss(pred, target, tau=0.01).item(), 4)
    0.0
    >>> round(spearman_loss(-pred, target, tau=0.01).item(), 4)
    2.0
    >>> spearman_loss(pred, target, tau=1.0).backward()
    >>> pred.grad.shape
    torch.Size([1, 4])

    NDCG of the same ranking (relevance = target), and the top-2 loss of a class that is second
    and of one that is last among three logits:

    >>> round(ndcg_loss(pred, target, tau=0.01).item(), 4)
    0.0
    >>> logits = torch.tensor([[2.0, 0.5, 1.0]])
    >>> round(topk_cross_entropy(logits, torch.tensor([2]), k=2, tau=0.1).item(), 4)
    0.0067
    >>> round(topk_cross_entropy(logits, torch.tensor([1]), k=2, tau=0.1).item(), 2)
    5.01
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from . import _native
from ._checks import (
    TauLike,
    canonical_dim,
    check_float_tensor,
    check_mask,
    check_sort_input,
    check_tol,
    compute_dtype,
    is_compiling,
    is_transformed,
    values_readable,
)
from ._dispatch import reduced_rows
from .ops import (
    sample_gumbel,
    soft_rank,
    soft_topk,
    soft_topk_mask,
)

__all__ = ["spearman_loss", "ndcg_loss", "topk_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")
# the norm of the centred soft ranks is floored here (in rank units, ranks are 1 apart) so that
# identical predictions give a finite correlation (0) and finite gradients
_RANK_NORM_FLOOR = 1e-6


def _check_reduction(reduction: object, fn: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: `reduction` must be one of {_REDUCTIONS}, got {reduction!r}")
    return str(reduction)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_like(y: object, x: Tensor, name: str, like: str, fn: str) -> Tensor:
    """``y`` must be a real (float, int or bool) tensor of ``x``'s shape."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{fn}: `{name}` must be a torch.Tensor, got {type(y).__name__}")
    if y.is_complex():
        raise TypeError(f"{fn}: `{name}` must be real, got dtype {y.dtype}")
    if y.shape != x.shape:
        raise ValueError(
            f"{fn}: `{name}` must have the shape of `{like}` {tuple(x.shape)}, got {tuple(y.shape)}"
        )
    return y.to(x.device)


def _average_ranks(t: Tensor, mask: Tensor) -> Tensor:
    """Hard ascending ranks (1-based) along the last axis among the real elements, ties given
    their average rank (as :func:`scipy.stats.rankdata`); no gradient. Padded elements: 0.

    One sort: a run of equal sorted values at positions ``s..e`` (0-based) gets ``(s + e)/2 + 1``,
    each run's first and last position spread over it by a running max and a reversed running
    min. Padding sorts last as +inf; a real +inf ties with the real values only (``e`` is capped
    at the last real position).
    """
    t = t.detach()
    if t.dtype not in (torch.float32, torch.float64):  # exactly: half floats fit in float32
        exact = torch.float32 if t.is_floating_point() or t.device.type == "mps" else torch.float64
        t = t.to(exact)
    padded = torch.where(mask, t, torch.full_like(t, float("inf")))
    order = _native.ascending_order(padded)
    ordered = padded.gather(-1, order)
    n = t.shape[-1]
    pos = torch.arange(n, device=t.device).expand_as(order)
    starts = torch.ones_like(mask)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    rank_dtype = torch.float32 if t.device.type == "mps" else torch.float64
    eager_cpu = t.device.type == "cpu" and not (is_compiling() or is_transformed(starts))
    if eager_cpu and bool(starts.all()):  # no ties: a run is one position (reads the data)
        sorted_ranks = (pos + 1).to(rank_dtype)
    else:
        ends = torch.ones_like(mask)
        ends[..., :-1] = starts[..., 1:]
        first = torch.where(starts, pos, 0).cummax(dim=-1).values
        last = torch.where(ends, pos, n).flip(-1).cummin(dim=-1).values.flip(-1)
        last = torch.minimum(last, mask.sum(dim=-1, keepdim=True) - 1)
        sorted_ranks = (first + last).to(rank_dtype) / 2 + 1
    # out of place: torch.func.vmap has a batching rule for scatter, not for scatter_
    ranks = torch.zeros_like(sorted_ranks).scatter(-1, order, sorted_ranks)
    return torch.where(mask, ranks, torch.zeros_like(ranks))


def spearman_loss(
    pred: Tensor,
    target: Tensor,
    *,
    tau: TauLike,
    dim: int = -1,
    mask: Tensor | None = None,
    reduction: str = "mean",
    tol: float | None = None,
) -> Tensor:
    r"""One minus Spearman's rank correlation, with soft ranks of ``pred`` (relaxes
    ``1 - scipy.stats.spearmanr``).

    Per row along ``dim`` (every other axis is a batch axis: one row per group), with
    :math:`r = ` :func:`~neuralsort.soft_rank` ``(pred, tau)`` and :math:`t` the hard ranks of
    ``target`` (ties get their average rank),

    .. math::

        \mathcal{L} = 1 - \frac{\sum_j (r_j - \bar r)(t_j - \bar t)}
            {\lVert r - \bar r \rVert\, \lVert t - \bar t \rVert},

    the Pearson correlation of the ranks. As ``tau -> 0`` (distinct predictions) it equals
    ``1 - spearmanr(pred, target)``; it lies in ``[0, 2]``.

    Args:
        pred: floating-point predictions; gradients flow to them.
        target: real tensor of the shape of ``pred`` (no gradient).
        tau: temperature of the soft ranks (float or scalar tensor).
        dim: the axis along which items are ranked.
        mask: optional bool tensor of ``pred``'s shape, True at real elements: each row is
            ranked and correlated over its real elements alone (padding changes nothing).
        reduction: ``"mean"`` (over rows), ``"sum"`` or ``"none"`` (the shape of ``pred`` with
            ``dim`` removed).
        tol: the soft ranks' certified truncation (:func:`~neuralsort.soft_rank`): 0 is exact
            (in :math:`O(n)` extra memory for long rows); ``None`` (the default) is exact except
            for long float32 rows, where it is ``2**-24``; ``tol > 0`` drops at most that
            fraction of each row of :math:`\hat P`'s mass, in :math:`O(n w)` time.

    Rows whose target is constant, or that have fewer than two (real) elements, have no
    defined correlation: they contribute a loss of 0 with zero gradient (and count in the
    mean). Where all the soft ranks of a row are equal (identical predictions), the norm of
    :math:`r - \bar r` is floored at 1e-6, so the correlation is 0 and gradients stay finite.
    """
    fn = "spearman_loss"
    x, d, tau = check_sort_input(pred, dim, tau, "pred", fn)
    t = _check_like(target, x, "target", "pred", fn)
    mask = check_mask(mask, x, "pred", fn)
    reduction = _check_reduction(reduction, fn)
    tol = check_tol(tol, fn)
    r = soft_rank(x, tau=tau, dim=d, mask=mask, tol=tol).movedim(d, -1)
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    cdt = r.dtype if r.dtype in (torch.float32, torch.float64) else torch.float32
    r = r.to(cdt)
    m = mask.movedim(d, -1)
    rt = _average_ranks(t.movedim(d, -1), m).to(cdt)
    w = m.to(cdt)
    count = w.sum(dim=-1, keepdim=True)
    denom = count.clamp(min=1)
    dr = w * (r - (w * r).sum(dim=-1, keepdim=True) / denom)
    dt = w * (rt - (w * rt).sum(dim=-1, keepdim=True) / denom)
    t_norm = dt.square().sum(dim=-1).sqrt()
    valid = (count.squeeze(-1) >= 2) & (t_norm > 0)
    r_norm = dr.square().sum(dim=-1).clamp(min=_RANK_NORM_FLOOR**2).sqrt()
    corr = (dr * dt).sum(dim=-1) / (r_norm * torch.where(valid, t_norm, torch.ones_like(t_norm)))
    loss = torch.where(valid, 1 - corr, torch.zeros_like(corr))
    return _reduce(loss.to(x.dtype), reduction)


def ndcg_loss(
    scores: Tensor,
    relevance: Tensor,
    *,
    k: int | None = None,
    tau: TauLike,
    mask: Tensor | None = None,
    n_samples: int = 0,
    gain: str = "exp2",
    reduction: str = "mean",
    generator: torch.Generator | None = None,
    tol: float | None = None,
) -> Tensor:
    r"""One minus the relaxed NDCG@k of a ranking by descending ``scores`` (NeuralNDCG; relaxes
    ``1 - sklearn.metrics.ndcg_score``).

    Per list (the last axis; every other axis is a batch axis), with gains :math:`G = 2^{rel} - 1`
    (``gain="exp2"``) or :math:`G = rel` (``"linear"``) and :math:`\hat P` the first ``k`` rows of
    ``neural_sort(scores, tau=tau, descending=True)`` (:func:`~neuralsort.soft_topk`, O(kn)),

    .. math::

        \mathrm{DCG}_\tau@k = \sum_{r=0}^{k-1} \frac{(\hat P G)_r}{\log_2(r + 2)}, \qquad
        \mathcal{L} = 1 - \frac{\mathrm{DCG}_\tau@k}{\mathrm{IDCG}@k},

    where :math:`\mathrm{IDCG}@k` is the DCG of the gains sorted descending (hard). As
    ``tau -> 0`` (distinct scores) it equals ``1 - ndcg_score(relevance, scores, k=k)`` of
    scikit-learn with ``gain="linear"``. :math:`\hat P` is row- but not column-stochastic, so at
    moderate ``tau`` an item can count in several positions and the loss can dip slightly
    below 0 (NeuralNDCG's Sinkhorn scaling, not done here, would prevent it).

    With ``n_samples > 0`` the scores are treated as Plackett-Luce log-scores and the loss is
    averaged over ``n_samples`` relaxed samples, :math:`\hat P(\text{scores} + g)` with
    :math:`g` i.i.d. Gumbel noise (:func:`~neuralsort.stochastic_neural_sort`'s samples,
    first ``k`` rows).

    Args:
        scores: floating-point ``(..., n)``; higher is ranked first.
        relevance: non-negative graded relevance, the shape of ``scores`` (no gradient).
        k: cut-off (``None``: the whole list); a ``k`` above ``n`` is taken as ``n``.
        tau: temperature (float or scalar tensor).
        mask: optional bool tensor of ``scores``' shape, True at real documents (ragged lists):
            each list is scored over its real documents alone.
        n_samples: 0 for the deterministic relaxation, else the number of Gumbel samples.
        gain: ``"exp2"`` (:math:`2^{rel} - 1`) or ``"linear"`` (:math:`rel`).
        reduction: ``"mean"`` (over lists), ``"sum"`` or ``"none"`` (``scores``' batch shape).
        generator: random generator for the Gumbel noise.
        tol: certified truncation of the rows of :math:`\hat P` for long lists, as in
            :func:`~neuralsort.soft_rank`: 0 is exact, ``None`` (the default) exact except for
            long float32 lists (``2**-24``); not with ``mask``.

    Lists with no relevant document (IDCG = 0: all gains 0, or no real document) have nothing
    to rank: they contribute a loss of 0 with zero gradient (and count in the mean).
    """
    fn = "ndcg_loss"
    x, _, tau = check_sort_input(scores, -1, tau, "scores", fn)
    tol = check_tol(tol, fn)
    rel = _check_like(relevance, x, "relevance", "scores", fn)
    mask = check_mask(mask, x, "scores", fn)
    reduction = _check_reduction(reduction, fn)
    n = x.shape[-1]
    if k is None:
        k = n
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"{fn}: `k` must be a positive int or None (the whole list), got {k!r}")
    k = min(int(k), n)
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 0:
        raise ValueError(
            f"{fn}: `n_samples` must be an int >= 0 (0: deterministic), got {n_samples!r}"
        )
    if gain not in ("exp2", "linear"):
        raise ValueError(f"{fn}: `gain` must be 'exp2' or 'linear', got {gain!r}")
    cdt = compute_dtype(x.dtype)
    rel = rel.detach().to(cdt)
    if mask is not None:
        rel = torch.where(mask, rel, torch.zeros_like(rel))
    if values_readable(rel) and (bool((rel < 0).any()) or not bool(torch.isfinite(rel).all())):
        raise ValueError(f"{fn}: `relevance` must be finite and non-negative at real elements")
    g = torch.exp2(rel) - 1 if gain == "exp2" else rel
    discount = 1 / torch.log2(torch.arange(2, k + 2, device=x.device, dtype=cdt))
    src = x
    if n_samples:
        noise = sample_gumbel(
            (n_samples, *x.shape), dtype=cdt, device=x.device, generator=generator
        )
        src = x.to(cdt) + noise  # (S, ..., n)
    if mask is None:
        # P G, for long lists by rows streamed in chunks (or over certified windows with tol),
        # never the (..., k, n) matrix
        gains = g.expand_as(src).unsqueeze(-1)
        pg = reduced_rows(src, k, tau, True, v=gains, tol=tol)[0].squeeze(-1)
    elif tol:
        raise ValueError(f"{fn}: `tol` > 0 cannot be combined with `mask`; pass one of them")
    else:
        p = soft_topk(src, k, tau=tau, mask=mask.expand_as(src)).to(cdt)  # (S, ..., k, n)
        pg = torch.matmul(p, g.unsqueeze(-1)).squeeze(-1)
    dcg = (pg * discount).sum(dim=-1)
    if n_samples:
        dcg = dcg.mean(dim=0)
    idcg = (torch.sort(g, dim=-1, descending=True).values[..., :k] * discount).sum(dim=-1)
    relevant = idcg > 0
    ndcg = dcg / torch.where(relevant, idcg, torch.ones_like(idcg))
    loss = torch.where(relevant, 1 - ndcg, torch.zeros_like(ndcg))
    return _reduce(loss.to(x.dtype), reduction)


def topk_cross_entropy(
    logits: Tensor,
    target: Tensor,
    k: int,
    *,
    tau: TauLike,
    reduction: str = "mean",
) -> Tensor:
    r"""Relaxed top-k classification loss: :math:`-\log P(\text{target in the top } k)` (relaxes
    the top-k error ``target not in logits.topk(k).indices``).

    With :math:`m` the relaxed top-k indicator of the logits (:func:`~neuralsort.soft_topk_mask`:
    the column sums of the first ``k`` rows of ``neural_sort(logits, tau=tau, descending=True)``,
    capped to probabilities in :math:`[0, 1]` that sum to ``k``),

    .. math::

        \mathcal{L} = -\log \max(m_y,\; \epsilon)

    at the target class :math:`y`, with :math:`\epsilon` = ``finfo.tiny`` so that the log stays
    finite. As ``tau -> 0`` it tends to 0 when the target is
    among the ``k`` largest logits and grows without bound otherwise (on the CPU logits are
    floored 64 below a row's maximum in float32, 600 in float64, which caps it near that).
    ``k = C`` gives 0.

    Args:
        logits: floating-point ``(..., C)`` class scores.
        target: int64 ``(...)`` class indices in ``[0, C)``.
        k: the number of guesses, ``1 <= k <= C``.
        tau: temperature (float or scalar tensor).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``target``'s shape).
    """
    fn = "topk_cross_entropy"
    x = check_float_tensor(logits, "logits", fn)
    canonical_dim(x, -1, "logits", fn)
    if not isinstance(target, Tensor):
        raise TypeError(f"{fn}: `target` must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype != torch.int64:
        raise TypeError(
            f"{fn}: `target` must be an int64 tensor of class indices, got dtype {target.dtype}; "
            "convert it first, e.g. `target.long()`"
        )
    if target.shape != x.shape[:-1]:
        raise ValueError(
            f"{fn}: `target` must have shape {tuple(x.shape[:-1])} (`logits` {tuple(x.shape)} "
            f"without its class axis), got {tuple(target.shape)}"
        )
    c = x.shape[-1]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= c:
        raise ValueError(
            f"{fn}: `k` must be an int in 1..{c} (the number of classes, `logits` has shape "
            f"{tuple(x.shape)}), got {k!r}"
        )
    target = target.to(x.device)
    if target.numel() and values_readable(target) and bool(((target < 0) | (target >= c)).any()):
        raise ValueError(f"{fn}: `target` must hold class indices in [0, {c}), got values outside")
    reduction = _check_reduction(reduction, fn)
    inside = soft_topk_mask(x, int(k), tau=tau)
    p = inside.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    p = p.clamp(min=torch.finfo(p.dtype).tiny)
    return _reduce(-torch.log(p), reduction)
