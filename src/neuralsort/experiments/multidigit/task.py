"""The training task of ``neuralsort sort`` and ``neuralsort quantile`` on the shared loop.

Both experiments train a method from :mod:`.models` (:mod:`.sorters`, :mod:`.medians`) on batches of
multi-digit MNIST sequences drawn from an infinite, seeded source, evaluate it on a fixed validation
set after every epoch, keep the best-validation checkpoint and report its test metrics. Each
experiment module only supplies an :class:`Experiment`: how to build the method, how to score
predictions and which validation metric selects the checkpoint; :func:`train_and_test` does the rest
with :class:`MultiDigitTask` on :func:`neuralsort.experiments.loop.fit`.

Outputs (in the run folder, see :class:`neuralsort.experiments.run_folder.Run`): ``config.yaml``,
``log.jsonl`` (one line per epoch), ``last.pt`` / ``best.pt``, ``metrics.json`` and ``history.png``.
``--resume`` continues from ``last.pt`` (model, optimizer, scheduler, data and noise generators) and
ends with the same result as an uninterrupted run (on the CPU; CUDA's reductions are not
deterministic).

Under ``torchrun`` every rank draws the same global batch of ``batch_size x world_size`` sequences
from the shared, seeded source and renders only its own ``batch_size`` of them; the methods train
with DistributedDataParallel (the mean loss over the global batch, exactly), each rank has its own
Gumbel/Plackett-Luce noise stream, and validation and test run on rank 0.
"""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..checkpoint import load_file
from ..config import UserError
from ..data import load_raw_dataset
from ..data.multidigit import MultiDigitEvalSet, MultiDigitNumbers, make_splits
from ..loop import EpochStats, Result, Task, fit, start_run
from ..recipe import Amp
from ..run_folder import Run
from ..seeding import seed_everything
from .settings import validate_common

__all__ = [
    "Experiment",
    "MultiDigitTask",
    "init_source",
    "load_multidigit_splits",
    "device_source",
    "loss_module",
    "make_test_set",
    "train_and_test",
]


@dataclass
class Experiment:
    """What distinguishes one multi-digit experiment from the other.

    Attributes:
        name: run-name prefix (``runs/<name>-<timestamp>``).
        build: ``(cfg, image_shape) -> nn.Module`` with ``loss`` and ``predict`` (see the models).
        evaluate: ``(model, eval_set, device, batch_size) -> {metric: value}`` without a prefix.
        select: the metric that picks the best checkpoint, and ``mode`` ``"max"`` or ``"min"``.
        plot_keys: per-epoch history keys drawn in ``history.png``.
    """

    name: str
    build: Callable[[dict[str, Any], tuple[int, int]], nn.Module]
    evaluate: Callable[[nn.Module, MultiDigitEvalSet, torch.device, int], dict[str, float]]
    select: str
    mode: str
    plot_keys: list[str]


def make_test_set(source: MultiDigitNumbers, cfg: dict[str, Any], n: int) -> MultiDigitEvalSet:
    """The fixed test set of sequences of ``n`` numbers: the same for every run at that ``n`` with
    the same ``test_sequences`` and ``eval_seed``, whatever n it trained at."""
    return source.eval_set(int(cfg["test_sequences"]), n, seed=int(cfg["eval_seed"]) + 1)


def init_source(
    init_from: str, beside: pathlib.Path | None = None
) -> tuple[pathlib.Path, pathlib.Path | None]:
    """The checkpoint ``--init_from`` names (a run folder's ``best.pt``, or a file) and the
    ``metrics.json`` beside it (None if there is none).

    A relative path that does not exist from the working directory is looked up in ``beside``
    (the folder holding this run's folder), so a cell of a table grid can name another cell.
    """
    path = pathlib.Path(init_from).expanduser()
    if not path.exists() and not path.is_absolute() and beside is not None:
        path = beside / path
    ckpt = path / "best.pt" if path.is_dir() else path
    if not ckpt.is_file():
        raise UserError(
            f"--init_from {init_from}: no checkpoint there (give a finished run's folder, which "
            "holds best.pt, or a .pt file)"
        )
    metrics = ckpt.parent / "metrics.json"
    return ckpt, metrics if metrics.is_file() else None


