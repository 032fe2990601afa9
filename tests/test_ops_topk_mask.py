"""``soft_topk_mask`` is a probability per element: in [0, 1], summing to k, with the hard limit,
gradients, and the uncapped column sums wherever those already lie in [0, 1]."""

from __future__ import annotations

import pytest
import torch

import neuralsort as ns

pytestmark = pytest.mark.usefixtures("backend")


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.3, 1.0, 5.0])
@pytest.mark.parametrize("largest", [True, False])
def test_mask_is_in_unit_interval_and_sums_to_k(tau, largest):
    x = randn(3, 7, 20)
    m = ns.soft_topk_mask(x, 5, tau=tau, largest=largest)
    assert m.shape == x.shape
    assert m.min().item() >= 0.0 and m.max().item() <= 1.0
    torch.testing.assert_close(m.sum(-1), torch.full((3, 7), 5.0))
    # the column sums of the first k rows exceed 1 somewhere at these tau (the reason for the cap)
    if tau in (0.1, 0.3):
        assert ns.soft_topk(x, 5, tau=tau, largest=largest).sum(-2).max().item() > 1.05


def test_mask_is_the_projection_of_the_column_sums():
    x = randn(4, 30, seed=1, dtype=torch.float64)
    sums = ns.soft_topk(x, 6, tau=0.3).sum(-2)
    m = ns.soft_topk_mask(x, 6, tau=0.3)
    # the projection: m = min(sums - theta, 1) with one theta <= 0 per row
    free = m < 1 - 1e-12
    theta = (sums - m)[free].reshape(-1)
    for row in range(4):
        t = (sums - m)[row][free[row]]
        assert torch.allclose(t, t[0].expand_as(t), atol=1e-12) and t[0] <= 1e-12
    assert theta.numel() > 0
    # unchanged where nothing exceeds 1 (large tau)
    torch.testing.assert_close(
        ns.soft_topk_mask(x, 6, tau=5.0), ns.soft_topk(x, 6, tau=5.0).sum(-2)
    )


def test_hard_limit_and_hard_flag():
    x = torch.tensor([[0.3, 2.1, -0.8, 1.2, 0.9]])
    exact = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]])
    torch.testing.assert_close(ns.soft_topk_mask(x, 2, tau=1e-3), exact)
    torch.testing.assert_close(ns.soft_topk_mask(x, 2, tau=0.5, hard=True), exact)


def test_gradients_of_the_capped_mask():
    x = randn(2, 9, seed=2, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ns.soft_topk_mask(x, 3, tau=0.3), (x,))
    # capped elements pass no gradient; the others share the constraint sum = k
    m = ns.soft_topk_mask(x, 3, tau=0.3)
    (g,) = torch.autograd.grad(m.sum(), x)
    torch.testing.assert_close(g, torch.zeros_like(g), atol=1e-10, rtol=0)


def test_padded_rows_and_k_equal_to_n():
    x = randn(2, 6, seed=3)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    m = ns.soft_topk_mask(x, 2, tau=0.2, mask=mask)
    assert m.min() >= 0 and m.max() <= 1
    torch.testing.assert_close(m.sum(-1), torch.tensor([2.0, 2.0]))
    assert (m[1, 3:] == 0).all()
    torch.testing.assert_close(ns.soft_topk_mask(x, 6, tau=0.2), torch.ones(2, 6))
