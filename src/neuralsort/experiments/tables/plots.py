"""Plots of ``neuralsort report`` and of the operator benchmark (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import csv
import pathlib
from typing import Any

from .runs import CellRun, _read_log, _read_yaml
from .spec import TABLES

__all__ = [
    "exact_vs_images",
    "plot_accuracy_vs_k",
    "plot_exact_vs_images",
    "plot_exact_vs_n",
    "plot_ops_benchmark",
]


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
    _exact_axes(fig, ax, "all correct (test)", "Table 1: exact sorting accuracy against n")
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return None


def _exact_axes(fig: Any, ax: Any, ylabel: str, title: str, legend_size: int = 7) -> None:
    """The y axis, grid, legend and title of Table 1's plots of an exact-match fraction."""
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, ncol=2)
    ax.set_title(title)
    fig.tight_layout()


def _validation_curve(run: CellRun) -> tuple[int, list[tuple[int, float]]] | None:
    """``(images a step, [(step, val_exact), ...])`` from a Table 1 run's config and log."""
    cfg = _read_yaml(run.path / "config.yaml")
    if not isinstance(cfg, dict) or not cfg.get("batch_size") or not cfg.get("n"):
        return None
    points = {
        int(rec["step"]): float(rec["val_exact"])  # a resumed epoch: its last record
        for rec in _read_log(run.path / "log.jsonl")
        if "val_exact" in rec and "step" in rec
    }
    return int(cfg["batch_size"]) * int(cfg["n"]), sorted(points.items())


def exact_vs_images(runs: list[CellRun]) -> list[tuple[CellRun, list[tuple[int, float]]]]:
    """Table 1's NeuralSort runs with a validation log: ``(run, [(images, val_exact), ...])``,
    images counting every training image the scorer has seen, a warm start's included (when
    ``init_from`` is another cell of the same budget), ordered by n, row and budget."""
    curves: dict[tuple[str, str], tuple[CellRun, int, list[tuple[int, float]]]] = {}
    for run in runs:
        if run.row not in ("deterministic", "stochastic") or run.k is not None:
            continue
        got = _validation_curve(run)
        if got is not None and got[1]:
            curves[run.budget, run.cell] = (run, *got)

    def images_before(run: CellRun, seen: frozenset[str]) -> int:
        name = run.warm_start or ""
        src = curves.get((run.budget, name))
        if src is None or name in seen:
            return 0
        source, per_step, points = src
        return images_before(source, seen | {name}) + per_step * points[-1][0]

    out = []
    for run, per_step, points in curves.values():
        start = images_before(run, frozenset({run.cell}))
        out.append((run, [(start + per_step * step, v) for step, v in points]))
    return sorted(out, key=lambda c: (int(c[0].column[1:]), c[0].row, c[0].budget))


def plot_exact_vs_images(runs: list[CellRun], target: pathlib.Path) -> str | None:
    """Table 1, NeuralSort rows: validation exact-match at the run's n against the training
    images its scorer has seen (:func:`exact_vs_images`), log scale."""
    curves = exact_vs_images(runs)
    if not curves:
        return "no NeuralSort run of Table 1 with a validation log"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    budgets = sorted({run.budget for run, _ in curves})
    styles = dict(zip(budgets, ("-", "--", ":", "-."), strict=False))
    ns = sorted({int(run.column[1:]) for run, _ in curves})
    colors = {n: f"C{i}" for i, n in enumerate(ns)}
    for run, points in curves:
        n = int(run.column[1:])
        ax.plot(
            [x for x, _ in points],
            [v for _, v in points],
            ls=styles.get(run.budget, "-"),
            marker="o" if run.row == "deterministic" else "s",
            ms=3,
            color=colors[n],
            label=f"{run.row} n={n} ({run.budget})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training images seen by the scorer (warm starts included)")
    title = "Table 1: NeuralSort exact sorting against images seen"
    _exact_axes(fig, ax, "all correct (validation, at the run's n)", title, legend_size=6)
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
