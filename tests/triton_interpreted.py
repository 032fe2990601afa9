"""The Triton kernels (src/neuralsort/_triton.py) against the PyTorch path.

Not collected on its own (no ``test_`` prefix): tests/test_triton.py runs this module in a fresh
process with ``TRITON_INTERPRET=1`` (Triton's interpreter executes the kernels with numpy, so
they take CPU tensors), ``NEURALSORT_TRITON=1`` and the native CPU operator off. On a GPU
machine, ``NEURALSORT_TEST_DEVICE=cuda NEURALSORT_TRITON=1 pytest tests/triton_interpreted.py``
runs the same checks on the compiled kernels (benchmarks/gpu_check.sh does).
"""

from __future__ import annotations

import os

import pytest
import torch

import neuralsort as ns
from neuralsort import _triton

DEVICE = torch.device(os.environ.get("NEURALSORT_TEST_DEVICE", "cpu"))
assert DEVICE.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1", (
    "run through tests/test_triton.py (or with NEURALSORT_TEST_DEVICE=cuda on a GPU)"
)


def both_paths(fn, *args):
    """Output and input gradients with the Triton kernels, then with the PyTorch path."""
    results = []
    for use in (True, False):
        leaves = [a.detach().clone().requires_grad_() for a in args]
        with _triton.enabled(use):
            assert _triton.usable(leaves[0]) is (use and leaves[0].dtype == torch.float32)
            out = fn(*leaves)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        out.backward(upstream.to(out.device, out.dtype))
        results.append((out.detach(), [leaf.grad for leaf in leaves]))
    return results


def assert_agree(fn, *args):
    """The two float32 paths round differently: the Triton path's distance to the float64 result
    (PyTorch path) must be of the PyTorch float32 path's order (the gradient of tau, a sum over
    the batch with cancellation, differs the most: up to 2e-4 of its size)."""
    (o1, g1), (o2, g2) = both_paths(fn, *args)
    with _triton.enabled(False):
        (o64, g64), _ = both_paths(fn, *(a.double() for a in args))
    for triton_out, torch_out, exact in [(o1, o2, o64), *zip(g1, g2, g64, strict=True)]:
        triton_err = (triton_out.double() - exact).abs().max().item()
        torch_err = (torch_out.double() - exact).abs().max().item()
        scale = exact.abs().max().item()
        assert triton_err <= 4 * torch_err + 2e-4 * scale, (triton_err, torch_err, scale)


def scores(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


@pytest.mark.parametrize("n", [1, 2, 3, 15, 16, 17, 40, 100, 129, 256])
def test_neural_sort_matches_the_torch_path(n):
    x = scores(3, n, seed=n) * 2
    tau = torch.tensor(0.7, device=DEVICE)
    for descending in (False, True):
        assert_agree(lambda x, t, d=descending: ns.neural_sort(x, tau=t, descending=d), x, tau)


@pytest.mark.parametrize("n,k", [(5, 1), (16, 9), (100, 9), (200, 16)])
def test_topk_sort_rank_quantile_match_the_torch_path(n, k):
    x = scores(2, 3, n, seed=k)
    for fn in (
        lambda x: ns.soft_topk(x, k, tau=0.5),
        lambda x: ns.soft_topk(x, k, tau=0.5, largest=False, dim=-1),
        lambda x: ns.soft_sort(x, tau=0.5),
        lambda x: ns.soft_rank(x, tau=0.5),
        lambda x: ns.soft_quantile(x, 0.5, tau=0.5),
    ):
        assert_agree(fn, x)


def test_ties_give_the_same_matrix_and_finite_gradients():
    # (at ties |x_j - x_k| has no derivative: each path takes a subgradient of its own)
    x = torch.tensor([[2.0, 1.0, 2.0, 1.0, 3.0, 2.0, -0.0, 0.0] * 3], device=DEVICE)
    (p1, (g1,)), (p2, _) = both_paths(lambda x: ns.neural_sort(x, tau=0.5), x)
    torch.testing.assert_close(p1, p2)
    assert torch.isfinite(g1).all()


def test_other_axes_and_strides():
    x = scores(5, 4, 3, seed=1)
    assert_agree(lambda x: ns.neural_sort(x, tau=1.0, dim=0), x)
    assert_agree(lambda x: ns.soft_topk(x.transpose(0, 2), 2, tau=1.0, dim=1), x)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy, in the NaN row
def test_a_nan_row_stays_in_its_row_and_extreme_scales_stay_finite():
    x = scores(3, 20, seed=2)
    x[1, 4] = float("nan")
    with _triton.enabled(True):
        p = ns.neural_sort(x, tau=1.0)
        big = ns.neural_sort(scores(2, 20, seed=3) * 1e6, tau=1e-3)
    assert torch.isnan(p[1]).all() and torch.isfinite(p[[0, 2]]).all()
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big.sum(-1), torch.ones(2, 20, device=DEVICE))


def test_second_derivatives_take_the_torch_formulas():
    def second(use):
        x = scores(2, 12, seed=4).requires_grad_()
        tau = torch.tensor(0.8, device=DEVICE, requires_grad=True)
        with _triton.enabled(use):
            p = ns.neural_sort(x, tau=tau)
        w = torch.randn(p.shape, generator=torch.Generator().manual_seed(6)).to(DEVICE)
        gx, gt = torch.autograd.grad((p * w).sum(), (x, tau), create_graph=True)
        (gx.pow(2).sum() + gt).backward()
        return x.grad, tau.grad

    for a, b in zip(second(True), second(False), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_float64_and_long_rows_keep_the_other_paths():
    with _triton.enabled(True):
        assert not _triton.usable(torch.zeros(2, 8, dtype=torch.float64, device=DEVICE))
        assert not _triton.usable(torch.zeros(2, _triton.MAX_N + 1, device=DEVICE))
        assert _triton.usable(torch.zeros(2, _triton.MAX_N, device=DEVICE))
