"""Tests for the differentiable kNN functions and layers."""

from __future__ import annotations

import pytest
import torch

import neuralsort as ns
from neuralsort.knn import squared_distances


@pytest.fixture(autouse=True)
def _seed():
    # the tau -> 0 limits fail when two random distances fall within ~tau of each other
    torch.manual_seed(0)


def test_squared_distances_match_cdist():
    q, x = torch.randn(5, 8, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64)
    torch.testing.assert_close(squared_distances(q, x), torch.cdist(q, x) ** 2)


def test_topk_ness_shapes_and_limit():
    q, x = torch.randn(4, 3), torch.randn(10, 3)
    t = ns.dknn_topk(q, x, 3, tau=1e-4)
    assert t.shape == (4, 10)
    nearest = torch.cdist(q, x).topk(3, largest=False).indices
    expected = torch.zeros(4, 10).scatter_(-1, nearest, 1.0)
    torch.testing.assert_close(t, expected, atol=1e-5, rtol=0)
    s = ns.dknn_topk(q, x, 3, tau=1.0, method="stochastic", n_samples=4)
    assert s.shape == (4, 4, 10)
    torch.testing.assert_close(s.sum(-1), torch.full((4, 4), 3.0))
    one = ns.dknn_topk(q[:1], x, 1, tau=1.0, method="stochastic", n_samples=1)
    assert one.shape == (1, 1, 10)


@pytest.mark.parametrize("method", ["deterministic", "stochastic"])
def test_loss_gradients_reach_embeddings(method):
    q = torch.randn(6, 4, requires_grad=True)
    x = torch.randn(9, 4, requires_grad=True)
    yq, yx = torch.randint(0, 3, (6,)), torch.randint(0, 3, (9,))
    loss = ns.dknn_loss(q, x, yq, yx, 3, tau=80.0, method=method, n_samples=3)
    assert loss.shape == () and torch.isfinite(loss)
    assert -1.0 <= loss.item() <= 0.0
    loss.backward()
    assert q.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    # one-hot labels give the same loss as class indices
    g = torch.Generator().manual_seed(0)
    a = ns.dknn_loss(q, x, yq, yx, 3, tau=5.0, method=method, n_samples=2, generator=g)
    g = torch.Generator().manual_seed(0)
    b = ns.dknn_loss(
        q,
        x,
        torch.eye(3)[yq],
        torch.eye(3)[yx],
        3,
        tau=5.0,
        method=method,
        n_samples=2,
        generator=g,
    )
    torch.testing.assert_close(a, b)


def test_loss_is_minus_one_when_neighbours_agree():
    q = torch.zeros(2, 2)
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    loss = ns.dknn_loss(q, x, torch.tensor([1, 1]), torch.tensor([1, 1, 0]), 2, tau=1e-3)
    assert loss.item() == pytest.approx(-1.0, abs=1e-5)


def test_layers():
    layer = ns.DKNN(k=2, tau=1.0, method="stochastic", n_samples=3)
    q, x = torch.randn(3, 5), torch.randn(8, 5)
    assert layer(q, x).shape == (3, 3, 8)
    assert layer.loss(q, x, torch.zeros(3, dtype=torch.long), torch.ones(8, dtype=torch.long)) == 0
    assert "stochastic" in repr(layer)
    sort = ns.NeuralSort(tau=0.5, descending=True)
    assert sort(torch.randn(2, 4)).shape == (2, 4, 4)
    assert ns.SoftTopK(2, tau=0.5)(torch.randn(2, 6)).shape == (2, 2, 6)
    with pytest.raises(ValueError, match="tau"):
        ns.NeuralSort(tau=0.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        ns.dknn_topk(torch.randn(2, 3), torch.randn(4, 3), 2, tau=1.0, method="random")
    with pytest.raises(ValueError, match="share D"):
        ns.dknn_topk(torch.randn(2, 3), torch.randn(4, 5), 2, tau=1.0)
    with pytest.raises(ValueError, match="k"):
        ns.dknn_topk(torch.randn(2, 3), torch.randn(4, 3), 5, tau=1.0)
    with pytest.raises(ValueError, match="labels"):
        ns.dknn_loss(
            torch.randn(2, 3), torch.randn(4, 3), torch.zeros(3), torch.zeros(4), 2, tau=1.0
        )


def test_mask_gives_each_query_its_candidates_alone():
    """Masked top-k-ness equals each query's run over its own candidates (values and
    gradients), and 0 at the others; the stochastic form keeps the mask in every sample."""
    q = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 9) < 0.6
    mask[:, :3] = True  # at least k = 3 candidates each
    w = torch.randn(4, 9, dtype=torch.float64)
    t = ns.dknn_topk(q, x, 3, tau=0.7, mask=mask)
    gq, gx = torch.autograd.grad((t * w).sum(), (q, x))
    want_q, want_x = torch.zeros_like(q), torch.zeros_like(x)
    for i in range(4):
        alone = ns.dknn_topk(q[i : i + 1], x[mask[i]], 3, tau=0.7)[0]
        torch.testing.assert_close(t[i, mask[i]], alone)
        assert (t[i, ~mask[i]] == 0).all()
        a, b = torch.autograd.grad((alone * w[i, mask[i]]).sum(), (q, x))
        want_q, want_x = want_q + a, want_x + b
    torch.testing.assert_close(gq, want_q)
    torch.testing.assert_close(gx, want_x)
    s = ns.dknn_topk(q, x, 3, tau=0.7, method="stochastic", n_samples=5, mask=mask)
    assert s.shape == (5, 4, 9) and (s[:, ~mask] == 0).all()
    torch.testing.assert_close(s.sum(-1), torch.full((5, 4), 3.0, dtype=torch.float64))


def test_every_image_a_query_against_the_others():
    """``mask=~eye``: the loss of a batch against itself equals the mean of each image's loss
    against the others alone, and finite differences agree with its gradient."""
    e = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 0, 1, 2, 2, 0])
    others = ~torch.eye(7, dtype=torch.bool)
    loss = ns.dknn_loss(e, e, y, y, 2, tau=0.5, mask=others)
    each = [
        ns.dknn_loss(e[i : i + 1], e[others[i]], y[i : i + 1], y[others[i]], 2, tau=0.5)
        for i in range(7)
    ]
    torch.testing.assert_close(loss, torch.stack(each).mean())
    assert torch.autograd.gradcheck(
        lambda z: ns.dknn_loss(z, z, y, y, 2, tau=0.5, mask=others), (e,)
    )
    layer = ns.DKNN(k=2, tau=0.5)
    torch.testing.assert_close(layer.loss(e, e, y, y, mask=others), loss)
    assert (layer(e, e, mask=others).diagonal() == 0).all()


def test_bad_masks():
    q, x = torch.randn(2, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="at least k = 3 candidates in `mask`; one has 2"):
        ns.dknn_topk(q, x, 3, tau=1.0, mask=torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool())
    with pytest.raises(ValueError, match=r"shape \(2, 4\): one row per query.*got \(4, 2\)"):
        ns.dknn_topk(q, x, 2, tau=1.0, mask=torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        ns.dknn_loss(q, x, torch.zeros(2), torch.zeros(4), 2, tau=1.0, mask=torch.ones(2, 4))
