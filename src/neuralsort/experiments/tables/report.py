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
import pathlib
from collections.abc import Iterable
from typing import Any

from ..config import UserError, add_flag
from .plots import (
    plot_accuracy_vs_k,
    plot_exact_vs_images,
    plot_exact_vs_n,
    plot_ops_benchmark,
)
from .readme import write_readme
from .runs import find_runs
from .spec import TABLES
from .table_text import csv_rows, table_markdown, write_csv

__all__ = ["write_report", "write_ops_plot", "add_parser", "main"]


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
        plots = {
            1: [("table1_exact_vs_n.png", plot_exact_vs_n),
                ("table1_exact_vs_images.png", plot_exact_vs_images)],
            3: [("table3_accuracy_vs_k.png", plot_accuracy_vs_k)],
        }.get(number, [])  # fmt: skip
        for name, plot in plots:
            png = results / name
            why = plot(runs, png)
            if why is None:
                plot_lines.append(f"![{png.stem}]({png.name})")
                written.append(png)
            else:
                png.unlink(missing_ok=True)  # never leave a plot of runs that are gone
                plot_lines.append(f"Plot `{png.name}` skipped: {why}.")
        md = results / f"table{number}.md"
        md.write_text(table_markdown(spec, runs, results, plot_lines))
        csv_path = results / f"table{number}.csv"
        write_csv(csv_path, csv_rows(spec, runs, results))
        written += [md, csv_path]

    bench = pathlib.Path(bench_dir) if bench_dir else results / "ops"
    files = sorted(bench.glob("ops_*.csv")) if bench.is_dir() else []
    if files:  # the operator benchmark's plot, when its CSVs are there
        written += write_ops_plot(files, results)
    return written


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
