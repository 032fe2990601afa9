"""The median-regression methods of Table 2 (``MEDIAN_METHODS``), with the interface described in
:mod:`~neuralsort.experiments.multidigit.models`: a relaxed median selector (NeuralSort,
Sinkhorn, Gumbel-Sinkhorn) weighting per-image value regressions, a dense ``vanilla`` regressor,
and ``constant`` (the mean training median).
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
    true_median,
)

__all__ = [
    "MEDIAN_METHODS",
    "ConstantMedian",
    "NeuralSortMedian",
    "SinkhornMedian",
    "VanillaMedian",
    "build_median_method",
]

MEDIAN_METHODS = (
    "deterministic",
    "stochastic",
    "sinkhorn",
    "gumbel-sinkhorn",
    "vanilla",
    "constant",
)


def _median_rows(p: Tensor) -> Tensor:
    """Selector row(s) of the median from relaxed permutations ``(..., n, n)`` -> ``(..., n)``."""
    n = p.shape[-1]
    return 0.5 * (p[..., (n - 1) // 2, :] + p[..., n // 2, :])


class _MedianBase(nn.Module):
    """Shared scaling: nets see targets divided by ``scale`` (``10**digits``)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def target(self, values: Tensor) -> Tensor:
        return (true_median(values) / self.scale).to(torch.float32)


