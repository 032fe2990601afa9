r"""The Plackett-Luce distribution over permutations, with NeuralSort reparameterized samples.

For positive scores :math:`s = \exp(\ell)` over :math:`n` items, a permutation :math:`z` (the items
in pick order, best first) has probability

.. math::

    q(z \mid s) = \prod_{i=1}^{n} \frac{s_{z_i}}{\sum_{j \ge i} s_{z_j}}.

Sorting :math:`\ell + g` in descending order, :math:`g` i.i.d. standard Gumbel, draws an exact
sample; replacing that sort by :func:`neuralsort.neural_sort` gives a relaxed, reparameterized
sample (Grover et al., ICLR 2019, Section 4).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from ._checks import TauLike, check_float_tensor, check_tau
from ._dispatch import relaxed_rows
from .ops import sample_gumbel

__all__ = ["PlackettLuce"]


class _Permutation(constraints.Constraint):
    """Integer tensors whose last axis is a permutation of ``0..n-1``."""

    is_discrete = True
    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        n = value.shape[-1]
        expected = torch.arange(n, device=value.device)
        return (value.sort(dim=-1).values == expected).all(dim=-1)


permutation = _Permutation()
_NO_SHAPE = torch.Size()


class PlackettLuce(Distribution):
    r"""Plackett-Luce distribution over permutations of the last axis of ``logits``.

    Args:
        logits: ``(*batch, n)`` real log-scores :math:`\ell = \log s`; any real values are valid
            (negative distances, for example), only NaN is rejected under argument validation.
        tau: temperature of the relaxed samples drawn by :meth:`rsample`.

    * :meth:`sample` returns hard permutations ``(*sample_shape, *batch, n)``, int64, in pick order
      (``perm[..., 0]`` is the item picked first).
    * :meth:`rsample` returns relaxed permutation matrices ``(*sample_shape, *batch, n, n)`` whose
      rows follow the pick order (row ``i`` is a soft one-hot of the ``i``-th pick); gradients
      reach ``logits``. Note that this event shape is ``(n, n)``, unlike :meth:`sample`'s ``(n,)``.
    * :meth:`log_prob` is exact.

    Noise is drawn independently for every sample and every batch element.
    """

    arg_constraints = {"logits": constraints.real_vector}
    support = permutation
    has_rsample = True

    def __init__(
        self, logits: Tensor, *, tau: TauLike = 1.0, validate_args: bool | None = None
    ) -> None:
        check_float_tensor(logits, "logits", "PlackettLuce")
        if logits.dim() == 0 or logits.shape[-1] == 0:
            raise ValueError(
                "PlackettLuce: `logits` must have shape (*batch, n) with n >= 1, "
                f"got {tuple(logits.shape)}"
            )
        self.logits = logits
        self.tau = check_tau(tau, "PlackettLuce")
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):  # noqa: D102
        new = self._get_checked_instance(PlackettLuce, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        new.tau = self.tau
        super(PlackettLuce, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def n(self) -> int:
        """Number of items being ordered."""
        return self.logits.shape[-1]

    def _perturbed(self, sample_shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        dtype = self.logits.dtype
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        noise = sample_gumbel(shape, dtype=dtype, device=self.logits.device, generator=generator)
        return self.logits.to(dtype) + noise

    def sample(
        self, sample_shape: torch.Size | tuple = _NO_SHAPE, generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact samples: the descending order of ``logits + Gumbel noise``."""
        with torch.no_grad():
            perturbed = self._perturbed(torch.Size(sample_shape), generator)
            return torch.sort(perturbed, dim=-1, descending=True, stable=True).indices

    def rsample(
        self, sample_shape: torch.Size | tuple = _NO_SHAPE, generator: torch.Generator | None = None
    ) -> Tensor:
        """Relaxed samples ``(*sample_shape, *batch, n, n)``: NeuralSort of the perturbed logits."""
        perturbed = self._perturbed(torch.Size(sample_shape), generator)
        p = relaxed_rows(perturbed, self.n, self.tau, descending=True)
        return p.to(self.logits.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        r"""Exact log-probability of permutations ``value`` (pick order).

        :math:`\log q(z) = \sum_i \ell_{z_i} - \log \sum_{j \ge i} \exp \ell_{z_j}`.
        """
        if self._validate_args:
            if value.is_floating_point() or value.is_complex():
                raise TypeError(
                    "PlackettLuce.log_prob: `value` must be an integer permutation tensor"
                )
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape, self.logits.shape)
        picked = self.logits.expand(shape).gather(-1, value.long().expand(shape))
        tail_lse = torch.logcumsumexp(picked.flip(-1), dim=-1).flip(-1)
        return (picked - tail_lse).sum(-1)

    @property
    def mode(self) -> Tensor:
        """The most probable permutation: items by decreasing logit (ties: earlier index first)."""
        return torch.sort(self.logits, dim=-1, descending=True, stable=True).indices

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """All ``n!`` permutations, ``(n!, *batch, n)`` (only for ``n <= 8``)."""
        if self.n > 8:
            raise ValueError(
                f"PlackettLuce.enumerate_support: n={self.n} has {math.factorial(self.n)} "
                "permutations; enumerate only n <= 8"
            )
        perms = torch.tensor(list(itertools.permutations(range(self.n))), device=self.logits.device)
        perms = perms.reshape((-1,) + (1,) * len(self.batch_shape) + (self.n,))
        if expand:
            perms = perms.expand((-1,) + self.batch_shape + (self.n,))
        return perms
