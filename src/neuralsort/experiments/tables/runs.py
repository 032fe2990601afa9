"""Run folders of ``neuralsort reproduce``: their state, and what each says about its table cell.

A run folder is ``RESULTS/table{N}/{budget}/{cell}/`` (``config.yaml``, ``log.jsonl``,
``metrics.json``, ``reproduce.json``); nothing else is read.
"""

from __future__ import annotations

import datetime as _dt
import json
import pathlib
from dataclasses import dataclass
from typing import Any

from .spec import TABLES, TableSpec

__all__ = ["CellRun", "cell_status", "find_runs"]


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
    cpu_s: float | None = None
    gpu_s: float | None = None
    note: str = ""
    net: str = ""

    @property
    def warm_start(self) -> str | None:
        """The run folder's name this run's weights started from (``init_from`` in its metrics:
        a ``best.pt`` or a folder), or None for a run trained from scratch."""
        source = str(self.metrics.get("init_from") or "").rstrip("/")
        if not source:
            return None
        parts = source.split("/")
        return parts[-2] if len(parts) >= 2 and parts[-1].endswith(".pt") else parts[-1]

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
    device, threads, torch_v = _config_device(metrics, cfg)
    if not device:
        return "unknown"
    text = f"{device}"
    if threads:
        text += f", {threads} thread{'s' if threads != 1 else ''}"
    if torch_v:
        text += f" (torch {torch_v})"
    return text


def _config_device(metrics: dict[str, Any], cfg: dict[str, Any]) -> tuple[str, int, str]:
    """``(where, CPU threads, torch version)`` of a run made outside ``reproduce``, from its
    metrics and config (``""`` / 0 where they do not say). ``where`` is ``CPU <model>`` or
    ``GPU <name>`` where the config recorded the model at the run's start, else the device."""
    run_info = cfg.get("_run", {}) if isinstance(cfg, dict) else {}
    run_info = run_info if isinstance(run_info, dict) else {}
    versions = run_info.get("versions", {})
    torch_v = str(versions.get("torch") or "") if isinstance(versions, dict) else ""
    device = str(metrics.get("device") or "")
    if not device and cfg.get("device") not in (None, "auto"):
        device = str(cfg.get("device"))
    if not device and torch_v.endswith("+cpu"):
        device = "cpu"  # a CPU-only torch build cannot have used a GPU
    threads = cfg.get("threads") or cfg.get("num_threads")
    on_cpu = device.startswith("cpu")
    cpu_threads = threads if on_cpu and isinstance(threads, int) and threads > 0 else 0
    if on_cpu and run_info.get("cpu"):
        device = f"CPU {run_info['cpu']}"
    elif device.startswith("cuda") and run_info.get("gpu"):
        device = f"GPU {run_info['gpu']}"
    return device, cpu_threads, torch_v


def _progress(log: list[dict[str, Any]], cfg: dict[str, Any], status: str) -> str:
    if status == "done":
        return ""
    epochs = [
        int(r["epoch"]) for r in log if "event" not in r and isinstance(r.get("epoch"), int | float)
    ]
    total = cfg.get("num_epochs") if isinstance(cfg, dict) else None
    done = max(epochs) if epochs else 0
    if total:
        return f"epoch {done} of {total}"
    return f"epoch {done}" if epochs else "no epoch finished"


def _threads(attempt: dict[str, Any]) -> int:
    """CPU cores an attempt held (its torch threads); 0 if it ran on a GPU."""
    hw = attempt.get("hardware")
    if not isinstance(hw, dict) or hw.get("device", "cpu") != "cpu":
        return 0
    t = hw.get("torch_threads")
    return t if isinstance(t, int) and t > 0 else 1


def _when(stamp: Any) -> _dt.datetime | None:
    """An ISO time stamp of reproduce.json or log.jsonl, or None."""
    try:
        return _dt.datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
    except ValueError:
        return None


def _attempt_seconds(
    attempts: list[dict[str, Any]], log: list[dict[str, Any]]
) -> list[float | None]:
    """Each attempt's wall time: the one it recorded, else (an attempt killed before it could
    record it) from its start to the last line it wrote to the run's log, before the next
    attempt started; None where neither is known."""
    times = None
    out: list[float | None] = []
    for i, attempt in enumerate(attempts):
        wall = attempt.get("wall_s")
        if isinstance(wall, int | float):
            out.append(float(wall))
            continue
        start = _when(attempt.get("started"))
        until = _when(attempts[i + 1].get("started")) if i + 1 < len(attempts) else None
        if times is None:
            times = [t for rec in log if (t := _when(rec.get("time")))]
        ours = [t for t in times if start and t >= start and (until is None or t < until)]
        out.append((max(ours) - start).total_seconds() if start and ours else None)
    return out


def _net(log: list[dict[str, Any]]) -> str:
    """The trained net and its size, from the run's ``setup`` log record ("" if none)."""
    for rec in log:
        if rec.get("event") == "setup" and rec.get("model"):
            n = rec.get("parameters")
            return f"{rec['model']} ({n:,} parameters)" if isinstance(n, int) else str(rec["model"])
    return ""


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
    log = _read_log(path / "log.jsonl")
    if k is None and isinstance(metrics.get("k") or cfg.get("k"), int):
        k = int(metrics.get("k") or cfg.get("k"))
    rec = _read_json(path / "reproduce.json")
    overrides: dict[str, Any] = {}
    failure = None
    wall = metrics.get("wall_time_s", metrics.get("train_seconds"))
    cpu_s = gpu_s = None
    note = ""
    if isinstance(rec, dict):
        overrides = dict(rec.get("overrides") or {})
        note = str(rec.get("note") or "")
        attempts = [a for a in rec.get("attempts", []) if isinstance(a, dict)]
        if attempts and status != "done" and attempts[-1].get("status") == "failed":
            failure = str(attempts[-1].get("error") or f"exit status {attempts[-1].get('rc')}")
        seconds = _attempt_seconds(attempts, log)
        timed = [(a, s) for a, s in zip(attempts, seconds, strict=True) if s is not None]
        if timed:
            wall = sum(s for _, s in timed)  # every attempt, resumed ones included
            cpu = [(a, s) for a, s in timed if _threads(a)]
            cpu_s = sum(s * _threads(a) for a, s in cpu) if cpu else None
            gpu_s = sum(s for a, s in timed if not _threads(a)) or None
        # a run's own clock; runs whose metrics have none (sort and median runs made before they
        # recorded it) give their training time, which leaves out validation and test
        own = metrics.get("wall_time_s", metrics.get("train_seconds"))
        if len(timed) < len(attempts) and isinstance(own, int | float) and own > (wall or 0):
            # attempts stopped before they could record their time (a killed session): the
            # run's own clock, every attempt up to its last checkpoint, counts more of it
            threads = _threads(attempts[-1])
            wall = own
            cpu_s, gpu_s = (own * threads, None) if threads else (None, own)
    elif isinstance(wall, int | float):  # made outside reproduce: its config says where
        threads = _config_device(metrics, cfg)[1]
        cpu_s = wall * threads if threads else None
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
        progress=_progress(log, cfg, status),
        overrides=overrides,
        failure=failure,
        wall_s=float(wall) if isinstance(wall, int | float) else None,
        cpu_s=cpu_s,
        gpu_s=gpu_s,
        note=note,
        net=_net(log),
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
