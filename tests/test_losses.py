"""Tests for neuralsort.losses: limits against scipy / scikit-learn, gradients, masks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import neuralsort as ns

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is needed for the Spearman limit")
sk_metrics = pytest.importorskip(
    "sklearn.metrics", reason="scikit-learn is needed for the NDCG limit"
)

# every test here runs twice: with the native CPU operator and with the pure-PyTorch path
pytestmark = pytest.mark.usefixtures("backend")


def rand(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def randint(high, *shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g)


def ragged_mask(lengths, n, seed=0):
    """One row per length, its real elements at random positions."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(lengths), n, dtype=torch.bool)
    for b, length in enumerate(lengths):
        mask[b, torch.randperm(n, generator=g)[:length]] = True
    return mask


# --- spearman_loss ------------------------------------------------------------------------------


def test_spearman_limit_is_scipy_with_tied_targets():
    pred = rand(5, 9)
    target = randint(4, 5, 9, seed=1).double()  # many ties: averaged ranks
    loss = ns.spearman_loss(pred, target, tau=1e-4, reduction="none")
    expected = [
        1 - scipy_stats.spearmanr(p, t).statistic for p, t in zip(pred, target, strict=True)
    ]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=0, atol=1e-8)
    mean = ns.spearman_loss(pred, target, tau=1e-4)
    np.testing.assert_allclose(mean.item(), np.mean(expected), atol=1e-8)
    total = ns.spearman_loss(pred, target, tau=1e-4, reduction="sum")
    np.testing.assert_allclose(total.item(), np.sum(expected), atol=1e-8)


def test_target_ranks_average_ties_among_the_real_elements_as_scipy():
    from neuralsort.losses import _average_ranks

    g = torch.Generator().manual_seed(3)
    for trial in range(60):
        n = int(torch.randint(1, 30, (), generator=g))
        t = torch.randint(0, 5, (4, n), generator=g).double()
        t[0, : n // 2] = float("inf")  # a real +inf ties with real values, not with padding
        t[1, : n // 3] = -float("inf")
        mask = torch.rand(4, n, generator=g) > (0.3 if trial % 2 else 0.0)
        got = _average_ranks(t, mask)
        for row, keep, ranks in zip(t, mask, got, strict=True):
            if keep.any():
                expected = scipy_stats.rankdata(row[keep].numpy())
                np.testing.assert_array_equal(ranks[keep].numpy(), expected)
            assert (ranks[~keep] == 0).all()


def test_spearman_dim_and_perfect_orders():
    pred = rand(7, 3)
    loss = ns.spearman_loss(pred, pred * 2 + 1, tau=1e-4, dim=0, reduction="none")
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, torch.zeros(3, dtype=torch.float64), atol=1e-8, rtol=0)
    reverse = ns.spearman_loss(pred, -pred, tau=1e-4, dim=0, reduction="none")
    torch.testing.assert_close(reverse, torch.full((3,), 2.0, dtype=torch.float64))
    # integer targets are ranked as they are
    ints = ns.spearman_loss(pred, (pred * 10).long(), tau=1e-4, dim=0)
    assert 0 <= ints.item() < 0.2


def test_spearman_gradcheck():
    pred = rand(3, 6).requires_grad_()
    target = randint(3, 3, 6, seed=2)
    assert gradcheck(lambda p: ns.spearman_loss(p, target, tau=0.7, reduction="none"), (pred,))
    mask = ragged_mask([6, 4, 3], 6)
    assert gradcheck(lambda p: ns.spearman_loss(p, target, tau=0.7, mask=mask), (pred,))


def test_spearman_mask_equals_unpadded_rows():
    n = 8
    mask = ragged_mask([8, 5, 2, 1, 0, 6], n, seed=3)
    pred = rand(6, n, seed=4).masked_fill(~mask, float("nan")).requires_grad_()
    target = randint(5, 6, n, seed=5).double()
    loss = ns.spearman_loss(pred, target, tau=0.5, mask=mask, reduction="none")
    loss.sum().backward()
    for b in range(6):
        real = pred.detach()[b][mask[b]].clone().requires_grad_()
        if real.numel() < 2:
            assert loss[b].item() == 0.0
            assert bool((pred.grad[b] == 0).all())
            continue
        alone = ns.spearman_loss(real, target[b][mask[b]], tau=0.5)
        (g,) = torch.autograd.grad(alone, real)
        torch.testing.assert_close(loss[b], alone)
        torch.testing.assert_close(pred.grad[b][mask[b]], g)
        assert bool((pred.grad[b][~mask[b]] == 0).all())


def test_spearman_undefined_rows_are_zero_and_finite():
    pred = rand(3, 5).requires_grad_()
    target = torch.stack(
        (torch.ones(5), torch.arange(5.0), torch.arange(5.0))  # constant target: undefined
    ).double()
    with torch.no_grad():
        pred[2] = 0.3  # identical predictions: soft ranks all equal
    loss = ns.spearman_loss(pred, target, tau=1.0, reduction="none")
    assert loss[0].item() == 0.0
    np.testing.assert_allclose(loss[2].item(), 1.0)
    loss.sum().backward()
    assert bool(torch.isfinite(pred.grad).all())
    assert bool((pred.grad[0] == 0).all())
    one = ns.spearman_loss(
        torch.tensor([[1.0]], requires_grad=True), torch.tensor([[2.0]]), tau=1.0
    )
    assert one.item() == 0.0


def test_spearman_bad_arguments():
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="pred"):
        ns.spearman_loss(torch.arange(4), torch.arange(4), tau=1.0)
    with pytest.raises(ValueError, match="target.*shape"):
        ns.spearman_loss(x, torch.randn(3, 5), tau=1.0)
    with pytest.raises(TypeError, match="target"):
        ns.spearman_loss(x, [1, 2, 3, 4], tau=1.0)
    with pytest.raises(ValueError, match="reduction"):
        ns.spearman_loss(x, x, reduction="avg", tau=1.0)
    with pytest.raises(ValueError, match="tau"):
        ns.spearman_loss(x, x, tau=0.0)
    with pytest.raises(TypeError, match="mask"):
        ns.spearman_loss(x, x, mask=torch.ones(3, 4), tau=1.0)
    with pytest.raises(ValueError, match="mask"):
        ns.spearman_loss(x, x, mask=torch.ones(3, 3, dtype=torch.bool), tau=1.0)


