"""Large-n benchmark: ``spearman_loss`` forward + backward, time and peak memory.

Per size (batch B x n, N(0,1) predictions, tau 0.1) it compares, side by side in one process
(each round runs every case once, in a shuffled order):

* ``exact``: ``spearman_loss(tol=0)`` (rows streamed in chunks once B n^2 passes 2^20);
* ``default``: ``spearman_loss()``, whose ``tol=None`` is exact where the rows fit in memory
  and ``2**-24`` for longer float32 rows;
* ``tol=1e-6``: the certified windows (C++ loops on the CPU), and again on the PyTorch path
  (``tol=1e-6 torch``, what other devices run);
* ``dense``: the dense rows (the whole ``(B, n, n)`` matrix; the native operator on the CPU),
  only while ``B n^2`` stays under ``--dense_max``;
* ``torchsort``: the same Spearman loss with ``torchsort.soft_rank`` (same regularisation
  strength as tau), when the package imports;
* ``floor``: the work any exact method must do, a softmax forward and backward over the same
  ``B x n x n`` logits (one fused multiply-add each), built in chunks of about
  ``_streamed.CHUNK_ELEMENTS`` elements; ``x floor`` is each case's time over it.

Peak memory: the growth of the peak resident set (``VmHWM``) over one forward + backward in
a fresh subprocess per case (so it includes every temporary, not only saved tensors).

Usage::

    python benchmarks/large_n.py --out results/ops/large_n
    python benchmarks/large_n.py --sizes 1x256 --repeats 2 --budget_s 1   # a smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import neuralsort as ns
from neuralsort import _streamed

DEFAULT_SIZES = ["8x256", "1x256", "8x1024", "1x1024", "8x4096", "1x4096", "8x16384", "1x16384"]
TAU = 0.1


def spearman_torchsort(pred: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """1 - Pearson(soft ranks, hard ranks), with torchsort's soft ranks (its README recipe)."""
    import torchsort

    r = torchsort.soft_rank(pred, regularization_strength=tau)
    t = target.argsort(-1).argsort(-1).to(pred.dtype) + 1
    r = r - r.mean(-1, keepdim=True)
    t = t - t.mean(-1, keepdim=True)
    corr = (r * t).sum(-1) / (r.norm(dim=-1) * t.norm(dim=-1))
    return (1 - corr).mean()


def make_case(method: str, pred: torch.Tensor, target: torch.Tensor):
    if method == "exact":
        return lambda: ns.spearman_loss(pred, target, tau=TAU, tol=0.0)
    if method == "default":
        return lambda: ns.spearman_loss(pred, target, tau=TAU)
    if method == "tol=1e-6":
        return lambda: ns.spearman_loss(pred, target, tau=TAU, tol=1e-6)
    if method == "tol=1e-6 torch":

        def torch_path():
            with ns.backends.native(False):
                return ns.spearman_loss(pred, target, tau=TAU, tol=1e-6)

        return torch_path
    if method == "dense":

        def dense():
            saved = _streamed.CHUNK_ELEMENTS
            _streamed.CHUNK_ELEMENTS = 1 << 62
            try:
                return ns.spearman_loss(pred, target, tau=TAU)
            finally:
                _streamed.CHUNK_ELEMENTS = saved

        return dense
    if method == "floor":
        return lambda: softmax_floor(pred)
    return lambda: spearman_torchsort(pred, target, TAU)


