"""The generated blocks of a README: compact grids of the three tables, whose values link to their
run folders, and the compute all runs took (``neuralsort report --readme FILE``)."""

from __future__ import annotations

import pathlib

from ..config import UserError
from .cells import best_run, fmt_paper, fmt_value, not_run, relative, table_rows, time_summary
from .runs import CellRun, find_runs
from .spec import TABLES, TableSpec

__all__ = ["render_readme", "write_readme"]


def compact(spec: TableSpec, runs: list[CellRun], base: pathlib.Path) -> list[str]:
    """A short grid for a README: rows x columns, ``[ours](run folder) / paper``.

    Only the first metric; columns with neither a run nor a paper value are named below the grid.
    """
    by_cell = table_rows(spec, runs)
    kind = spec.metrics[0][2]
    shown, dropped = [], []
    for col, label in spec.columns:
        cells = [spec.cell(r, col) for r, _ in spec.rows]
        has_paper = any((r, col) in spec.paper for r, _ in spec.rows)
        if has_paper or any(c in by_cell for c in cells):
            shown.append((col, label))
        else:
            dropped.append(f"{label} ({not_run(spec, col)})")
    lines = [
        f"| {spec.metrics[0][1]}: ours / paper | " + " | ".join(lb for _, lb in shown) + " |",
        "|" + " --- |" * (len(shown) + 1),
    ]
    for row, label in spec.rows:
        entries = []
        for col, _ in shown:
            paper = spec.paper.get((row, col))
            paper_txt = fmt_paper(paper[0], kind) if paper else "-"
            best = best_run(by_cell.get(spec.cell(row, col), []))
            if best is None:
                ours = "not run"
            else:
                target = relative(best.path, base)
                value = (
                    fmt_value(best.value(spec.final_metric), kind) if best.status == "done" else ""
                )
                ours = f"[{value or 'unfinished'}]({target}/)"
            entries.append(f"{ours} / {paper_txt}")
        lines.append(f"| {label} | " + " | ".join(entries) + " |")
    if dropped:
        lines += ["", "Not in this grid: " + "; ".join(dropped) + "."]
    return lines


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
        f"table{n}": compact(TABLES[n], runs, pathlib.Path(base)) for n, runs in all_runs.items()
    }
    blocks["compute"] = [time_summary([r for runs in all_runs.values() for r in runs])]
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
