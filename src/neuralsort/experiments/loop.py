"""The one training loop of every experiment (dknn, baseline cnn / knn-ae, sort, quantile).

An experiment describes itself with a :class:`Task`: the model, the loss of one batch, the
validation and the final test. :func:`fit` owns the rest, the same way for all of them: optimiser
and learning-rate schedule, mixed precision, DistributedDataParallel, progress bars, the log,
periodic validation, ``best.pt`` / ``last.pt`` (through :mod:`.checkpoint`), exact resume, and the
hand-over of rank 0's results to every rank.

Several processes (``torchrun``): each rank computes the loss of its own slice of every global
batch (the task decides which), DDP averages the gradients, the epoch's mean loss is reduced over
ranks, and validation and test run on rank 0 while the others wait.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import checkpoint, distributed
from .config import UserError, check_common
from .recipe import Amp, check_recipe, make_optimizer, make_scheduler, parameter_groups, progress
from .run_folder import Run

__all__ = ["Task", "EpochStats", "Result", "start_run", "fit"]


@dataclass
class EpochStats:
    """What the loop measured over one epoch (means over ranks), handed to :meth:`Task.record`."""

    epoch: int  # 1-based
    steps: int
    loss: float  # mean training loss per step
    sums: dict[str, float]  # the task's own per-step counts, summed over steps and ranks
    seconds: float  # training steps only
    lr: float | None


@dataclass
class Result:
    """The end of training, handed to :meth:`Task.finish` on rank 0 (best weights loaded)."""

    history: list[dict[str, Any]]
    best: float | None
    best_epoch: int | None
    steps_per_epoch: int
    train_seconds: float
    elapsed: float  # wall time of every segment of the run (resumes included)


@dataclass
class Task:
    """What an experiment gives the loop; subclasses override the methods.

    A subclass is a ``@dataclass(kw_only=True, eq=False)`` whose own fields hold the task's state
    (its settings, data, generators), next to the loop's fields below; docs/experiments.md
    ("Adding an experiment") has a short one.

    Attributes:
        model: the module saved under ``model`` in the checkpoints and evaluated.
        train_module: what a step calls (wrapped in DDP); ``model`` itself when None.
        optimizer: optimiser settings for :func:`make_optimizer` and :func:`parameter_groups`
            (``optimizer``, ``lr`` or ``nloglr``, ``momentum``, ``nesterov``, ``weight_decay``,
            ``norm_bias_lr``); None when nothing is trained.
        steps_per_epoch: training steps per epoch.
        select: the validation key that picks ``best.pt``; ``mode`` ``max`` or ``min``;
            ``ties_to_later``: an equal later value also becomes the best.
        generator: the generator every rank shares (saved with the global ones).
        streams: this rank's private generators; ``fallback_seed`` reseeds one that cannot be
            restored on this device type.
        sync_every_step: reduce the loss over ranks after every step (the loop can then stop,
            check and checkpoint inside an epoch: see ``checkpoint_minutes``); otherwise the
            epoch's loss is reduced once at its end. The counts are always summed at the end.
        checkpoint_minutes: with ``sync_every_step``, also checkpoint inside an epoch this often.
        plot_keys, plot_file: history keys drawn into the run folder after every epoch.
        time_key: the record's key for the epoch's wall time, validation included (None: none).
    """

    model: nn.Module
    steps_per_epoch: int
    select: str
    mode: str = "max"
    ties_to_later: bool = False
    train_module: nn.Module | None = None
    optimizer: dict[str, Any] | None = None
    generator: torch.Generator | None = None
    streams: dict[str, torch.Generator] = field(default_factory=dict)
    fallback_seed: int = 0
    sync_every_step: bool = False
    checkpoint_minutes: float | None = None
    plot_keys: list[str] = field(default_factory=list)
    plot_file: str = "history.png"
    time_key: str | None = "epoch_time_s"

    def start_epoch(self, epoch: int) -> None:
        """Draw what the epoch needs (shuffles); ``epoch`` is 0-based. Not called mid-epoch."""

    def loss(self, net: nn.Module, step: int, amp: Amp) -> tuple[Tensor, dict[str, float]]:
        """The loss of step ``step`` of this rank's batch, and counts to sum (e.g. correct)."""
        raise NotImplementedError

    def validate_now(self, epoch: int, num_epochs: int) -> bool:
        """Whether to validate after (1-based) ``epoch``; every epoch unless overridden."""
        return True

    def validate(self) -> dict[str, Any]:
        """Rank 0: validation entries of the epoch's record (``select`` among them)."""
        return {}

    def record(self, stats: EpochStats) -> dict[str, Any]:
        """The training entries of the epoch's record (``epoch`` included)."""
        return {"epoch": stats.epoch, "train_loss": stats.loss}

    def diverged(self, epoch: int, step: int | None, loss: float) -> str | None:
        """The error message for a non-finite loss (None: keep going)."""
        return None

    def epoch_message(self, rec: dict[str, Any], is_best: bool, num_epochs: int) -> str | None:
        """Rank 0: a line printed after each epoch (None: nothing)."""
        return None

    def state(self, mid_epoch: bool) -> dict[str, Any]:
        """The task's own checkpoint entries (a data source's state, an epoch's shuffles)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""

    def finish(self, result: Result) -> dict[str, Any]:
        """Rank 0, best weights loaded: test and print; return the metrics, which :func:`fit`
        writes to metrics.json."""
        raise NotImplementedError


def start_run(
    cfg: dict[str, Any],
    name: str | Callable[[dict[str, Any]], str],
    *,
    check: Callable[[dict[str, Any]], None],
    load: Callable[[dict[str, Any]], Any],
) -> tuple[Run, distributed.Context, Amp, Any]:
    """The start every training command shares; returns the run, the context, AMP and the data.

    The settings are checked (UserError on a bad one) before anything starts and again once
    ``--resume`` has brought back a run's saved settings: the common ones
    (:func:`~neuralsort.experiments.config.check_common`), the recipe's
    (:func:`~neuralsort.experiments.recipe.check_recipe`), then the experiment's own with
    ``check(cfg)``. ``name`` (the run folder's prefix) may be a function of the checked settings.
    Then the process group is joined (under torchrun), ``--amp`` is checked on the device, the run
    folder is opened, the thread count set and ``load(cfg)`` reads the data; a folder this start
    created is removed again if that fails with a UserError (missing data leaves no empty run
    behind).
    """

    def check_all(cfg: dict[str, Any]) -> None:
        check_common(cfg)
        check_recipe(cfg)
        check(cfg)

    check_all(cfg)
    if callable(name):
        name = name(cfg)
    ctx = distributed.setup(cfg["device"])  # joins the process group under torchrun
    Amp(cfg["amp"], ctx.device)  # fail on an unsupported --amp before opening a run folder
    run = Run.start(cfg, name=name)  # on --resume this restores the saved settings into cfg
    try:
        check_all(cfg)
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        amp = Amp(cfg["amp"], ctx.device)
        data = load(cfg)
    except UserError:
        if not run.resumed and run.is_main and run.path.is_dir():
            if {p.name for p in run.path.iterdir()} <= {"config.yaml", "log.jsonl"}:
                shutil.rmtree(run.path, ignore_errors=True)
        raise
    return run, ctx, amp, data


def _better(value: float, best: float | None, task: Task) -> bool:
    """Whether validation ``value`` beats ``best``; a NaN never does, and anything beats none."""
    if math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    if value == best:
        return task.ties_to_later
    return value > best if task.mode == "max" else value < best


def fit(
    task: Task,
    run: Run,
    cfg: dict[str, Any],
    amp: Amp,
    device: torch.device,
    *,
    stop_after: int | None = None,
) -> dict[str, Any] | None:
    """Train ``task`` for ``cfg["num_epochs"]`` epochs, resuming ``run`` if it was resumed.

    Returns the metrics of :meth:`Task.finish` on every rank, or None when ``stop_after`` (the
    tests' simulated kill after that many steps in all) stopped the run first.
    """
    t_start = time.time()
    world = distributed.active_world_size()
    say = print if run.is_main else (lambda *a, **k: None)
    model, steps = task.model, int(task.steps_per_epoch)
    num_epochs = int(cfg["num_epochs"])
    net = distributed.wrap_ddp(task.train_module or model, device)
    opt = None
    if task.optimizer:
        opt = make_optimizer(parameter_groups(model, task.optimizer), task.optimizer)
    sched = None
    if opt is not None:
        sched = make_scheduler(opt, cfg, steps_per_epoch=steps, num_epochs=num_epochs)
    parts = dict(model=model, optimizer=opt, scheduler=sched, amp=amp, generator=task.generator)

    epoch, step0, loss_sum, sums = 0, 0, 0.0, {}
    history: list[dict[str, Any]] = []
    best, best_epoch, before, train_seconds = None, None, 0.0, 0.0
    state = run.load_checkpoint("last", shared=True) if run.resumed else None
    if state is not None:
        checkpoint.restore(
            state,
            run.path / "last.pt",
            **parts,
            streams=task.streams,
            fallback_seed=task.fallback_seed,
        )
        task.load_state(state)
        epoch, step0 = int(state["epoch"]), int(state.get("step", 0))
        loss_sum, sums = float(state.get("loss_sum", 0.0)), dict(state.get("sums", {}))
        if distributed.rank() != 0:  # a mid-epoch checkpoint holds the counts of all ranks
            sums = {}
        history = list(state["history"])
        best, best_epoch = state.get("best"), state.get("best_epoch")
        if "best_val" in state and "best" not in state:  # written before the shared loop
            best = state["best_val"] if state["best_val"] >= 0 else None
            best_epoch = best_epoch or None
        before = float(state.get("elapsed", 0.0))
        train_seconds = float(state.get("train_seconds", 0.0))
        say(f"resuming {run.path} at epoch {epoch + 1}, step {step0}")

    def snapshot(done: int, step: int) -> dict[str, Any] | None:
        """The checkpoint after ``done`` epochs and ``step`` steps (a collective).

        Inside an epoch each rank holds its own counts so far: the checkpoint keeps their sum
        over ranks, which a resumed rank 0 alone takes back."""
        saved_sums = sums
        if step > 0 and world > 1:  # every rank: the same keys, the same collective
            keys = sorted(sums)
            saved_sums = dict(
                zip(keys, distributed.reduce_sum([sums[k] for k in keys]), strict=True)
            )
        return checkpoint.training_state(
            **parts,
            streams=task.streams,
            **task.state(mid_epoch=step > 0),
            epoch=done,
            step=step,
            loss_sum=loss_sum,
            sums=saved_sums,
            history=history,
            best=best,
            best_epoch=best_epoch,
            train_seconds=train_seconds,
            elapsed=before + time.time() - t_start,
        )

    from tqdm.auto import tqdm

    write = tqdm.write
    global_step = epoch * steps + step0
    last_ckpt = time.time()
    every = task.checkpoint_minutes if task.sync_every_step else None
    while epoch < num_epochs:
        t_epoch = time.time()
        if step0 == 0:
            task.start_epoch(epoch)
            loss_sum, sums = 0.0, {}
        model.train()
        bar = progress(
            range(step0, steps),
            total=steps,
            initial=step0,
            desc=f"epoch {epoch + 1}/{num_epochs}",
            unit="step",
        )
        for step in bar:
            loss, counts = task.loss(net, step, amp)
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                amp.backward_step(loss, opt)
                sched.step()
            lv = float(loss.detach())
            for key, value in counts.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            global_step += 1
            want_ckpt = every is not None and (time.time() - last_ckpt) / 60.0 >= every
            if task.sync_every_step:
                if world > 1:  # the mean loss, and one decision for all ranks
                    total, votes = distributed.reduce_sum([lv, float(want_ckpt)])
                    lv, want_ckpt = total / world, votes > 0
                if not math.isfinite(lv) and (msg := task.diverged(epoch + 1, step + 1, lv)):
                    raise UserError(msg)
            loss_sum += lv
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / (step + 1):.3f}", refresh=False)
            stop = stop_after is not None and global_step >= stop_after
            if (stop or want_ckpt) and step + 1 < steps:
                run.save_checkpoint(snapshot(epoch, step + 1), is_best=False)
                last_ckpt = time.time()
            if stop and step + 1 < steps:
                say(f"stopped after {global_step} steps; continue with --resume --out {run.path}")
                return None
        seconds = time.time() - t_epoch
        train_seconds += seconds
        # totals over ranks: the counts, and the loss unless already reduced step by step (each
        # rank's loss is the mean over its equal share, so the mean is the sum of loss / world)
        keys = sorted(sums)
        values = [sums[k] for k in keys]
        if not task.sync_every_step:
            values = [loss_sum / world, *values]
        if values:
            values = distributed.reduce_sum(values)
        if not task.sync_every_step:
            loss_sum, *values = values
        sums = dict(zip(keys, values, strict=True))
        lr = opt.param_groups[0]["lr"] if opt is not None else None
        rec = task.record(EpochStats(epoch + 1, steps, loss_sum / steps, sums, seconds, lr))
        if not task.sync_every_step and not math.isfinite(rec.get("train_loss", 0.0)):
            if msg := task.diverged(epoch + 1, None, rec["train_loss"]):
                note = "training loss is not finite"
                run.log({"event": "error", "epoch": epoch + 1, "message": note})
                raise UserError(msg)
        is_best = False
        if task.validate_now(epoch + 1, num_epochs):
            # rank 0 validates while the others wait; every rank gets its values, or its error
            rec.update(distributed.from_rank0(task.validate))
            if task.select in rec and _better(rec[task.select], best, task):
                best, best_epoch, is_best = rec[task.select], epoch + 1, True
        if task.time_key:
            rec[task.time_key] = time.time() - t_epoch
        history.append(rec)
        run.log(rec)
        epoch, step0 = epoch + 1, 0
        run.save_checkpoint(snapshot(epoch, 0), is_best=is_best)
        last_ckpt = time.time()
        if run.is_main and (msg := task.epoch_message(rec, is_best, num_epochs)):
            write(msg)
        run.plot_history(history, task.plot_keys, task.plot_file)
        if stop_after is not None and global_step >= stop_after and epoch < num_epochs:
            say(f"stopped after {global_step} steps; continue with --resume --out {run.path}")
            return None

    def finish() -> dict[str, Any]:
        """Rank 0: test the best weights and write metrics.json."""
        saved = run.load_checkpoint("best") if best_epoch is not None else None
        if saved is not None:
            model.load_state_dict(saved["model"])
        elapsed = before + time.time() - t_start
        result = Result(history, best, best_epoch, steps, train_seconds, elapsed)
        metrics = task.finish(result)
        run.write_metrics(metrics)
        run.plot_history(history, task.plot_keys, task.plot_file)
        return metrics

    # the other ranks wait, then get the metrics (or rank 0's error instead of hanging)
    return distributed.from_rank0(finish)