def softmax_floor(pred: torch.Tensor) -> torch.Tensor:
    """Softmax forward + backward of ``(B, n, n)`` logits ``c_i x_j - a_j`` chunk by chunk (the
    gradient of ``x`` accumulated), returning a zero that is cheap to differentiate."""
    b, n = pred.shape
    coef = torch.linspace(-(n - 1), n - 1, n)
    a = pred.detach().abs() * n
    rows = max(1, _streamed.CHUNK_ELEMENTS // (b * n))
    grad = torch.zeros_like(pred)
    for s in range(0, n, rows):
        x = pred.detach().requires_grad_()
        z = torch.addcmul(-a.unsqueeze(-2), coef[s : s + rows, None], x.unsqueeze(-2)) / TAU
        p = torch.softmax(z, dim=-1)
        (p.sum(-2) * coef.new_ones(n)).sum().backward()
        grad += x.grad
    return (pred * 0).sum() + 0 * grad.sum()


def inputs(b: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(b, n, generator=g).requires_grad_(True)
    return pred, torch.randn(b, n, generator=g)


def step(fn, pred) -> None:
    pred.grad = None
    fn().backward()


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM, KiB): unlike ``ru_maxrss``, which a child
    starts with its parent's value, it begins afresh at exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def memory_mib(method: str, b: int, n: int) -> float:
    """Peak-RSS growth (MiB) of one forward + backward, in a fresh process."""
    here = str(Path(__file__).parent)
    code = (
        f"import sys, torch; sys.path.insert(0, {here!r}); import large_n as L\n"
        "torch.set_num_threads(1)\n"
        f"small = L.inputs(2, 8); L.step(L.make_case({method!r}, *small), small[0])\n"
        f"pred, target = L.inputs({b}, {n}); fn = L.make_case({method!r}, pred, target)\n"
        "before = L.peak_rss_kib()\n"
        "L.step(fn, pred)\n"
        "print((L.peak_rss_kib() - before) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def have_torchsort() -> bool:
    try:
        import torchsort  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="BxN")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget_s", type=float, default=20.0, help="time per case at most")
    ap.add_argument("--exact_max", type=int, default=1 << 28, help="largest B n^2 for exact")
    ap.add_argument("--dense_max", type=int, default=1 << 25, help="largest B n^2 for dense")
    ap.add_argument("--no_memory", action="store_true")
    ap.add_argument("--out", default="results/ops/large_n")
    ap.add_argument("--methods", nargs="+", default=None, help="only these cases")
    ap.add_argument(
        "--clock",
        choices=("wall", "thread"),
        default="wall",
        help="wall time, or this thread's CPU time (one torch thread: all the work runs in it), "
        "which other jobs on a shared machine do not inflate",
    )
    args = ap.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    torch.set_num_threads(1)
    methods = ["exact", "floor", "default", "tol=1e-6", "tol=1e-6 torch", "dense"]
    methods += ["torchsort"] if have_torchsort() else []
    if args.methods:
        unknown = sorted(set(args.methods) - set(methods))
        if unknown:
            ap.error(f"--methods: unknown or unavailable {unknown}; choose from {methods}")
        methods = [m for m in methods if m in args.methods]
    rows = []
    for size in args.sizes:
        b, n = (int(v) for v in size.split("x"))
        pred, target = inputs(b, n)
        cases = {}
        for m in methods:
            if (m == "dense" and b * n * n > args.dense_max) or (
                m in ("exact", "floor") and b * n * n > args.exact_max
            ):
                continue
            cases[m] = make_case(m, pred, target)
        times: dict[str, list[float]] = {m: [] for m in cases}
        for fn in cases.values():
            step(fn, pred)  # warm up
        start = time.perf_counter()
        for r in range(args.repeats):
            order = list(cases)
            random.Random(r).shuffle(order)
            for m in order:
                t = clock()
                step(cases[m], pred)
                times[m].append(clock() - t)
            if time.perf_counter() - start > args.budget_s * len(cases):
                break
        for m, ts in times.items():
            rows.append({"B": b, "n": n, "method": m, "median_ms": 1e3 * statistics.median(ts)})
            rows[-1]["repeats"] = len(ts)
            rows[-1]["peak_rss_MiB"] = float("nan") if args.no_memory else memory_mib(m, b, n)
        base = {r["method"]: r["median_ms"] for r in rows if r["B"] == b and r["n"] == n}
        for r in rows[-len(times) :]:
            r["x_exact"] = r["median_ms"] / base["exact"] if "exact" in base else float("nan")
            r["x_floor"] = r["median_ms"] / base["floor"] if "floor" in base else float("nan")
            ts = base.get("torchsort")
            r["x_torchsort"] = r["median_ms"] / ts if ts else float("nan")
            print(json.dumps(r), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "large_n_cpu-1threads.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(
        f"# torch {torch.__version__}, {platform.machine()}, 1 thread, tau {TAU}, "
        f"{args.clock} clock"
    )
    print("| B | n | method | fwd+bwd ms | x exact | x floor | x torchsort | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['B']} | {r['n']} | {r['method']} | {r['median_ms']:.2f} | "
            f"{r['x_exact']:.3f} | {r['x_floor']:.2f} | {r['x_torchsort']:.2f} | "
            f"{r['peak_rss_MiB']:.1f} |"
        )
    return rows


if __name__ == "__main__":
    main()
