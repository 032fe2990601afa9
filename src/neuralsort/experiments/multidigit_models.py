"""Nets and methods for the multi-digit MNIST experiments (the paper's Tables 1 and 2).

Every method is an ``nn.Module`` with the same small interface, so the training loop does not care
which one it runs:

* ``loss(images, values, generator=None) -> scalar`` on a batch ``images (B, n, 1, H, W)``,
  ``values (B, n)`` (the true numbers, int64);
* sorting methods: ``predict(images) -> (B, n)`` int64, the input index placed at each sorted
  position (descending order, largest number first);
* median methods: ``predict(images) -> (B,)`` float, the predicted median in units of the numbers.

Sorting methods (``SORT_METHODS``): ``deterministic`` / ``stochastic`` NeuralSort on per-image
scores, ``sinkhorn`` / ``gumbel-sinkhorn`` on an ``n x n`` matrix of per-image position logits,
and ``vanilla`` (a dense net from the ``n`` image features to ``n x n`` logits, row softmax).
Median methods (``MEDIAN_METHODS``) add ``constant`` (the mean training median) and ``vanilla``
(a dense regressor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import neuralsort

__all__ = [
    "SORT_METHODS",
    "MEDIAN_METHODS",
    "DigitCNN",
    "NeuralSortSorter",
    "SinkhornSorter",
    "VanillaSorter",
    "NeuralSortMedian",
    "SinkhornMedian",
    "VanillaMedian",
    "ConstantMedian",
    "build_sort_method",
    "build_median_method",
    "regroup_sequences",
    "regroup_lengths",
    "sorting_permutation",
    "true_median",
]

SORT_METHODS = ("deterministic", "stochastic", "sinkhorn", "gumbel-sinkhorn", "vanilla")
MEDIAN_METHODS = (
    "deterministic",
    "stochastic",
    "sinkhorn",
    "gumbel-sinkhorn",
    "vanilla",
    "constant",
)

_LOG_EPS = 1e-20  # keeps log(P) finite where a relaxed entry underflows to 0


class DigitCNN(nn.Module):
    """The paper's per-image net: conv5x5x32-ReLU-pool-conv5x5x64-ReLU-pool-FC64-ReLU-FC(out_dim).

    Convolutions keep the size ("same" padding); pools halve it (rounding up), so a ``112 x 28``
    image reaches FC64 as ``64 x 28 x 7`` features.

    Args:
        image_shape: ``(H, W)`` of one item's image (``(28 * digits, 28)``).
        out_dim: size of the output layer; 0: no output layer (``forward`` gives the 64 features).
    """

    feature_dim = 64

    def __init__(self, image_shape: tuple[int, int], out_dim: int = 1) -> None:
        super().__init__()
        h, w = image_shape
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        flat = 64 * math.ceil(math.ceil(h / 2) / 2) * math.ceil(math.ceil(w / 2) / 2)
        self.fc1 = nn.Linear(flat, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, out_dim) if out_dim > 0 else None
        # Channels-last convolution weights make the convolutions and pools run in channels-last
        # layout: about 1.5x faster on CPU, same results.
        self.conv1.to(memory_format=torch.channels_last)
        self.conv2.to(memory_format=torch.channels_last)

    def features(self, images: Tensor) -> Tensor:
        """``(..., 1, H, W) -> (..., 64)``."""
        lead = images.shape[:-3]
        x = images.reshape(-1, *images.shape[-3:]).contiguous(memory_format=torch.channels_last)
        # ReLU and max-pooling commute; pooling first applies the ReLU to 4x fewer entries.
        x = F.relu(F.max_pool2d(self.conv1(x), 2, ceil_mode=True))
        x = F.relu(F.max_pool2d(self.conv2(x), 2, ceil_mode=True))
        x = F.relu(self.fc1(x.flatten(1)))
        return x.reshape(*lead, self.feature_dim)

    def forward(self, images: Tensor) -> Tensor:
        """``(..., 1, H, W) -> (..., out_dim)`` (or the features when there is no head)."""
        x = self.features(images)
        return x if self.head is None else self.head(x)


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------


def sorting_permutation(values: Tensor) -> Tensor:
    """The true permutation: index of the item at each position of the descending sort.

    Ties keep the earlier index first (a stable sort), as the paper's sort does.
    """
    return torch.sort(values, dim=-1, descending=True, stable=True).indices


def true_median(values: Tensor) -> Tensor:
    """Median of each row of ``values (B, n)`` as float64 (for even n: mean of the middle two)."""
    s = torch.sort(values.to(torch.float64), dim=-1).values
    n = s.shape[-1]
    return 0.5 * (s[..., (n - 1) // 2] + s[..., n // 2])


def _median_rows(p: Tensor) -> Tensor:
    """Selector row(s) of the median from relaxed permutations ``(..., n, n)`` -> ``(..., n)``."""
    n = p.shape[-1]
    return 0.5 * (p[..., (n - 1) // 2, :] + p[..., n // 2, :])


def _row_cross_entropy(log_p: Tensor, perm: Tensor) -> Tensor:
    """Mean over rows (and everything else) of ``-log P[i, perm_i]``; ``log_p (..., B, n, n)``."""
    index = perm.expand(*log_p.shape[:-1]).unsqueeze(-1)
    return -log_p.gather(-1, index).mean()


def regroup_sequences(
    per_item: Tensor, values: Tensor, factor: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """More training sequences from the items of one batch, without running any net again.

    The nets see each image on its own, so their per-item outputs can be dealt into new sequences
    for free: the ``B`` given sequences are kept and ``(factor - 1) * B`` more are drawn, each
    ``n`` distinct items chosen uniformly from the ``B * n`` items of the batch. Every image then
    takes part in about ``factor`` sequences per step, so each (costly) pass of the image nets
    yields ``factor`` times as many sorting comparisons. ``factor = 1`` is the paper's training.

    Args:
        per_item: ``(B, n, *feature)`` outputs of a per-image net.
        values: ``(B, n)`` the items' numbers.
        factor: sequences per given sequence (>= 1).
        generator: random source (on ``per_item``'s device) of the new groupings.

    Returns:
        ``(factor * B, n, *feature)`` and ``(factor * B, n)``; the first ``B`` rows are the inputs.
    """
    if factor == 1:
        return per_item, values
    b, n = values.shape
    flat = per_item.reshape(b * n, *per_item.shape[2:])
    u = torch.rand((factor - 1) * b, b * n, generator=generator, device=per_item.device)
    index = u.argsort(dim=-1)[:, :n]  # n distinct items per new sequence
    new_values = values.reshape(-1)[index.to(values.device)]
    return torch.cat([per_item, flat[index]]), torch.cat([values, new_values])


def regroup_lengths(
    per_item: Tensor,
    values: Tensor,
    factor: int,
    lengths: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    near: float = 0.0,
) -> list[tuple[Tensor, Tensor]]:
    """Training sequences of several lengths from the items of one batch (no net runs again).

    Without ``lengths`` this is ``[regroup_sequences(per_item, values, factor, generator)]``.
    With ``lengths`` ``(m_1, ..., m_K)``, the ``B * n`` items are dealt into sequences of each
    length ``m_k``: ``ceil(factor * B * n / (K * m_k))`` sequences of ``m_k`` distinct items drawn
    uniformly, so every length gets about ``factor * B * n / K`` item slots and every image takes
    part in about ``factor`` sequences per step, as with plain regrouping. Only methods whose
    per-item outputs do not depend on ``n`` (NeuralSort's scores) can be trained this way.

    Args:
        per_item: ``(B, n, *feature)`` outputs of a per-image net.
        values: ``(B, n)`` the items' numbers.
        factor: item slots per item and step (>= 1).
        lengths: sequence lengths, each in ``2 .. B * n``; None or empty: ``n`` only.
        generator: random source (on ``per_item``'s device) of the groupings.
        near: the fraction of each length's sequences made of ``m_k`` items next to each other
            in value (a window of the batch's items in sorted order, at a random start): hard
            sequences whose neighbours are closer than in a random draw.

    Returns:
        one ``(sequences (S_k, m_k, *feature), values (S_k, m_k))`` pair per length.
    """
    b, n = values.shape
    if not lengths and not near:
        return [regroup_sequences(per_item, values, factor, generator)]
    lengths = lengths or [n]
    pool = b * n
    if any(m < 2 or m > pool for m in lengths):
        raise ValueError(f"lengths must lie in 2..{pool} (the items of a batch), got {lengths}")
    flat = per_item.reshape(pool, *per_item.shape[2:])
    flat_values = values.reshape(-1)
    groups = []
    for m in lengths:
        count = math.ceil(factor * pool / (len(lengths) * m))
        u = torch.rand(count, pool, generator=generator, device=per_item.device)
        index = u.argsort(dim=-1)[:, :m]  # m distinct items per sequence
        close = round(near * count)
        if close:
            order = flat_values.argsort().to(per_item.device)
            starts = (u[:close, 0] * (pool - m + 1)).long().clamp(max=pool - m)
            window = starts[:, None] + torch.arange(m, device=per_item.device)
            index = torch.cat([order[window], index[close:]])
        groups.append((flat[index], flat_values[index.to(values.device)]))
    return groups


# ------------------------------------------------------------------------------------------------
# sorting methods
# ------------------------------------------------------------------------------------------------


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
        if self.stochastic:
            return neuralsort.stochastic_neural_sort(
                per_item, self.tau, self.num_samples, descending=True, generator=generator
            )
        return neuralsort.neural_sort(per_item, self.tau, descending=True)

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
        if self.gumbel:
            return neuralsort.gumbel_sinkhorn(
                la, self.tau, self.num_samples, self.n_iters, generator=generator
            )
        return neuralsort.sinkhorn(la, self.n_iters, self.tau)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Row argmax of the noise-free Sinkhorn matrix (not always a permutation)."""
        return neuralsort.sinkhorn(self.log_alpha(images), self.n_iters, self.tau).argmax(-1)


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


# ------------------------------------------------------------------------------------------------
# median methods (values handled in units of 10**digits, i.e. in [0, 1), inside the nets)
# ------------------------------------------------------------------------------------------------


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
            if self.stochastic:
                p = neuralsort.stochastic_neural_sort(
                    s, self.tau, self.num_samples, descending=True, generator=generator
                )
            else:
                p = neuralsort.neural_sort(s, self.tau, descending=True)
            pred = (_median_rows(p) * v).sum(-1)  # (B,) or (S, B)
            mse = ((pred - self.target(vals)) ** 2).mean()
            total, count = total + mse * vals.shape[0], count + vals.shape[0]
        return total / count

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        s = self.scorer(images).squeeze(-1)
        v = self.regressor(images).squeeze(-1)
        p = neuralsort.neural_sort(s, self.tau, descending=True, hard=True)
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
        if self.gumbel:
            p = neuralsort.gumbel_sinkhorn(
                la, self.tau, self.num_samples, self.n_iters, generator=generator
            )
        else:
            p = neuralsort.sinkhorn(la, self.n_iters, self.tau)
        pred = (_median_rows(p) * v).sum(-1)
        return ((pred - self.target(values)) ** 2).mean()

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        la = self.scorer(images).transpose(-1, -2)
        v = self.regressor(images).squeeze(-1)
        sel = _median_rows(neuralsort.sinkhorn(la, self.n_iters, self.tau))
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
