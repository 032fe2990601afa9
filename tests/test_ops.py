"""Tests for neuralsort.ops: reference values, gradients, properties, limits and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import neuralsort as ns
from reference import neural_sort_published_ref, neural_sort_ref

TAUS = [0.1, 1.0, 7.0]

# every test here runs twice: with the native CPU operator and with the pure-PyTorch path
pytestmark = pytest.mark.usefixtures("backend")


def rand(*shape, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).to(device)


# --- reference values ---------------------------------------------------------------------------


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_neural_sort_matches_reference(n, tau, descending, device):
    s = rand(3, n, device=device) * 3
    out = ns.neural_sort(s, tau=tau, descending=descending)
    for b in range(3):
        ref = neural_sort_ref(s[b].cpu().numpy(), tau, descending)
        np.testing.assert_allclose(out[b].cpu().numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tau", [0.5, 16.0])
def test_matches_the_published_matrix_form(tau):
    s = rand(4, 9) * 5
    out = ns.neural_sort(s, tau=tau, descending=True)
    for b in range(4):
        ref = neural_sort_published_ref(s[b].numpy(), tau)
        np.testing.assert_allclose(out[b].numpy(), ref, rtol=1e-9, atol=1e-12)


def test_paper_example_descending():
    # PAPER: s = [9, 10, 5, 2] sorts (descending) to indices [2, 1, 3, 4] (1-based).
    s = torch.tensor([9.0, 10.0, 5.0, 2.0])
    assert ns.neural_sort(s, tau=1e-3, descending=True).argmax(-1).tolist() == [1, 0, 2, 3]
    assert ns.neural_sort(s, tau=1e-3).argmax(-1).tolist() == [3, 2, 0, 1]


def test_known_value_n2():
    # n = 2, s = (0, 1), tau = 1: row 1 (largest) = softmax((s - 1) ) = softmax(-1, 0)
    p = ns.neural_sort(torch.tensor([0.0, 1.0], dtype=torch.float64), tau=1.0, descending=True)
    e = np.exp(-1.0)
    np.testing.assert_allclose(p[0].numpy(), [e / (1 + e), 1 / (1 + e)], rtol=1e-12)
    np.testing.assert_allclose(p[1].numpy(), [1 / (1 + e), e / (1 + e)], rtol=1e-12)


# --- gradients ----------------------------------------------------------------------------------


@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("hard", [False, True])
def test_gradcheck_neural_sort(descending, hard, device):
    x = rand(2, 3, 6, device=device).requires_grad_()
    fn = lambda x: ns.neural_sort(x, tau=0.8, dim=1, descending=descending, hard=hard)  # noqa: E731
    assert gradcheck(fn, (x,)) if not hard else True
    if hard:
        # straight-through: the gradient is the relaxed matrix's gradient
        w = rand(2, 6, 3, 3, device=device, seed=1)
        (g_hard,) = torch.autograd.grad((fn(x) * w).sum(), x)
        soft = lambda x: ns.neural_sort(x, tau=0.8, dim=1, descending=descending)  # noqa: E731
        (g_soft,) = torch.autograd.grad((soft(x) * w).sum(), x)
        torch.testing.assert_close(g_hard, g_soft)


def test_gradgradcheck_neural_sort():
    x = rand(2, 5).requires_grad_()
    assert gradgradcheck(lambda x: ns.neural_sort(x, tau=0.5, descending=True), (x,))


def test_gradgradcheck_with_a_learnt_tau():
    # the gradient of tau depends on the scores directly, not only through P
    x = rand(3, 6).requires_grad_()
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert gradgradcheck(lambda x, t: ns.neural_sort(x, tau=t), (x, tau))
    assert gradgradcheck(lambda x, t: ns.soft_topk(x, 2, tau=t), (x, tau))


def test_gradcheck_tau_tensor():
    x = rand(3, 5).requires_grad_()
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, t: ns.neural_sort(x, tau=t), (x, tau))
    assert gradcheck(lambda x, t: ns.soft_topk(x, 2, tau=t), (x, tau))


@pytest.mark.parametrize("descending", [True, False])
def test_gradcheck_soft_sort_rank(descending, device):
    x = rand(4, 5, device=device).requires_grad_()
    assert gradcheck(lambda x: ns.soft_sort(x, tau=0.5, dim=0, descending=descending), (x,))
    assert gradcheck(lambda x: ns.soft_rank(x, tau=0.5, dim=-1, descending=descending), (x,))


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("hard", [False, True])
def test_gradcheck_soft_topk(largest, hard, device):
    x = rand(3, 7, device=device).requires_grad_()
    fn = lambda x: ns.soft_topk(x, 3, tau=0.6, largest=largest, hard=hard)  # noqa: E731
    if hard:
        w = rand(3, 3, 7, device=device, seed=2)
        (g,) = torch.autograd.grad((fn(x) * w).sum(), x)
        soft = lambda x: ns.soft_topk(x, 3, tau=0.6, largest=largest)  # noqa: E731
        (g_soft,) = torch.autograd.grad((soft(x) * w).sum(), x)
        torch.testing.assert_close(g, g_soft)
    else:
        assert gradcheck(fn, (x,))


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 1.0, [0.25, 0.5, 0.9]])
def test_gradcheck_soft_quantile(q, device):
    x = rand(3, 6, device=device).requires_grad_()
    assert gradcheck(lambda x: ns.soft_quantile(x, q, tau=0.5), (x,))


def test_gradcheck_stochastic_neural_sort():
    x = rand(2, 4).requires_grad_()

    def fn(x):
        g = torch.Generator().manual_seed(3)
        return ns.stochastic_neural_sort(x, tau=0.5, n_samples=2, generator=g)

    assert gradcheck(fn, (x,))


def test_finite_difference_directional_derivative():
    """Autograd's directional derivative equals a central finite difference (float64)."""
    x = rand(4, 9)
    v = rand(4, 9, seed=5)
    w = rand(4, 9, 9, seed=6)
    f = lambda x: (ns.neural_sort(x, tau=0.9) * w).sum()  # noqa: E731
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(xg), xg)
    eps = 1e-6
    fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
    torch.testing.assert_close((g * v).sum(), fd, rtol=1e-6, atol=1e-8)


