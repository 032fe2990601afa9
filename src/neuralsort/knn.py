r"""Differentiable k-nearest-neighbours (Grover et al., ICLR 2019, Section 6.1).

For a query :math:`q` and candidate neighbours :math:`x_1..x_N`, the scores are negative squared
Euclidean distances :math:`s_j = -\|q - x_j\|^2`. The relaxed "top-k-ness" of neighbour :math:`j`,
which relaxes the indicator "j is among the k nearest", is the sum of the first :math:`k` rows of
the relaxed permutation matrix (descending scores):

.. math::

    t_j = \sum_{i \le k} \hat P[i, j], \qquad
    \mathcal{L} = -\frac{1}{k} \sum_j \mathbb{1}[y_j = y_q]\, t_j .

The stochastic form relaxes Plackett-Luce samples with log-scores :math:`s` (Gumbel-perturbed
scores), averaging the loss over samples.

A ``mask`` limits each query to its own candidates (True = candidate), e.g. ``~torch.eye(B)``
when a batch's images are each a query against all the others: the top-k-ness of the others is
then exactly what the query would get with its candidates alone, and 0 elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import (
    TauLike,
    check_float_tensor,
    check_mask,
    check_positive_int,
    compute_dtype,
)
from .ops import sample_gumbel, soft_topk

__all__ = ["squared_distances", "dknn_topk", "dknn_loss"]

_METHODS = ("deterministic", "stochastic")


def squared_distances(query: Tensor, neighbors: Tensor) -> Tensor:
    r""":math:`\|q_i - x_j\|^2` ``(..., Q, N)`` by a matrix product (no ``Q x N x D`` tensor)."""
    q2 = query.pow(2).sum(-1, keepdim=True)
    x2 = neighbors.pow(2).sum(-1).unsqueeze(-2)
    cross = torch.matmul(query, neighbors.transpose(-1, -2))
    return (q2 + x2 - 2 * cross).clamp_min(0)


def dknn_topk(
    query: Tensor,
    neighbors: Tensor,
    k: int,
    *,
    tau: TauLike,
    method: str = "deterministic",
    n_samples: int = 5,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Relaxed top-k-ness of each neighbour for each query.

    Args:
        query: ``(Q, D)`` embeddings (any leading batch axes allowed).
        neighbors: ``(N, D)`` embeddings.
        k: number of neighbours, ``1 <= k <= N``.
        tau: NeuralSort temperature.
        method: ``"deterministic"`` or ``"stochastic"`` (Plackett-Luce with Gumbel noise).
        n_samples: Plackett-Luce samples for the stochastic method.
        mask: optional bool ``(Q, N)`` (with ``query``'s leading axes), True where neighbour
            ``j`` is a candidate of query ``i``; every query needs at least ``k``. The others
            get 0 and no gradient; the candidates get what they would get alone.

    Returns:
        ``(Q, N)`` values in ``[0, 1]`` summing to ``k`` per query; ``(n_samples, Q, N)`` for
        the stochastic method.
    """
    fn = "dknn_topk"
    check_float_tensor(query, "query", fn)
    check_float_tensor(neighbors, "neighbors", fn)
    if query.dim() < 2 or neighbors.dim() < 2 or query.shape[-1] != neighbors.shape[-1]:
        raise ValueError(
            f"{fn}: `query` (Q, D) and `neighbors` (N, D) must share D, got "
            f"{tuple(query.shape)} and {tuple(neighbors.shape)}"
        )
    if method not in _METHODS:
        raise ValueError(f"{fn}: `method` must be one of {_METHODS}, got {method!r}")
    scores = -squared_distances(query, neighbors)
    if mask is not None:
        if isinstance(mask, Tensor) and mask.shape != scores.shape:
            raise ValueError(
                f"{fn}: `mask` must have shape {tuple(scores.shape)}: one row per query in "
                f"`query` {tuple(query.shape)}, one column per row of `neighbors` "
                f"{tuple(neighbors.shape)}; got {tuple(mask.shape)}"
            )
        mask = check_mask(mask, scores, "distances", fn)
        fewest = int(mask.sum(-1).min()) if mask.numel() else k
        if fewest < k:
            raise ValueError(
                f"{fn}: every query needs at least k = {k} candidates in `mask`; one has {fewest}"
            )
    if method == "stochastic":
        n_samples = check_positive_int(n_samples, "n_samples", fn)
        cdt = compute_dtype(scores.dtype)
        noise = sample_gumbel(
            (n_samples, *scores.shape), dtype=cdt, device=scores.device, generator=generator
        )
        scores = scores.to(cdt).unsqueeze(0) + noise
        if mask is not None:
            mask = mask.expand_as(scores)
    return soft_topk(scores, k, tau=tau, dim=-1, largest=True, mask=mask).sum(-2)


def _same_label(query_labels: Tensor, neighbor_labels: Tensor) -> Tensor:
    if query_labels.is_floating_point():  # one-hot (or soft) labels
        return torch.matmul(query_labels, neighbor_labels.transpose(-1, -2))
    return (query_labels.unsqueeze(-1) == neighbor_labels.unsqueeze(-2)).float()


def dknn_loss(
    query: Tensor,
    neighbors: Tensor,
    query_labels: Tensor,
    neighbor_labels: Tensor,
    k: int,
    *,
    tau: TauLike,
    method: str = "deterministic",
    n_samples: int = 5,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""The NeuralSort kNN loss :math:`-\frac{1}{k}\sum_j \mathbb{1}[y_j = y_q]\, t_j`, averaged.

    Labels are integer class indices ``(Q,)`` / ``(N,)`` or one-hot float rows ``(Q, C)`` /
    ``(N, C)``. The mean runs over queries and, for the stochastic method, over samples.
    ``mask``: each query's candidates, as for :func:`dknn_topk`.
    """
    if query_labels.shape[0] != query.shape[-2] or neighbor_labels.shape[0] != neighbors.shape[-2]:
        raise ValueError(
            "dknn_loss: labels must have one entry per row: got query_labels "
            f"{tuple(query_labels.shape)} for query {tuple(query.shape)} and neighbor_labels "
            f"{tuple(neighbor_labels.shape)} for neighbors {tuple(neighbors.shape)}"
        )
    topk = dknn_topk(
        query, neighbors, k, tau=tau, method=method, n_samples=n_samples, generator=generator,
        mask=mask,
    )  # fmt: skip
    same = _same_label(query_labels, neighbor_labels).to(topk.dtype)
    return -(topk * same).sum(-1).mean() / k
