"""The native CPU operator (src/neuralsort/_native.py, _kernels/): builds, agrees with the
pure-PyTorch path and the reference, and falls back cleanly where it cannot be built."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import neuralsort as ns
from reference import neural_sort_ref

HAVE_COMPILER = any(shutil.which(c) for c in (os.environ.get("CXX") or "c++", "g++", "clang++"))
needs_native = pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler on this machine")


def both_paths(fn, *args):
    """``fn(*args)`` and the input gradients for a fixed random upstream gradient, per path."""
    results = []
    for native in (True, False):
        leaves = [a.detach().clone().requires_grad_() for a in args]
        with ns.backends.native(native):
            out = fn(*leaves)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        out.backward(upstream.to(out.dtype))
        results.append((out.detach(), [leaf.grad for leaf in leaves]))
    return results


def scores(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@needs_native
def test_builds_where_a_compiler_exists():
    assert ns.backends.is_available(), ns.backends.status()
    assert "loaded" in ns.backends.status() and "-float vectors (" in ns.backends.status()
    assert hasattr(torch.ops.neuralsort, "relaxed_rows")


@needs_native
def test_second_process_reuses_the_cached_build():
    assert ns.backends.is_available()
    code = "import neuralsort as ns, sys; sys.exit(0 if ns.backends.is_available() else 1)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "compiling" not in proc.stderr


# n covers: one element, rows kept in registers (up to 128 with 16-lane AVX-512 vectors, 32
# with AVX2, 16 with SSE), padded tails, the counting sort (<= 256) and the radix sort (> 256)
SIZES = [1, 2, 3, 15, 16, 17, 32, 48, 64, 65, 90, 100, 128, 129, 257, 300]


def shifted(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` plus a random constant of about 1% of its size along the last axis: the same
    problem for every op here (they are shift-invariant), with other float32 roundings."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.randn(*x.shape[:-1], 1, generator=g, dtype=x.dtype)
    return x + offset * x.abs().amax(-1, keepdim=True) * 0.01


def path_errors(fn, *args) -> np.ndarray:
    """(2, outputs): each path's (native, torch) max-abs error against float64, for the output
    and each input gradient of ``fn(*args)`` (float32 ``args``)."""
    exact_out, exact_grads = both_paths(fn, *(a.double() for a in args))[1]
    exact = [exact_out, *exact_grads]
    return np.array(
        [
            [(r.double() - e).abs().max().item() for r, e in zip([out, *grads], exact, strict=True)]
            for out, grads in both_paths(fn, *args)
        ]
    )


def assert_paths_agree(fn, x, *more):
    """float64: native and torch paths agree to rounding. float32: the native path is never
    meaningfully less accurate: its error against the float64 result is at most twice the torch
    path's, plus 1e-6 of the result's size.

    In float32 both paths store the centred scores and ``A 1`` rounded (alike: the mean is
    summed in float64 on both), and where a result is ill-conditioned (a tau gradient at
    n |x| / tau in the thousands) its error depends on how the remaining roundings happen to
    fall: on one input either path's error can be 2-3 times the other's, and the other way
    round on the same input shifted by 1%. So each path's error is its root mean square over
    the input and six shifted copies (seeded), where the paths are within 1.5x of each other.
    """
    if x.dtype == torch.float64:
        (o1, g1), (o2, g2) = both_paths(fn, x, *more)
        torch.testing.assert_close(o1, o2, atol=1e-10, rtol=1e-9)
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
        return
    inputs = [x] + [shifted(x, seed) for seed in range(6)]
    errors = np.array([path_errors(fn, xi, *more) for xi in inputs])
    native_err, torch_err = np.sqrt((errors**2).mean(axis=0))
    o64, g64 = both_paths(fn, x.double(), *(m.double() for m in more))[1]
    scale = np.array([r.abs().max().item() for r in [o64, *g64]])
    ok = native_err <= 2 * torch_err + 1e-6 * scale
    assert ok.all(), (tuple(x.shape), native_err, torch_err, scale)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", SIZES)
def test_neural_sort_and_gradients_match_the_torch_path(n, dtype):
    x = scores(3, n, dtype=dtype, seed=n) * 3
    for descending in (False, True):
        assert_paths_agree(lambda x, d=descending: ns.neural_sort(x, tau=0.7, descending=d), x)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,k", [(5, 1), (16, 9), (100, 9), (300, 16)])
def test_topk_and_quantile_match_the_torch_path(n, k, dtype):
    x = scores(4, n, dtype=dtype, seed=k)
    tau = torch.tensor(0.5, dtype=dtype)
    for fn in (
        lambda x, t: ns.soft_topk(x, k, tau=t),
        lambda x, t: ns.soft_topk(x, k, tau=t, largest=False),
        lambda x, t: ns.soft_quantile(x, [0.1, 0.5, 0.9], tau=t),
        lambda x, t: ns.soft_sort(x, tau=t),
        lambda x, t: ns.soft_rank(x, tau=t),
    ):
        assert_paths_agree(fn, x, tau)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [37, 700])
def test_tol_windows_match_the_torch_path(n, dtype):
    # the windowed kernels (windows of every width mod the vector length, so partial vectors),
    # with the gradients of x and of a tensor tau; soft_sort takes the rows' Q @ v branch,
    # soft_rank and spearman_loss the w @ Q one
    x = scores(3, n, dtype=dtype, seed=n)
    tau = torch.tensor(0.3, dtype=dtype)
    target = scores(3, n, dtype=dtype, seed=n + 1)
    for fn in (
        lambda x, t: ns.soft_rank(x, tau=t, tol=1e-6),
        lambda x, t: ns.soft_sort(x, tau=t, descending=True, tol=1e-6),
        lambda x, t: ns.spearman_loss(x, target.to(x.dtype), tau=t, reduction="none", tol=1e-6),
    ):
        assert_paths_agree(fn, x, tau)


@needs_native
@pytest.mark.parametrize("n", [512, 3000])
def test_radix_order_with_ties_matches_the_stable_sort(n):
    from neuralsort import _native

    x = torch.randint(-4, 4, (4, n), generator=torch.Generator().manual_seed(n)).float()
    x[0, ::3] = -0.0  # equal to +0.0: kept in index order
    x[1] = scores(n, dtype=torch.float32, seed=1)
    x[2, ::5] = float("inf")
    assert _native.usable(x) and n >= _native._RADIX_MIN  # the compiled sort, not numpy's
    assert torch.equal(_native.ascending_order(x), torch.sort(x, stable=True).indices)


# every op built on the native rows, as f(x, tau); the n x n ones only up to RANDOM_N_SQUARE
RANDOM_OPS = {
    "neural_sort": lambda x, t: ns.neural_sort(x, tau=t, descending=True),
    "soft_sort": lambda x, t: ns.soft_sort(x, tau=t),
    "soft_rank": lambda x, t: ns.soft_rank(x, tau=t, descending=True),
    "soft_topk": lambda x, t: ns.soft_topk(x, min(9, x.shape[-1]), tau=t),
    "soft_topk_smallest": lambda x, t: ns.soft_topk(x, min(16, x.shape[-1]), tau=t, largest=False),
    "soft_quantile": lambda x, t: ns.soft_quantile(x, [0.1, 0.5, 0.9], tau=t),
    "stochastic_neural_sort": lambda x, t: ns.stochastic_neural_sort(
        x, tau=t, generator=torch.Generator().manual_seed(0)
    ),
}
RANDOM_N_SQUARE = 1024


def random_cases(op: str, count: int = 18, seed: int = 0):
    """Seeded cases for ``op``: n log-uniform in 1..4096, tau in 0.05..5, score spread 0.1..10,
    float32 and float64, tau as a tensor (whose gradient is checked too) and as a float."""
    rng = np.random.default_rng([seed, sorted(RANDOM_OPS).index(op)])
    top = 4096 if op in ("soft_topk", "soft_topk_smallest", "soft_quantile") else RANDOM_N_SQUARE
    for case in range(count):
        n = int(np.exp(rng.uniform(0, np.log(top)))) if case > 1 else (1, top)[case]
        tau = float(np.exp(rng.uniform(np.log(0.05), np.log(5.0))))
        spread = float(np.exp(rng.uniform(np.log(0.1), np.log(10.0))))
        dtype = torch.float32 if case % 3 else torch.float64
        g = torch.Generator().manual_seed(1000 * seed + case)
        x = torch.randn(2 if n <= 256 else 1, n, generator=g)
        yield (x * spread).to(dtype), tau, case % 2 == 0


@needs_native
@pytest.mark.parametrize("op", sorted(RANDOM_OPS))
def test_native_accuracy_over_random_cases(op):
    fn = RANDOM_OPS[op]
    for x, tau, tau_is_tensor in random_cases(op):
        if tau_is_tensor:
            assert_paths_agree(fn, x, torch.tensor(tau, dtype=x.dtype))
        else:
            assert_paths_agree(lambda x, tau=tau: fn(x, tau), x)


@needs_native
@pytest.mark.parametrize("n", [32, 64, 100, 300])
def test_matches_the_reference(n):
    x = scores(2, n, seed=1)
    with ns.backends.native(True):
        p = ns.neural_sort(x, tau=0.3, descending=True)
    for b in range(2):
        np.testing.assert_allclose(p[b].numpy(), neural_sort_ref(x[b].numpy(), 0.3), atol=1e-12)


@needs_native
def test_gradcheck_through_every_kernel_path():
    for n, m in [(16, 16), (20, 20), (40, 3), (300, 2)]:
        x = scores(2, n, seed=n).requires_grad_()
        tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
        with ns.backends.native(True):
            assert torch.autograd.gradcheck(lambda x, t, m=m: ns.soft_topk(x, m, tau=t), (x, tau))


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [8, 24, 40, 100, 128, 200, 300, 2048])
def test_ties_give_the_same_matrix_and_stable_hard_order(n, dtype):
    # Many equal keys, within and across 16-lane blocks; -0.0 and 0.0 are equal keys. float32
    # ranks rows of n <= 128 in registers (AVX-512) or by counting with a tie-breaking pass
    # (n <= 256), longer rows by a radix sort, float64 by std::sort: each must give a stable
    # sort's order.
    pattern = torch.tensor([2.0, 1.0, 2.0, 1.0, 3.0, 2.0, -0.0, 0.0], dtype=dtype)
    shuffled = torch.randint(-3, 4, (2, n), generator=torch.Generator().manual_seed(n)).to(dtype)
    constant = torch.full((1, n), -1.5, dtype=dtype)  # every key equal
    x = torch.cat([pattern.repeat(n // 8 + 1)[:n].unsqueeze(0), shuffled, constant])
    (p1, (g1,)), (p2, (g2,)) = both_paths(lambda x: ns.neural_sort(x, tau=0.5), x)
    torch.testing.assert_close(p1, p2)
    # the same subgradient at the ties (another order of the ties moves gradients by O(1));
    # float32 sums of up to 2048 terms round differently on the two paths
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(g1, g2, atol=tol, rtol=tol)
    with ns.backends.native(True):
        hard = ns.neural_sort(x, tau=1e-3, hard=True).argmax(-1)
        coef = torch.ones(1, dtype=dtype)
        order = torch.ops.neuralsort.relaxed_rows_forward(
            x, coef, torch.zeros(1, dtype=torch.long), torch.tensor(1.0, dtype=dtype), 60.0, False
        )[3]
    stable = torch.sort(x, stable=True).indices
    assert torch.equal(hard, stable)
    assert torch.equal(order, stable)


@needs_native
def test_threads_do_not_change_the_result():
    x = scores(512, 64, dtype=torch.float32, seed=5)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xx = x.clone().requires_grad_()
            with ns.backends.native(True):
                p = ns.neural_sort(xx, tau=1.0)
            p.backward(torch.ones_like(p).cumsum(-1))
            outs.append((p.detach(), xx.grad))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


@needs_native
def test_batch_shapes_strides_and_empty_batches():
    x = scores(2, 3, 7, seed=2)
    ref = ns.neural_sort(x.reshape(6, 7), tau=1.0).reshape(2, 3, 7, 7)
    with ns.backends.native(True):
        torch.testing.assert_close(ns.neural_sort(x, tau=1.0), ref)
        # a non-contiguous view sorted along a middle axis
        xt = x.transpose(1, 2)
        torch.testing.assert_close(ns.neural_sort(xt, tau=1.0, dim=1), ref)
        empty = torch.zeros(0, 5, dtype=torch.float64, requires_grad=True)
        out = ns.neural_sort(empty, tau=1.0)
        assert out.shape == (0, 5, 5)
        out.sum().backward()
        assert empty.grad.shape == (0, 5)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_non_finite_rows_stay_in_their_row(dtype):
    x = scores(3, 20, dtype=dtype, seed=4)
    x[1, 7] = float("nan")
    x[2, 3] = float("inf")
    with ns.backends.native(True):
        p = ns.neural_sort(x, tau=1.0)
        clean = ns.neural_sort(x[:1], tau=1.0)
    torch.testing.assert_close(p[0], clean[0])
    assert torch.isnan(p[1]).all() and torch.isnan(p[2]).all()


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_scales_stay_finite_and_sharp(dtype):
    x = scores(4, 37, dtype=dtype, seed=6) * 1e6
    with ns.backends.native(True):
        p = ns.neural_sort(x, tau=1e-3, descending=True)
    assert torch.isfinite(p).all()
    assert torch.equal(p.argmax(-1), torch.sort(x, descending=True, stable=True).indices)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 37, dtype=dtype))


def _isolated_env(**env: str) -> dict[str, str]:
    """This environment without the switches a test must not inherit, plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("CXX", "NEURALSORT_NATIVE")}
    full_env.update(env)
    return full_env


