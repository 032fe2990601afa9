r"""Sinkhorn and Gumbel-Sinkhorn: the doubly-stochastic baselines the paper compares with.

Sinkhorn normalisation (Adams & Zemel, 2011; Mena et al., ICLR 2018) relaxes the hard assignment
:math:`\arg\max_P \langle P, \alpha \rangle` over permutation matrices: starting from
:math:`\log \alpha / \tau`, rows and columns are normalised alternately in log space,

.. math::

    X \leftarrow X - \operatorname{logsumexp}_{\text{cols}}(X), \qquad
    X \leftarrow X - \operatorname{logsumexp}_{\text{rows}}(X),

and :math:`\exp(X)` tends to a doubly-stochastic matrix. Gumbel-Sinkhorn adds i.i.d. Gumbel
noise to :math:`\log \alpha` first, a relaxed sample of a permutation.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from ._checks import TauLike, check_float_tensor, check_positive_int, check_tau, compute_dtype
from .ops import sample_gumbel

__all__ = ["sinkhorn", "gumbel_sinkhorn"]


def _check_square(x: Tensor, fn: str) -> None:
    if x.dim() < 2 or x.shape[-1] != x.shape[-2] or x.shape[-1] == 0:
        raise ValueError(
            f"{fn}: `log_alpha` must have shape (..., n, n) with n >= 1, got {tuple(x.shape)}"
        )


def _check_iters(n_iters: object, fn: str) -> int:
    if isinstance(n_iters, bool) or not isinstance(n_iters, numbers.Integral) or n_iters < 0:
        raise ValueError(f"{fn}: `n_iters` must be a non-negative int, got {n_iters!r}")
    return int(n_iters)


def _sinkhorn(log_alpha: Tensor, n_iters: int, tau: TauLike) -> Tensor:
    x = log_alpha.to(compute_dtype(log_alpha.dtype)) / tau
    for _ in range(n_iters):
        x = x - torch.logsumexp(x, dim=-1, keepdim=True)
        x = x - torch.logsumexp(x, dim=-2, keepdim=True)
    return x.exp().to(log_alpha.dtype)


def sinkhorn(log_alpha: Tensor, *, tau: TauLike, n_iters: int = 20) -> Tensor:
    """Doubly-stochastic relaxation of a permutation from log-potentials ``(..., n, n)``.

    Returns ``exp`` of ``log_alpha / tau`` after ``n_iters`` rounds of row then column
    normalisation in log space: columns sum to 1 exactly, rows approximately (exactly in the limit).
    """
    fn = "sinkhorn"
    check_float_tensor(log_alpha, "log_alpha", fn)
    _check_square(log_alpha, fn)
    return _sinkhorn(log_alpha, _check_iters(n_iters, fn), check_tau(tau, fn))


def gumbel_sinkhorn(
    log_alpha: Tensor,
    *,
    tau: TauLike,
    n_samples: int = 1,
    n_iters: int = 20,
    noise_factor: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gumbel-Sinkhorn samples: :func:`sinkhorn` of ``log_alpha + noise_factor * g``.

    ``g`` is i.i.d. standard Gumbel noise, independent for every sample and batch element.

    Returns:
        ``(n_samples, ..., n, n)``; the sample axis is kept when ``n_samples=1``.
    """
    fn = "gumbel_sinkhorn"
    check_float_tensor(log_alpha, "log_alpha", fn)
    _check_square(log_alpha, fn)
    tau = check_tau(tau, fn)
    n_iters = _check_iters(n_iters, fn)
    n_samples = check_positive_int(n_samples, "n_samples", fn)
    if not isinstance(noise_factor, numbers.Real) or noise_factor < 0:
        raise ValueError(
            f"{fn}: `noise_factor` must be a non-negative number, got {noise_factor!r}"
        )
    cdt = compute_dtype(log_alpha.dtype)
    noise = sample_gumbel(
        (n_samples, *log_alpha.shape), dtype=cdt, device=log_alpha.device, generator=generator
    )
    perturbed = log_alpha.to(cdt).unsqueeze(0) + noise_factor * noise
    return _sinkhorn(perturbed, n_iters, tau).to(log_alpha.dtype)
