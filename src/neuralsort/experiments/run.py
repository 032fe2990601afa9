"""Shared run machinery for every experiment: flags, config resolution, seeding, output folders.

An experiment module uses it like this::

    def add_parser(subparsers):
        p = subparsers.add_parser("myexp", help="...")
        add_common_args(p)
        add_flag(p, "--tau", type=float, help="temperature")

    def main(args):
        cfg = resolve_config(args, DEFAULTS)          # defaults < --config YAML < explicit flags
        gen = seed_everything(cfg["seed"])
        device = resolve_device(cfg["device"])
        run = Run.start(cfg, name="myexp-...")         # may update cfg in place on --resume
        state = run.load_checkpoint("last") if cfg["resume"] else None
        ...
        run.log({"epoch": e, "val_acc": acc})
        run.save_checkpoint(state, is_best=...)
        run.write_metrics({...})

Every flag defaults to ``None`` on the parser so that :func:`resolve_config` can tell the flags a
user typed from the ones left alone; real defaults live in the experiment's ``DEFAULTS`` dict.

User mistakes (missing data, bad values) raise :class:`UserError`; the CLI prints its message on
one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import platform
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "UserError",
    "Config",
    "COMMON_DEFAULTS",
    "add_flag",
    "add_common_args",
    "resolve_config",
    "seed_everything",
    "resolve_device",
    "rng_state",
    "set_rng_state",
    "progress",
    "Run",
]

T = TypeVar("T")


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
_ALWAYS_CURRENT = {"resume", "out", "device", "config", "data_dir"}

# Older spellings of settings, accepted in YAML files and saved config.yaml files.
_KEY_ALIASES = {"num_threads": "threads"}

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


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add the flags every experiment shares (see :data:`COMMON_DEFAULTS` for their defaults)."""
    g = parser.add_argument_group("common run options")
    add_flag(g, "--config", metavar="FILE.yaml", help="YAML file of settings; flags override it")
    add_flag(g, "--out", metavar="DIR", help="output folder (default: runs/<name>-<timestamp>)")
    add_flag(g, "--seed", type=int, help="random seed (default 0)")
    add_flag(
        g,
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        help="compute device (default auto: cuda, then mps, then cpu)",
    )
    add_flag(
        g,
        "--data_dir",
        metavar="DIR",
        help="folder holding the data sets (default: $NEURALSORT_DATA, then ./data)",
    )
    add_flag(g, "--num_epochs", type=int, metavar="N", help="number of training epochs")
    add_flag(g, "--steps_per_epoch", type=int, metavar="N", help="cap on steps per epoch")
    add_flag(
        g,
        "--threads",
        "--num_threads",
        "--num-threads",
        type=int,
        metavar="N",
        help="torch CPU threads per process (default: torch's choice; torchrun sets 1)",
    )
    add_flag(
        g,
        "--amp",
        choices=list(AMP_MODES),
        help="mixed precision for training steps: off (default), bf16 or fp16 (fp16 adds a "
        "gradient scaler); evaluation stays float32",
    )
    add_flag(
        g,
        "--resume",
        action="store_true",
        help="continue the run in --out (or the latest runs/<name>-*) from its last checkpoint",
    )


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