# --- ndcg_loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [None, 1, 3, 6, 20])
def test_ndcg_limit_is_sklearn_with_tied_relevance(k):
    scores = rand(6, 10, seed=6)  # distinct scores (sklearn averages over tied scores)
    rel = randint(4, 6, 10, seed=7).double()
    rel[:, 0] = 3  # at least one relevant document per list
    loss = ns.ndcg_loss(scores, rel, k=k, tau=1e-4, gain="linear")
    expected = 1 - sk_metrics.ndcg_score(rel.numpy(), scores.numpy(), k=k)
    np.testing.assert_allclose(loss.item(), expected, atol=1e-8)
    # exp2 gains are linear gains of 2^rel - 1
    loss2 = ns.ndcg_loss(scores, rel, k=k, tau=1e-4, reduction="none")
    for b in range(6):
        exp = 1 - sk_metrics.ndcg_score([(2 ** rel[b] - 1).numpy()], [scores[b].numpy()], k=k)
        np.testing.assert_allclose(loss2[b].item(), exp, atol=1e-8)


def test_ndcg_tied_scores_average_like_sklearn():
    # tied scores give tied columns of P_hat, so the relaxation splits positions evenly between
    # them: the same average over ties as sklearn's default ignore_ties=False
    scores = torch.tensor(
        [[2.0, 1.0, 1.0, 0.0, 1.0], [0.5, 0.5, 0.5, 3.0, 0.0]], dtype=torch.float64
    )
    rel = torch.tensor([[1.0, 3.0, 0.0, 2.0, 1.0], [2.0, 0.0, 1.0, 1.0, 3.0]], dtype=torch.float64)
    for k in (2, 4, None):
        loss = ns.ndcg_loss(scores, rel, k=k, tau=1e-4, gain="linear")
        expected = 1 - sk_metrics.ndcg_score(rel.numpy(), scores.numpy(), k=k)
        np.testing.assert_allclose(loss.item(), expected, atol=1e-6)


