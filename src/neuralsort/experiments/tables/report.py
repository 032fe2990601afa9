"""``neuralsort report RESULTS_DIR``: rebuild the paper's tables from run folders alone.

``neuralsort reproduce`` writes one run folder per table cell and budget,
``RESULTS_DIR/table{N}/{budget}/{cell}/`` (``config.yaml``, ``log.jsonl``, ``metrics.json`` and
``reproduce.json``, which records the hardware). This command reads those folders, and nothing
else, and writes for each table ``table{N}.md`` and ``table{N}.csv``: our value beside the paper's,
the budget and hardware it came from, and a relative link to the run folder. Cells without a
folder say "not run"; folders without final metrics say how far they got. Numbers are never
filled in from the paper.

Plots (PNG): test accuracy against k for Table 3 (rows with finished runs at several k), exact
sorting accuracy against n for Table 1, and, when ``RESULTS_DIR/ops/`` (or ``--bench_dir``) holds
``benchmarks/ops.py``'s ``ops_*.csv``, the operator benchmark as a grouped bar chart of time
relative to the softmax floor. The paper's numbers live in :mod:`.spec`.

With ``--readme FILE`` it also rewrites FILE's generated blocks (compact grids of the three
tables, and the compute all runs took), so that a README shows the results without copying them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
import re
from collections.abc import Iterable
from typing import Any

from ..config import UserError, add_flag
from .plots import plot_accuracy_vs_k, plot_exact_vs_n, plot_ops_benchmark
from .runs import CellRun, find_runs
from .spec import BUDGETS, TABLES, TableSpec

__all__ = ["write_report", "render_readme", "write_readme", "add_parser", "main"]


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


# an absolute path in a setting (``imagefolder:/home/me/data/c10``), up to its last part
_MACHINE_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?[/\\](?:[^/\\\s,;]+[/\\])*(?=[^/\\\s,;]+)")


def _portable(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` as the tables show them: an absolute path keeps only its last part
    (``imagefolder:.../c10``), as the folders of the machine a run was made on mean nothing to a
    reader (its run folder's config.yaml has them)."""
    return {
        k: _MACHINE_PATH.sub(".../", v) if isinstance(v, str) else v for k, v in overrides.items()
    }


def _budget_label(budget: str, overrides: dict[str, Any], note: str, *, full: bool) -> str:
    """The budget, then the run's note; its overrides too if ``full`` or there is no note."""
    text = budget
    if overrides and (full or not note):
        extra = ", ".join(f"{k}={v}" for k, v in sorted(_portable(overrides).items()))
        text += f" (overrides: {extra})"
    return f"{text}; {note}" if note else text


def _budget_text(run: CellRun) -> str:
    """A run's budget as the grid shows it (the note stands in for the overrides)."""
    return _budget_label(run.budget, run.overrides, run.note, full=False)


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _time_summary(runs: list[CellRun]) -> str:
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


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _link(run: CellRun, results_dir: pathlib.Path) -> str:
    rel = run.path.relative_to(results_dir).as_posix()
    return f"[{rel}/]({rel}/)"


