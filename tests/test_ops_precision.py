"""float32 (and half) precision where the logits are huge: long rows, small tau, large |x| / tau.

The logits of row ``i`` are of size ``n |x| / tau``, while the softmax only needs their
differences to the row's peak. Taken whole, float32 keeps no correct digit of those differences
for long rows at small ``tau``; each case here has a known answer (the hard operator, or the
float64 result) and runs on both backends and through the streamed path for long rows.
"""

from __future__ import annotations

import pytest
import torch

import neuralsort as ns

pytestmark = pytest.mark.usefixtures("backend")


def integer_scores(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randperm(n, generator=g) - n // 2).float()


def hard_ranks(x: torch.Tensor) -> torch.Tensor:
    return (x.argsort(-1).argsort(-1) + 1).to(x.dtype)


def test_long_rows_at_small_tau_are_the_hard_operator():
    # gaps of 1 at tau 1e-4: the relaxation is hard to every printed digit
    x = integer_scores(1100)
    assert ns.spearman_loss(x[None], x[None], tau=1e-4).abs().item() < 1e-6
    torch.testing.assert_close(ns.soft_rank(x, tau=1e-4), hard_ranks(x), rtol=0, atol=1e-3)
    p = ns.neural_sort(x, tau=1e-4)
    assert torch.equal(p.argmax(-1), x.argsort())
    torch.testing.assert_close(p.max(-1).values, torch.ones(1100))
    torch.testing.assert_close(ns.soft_sort(x, tau=1e-4), x.sort().values, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "make,tau",
    [
        (lambda: integer_scores(4000), 0.3),
        (lambda: integer_scores(1100), 1e-1),
        (lambda: torch.randn(2000, generator=torch.Generator().manual_seed(1)) * 1000, 0.5),
        (lambda: torch.randn(3, 300, generator=torch.Generator().manual_seed(2)) * 50, 0.05),
    ],
)
def test_float32_matches_float64_on_long_rows(make, tau):
    x = make()
    exact = ns.neural_sort(x.double(), tau=tau)
    # n |x| / tau is up to 5e6 here: the relative error of the logits' differences to the peak
    # is about n float32 roundings, so P is within a few 1e-5 (it was off by up to 0.15)
    assert (ns.neural_sort(x, tau=tau).double() - exact).abs().max().item() < 1e-4
    ranks64 = ns.soft_rank(x.double(), tau=tau)
    assert (ns.soft_rank(x, tau=tau).double() - ranks64).abs().max().item() < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_large_scores_over_tau_are_exact_and_finite(dtype):
    # |x| / tau = 1e9, the largest the docs promise
    x = torch.tensor([[3e4, -2e4, 1e4, 0.0]], dtype=dtype, requires_grad=True)
    r = ns.soft_rank(x, tau=3e-5)
    assert r.dtype == dtype
    torch.testing.assert_close(r.float(), torch.tensor([[4.0, 1.0, 3.0, 2.0]]), rtol=0, atol=0)
    (r * torch.arange(4.0)).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("n", [5, 40, 300, 2000])
def test_hard_limit_at_every_n_for_huge_scores(n):
    # |x| up to 1e4 at tau 1e-5: |x| / tau = 1e9 and every gap / tau >= 1e6, so every row is a
    # one-hot (forward and gradient finite)
    x = (integer_scores(n, seed=n) * (2e4 / n)).requires_grad_()
    tau = 1e-5
    p = ns.neural_sort(x, tau=tau, descending=True)
    expected = ns.permutation_matrix(x.detach().argsort(descending=True))
    torch.testing.assert_close(p.detach(), expected)
    torch.testing.assert_close(ns.soft_rank(x.detach(), tau=tau), hard_ranks(x.detach()))
    (p * torch.randn(n, n, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("outlier", [-1e30, 1e25])
def test_far_outliers_change_nothing_beyond_the_floor(outlier):
    # A 1 of scores spread over 1e30 cannot keep differences of size 1, not even in float64;
    # capping the gaps at 2 * 64 tau changes nothing but floored entries, so the rows are those
    # of the same scores with the outlier at -1e3 (also far beyond every floor at tau = 1)
    x = torch.tensor([[3.0, 2.0, 1.0, outlier, 2.5]])
    near = torch.tensor([[3.0, 2.0, 1.0, 1e3 if outlier > 0 else -1e3, 2.5]])
    torch.testing.assert_close(ns.neural_sort(x, tau=1.0), ns.neural_sort(near, tau=1.0))
    torch.testing.assert_close(ns.soft_rank(x, tau=1.0), ns.soft_rank(near, tau=1.0))
    relevance = torch.tensor([[3.0, 2.0, 1.0, 0.0, 2.0]])
    # a padding score of -1e30 (allRank's convention): a perfect ranking has NDCG 1
    if outlier < 0:
        assert ns.ndcg_loss(x, relevance, tau=0.01).item() == pytest.approx(0.0, abs=1e-6)
    leaf = x.clone().requires_grad_()
    ns.soft_rank(leaf, tau=1.0).square().sum().backward()
    near_leaf = near.clone().requires_grad_()
    ns.soft_rank(near_leaf, tau=1.0).square().sum().backward()
    torch.testing.assert_close(leaf.grad, near_leaf.grad)