def test_ndcg_gradcheck():
    scores = rand(3, 7, seed=8).requires_grad_()
    rel = randint(3, 3, 7, seed=9).double()
    rel[:, 1] = 2
    assert gradcheck(lambda s: ns.ndcg_loss(s, rel, k=4, tau=0.6, reduction="none"), (scores,))
    mask = ragged_mask([7, 3, 5], 7, seed=10)
    assert gradcheck(lambda s: ns.ndcg_loss(s, rel, k=4, tau=0.6, mask=mask), (scores,))

    def stochastic(s):
        g = torch.Generator().manual_seed(0)
        return ns.ndcg_loss(s, rel, k=3, tau=0.6, n_samples=2, generator=g)

    assert gradcheck(stochastic, (scores,))


def test_ndcg_mask_equals_unpadded_lists():
    n = 9
    mask = ragged_mask([9, 4, 1, 0, 6, 2], n, seed=11)
    scores = rand(6, n, seed=12).masked_fill(~mask, float("inf")).requires_grad_()
    rel = randint(4, 6, n, seed=13).double().masked_fill(~mask, float("nan"))
    loss = ns.ndcg_loss(scores, rel, k=3, tau=0.4, mask=mask, reduction="none")
    loss.sum().backward()
    assert bool(torch.isfinite(scores.grad).all())
    for b in range(6):
        real = scores.detach()[b][mask[b]].clone().requires_grad_()
        if real.numel() == 0:
            assert loss[b].item() == 0.0
            assert bool((scores.grad[b] == 0).all())
            continue
        alone = ns.ndcg_loss(real, rel[b][mask[b]], k=3, tau=0.4)
        torch.testing.assert_close(loss[b], alone)
        if alone.requires_grad:
            (g,) = torch.autograd.grad(alone, real)
            torch.testing.assert_close(scores.grad[b][mask[b]], g)
        assert bool((scores.grad[b][~mask[b]] == 0).all())


def test_ndcg_no_relevant_document_is_zero_not_nan():
    scores = rand(3, 5, seed=14).requires_grad_()
    rel = torch.zeros(3, 5, dtype=torch.float64)
    rel[1, 2] = 1.0
    loss = ns.ndcg_loss(scores, rel, k=2, reduction="none", tau=1.0)
    assert loss[0].item() == 0.0 and loss[2].item() == 0.0
    assert 0 < loss[1].item() < 1
    loss.sum().backward()
    assert bool(torch.isfinite(scores.grad).all())
    assert bool((scores.grad[0] == 0).all())
    # a batch of empty lists: zeros, and backward works
    empty = torch.zeros(2, 4, dtype=torch.bool)
    x = rand(2, 4).requires_grad_()
    out = ns.ndcg_loss(x, torch.ones(2, 4), mask=empty, tau=1.0)
    out.backward()
    assert out.item() == 0.0 and bool((x.grad == 0).all())


def test_ndcg_samples_are_stochastic_neural_sort_samples():
    scores = rand(2, 6, seed=15)
    rel = randint(4, 2, 6, seed=16).double()
    rel[:, 0] = 1
    g1 = torch.Generator().manual_seed(3)
    loss = ns.ndcg_loss(scores, rel, k=4, tau=0.5, n_samples=5, generator=g1, reduction="none")
    g2 = torch.Generator().manual_seed(3)
    p = ns.stochastic_neural_sort(scores, tau=0.5, n_samples=5, descending=True, generator=g2)[
        ..., :4, :
    ]
    gains = 2**rel - 1
    discount = 1 / np.log2(np.arange(4) + 2)
    dcg = ((p @ gains.unsqueeze(-1)).squeeze(-1) * torch.from_numpy(discount)).sum(-1)
    ideal = (torch.sort(gains, descending=True).values[:, :4] * torch.from_numpy(discount)).sum(-1)
    torch.testing.assert_close(loss, (1 - dcg / ideal).mean(0))


def test_ndcg_float32_and_batch_axes():
    scores = rand(2, 3, 8, dtype=torch.float32, seed=17)
    rel = randint(3, 2, 3, 8, seed=18)
    out = ns.ndcg_loss(scores, rel, k=5, reduction="none", tau=1.0)
    assert out.shape == (2, 3) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