# --- properties ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", TAUS)
def test_rows_sum_to_one_and_unimodal(tau, device):
    s = rand(8, 12, device=device)
    p = ns.neural_sort(s, tau=tau, descending=True)
    torch.testing.assert_close(p.sum(-1), torch.ones(8, 12, dtype=p.dtype, device=device))
    assert bool((p > 0).all() | (tau < 0.2))
    # unimodal: the row argmaxes are distinct and equal the (stable) sorting permutation
    assert torch.equal(p.argmax(-1), torch.sort(s, descending=True, stable=True).indices)
    q = ns.neural_sort(s, tau=tau)
    assert torch.equal(q.argmax(-1), torch.sort(s, stable=True).indices)


def test_hard_is_exact_permutation_with_ties_earlier_first():
    s = torch.tensor([[1.0, 3.0, 1.0, 3.0, 2.0]])
    h = ns.neural_sort(s, tau=1.0, descending=True, hard=True)
    assert torch.equal(h.argmax(-1), torch.tensor([[1, 3, 4, 0, 2]]))
    assert torch.equal(h, ns.permutation_matrix(torch.tensor([[1, 3, 4, 0, 2]])))
    h_asc = ns.neural_sort(s, tau=1.0, hard=True)
    assert torch.equal(h_asc.argmax(-1), torch.tensor([[0, 2, 4, 1, 3]]))
    # tied elements get identical columns, so the tied rows' argmaxes coincide: hard must
    # break the tie explicitly
    p = ns.neural_sort(s, tau=1.0, descending=True)
    torch.testing.assert_close(p[0, :, 1], p[0, :, 3])
    assert p[0, 0].argmax() == p[0, 1].argmax()
    t = ns.soft_topk(s, 2, tau=1.0, hard=True)
    assert torch.equal(t.argmax(-1), torch.tensor([[1, 3]]))


