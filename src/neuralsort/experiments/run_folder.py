"""A run folder: config.yaml, log.jsonl, checkpoints, metrics.json and the per-epoch plot.

An experiment uses it like this (the shared loop, :func:`neuralsort.experiments.loop.start_run`,
opens it for every training command)::

    def add_parser(subparsers):
        p = subparsers.add_parser("myexp", help="...")
        add_common_args(p)
        add_flag(p, "--tau", type=float, help="temperature")

    def main(args):
        cfg = resolve_config(args, DEFAULTS)          # defaults < --config YAML < explicit flags
        run = Run.start(cfg, name="myexp-...")         # may update cfg in place on --resume
        ...
        run.log({"epoch": e, "val_acc": acc})
        run.write_metrics({...})

The flag and config helpers live in :mod:`.config`, seeding in :mod:`.seeding`, checkpoint files in
:mod:`.checkpoint`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pathlib
import platform
import subprocess
import sys
from typing import Any

import numpy as np
import torch

from . import checkpoint, distributed
from .checkpoint import atomic_write_bytes
from .config import ALWAYS_CURRENT, KEY_ALIASES, RESUME_MAY_CHANGE, UserError
from .hardware import cpu_model, gpu_name

__all__ = ["Run", "PLOT_LABELS", "plot_title", "history_figure"]


def _same_setting(given: Any, saved: Any) -> bool:
    """Whether a flag's value equals the saved one (lists of lengths or k as sets: the commands
    sort them)."""
    if isinstance(given, list | tuple) and isinstance(saved, list | tuple):
        return sorted(set(given)) == sorted(set(saved))
    return given == saved


def _git_commit() -> str | None:
    here = pathlib.Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    try:
        from importlib.metadata import version

        ns = version("neuralsort")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        ns = "unknown"
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "neuralsort": ns,
    }


def _plain(x: Any) -> Any:
    """Make a value YAML/JSON friendly (paths, tuples, numpy and torch scalars)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, pathlib.PurePath):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x)
    if isinstance(x, str):
        return str(x)
    return str(x)


