"""Tests for sinkhorn and gumbel_sinkhorn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import neuralsort as ns
from reference import sinkhorn_ref


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_matches_reference(tau, device):
    la = torch.randn(2, 5, 5, dtype=torch.float64)
    out = ns.sinkhorn(la.to(device), n_iters=15, tau=tau).cpu()
    for b in range(2):
        np.testing.assert_allclose(out[b].numpy(), sinkhorn_ref(la[b].numpy(), 15, tau), rtol=1e-9)


def test_doubly_stochastic_after_many_iterations():
    out = ns.sinkhorn(torch.randn(3, 6, 6), n_iters=200, tau=1.0)
    torch.testing.assert_close(out.sum(-1), torch.ones(3, 6), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.sum(-2), torch.ones(3, 6), atol=1e-4, rtol=0)


def test_low_tau_gives_the_assignment():
    la = torch.eye(4)[[2, 0, 3, 1]] * 5 + torch.randn(4, 4) * 0.1
    out = ns.sinkhorn(la, n_iters=100, tau=0.05)
    assert out.argmax(-1).tolist() == [2, 0, 3, 1]


def test_gradcheck():
    la = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: ns.sinkhorn(x, n_iters=5, tau=0.7), (la,))

    def gs(x):
        return ns.gumbel_sinkhorn(
            x, tau=0.7, n_samples=2, n_iters=5, generator=torch.Generator().manual_seed(0)
        )

    assert gradcheck(gs, (la,))


def test_gumbel_sinkhorn_shapes_and_noise():
    la = torch.zeros(3, 4, 4)
    out = ns.gumbel_sinkhorn(la, tau=0.1, n_samples=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 3, 4, 4)
    flat = out.reshape(15, 4, 4)
    assert not torch.allclose(flat[0], flat[1])
    same = ns.gumbel_sinkhorn(la, tau=0.1, n_samples=2, noise_factor=0.0)
    torch.testing.assert_close(same[0], ns.sinkhorn(la, tau=0.1))
    assert ns.gumbel_sinkhorn(torch.zeros(4, 4), tau=1.0).shape == (1, 4, 4)


def test_bfloat16_finite():
    out = ns.sinkhorn(torch.randn(2, 8, 8).bfloat16() * 100, tau=0.01)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\(\.\.\., n, n\)"):
        ns.sinkhorn(torch.randn(3, 4), tau=1.0)
    with pytest.raises(ValueError, match="n_iters"):
        ns.sinkhorn(torch.randn(3, 3), n_iters=-1, tau=1.0)
    with pytest.raises(ValueError, match="tau"):
        ns.sinkhorn(torch.randn(3, 3), tau=0)
    with pytest.raises(TypeError, match="log_alpha"):
        ns.sinkhorn(torch.ones(3, 3, dtype=torch.long), tau=1.0)
    with pytest.raises(ValueError, match="n_samples"):
        ns.gumbel_sinkhorn(torch.randn(3, 3), n_samples=0, tau=1.0)
    with pytest.raises(ValueError, match="noise_factor"):
        ns.gumbel_sinkhorn(torch.randn(3, 3), noise_factor=-1.0, tau=1.0)
