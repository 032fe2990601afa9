"""torch.func: ``grad``, ``jacrev``, ``jvp`` (forward-mode AD), ``vmap`` and a Hessian-vector
product on every operator and loss, on both backends, against ``torch.autograd.functional`` and
the batched call. Under a transform the operators run as plain differentiable PyTorch ops."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.func import grad, jacrev, jvp, vmap

import neuralsort as ns

pytestmark = pytest.mark.usefixtures("backend")

N = 6
TARGET = torch.arange(N, dtype=torch.float64).flip(0)


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# f(x) for x of shape (N,) float64; each returns a tensor
OPS = {
    "neural_sort": lambda x: ns.neural_sort(x, tau=0.5),
    "neural_sort_descending_hard": lambda x: ns.neural_sort(x, tau=0.5, descending=True, hard=True),
    "soft_sort": lambda x: ns.soft_sort(x, tau=0.5, descending=True),
    "soft_sort_tol": lambda x: ns.soft_sort(x, tau=0.5, tol=1e-6),
    "soft_rank": lambda x: ns.soft_rank(x, tau=0.5),
    "soft_topk": lambda x: ns.soft_topk(x, 2, tau=0.5),
    "soft_topk_smallest": lambda x: ns.soft_topk(x, 3, tau=0.5, largest=False),
    "soft_topk_mask": lambda x: ns.soft_topk_mask(x, 2, tau=0.3),
    "soft_topk_mask_hard": lambda x: ns.soft_topk_mask(x, 2, tau=0.3, hard=True),
    "soft_quantile": lambda x: ns.soft_quantile(x, [0.25, 0.5], tau=0.5),
    "softsort": lambda x: ns.softsort(x, tau=0.5),
    "sinkhorn": lambda x: ns.sinkhorn(torch.outer(x, x), n_iters=5, tau=1.0),
    "spearman_loss": lambda x: ns.spearman_loss(x[None], TARGET[None], tau=0.5),
    "ndcg_loss": lambda x: ns.ndcg_loss(x[None], TARGET[None], tau=0.5, k=3),
    "topk_cross_entropy": lambda x: ns.topk_cross_entropy(x[None], torch.tensor([1]), 2, tau=0.5),
    "dknn_loss": lambda x: ns.dknn_loss(
        x.reshape(2, 3),
        x.flip(0).reshape(2, 3),
        torch.tensor([0, 1]),
        torch.tensor([1, 0]),
        1,
        tau=1.0,
    ),
    "module_neural_sort": lambda x: ns.NeuralSort(tau=0.5)(x),
    "plackett_luce_log_prob": lambda x: ns.PlackettLuce(x).log_prob(
        torch.tensor([2, 0, 1, 5, 3, 4])
    ),
    "plackett_luce_rsample": lambda x: ns.PlackettLuce(x, tau=0.5).rsample(generator=seeded()),
    "stochastic_neural_sort": lambda x: ns.stochastic_neural_sort(
        x, tau=0.5, n_samples=2, generator=seeded()
    ),
}


# under a transform tol= is not applied (the exact rows are built, within tol of the eager call)
CLOSE = {"soft_sort_tol": {"atol": 1e-5, "rtol": 1e-5}}


def point(seed: int = 0) -> torch.Tensor:
    return torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("op", sorted(OPS))
def test_jacrev_and_jvp_match_autograd_functional(op):
    f, x = OPS[op], point()
    jacobian = torch.autograd.functional.jacobian(f, x)
    torch.testing.assert_close(jacrev(f)(x), jacobian, **CLOSE.get(op, {}))
    # forward mode against the reverse-mode Jacobian (autograd.functional.jvp's double-backward
    # trick gives NaN through logcumsumexp, which PlackettLuce.log_prob uses)
    v = point(1)
    _, tangent = jvp(f, (x,), (v,))
    torch.testing.assert_close(tangent, jacobian @ v, **CLOSE.get(op, {}))


@pytest.mark.parametrize("op", sorted(OPS))
def test_grad_matches_autograd(op):
    f, x = OPS[op], point(2)
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(f(leaf).sum(), leaf)
    torch.testing.assert_close(grad(lambda x: f(x).sum())(x), expected, **CLOSE.get(op, {}))


@pytest.mark.parametrize(
    "op", sorted(o for o in OPS if "rsample" not in o and "stochastic" not in o)
)
def test_vmap_matches_the_batched_call(op):
    f = OPS[op]
    xs = torch.randn(4, N, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    close = CLOSE.get(op, {})
    with warnings.catch_warnings():
        # every op has a batching rule: no slow per-sample fallback loop (nor its warning)
        warnings.filterwarnings("error", message=".*batching rule.*")
        batched = vmap(f)(xs)
        # per-sample gradients, the common use of vmap(grad(...))
        per_sample = vmap(grad(lambda x: f(x).sum()))(xs)
    torch.testing.assert_close(batched, torch.stack([f(x) for x in xs]), **close)
    expected = []
    for x in xs:
        leaf = x.clone().requires_grad_()
        expected.append(torch.autograd.grad(f(leaf).sum(), leaf)[0])
    torch.testing.assert_close(per_sample, torch.stack(expected), **close)


def test_hessian_vector_product_and_tau_gradient():
    def f(x, tau):
        return (
            ns.spearman_loss(x[None], TARGET[None], tau=tau)
            + ns.soft_sort(x, tau=tau).square().sum()
        )

    x, v, tau = point(4), point(5), torch.tensor(0.7, dtype=torch.float64)
    _, hvp = jvp(lambda x: grad(f)(x, tau), (x,), (v,))
    expected = torch.autograd.functional.hvp(lambda x: f(x, tau), x, v)[1]
    torch.testing.assert_close(hvp, expected)
    leaf = tau.clone().requires_grad_()
    (g_tau,) = torch.autograd.grad(f(x, leaf), leaf)
    torch.testing.assert_close(grad(f, argnums=1)(x, tau), g_tau)


def test_the_eager_path_is_unchanged_outside_transforms():
    # outside any transform the fused operators run (the native one where enabled)
    x = point(6).float().requires_grad_()
    p = ns.neural_sort(x, tau=0.5)
    assert p.grad_fn is not None and "Softmax" not in type(p.grad_fn).__name__


def test_mask_under_vmap_unbatched_works_and_batched_is_refused():
    mask = torch.tensor([True, True, True, False, False, True])
    xs = torch.randn(3, N, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    out = vmap(lambda x: ns.soft_rank(x, tau=0.5, mask=mask))(xs)
    torch.testing.assert_close(out, torch.stack([ns.soft_rank(x, tau=0.5, mask=mask) for x in xs]))
    masks = mask.expand(3, N)
    with pytest.raises(ValueError, match="batched by torch.func.vmap"):
        vmap(lambda x, m: ns.soft_rank(x, tau=0.5, mask=m))(xs, masks)
