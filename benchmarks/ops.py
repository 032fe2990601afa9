"""Operator benchmark: forward + backward time and memory, side by side in one run.

Every operator is timed against, in the same process and interleaved (each round runs every case
once, in a freshly shuffled order, so that machine noise and the state left by the previous case
hit all of them alike):

* the floor: one softmax over a ``B x n x n`` tensor plus its backward, the least work any
  relaxation producing an ``n x n`` row-stochastic matrix can do; for ``soft_topk`` also the
  floor of its own output, one softmax over ``B x 9 x n``;
* the published formula: the paper's code computes ``A_s 1`` by multiplying ``A_s`` with an
  ``n x n`` ones matrix (O(n^3)), re-implemented here on the device at hand;
* torchsort's ``soft_sort``, when that package is installed;
* on the CPU, ``neural_sort`` again on the pure-PyTorch path
  (``neuralsort.backends.native(False)``), to show what the fused C++ operator buys;
* on CUDA with Triton installed, ``neural_sort`` and ``soft_topk`` with the experimental fused
  Triton kernels (``neuralsort.backends.triton()``) for n <= 256.

Memory is the bytes autograd keeps for the backward pass (saved tensors), counted with saved-tensor
hooks, and on CUDA also the peak allocated memory.

Usage::

    python benchmarks/ops.py                     # all sizes, CSV + PNG into results/ops/
    python benchmarks/ops.py --sizes 64x100 --repeats 5
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import neuralsort as ns

# the one folder of benchmark results, the one the docs cite (CSV + PNG named by hardware)
RESULTS = Path(__file__).resolve().parent.parent / "results" / "ops"
DEFAULT_SIZES = ["256x16", "100x100", "64x100", "8x512", "2x2048"]


def published_formula(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """The paper code's construction: ``A_s 1`` as a product with an n x n ones matrix (O(n^3))."""
    n = scores.shape[-1]
    s = scores.unsqueeze(-1)  # (B, n, 1)
    a = (s - s.transpose(1, 2)).abs()  # (B, n, n)
    ones = torch.ones(n, n, dtype=scores.dtype, device=scores.device)
    b = torch.matmul(a, ones)  # every column holds the row sums: O(n^3)
    scaling = (n + 1 - 2 * torch.arange(1, n + 1, device=scores.device)).to(scores.dtype)
    c = torch.matmul(s, scaling.unsqueeze(0))  # (B, n, n): c[b, j, i] = (n+1-2i) s_j
    p_max = (c - b).transpose(1, 2)
    return torch.softmax(p_max / tau, dim=-1)