def _load_yaml(path: str | os.PathLike) -> dict[str, Any]:
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
        data = {_KEY_ALIASES.get(k, k): v for k, v in _load_yaml(config_path).items()}
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


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a new seeded Generator."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may use the global RNG
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


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


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """All random-generator states as tensors and primitives (loadable with weights_only)."""
    np_state = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore the states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        # a checkpoint from a machine with another number of GPUs restores what fits
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def progress(iterable: Iterable[T], **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` on stderr; off with ``NEURALSORT_PROGRESS=0`` or rank != 0.

    Returns the ``tqdm`` object (iterate it; ``set_postfix`` works).
    """
    from tqdm.auto import tqdm

    off = os.environ.get("NEURALSORT_PROGRESS", "1") == "0" or _rank() != 0
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, disable=off, **kwargs)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    # before the process group exists: torchrun's variables, when they describe several processes
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return int(os.environ.get("RANK", "0") or 0)
    return 0


def _group_active() -> bool:
    """True inside an initialised process group with more than one process."""
    d = torch.distributed
    return d.is_available() and d.is_initialized() and d.get_world_size() > 1


def _from_rank0(compute: Any) -> Any:
    """Run ``compute()`` on rank 0 only and hand its result (or its UserError) to every rank."""
    if not _group_active():
        return compute()
    d = torch.distributed
    if d.get_rank() == 0:
        try:
            box: list[Any] = [("ok", compute())]
        except UserError as exc:
            box = [("error", str(exc))]
        except Exception as exc:  # noqa: BLE001 - tell the other ranks, then re-raise here
            d.broadcast_object_list([("error", f"rank 0 failed: {exc!r}")], src=0)
            raise
    else:
        box = [None]
    d.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


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


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside dicts, lists and tuples moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _atomic_write_bytes(path: pathlib.Path, write: Any) -> None:
    """Write via a temporary file in the same folder then ``os.replace`` (atomic on POSIX)."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Run:
    """One experiment run: an output folder with config.yaml, log.jsonl, checkpoints, metrics.

    Create with :meth:`Run.start`. Only rank 0 (``is_main``) writes files.
    """

    def __init__(self, path: pathlib.Path, cfg: dict[str, Any], *, resumed: bool) -> None:
        self.path = path
        self.cfg = cfg
        self.is_main = _rank() == 0
        self.resumed = resumed

    @classmethod
    def start(cls, cfg: dict[str, Any], *, name: str) -> Run:
        """Open the folder ``cfg["out"]`` (or ``runs/<name>-<timestamp>``) and write config.yaml.

        With ``cfg["resume"]`` and no ``out``, the newest ``runs/<name>-*`` folder holding a
        ``last.pt`` is reopened. When resuming, settings the user did not give explicitly (see
        :class:`Config`) are taken from the saved config.yaml, updating ``cfg`` in place.

        With several processes (torchrun), rank 0 chooses the folder and reads the saved settings,
        and every rank gets the same folder, settings and ``resumed`` flag; only rank 0 writes.
        """
        import yaml

        def choose() -> tuple[str, dict[str, Any], bool]:
            path, resumed = cls._choose_folder(cfg, name)
            return str(path), dict(cfg), resumed

        path_text, settings, resumed = _from_rank0(choose)
        if _rank() != 0:
            cfg.update(settings)
        path = pathlib.Path(path_text)

        run = cls(path, cfg, resumed=resumed)
        if run.is_main:
            path.mkdir(parents=True, exist_ok=True)
            doc = _plain(dict(cfg))
            doc["_run"] = {
                "name": name,
                "git_commit": _git_commit(),
                "command": " ".join([pathlib.Path(sys.argv[0]).name, *sys.argv[1:]]),
                "cwd": os.getcwd(),
                "started": _dt.datetime.now().isoformat(timespec="seconds"),
                "host": platform.node(),
                "world_size": (torch.distributed.get_world_size() if _group_active() else 1),
                "versions": _versions(),
            }
            text = yaml.safe_dump(doc, sort_keys=False)
            _atomic_write_bytes(path / "config.yaml", lambda f: f.write(text.encode()))
            run.log({"event": "resume" if resumed else "start", "name": name})
        return run

    @staticmethod
    def _choose_folder(cfg: dict[str, Any], name: str) -> tuple[pathlib.Path, bool]:
        """The run folder and whether it resumes; restores saved settings into ``cfg``."""
        import yaml

        resume = bool(cfg.get("resume"))
        out = cfg.get("out")
        if out:
            path = pathlib.Path(out)
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

        resumed = False
        saved_file = path / "config.yaml"
        if resume and saved_file.is_file():
            saved = yaml.safe_load(saved_file.read_text()) or {}
            saved = {_KEY_ALIASES.get(k, k): v for k, v in saved.items()}
            explicit = getattr(cfg, "explicit", set())
            changed = []
            for k, v in saved.items():
                if str(k).startswith("_") or k in _ALWAYS_CURRENT or k in explicit:
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
        cfg["out"] = str(path)
        return path, resumed

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` (plus a ``time`` stamp) as one JSON line to log.jsonl."""
        if not self.is_main:
            return
        line = {"time": _dt.datetime.now().isoformat(timespec="milliseconds"), **_plain(record)}
        with open(self.path / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()

    def save_checkpoint(self, state: dict[str, Any], *, is_best: bool) -> None:
        """Write ``state`` to last.pt (and best.pt when ``is_best``), each atomically.

        Tensors are written from the CPU, so a plain ``torch.load`` reads a checkpoint made on a
        GPU on a machine without one.
        """
        if not self.is_main:
            return
        state = _to_cpu(state)
        last = self.path / "last.pt"
        _atomic_write_bytes(last, lambda f: torch.save(state, f))
        if is_best:
            _atomic_write_bytes(self.path / "best.pt", lambda f: torch.save(state, f))

    def load_checkpoint(
        self, which: str = "last", *, shared: bool = False
    ) -> dict[str, Any] | None:
        """Load ``<which>.pt`` (``last`` or ``best``) on the CPU, or return None if absent.

        Tensors land on the CPU whatever device wrote them (checkpoints move between machines).
        ``shared=True`` is for every rank at once (a collective with several processes): rank 0
        reads the file and all ranks get its contents, so other nodes need no shared disk.
        """
        p = self.path / f"{which}.pt"

        def read() -> dict[str, Any] | None:
            if not p.is_file():
                return None
            try:
                return torch.load(p, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
                msg = f"cannot read checkpoint {p}: {exc}".replace("\n", " ")
                raise UserError(msg) from None

        return _from_rank0(read) if shared else read()

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics`` to metrics.json atomically."""
        if not self.is_main:
            return
        text = json.dumps(_plain(metrics), indent=2) + "\n"
        _atomic_write_bytes(self.path / "metrics.json", lambda f: f.write(text.encode()))

    def plot_history(self, history: list[dict[str, Any]], keys: list[str], filename: str) -> None:
        """Plot ``keys`` of the per-epoch records in ``history`` against ``epoch`` into a PNG."""
        if not self.is_main or not history:
            return
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            pts = [
                (rec.get("epoch", i), rec[key])
                for i, rec in enumerate(history)
                if rec.get(key) is not None
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(self.cfg.get("out", "") if isinstance(self.cfg, dict) else "")
        fig.tight_layout()
        target = self.path / filename
        _atomic_write_bytes(target, lambda f: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)