@pytest.mark.parametrize("descending", [True, False])
def test_limit_tau_to_zero_is_torch_sort(descending, device):
    s = rand(5, 10, device=device, dtype=torch.float32)
    sorted_ = torch.sort(s, descending=descending).values
    np.testing.assert_allclose(
        ns.soft_sort(s, tau=1e-4, descending=descending).cpu(), sorted_.cpu(), atol=1e-5
    )
    p = ns.neural_sort(s, tau=1e-4, descending=descending)
    hard = ns.permutation_matrix(torch.sort(s, descending=descending).indices)
    torch.testing.assert_close(p, hard, atol=1e-5, rtol=0)
    ranks = ns.soft_rank(s, tau=1e-4, descending=descending)
    expected = torch.empty_like(s).scatter_(
        -1,
        torch.sort(s, descending=descending).indices,
        torch.arange(1, 11, dtype=s.dtype, device=device).expand(5, 10),
    )
    torch.testing.assert_close(ranks, expected, atol=1e-4, rtol=0)


def test_error_shrinks_as_tau_shrinks():
    s = rand(4, 20)
    target = torch.sort(s).values
    errs = [(ns.soft_sort(s, tau=t) - target).abs().max().item() for t in (1.0, 0.1, 0.01)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("k", [1, 3, 9])
@pytest.mark.parametrize("largest", [True, False])
def test_soft_topk_equals_first_rows(k, largest, device):
    s = rand(2, 3, 9, device=device)
    full = ns.neural_sort(s, tau=0.7, descending=largest)
    torch.testing.assert_close(ns.soft_topk(s, k, tau=0.7, largest=largest), full[..., :k, :])
    top = ns.soft_topk(s, k, tau=1e-4, largest=largest).sum(-2)
    idx = torch.topk(s, k, largest=largest).indices
    expected = torch.zeros_like(s).scatter_(-1, idx, 1.0)
    torch.testing.assert_close(top, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.7, 1.0])
def test_soft_quantile_limit_is_torch_quantile(q):
    x = rand(6, 11)
    torch.testing.assert_close(ns.soft_quantile(x, q, tau=1e-5), torch.quantile(x, q, dim=-1))
    qs = torch.tensor([0.1, q])
    torch.testing.assert_close(
        ns.soft_quantile(x, qs, tau=1e-5, dim=0), torch.quantile(x, qs.double(), dim=0)
    )


def test_median_row_is_selector_row():
    x = rand(3, 7)
    p = ns.neural_sort(x, tau=0.5)
    torch.testing.assert_close(ns.soft_quantile(x, 0.5, tau=0.5), (p[:, 3, :] * x).sum(-1))


def test_any_rank_and_dim():
    s = rand(2, 3, 4, 5)
    for dim in range(4):
        p = ns.neural_sort(s, tau=0.5, dim=dim)
        n = s.shape[dim]
        batch = [d for i, d in enumerate(s.shape) if i != dim]
        assert p.shape == (*batch, n, n)
        moved = s.movedim(dim, -1)
        torch.testing.assert_close(p, ns.neural_sort(moved, tau=0.5))
        assert ns.soft_sort(s, tau=0.5, dim=dim).shape == s.shape
        assert ns.soft_rank(s, tau=0.5, dim=dim).shape == s.shape
        assert ns.soft_topk(s, 2, tau=0.5, dim=dim).shape == (*batch, 2, n)
        assert ns.soft_quantile(s, 0.5, tau=0.5, dim=dim).shape == tuple(batch)
    assert ns.neural_sort(torch.randn(7), tau=1.0).shape == (7, 7)


def test_sort_convention_p_at_x_sorts_x():
    x = rand(4, 6)
    p = ns.neural_sort(x, tau=1e-4, hard=True)
    torch.testing.assert_close(p @ x.unsqueeze(-1), torch.sort(x).values.unsqueeze(-1))


def test_soft_rank_is_expected_position_in_bounds():
    x = rand(3, 8)
    r = ns.soft_rank(x, tau=2.0)
    p = np.stack([neural_sort_ref(row.numpy(), 2.0, descending=False) for row in x])
    pos = np.arange(1, 9)[None, :, None]
    expected = (pos * p).sum(1) / p.sum(1)
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-10)
    assert bool((r >= 1 - 1e-9).all() & (r <= 8 + 1e-9).all())


