"""Tests for the Plackett-Luce distribution."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

import neuralsort as ns
from reference import all_permutations, plackett_luce_log_prob_ref


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_probabilities_sum_to_one(n):
    logits = torch.randn(2, n, dtype=torch.float64) * 2
    d = ns.PlackettLuce(logits)
    support = d.enumerate_support()
    assert support.shape == (math.factorial(n), 2, n)
    total = d.log_prob(support).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64))


def test_log_prob_matches_reference():
    logits = torch.tensor([0.3, -1.2, 2.0, 0.0], dtype=torch.float64)
    d = ns.PlackettLuce(logits)
    for perm in all_permutations(4):
        got = d.log_prob(torch.tensor(perm)).item()
        assert got == pytest.approx(plackett_luce_log_prob_ref(logits.numpy(), perm), rel=1e-12)


def test_sample_frequencies_agree_with_log_prob():
    """Pearson chi-square goodness of fit over all 24 permutations (seeded; p ~ 1e-6 cut)."""
    logits = torch.tensor([1.0, 0.0, -0.5, 0.7])
    d = ns.PlackettLuce(logits)
    n_draws = 20000
    g = torch.Generator().manual_seed(1234)
    samples = d.sample((n_draws,), generator=g)
    assert samples.shape == (n_draws, 4) and samples.dtype == torch.int64
    counts = Counter(tuple(s) for s in samples.tolist())
    chi2 = 0.0
    for perm in all_permutations(4):
        expected = n_draws * d.log_prob(torch.tensor(perm)).exp().item()
        chi2 += (counts.get(perm, 0) - expected) ** 2 / expected
    # 23 degrees of freedom: P(chi2 > 60) ~ 4e-5
    assert chi2 < 60.0
    # and the test has power: frequencies from the wrong logits are rejected
    wrong = ns.PlackettLuce(torch.zeros(4))
    chi2_wrong = sum(
        (counts.get(p, 0) - n_draws * wrong.log_prob(torch.tensor(p)).exp().item()) ** 2
        / (n_draws * wrong.log_prob(torch.tensor(p)).exp().item())
        for p in all_permutations(4)
    )
    assert chi2_wrong > 200.0


def test_rsample_shapes_and_gradients_reach_logits():
    logits = torch.randn(3, 5, requires_grad=True)
    d = ns.PlackettLuce(logits, tau=0.5)
    r = d.rsample((2,))
    assert r.shape == (2, 3, 5, 5)
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 3, 5))
    w = torch.randn(2, 3, 5, 5)
    (r * w).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert ns.PlackettLuce(torch.randn(5)).rsample().shape == (5, 5)


def test_rsample_hardens_to_exact_samples():
    logits = torch.randn(4, 6)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    hard = ns.PlackettLuce(logits).sample((3,), generator=g1)
    soft = ns.PlackettLuce(logits, tau=1e-5).rsample((3,), generator=g2)
    assert torch.equal(soft.argmax(-1), hard)


def test_accepts_any_real_logits_even_with_validation():
    # the original code's constraint (positive scores) crashed on negative distances
    d = ns.PlackettLuce(-torch.rand(4, 7) * 100, tau=80.0, validate_args=True)
    assert d.sample().shape == (4, 7)
    assert torch.isfinite(d.log_prob(d.sample())).all()
    assert d.rsample((5,)).shape == (5, 4, 7, 7)


def test_mode_and_batch_broadcasting():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 2.0, 0.0]])
    d = ns.PlackettLuce(logits)
    assert d.mode.tolist() == [[1, 0, 2], [0, 1, 2]]
    lp = d.log_prob(torch.tensor([0, 1, 2]))
    assert lp.shape == (2,)
    e = d.expand((4, 2))
    assert e.sample().shape == (4, 2, 3)


def test_bad_arguments():
    with pytest.raises(TypeError, match="logits"):
        ns.PlackettLuce(torch.arange(3))
    with pytest.raises(ValueError, match="logits"):
        ns.PlackettLuce(torch.tensor(1.0))
    with pytest.raises(ValueError, match="tau"):
        ns.PlackettLuce(torch.randn(3), tau=0.0)
    d = ns.PlackettLuce(torch.randn(3), validate_args=True)
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="n <= 8"):
        ns.PlackettLuce(torch.randn(9)).enumerate_support()
