"""Settings of a run: the shared flags, ``defaults < YAML < flags`` merging and user errors.

Every flag defaults to ``None`` on the parser so that :func:`resolve_config` can tell the flags a
user typed from the ones left alone; real defaults live in the experiment's ``DEFAULTS`` dict.

User mistakes (missing data, bad values) raise :class:`UserError`; the CLI prints its message on
one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "UserError",
    "Config",
    "COMMON_DEFAULTS",
    "AMP_MODES",
    "KEY_ALIASES",
    "ALWAYS_CURRENT",
    "add_flag",
    "add_common_args",
    "check_common",
    "check_int",
    "check_number",
    "load_yaml",
    "resolve_config",
    "resolve_device",
]


class UserError(Exception):
    """A mistake the user can fix (missing data, bad flag value); the CLI prints it and exits 2."""


# Defaults of the flags that add_common_args defines; resolve_config merges them under the
# experiment's own defaults, so an experiment only needs to list what it changes.
COMMON_DEFAULTS: dict[str, Any] = {
    "out": None,
    "seed": 0,
    "device": "auto",
    "data_dir": None,
    "num_epochs": 1,
    "steps_per_epoch": None,
    "resume": False,
    "threads": None,
    "amp": "off",
}

# Keys that always come from the current command line when resuming a run.
ALWAYS_CURRENT = {"resume", "out", "device", "config", "data_dir"}
# Keys a resumed run may take with another value than it started with (how long it trains, how
# it runs and evaluates); any other setting given explicitly must equal the saved one.
RESUME_MAY_CHANGE = {
    "num_epochs",
    "threads",
    "eval_every",
    "eval_batch",
    "eval_batch_size",
    "eval_ns",
    "num_test_queries",
    "checkpoint_minutes",
    "pixel_knn",
}

# Older spellings of settings, accepted in YAML files and saved config.yaml files.
KEY_ALIASES = {"num_threads": "threads"}

AMP_MODES = ("off", "bf16", "fp16")


class Config(dict):
    """A resolved configuration: a plain ``dict`` that also remembers which keys the user set.

    ``explicit`` holds the keys given on the command line or in the ``--config`` file; on
    ``--resume`` the other keys are taken from the run's saved ``config.yaml``.
    """

    def __init__(self, *args: Any, explicit: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.explicit: set[str] = set(explicit)


def add_flag(parser: argparse.ArgumentParser | Any, name: str, *aliases: str, **kwargs: Any) -> Any:
    """Add ``--snake_case`` flag ``name`` with its ``--dashed-case`` alias (and any extra aliases).

    The default is ``None`` unless given, so that explicit flags can be told apart; boolean
    switches use ``action="store_true"`` and also default to ``None``.
    """
    if not name.startswith("--"):
        raise ValueError(f"add_flag: name must start with '--', got {name!r}")
    names = [name]
    dashed = "--" + name[2:].replace("_", "-")
    if dashed != name:
        names.append(dashed)
    names.extend(a for a in aliases if a not in names)
    kwargs.setdefault("default", None)
    kwargs.setdefault("dest", name[2:])
    return parser.add_argument(*names, **kwargs)


def add_common_args(parser: argparse.ArgumentParser, *, epochs_default: str | None = None) -> None:
    """Add the flags every experiment shares (see :data:`COMMON_DEFAULTS` for their defaults),
    grouped in the help by what they set: the run folder, the data, the training length and
    precision, and the devices and processes. ``epochs_default``: the command's default number
    of epochs, as its help should state it."""
    run = parser.add_argument_group("run folder")
    add_flag(run, "--config", metavar="FILE.yaml", help="YAML file of settings; flags override it")
    add_flag(run, "--out", metavar="DIR", help="output folder (default: runs/<name>-<timestamp>)")
    add_flag(run, "--seed", type=int, help="random seed (default 0)")
    add_flag(
        run,
        "--resume",
        action="store_true",
        help="continue the run in --out (or the latest runs/<name>-*) from its last checkpoint",
    )
    data = parser.add_argument_group("data")
    add_flag(
        data,
        "--data_dir",
        metavar="DIR",
        help="folder holding the data sets (default: $NEURALSORT_DATA, then ./data)",
    )
    length = parser.add_argument_group("training length and precision")
    epochs = "number of training epochs"
    add_flag(
        length,
        "--num_epochs",
        type=int,
        metavar="N",
        help=f"{epochs} (default {epochs_default})" if epochs_default else epochs,
    )
    add_flag(length, "--steps_per_epoch", type=int, metavar="N", help="cap on steps per epoch")
    add_flag(
        length,
        "--amp",
        choices=list(AMP_MODES),
        help="mixed precision for training steps: off (default), bf16 or fp16 (fp16 adds a "
        "gradient scaler); evaluation stays float32",
    )
    devices = parser.add_argument_group("devices and processes (torchrun for several)")
    add_flag(
        devices,
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        help="compute device (default auto: cuda, then mps, then cpu)",
    )
    add_flag(
        devices,
        "--threads",
        "--num_threads",
        "--num-threads",
        type=int,
        metavar="N",
        help="torch CPU threads per process (default: torch's choice; torchrun sets 1)",
    )


def check_int(cfg: dict[str, Any], key: str, minimum: int = 1) -> int:
    """``cfg[key]``, an integer >= ``minimum`` (a bool is not one), else :class:`UserError`."""
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise UserError(f"--{key} must be an integer >= {minimum}, got {v!r}")
    return v


def check_number(cfg: dict[str, Any], key: str, *, positive: bool = True) -> float:
    """``cfg[key]``, a finite number > 0 (``positive=False``: >= 0), else :class:`UserError`."""
    v = cfg[key]
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or not (v > 0 if positive else v >= 0):
        what = "a positive number" if positive else "a number >= 0"
        raise UserError(f"--{key} must be {what}, got {v!r}")
    return float(v)


def check_common(cfg: dict[str, Any]) -> None:
    """Check the settings of :func:`add_common_args` that every training command shares:
    ``--num_epochs`` (an integer >= 0), ``--steps_per_epoch`` and ``--threads`` (None or an
    integer >= 1) and ``--amp``; :class:`UserError` naming the flag on a bad value."""
    check_int(cfg, "num_epochs", 0)
    for key in ("steps_per_epoch", "threads"):
        if cfg[key] is not None:
            check_int(cfg, key)
    if cfg["amp"] not in AMP_MODES:
        raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got {cfg['amp']!r}")


def _packaged_config(path: str | os.PathLike) -> Any:
    """A recipe shipped in the package (``--config dknn/paper.yaml``), else UserError."""
    import importlib.resources

    name = pathlib.PurePath(path).as_posix()
    node = importlib.resources.files("neuralsort.experiments") / "configs"
    parts = [s for s in name.split("/") if s not in ("", ".")]
    for part in parts:
        node = node / part
    if parts and ".." not in parts and not pathlib.PurePath(path).is_absolute() and node.is_file():
        return node
    raise UserError(
        f"config file not found: {path} (check the --config path; shipped recipes such as "
        "dknn/paper.yaml or quality/sort-n5.yaml are found by that name)"
    )


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML file (or a recipe shipped in the package, by name); :class:`UserError`
    if missing, invalid or not a mapping."""
    import yaml

    p = pathlib.Path(path)
    if not p.is_file():
        p = _packaged_config(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {p} is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of setting: value")
    return data


def resolve_config(args: argparse.Namespace, defaults: dict[str, Any]) -> Config:
    """Merge settings: COMMON_DEFAULTS < ``defaults`` < YAML file (``--config``) < explicit flags.

    A flag counts as explicit when its parsed value is not ``None``. Keys in the YAML file that
    are neither in ``defaults`` nor common raise :class:`UserError` (typos fail loudly); keys
    starting with ``_`` are ignored, so a run's own ``config.yaml`` can be passed back as
    ``--config``.
    """
    cfg = Config({**COMMON_DEFAULTS, **defaults})
    explicit: set[str] = set()
    config_path = getattr(args, "config", None)
    if config_path:
        data = {KEY_ALIASES.get(k, k): v for k, v in load_yaml(config_path).items()}
        unknown = sorted(k for k in data if not str(k).startswith("_") and k not in cfg)
        if unknown:
            raise UserError(
                f"config file {config_path}: unknown setting(s) {', '.join(map(str, unknown))}; "
                f"known: {', '.join(sorted(cfg))}"
            )
        for k, v in data.items():
            if not str(k).startswith("_"):
                cfg[k] = v
                explicit.add(k)
    skip = {"func", "command", "config"}
    for k, v in vars(args).items():
        if k in skip or v is None:
            continue
        cfg[k] = v
        explicit.add(k)
    cfg["config"] = config_path
    cfg.explicit = explicit
    return cfg


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` (or ``cuda:1``) into a device; UserError if unavailable."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was asked for but no CUDA GPU is available; use --device cpu"
        )
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("--device mps was asked for but MPS is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use auto, cpu, cuda or mps") from None
