"""Plots of ``neuralsort report`` and of the operator benchmark (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import csv
import pathlib
from typing import Any

from .runs import CellRun
from .spec import TABLES

__all__ = ["plot_accuracy_vs_k", "plot_exact_vs_n", "plot_ops_benchmark"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_k(runs: list[CellRun], target: pathlib.Path) -> str | None:
    """Table 3: test accuracy against k per (data set, row) with finished runs at several k.

    Returns None when written, else the reason it was skipped.
    """
    series: dict[tuple[str, str, str], dict[int, float]] = {}
    for run in runs:
        acc = run.value("test_acc")
        if acc is None or run.k is None or run.row == "cnn":
            continue
        pts = series.setdefault((run.column, run.row, run.budget), {})
        pts[run.k] = acc
        for k, a in (run.metrics.get("test_acc_by_k") or {}).items():  # one run, several k
            pts.setdefault(int(k), float(a))
    series = {key: pts for key, pts in series.items() if len(pts) >= 2}
    if not series:
        return "no row of Table 3 has finished runs at two or more values of k"
    plt = _plt()
    columns = sorted({c for c, _, _ in series})
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 4), squeeze=False)
    for ax, col in zip(axes[0], columns, strict=True):
        for (c, row, budget), pts in sorted(series.items()):
            if c != col:
                continue
            ks = sorted(pts)
            ax.plot(ks, [100 * pts[k] for k in ks], marker="o", label=f"{row} ({budget})")
        ax.set_xticks(sorted({k for (c, _, _), pts in series.items() if c == col for k in pts}))
        ax.set_title(col)
        ax.set_xlabel("k")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Table 3: accuracy against k (our runs)")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return None


def plot_exact_vs_n(runs: list[CellRun], target: pathlib.Path) -> str | None:
    """Table 1: fraction of sequences sorted exactly against n, ours (solid) and paper (dashed)."""
    spec = TABLES[1]
    ours: dict[tuple[str, str], dict[int, float]] = {}
    for run in runs:
        v = run.value("test_exact")
        if v is not None:
            ours.setdefault((run.row, run.budget), {})[int(run.column[1:])] = v
    if not ours:
        return "no finished run of Table 1"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {row: f"C{i}" for i, (row, _) in enumerate(spec.rows)}
    for row, label in spec.rows:
        ns = [int(c[1:]) for c, _ in spec.columns]
        paper = [spec.paper[(row, f"n{n}")][0] for n in ns]
        ax.plot(ns, paper, ls="--", color=colors[row], alpha=0.6, label=f"{label} (paper)")
    for (row, budget), pts in sorted(ours.items()):
        ns = sorted(pts)
        label = dict(spec.rows)[row]
        ax.plot(
            ns, [pts[n] for n in ns], marker="o", color=colors[row], label=f"{label} ({budget})"
        )
    ax.set_xticks([int(c[1:]) for c, _ in spec.columns])
    ax.set_xlabel("n (numbers per sequence)")
    ax.set_ylabel("all correct (test)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Table 1: exact sorting accuracy against n")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return None


def plot_ops_benchmark(csv_files: list[pathlib.Path], target: pathlib.Path) -> str | None:
    """Grouped bars of ``vs_floor`` (time / softmax floor) per size, one panel per CSV file."""
    tables = []
    for path in csv_files:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if r.get("vs_floor")]
        except OSError:
            continue
        if rows and {"B", "n", "op", "vs_floor"} <= set(rows[0]):
            tables.append((path, rows))
    if not tables:
        return "no benchmark CSV (ops_*.csv of benchmarks/ops.py with B,n,op,vs_floor) found"
    plt = _plt()
    fig, axes = plt.subplots(len(tables), 1, figsize=(12, 3.8 * len(tables)), squeeze=False)
    for ax, (path, rows) in zip(axes[:, 0], tables, strict=True):
        sizes = list(dict.fromkeys(f"{r['B']}x{r['n']}" for r in rows))
        ops = [op for op in dict.fromkeys(r["op"] for r in rows) if not op.startswith("floor")]
        width = 0.8 / max(1, len(ops))
        for j, op in enumerate(ops):
            vals = {f"{r['B']}x{r['n']}": float(r["vs_floor"]) for r in rows if r["op"] == op}
            xs = [i + (j - (len(ops) - 1) / 2) * width for i in range(len(sizes))]
            ax.bar(xs, [vals.get(s, float("nan")) for s in sizes], width, label=op)
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="floor (softmax of B x n x n)")
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels([f"B x n = {s}" for s in sizes])
        ax.set_yscale("log")
        ax.set_ylabel("time / floor (forward + backward)")
        ax.set_title(path.stem.removeprefix("ops_"))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return None
