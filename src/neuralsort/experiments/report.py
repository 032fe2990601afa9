"""``neuralsort report RESULTS_DIR``: rebuild the paper's tables from run folders alone.

``neuralsort reproduce`` writes one run folder per table cell and budget,
``RESULTS_DIR/table{N}/{budget}/{cell}/`` (``config.yaml``, ``log.jsonl``, ``metrics.json`` and
``reproduce.json``, which records the hardware). This command reads those folders, and nothing
else, and writes for each table ``table{N}.md`` and ``table{N}.csv``: our value beside the paper's,
the budget and hardware it came from, and a relative link to the run folder. Cells without a
folder say "not run"; folders without final metrics say how far they got. Numbers are never
filled in from the paper.

Plots (PNG): test accuracy against k for Table 3 (rows with finished runs at several k), exact
sorting accuracy against n for Table 1, and the operator benchmark (``benchmarks/ops.py``'s
``ops_*.csv``) as a grouped bar chart of time relative to the softmax floor.

The paper's numbers (Grover et al., ICLR 2019; Tables 1-3) are the constants :data:`TABLES`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import pathlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .run import UserError, add_flag

__all__ = [
    "BUDGETS",
    "TABLES",
    "TableSpec",
    "CellRun",
    "cell_status",
    "find_runs",
    "write_report",
    "add_parser",
    "main",
]

BUDGETS: tuple[str, ...] = ("smoke", "cpu", "paper")  # in increasing order of trust


@dataclass(frozen=True)
class TableSpec:
    """One of the paper's tables: its rows, columns, metrics and the paper's numbers.

    A cell is named ``f"{column}-{row}"`` (``mnist-dknn-deterministic``, ``n5-sinkhorn``); Table 3
    also accepts extra cells ``f"{column}-{row}-k{K}"`` that rerun a row at another ``k``.
    ``metrics`` lists ``(metrics.json key, label, kind)`` with kind ``pct`` (a fraction shown in
    percent), ``frac`` (three decimals) or ``num`` (two decimals); ``paper`` maps
    ``(row, column)`` to the paper's values of the same metrics (``None`` where absent).
    """

    number: int
    title: str
    rows: tuple[tuple[str, str], ...]
    columns: tuple[tuple[str, str], ...]
    metrics: tuple[tuple[str, str, str], ...]
    paper: dict[tuple[str, str], tuple[float | None, ...]] = field(default_factory=dict)
    note: str = ""

    @property
    def final_metric(self) -> str:
        """The metrics.json key whose presence marks a finished run."""
        return self.metrics[0][0]

    def cell(self, row: str, column: str) -> str:
        """The cell name of ``row`` x ``column``."""
        return f"{column}-{row}"

    def cells(self) -> list[str]:
        """All main cell names, column by column."""
        return [self.cell(r, c) for c, _ in self.columns for r, _ in self.rows]

    def parse(self, cell: str) -> tuple[str, str, int | None] | None:
        """``(row, column, k)`` of a cell name (``k`` only for ``-kK`` variants), or None."""
        for col, _ in self.columns:
            if not cell.startswith(col + "-"):
                continue
            rest = cell[len(col) + 1 :]
            k = None
            m = re.fullmatch(r"(.+)-k(\d+)", rest)
            if m and self.number == 3 and m.group(1) in dict(self.rows):
                rest, k = m.group(1), int(m.group(2))
            if rest in dict(self.rows):
                return rest, col, k
        return None


_T3_ROWS = (
    ("knn", "kNN"),
    ("knn-pca", "kNN+PCA"),
    ("knn-ae", "kNN+AE"),
    ("dknn-deterministic", "kNN + deterministic NeuralSort"),
    ("dknn-stochastic", "kNN + stochastic NeuralSort"),
    ("cnn", "CNN (no kNN)"),
)
_T3_PAPER = {
    "mnist": (0.972, 0.976, 0.976, 0.995, 0.994, 0.994),
    "fashion-mnist": (0.858, 0.859, 0.875, 0.935, 0.934, 0.934),
    "cifar10": (0.354, 0.409, 0.442, 0.907, 0.895, 0.951),
}
_T1_ROWS = (
    ("vanilla", "Vanilla RS"),
    ("sinkhorn", "Sinkhorn"),
    ("gumbel-sinkhorn", "Gumbel-Sinkhorn"),
    ("deterministic", "Deterministic NeuralSort"),
    ("stochastic", "Stochastic NeuralSort"),
)
_T1_PAPER = {  # (all correct, positions correct) for n = 3, 5, 7, 9, 15
    "vanilla": ((0.467, 0.801), (0.093, 0.603), (0.009, 0.492), (0.0, 0.113), (0.0, 0.067)),
    "sinkhorn": ((0.462, 0.561), (0.038, 0.293), (0.001, 0.197), (0.0, 0.143), (0.0, 0.078)),
    "gumbel-sinkhorn": (
        (0.484, 0.575),
        (0.033, 0.295),
        (0.001, 0.189),
        (0.0, 0.146),
        (0.0, 0.078),
    ),
    "deterministic": (
        (0.930, 0.951),
        (0.837, 0.927),
        (0.738, 0.909),
        (0.649, 0.896),
        (0.386, 0.857),
    ),
    "stochastic": ((0.927, 0.950), (0.835, 0.926), (0.741, 0.909), (0.646, 0.895), (0.418, 0.862)),
}
_T1_N = (3, 5, 7, 9, 15)
_T2_ROWS = (("constant", "Constant"), ("vanilla", "Vanilla NN"), *_T1_ROWS[1:])
_T2_PAPER = {  # (MSE x 1e-4, R^2) for n = 5, 9, 15
    "constant": ((356.79, 0.00), (227.31, 0.00), (146.94, 0.00)),
    "vanilla": ((1004.70, 0.85), (699.15, 0.82), (562.97, 0.79)),
    "sinkhorn": ((343.60, 0.25), (231.87, 0.19), (156.27, 0.04)),
    "gumbel-sinkhorn": ((344.28, 0.25), (232.56, 0.23), (157.34, 0.06)),
    "deterministic": ((45.50, 0.95), (34.98, 0.94), (34.78, 0.92)),
    "stochastic": ((33.80, 0.94), (31.43, 0.93), (29.34, 0.90)),
}
_T2_N = (5, 9, 15)

TABLES: dict[int, TableSpec] = {
    1: TableSpec(
        number=1,
        title="Table 1: sorting four-digit MNIST numbers, all correct (positions correct)",
        rows=_T1_ROWS,
        columns=tuple((f"n{n}", f"n={n}") for n in _T1_N),
        metrics=(
            ("test_exact", "all correct", "frac"),
            ("test_elementwise", "positions correct", "frac"),
        ),
        paper={
            (row, f"n{n}"): vals
            for row, per_n in _T1_PAPER.items()
            for n, vals in zip(_T1_N, per_n, strict=True)
        },
    ),
    2: TableSpec(
        number=2,
        title="Table 2: median regression, test MSE x 1e-4 (R^2)",
        rows=_T2_ROWS,
        columns=tuple((f"n{n}", f"n={n}") for n in _T2_N),
        metrics=(
            ("test_mse", "MSE x 1e-4", "num"),
            ("test_r2_corr", "R^2 (squared correlation)", "frac"),
            ("test_r2", "1 - MSE/Var", "frac"),
        ),
        paper={
            (row, f"n{n}"): (*vals, None)
            for row, per_n in _T2_PAPER.items()
            for n, vals in zip(_T2_N, per_n, strict=True)
        },
        note="The paper's R^2 column behaves like a squared correlation: compare it with our "
        "`test_r2_corr`; `test_r2` (1 - MSE/Var) is shown beside it.",
    ),
    3: TableSpec(
        number=3,
        title="Table 3: test accuracy of kNN classifiers and baselines",
        rows=_T3_ROWS,
        columns=(
            ("mnist", "MNIST"),
            ("fashion-mnist", "Fashion-MNIST"),
            ("cifar10", "CIFAR-10"),
            ("cifar100", "CIFAR-100"),
        ),
        metrics=(("test_acc", "test accuracy", "pct"), ("val_acc", "validation accuracy", "pct")),
        paper={
            (row, col): (vals[i], None)
            for col, vals in _T3_PAPER.items()
            for i, (row, _) in enumerate(_T3_ROWS)
        },
        note="CIFAR-100 is not in the paper's table; its cells have no paper value.",
    ),
}


def cell_status(path: pathlib.Path, final_metric: str) -> str:
    """State of one run folder.

    ``done`` (metrics.json holds ``final_metric``), ``partial`` (a ``last.pt`` checkpoint to
    resume from, no final metrics), ``started`` (a folder with something in it but neither),
    ``missing`` (no folder, or an empty one).
    """
    if not path.is_dir():
        return "missing"
    metrics = _read_json(path / "metrics.json")
    if isinstance(metrics, dict) and metrics.get(final_metric) is not None:
        return "done"
    if (path / "last.pt").is_file():
        return "partial"
    if any(path.iterdir()):
        return "started"
    return "missing"


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: pathlib.Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _read_log(path: pathlib.Path) -> list[dict[str, Any]]:
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(rec, dict):
            records.append(rec)
    return records


@dataclass
class CellRun:
    """What one run folder says about one table cell."""

    table: int
    budget: str
    cell: str
    row: str
    column: str
    k: int | None
    path: pathlib.Path
    status: str
    metrics: dict[str, Any]
    hardware: str
    progress: str
    overrides: dict[str, Any]
    failure: str | None
    wall_s: float | None = None

    def value(self, key: str) -> float | None:
        """A metric of a finished run (None if absent or not finished)."""
        if self.status != "done":
            return None
        v = self.metrics.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _hardware(path: pathlib.Path, metrics: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The hardware a run used: reproduce.json's record, else what config/metrics say."""
    rec = _read_json(path / "reproduce.json")
    seen: list[str] = []
    if isinstance(rec, dict):
        for attempt in rec.get("attempts", []):
            hw = attempt.get("hardware", {}) if isinstance(attempt, dict) else {}
            summary = hw.get("summary") if isinstance(hw, dict) else None
            if summary and summary not in seen:
                seen.append(summary)
    if seen:
        return " + ".join(seen)
    run_info = cfg.get("_run", {}) if isinstance(cfg, dict) else {}
    versions = run_info.get("versions", {}) if isinstance(run_info, dict) else {}
    torch_v = str(versions.get("torch") or "") if isinstance(versions, dict) else ""
    device = metrics.get("device")
    if not device and cfg.get("device") not in (None, "auto"):
        device = cfg.get("device")
    if not device and torch_v.endswith("+cpu"):
        device = "cpu"  # a CPU-only torch build cannot have used a GPU
    if not device:
        return "unknown"
    text = f"{device}"
    threads = cfg.get("threads") or cfg.get("num_threads")
    if str(device).startswith("cpu") and isinstance(threads, int):
        text += f", {threads} thread{'s' if threads != 1 else ''}"
    if torch_v:
        text += f" (torch {torch_v})"
    return text


