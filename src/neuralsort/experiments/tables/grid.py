"""Tables as grids: expand ``configs/tables/table{N}.yaml`` into one command line per cell.

A grid file names the table's ``rows`` and ``columns`` (those of :data:`.spec.TABLES`), each
with the settings that make a cell what it is (``method``, ``n``, ``dataset``, ``command``), and
per budget a list of rules. A rule may pick cells (``rows``, ``columns``, ``cells``: lists of
names; all cells when absent) and holds a ``recipe`` (a file of settings under the configs
folder, such as ``quality/sort-n5.yaml``) and/or ``set`` (settings). A cell's settings are, in
order, every matching rule (its recipe, then its ``set``), then its row's and its column's
settings, which always win; a sweep cell ``{column}-{row}-k{K}`` then sets ``k``. Settings hold
only what differs from the command's defaults and become its flags (``k: 9`` -> ``--k 9``), so
the precedence stays ``COMMON_DEFAULTS < DEFAULTS < settings < --set``. ``skip`` leaves columns out
of a budget, and a rule with ``skip: true`` the cells it picks; ``sweep`` lists per budget the
rows and columns rerun at each ``k`` of ``sweep.k``. A cell whose ``init_from`` names another cell
of its budget (a warm start) comes after that cell.

The grids and recipes ship in the package (``neuralsort/experiments/configs/``, read with
:mod:`importlib.resources`); ``--configs DIR`` points at another folder of the same layout.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.resources
import json
import pathlib
from dataclasses import dataclass
from typing import Any

from ..config import UserError
from .spec import BUDGETS, TABLES, TableSpec

__all__ = [
    "RUNNABLE_COMMANDS",
    "Cell",
    "all_cells",
    "budgets_of",
    "build_argv",
    "config_root",
    "expand_table",
    "load_yaml",
]

RUNNABLE_COMMANDS = ("dknn", "baseline", "sort", "quantile")
# Settings no grid may fix: reproduce decides them (or the user, at run time).
RESERVED = {"out", "resume", "config", "data_dir"}
_GRID_KEYS = {"command", "rows", "columns", "budgets", "skip", "sweep"}
_RULE_KEYS = {"rows", "columns", "cells", "recipe", "set", "skip"}

Root = Any  # a pathlib.Path or an importlib.resources Traversable


@dataclass
class Cell:
    """One cell of a table at one budget, fully resolved."""

    name: str
    command: str
    settings: dict[str, Any]
    sweep: bool
    source: str

    @property
    def sha256(self) -> str:
        """Hash of the resolved command and settings (recorded in reproduce.json)."""
        text = json.dumps({"command": self.command, **self.settings}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def config_root(folder: str | pathlib.Path | None = None) -> Root:
    """``folder``, else the configs shipped in the package."""
    if folder:
        return pathlib.Path(folder)
    return importlib.resources.files("neuralsort.experiments") / "configs"


def load_yaml(root: Root, name: str) -> Any:
    """Parse the YAML file ``name`` (a ``/``-separated path) under ``root``."""
    import yaml

    node = root
    for part in name.split("/"):
        node = node / part
    if not node.is_file():
        raise UserError(f"config file {name} not found in {root}")
    try:
        return yaml.safe_load(node.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"config {name} is not valid YAML: {exc}".replace("\n", " ")) from None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping of setting: value, got {value!r}")
    return {str(k): v for k, v in value.items() if not str(k).startswith("_")}


def _names(value: Any, known: dict[str, Any] | list[str], where: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value or [])
    bad = [n for n in names if n not in known]
    if bad:
        raise UserError(f"{where}: unknown name(s) {', '.join(map(str, bad))}")
    return names


def _rule_settings(
    root: Root, source: str, rules: list[Any], row: str, col: str, cell: str
) -> dict[str, Any] | None:
    """The settings of the rules that pick ``cell``, or None if one of them skips it."""
    settings: dict[str, Any] = {}
    for i, rule in enumerate(rules):
        where = f"{source}, rule {i + 1}"
        if not isinstance(rule, dict) or set(rule) - _RULE_KEYS:
            raise UserError(f"{where}: a rule is a mapping of {', '.join(sorted(_RULE_KEYS))}")
        if rule.get("skip", False) not in (True, False):
            raise UserError(f"{where}: skip must be true or false, got {rule['skip']!r}")
        if "rows" in rule and row not in rule["rows"]:
            continue
        if "columns" in rule and col not in rule["columns"]:
            continue
        if "cells" in rule and cell not in rule["cells"]:
            continue
        if rule.get("skip"):
            return None
        if rule.get("recipe"):
            settings.update(_mapping(load_yaml(root, rule["recipe"]), rule["recipe"]))
        settings.update(_mapping(rule.get("set"), where))
    return settings


def expand_table(spec: TableSpec, budget: str, root: Root | None = None) -> list[Cell]:
    """Every cell of ``spec`` at ``budget`` (main cells in the table's order, then sweep cells)."""
    root = config_root() if root is None else root
    source = f"tables/table{spec.number}.yaml"
    grid = load_yaml(root, source)
    if not isinstance(grid, dict) or set(grid) - _GRID_KEYS:
        raise UserError(f"{source}: a grid is a mapping of {', '.join(sorted(_GRID_KEYS))}")
    rows = {r: _mapping(v, f"{source}: row {r}") for r, v in (grid.get("rows") or {}).items()}
    cols = {c: _mapping(v, f"{source}: column {c}") for c, v in (grid.get("columns") or {}).items()}
    if list(rows) != [r for r, _ in spec.rows] or list(cols) != [c for c, _ in spec.columns]:
        raise UserError(
            f"{source}: rows and columns must be the table's, in order: "
            f"{', '.join(r for r, _ in spec.rows)}; {', '.join(c for c, _ in spec.columns)}"
        )
    budgets = grid.get("budgets") or {}
    if budget not in budgets:
        raise UserError(f"{source}: no budget {budget!r} (has {', '.join(budgets)})")
    rules = budgets[budget] or []
    if not isinstance(rules, list):
        raise UserError(f"{source}: budget {budget} must be a list of rules")
    for i, rule in enumerate(rules):
        if isinstance(rule, dict):
            _names(rule.get("rows"), rows, f"{source}, {budget}, rule {i + 1}: rows")
            _names(rule.get("columns"), cols, f"{source}, {budget}, rule {i + 1}: columns")
    skip = _names((grid.get("skip") or {}).get(budget), cols, f"{source}: skip")
    sweep = grid.get("sweep") or {}
    swept = sweep.get(budget) or {}
    sweep_rows = _names(swept.get("rows"), rows, f"{source}: sweep")
    sweep_cols = _names(swept.get("columns"), cols, f"{source}: sweep")

    def cell(row: str, col: str, k: int | None) -> Cell | None:
        name = spec.cell(row, col) + (f"-k{k}" if k is not None else "")
        ruled = _rule_settings(root, f"{source}, {budget}", rules, row, col, name)
        if ruled is None:
            return None
        identity = {**cols[col], **rows[row]}  # the cell's own settings win (and come first)
        settings = {**identity, **{k: v for k, v in ruled.items() if k not in identity}}
        if k is not None:
            settings["k"] = k
        command = settings.pop("command", grid.get("command"))
        if command not in RUNNABLE_COMMANDS:
            raise UserError(
                f"{source}: cell {name}: 'command' must be one of "
                f"{', '.join(RUNNABLE_COMMANDS)}, got {command!r}"
            )
        bad = sorted(RESERVED & set(settings))
        if bad:
            raise UserError(
                f"{source}: cell {name}: {', '.join(bad)} must not be set in a grid "
                "(reproduce passes --out/--resume; pass --data_dir to reproduce or set "
                "NEURALSORT_DATA)"
            )
        return Cell(name, str(command), settings, k is not None, source)

    main = [cell(r, c, None) for c, _ in spec.columns if c not in skip for r, _ in spec.rows]
    extra = [
        cell(r, c, int(k))
        for c in sweep_cols
        for r in sweep_rows
        for k in sweep.get("k", [])
        if c not in skip
    ]
    kept = [c for c in main if c is not None]
    return _warm_starts_last(kept, source) + sorted(
        (c for c in extra if c is not None), key=lambda c: c.name
    )


def _warm_starts_last(cells: list[Cell], source: str) -> list[Cell]:
    """``cells`` in their order, except that a cell whose ``init_from`` names another of them
    comes after that one."""
    names = {c.name for c in cells}
    placed: list[Cell] = []
    done: set[str] = set()
    pending = list(cells)
    while pending:
        ready = [c for c in pending if c.settings.get("init_from") not in names - done]
        if not ready:
            raise UserError(
                f"{source}: the cells' init_from form a cycle: "
                + ", ".join(f"{c.name} <- {c.settings['init_from']}" for c in pending)
            )
        first = ready[0]  # one at a time, so that the table's order holds where it can
        placed.append(first)
        done.add(first.name)
        pending.remove(first)
    return placed


def budgets_of(spec: TableSpec, root: Root | None = None) -> list[str]:
    """The budgets ``spec``'s grid defines, in the order of :data:`.spec.BUDGETS` (a table may
    lack one: Table 1's ``quality`` has no counterpart in Table 3)."""
    root = config_root() if root is None else root
    grid = load_yaml(root, f"tables/table{spec.number}.yaml")
    budgets = (grid.get("budgets") or {}) if isinstance(grid, dict) else {}
    return [b for b in BUDGETS if b in budgets]


def all_cells(root: Root | None = None) -> dict[tuple[int, str], list[Cell]]:
    """Every table and each of its budgets: ``{(table, budget): cells}``."""
    return {
        (n, b): expand_table(TABLES[n], b, root)
        for n in sorted(TABLES)
        for b in budgets_of(TABLES[n], root)
    }


@functools.cache
def _subparser(command: str) -> argparse.ArgumentParser:
    from ..cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # noqa: SLF001 - argparse keeps sub-parsers here
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            if command in action.choices:
                return action.choices[command]
    raise UserError(f"`neuralsort {command}` is not a registered command")


def build_argv(
    command: str,
    settings: dict[str, Any],
    *,
    out: pathlib.Path | str,
    resume: bool = False,
    data_dir: str | None = None,
    device: str | None = None,
) -> list[str]:
    """The ``neuralsort`` argument list that runs ``command`` with ``settings``.

    Each setting becomes its flag (``k: 9`` -> ``--k 9``; ``True``/``False`` switch an on/off
    flag); a setting the command does not know raises :class:`UserError` naming it.
    """
    sub = _subparser(command)
    by_dest = {
        a.dest: a
        for a in sub._actions
        if a.option_strings and a.dest != "help"  # noqa: SLF001
    }
    argv = [command]
    for key, value in settings.items():
        action = by_dest.get(key)
        if action is None:
            known = ", ".join(sorted(d for d in by_dest if d not in RESERVED))
            raise UserError(f"`neuralsort {command}` has no setting {key!r}; known: {known}")
        flag = action.option_strings[0]
        if value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise UserError(f"setting {key!r} must be true or false, got {value!r}")
            neg = next(s for s in action.option_strings if s.startswith("--no-"))
            argv.append(flag if value else neg)
        elif action.nargs == 0:  # store_true switch
            if not isinstance(value, bool):
                raise UserError(f"setting {key!r} must be true or false, got {value!r}")
            if value:
                argv.append(flag)
        elif isinstance(value, list) and action.nargs in ("+", "*") and value:
            if not all(isinstance(v, int | float | str) and not isinstance(v, bool) for v in value):
                raise UserError(f"setting {key!r} needs a list of values, got {value!r}")
            argv += [flag, *(str(v) for v in value)]
        elif isinstance(value, bool | list | dict):
            raise UserError(f"setting {key!r} needs a single value, got {value!r}")
        else:
            argv += [flag, str(value)]
    argv += ["--out", str(out)]
    if data_dir:
        argv += ["--data_dir", str(data_dir)]
    if device:
        argv += ["--device", device]
    if resume:
        argv.append("--resume")
    return argv
