"""The multi-digit MNIST experiments' shared pieces (the paper's Tables 1 and 2): the per-image
net, the targets and the regrouping of a batch's scores; the methods are in
:mod:`~neuralsort.experiments.multidigit.sorters` and
:mod:`~neuralsort.experiments.multidigit.medians`.

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
    "DigitCNN",
    "neuralsort_relax",
    "regroup_lengths",
    "regroup_sequences",
    "sinkhorn_relax",
    "sorting_permutation",
    "true_median",
]


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
        """``(..., 1, H, W) -> (..., out_dim)`` (or the features when there is no head), float32.

        Under autocast the convolutions run in half precision, but the output is float32, so
        the relaxations, their logarithms and the losses stay float32; the output layer itself
        runs in float32, since a score in bfloat16 keeps 8 significant bits, too few to order
        close numbers (scores near 100 would be rounded to steps of 0.5).
        """
        x = self.features(images).float()
        if self.head is None:
            return x
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x)


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


def neuralsort_relax(
    scores: Tensor,
    tau: float,
    stochastic: bool,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The relaxed permutation (descending, largest first) of ``scores (B, n)``: ``(B, n, n)``,
    or ``(S, B, n, n)`` Plackett-Luce samples when ``stochastic``."""
    if stochastic:
        return neuralsort.stochastic_neural_sort(
            scores, tau=tau, n_samples=num_samples, descending=True, generator=generator
        )
    return neuralsort.neural_sort(scores, tau=tau, descending=True)


def sinkhorn_relax(
    log_alpha: Tensor,
    tau: float,
    gumbel: bool,
    num_samples: int,
    n_iters: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The doubly-stochastic Sinkhorn matrix of ``log_alpha (B, n, n)`` (rows = sorted
    positions), or ``(S, B, n, n)`` Gumbel-Sinkhorn samples when ``gumbel``."""
    if gumbel:
        return neuralsort.gumbel_sinkhorn(
            log_alpha, tau=tau, n_samples=num_samples, n_iters=n_iters, generator=generator
        )
    return neuralsort.sinkhorn(log_alpha, n_iters=n_iters, tau=tau)