def within(switch: Callable, enabled: bool, fn: Callable) -> Callable:
    """``fn`` run inside the backend switch ``switch(enabled)`` (a context manager)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with switch(enabled):
            return fn(x)

    return run


def make_cases(b: int, n: int, device: torch.device) -> dict[str, tuple[Callable, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(b, n, generator=g).to(device)
    logits = torch.randn(b, n, n, generator=g).to(device)

    def full(x: torch.Tensor) -> torch.Tensor:
        return ns.neural_sort(x, tau=1.0, descending=True)

    def topk9(x: torch.Tensor) -> torch.Tensor:
        return ns.soft_topk(x, 9, tau=1.0)

    cases: dict[str, tuple[Callable, torch.Tensor]] = {
        "floor: softmax(B,n,n)": (lambda x: torch.softmax(x, -1), logits),
        "neural_sort": (full, scores),
        "published O(n^3)": (lambda x: published_formula(x, 1.0), scores),
        "soft_sort": (lambda x: ns.soft_sort(x, tau=1.0), scores),
        "softsort": (lambda x: ns.softsort(x, tau=1.0), scores),
    }
    if device.type == "cpu" and ns.backends.is_available():
        cases["neural_sort (torch path)"] = (within(ns.backends.native, False, full), scores)
    if device.type == "cuda" and n <= 256 and importlib.util.find_spec("triton") is not None:
        # the experimental fused kernels (off by default), beside the PyTorch path they replace
        cases["neural_sort (Triton)"] = (within(ns.backends.triton, True, full), scores)
        if 9 <= n:
            cases["soft_topk k=9 (Triton)"] = (within(ns.backends.triton, True, topk9), scores)
    for k in (9, 16):
        if k <= n:
            cases[f"soft_topk k={k}"] = (lambda x, k=k: ns.soft_topk(x, k, tau=1.0), scores)
    if 9 <= n:
        # soft_topk's own floor: one softmax over its B x 9 x n output
        cases["floor: softmax(B,9,n)"] = (lambda x: torch.softmax(x, -1), logits[:, :9].clone())
    try:
        import torchsort  # noqa: PLC0415

        def torchsort_sort(x: torch.Tensor) -> torch.Tensor:
            # Blondel et al.'s soft sort (sorted values, O(n log n)); strength plays tau's part
            return torchsort.soft_sort(x, regularization_strength=1.0)

        torchsort_sort(scores[:1])  # its CUDA extension may be missing: then leave it out
        cases["torchsort.soft_sort"] = (torchsort_sort, scores)
    except (ImportError, RuntimeError):
        pass
    return cases


def saved_bytes(fn: Callable, x: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total


_GRADS: dict[tuple, torch.Tensor] = {}


def upstream_grad(shape: torch.Size, device: torch.device) -> torch.Tensor:
    """A fixed random upstream gradient (ones would make the softmax backward degenerate)."""
    key = (tuple(shape), str(device))
    if key not in _GRADS:
        g = torch.Generator().manual_seed(1)
        _GRADS[key] = torch.randn(tuple(shape), generator=g).to(device)
    return _GRADS[key]


def run_once(fn: Callable, x: torch.Tensor, device: torch.device) -> float:
    x = x.detach().requires_grad_()
    grad = upstream_grad(fn(x.detach()).shape, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(x)
    out.backward(grad)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def peak_cuda_bytes(fn: Callable, x: torch.Tensor) -> int | None:
    if x.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run_once(fn, x, x.device)
    return torch.cuda.max_memory_allocated() - base


def bench_size(b: int, n: int, device: torch.device, repeats: int, budget_s: float) -> list[dict]:
    cases = make_cases(b, n, device)
    for fn, x in cases.values():  # warm-up
        run_once(fn, x, device)
    times: dict[str, list[float]] = {name: [] for name in cases}
    t_start = time.perf_counter()
    order = list(cases)
    shuffle = random.Random(0).shuffle
    for r in range(repeats):
        # interleaved, in a fresh order each round: an op's time depends on what ran just before
        # it (caches, allocator), so no op may always follow the same one
        shuffle(order)
        for name in order:
            fn, x = cases[name]
            times[name].append(run_once(fn, x, device))
        if r >= 2 and time.perf_counter() - t_start > budget_s:
            break
    floor = statistics.median(times["floor: softmax(B,n,n)"])
    full = statistics.median(times["neural_sort"])
    rows = []
    for name, (fn, x) in cases.items():
        med = statistics.median(times[name])
        rows.append(
            {
                "B": b,
                "n": n,
                "op": name,
                "median_ms": med * 1e3,
                "vs_floor": med / floor,
                "speedup_vs_neural_sort": full / med,
                "saved_MiB": saved_bytes(fn, x) / 2**20,
                "peak_cuda_MiB": (p / 2**20) if (p := peak_cuda_bytes(fn, x)) is not None else "",
                "repeats": len(times[name]),
            }
        )
    return rows


def plot(csv_path: Path) -> None:
    """Bars of time / floor per operator and size, next to the CSV (the same plot as
    ``neuralsort report``'s ``ops_benchmark.png``, which puts every ``ops_*.csv`` side by side)."""
    try:
        from neuralsort.experiments.tables.plots import plot_ops_benchmark  # noqa: PLC0415

        plot_ops_benchmark([csv_path], csv_path.with_suffix(".png"))
    except ImportError:  # matplotlib is optional (pip install neuralsort[experiments])
        return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="BxN, e.g. 64x100")
    parser.add_argument("--repeats", type=int, default=300, help="max rounds per size")
    parser.add_argument("--budget_s", type=float, default=20.0, help="time cap per size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(RESULTS), help="default: results/ops")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict] = []
    for size in args.sizes:
        b, n = (int(v) for v in size.lower().split("x"))
        rows.extend(bench_size(b, n, device, args.repeats, args.budget_s))
    env = f"{device.type}-{torch.get_num_threads()}threads"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"ops_{env}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(out / f"ops_{env}.csv")
    print(
        f"# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print("| B | n | op | fwd+bwd ms | x floor | speed-up vs neural_sort | saved MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['B']} | {r['n']} | {r['op']} | {r['median_ms']:.3f} | {r['vs_floor']:.2f} | "
            f"{r['speedup_vs_neural_sort']:.1f} | {r['saved_MiB']:.2f} |"
        )
    print()
    for line in check_targets(rows):
        print(line)
    print(f"\nwrote {out / f'ops_{env}.csv'} and .png")


def check_targets(rows: list[dict]) -> list[str]:
    """The issue's targets, each with the measured ratio and met / missed."""
    by = {(r["B"], r["n"], r["op"]): r for r in rows}
    lines = []
    issue_sizes = {(256, 16), (100, 100), (64, 100), (8, 512), (2, 2048)}
    for b, n in dict.fromkeys((r["B"], r["n"]) for r in rows):
        if (b, n) not in issue_sizes:
            continue
        for op in ("neural_sort", "neural_sort (Triton)"):
            if (r := by.get((b, n, op))) is not None:
                verdict = "met" if r["vs_floor"] <= 1.2 else "missed"
                lines.append(
                    f"target {op} <= 1.2x floor at ({b}, {n}): {r['vs_floor']:.2f}x  {verdict}"
                )
    for (b, n), need in (((100, 100), 5.0), ((2, 2048), 20.0)):
        if (r := by.get((b, n, "soft_topk k=9"))) is not None:
            got = r["speedup_vs_neural_sort"]
            verdict = "met" if got >= need else "missed"
            own_floor = by[(b, n, "floor: softmax(B,9,n)")]["median_ms"]
            lines.append(
                f"target soft_topk k=9 >= {need:.0f}x faster than neural_sort at ({b}, {n}): "
                f"{got:.1f}x  {verdict}  (softmax(B,9,n) alone is "
                f"{by[(b, n, 'neural_sort')]['median_ms'] / own_floor:.1f}x faster than "
                f"neural_sort; soft_topk takes {r['median_ms'] / own_floor:.2f}x its time)"
            )
    return lines


if __name__ == "__main__":
    main()