class NeuralSortMedian(_MedianBase):
    """Relaxed median selector (NeuralSort row of the middle position) times regressed values.

    Two nets: ``scorer`` (sorting scores) and ``regressor`` (each image's value). Deterministic
    loss: squared error of ``selector @ values``; stochastic: mean squared error over PL samples.
    Prediction uses the hard selector (the item with the middle score), as the paper evaluates.
    Neither net depends on ``n`` (``any_n``); ``lengths`` trains on sequences of several lengths
    (see :func:`regroup_lengths`; the loss is the mean over all their sequences).
    """

    any_n = True

    def __init__(
        self,
        image_shape: tuple[int, int],
        *,
        scale: float,
        tau: float = 1.0,
        stochastic: bool = False,
        num_samples: int = 5,
        regroup: int = 1,
        lengths: Sequence[int] | None = None,
    ) -> None:
        super().__init__(scale)
        self.scorer = DigitCNN(image_shape, 1)
        self.regressor = DigitCNN(image_shape, 1)
        self.tau = tau
        self.stochastic = stochastic
        self.num_samples = num_samples
        self.regroup = regroup
        self.lengths = list(lengths or [])

    def loss(
        self, images: Tensor, values: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        both = torch.cat([self.scorer(images), self.regressor(images)], dim=-1)  # (B, n, 2)
        total, count = 0.0, 0
        for group, vals in regroup_lengths(both, values, self.regroup, self.lengths, generator):
            s, v = group.unbind(-1)
            p = neuralsort_relax(s, self.tau, self.stochastic, self.num_samples, generator)
            pred = (_median_rows(p) * v).sum(-1)  # (B,) or (S, B)
            mse = ((pred - self.target(vals)) ** 2).mean()
            total, count = total + mse * vals.shape[0], count + vals.shape[0]
        return total / count

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        s = self.scorer(images).squeeze(-1)
        v = self.regressor(images).squeeze(-1)
        p = neuralsort.neural_sort(s, tau=self.tau, descending=True, hard=True)
        return (_median_rows(p) * v).sum(-1).double() * self.scale


class SinkhornMedian(_MedianBase):
    """Sinkhorn (or Gumbel-Sinkhorn) median selector times regressed values."""

    def __init__(
        self,
        image_shape: tuple[int, int],
        n: int,
        *,
        scale: float,
        tau: float = 1.0,
        gumbel: bool = False,
        num_samples: int = 5,
        n_iters: int = 20,
        regroup: int = 1,
    ) -> None:
        super().__init__(scale)
        self.scorer = DigitCNN(image_shape, n)
        self.regressor = DigitCNN(image_shape, 1)
        self.tau = tau
        self.gumbel = gumbel
        self.num_samples = num_samples
        self.n_iters = n_iters
        self.regroup = regroup

    def loss(
        self, images: Tensor, values: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        both = torch.cat([self.scorer(images), self.regressor(images)], dim=-1)  # (B, n, n + 1)
        both, values = regroup_sequences(both, values, self.regroup, generator)
        la, v = both[..., :-1].transpose(-1, -2), both[..., -1]
        p = sinkhorn_relax(la, self.tau, self.gumbel, self.num_samples, self.n_iters, generator)
        pred = (_median_rows(p) * v).sum(-1)
        return ((pred - self.target(values)) ** 2).mean()

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        la = self.scorer(images).transpose(-1, -2)
        v = self.regressor(images).squeeze(-1)
        sel = _median_rows(neuralsort.sinkhorn(la, n_iters=self.n_iters, tau=self.tau))
        sel = F.one_hot(sel.argmax(-1), sel.shape[-1]).to(v.dtype)
        return (sel * v).sum(-1).double() * self.scale


class VanillaMedian(_MedianBase):
    """Vanilla NN: per-image CNN features, concatenated, through a dense net to the median value."""

    def __init__(
        self,
        image_shape: tuple[int, int],
        n: int,
        *,
        scale: float,
        hidden: int = 64,
        regroup: int = 1,
    ) -> None:
        super().__init__(scale)
        self.regroup = regroup
        self.net = DigitCNN(image_shape, 0)
        self.mlp = nn.Sequential(
            nn.Linear(n * DigitCNN.feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def _head(self, features: Tensor) -> Tensor:
        return self.mlp(features.flatten(-2)).squeeze(-1)

    def _forward(self, images: Tensor) -> Tensor:
        return self._head(self.net(images))

    def loss(
        self, images: Tensor, values: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        f, values = regroup_sequences(self.net(images), values, self.regroup, generator)
        return ((self._head(f) - self.target(values)) ** 2).mean()

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        return self._forward(images).double() * self.scale


class ConstantMedian(_MedianBase):
    """Constant baseline: predicts the mean of the training medians seen so far (no images used).

    It has no trainable parameters: :meth:`observe` updates the running mean and :meth:`loss`
    returns the squared error of the current constant (for logging only).
    """

    trainable = False
    any_n = True

    def __init__(self, *, scale: float) -> None:
        super().__init__(scale)
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def observe(self, values: Tensor) -> None:
        m = true_median(values).to(self.total.device)
        self.total += m.sum()
        self.count += m.numel()

    def constant(self) -> Tensor:
        return self.total / self.count.clamp(min=1)

    def loss(
        self, images: Tensor, values: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        err = (self.constant() - true_median(values).to(self.total.device)) / self.scale
        return (err**2).mean().to(torch.float32)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        return self.constant().expand(images.shape[0]).clone()


def build_median_method(
    method: str,
    *,
    n: int,
    image_shape: tuple[int, int],
    scale: float,
    tau: float = 1.0,
    num_samples: int = 5,
    regroup: int = 1,
    lengths: Sequence[int] | None = None,
) -> nn.Module:
    """The median-regression method called ``method`` (one of :data:`MEDIAN_METHODS`).

    ``regroup``: training sequences per drawn sequence (see :func:`regroup_sequences`); the
    constant baseline ignores it. ``lengths``: train on sequences of these lengths (NeuralSort
    only, see :func:`regroup_lengths`).
    """
    if lengths and method not in ("deterministic", "stochastic"):
        raise ValueError(f"training on several lengths needs a NeuralSort method, not {method!r}")
    if method in ("deterministic", "stochastic"):
        return NeuralSortMedian(
            image_shape,
            scale=scale,
            tau=tau,
            stochastic=method == "stochastic",
            num_samples=num_samples,
            regroup=regroup,
            lengths=lengths,
        )
    if method in ("sinkhorn", "gumbel-sinkhorn"):
        return SinkhornMedian(
            image_shape,
            n,
            scale=scale,
            tau=tau,
            gumbel=method == "gumbel-sinkhorn",
            num_samples=num_samples,
            regroup=regroup,
        )
    if method == "vanilla":
        return VanillaMedian(image_shape, n, scale=scale, regroup=regroup)
    if method == "constant":
        return ConstantMedian(scale=scale)
    raise ValueError(f"method must be one of {', '.join(MEDIAN_METHODS)}, got {method!r}")
