"""The sorting methods of Table 1 (``SORT_METHODS``), with the interface described in
:mod:`~neuralsort.experiments.multidigit.models`: NeuralSort (deterministic and stochastic) on
per-image scores, Sinkhorn and Gumbel-Sinkhorn on an ``n x n`` matrix of per-image position logits,
and ``vanilla`` (a dense net from the ``n`` image features to ``n x n`` logits, row softmax).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import neuralsort

from .models import (
    DigitCNN,
    neuralsort_relax,
    regroup_lengths,
    regroup_sequences,
    sinkhorn_relax,
    sorting_permutation,
)

__all__ = [
    "SORT_METHODS",
    "NeuralSortSorter",
    "SinkhornSorter",
    "VanillaSorter",
    "build_sort_method",
]

SORT_METHODS = ("deterministic", "stochastic", "sinkhorn", "gumbel-sinkhorn", "vanilla")


_LOG_EPS = 1e-20  # keeps log(P) finite where a relaxed entry underflows to 0


def _row_cross_entropy(log_p: Tensor, perm: Tensor) -> Tensor:
    """Mean over rows (and everything else) of ``-log P[i, perm_i]``; ``log_p (..., B, n, n)``."""
    index = perm.expand(*log_p.shape[:-1]).unsqueeze(-1)
    return -log_p.gather(-1, index).mean()


class _RelaxedPermutationSorter(nn.Module):
    """Shared loss of the sorters whose relaxed permutation is built from per-image net outputs.

    Subclasses give ``per_item(images) -> (B, n, ...)`` (one net pass per image) and
    ``relax(per_item, generator)`` (the relaxed permutation, or samples of it, from those outputs).
    """

    regroup: int = 1

    def per_item(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def relax(self, per_item: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def relaxed(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The relaxed permutation of each sequence of ``images`` (or samples of it)."""
        return self.relax(self.per_item(images), generator)

    def loss(
        self, images: Tensor, values: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Row-wise cross-entropy between the relaxed matrix (or its samples) and the true one.

        With ``regroup > 1`` the batch's items are also dealt into extra sequences (see
        :func:`regroup_sequences`) and the loss is the mean over all of them.
        """
        out, values = regroup_sequences(self.per_item(images), values, self.regroup, generator)
        p = self.relax(out, generator)
        return _row_cross_entropy(torch.log(p + _LOG_EPS), sorting_permutation(values))


class NeuralSortSorter(_RelaxedPermutationSorter):
    """NeuralSort on scalar scores from :class:`DigitCNN` (deterministic or Plackett-Luce).

    The scores do not depend on ``n``, so one trained sorter sorts sequences of any length
    (``any_n``), and ``lengths`` trains it on sequences of several lengths at once (see
    :func:`regroup_lengths`; the loss is the mean row cross-entropy over all their rows).
    """

    any_n = True

    def __init__(
        self,
        image_shape: tuple[int, int],
        *,
        tau: float = 1.0,
        stochastic: bool = False,
        num_samples: int = 5,
        regroup: int = 1,
        lengths: Sequence[int] | None = None,
        near: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = DigitCNN(image_shape, 1)
        self.tau = tau
        self.stochastic = stochastic
        self.num_samples = num_samples
        self.regroup = regroup
        self.lengths = list(lengths or [])
        self.near = near

    def loss(
        self, images: Tensor, values: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Row-wise cross-entropy, averaged over the rows of every regrouped sequence."""
        if not self.lengths and not self.near:
            return super().loss(images, values, generator)
        groups = regroup_lengths(
            self.scores(images), values, self.regroup, self.lengths, generator, self.near
        )
        total, rows = 0.0, 0
        for scores, vals in groups:
            p = self.relax(scores, generator)
            ce = _row_cross_entropy(torch.log(p + _LOG_EPS), sorting_permutation(vals))
            total, rows = total + ce * vals.numel(), rows + vals.numel()
        return total / rows

    def scores(self, images: Tensor) -> Tensor:
        """Per-image scores ``(B, n)``."""
        return self.net(images).squeeze(-1)

    def per_item(self, images: Tensor) -> Tensor:
        return self.scores(images)

    def relax(self, per_item: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Relaxed permutation ``(B, n, n)`` (deterministic) or samples ``(S, B, n, n)``."""
        return neuralsort_relax(per_item, self.tau, self.stochastic, self.num_samples, generator)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Row argmax of the relaxed matrix, i.e. the descending (stable) sort of the scores."""
        return sorting_permutation(self.scores(images))


class SinkhornSorter(_RelaxedPermutationSorter):
    """Sinkhorn baseline: each image gives ``n`` position logits; 20 Sinkhorn iterations.

    ``gumbel=True`` trains on Gumbel-Sinkhorn samples; prediction uses the noise-free matrix.
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        n: int,
        *,
        tau: float = 1.0,
        gumbel: bool = False,
        num_samples: int = 5,
        n_iters: int = 20,
        regroup: int = 1,
    ) -> None:
        super().__init__()
        self.net = DigitCNN(image_shape, n)
        self.tau = tau
        self.gumbel = gumbel
        self.num_samples = num_samples
        self.n_iters = n_iters
        self.regroup = regroup

    def per_item(self, images: Tensor) -> Tensor:
        """Each image's ``n`` position logits, ``(B, n_images, n_positions)``."""
        return self.net(images)

    def log_alpha(self, images: Tensor) -> Tensor:
        """Logits ``(B, n, n)`` with rows = sorted positions and columns = images."""
        return self.per_item(images).transpose(-1, -2)

    def relax(self, per_item: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Doubly-stochastic ``(B, n, n)``, or ``(S, B, n, n)`` Gumbel-Sinkhorn samples."""
        la = per_item.transpose(-1, -2)
        return sinkhorn_relax(la, self.tau, self.gumbel, self.num_samples, self.n_iters, generator)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Row argmax of the noise-free Sinkhorn matrix (not always a permutation)."""
        return neuralsort.sinkhorn(
            self.log_alpha(images), n_iters=self.n_iters, tau=self.tau
        ).argmax(-1)


class VanillaSorter(nn.Module):
    """Vanilla RS: the ``n`` image features, concatenated, through a dense net to n x n logits."""

    def __init__(
        self, image_shape: tuple[int, int], n: int, *, hidden: int = 256, regroup: int = 1
    ) -> None:
        super().__init__()
        self.n = n
        self.regroup = regroup
        self.net = DigitCNN(image_shape, 0)
        self.mlp = nn.Sequential(
            nn.Linear(n * DigitCNN.feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, n * n)
        )

    def _head(self, features: Tensor) -> Tensor:
        return self.mlp(features.flatten(-2)).reshape(*features.shape[:-2], self.n, self.n)

    def logits(self, images: Tensor) -> Tensor:
        """Row logits ``(B, n, n)``: row i scores which image goes to sorted position i."""
        return self._head(self.net(images))

    def loss(
        self, images: Tensor, values: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Row-wise cross-entropy of the row softmax against the true permutation."""
        f, values = regroup_sequences(self.net(images), values, self.regroup, generator)
        return _row_cross_entropy(F.log_softmax(self._head(f), dim=-1), sorting_permutation(values))

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Row argmax of the logits (not always a permutation)."""
        return self.logits(images).argmax(-1)


def build_sort_method(
    method: str,
    *,
    n: int,
    image_shape: tuple[int, int],
    tau: float = 1.0,
    num_samples: int = 5,
    regroup: int = 1,
    lengths: Sequence[int] | None = None,
    near: float = 0.0,
) -> nn.Module:
    """The sorting method called ``method`` (one of :data:`SORT_METHODS`).

    ``regroup``: training sequences per drawn sequence (see :func:`regroup_sequences`);
    ``lengths``: train on sequences of these lengths (NeuralSort only, see :func:`regroup_lengths`).
    """
    if lengths and method not in ("deterministic", "stochastic"):
        raise ValueError(f"training on several lengths needs a NeuralSort method, not {method!r}")
    if method in ("deterministic", "stochastic"):
        return NeuralSortSorter(
            image_shape,
            tau=tau,
            stochastic=method == "stochastic",
            num_samples=num_samples,
            regroup=regroup,
            lengths=lengths,
            near=near,
        )
    if method in ("sinkhorn", "gumbel-sinkhorn"):
        return SinkhornSorter(
            image_shape,
            n,
            tau=tau,
            gumbel=method == "gumbel-sinkhorn",
            num_samples=num_samples,
            regroup=regroup,
        )
    if method == "vanilla":
        return VanillaSorter(image_shape, n, regroup=regroup)
    raise ValueError(f"method must be one of {', '.join(SORT_METHODS)}, got {method!r}")
