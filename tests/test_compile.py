"""torch.compile(fullgraph=True) of every public operator, in a fresh process each (so the
native operator is loaded while dynamo traces), on the native and the pure-PyTorch path:
forward values and gradients match eager mode."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

HAVE_COMPILER = any(shutil.which(c) for c in (os.environ.get("CXX") or "c++", "g++", "clang++"))

# Runs in a fresh interpreter. Random operators take no generator: dynamo cannot pass a
# torch.Generator into a graph (not even to torch.randn), so eager and compiled runs draw from
# the global generator after the same seed (inductor's own RNG is switched off for that).
CHECK = r"""
import sys, torch, neuralsort as ns
from neuralsort import _native
torch._inductor.config.fallback_random = True
native = sys.argv[1] == "native"
assert not _native._state["tried"], "the operator must not be loaded before compiling"


def everything(x, x64, t, m, q, nb):
    perm = torch.sort(x.detach(), descending=True, stable=True).indices
    outs = [
        ns.neural_sort(x, tau=t),
        ns.neural_sort(x, tau=t, descending=True, hard=True),
        ns.soft_sort(x, tau=t),
        ns.soft_sort(x64, tau=0.5, descending=True),
        ns.soft_rank(x, tau=t),
        ns.soft_rank(x64.t(), tau=t.double(), dim=0),
        ns.soft_rank(x, tau=t, tol=1e-6),  # windows of a size known only at run time
        ns.soft_sort(x64, tau=0.5, tol=1e-3),
        ns.spearman_loss(x, x.detach().flip(-1), tau=t, tol=1e-6).reshape(1),
        # a long float32 row: tol=None resolves to 2**-24 windows, compiled as in eager mode
        ns.soft_rank(x.reshape(-1).repeat(70)[:1100] + torch.linspace(0, 9, 1100), tau=t)[::97],
        ns.soft_topk(x, 3, tau=t),
        ns.soft_topk(x, 2, tau=t, largest=False, hard=True),
        ns.soft_quantile(x, [0.25, 0.5], tau=t),
        ns.soft_quantile(x64, 0.9, tau=0.3),
        ns.stochastic_neural_sort(x, tau=t, n_samples=2),
        ns.permutation_matrix(perm) * x.unsqueeze(-1),
        ns.sample_gumbel((3, 6)) * x,
        ns.PlackettLuce(x, tau=t).rsample((2,)),
        ns.PlackettLuce(x, tau=t).log_prob(perm),
        ns.sinkhorn(m, n_iters=5, tau=t),
        ns.gumbel_sinkhorn(m, tau=t, n_samples=2, n_iters=5),
        ns.softsort(x, tau=t, hard=True),
        ns.NeuralSort(tau=0.5)(x),
        ns.SoftTopK(2, tau=0.5)(x),
        ns.DKNN(2, tau=0.5, method="stochastic", n_samples=2)(q, nb),
        ns.dknn_topk(q, nb, 2, tau=t),
        ns.dknn_loss(q, nb, torch.tensor([0, 1]), torch.tensor([0, 1, 1, 0]), 2, tau=t),
    ]
    return torch.cat([o.reshape(-1).to(torch.float64) for o in outs])


seen = []


def backend(gm, example_inputs):
    seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
    return torch._dynamo.lookup_backend(sys.argv[2])(gm, example_inputs)


gen = torch.Generator().manual_seed(0)
inputs = [
    torch.randn(3, 6, generator=gen),
    torch.randn(2, 5, dtype=torch.float64, generator=gen),
    torch.tensor(0.7),
    torch.randn(4, 4, generator=gen),
    torch.randn(2, 3, generator=gen),
    torch.randn(4, 3, generator=gen),
]
results = []
for fn in (everything, torch.compile(everything, fullgraph=True, backend=backend)):
    leaves = [a.clone().requires_grad_() for a in inputs]
    torch.manual_seed(1)
    out = fn(*leaves)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
    grads = torch.autograd.grad((out * weights).sum(), leaves)
    results.append((out.detach(), grads))
(o1, g1), (o2, g2) = results
torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-5)
for a, b in zip(g2, g1):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
uses_native = any("neuralsort." in s for s in seen)
assert uses_native == native, (native, sorted(set(seen)))
print("OK", _native.status() if native else "torch path")
"""


# aot_eager runs dynamo, AOTAutograd and the fake-tensor (Meta) kernels, where tracing fails if
# it fails; inductor's code generation adds minutes on two cores (NEURALSORT_TEST_COMPILE_BACKEND
# =inductor runs it)
@pytest.mark.parametrize("path", ["native", "torch"])
def test_fullgraph_compile_of_every_operator_in_a_fresh_process(path):
    if path == "native" and not HAVE_COMPILER:
        pytest.skip("no C++ compiler on this machine")
    env = {k: v for k, v in os.environ.items() if k != "NEURALSORT_NATIVE"}
    if path == "torch":
        env["NEURALSORT_NATIVE"] = "0"
    backend = os.environ.get("NEURALSORT_TEST_COMPILE_BACKEND", "aot_eager")
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, path, backend],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "OK" in proc.stdout, proc.stdout