def _run_isolated(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_isolated_env(**env),
        timeout=300,
    )


FALLBACK_CHECK = """
import warnings, torch, neuralsort as ns
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    x = torch.randn(3, 8, dtype=torch.float64)
    p = ns.neural_sort(x, tau=0.5)
with ns.backends.native(False):
    q = ns.neural_sort(x, tau=0.5)
assert torch.equal(p, q)
print("AVAILABLE", ns.backends.is_available())
print("WARNINGS", [str(w.message)[:60] for w in caught])
print("STATUS", ns.backends.status())
"""


# The kernel's vectors are as wide as the build target's registers. This machine compiles the
# AVX-512 variant; these builds compile the narrower ones here too and run the agreement tests
# above against them in a fresh process each.
NARROW_BUILDS = {  # flags, and what the build reports
    "avx2": ("-mno-avx512f", "8-float vectors (AVX2)"),  # AVX2 masked loads and stores
    "sse2": ("-march=x86-64 -mtune=generic", "4-float vectors (SSE2)"),  # as NEON: no intrinsics
    # AVX-512 without the 16-bit popcounts of Ice Lake and later (Skylake-X, Cascade Lake)
    "avx512-no-bitalg": ("-mno-avx512bitalg", "16-float vectors (AVX-512)"),
}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}