def _progress(path: pathlib.Path, cfg: dict[str, Any], status: str) -> str:
    if status == "done":
        return ""
    epochs = [
        int(r["epoch"])
        for r in _read_log(path / "log.jsonl")
        if "event" not in r and isinstance(r.get("epoch"), int | float)
    ]
    total = cfg.get("num_epochs") if isinstance(cfg, dict) else None
    done = max(epochs) if epochs else 0
    if total:
        return f"epoch {done} of {total}"
    return f"epoch {done}" if epochs else "no epoch finished"


def _load_run(spec: TableSpec, budget: str, path: pathlib.Path) -> CellRun | None:
    parsed = spec.parse(path.name)
    if parsed is None:
        return None
    row, column, k = parsed
    status = cell_status(path, spec.final_metric)
    metrics = _read_json(path / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else {}
    cfg = _read_yaml(path / "config.yaml")
    cfg = cfg if isinstance(cfg, dict) else {}
    if k is None and isinstance(metrics.get("k") or cfg.get("k"), int):
        k = int(metrics.get("k") or cfg.get("k"))
    rec = _read_json(path / "reproduce.json")
    overrides: dict[str, Any] = {}
    failure = None
    wall = metrics.get("wall_time_s", metrics.get("train_seconds"))
    if isinstance(rec, dict):
        overrides = dict(rec.get("overrides") or {})
        attempts = [a for a in rec.get("attempts", []) if isinstance(a, dict)]
        if attempts and status != "done" and attempts[-1].get("status") == "failed":
            failure = str(attempts[-1].get("error") or f"exit status {attempts[-1].get('rc')}")
        walls = [a["wall_s"] for a in attempts if isinstance(a.get("wall_s"), int | float)]
        if walls:
            wall = sum(walls)  # every attempt, resumed ones included
    return CellRun(
        table=spec.number,
        budget=budget,
        cell=path.name,
        row=row,
        column=column,
        k=k,
        path=path,
        status=status,
        metrics=metrics,
        hardware=_hardware(path, metrics, cfg),
        progress=_progress(path, cfg, status),
        overrides=overrides,
        failure=failure,
        wall_s=float(wall) if isinstance(wall, int | float) else None,
    )


def find_runs(results_dir: pathlib.Path, table: int) -> list[CellRun]:
    """Every run folder ``results_dir/table{N}/{budget}/{cell}/`` of one table."""
    spec = TABLES[table]
    runs = []
    base = results_dir / f"table{table}"
    if not base.is_dir():
        return []
    for budget_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for cell_dir in sorted(p for p in budget_dir.iterdir() if p.is_dir()):
            run = _load_run(spec, budget_dir.name, cell_dir)
            if run is not None and run.status != "missing":
                runs.append(run)
    return runs


def _fmt(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "frac":
        return f"{value:.3f}"
    return f"{value:.2f}"


def _fmt_paper(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    return _fmt(value, kind)


def _shown(spec: TableSpec) -> list[tuple[str, str, str]]:
    """The metrics shown in the grid: the first, and the second in parentheses (not Table 3)."""
    return list(spec.metrics[:1]) if spec.number == 3 else list(spec.metrics[:2])


def _pair(spec: TableSpec, values: list[float | None], paper: bool = False) -> str:
    fmt = _fmt_paper if paper else _fmt
    shown = _shown(spec)
    parts = [fmt(v, kind) for v, (_, _, kind) in zip(values, shown, strict=False)]
    return parts[0] + (f" ({parts[1]})" if len(parts) > 1 else "")


def _budget_rank(budget: str) -> int:
    return BUDGETS.index(budget) if budget in BUDGETS else -1


def _best_run(runs: list[CellRun]) -> CellRun | None:
    """The run a grid cell shows: finished first, then the most trusted budget."""
    if not runs:
        return None
    return max(runs, key=lambda r: (r.status == "done", _budget_rank(r.budget)))


def _status_text(run: CellRun) -> str:
    if run.status == "done":
        return "done"
    if run.failure:
        why = run.failure if len(run.failure) <= 200 else run.failure[:197] + "..."
        return f"failed ({why}; details in reproduce.json)"
    if run.status == "partial":
        return f"half-finished ({run.progress}; resumable)"
    return f"half-finished ({run.progress}; no checkpoint)"


def _budget_text(run: CellRun) -> str:
    if not run.overrides:
        return run.budget
    extra = ", ".join(f"{k}={v}" for k, v in sorted(run.overrides.items()))
    return f"{run.budget} (overrides: {extra})"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _link(run: CellRun, results_dir: pathlib.Path) -> str:
    rel = run.path.relative_to(results_dir).as_posix()
    return f"[{rel}/]({rel}/)"


def _table_rows(spec: TableSpec, runs: list[CellRun]) -> dict[str, list[CellRun]]:
    """Runs of the main cells by cell name (``-kK`` variants only feed the plots)."""
    main_cells = set(spec.cells())
    by_cell: dict[str, list[CellRun]] = {}
    for run in runs:
        if run.cell in main_cells:
            by_cell.setdefault(run.cell, []).append(run)
    return by_cell


def _csv_rows(spec: TableSpec, runs: list[CellRun], results_dir: pathlib.Path) -> list[dict]:
    rows: list[dict[str, Any]] = []
    by_cell: dict[str, list[CellRun]] = {}
    for run in runs:
        by_cell.setdefault(run.cell, []).append(run)
    names = spec.cells() + sorted(c for c in by_cell if c not in spec.cells())
    for name in names:
        parsed = spec.parse(name)
        if parsed is None:
            continue
        row, column, _ = parsed
        paper = spec.paper.get((row, column), ())
        cell_runs = sorted(by_cell.get(name, []), key=lambda r: _budget_rank(r.budget))
        for run in cell_runs or [None]:
            rec: dict[str, Any] = {
                "table": spec.number,
                "cell": name,
                "row": row,
                "column": column,
                "k": run.k if run else None,
                "budget": run.budget if run else "",
                "overrides": (
                    json.dumps(run.overrides, sort_keys=True) if run and run.overrides else ""
                ),
                "status": _status_text(run) if run else "not run",
            }
            for i, (key, _, _) in enumerate(spec.metrics):
                rec[f"ours_{key}"] = run.value(key) if run else None
                rec[f"paper_{key}"] = paper[i] if i < len(paper) else None
            rec["hardware"] = run.hardware if run else ""
            rec["wall_time_s"] = round(run.wall_s, 1) if run and run.wall_s is not None else None
            rec["run_dir"] = run.path.relative_to(results_dir).as_posix() if run else ""
            rows.append(rec)
    return rows


def _write_csv(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for rec in rows:
            writer.writerow({k: "" if v is None else v for k, v in rec.items()})


def _markdown(
    spec: TableSpec,
    runs: list[CellRun],
    results_dir: pathlib.Path,
    plot_lines: list[str],
) -> str:
    by_cell = _table_rows(spec, runs)
    shown = _shown(spec)
    what = " (".join(label for _, label, _ in shown) + (")" if len(shown) > 1 else "")
    lines = [
        f"# {spec.title}",
        "",
        "Generated by `neuralsort report` from the run folders below; do not edit by hand.",
        f"Each entry: **ours** / paper, then the budget of our run. Values: {what}.",
        "Ours comes only from a finished run's `metrics.json`; the paper's numbers are never "
        "copied into our column.",
    ]
    if spec.note:
        lines += ["", spec.note]
    header = "| | " + " | ".join(label for _, label in spec.columns) + " |"
    lines += ["", header, "|" + " --- |" * (len(spec.columns) + 1)]
    for row, label in spec.rows:
        entries = []
        for col, _ in spec.columns:
            paper = spec.paper.get((row, col))
            paper_txt = _pair(spec, list(paper), paper=True) if paper else "-"
            best = _best_run(by_cell.get(spec.cell(row, col), []))
            if best is None:
                ours = "not run"
            elif best.status == "done":
                vals = [best.value(key) for key, _, _ in shown]
                ours = f"**{_pair(spec, vals)}** ({_budget_text(best)})"
            elif best.failure:
                ours = f"failed ({best.budget})"
            else:
                ours = f"half-finished ({best.budget}, {best.progress})"
            entries.append(f"{ours} / {paper_txt}")
        lines.append(f"| {label} | " + " | ".join(_md_escape(e) for e in entries) + " |")

    lines += [
        "",
        "## Runs",
        "",
        "| cell | budget | status | "
        + " | ".join(f"ours: {label}" for _, label, _ in spec.metrics)
        + " | paper | hardware | run folder |",
        "|" + " --- |" * (len(spec.metrics) + 6),
    ]
    for rec in _csv_rows(spec, runs, results_dir):
        if rec["cell"] not in spec.cells():
            continue
        ours = [
            _fmt(rec[f"ours_{key}"], kind) if rec["budget"] else "-"
            for key, _, kind in spec.metrics
        ]
        paper_vals = [rec[f"paper_{key}"] for key, _, _ in shown]
        paper_txt = (
            _pair(spec, paper_vals, paper=True) if any(v is not None for v in paper_vals) else "-"
        )
        run_dir = rec["run_dir"]
        link = f"[{run_dir}/]({run_dir}/)" if run_dir else "-"
        budget = rec["budget"] or "-"
        if rec["overrides"]:
            pairs = json.loads(rec["overrides"]).items()
            budget += " (overrides: " + ", ".join(f"{k}={v}" for k, v in sorted(pairs)) + ")"
        cells = [rec["cell"], budget, rec["status"], *ours, paper_txt, rec["hardware"] or "-", link]
        lines.append("| " + " | ".join(_md_escape(str(c)) for c in cells) + " |")

    extra = [r for r in runs if r.cell not in spec.cells()]
    if extra:
        lines += ["", "Other runs of this table (variants at another k), used in the plots:", ""]
        for run in sorted(extra, key=lambda r: (r.cell, r.budget)):
            val = _fmt(run.value(spec.final_metric), spec.metrics[0][2])
            lines.append(
                f"- {run.cell} ({_budget_text(run)}, {run.hardware}): {val}, "
                f"{_status_text(run)}, {_link(run, results_dir)}"
            )
    if plot_lines:
        lines += ["", "## Plots", "", *plot_lines]
    return "\n".join(lines) + "\n"


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
        series.setdefault((run.column, run.row, run.budget), {})[run.k] = acc
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
        return "no benchmark CSV (benchmarks/results/ops_*.csv with B,n,op,vs_floor) found"
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


def default_bench_dir() -> pathlib.Path | None:
    """``benchmarks/results`` under the working folder, else next to the source tree."""
    for base in (pathlib.Path.cwd(), pathlib.Path(__file__).resolve().parents[3]):
        p = base / "benchmarks" / "results"
        if p.is_dir():
            return p
    return None


def write_report(
    results_dir: str | pathlib.Path,
    *,
    bench_dir: str | pathlib.Path | None = None,
    tables: Iterable[int] = (1, 2, 3),
) -> list[pathlib.Path]:
    """Write ``table{N}.md``/``.csv`` and the plots into ``results_dir``; return the files."""
    results = pathlib.Path(results_dir)
    if not results.is_dir():
        raise UserError(
            f"results folder {results} does not exist; run `neuralsort reproduce` first"
        )
    written: list[pathlib.Path] = []
    for number in tables:
        spec = TABLES[number]
        runs = find_runs(results, number)
        plot_lines: list[str] = []
        if number == 3:
            png = results / "table3_accuracy_vs_k.png"
            why = plot_accuracy_vs_k(runs, png)
        elif number == 1:
            png = results / "table1_exact_vs_n.png"
            why = plot_exact_vs_n(runs, png)
        else:
            png, why = None, None
        if png is not None:
            if why is None:
                plot_lines.append(f"![{png.stem}]({png.name})")
                written.append(png)
            else:
                png.unlink(missing_ok=True)  # never leave a plot of runs that are gone
                plot_lines.append(f"Plot `{png.name}` skipped: {why}.")
        md = results / f"table{number}.md"
        md.write_text(_markdown(spec, runs, results, plot_lines))
        csv_path = results / f"table{number}.csv"
        _write_csv(csv_path, _csv_rows(spec, runs, results))
        written += [md, csv_path]

    bench = pathlib.Path(bench_dir) if bench_dir else default_bench_dir()
    files = sorted(bench.glob("ops_*.csv")) if bench and bench.is_dir() else []
    png = results / "ops_benchmark.png"
    why = plot_ops_benchmark(files, png)
    note = results / "ops_benchmark.md"
    if why is None:
        sources = ", ".join(f"`{p.name}`" for p in files)
        note.write_text(
            "# Operator benchmark\n\nForward + backward time relative to the floor (one softmax "
            "over a B x n x n tensor), per operator and size; from `benchmarks/ops.py` "
            f"({sources}; the file name names the hardware).\n\n![ops benchmark]({png.name})\n"
        )
        written += [png, note]
    else:
        note.write_text(f"# Operator benchmark\n\nPlot skipped: {why}.\n")
        written.append(note)
    return written


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``neuralsort report``."""
    p = subparsers.add_parser(
        "report",
        help="rebuild table{1,2,3}.md/.csv and plots from the run folders of `reproduce`",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "results_dir",
        nargs="?",
        default="results",
        help="the results folder `neuralsort reproduce --results` wrote to (default results)",
    )
    add_flag(
        p,
        "--bench_dir",
        metavar="DIR",
        help="folder of benchmarks/ops.py's ops_*.csv (default: benchmarks/results)",
    )
    add_flag(p, "--table", type=int, choices=[1, 2, 3], nargs="+", help="tables (default all)")
    return p


def main(args: argparse.Namespace) -> int:
    """Entry point of ``neuralsort report``."""
    written = write_report(
        args.results_dir, bench_dir=args.bench_dir, tables=args.table or (1, 2, 3)
    )
    for path in written:
        print(path)
    return 0
