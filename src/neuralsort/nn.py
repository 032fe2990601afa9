"""``torch.nn.Module`` wrappers around the functional operators."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_tau
from .knn import dknn_loss, dknn_topk
from .ops import neural_sort, soft_topk

__all__ = ["NeuralSort", "SoftTopK", "DKNN"]


class NeuralSort(nn.Module):
    """Layer form of :func:`neuralsort.neural_sort`: ``(..., n) -> (..., n, n)`` along ``dim``."""

    def __init__(
        self, *, tau: float, descending: bool = False, hard: bool = False, dim: int = -1
    ) -> None:
        super().__init__()
        self.tau = check_tau(tau, "NeuralSort")
        self.descending = descending
        self.hard = hard
        self.dim = dim

    def forward(self, scores: Tensor) -> Tensor:
        return neural_sort(
            scores, tau=self.tau, dim=self.dim, descending=self.descending, hard=self.hard
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau}, descending={self.descending}, hard={self.hard}, dim={self.dim}"


class SoftTopK(nn.Module):
    """Layer form of :func:`neuralsort.soft_topk`: ``(..., n) -> (..., k, n)``."""

    def __init__(self, k: int, *, tau: float, largest: bool = True, hard: bool = False) -> None:
        super().__init__()
        self.k = k
        self.tau = check_tau(tau, "SoftTopK")
        self.largest = largest
        self.hard = hard

    def forward(self, scores: Tensor) -> Tensor:
        return soft_topk(scores, self.k, tau=self.tau, largest=self.largest, hard=self.hard)

    def extra_repr(self) -> str:
        return f"k={self.k}, tau={self.tau}, largest={self.largest}, hard={self.hard}"


class DKNN(nn.Module):
    """Differentiable kNN layer: relaxed top-k-ness ``(Q, N)`` of neighbours for queries.

    ``forward(query, neighbors)`` returns :func:`neuralsort.knn.dknn_topk`; :meth:`loss` returns
    :func:`neuralsort.knn.dknn_loss` (both take an optional candidate ``mask``).
    ``method="stochastic"`` averages over ``n_samples`` Plackett-Luce samples with independent
    noise per sample and query.
    """

    def __init__(
        self, k: int, *, tau: float, method: str = "deterministic", n_samples: int = 5
    ) -> None:
        super().__init__()
        self.k = k
        self.tau = check_tau(tau, "DKNN")
        self.method = method
        self.n_samples = n_samples

    def forward(
        self,
        query: Tensor,
        neighbors: Tensor,
        generator: torch.Generator | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        return dknn_topk(
            query,
            neighbors,
            self.k,
            tau=self.tau,
            method=self.method,
            n_samples=self.n_samples,
            generator=generator,
            mask=mask,
        )

    def loss(
        self,
        query: Tensor,
        neighbors: Tensor,
        query_labels: Tensor,
        neighbor_labels: Tensor,
        generator: torch.Generator | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        return dknn_loss(
            query,
            neighbors,
            query_labels,
            neighbor_labels,
            self.k,
            tau=self.tau,
            method=self.method,
            n_samples=self.n_samples,
            generator=generator,
            mask=mask,
        )

    def extra_repr(self) -> str:
        return f"k={self.k}, tau={self.tau}, method={self.method!r}, n_samples={self.n_samples}"