class Run:
    """One experiment run: an output folder with config.yaml, log.jsonl, checkpoints, metrics.

    Create with :meth:`Run.start`. Only rank 0 (``is_main``) writes files.
    """

    def __init__(self, path: pathlib.Path, cfg: dict[str, Any], *, resumed: bool) -> None:
        self.path = path
        self.cfg = cfg
        self.is_main = distributed.rank() == 0
        self.resumed = resumed
        self.meta: dict[str, Any] = {}

    @classmethod
    def start(cls, cfg: dict[str, Any], *, name: str) -> Run:
        """Open the folder ``cfg["out"]`` (or ``runs/<name>-<timestamp>``) and write config.yaml.

        With ``cfg["resume"]`` and no ``out``, the newest ``runs/<name>-*`` folder holding a
        ``last.pt`` is reopened. When resuming, settings the user did not give explicitly (see
        :class:`Config`) are taken from the saved config.yaml, updating ``cfg`` in place.

        With several processes (torchrun), rank 0 chooses the folder and reads the saved settings,
        and every rank gets the same folder, settings and ``resumed`` flag; only rank 0 writes.
        """

        def choose() -> tuple[str, dict[str, Any], bool, dict[str, Any] | None]:
            path, resumed, first = cls._choose_folder(cfg, name)
            return str(path), dict(cfg), resumed, first

        path_text, settings, resumed, first = distributed.from_rank0(choose)
        if distributed.rank() != 0:
            cfg.update(settings)
        path = pathlib.Path(path_text)

        run = cls(path, cfg, resumed=resumed)
        if run.is_main:
            path.mkdir(parents=True, exist_ok=True)
            segment = {
                "git_commit": _git_commit(),
                "command": " ".join([pathlib.Path(sys.argv[0]).name, *sys.argv[1:]]),
                "cwd": os.getcwd(),
                "started": _dt.datetime.now().isoformat(timespec="seconds"),
                "host": platform.node(),
                "cpu": cpu_model(),
                "world_size": distributed.active_world_size(),
                "versions": _versions(),
            }
            gpu = gpu_name()
            if gpu:
                segment["gpu"] = gpu
            if first:  # the run's first start stays; each resume adds what it ran with
                run.meta = {**first, "resumes": [*first.get("resumes", []), segment]}
            else:
                run.meta = {"name": name, **segment}
            run.save_config()
            run.log({"event": "resume" if resumed else "start", "name": name})
        return run

    @staticmethod
    def _choose_folder(
        cfg: dict[str, Any], name: str
    ) -> tuple[pathlib.Path, bool, dict[str, Any] | None]:
        """The run folder, whether it resumes, and the resumed run's saved ``_run`` (its first
        start and earlier resumes; None for a new run); restores saved settings into ``cfg``."""
        import yaml

        resume = bool(cfg.get("resume"))
        out = cfg.get("out")
        if out:
            path = pathlib.Path(out)
            if resume and not (path / "config.yaml").is_file():
                why = "not a run folder (no config.yaml)" if path.exists() else "no such folder"
                raise UserError(
                    f"--resume --out {path}: nothing to resume there ({why}); check the path, "
                    "or leave out --resume to start a new run"
                )
        elif resume:
            candidates = sorted(
                (p for p in pathlib.Path("runs").glob(f"{name}-*") if (p / "last.pt").is_file()),
                key=lambda p: (p / "last.pt").stat().st_mtime,
            )
            if not candidates:
                raise UserError(
                    f"--resume: no earlier run named runs/{name}-* with a last.pt checkpoint; "
                    "pass --out DIR of the run to continue"
                )
            path = candidates[-1]
        else:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = pathlib.Path("runs") / f"{name}-{stamp}"
            i = 1
            while path.exists():
                i += 1
                path = pathlib.Path("runs") / f"{name}-{stamp}-{i}"
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} exists and is not a folder")
        if not resume and any((path / f).is_file() for f in ("last.pt", "metrics.json")):
            raise UserError(
                f"--out {path} holds a run already; add --resume to continue it, or choose "
                "another --out (or delete that folder) to start a new one"
            )

        resumed, first = False, None
        saved_file = path / "config.yaml"
        if resume and saved_file.is_file():
            saved = yaml.safe_load(saved_file.read_text()) or {}
            saved = {KEY_ALIASES.get(k, k): v for k, v in saved.items()}
            explicit = getattr(cfg, "explicit", set())
            conflicts = sorted(
                k
                for k in explicit
                if k in saved
                and k not in ALWAYS_CURRENT | RESUME_MAY_CHANGE
                and not _same_setting(cfg.get(k), saved[k])
            )
            if conflicts:
                given = ", ".join(f"--{k} {cfg[k]!r} (saved: {saved[k]!r})" for k in conflicts)
                raise UserError(
                    f"--resume --out {path}: {given}: a resumed run keeps the settings it started "
                    "with (its optimiser and data streams were made from them); leave these "
                    "flags out, or start a new run in another --out folder"
                )
            changed = []
            for k, v in saved.items():
                if str(k).startswith("_") or k in ALWAYS_CURRENT or k in explicit:
                    continue
                if k in cfg and cfg[k] != v:
                    changed.append(k)
                    cfg[k] = v
            if changed:
                print(
                    f"resuming {path}: using its saved {', '.join(sorted(changed))}",
                    file=sys.stderr,
                )
            resumed = (path / "last.pt").is_file()
            if resumed and isinstance(saved.get("_run"), dict):
                first = dict(saved["_run"])
        cfg["out"] = str(path)
        return path, resumed, first

    def save_config(self, **meta: Any) -> None:
        """(Re)write config.yaml: the settings, then ``_run`` (run metadata, plus ``meta``).

        Experiments call it again when a setting is only decided once the data is loaded.
        """
        import yaml

        self.meta.update(meta)
        if not self.is_main:
            return
        doc = _plain(dict(self.cfg))
        doc["_run"] = _plain(self.meta)
        text = yaml.safe_dump(doc, sort_keys=False)
        atomic_write_bytes(self.path / "config.yaml", lambda f: f.write(text.encode()))

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` (plus a ``time`` stamp) as one JSON line to log.jsonl."""
        if not self.is_main:
            return
        line = {"time": _dt.datetime.now().isoformat(timespec="milliseconds"), **_plain(record)}
        with open(self.path / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()

    def save_checkpoint(self, state: dict[str, Any] | None, *, is_best: bool) -> None:
        """Write ``state`` to last.pt (and best.pt when ``is_best``), atomically, on rank 0."""
        if self.is_main and state is not None:
            checkpoint.save_file(self.path, state, is_best=is_best)

    def load_checkpoint(
        self, which: str = "last", *, shared: bool = False
    ) -> dict[str, Any] | None:
        """Load ``<which>.pt`` (``last`` or ``best``) on the CPU, or return None if absent.

        ``shared=True`` is for every rank at once: rank 0 reads, every rank gets the contents.
        """
        return checkpoint.load_file(self.path / f"{which}.pt", shared=shared)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics`` to metrics.json atomically."""
        if not self.is_main:
            return
        text = json.dumps(_plain(metrics), indent=2) + "\n"
        atomic_write_bytes(self.path / "metrics.json", lambda f: f.write(text.encode()))

    def plot_history(self, history: list[dict[str, Any]], keys: list[str], filename: str) -> None:
        """Plot ``keys`` of the per-epoch records in ``history`` against ``epoch`` into a PNG."""
        if not self.is_main or not history:
            return
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig = history_figure(history, keys, plot_title(self.meta.get("name", ""), self.cfg))
        target = self.path / filename
        atomic_write_bytes(target, lambda f: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)


# What the per-epoch keys the experiments plot mean, for the legends (any other key is shown
# with spaces for underscores)
PLOT_LABELS = {
    "train_loss": "training loss",
    "train_acc": "training accuracy",
    "train_topk_correct": "training: share of the soft k nearest with the query's label",
    "val_acc": "validation accuracy",
    "val_exact": "validation: sequences sorted exactly",
    "val_elementwise": "validation: numbers in their right place",
    "val_mse": "validation: mean squared error",
}

# The experiment a run belongs to, by the first word of its name
_EXPERIMENTS = {
    "dknn": "Differentiable kNN",
    "baseline": "Baseline",
    "sort": "Sorting four-digit numbers",
    "quantile": "Median of four-digit numbers",
}


def plot_title(name: str, cfg: dict[str, Any]) -> str:
    """A plot's title: the experiment, its data set and its main settings, e.g.
    ``Differentiable kNN on digits (deterministic, k = 5, τ = 1)``."""
    kind = name.split("-", 1)[0]
    title = _EXPERIMENTS.get(kind, name)
    dataset = str(cfg.get("dataset") or "")
    if dataset.lower().startswith("imagefolder:"):  # the folder's name, not the machine's path
        dataset = pathlib.PurePath(dataset.split(":", 1)[1]).name or "an image folder"
    if dataset:
        title += f" on {dataset}"
    parts = [str(cfg["method"])] if cfg.get("method") else []
    for key, symbol in (("n", "n"), ("k", "k"), ("tau", "τ")):
        value = cfg.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{symbol} = {value:g}")
    return f"{title} ({', '.join(parts)})" if parts else title


def history_figure(history: list[dict[str, Any]], keys: list[str], title: str) -> Any:
    """A matplotlib figure of ``keys`` of the per-epoch records against ``epoch``."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key in keys:
        pts = [
            (rec.get("epoch", i), rec[key])
            for i, rec in enumerate(history)
            if rec.get(key) is not None
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            label = PLOT_LABELS.get(key, key.replace("_", " "))
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    return fig