def _not_run(spec: TableSpec, column: str) -> str:
    why = spec.unavailable.get(column)
    return f"not run: {why}" if why else "not run"


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
                    json.dumps(_portable(run.overrides), sort_keys=True)
                    if run and run.overrides
                    else ""
                ),
                "status": _status_text(run) if run else _not_run(spec, column),
                "note": run.note if run else "",
            }
            for i, (key, _, _) in enumerate(spec.metrics):
                rec[f"ours_{key}"] = run.value(key) if run else None
                rec[f"paper_{key}"] = paper[i] if i < len(paper) else None
            rec["hardware"] = run.hardware if run else ""
            rec["wall_time_s"] = round(run.wall_s, 1) if run and run.wall_s is not None else None
            rec["cpu_core_s"] = round(run.cpu_s, 1) if run and run.cpu_s is not None else None
            rec["net"] = run.net if run else ""
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
                ours = _not_run(spec, col)
            elif best.status == "done":
                vals = [best.value(key) for key, _, _ in shown]
                ours = f"**{_pair(spec, vals)}** ({_budget_text(best)})"
            elif best.failure:
                ours = f"failed ({best.budget})"
            else:
                ours = f"half-finished ({best.budget}, {best.progress})"
            entries.append(f"{ours} / {paper_txt}")
        lines.append(f"| {label} | " + " | ".join(_md_escape(e) for e in entries) + " |")
    lines += _every_n(spec, runs)

    nets = spec.number == 3  # Tables 1 and 2 always train the same multi-digit CNN
    lines += [
        "",
        "## Runs",
        "",
        "| cell | budget | status | "
        + " | ".join(f"ours: {label}" for _, label, _ in spec.metrics)
        + " | paper | "
        + ("net | " if nets else "")
        + "hardware | wall time | run folder |",
        "|" + " --- |" * (len(spec.metrics) + 7 + nets),
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
        overrides = json.loads(rec["overrides"]) if rec["overrides"] else {}
        budget = _budget_label(rec["budget"] or "-", overrides, rec["note"], full=True)
        net = [rec["net"] or "-"] if nets else []
        wall = _minutes(rec["wall_time_s"])
        hardware = rec["hardware"] or "-"
        cells = [rec["cell"], budget, rec["status"], *ours, paper_txt, *net, hardware, wall, link]
        lines.append("| " + " | ".join(_md_escape(str(c)) for c in cells) + " |")

    lines += ["", _time_summary(runs)]
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


def _every_n(spec: TableSpec, runs: list[CellRun]) -> list[str]:
    """The block "One model, every n": each finished run that was also tested at the table's other
    n (``test_by_n`` in its ``metrics.json``), its first metric at every column's n."""
    key, label, kind = spec.metrics[0]
    inner = key.removeprefix("test_")
    main_cells = set(spec.cells())
    tested = [
        r
        for r in runs
        if r.cell in main_cells and r.status == "done" and len(r.metrics.get("test_by_n") or {}) > 1
    ]
    if not tested:
        return []
    rows = [row for row, _ in spec.rows]
    cols = [col for col, _ in spec.columns]
    tested.sort(key=lambda r: (rows.index(r.row), -_budget_rank(r.budget), cols.index(r.column)))
    row_label = dict(spec.rows)
    lines = [
        "",
        "## One model, every n",
        "",
        f"Each of these models (its nets do not depend on n) was also tested on the fixed test "
        f"sets of the other n: the same sets as the cells trained at that n. Values: {label}; "
        "**bold**: the n it was trained at.",
        "",
        "| model: trained at (budget) | " + " | ".join(lb for _, lb in spec.columns) + " |",
        "|" + " --- |" * (len(cols) + 1),
    ]
    for run in tested:
        by_n = run.metrics["test_by_n"]
        entries = []
        for col in cols:
            entry = by_n.get(col.removeprefix("n"))
            value = entry.get(inner) if isinstance(entry, dict) else None
            text = _fmt(value if isinstance(value, int | float) else None, kind)
            entries.append(f"**{text}**" if col == run.column else text)
        name = f"{row_label[run.row]}: {dict(spec.columns)[run.column]} ({_budget_text(run)})"
        lines.append(f"| {_md_escape(name)} | " + " | ".join(entries) + " |")
    for row in dict.fromkeys(r.row for r in tested):
        paper = [spec.paper.get((row, col)) for col in cols]
        entries = [_fmt_paper(v[0], kind) if v else "-" for v in paper]
        lines.append(
            f"| {row_label[row]}: paper, trained at each n | " + " | ".join(entries) + " |"
        )
    return lines


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

    bench = pathlib.Path(bench_dir) if bench_dir else results / "ops"
    files = sorted(bench.glob("ops_*.csv")) if bench.is_dir() else []
    if files:  # the operator benchmark's plot, when its CSVs are there
        written += write_ops_plot(files, results)
    return written


def _compact(spec: TableSpec, runs: list[CellRun], base: pathlib.Path) -> list[str]:
    """A short grid for a README: rows x columns, ``[ours](run folder) / paper``.

    Only the first metric; columns with neither a run nor a paper value are named below the grid.
    """
    by_cell = _table_rows(spec, runs)
    kind = spec.metrics[0][2]
    shown, dropped = [], []
    for col, label in spec.columns:
        cells = [spec.cell(r, col) for r, _ in spec.rows]
        has_paper = any((r, col) in spec.paper for r, _ in spec.rows)
        if has_paper or any(c in by_cell for c in cells):
            shown.append((col, label))
        else:
            dropped.append(f"{label} ({_not_run(spec, col)})")
    lines = [
        f"| {spec.metrics[0][1]}: ours / paper | " + " | ".join(lb for _, lb in shown) + " |",
        "|" + " --- |" * (len(shown) + 1),
    ]
    for row, label in spec.rows:
        entries = []
        for col, _ in shown:
            paper = spec.paper.get((row, col))
            paper_txt = _fmt_paper(paper[0], kind) if paper else "-"
            best = _best_run(by_cell.get(spec.cell(row, col), []))
            if best is None:
                ours = "not run"
            else:
                target = _relative(best.path, base)
                value = _fmt(best.value(spec.final_metric), kind) if best.status == "done" else ""
                ours = f"[{value or 'unfinished'}]({target}/)"
            entries.append(f"{ours} / {paper_txt}")
        lines.append(f"| {label} | " + " | ".join(entries) + " |")
    if dropped:
        lines += ["", "Not in this grid: " + "; ".join(dropped) + "."]
    return lines


def _relative(path: pathlib.Path, base: pathlib.Path) -> str:
    return pathlib.Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


_BLOCK = "<!-- report:{} -->"
_END = "<!-- /report:{} -->"


def render_readme(
    text: str, base: str | pathlib.Path, results_dir: str | pathlib.Path
) -> tuple[str, list[str]]:
    """``text`` with its generated blocks filled from the run folders, and the blocks' names.

    A block is the text between ``<!-- report:table1 -->`` and ``<!-- /report:table1 -->`` (a
    compact grid of Table 1 whose values link to their run folders, relative to the folder
    ``base``; likewise ``table2``, ``table3``) or ``<!-- report:compute -->`` (the CPU
    core-hours of every run). Text outside the blocks is kept, so a README can comment on the
    numbers without copying them.
    """
    results = pathlib.Path(results_dir)
    all_runs = {n: find_runs(results, n) for n in TABLES}
    blocks: dict[str, list[str]] = {
        f"table{n}": _compact(TABLES[n], runs, pathlib.Path(base)) for n, runs in all_runs.items()
    }
    blocks["compute"] = [_time_summary([r for runs in all_runs.values() for r in runs])]
    done = []
    for name, lines in blocks.items():
        start, end = _BLOCK.format(name), _END.format(name)
        if start not in text:
            continue
        head, rest = text.split(start, 1)
        if end not in rest:
            raise UserError(f"{start} has no closing {end}")
        tail = rest.split(end, 1)[1]
        text = head + start + "\n" + "\n".join(lines) + "\n" + end + tail
        done.append(name)
    return text, done


def write_readme(readme: str | pathlib.Path, results_dir: str | pathlib.Path) -> list[str]:
    """Rewrite the generated blocks of a README (see :func:`render_readme`); return their names."""
    path = pathlib.Path(readme)
    text, done = render_readme(path.read_text(), path.parent, results_dir)
    if not done:
        raise UserError(f"{path} has no block to fill, such as {_BLOCK.format('table1')}")
    path.write_text(text)
    return done


def write_ops_plot(files: list[pathlib.Path], results: pathlib.Path) -> list[pathlib.Path]:
    """``ops_benchmark.png`` and ``ops_benchmark.md`` from ``benchmarks/ops.py``'s CSV files."""
    png = results / "ops_benchmark.png"
    why = plot_ops_benchmark(files, png)
    note = results / "ops_benchmark.md"
    if why is not None:
        note.write_text(f"# Operator benchmark\n\nPlot skipped: {why}.\n")
        return [note]
    sources = ", ".join(f"`{p.name}`" for p in files)
    note.write_text(
        "# Operator benchmark\n\nForward + backward time relative to the floor (one softmax "
        "over a B x n x n tensor), per operator and size; from `benchmarks/ops.py` "
        f"({sources}; the file name names the hardware).\n\n![ops benchmark]({png.name})\n"
    )
    return [png, note]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``neuralsort report``."""
    p = subparsers.add_parser(
        "report",
        help="rebuild table{1,2,3}.md/.csv and plots from the run folders of `reproduce`",
        description="Rebuild the paper's tables (table{N}.md and .csv) and their plots from the "
        "run folders of `neuralsort reproduce` alone.",
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
        help="folder of benchmarks/ops.py's ops_*.csv (default: RESULTS_DIR/ops)",
    )
    add_flag(p, "--table", type=int, choices=[1, 2, 3], nargs="+", help="tables (default all)")
    add_flag(
        p,
        "--readme",
        metavar="FILE",
        help="also rewrite FILE's generated blocks (<!-- report:table1 --> ... "
        "<!-- /report:table1 -->, likewise table2, table3, compute) from the run folders",
    )
    return p


def main(args: argparse.Namespace) -> int:
    """Entry point of ``neuralsort report``."""
    written = write_report(
        args.results_dir, bench_dir=args.bench_dir, tables=args.table or (1, 2, 3)
    )
    for path in written:
        print(path)
    if args.readme:
        names = write_readme(args.readme, args.results_dir)
        print(f"{args.readme} ({', '.join(names)})")
    return 0
