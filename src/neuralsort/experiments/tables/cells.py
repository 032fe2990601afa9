"""How the cells of a results table read: our values and the paper's, the budget a run had, its
status, its wall time and compute, and links to its run folder."""

from __future__ import annotations

import math
import os
import pathlib
import re
from typing import Any

from .runs import CellRun
from .spec import BUDGETS, TableSpec

__all__ = [
    "fmt_paper",
    "fmt_value",
    "shown_metrics",
    "pair",
    "budget_rank",
    "best_run",
    "status_text",
    "portable",
    "budget_label",
    "budget_text",
    "minutes",
    "time_summary",
    "md_escape",
    "run_link",
    "not_run",
    "table_rows",
    "relative",
]


def fmt_value(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "frac":
        return f"{value:.3f}"
    return f"{value:.2f}"


def fmt_paper(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    return fmt_value(value, kind)


def shown_metrics(spec: TableSpec) -> list[tuple[str, str, str]]:
    """The metrics shown in the grid: the first, and the second in parentheses (not Table 3)."""
    return list(spec.metrics[:1]) if spec.number == 3 else list(spec.metrics[:2])


def pair(spec: TableSpec, values: list[float | None], paper: bool = False) -> str:
    fmt = fmt_paper if paper else fmt_value
    parts = [fmt(v, kind) for v, (_, _, kind) in zip(values, shown_metrics(spec), strict=False)]
    return parts[0] + (f" ({parts[1]})" if len(parts) > 1 else "")


def budget_rank(budget: str) -> int:
    return BUDGETS.index(budget) if budget in BUDGETS else -1


def best_run(runs: list[CellRun]) -> CellRun | None:
    """The run a grid cell shows: finished first, then the most trusted budget."""
    if not runs:
        return None
    return max(runs, key=lambda r: (r.status == "done", budget_rank(r.budget)))


def status_text(run: CellRun) -> str:
    if run.status == "done":
        return "done"
    if run.failure:
        why = run.failure if len(run.failure) <= 200 else run.failure[:197] + "..."
        return f"failed ({why}; details in reproduce.json)"
    if run.status == "partial":
        return f"half-finished ({run.progress}; resumable)"
    return f"half-finished ({run.progress}; no checkpoint)"


# an absolute path in a setting (``imagefolder:/home/me/data/c10``), up to its last part
_MACHINE_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?[/\\](?:[^/\\\s,;]+[/\\])*(?=[^/\\\s,;]+)")


def portable(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` as the tables show them: an absolute path keeps only its last part
    (``imagefolder:.../c10``), as the folders of the machine a run was made on mean nothing to a
    reader (its run folder's config.yaml has them)."""
    return {
        k: _MACHINE_PATH.sub(".../", v) if isinstance(v, str) else v for k, v in overrides.items()
    }


def budget_label(budget: str, overrides: dict[str, Any], note: str, *, full: bool) -> str:
    """The budget, then the run's note; its overrides too if ``full`` or there is no note."""
    text = budget
    if overrides and (full or not note):
        extra = ", ".join(f"{k}={v}" for k, v in sorted(portable(overrides).items()))
        text += f" (overrides: {extra})"
    return f"{text}; {note}" if note else text


def budget_text(run: CellRun) -> str:
    """A run's budget as the grid shows it (the note stands in for the overrides)."""
    return budget_label(run.budget, run.overrides, run.note, full=False)


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def time_summary(runs: list[CellRun]) -> str:
    """One line: the finished cells and the compute they took, every attempt included."""
    done = [r for r in runs if r.status == "done"]
    cpu = sum(r.cpu_s or 0.0 for r in runs) / 3600
    gpu = sum(r.gpu_s or 0.0 for r in runs) / 3600
    text = (
        f"{len(done)} finished run{'' if len(done) == 1 else 's'}; compute of all runs listed "
        f"here, resumed and failed attempts included: {cpu:.1f} CPU core-hours (wall time x "
        "torch threads)"
    )
    return text + (f" and {gpu:.1f} GPU-hours." if gpu else ".")


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def run_link(run: CellRun, results_dir: pathlib.Path) -> str:
    rel = run.path.relative_to(results_dir).as_posix()
    return f"[{rel}/]({rel}/)"


def not_run(spec: TableSpec, column: str) -> str:
    why = spec.unavailable.get(column)
    return f"not run: {why}" if why else "not run"


def table_rows(spec: TableSpec, runs: list[CellRun]) -> dict[str, list[CellRun]]:
    """Runs of the main cells by cell name (``-kK`` variants only feed the plots)."""
    main_cells = set(spec.cells())
    by_cell: dict[str, list[CellRun]] = {}
    for run in runs:
        if run.cell in main_cells:
            by_cell.setdefault(run.cell, []).append(run)
    return by_cell


def relative(path: pathlib.Path, base: pathlib.Path) -> str:
    return pathlib.Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
