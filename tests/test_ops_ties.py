"""At exact ties the gradient is the one-sided limit whose order is ``hard=True``'s, for both
sort orders: ties go to the earlier index first, ascending and descending alike."""

from __future__ import annotations

import pytest
import torch

import neuralsort as ns

pytestmark = pytest.mark.usefixtures("backend")

TIED = torch.tensor([1, 2, 2, 3, 0.5, 2, 3], dtype=torch.float64)
UPSTREAM = torch.randn(7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def grad_at(x: torch.Tensor, descending: bool, op) -> torch.Tensor:
    x = x.clone().requires_grad_()
    (op(x, descending) * UPSTREAM[: op(x, descending).shape[-2]]).sum().backward()
    return x.grad


OPS = {
    "neural_sort": lambda x, d: ns.neural_sort(x, tau=0.5, descending=d),
    "soft_topk": lambda x, d: ns.soft_topk(x, 3, tau=0.5, largest=d),
    "soft_rank": lambda x, d: ns.soft_rank(x, tau=0.5, descending=d).unsqueeze(0),
    "soft_sort": lambda x, d: ns.soft_sort(x, tau=0.5, descending=d).unsqueeze(0),
}


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("op", sorted(OPS))
def test_tie_gradient_is_the_limit_in_hard_order(op, descending):
    fn = OPS[op]
    step = 1e-9 * torch.arange(7, dtype=torch.float64)
    # the nearby input without ties whose sort order is hard=True's: the earlier index first
    nearby = TIED - step if descending else TIED + step
    hard = ns.neural_sort(TIED, tau=0.5, descending=descending, hard=True).argmax(-1)
    assert torch.equal(hard, nearby.argsort(descending=descending))
    torch.testing.assert_close(
        grad_at(TIED, descending, fn), grad_at(nearby, descending, fn), atol=1e-6, rtol=0
    )
    other = TIED + step if descending else TIED - step
    assert (grad_at(TIED, descending, fn) - grad_at(other, descending, fn)).abs().max() > 1e-3


@pytest.mark.parametrize("descending", [False, True])
def test_topk_hard_indices_are_the_stable_order(descending):
    hard = ns.soft_topk(TIED, 4, tau=0.5, largest=descending, hard=True).argmax(-1)
    expected = torch.sort(TIED, descending=descending, stable=True).indices[:4]
    assert torch.equal(hard, expected)
