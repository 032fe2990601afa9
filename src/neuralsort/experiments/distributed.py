"""Multi-process training with ``torch.distributed``: set-up, rank queries and small collectives.

Every training command calls :func:`setup` once. Started by ``torchrun`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) with ``WORLD_SIZE > 1``, it
joins the process group (backend ``nccl`` for CUDA, ``gloo`` otherwise) and gives each process the
GPU of its local rank; started as a plain process it does nothing, and every helper below is then
the identity (or a no-op), so the single-process path runs exactly as before.

How the experiments use it:

* data: every rank draws the same index permutation from the same seeded generator and takes its
  own disjoint slice of each global batch (what a distributed sampler does); randomness that is
  private to a rank (augmentation, Gumbel noise) comes from a generator seeded by
  :func:`rank_seed`, which is the plain seed on rank 0. The *global* batch is the per-process
  batch times the world size; an epoch keeps the same number of images, so it has ``world_size``
  times fewer steps.
* gradients: :func:`wrap_ddp` (``DistributedDataParallel``) averages them over ranks. The kNN loss
  also needs every rank's neighbours: :func:`all_gather_with_grad` concatenates them in rank order
  and sends their gradients back to their owners.
* metrics: :func:`reduce_sum` / :func:`reduce_mean`; files: only :func:`is_main` (rank 0) writes;
  evaluation runs on rank 0 while the others wait in :func:`barrier`.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import gc
import os
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .config import UserError, resolve_device

__all__ = [
    "Context",
    "setup",
    "shutdown",
    "is_distributed",
    "rank",
    "world_size",
    "active_world_size",
    "local_rank",
    "is_main",
    "barrier",
    "reduce_sum",
    "reduce_mean",
    "all_gather_with_grad",
    "all_gather_objects",
    "broadcast_object",
    "from_rank0",
    "rank_seed",
    "wrap_ddp",
    "unwrap",
    "free_port",
    "local_launch_env",
]

# How long a rank waits in a collective (e.g. a barrier while rank 0 evaluates) before failing.
_TIMEOUT_ENV = "NEURALSORT_DIST_TIMEOUT_MIN"
_DEFAULT_TIMEOUT_MIN = 30.0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} must be an integer") from None


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank: the process group's, else ``$RANK`` (when ``$WORLD_SIZE > 1``).

    The same rule decides :attr:`neuralsort.experiments.run_folder.Run.is_main` and the progress
    bars.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    # before the process group exists: torchrun's variables, when they describe several processes
    if _env_int("WORLD_SIZE", 1) > 1:
        return _env_int("RANK", 0)
    return 0


def world_size() -> int:
    """Number of processes: the process group's, else ``$WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def active_world_size() -> int:
    """Processes that share the work now: the process group's size (several processes), else 1
    (unlike :func:`world_size`, ``$WORLD_SIZE`` alone does not count)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank of this process on its node (``$LOCAL_RANK``, set by torchrun), else 0."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on rank 0: the process that prints, logs and writes files."""
    return rank() == 0


def _device_for_rank(name: str, lrank: int, world: int) -> torch.device:
    device = resolve_device(name)
    if world > 1 and device.type == "cuda":
        if device.index is not None:
            raise UserError(
                f"--device {name} names one GPU, but {world} processes need one each; "
                "use --device cuda (process i gets GPU LOCAL_RANK=i)"
            )
        count = torch.cuda.device_count()
        if lrank >= count:
            raise UserError(
                f"LOCAL_RANK {lrank} has no GPU: this node has {count}; start at most "
                f"{count} processes per node (torchrun --nproc_per_node {count})"
            )
        device = torch.device("cuda", lrank)
    if world > 1 and device.type == "mps":
        raise UserError("multi-process training is not supported on MPS; use --device cpu")
    return device


