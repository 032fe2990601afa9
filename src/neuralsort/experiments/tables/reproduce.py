"""``neuralsort reproduce``: run every cell of one of the paper's tables from its grid.

Each table is one grid file, ``configs/tables/table{N}.yaml`` (shipped in the package; see
:mod:`.grid`): rows x columns, and per budget the recipes and settings of each cell, which become
its command's flags. Every cell runs in-process through ``neuralsort``'s own command line (the
same code path as a user typing the command) into ``RESULTS/table{N}/{budget}/{cell}/``. A cell
whose ``metrics.json`` holds the final test metric is skipped; one with a ``last.pt`` checkpoint
but no final metrics is resumed with ``--resume``; so the command can simply be run again until
every cell is done. A half-finished run whose settings (grid entry or ``--set``) changed since is
not resumed: reproduce reports it and goes on with the next cell. A cell that another
``reproduce`` process is running (a lock file beside its folder) is skipped. ``reproduce.json``
in each folder records every attempt: the exact command, the hardware, the outcome.

Budgets: ``smoke`` (minutes on a laptop CPU, checks the pipeline, numbers mean nothing), ``cpu``
(a few hours per table on two CPU cores, shortened recipes), ``paper`` (the paper's recipe; GPU
hours). Data: ``--data_dir DIR`` is passed to every cell; without it the commands look in
``$NEURALSORT_DATA`` and ``./data``. Then ``neuralsort report RESULTS`` rebuilds the tables.
``--dry_run`` without ``--table``/``--budget`` lists every cell of every table and budget.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import pathlib
import shlex
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

from ..checkpoint import atomic_write_bytes
from ..config import UserError, add_flag
from ..hardware import hardware_info
from .grid import RESERVED, Cell, budgets_of, build_argv, config_root, expand_table
from .runs import cell_status
from .spec import BUDGETS, TABLES, TableSpec

__all__ = ["add_parser", "main", "run_cell"]


class _Tail(io.TextIOBase):
    """Passes writes through to ``stream`` and keeps the last ``limit`` characters."""

    def __init__(self, stream: Any, limit: int = 4000) -> None:
        self.stream = stream
        self.limit = limit
        self.text = ""

    def write(self, s: str) -> int:
        self.stream.write(s)
        self.text = (self.text + s)[-self.limit :]
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def error_line(self) -> str | None:
        """The last ``... error: ...`` line written (a command's one-line user error)."""
        lines = [ln.strip() for ln in self.text.replace("\r", "\n").splitlines()]
        hits = [ln for ln in lines if "error:" in ln]
        return hits[-1] if hits else None


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def _parse_overrides(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE (e.g. --set threads=2), got {item!r}")
        if key in RESERVED | {"command", "sweep"}:
            raise UserError(f"--set {key} is not allowed; use reproduce's own flags")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key] = value
    return out


def cell_settings(
    cell: Cell, overrides: dict[str, Any], threads: int | None = None
) -> dict[str, Any]:
    """The settings a cell runs with: its grid's, then ``--set`` overrides, then ``--threads``
    (which replaces the thread count a grid gives a cell, e.g. one thread for CIFAR-10)."""
    settings = {**cell.settings, **overrides}
    if threads is not None:
        settings["threads"] = threads
    return settings


def run_cell(
    spec: TableSpec,
    budget: str,
    cell: Cell,
    out: pathlib.Path,
    *,
    overrides: dict[str, Any],
    data_dir: str | None,
    device: str | None,
    note: str | None = None,
    threads: int | None = None,
) -> tuple[str, int]:
    """Run (or resume) one cell; returns ``(outcome, exit status)``.

    The cell runs in this process; torch's thread count, which a cell may set (``threads``, which
    ``threads`` here replaces), is recorded as the cell left it and then restored, so that it
    does not leak into the next cell.
    """
    import torch

    from ..cli import main as cli_main

    status = cell_status(out, spec.final_metric)
    resume = status == "partial"
    settings = cell_settings(cell, overrides, threads)
    argv = build_argv(
        cell.command, settings, out=out, resume=resume, data_dir=data_dir, device=device
    )
    record_path = out / "reproduce.json"
    old = _read_record(record_path)
    record: dict[str, Any] = {
        "table": spec.number,
        "budget": budget,
        "cell": cell.name,
        "config_file": cell.source,
        "cell_sha256": cell.sha256,
        "overrides": overrides,
        "note": note or (old or {}).get("note") or "",
        "attempts": old.get("attempts", []) if old else [],
    }
    device_name = device or str(settings.get("device") or "auto")
    threads_before = torch.get_num_threads()
    threads = settings.get("threads")
    if isinstance(threads, int) and threads > 0:  # the attempt's first record names them (the
        torch.set_num_threads(threads)  # command checks the setting itself)
    attempt: dict[str, Any] = {
        "started": _now(),
        "status": "running",
        "resumed": resume,
        "command": "neuralsort " + shlex.join(argv),
        "hardware": hardware_info(device_name),
    }
    record["attempts"].append(attempt)
    _write_json(record_path, record)
    print(f"\n=== table {spec.number} / {budget} / {cell.name}: {attempt['command']}", flush=True)
    t0 = time.time()
    tail = _Tail(sys.stderr)
    rc: int
    error = None
    try:
        with contextlib.redirect_stderr(tail):
            rc = cli_main(argv)
    except SystemExit as exc:  # argparse rejected a flag of the config
        rc = exc.code if isinstance(exc.code, int) else 2
    except Exception as exc:  # noqa: BLE001 - record it and carry on with the next cell
        traceback.print_exc()
        rc = 1
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    finally:
        attempt["hardware"] = hardware_info(device_name)  # with the threads the cell used
        torch.set_num_threads(threads_before)
    attempt["finished"] = _now()
    attempt["wall_s"] = round(time.time() - t0, 1)
    attempt["rc"] = rc
    final = cell_status(out, spec.final_metric)
    if rc == 130:
        outcome = "interrupted"
    elif rc == 0 and final == "done":
        outcome = "done"
    else:
        outcome = "failed"
        error = error or tail.error_line() or f"exit status {rc}"
        if rc == 0:
            error = f"finished without {spec.final_metric} in metrics.json"
            rc = 1
        attempt["error"] = error
    attempt["status"] = outcome
    if out.is_dir():
        _write_json(record_path, record)
    return outcome, rc


# overrides that change how fast a cell runs, not what it computes
_NEUTRAL_OVERRIDES = frozenset({"threads"})


def _cell_state(
    out: pathlib.Path, cell: Cell, final_metric: str, overrides: dict[str, Any]
) -> tuple[str, bool]:
    """The run folder's status (:func:`.runs.cell_status`) and whether a finished or
    half-finished run in it was made from other settings than ``cell``'s and ``overrides``."""
    status = cell_status(out, final_metric)
    changed = status in ("done", "partial") and _settings_changed(out, cell, overrides)
    return status, changed


def _settings_changed(out: pathlib.Path, cell: Cell, overrides: dict[str, Any]) -> bool:
    """Whether the run in ``out`` was made from other settings than ``cell``'s today.

    The cell's grid settings (their hash) and reproduce's ``--set`` overrides are compared with
    the ones recorded in ``reproduce.json``; ``threads`` is ignored. Where they differ, the run
    still counts as made from today's settings if the command it ran with is the one the cell
    runs today, less where and how fast it runs: e.g. a run made with ``--set num_epochs=24``
    once the grid gives the cell 24 epochs.
    """
    rec = _read_record(out / "reproduce.json") or {}

    def effective(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k not in _NEUTRAL_OVERRIDES}

    if rec.get("cell_sha256") in (None, cell.sha256) and (
        "overrides" not in rec or effective(rec.get("overrides") or {}) == effective(overrides)
    ):
        return False
    attempts = rec.get("attempts") or [{}]
    ran = attempts[0].get("command")
    if not isinstance(ran, str):
        return True
    today = build_argv(cell.command, cell_settings(cell, overrides), out=out)
    return _what_runs(shlex.split(ran)[1:]) != _what_runs(today)


# flags of a cell's command that say where and how fast it runs, not what it computes
_PLACE_FLAGS = frozenset(
    {"--out", "--data_dir", "--device", "--resume", *(f"--{k}" for k in _NEUTRAL_OVERRIDES)}
)


def _what_runs(words: list[str]) -> tuple[str, dict[str, tuple[str, ...]]]:
    """A ``neuralsort`` argument list (``words`` after the program name) as its subcommand and
    flags (each with its values), less :data:`_PLACE_FLAGS`; flags in any order compare equal."""
    sub = words[0] if words else ""
    flags: dict[str, tuple[str, ...]] = {}
    flag = None
    for word in words[1:]:
        if word.startswith("--"):
            flag = word
            flags[flag] = ()
        elif flag is not None:
            flags[flag] += (word,)
    return sub, {k: v for k, v in flags.items() if k not in _PLACE_FLAGS}


@contextlib.contextmanager
def _cell_lock(base: pathlib.Path, name: str) -> Iterator[bool]:
    """Hold an exclusive lock on cell ``name`` of ``base`` while it runs; yields False if another
    process holds it (two ``reproduce`` commands over one results folder would otherwise train
    the same run folder at once). The lock file ``base/.{name}.lock`` sits beside the run folder,
    not in it. Where ``fcntl`` is missing (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f".{name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process holds it
            yield False
            return
        except OSError:  # a file system without locks (some network mounts): run unlocked
            yield True
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_record(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``neuralsort reproduce``."""
    p = subparsers.add_parser(
        "reproduce",
        help="run every cell of a paper table from its grid, tables/table{N}.yaml (resumable)",
        description="Run every cell of one of the paper's tables from its grid, "
        "configs/tables/table{N}.yaml, one run folder per cell; a finished cell is skipped and "
        "a half-finished one resumed.",
        epilog="Example: neuralsort reproduce --table 1 --budget smoke --data_dir DATA "
        "&& neuralsort report results",
    )
    add_flag(
        p, "--table", type=int, choices=sorted(TABLES), help="paper table (optional with --dry_run)"
    )
    add_flag(
        p,
        "--budget",
        choices=list(BUDGETS),
        help="smoke, cpu, quality (Tables 1 and 2) or paper (optional with --dry_run)",
    )
    add_flag(
        p,
        "--only",
        nargs="+",
        action="extend",
        metavar="CELL",
        help="run only these cells (e.g. mnist-dknn-deterministic, n5-sinkhorn)",
    )
    add_flag(p, "--results", metavar="DIR", help="results folder (default results)")
    add_flag(
        p,
        "--data_dir",
        metavar="DIR",
        help="data folder passed to every cell (default: $NEURALSORT_DATA, then ./data)",
    )
    add_flag(p, "--device", choices=["auto", "cpu", "cuda", "mps"], help="passed to every cell")
    add_flag(
        p,
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads for every cell, in place of the count its grid gives it",
    )
    add_flag(
        p,
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="set",
        help="override a setting in every selected cell (recorded in reproduce.json and shown "
        "in the report), e.g. --set dataset=imagefolder:/data/cifar10",
    )
    add_flag(
        p,
        "--note",
        metavar="TEXT",
        help="a remark on how the selected cells ran, recorded in reproduce.json and printed "
        "beside their results by the report, e.g. --note 'lossy JPEG copy of CIFAR-10'",
    )
    add_flag(
        p,
        "--sweep",
        action="store_true",
        help="also run the sweep cells (Table 3 rows at other k, for the k plot)",
    )
    add_flag(
        p,
        "--configs",
        metavar="DIR",
        help="configs folder with tables/table{N}.yaml (default: the ones shipped in the package)",
    )
    add_flag(
        p,
        "--dry_run",
        action="store_true",
        help="list cells, their state and commands (every table and budget unless chosen)",
    )
    return p


def _select(args: argparse.Namespace, spec: TableSpec, budget: str, root: Any) -> list[Cell]:
    cells = expand_table(spec, budget, root)
    if args.only:
        names = {c.name: c for c in cells}
        missing = [n for n in args.only if n not in names]
        if missing:
            raise UserError(
                f"--only: no config for {', '.join(missing)} in table {spec.number} / {budget}; "
                f"cells: {', '.join(names)}"
            )
        return [names[n] for n in dict.fromkeys(args.only)]
    return cells if args.sweep else [c for c in cells if not c.sweep]


def main(args: argparse.Namespace) -> int:
    """Entry point of ``neuralsort reproduce``."""
    root = config_root(args.configs)
    if args.configs and not (root / "tables").is_dir():
        raise UserError(f"--configs {args.configs}: no tables/ folder with table{{N}}.yaml grids")
    if not args.dry_run and (args.table is None or args.budget is None):
        raise UserError("choose --table and --budget (only --dry_run lists them all)")
    tables = [args.table] if args.table is not None else sorted(TABLES)
    budgets = [args.budget] if args.budget is not None else list(BUDGETS)
    if args.only and len(tables) * len(budgets) > 1:
        raise UserError("--only needs --table and --budget")
    overrides = _parse_overrides(args.set)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    results = pathlib.Path(args.results or "results")
    if args.dry_run:
        action = {"done": "skip", "partial": "resume", "started": "rerun", "missing": "run"}
        for number in tables:
            for budget in budgets:
                spec = TABLES[number]
                if args.budget is None and budget not in budgets_of(spec, root):
                    continue
                if len(tables) * len(budgets) > 1:
                    print(f"# table {number} / {budget}")
                for cell in _select(args, spec, budget, root):
                    out = results / f"table{number}" / budget / cell.name
                    status, changed = _cell_state(out, cell, spec.final_metric, overrides)
                    argv = build_argv(
                        cell.command,
                        cell_settings(cell, overrides, args.threads),
                        out=out,
                        resume=status == "partial",
                        data_dir=args.data_dir,
                        device=args.device,
                    )
                    cmd = "neuralsort " + shlex.join(argv)
                    act = action[status]
                    if changed:
                        # a finished run of other settings is kept; a half-finished one is not
                        # resumed (that would mix the two), reproduce stops at it
                        act = "skip" if status == "done" else "stop"
                        status = "changed"
                    print(f"{cell.name:32s} {status:8s} -> {act:6s} {cmd}")
        return 0
    return _run_table(args, TABLES[args.table], args.budget, root, results, overrides)


def _run_table(
    args: argparse.Namespace,
    spec: TableSpec,
    budget: str,
    root: Any,
    results: pathlib.Path,
    overrides: dict[str, Any],
) -> int:
    cells = _select(args, spec, budget, root)
    if not cells:
        raise UserError(f"no cells to run for table {spec.number} / {budget}")
    base = results / f"table{spec.number}" / budget
    for cell in cells:  # every cell's flags are checked before the first one runs
        settings = cell_settings(cell, overrides, args.threads)
        build_argv(cell.command, settings, out=base / cell.name)
    outcomes: list[tuple[str, str]] = []
    rc_total = 0
    for cell in cells:
        out = base / cell.name
        with _cell_lock(base, cell.name) as free:
            if not free:
                print(f"skip {cell.name}: another process is running it in {out}")
                outcomes.append((cell.name, "skipped (running elsewhere)"))
                continue
            status, changed = _cell_state(out, cell, spec.final_metric, overrides)
            if status == "done":
                note = " (its settings changed since; delete the folder to rerun)" * changed
                print(f"skip {cell.name}: finished in {out}{note}")
                outcomes.append((cell.name, "skipped (done)"))
                continue
            if changed:
                print(
                    f"error: {cell.name}: the half-finished run in {out} has other settings than "
                    "the cell's today (its grid entry or --set); resuming it would mix the two. "
                    "Move or delete the folder to start the cell again, or restore its settings "
                    "to finish it.",
                    file=sys.stderr,
                )
                outcomes.append((cell.name, "not resumed (settings changed)"))
                rc_total = rc_total or 1
                continue
            outcome, rc = run_cell(
                spec,
                budget,
                cell,
                out,
                overrides=overrides,
                data_dir=args.data_dir,
                device=args.device,
                note=args.note,
                threads=args.threads,
            )
        outcomes.append((cell.name, outcome))
        if outcome == "interrupted":
            rc_total = 130
            break
        if outcome == "failed":
            rc_total = 1
    print(f"\ntable {spec.number} / {budget} in {base}:")
    for name, outcome in outcomes:
        print(f"  {name:32s} {outcome}")
    if rc_total == 130:
        print("interrupted: run the same command again to resume", file=sys.stderr)
    elif rc_total:
        print("some cells failed (see above); fix and run the same command again", file=sys.stderr)
    print(f"tables: neuralsort report {results}")
    return rc_total