def test_ndcg_bad_arguments():
    x, rel = torch.randn(2, 5), torch.ones(2, 5)
    with pytest.raises(ValueError, match="`k`"):
        ns.ndcg_loss(x, rel, k=0, tau=1.0)
    with pytest.raises(ValueError, match="gain"):
        ns.ndcg_loss(x, rel, gain="log", tau=1.0)
    with pytest.raises(ValueError, match="n_samples"):
        ns.ndcg_loss(x, rel, n_samples=-1, tau=1.0)
    with pytest.raises(ValueError, match="relevance.*non-negative"):
        ns.ndcg_loss(x, -rel, tau=1.0)
    with pytest.raises(ValueError, match="relevance.*shape"):
        ns.ndcg_loss(x, torch.ones(5), tau=1.0)
    with pytest.raises(TypeError, match="scores"):
        ns.ndcg_loss(torch.ones(2, 5, dtype=torch.long), rel, tau=1.0)
    with pytest.raises(ValueError, match="reduction"):
        ns.ndcg_loss(x, rel, reduction=None, tau=1.0)
    with pytest.raises(ValueError, match="mask"):
        ns.ndcg_loss(x, rel, mask=torch.ones(5, dtype=torch.bool), tau=1.0)


# --- topk_cross_entropy -------------------------------------------------------------------------


def test_topk_cross_entropy_is_minus_log_of_the_relaxed_indicator():
    logits = rand(4, 7, seed=19)
    target = torch.tensor([0, 3, 6, 2])
    loss = ns.topk_cross_entropy(logits, target, 3, tau=0.8, reduction="none")
    inside = ns.soft_topk_mask(logits, 3, tau=0.8).gather(-1, target[:, None]).squeeze(-1)
    torch.testing.assert_close(loss, -torch.log(inside))
    assert bool((loss >= 0).all())
    torch.testing.assert_close(ns.topk_cross_entropy(logits, target, 3, tau=0.8), loss.mean())
    torch.testing.assert_close(
        ns.topk_cross_entropy(logits, target, 3, tau=0.8, reduction="sum"), loss.sum()
    )


@pytest.mark.parametrize("k", [1, 2])
def test_topk_cross_entropy_small_tau_limit(k):
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 4.0, 1.0]], dtype=torch.float64)
    top = logits.topk(k).indices
    inside = top[:, -1]  # in the top k by a margin of 1 or more
    outside = logits.argmin(-1)
    small = ns.topk_cross_entropy(logits, inside, k, tau=0.01, reduction="none")
    large = ns.topk_cross_entropy(logits, outside, k, tau=0.01, reduction="none")
    assert bool((small < 1e-6).all())
    assert bool((large > 50).all())
    # k = 1: raising the target's logit lowers the loss, as with cross-entropy
    x = logits.clone().requires_grad_()
    ns.topk_cross_entropy(x, torch.tensor([1, 0]), 1, tau=1.0).backward()
    assert x.grad[0, 1] < 0 and x.grad[1, 0] < 0


def test_topk_cross_entropy_gradcheck_and_all_classes():
    logits = rand(3, 5, seed=20).requires_grad_()
    target = torch.tensor([4, 0, 2])
    for k in (1, 2):
        fn = lambda x, k=k: ns.topk_cross_entropy(x, target, k, tau=0.7, reduction="none")  # noqa: E731
        assert gradcheck(fn, (logits,))
    full = ns.topk_cross_entropy(logits, target, 5, tau=1.0)
    assert full.item() == 0.0


def test_topk_cross_entropy_bad_arguments():
    logits = torch.randn(3, 4)
    with pytest.raises(TypeError, match="target.*int64"):
        ns.topk_cross_entropy(logits, torch.zeros(3), 1, tau=1.0)
    with pytest.raises(ValueError, match="target.*shape"):
        ns.topk_cross_entropy(logits, torch.zeros(4, dtype=torch.long), 1, tau=1.0)
    with pytest.raises(ValueError, match="target.*class"):
        ns.topk_cross_entropy(logits, torch.tensor([0, 1, 4]), 1, tau=1.0)
    with pytest.raises(ValueError, match="`k`"):
        ns.topk_cross_entropy(logits, torch.tensor([0, 1, 2]), 5, tau=1.0)
    with pytest.raises(TypeError, match="logits"):
        ns.topk_cross_entropy(
            torch.ones(3, 4, dtype=torch.long), torch.tensor([0, 1, 2]), 1, tau=1.0
        )
    with pytest.raises(ValueError, match="reduction"):
        ns.topk_cross_entropy(logits, torch.tensor([0, 1, 2]), 1, reduction="max", tau=1.0)
