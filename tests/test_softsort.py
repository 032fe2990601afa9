"""Tests for softsort (Prillo & Eisenschlos, 2020)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import neuralsort as ns
from reference import softsort_ref


@pytest.mark.parametrize("descending", [False, True])
def test_matches_reference(descending, device):
    s = torch.randn(3, 7, dtype=torch.float64)
    out = ns.softsort(s.to(device), tau=0.5, descending=descending).cpu()
    for b in range(3):
        np.testing.assert_allclose(out[b].numpy(), softsort_ref(s[b].numpy(), 0.5, descending))


def test_gradcheck_and_limit():
    # seeded: an unseeded draw can put two scores within ~tau of each other, where the
    # tau -> 0 limit is not reached yet
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 6, dtype=torch.float64, generator=g).requires_grad_()
    assert gradcheck(lambda x: ns.softsort(x, tau=0.4, dim=-1), (s,))
    p = ns.softsort(s.detach(), tau=1e-4)
    torch.testing.assert_close(p, ns.permutation_matrix(torch.sort(s.detach()).indices).double())


def test_hard_and_dim():
    s = torch.tensor([[2.0, 1.0], [1.0, 1.0], [0.0, 3.0]])  # sort along dim 0
    h = ns.softsort(s, tau=1.0, dim=0, hard=True)
    assert h.shape == (2, 3, 3)
    assert h[0].argmax(-1).tolist() == [2, 1, 0]
    assert h[1].argmax(-1).tolist() == [0, 1, 2]  # ties: earlier index first


def test_bad_arguments():
    with pytest.raises(ValueError, match="tau"):
        ns.softsort(torch.randn(3), tau=-1.0)
    with pytest.raises(TypeError, match="scores"):
        ns.softsort(torch.arange(3), tau=1.0)