def test_shift_invariance():
    x = rand(3, 6)
    torch.testing.assert_close(ns.neural_sort(x + 1e3, tau=0.5), ns.neural_sort(x, tau=0.5))


def test_stochastic_shapes_and_independent_noise():
    x = torch.zeros(3, 5)
    g = torch.Generator().manual_seed(0)
    out = ns.stochastic_neural_sort(x, tau=0.1, n_samples=4, generator=g)
    assert out.shape == (4, 3, 5, 5)
    # same scores everywhere: different samples and batch rows must see different noise
    perms = out.argmax(-1).reshape(12, 5)
    assert len({tuple(p.tolist()) for p in perms}) > 6
    one = ns.stochastic_neural_sort(torch.zeros(1, 5), tau=1.0, n_samples=1)
    assert one.shape == (1, 1, 5, 5)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    torch.testing.assert_close(
        ns.stochastic_neural_sort(x, tau=0.5, n_samples=2, generator=g1),
        ns.stochastic_neural_sort(x, tau=0.5, n_samples=2, generator=g2),
    )


def test_stochastic_hard_samples_follow_plackett_luce_mode():
    logits = torch.tensor([5.0, 0.0, -5.0])
    out = ns.stochastic_neural_sort(logits, tau=0.1, n_samples=200, descending=True, hard=True)
    first = out[:, 0, :].argmax(-1)
    assert (first == 0).float().mean() > 0.95


# --- numerics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale,tau", [(1e6, 1e-3), (1.0, 1e-3), (1e6, 1e3), (1e-6, 1.0)])
def test_finite_for_extreme_scales(dtype, scale, tau, device):
    if dtype == torch.float16:
        scale = min(scale, 1e4)  # float16 overflows past 65504
    s = (rand(4, 33, device=device) * scale).to(dtype)
    outs = [
        ns.neural_sort(s, tau=tau),
        ns.soft_sort(s, tau=tau),
        ns.soft_rank(s, tau=tau),
        ns.soft_topk(s, 9, tau=tau),
        ns.soft_quantile(s, 0.5, tau=tau),
        ns.softsort(s, tau=tau),
    ]
    for o in outs:
        assert o.dtype == dtype
        assert bool(torch.isfinite(o).all())
    p = outs[0].float()
    torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)), atol=2e-2, rtol=0)


def test_large_scores_keep_the_right_order():
    s = torch.tensor([1e6, 1e6 + 1, 1e6 - 1, 1e6 + 0.5])
    assert ns.neural_sort(s, tau=1e-3, descending=True).argmax(-1).tolist() == [1, 3, 0, 2]


def test_half_precision_grad_flows():
    s = rand(2, 9, dtype=torch.bfloat16).requires_grad_()
    ns.soft_sort(s, tau=0.5).sum().backward()
    assert s.grad is not None and s.grad.dtype == torch.bfloat16
    assert bool(torch.isfinite(s.grad.float()).all())


def test_nan_row_does_not_leak():
    s = rand(3, 6)
    s_nan = s.clone()
    s_nan[1, 2] = float("nan")
    for fn in (
        lambda x: ns.neural_sort(x, tau=0.5),
        lambda x: ns.soft_topk(x, 2, tau=0.5),
        lambda x: ns.soft_quantile(x, 0.5, tau=0.5),
    ):
        a, b = fn(s), fn(s_nan)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[2], b[2])


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau"):
        ns.neural_sort(torch.randn(4), tau=tau)
    with pytest.raises(ValueError, match="tau"):
        ns.soft_topk(torch.randn(4), 2, tau=tau)