@dataclass(kw_only=True, eq=False)
class MultiDigitTask(Task):
    """A multi-digit experiment on the shared loop: global batches from one seeded source.

    Attributes:
        run, cfg: the run folder and its resolved settings.
        experiment: what the command trains and how it scores (see :class:`Experiment`).
        train_src: the seeded training source (its state is checkpointed); ``render_src`` the
            same source with its digit pool on the device.
        val_set, test_set: the fixed evaluation sets at ``--n``.
        noise: this rank's Gumbel / Plackett-Luce stream (also in ``streams``).
        device: the training device.
    """

    run: Run
    cfg: dict[str, Any]
    experiment: Experiment
    train_src: MultiDigitNumbers
    render_src: MultiDigitNumbers
    val_set: MultiDigitEvalSet
    test_set: MultiDigitEvalSet
    noise: torch.Generator
    device: torch.device

    def __post_init__(self) -> None:
        self.world = distributed.active_world_size()
        self.rank = distributed.rank() if self.world > 1 else 0
        self.n, self.batch_size = int(self.cfg["n"]), int(self.cfg["batch_size"])
        self.eval_bs = int(self.cfg["eval_batch_size"])
        # hard training sequences (--close_sequences); configs of older runs lack the keys
        self.close = float(self.cfg.get("close_sequences") or 0.0)
        self.spread = int(self.cfg.get("close_spread") or 100)
        self.augment = str(self.cfg.get("augment") or "none")
        # resolved now, not after training: a moved --init_from folder fails before the work
        self.init_record = self._init_record()

    def state(self, mid_epoch: bool) -> dict[str, Any]:
        # "noise": rank 0's stream, as in earlier checkpoints
        return {"data": self.train_src.state_dict(), "noise": self.noise.get_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.train_src.load_state_dict(state["data"])

    def loss(self, net: nn.Module, step: int, amp: Amp) -> tuple[torch.Tensor, dict[str, float]]:
        # the global batch from the shared source; this rank renders its own slice
        bs, device = self.batch_size, self.device
        index, all_values = self.train_src.sample_indices(
            bs * self.world, self.n, close=self.close, spread=self.spread
        )
        mine = slice(self.rank * bs, (self.rank + 1) * bs)
        images = self.render_src.render(
            index[mine].to(device, non_blocking=True),
            augment=self.augment,
            generator=self.noise,  # this rank's own stream: each rank moves its own images
        )
        values = all_values[mine].to(device)
        if self.train_module is None:  # nothing to train (the constant baseline)
            self.model.observe(all_values.to(device))  # every rank sees the whole global batch
            with torch.no_grad():
                return self.model.loss(images, values), {}
        with amp.autocast():
            return net(images, values, generator=self.noise), {}

    def record(self, stats: EpochStats) -> dict[str, Any]:
        return {
            "epoch": stats.epoch,
            "step": stats.epoch * stats.steps,
            "train_loss": stats.loss,
            "lr": stats.lr,
            "epoch_seconds": stats.seconds,
            "steps_per_second": stats.steps / max(stats.seconds, 1e-9),
        }

    def diverged(self, epoch: int, step: int | None, loss: float) -> str:
        return f"training diverged in epoch {epoch} (loss {loss}); lower --lr or raise --tau"

    def validate(self) -> dict[str, Any]:
        val = self.experiment.evaluate(self.model, self.val_set, self.device, self.eval_bs)
        return {f"val_{k}": v for k, v in val.items()}

    def _init_record(self) -> dict[str, Any]:
        """Where the weights started (``--init_from``) and the training time that made them.

        ``init_train_seconds``: the earlier run's ``train_seconds`` plus its own
        ``init_train_seconds``, so a chain of warm starts counts all of its training.
        """
        if not self.cfg["init_from"]:
            return {}
        ckpt, metrics_file = init_source(str(self.cfg["init_from"]), self.run.path.parent)
        before = None
        if metrics_file is not None:
            earlier = json.loads(metrics_file.read_text())
            before = float(earlier.get("train_seconds", 0.0)) + float(
                earlier.get("init_train_seconds", 0.0)
            )
        return {"init_from": str(ckpt), "init_train_seconds": before}

    def finish(self, result: Result) -> dict[str, Any]:
        cfg, run = self.cfg, self.run
        test = self.experiment.evaluate(self.model, self.test_set, self.device, self.eval_bs)
        test_by_n = {str(self.n): test}
        if getattr(self.model, "any_n", False):  # one model for every n: test it at each
            for m in cfg["eval_ns"]:
                if m != self.n:
                    fixed = make_test_set(self.test_set.source, cfg, m)
                    test_by_n[str(m)] = self.experiment.evaluate(
                        self.model, fixed, self.device, self.eval_bs
                    )
        test_by_n = {k: test_by_n[k] for k in sorted(test_by_n, key=int)}
        best_record = next((r for r in result.history if r["epoch"] == result.best_epoch), {})
        steps = len(result.history) * result.steps_per_epoch
        seconds = result.train_seconds
        metrics: dict[str, Any] = {
            **{f"test_{k}": v for k, v in test.items()},
            "test_by_n": test_by_n,
            **{k: v for k, v in best_record.items() if k.startswith("val_")},
            "best_epoch": result.best_epoch,
            "epochs": len(result.history),
            "steps": steps,
            "train_seconds": seconds,
            "wall_time_s": result.elapsed,  # every segment of the run, resumes included
            "steps_per_second": steps / seconds if seconds > 0 else None,
            "n": self.n,
            "method": cfg["method"],
            "test_sequences": len(self.test_set),
            "val_sequences": len(self.val_set),
            "world_size": self.world,
            "amp": cfg["amp"],
            **self.init_record,
            "device": str(self.device),
        }
        run.log({"event": "test", **metrics})
        return metrics


def load_multidigit_splits(
    cfg: dict[str, Any], raw: tuple[Any, ...] | None = None
) -> dict[str, MultiDigitNumbers]:
    """MNIST from ``cfg["data_dir"]`` turned into train / val / test multi-digit number sources.

    Training digits: the first 50,000 MNIST training images; validation: the last 10,000; test: the
    MNIST test set (smaller stand-in files keep the same 5:1 train/validation proportion).
    ``raw``: the output of ``load_raw_dataset("mnist", ...)`` when already loaded.
    """
    if raw is None:
        raw = load_raw_dataset("mnist", cfg.get("data_dir"))
    tr_x, tr_y, te_x, te_y, info = raw
    num_train = int(tr_x.shape[0])
    num_val = 10_000 if num_train >= 20_000 else max(1, num_train // 6)
    try:
        return make_splits(
            tr_x, tr_y, te_x, te_y, digits=cfg["digits"], seed=cfg["seed"], num_val=num_val
        )
    except ValueError as exc:
        raise UserError(f"MNIST in {info.get('source')}: {exc}") from None


class _TrainLoss(nn.Module):
    """A method's training loss as ``forward`` (DistributedDataParallel hooks into ``forward``)."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(
        self, images: torch.Tensor, values: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.method.loss(images, values, generator=generator)


def loss_module(model: nn.Module, device: torch.device) -> nn.Module:
    """What a training step calls: ``(images, values, generator) -> loss``.

    Wrapped in DistributedDataParallel with several processes. With AMP the per-image nets
    (:class:`~neuralsort.experiments.multidigit.models.DigitCNN`) run in half precision but hand
    float32 scores to the relaxations and losses, so the sort, its logarithm and the loss stay
    float32.
    """
    return distributed.wrap_ddp(_TrainLoss(model), device)


def device_source(source: MultiDigitNumbers, device: torch.device) -> MultiDigitNumbers:
    """``source`` with its digit pool on ``device`` (renders there: no per-step image copies).

    The generator stays the original's (a CPU generator), so the drawn numbers do not change.
    """
    if device.type == "cpu":
        return source
    moved = copy.copy(source)
    moved.images = source.images.to(device)
    return moved


def _init_weights(model: nn.Module, init_from: str, beside: pathlib.Path) -> None:
    ckpt, _ = init_source(init_from, beside)
    state = load_file(ckpt)
    weights = state.get("model") if isinstance(state, dict) else None
    try:
        model.load_state_dict(weights if weights is not None else state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0]
        raise UserError(
            f"--init_from {init_from}: its weights do not fit this method ({first}); start from "
            "a run of the same --method"
        ) from None


def train_and_test(
    cfg: dict[str, Any],
    experiment: Experiment,
    *,
    splits: dict[str, MultiDigitNumbers] | None = None,
) -> dict[str, Any]:
    """Train ``experiment`` as ``cfg`` says, then test the best-validation model; return the
    metrics.

    Args:
        cfg: resolved configuration (see :data:`BASE_DEFAULTS` and the common run settings).
        experiment: what to train and how to score it.
        splits: train / val / test number sources; loaded from ``cfg["data_dir"]`` when None.
    """
    run, ctx, amp, raw = start_run(
        cfg,
        experiment.name,
        check=validate_common,
        load=lambda c: load_raw_dataset("mnist", c.get("data_dir")) if splits is None else None,
    )
    device, world = ctx.device, ctx.world_size
    seed = int(cfg["seed"])
    seed_everything(seed)
    if splits is None:
        splits = load_multidigit_splits(cfg, raw)
    train_src = splits["train"]
    # Re-seed the training stream from cfg so a resumed run rebuilds the same starting state
    # (the same on every rank: each renders its own slice of the global batch).
    train_src.generator.manual_seed(seed)
    render_src = device_source(train_src, device)
    image_shape = (cfg["digits"] * train_src.digit_shape[0], train_src.digit_shape[1])
    n = int(cfg["n"])
    val_set = splits["val"].eval_set(cfg["val_sequences"], n, seed=cfg["eval_seed"])
    test = make_test_set(splits["test"], cfg, n)

    model = experiment.build(cfg, image_shape).to(device)
    if cfg["init_from"] and not run.resumed:  # a resumed run restores its own weights
        _init_weights(model, str(cfg["init_from"]), run.path.parent)
    trainable = getattr(model, "trainable", True)
    noise = torch.Generator(device=device)
    noise.manual_seed(distributed.rank_seed(seed + 1))  # this rank's own stream
    batch_size = int(cfg["batch_size"])
    if ctx.is_main and world > 1:
        print(
            f"{experiment.name}: {world} processes x {batch_size} sequences = global batch "
            f"{world * batch_size}; output {run.path}"
        )
    task = MultiDigitTask(
        model=model,
        train_module=_TrainLoss(model) if trainable else None,
        steps_per_epoch=int(cfg["steps_per_epoch"]),
        select=f"val_{experiment.select}",
        mode=experiment.mode,
        optimizer=(
            {"optimizer": "adam", "lr": cfg["lr"], "weight_decay": cfg["weight_decay"]}
            if trainable
            else None
        ),
        streams={"noise": noise},
        fallback_seed=distributed.rank_seed(seed + 2),
        plot_keys=experiment.plot_keys,
        time_key=None,
        run=run,
        cfg=cfg,
        experiment=experiment,
        train_src=train_src,
        render_src=render_src,
        val_set=val_set,
        test_set=test,
        noise=noise,
        device=device,
    )
    return fit(task, run, cfg, amp, device)