@dataclass(frozen=True)
class Context:
    """Where this process stands: its ranks, the number of processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that prints and writes files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1


def setup(device: str = "auto") -> Context:
    """Join the process group when started by torchrun with ``WORLD_SIZE > 1``; say where we are.

    The device is ``resolve_device(device)``, except that with several processes on CUDA each
    process gets ``cuda:<LOCAL_RANK>`` (and makes it the current device). Backend: ``nccl`` on
    CUDA, ``gloo`` otherwise. A process group that already exists is reused (so several commands
    can run in one process); it is destroyed when the process exits. Without ``WORLD_SIZE > 1``
    this only resolves the device: rank 0 of 1.
    """
    world = world_size()
    lrank = local_rank()
    dev = _device_for_rank(device, lrank, world)
    if world <= 1:
        return Context(0, 1, 0, dev)
    if dist.is_available() and dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return Context(dist.get_rank(), dist.get_world_size(), lrank, dev)
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise UserError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set; start the command with "
            "torchrun (e.g. torchrun --nproc_per_node 2 -m neuralsort.experiments.cli ...)"
        )
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    try:
        minutes = float(os.environ.get(_TIMEOUT_ENV, _DEFAULT_TIMEOUT_MIN))
    except ValueError:
        msg = f"environment variable {_TIMEOUT_ENV} must be a number of minutes"
        raise UserError(msg) from None
    dist.init_process_group(
        backend=backend, init_method="env://", timeout=_dt.timedelta(minutes=minutes)
    )
    atexit.register(_cleanup)
    return Context(dist.get_rank(), dist.get_world_size(), lrank, dev)


def shutdown() -> None:
    """Leave the process group in order after a command succeeded (no-op without one).

    Every rank first meets the others in a barrier, so that no rank closes its connections while
    another still talks to it; then what the finished command left (DDP reducers, work handles)
    is collected and the group destroyed, while the interpreter is fully alive. Left to
    interpreter exit, gloo's worker threads can outlive what they hold and abort a process whose
    run succeeded ("terminate called without an active exception"). The command-line entry point
    calls this when a command returns 0; after a failure it is not called (the other ranks may
    never reach the barrier) and the group is destroyed, best effort, at exit.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    barrier()
    gc.collect()
    dist.destroy_process_group()


def _cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_sum(values: list[float] | tuple[float, ...]) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (float64; unchanged in one process)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def reduce_mean(values: list[float] | tuple[float, ...]) -> list[float]:
    """Element-wise means of ``values`` over all ranks (unchanged in one process)."""
    w = active_world_size()
    return [v / w for v in reduce_sum(values)]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns each rank the summed gradient of its rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        ctx.rank = dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        # every rank's loss depends on every gathered row: sum their gradients (all_reduce works
        # on every backend; reduce_scatter would send less but gloo lacks it)
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` (same shape on all) along dim 0, in rank order.

    Differentiable: the gradient with respect to this rank's rows is the sum over ranks of each
    rank's loss gradient, so with ``DistributedDataParallel`` averaging the parameter gradients the
    result equals one process computing the mean loss over the global batch. Returns ``x`` itself
    in a single process.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def from_rank0(compute: Any) -> Any:
    """Run ``compute()`` on rank 0 only and hand its result (or its UserError) to every rank."""
    if not is_distributed():
        return compute()
    if dist.get_rank() == 0:
        try:
            box: list[Any] = [("ok", compute())]
        except UserError as exc:
            box = [("error", str(exc))]
        except Exception as exc:  # noqa: BLE001 - tell the other ranks, then re-raise here
            dist.broadcast_object_list([("error", f"rank 0 failed: {exc!r}")], src=0)
            raise
    else:
        box = [None]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


def rank_seed(seed: int, rank_: int | None = None) -> int:
    """A seed for a rank's private random stream: ``seed`` itself on rank 0, else a mix of both.

    Rank 0 keeping the plain seed keeps single-process runs unchanged.
    """
    r = rank() if rank_ is None else int(rank_)
    if r == 0:
        return int(seed)
    mixed = np.random.SeedSequence([int(seed) % 2**63, r]).generate_state(2, dtype=np.uint32)
    return int(mixed[0]) << 31 | int(mixed[1]) >> 1


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else ``module`` itself.

    The wrapped module must use every trainable parameter in each forward (all the experiments'
    nets do). Save and evaluate :func:`unwrap` of it, so checkpoint keys do not change.
    """
    if not is_distributed():
        return module
    if not any(p.requires_grad for p in module.parameters()):
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (else ``module``)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a rendezvous of processes on this machine)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_launch_env(rank_: int, world: int, port: int) -> dict[str, str]:
    """What ``torchrun --standalone`` sets for process ``rank_`` of ``world`` on one machine.

    For starting the processes by hand (``torch.multiprocessing.spawn``), as the tests and
    ``benchmarks/train_step.py`` do: put these into ``os.environ``, then call :func:`setup`.
    """
    return {
        "RANK": str(rank_),
        "LOCAL_RANK": str(rank_),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
