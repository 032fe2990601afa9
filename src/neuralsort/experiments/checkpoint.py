"""Checkpoints: atomic ``weights_only`` files, and the training state saved and restored by resume.

Every training command saves and resumes through this module (see :mod:`.loop`):

* :func:`save_file` / :func:`load_file`: ``last.pt`` and ``best.pt`` in a run folder, written
  atomically from the CPU (a checkpoint made on a GPU loads on a machine without one) and read with
  ``torch.load(..., weights_only=True)``; with several processes rank 0 reads, every rank gets it.
* :func:`training_state`: the state of a training run (model, optimiser, schedule, gradient scaler,
  the shared random generators and every rank's private streams) plus the task's own entries; a
  collective with several processes, since it gathers the ranks' streams.
* :func:`restore`: the inverse, with the checks a resume needs (the checkpoint fits the model, and
  it was written by as many processes as this start has).
"""

from __future__ import annotations

import os
import pathlib
import secrets
import sys
from typing import Any

import torch
from torch import nn

from . import distributed
from .config import UserError
from .seeding import rng_state, set_rng_state

__all__ = [
    "atomic_write_bytes",
    "to_cpu",
    "save_file",
    "load_file",
    "training_state",
    "restore",
    "restore_generator",
]


def _new_temporary(path: pathlib.Path) -> tuple[int, str]:
    """A new file beside ``path``, open for writing, with the mode :func:`open` would give it
    (0666 less the umask: 0644 usually; ``tempfile.mkstemp`` would make it 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # a name already taken: draw another
            continue


def atomic_write_bytes(path: pathlib.Path, write: Any) -> None:
    """Write via a temporary file in the same folder then ``os.replace`` (atomic on POSIX)."""
    fd, tmp = _new_temporary(path)
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


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside dicts, lists and tuples moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_file(folder: pathlib.Path, state: dict[str, Any], *, is_best: bool) -> None:
    """Write ``state`` to ``folder/last.pt`` (and ``best.pt`` when ``is_best``), each atomically.

    ``best.pt`` goes first: a kill between the two writes then leaves ``last.pt`` one epoch
    behind (that epoch is trained again on resume), never a ``last.pt`` whose ``best_epoch``
    names weights that ``best.pt`` does not hold.
    """
    state = to_cpu(state)
    if is_best:
        atomic_write_bytes(folder / "best.pt", lambda f: torch.save(state, f))
    atomic_write_bytes(folder / "last.pt", lambda f: torch.save(state, f))


def load_file(path: pathlib.Path, *, shared: bool = False) -> dict[str, Any] | None:
    """Load a checkpoint on the CPU (``weights_only``), or None if absent; UserError if unreadable.

    ``shared=True`` is for every rank at once (a collective with several processes): rank 0
    reads the file and all ranks get its contents, so other nodes need no shared disk.
    """

    def read() -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
            msg = f"cannot read checkpoint {path}: {exc}".replace("\n", " ")
            raise UserError(msg) from None

    return distributed.from_rank0(read) if shared else read()


def training_state(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    amp: Any,
    generator: torch.Generator | None = None,
    streams: dict[str, torch.Generator] | None = None,
    **extra: Any,
) -> dict[str, Any] | None:
    """The checkpoint of a training run on rank 0 (None on the others); a collective.

    Args:
        model: saved as ``model`` (pass the module itself, not its DDP wrapper).
        optimizer, scheduler: saved as ``optimizer`` / ``scheduler`` (``{}`` when None).
        amp: the :class:`~neuralsort.experiments.recipe.Amp` whose gradient scaler is saved.
        generator: a generator shared by all ranks, saved with the global ones under ``rng``.
        streams: this rank's private generators by name; every rank's are saved under
            ``ranks`` (a list in rank order).
        extra: the task's own entries (epoch, history, data-source state, ...).
    """
    mine = {name: g.get_state() for name, g in (streams or {}).items()}
    every = distributed.all_gather_objects(mine)
    if not distributed.is_main():
        return None
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "amp": amp.state_dict(),
        "rng": rng_state(generator),
        "ranks": every,
        "world_size": len(every),
        **extra,
    }


def _saved_streams(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's private streams (single-process checkpoints of older versions: ``noise``)."""
    if "ranks" in state:
        return [dict(r or {}) for r in state["ranks"]]
    old = state.get("noise_rng", state.get("noise"))
    return [{"noise": old} if old is not None else {}]


def restore(
    state: dict[str, Any],
    path: pathlib.Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    amp: Any,
    generator: torch.Generator | None = None,
    streams: dict[str, torch.Generator] | None = None,
    fallback_seed: int = 0,
) -> None:
    """Load what :func:`training_state` saved into the live objects; UserError if it cannot fit.

    The checkpoint must come from as many processes as this start has: the global batch and each
    rank's random streams depend on it. A private stream saved on another device type (a CUDA
    generator read on the CPU) restarts from ``fallback_seed`` with a note (see
    :func:`restore_generator`).
    """
    world = distributed.active_world_size()
    saved = int(state.get("world_size", 1))
    if saved != world:
        raise UserError(
            f"checkpoint {path} was written by a run with {saved} process(es); "
            f"resume it with the same number (this start has {world}), as the global batch and "
            "each rank's random stream depend on it"
        )
    try:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UserError(
            f"checkpoint {path} does not fit this model/config "
            f"({str(exc).splitlines()[0]}); use a new --out"
        ) from None
    amp.load_state_dict(state.get("amp"))
    set_rng_state(state["rng"], generator)
    mine = _saved_streams(state)[distributed.rank() if world > 1 else 0]
    for name, g in (streams or {}).items():
        restore_generator(g, mine.get(name), fallback_seed=fallback_seed, what=name)


def restore_generator(
    generator: torch.Generator, state: torch.Tensor | None, *, fallback_seed: int, what: str
) -> bool:
    """Load a saved generator state; if it does not fit (saved on another device type), reseed.

    A CPU generator state cannot be loaded into a CUDA generator and the other way round, so a
    run resumed on another kind of device continues with ``fallback_seed`` for that stream and a
    note on stderr (its results then differ from an uninterrupted run). Returns True if restored.
    """
    if state is not None:
        try:
            generator.set_state(state)
            return True
        except (RuntimeError, ValueError, TypeError):
            pass
    generator.manual_seed(int(fallback_seed))
    print(
        f"note: the saved {what} random stream does not fit this device; it restarts from a "
        "derived seed (results will differ from an uninterrupted run)",
        file=sys.stderr,
    )
    return False
