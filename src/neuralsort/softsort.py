r"""SoftSort (Prillo & Eisenschlos, ICML 2020): a simpler sibling of NeuralSort.

.. math::

    \hat P[i, j] = \operatorname{softmax}_j\big(-|\operatorname{sort}(s)_i - s_j| / \tau\big),

also unimodal row-stochastic and converging to the sorting permutation matrix as
:math:`\tau \to 0^+`; it relaxes the same hard operator as :func:`neuralsort.neural_sort`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import TauLike, check_sort_input, compute_dtype
from ._rows import sort_order, straight_through

__all__ = ["softsort"]


def softsort(
    scores: Tensor,
    *,
    tau: TauLike,
    dim: int = -1,
    descending: bool = False,
    hard: bool = False,
) -> Tensor:
    """Relaxed permutation matrix ``(..., n, n)`` by SoftSort, in :func:`neural_sort`'s convention.

    Rows are sorted positions, columns input elements, ``P @ x`` sorts ``x``; ``hard=True`` is the
    straight-through variant (forward: permutation of a stable sort).
    """
    fn = "softsort"
    x, d, tau = check_sort_input(scores, dim, tau, "scores", fn)
    xm = x.movedim(d, -1).to(compute_dtype(x.dtype))
    order = sort_order(xm, descending)
    sorted_values = xm.gather(-1, order)
    logits = (sorted_values.unsqueeze(-1) - xm.unsqueeze(-2)).abs().neg() / tau
    p = torch.softmax(logits, dim=-1)
    if hard:
        p = straight_through(p, order)
    return p.to(x.dtype)