AGREEMENT_TESTS = (
    "builds_where or match_the_torch_path or random_cases or matches_the_reference or ties "
    "or gradcheck or matches_the_stable_sort"
)


@needs_native
@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the flags are x86 ones"
)
@pytest.mark.parametrize("isa", sorted(NARROW_BUILDS))
def test_narrower_vector_builds_pass_the_agreement_tests(isa, tmp_path):
    flags, reported = NARROW_BUILDS[isa]
    if "AVX-512" in reported and "avx512f" not in _cpu_flags():
        pytest.skip("this CPU has no AVX-512")
    env = {"NEURALSORT_CXXFLAGS": flags, "NEURALSORT_CACHE_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    proc = subprocess.run(
        [*cmd, "-k", AGREEMENT_TESTS],
        capture_output=True,
        text=True,
        env=_isolated_env(**env),
        cwd=Path(__file__).parents[1],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
    assert len(list(tmp_path.glob("neuralsort_ops_*/*.so"))) == 1  # built with these flags
    status = _run_isolated(
        "import neuralsort as ns; ns.backends.is_available(); print(ns.backends.status())", **env
    )
    assert status.stdout.strip().endswith(reported), status.stdout + status.stderr


def test_without_a_compiler_the_torch_path_runs_and_says_why(tmp_path):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    proc = _run_isolated(
        FALLBACK_CHECK, PATH=str(empty_bin), NEURALSORT_CACHE_DIR=str(tmp_path / "cache")
    )
    assert proc.returncode == 0, proc.stderr
    assert "AVAILABLE False" in proc.stdout
    assert "could not be built" in proc.stdout
    assert "no C++ compiler" in proc.stdout
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_compiler_named_by_cxx_that_does_not_exist_falls_back(tmp_path):
    missing = str(tmp_path / "no-such-c++")
    proc = _run_isolated(FALLBACK_CHECK, CXX=missing, NEURALSORT_CACHE_DIR=str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    assert "AVAILABLE False" in proc.stdout and "could not be built" in proc.stdout
    assert f"CXX={missing!r} was not found" in proc.stdout


# ninja hidden from this process even where it is installed next to its Python (the build
# looks there too)
HIDE_NINJA = """
import shutil
_which = shutil.which
shutil.which = lambda cmd, *args, **kwargs: None if cmd == "ninja" else _which(cmd, *args, **kwargs)
"""


@needs_native
def test_without_ninja_the_torch_path_runs_and_says_why(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cxx = shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++")
    (bin_dir / "c++").symlink_to(cxx)
    proc = _run_isolated(
        HIDE_NINJA + FALLBACK_CHECK, PATH=str(bin_dir), NEURALSORT_CACHE_DIR=str(tmp_path / "c")
    )
    assert proc.returncode == 0, proc.stderr
    assert "AVAILABLE False" in proc.stdout and "ninja was not found" in proc.stdout


BUILD_CHECK = """
import neuralsort as ns
print("AVAILABLE", ns.backends.is_available(), ns.backends.status())
"""


@needs_native
def test_processes_started_together_share_one_build_and_survive_a_killed_one(tmp_path):
    # -O0 (the later flag wins) keeps these builds short
    env = _isolated_env(NEURALSORT_CXXFLAGS="-O0", NEURALSORT_CACHE_DIR=str(tmp_path))
    cmd = [sys.executable, "-c", BUILD_CHECK]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and "AVAILABLE True" in out, out + err
    assert sum("compiling" in err for _, err in outputs) == 1  # the others waited, then loaded
    (library,) = tmp_path.glob("neuralsort_ops_*/*.so")
    # a process killed while it held cpp_extension's lock file leaves it behind
    (library.parent / "lock").touch()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "AVAILABLE True" in proc.stdout, proc.stdout + proc.stderr
    assert "compiling" not in proc.stderr


@needs_native
def test_a_compiler_without_march_native_gets_the_next_flag_set(tmp_path):
    # a compiler that rejects -march=native (as some do): the flag sets without it are tried
    real = shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++")
    cxx = tmp_path / "picky-c++"
    cxx.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" -march=native "*) echo "unknown flag -march=native" >&2; exit 1;; esac\n'
        f'exec {real} "$@"\n'
    )
    cxx.chmod(0o755)
    # -O0 (the later flag wins) keeps the build short
    env = {"CXX": str(cxx), "NEURALSORT_CXXFLAGS": "-O0", "NEURALSORT_CACHE_DIR": str(tmp_path)}
    for attempt in range(2):  # the second process finds the build without trying the others
        proc = _run_isolated(BUILD_CHECK, **env)
        assert proc.returncode == 0 and "AVAILABLE True" in proc.stdout, proc.stdout + proc.stderr
        assert ("compiling" in proc.stderr) == (attempt == 0), proc.stderr
    (library,) = tmp_path.glob("neuralsort_ops_*/*.so")
    assert "-march=native" not in (library.parent / "build.ninja").read_text()


@needs_native
def test_bad_extra_flags_fall_back_and_name_the_variable(tmp_path):
    code = FALLBACK_CHECK.replace("[:60]", "")
    proc = _run_isolated(
        code, NEURALSORT_CXXFLAGS="-mno-such-flag", NEURALSORT_CACHE_DIR=str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    assert "AVAILABLE False" in proc.stdout
    assert "-mno-such-flag" in proc.stdout
    assert "NEURALSORT_CXXFLAGS='-mno-such-flag' was added to every flag set" in proc.stdout


def test_environment_switch_skips_the_build(tmp_path):
    code = FALLBACK_CHECK.replace('print("AVAILABLE", ns.backends.is_available())', "")
    proc = _run_isolated(code, NEURALSORT_NATIVE="0", NEURALSORT_CACHE_DIR=str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    assert "WARNINGS []" in proc.stdout
    assert "switched off" in proc.stdout
    assert not (tmp_path / "c").exists()


@needs_native
def test_torch_compile_traces_the_operator():
    # the operator has shape-only (Meta) kernels, so torch.compile can trace it in one graph
    torch._dynamo.reset()
    x = scores(4, 6, dtype=torch.float32, seed=8).requires_grad_()
    tau = torch.tensor(0.7, requires_grad=True)

    def fn(x, t):
        return (ns.soft_topk(x, 3, tau=t) * torch.arange(6.0)).sum()

    with ns.backends.native(True):
        expected = torch.autograd.grad(fn(x, tau), (x, tau))
        got = torch.autograd.grad(
            torch.compile(fn, fullgraph=True, backend="aot_eager")(x, tau), (x, tau)
        )
    torch.testing.assert_close(got, expected)


@needs_native
def test_sorted_values_operator_second_derivatives():
    # soft_sort and soft_quantile run relaxed_sorted_values; its create_graph path is separate
    x = scores(3, 7, seed=9).requires_grad_()
    tau = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    with ns.backends.native(True):
        assert torch.autograd.gradgradcheck(lambda x, t: ns.soft_sort(x, tau=t), (x, tau))
        assert torch.autograd.gradgradcheck(
            lambda x, t: ns.soft_quantile(x, [0.3, 0.5], tau=t), (x, tau)
        )
        assert torch.autograd.gradcheck(
            lambda x, t: ns.soft_sort(x, tau=t, descending=True), (x, tau)
        )


RELOAD_CHECK = """
import importlib, torch, neuralsort as ns, neuralsort.ops as ops
from torch.profiler import profile
importlib.reload(ops)  # as Jupyter's autoreload does; the operator library is registered once
x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
with ns.backends.native(True):
    assert torch.autograd.gradgradcheck(lambda x: ops.neural_sort(x, tau=0.5), (x,))
    p = ops.neural_sort(x, tau=0.5)
    with profile() as prof:
        torch.autograd.grad(p.sum(), x, create_graph=True)
print("OK", "neuralsort_py::rows_backward" in {e.name for e in prof.events()})
"""


@needs_native
def test_reloading_the_module_keeps_second_derivatives_working():
    # the native node's create_graph path calls the Python-registered neuralsort_py::rows_backward
    proc = _run_isolated(RELOAD_CHECK)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK True" in proc.stdout, proc.stdout


@needs_native
def test_rows_past_the_kernel_limit_take_the_torch_path(monkeypatch):
    from neuralsort import _native  # noqa: PLC0415

    x = scores(2, 16)
    monkeypatch.setattr(_native, "_MAX_ROW", 10)  # the real limit, 2**31 - 1, needs 8 GiB a row
    assert _native.usable(x[..., :10]) and not _native.usable(x)
    with ns.backends.native(False):
        expected = ns.neural_sort(x, tau=0.5)
    torch.testing.assert_close(ns.neural_sort(x, tau=0.5), expected, atol=0, rtol=0)


@needs_native
def test_build_key_depends_on_where_torch_is_installed(monkeypatch):
    # two environments with the same torch version compile with different include paths: each
    # gets its own build folder instead of rebuilding the other's on every switch
    from neuralsort import _native

    cxx = _native._compiler()
    here = _native._build_key(cxx).hexdigest()
    assert _native._build_key(cxx).hexdigest() == here
    monkeypatch.setattr(torch, "__file__", "/another/venv/site-packages/torch/__init__.py")
    assert _native._build_key(cxx).hexdigest() != here