def test_bad_inputs_name_the_argument():
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="scores.*floating"):
        ns.neural_sort(torch.arange(4), tau=1.0)
    with pytest.raises(TypeError, match="values"):
        ns.soft_sort([1.0, 2.0], tau=1.0)
    with pytest.raises(ValueError, match="dim"):
        ns.neural_sort(x, tau=1.0, dim=2)
    with pytest.raises(ValueError, match="empty"):
        ns.soft_sort(torch.randn(3, 0), tau=1.0)
    with pytest.raises(ValueError, match="0-d"):
        ns.soft_rank(torch.tensor(1.0), tau=1.0)
    for k in (0, 5, -1, 2.0):
        with pytest.raises(ValueError, match=r"`k`.*\(3, 4\)"):
            ns.soft_topk(x, k, tau=1.0)
    for q in (-0.1, 1.5, [0.5, 2.0]):
        with pytest.raises(ValueError, match="q"):
            ns.soft_quantile(x, q, tau=1.0)
    with pytest.raises(ValueError, match="n_samples"):
        ns.stochastic_neural_sort(x, tau=1.0, n_samples=0)
    with pytest.raises(TypeError, match="tau"):
        ns.neural_sort(x, tau="1.0")
    with pytest.raises(ValueError, match="tau"):
        ns.neural_sort(x, tau=torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="indices"):
        ns.permutation_matrix(torch.randn(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_torch_path_orders_ties_like_a_stable_sort(dtype):
    # float32 rows are sorted as unique 64-bit keys built from the value's bits: negative
    # numbers, -0.0 == 0.0, infinities and a strided (non-contiguous) input must all come out
    # in the order of a stable sort
    from neuralsort._rows import ascending_order  # noqa: PLC0415

    values = [3.0, -0.0, 0.0, -2.5, float("inf"), -2.5, 0.0, float("-inf"), 1e-30, -1e-30, 3.0]
    g = torch.Generator().manual_seed(0)
    x = torch.tensor(values, dtype=dtype)[torch.randint(0, len(values), (4, 300), generator=g)]
    for rows in (x, x.t().contiguous().t()):  # contiguous, and the same values strided
        expected = torch.sort(rows, dim=-1, stable=True).indices
        assert torch.equal(ascending_order(rows), expected)


# --- soft_topk_mask -----------------------------------------------------------------------------


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_soft_topk_mask_is_capped_column_sums_of_soft_topk(k, largest):
    s = rand(2, 8, 5)
    out = ns.soft_topk_mask(s, k, tau=0.7, dim=1, largest=largest)
    assert out.shape == s.shape
    if k < 8:
        sums = ns.soft_topk(s, k, tau=0.7, dim=1, largest=largest).sum(-2).movedim(-1, 1)
        uncapped = (sums <= 1).all(dim=1, keepdim=True).expand_as(sums)  # rows with no excess
        assert bool(uncapped.any())
        torch.testing.assert_close(out[uncapped], sums[uncapped])
    else:  # every element is selected: exactly 1
        assert bool((out == 1).all())
    torch.testing.assert_close(out.sum(1), torch.full((2, 5), float(k), dtype=s.dtype))
    assert bool((out >= 0).all()) and bool((out <= 1).all())
    limit = ns.soft_topk_mask(s, k, tau=1e-4, dim=1, largest=largest)
    idx = torch.topk(s, k, dim=1, largest=largest).indices
    torch.testing.assert_close(limit, torch.zeros_like(s).scatter_(1, idx, 1.0), atol=1e-6, rtol=0)


def test_soft_topk_mask_hard_and_gradcheck():
    x = rand(3, 7).requires_grad_()
    assert gradcheck(lambda x: ns.soft_topk_mask(x, 3, tau=0.6), (x,))
    s = torch.tensor([[1.0, 3.0, 1.0, 3.0, 2.0]])
    assert ns.soft_topk_mask(s, 2, tau=1.0, hard=True).tolist() == [[0, 1, 0, 1, 0]]
    assert ns.soft_topk_mask(s, 1, tau=1.0, hard=True, largest=False).tolist() == [[1, 0, 0, 0, 0]]
    w = rand(3, 7, seed=3)
    (g_hard,) = torch.autograd.grad((ns.soft_topk_mask(x, 3, tau=0.6, hard=True) * w).sum(), x)
    (g_soft,) = torch.autograd.grad((ns.soft_topk_mask(x, 3, tau=0.6) * w).sum(), x)
    torch.testing.assert_close(g_hard, g_soft)
    with pytest.raises(ValueError, match=r"soft_topk_mask: `k`"):
        ns.soft_topk_mask(x, 8, tau=1.0)


# --- masks: ragged lists ------------------------------------------------------------------------


def _ragged(lengths, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(lengths), n, dtype=torch.bool)
    for b, length in enumerate(lengths):
        mask[b, torch.randperm(n, generator=g)[:length]] = True
    return mask


def _cols(piece, idx, n):
    out = piece.new_zeros((*piece.shape[:-1], n))
    out[..., idx] = piece
    return out


def _rows(piece, size):
    out = piece.new_zeros((size, *piece.shape[1:]))
    out[: piece.shape[0]] = piece
    return out


K, QS = 3, [0.2, 0.5, 1.0]
# (masked call, the same operator on one row's real elements alone placed as the masked one is)
MASKED_OPS = {
    "neural_sort": (
        lambda x, m: ns.neural_sort(x, tau=0.7, descending=True, mask=m),
        lambda r, idx, n: _rows(_cols(ns.neural_sort(r, tau=0.7, descending=True), idx, n), n),
    ),
    "neural_sort_hard": (
        lambda x, m: ns.neural_sort(x, tau=0.7, hard=True, mask=m),
        lambda r, idx, n: _rows(_cols(ns.neural_sort(r, tau=0.7, hard=True), idx, n), n),
    ),
    "soft_sort": (
        lambda x, m: ns.soft_sort(x, tau=0.7, mask=m),
        lambda r, idx, n: _rows(ns.soft_sort(r, tau=0.7), n),
    ),
    "soft_rank": (
        lambda x, m: ns.soft_rank(x, tau=0.7, descending=True, mask=m),
        lambda r, idx, n: _cols(ns.soft_rank(r, tau=0.7, descending=True), idx, n),
    ),
    "soft_topk": (
        lambda x, m: ns.soft_topk(x, K, tau=0.7, mask=m),
        lambda r, idx, n: _rows(_cols(ns.soft_topk(r, min(K, len(r)), tau=0.7), idx, n), K),
    ),
    "soft_topk_smallest_hard": (
        lambda x, m: ns.soft_topk(x, K, tau=0.7, largest=False, hard=True, mask=m),
        lambda r, idx, n: _rows(
            _cols(ns.soft_topk(r, min(K, len(r)), tau=0.7, largest=False, hard=True), idx, n), K
        ),
    ),
    "soft_topk_mask": (
        lambda x, m: ns.soft_topk_mask(x, K, tau=0.7, mask=m),
        lambda r, idx, n: _cols(ns.soft_topk_mask(r, min(K, len(r)), tau=0.7), idx, n),
    ),
    "soft_quantile": (
        lambda x, m: ns.soft_quantile(x, 0.3, tau=0.7, mask=m),
        lambda r, idx, n: ns.soft_quantile(r, 0.3, tau=0.7),
    ),
    "soft_quantiles": (
        lambda x, m: ns.soft_quantile(x, QS, tau=0.7, mask=m).movedim(0, -1),
        lambda r, idx, n: ns.soft_quantile(r, QS, tau=0.7),
    ),
}


@pytest.mark.parametrize("name", list(MASKED_OPS))
def test_mask_equals_the_operator_on_the_real_elements(name):
    masked_fn, alone_fn = MASKED_OPS[name]
    n = 7
    mask = _ragged([7, 3, 0, 1, 5, 3, 2], n, seed=1)
    # padding holds garbage: it must not reach values or gradients
    x = rand(7, n, seed=2).masked_fill(~mask, float("nan")).requires_grad_()
    out = masked_fn(x, mask)
    w = rand(*out.shape, seed=3)
    (grad,) = torch.autograd.grad((out * w).sum(), x)
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(grad).all())
    for b in range(7):
        idx = mask[b].nonzero().squeeze(1)
        real = x.detach()[b, idx].clone().requires_grad_()
        if real.numel() == 0:
            assert bool((out[b] == 0).all()) and bool((grad[b] == 0).all())
            continue
        expected = alone_fn(real, idx, n)
        torch.testing.assert_close(out[b], expected)
        (g,) = torch.autograd.grad((expected * w[b]).sum(), real)
        torch.testing.assert_close(grad[b, idx], g)
        assert bool((grad[b][~mask[b]] == 0).all())


def test_mask_other_dim_gradcheck_and_all_true():
    mask = _ragged([4, 2, 5], 5, seed=4).t()  # ranked along dim 0
    x = rand(5, 3, seed=5).requires_grad_()
    assert gradcheck(lambda x: ns.soft_rank(x, tau=0.5, dim=0, mask=mask), (x,))
    assert gradcheck(lambda x: ns.neural_sort(x, tau=0.5, dim=0, mask=mask), (x,))
    assert gradcheck(lambda x: ns.soft_quantile(x, [0.5, 0.9], tau=0.5, dim=0, mask=mask), (x,))
    sorted_ = ns.soft_sort(x, tau=1e-4, dim=0, mask=mask)
    for b in range(3):
        m = int(mask[:, b].sum())
        torch.testing.assert_close(sorted_[:m, b], torch.sort(x[:, b][mask[:, b]]).values)
        assert bool((sorted_[m:, b] == 0).all())
    full = torch.ones(5, 3, dtype=torch.bool)
    torch.testing.assert_close(
        ns.neural_sort(x, tau=0.5, dim=0, mask=full), ns.neural_sort(x, tau=0.5, dim=0)
    )


def test_mask_stochastic_neural_sort_is_neural_sort_of_the_perturbed_scores():
    mask = _ragged([6, 2, 0, 4], 6, seed=6)
    x = rand(4, 6, seed=7).requires_grad_()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    out = ns.stochastic_neural_sort(x, tau=0.5, n_samples=3, mask=mask, generator=g1)
    noise = ns.sample_gumbel((3, 4, 6), dtype=x.dtype, generator=g2)
    expected = ns.neural_sort(x + noise, tau=0.5, mask=mask.expand(3, 4, 6))
    torch.testing.assert_close(out, expected)
    assert out.shape == (3, 4, 6, 6)
    assert bool((out[:, 2] == 0).all())
    (grad,) = torch.autograd.grad((out * rand(*out.shape, seed=8)).sum(), x)
    assert bool((grad[~mask] == 0).all()) and bool(torch.isfinite(grad).all())


def test_mask_only_empty_rows():
    x = rand(2, 4).requires_grad_()
    empty = torch.zeros(2, 4, dtype=torch.bool)
    outs = [
        ns.neural_sort(x, tau=1.0, mask=empty),
        ns.soft_sort(x, tau=1.0, mask=empty),
        ns.soft_rank(x, tau=1.0, mask=empty),
        ns.soft_topk(x, 2, tau=1.0, mask=empty),
        ns.soft_topk_mask(x, 2, tau=1.0, mask=empty),
        ns.soft_quantile(x, 0.5, tau=1.0, mask=empty),
    ]
    for o in outs:
        assert bool((o == 0).all())
    sum(o.sum() for o in outs).backward()
    assert bool((x.grad == 0).all())


def test_bad_mask():
    x = torch.randn(3, 4)
    for fn in (
        lambda m: ns.neural_sort(x, mask=m, tau=1.0),
        lambda m: ns.soft_sort(x, mask=m, tau=1.0),
        lambda m: ns.soft_rank(x, mask=m, tau=1.0),
        lambda m: ns.soft_topk(x, 2, mask=m, tau=1.0),
        lambda m: ns.soft_topk_mask(x, 2, mask=m, tau=1.0),
        lambda m: ns.soft_quantile(x, 0.5, mask=m, tau=1.0),
        lambda m: ns.stochastic_neural_sort(x, mask=m, tau=1.0),
    ):
        with pytest.raises(ValueError, match=r"`mask` must have the shape .*\(3, 4\)"):
            fn(torch.ones(4, dtype=torch.bool))
        with pytest.raises(TypeError, match="`mask` must be a bool tensor"):
            fn(torch.ones(3, 4))
        with pytest.raises(TypeError, match="`mask` must be a bool torch.Tensor"):
            fn([[True] * 4] * 3)
