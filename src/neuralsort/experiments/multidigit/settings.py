"""The training loop shared by ``neuralsort sort`` and ``neuralsort quantile``.

Both experiments train a method from :mod:`neuralsort.experiments.multidigit_models` on batches of
multi-digit MNIST sequences drawn from an infinite, seeded source, evaluate it on a fixed validation
set after every epoch, keep the best-validation checkpoint and report its test metrics. The
experiment modules only supply a :class:`Task`: how to build the method, how to score predictions
and which validation metric selects the checkpoint.

Outputs (in the run folder, see :class:`neuralsort.experiments.run.Run`): ``config.yaml``,
``log.jsonl`` (one line per epoch), ``last.pt`` / ``best.pt``, ``metrics.json`` and ``history.png``.
``--resume`` continues from ``last.pt`` (model, optimizer, scheduler, data and noise generators) and
ends with the same result as an uninterrupted run.

Under ``torchrun`` every rank draws the same global batch of ``batch_size x world_size`` sequences
from the shared, seeded source and renders only its own ``batch_size`` of them; the methods train
with DistributedDataParallel (the mean loss over the global batch, exactly), each rank has its own
Gumbel/Plackett-Luce noise stream, and validation and test run on rank 0.
"""

from __future__ import annotations

import argparse
import copy
import math
import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import distributed
from .checkpoint import load_file
from .config import AMP_MODES, UserError, add_common_args, add_flag
from .data import load_raw_dataset
from .data.multidigit import MultiDigitEvalSet, MultiDigitNumbers, make_splits
from .multidigit_models import DigitCNN
from .multidigit_task import MultiDigitTask, init_source, test_set
from .seeding import seed_everything
from .trainer import fit, start_run
from .training import SCHEDULES, Amp

__all__ = [
    "BASE_DEFAULTS",
    "Task",
    "add_multidigit_args",
    "int_list",
    "load_multidigit_splits",
    "train_and_test",
    "validate_task",
]

# Settings shared by both experiments (each experiment module overrides some).
BASE_DEFAULTS: dict[str, Any] = {
    "n": 5,
    "method": "deterministic",
    "digits": 4,
    "tau": 1.0,
    "lr": 1e-4,
    "lr_schedule": "constant",
    "warmup_epochs": 0.0,
    "weight_decay": 0.0,
    "batch_size": 20,
    "num_samples": 5,
    "regroup": 1,
    "regroup_ns": None,
    "regroup_near": 0.0,
    "eval_ns": None,
    "init_from": None,
    "num_epochs": 200,
    "steps_per_epoch": 625,
    "val_sequences": 1000,
    "test_sequences": 2500,
    "eval_batch_size": 50,
    "eval_seed": 12345,
}


def add_multidigit_args(
    parser: argparse.ArgumentParser, methods: tuple[str, ...], defaults: dict[str, Any]
) -> None:
    """Add the flags of the multi-digit experiments (plus the common run flags).

    ``defaults`` only feeds the help texts; flags default to None (see ``resolve_config``).
    """
    d = defaults
    g = parser.add_argument_group("experiment")
    add_flag(g, "--n", type=int, metavar="N", help=f"numbers per sequence (default {d['n']})")
    add_flag(g, "--method", choices=list(methods), help=f"method (default {d['method']})")
    add_flag(g, "--tau", type=float, help=f"temperature of the relaxation (default {d['tau']})")
    add_flag(g, "--lr", type=float, help=f"Adam learning rate (default {d['lr']}, the paper's)")
    add_flag(
        g,
        "--lr_schedule",
        choices=list(SCHEDULES),
        help="learning-rate schedule over all steps (default constant, as the paper)",
    )
    add_flag(
        g,
        "--warmup_epochs",
        type=float,
        metavar="E",
        help="linear learning-rate warm-up over the first E epochs (default 0)",
    )
    add_flag(g, "--weight_decay", type=float, help="Adam weight decay (default 0)")
    add_flag(
        g,
        "--batch_size",
        type=int,
        metavar="B",
        help=f"sequences per training step (default {d['batch_size']})",
    )
    add_flag(
        g,
        "--num_samples",
        type=int,
        metavar="S",
        help=f"Plackett-Luce / Gumbel samples per sequence (default {d['num_samples']})",
    )
    add_flag(
        g,
        "--regroup",
        type=int,
        metavar="R",
        help=(
            "deal each batch's items into R times as many training sequences, reusing the "
            "per-image net outputs (default 1: the paper's training; R > 1 gets more "
            "comparisons out of every image pass)"
        ),
    )
    add_flag(
        g,
        "--regroup_ns",
        type=int_list,
        metavar="M,M,...",
        help=(
            "deal each batch's per-image scores into training sequences of these lengths "
            "(e.g. 3,5,7,9,15) instead of --n alone, about R item slots per image in all "
            "(NeuralSort methods only; default: --n alone)"
        ),
    )
    add_flag(
        g,
        "--regroup_near",
        type=float,
        metavar="F",
        help=(
            "make this fraction of the regrouped sequences of items next to each other in value "
            "(hard sequences; NeuralSort sorting only; default 0)"
        ),
    )
    add_flag(
        g,
        "--eval_ns",
        type=int_list,
        metavar="M,M,...",
        help=(
            "also test the final model on the fixed test sets of these n (the ones the runs "
            "trained at that n use), kept under test_by_n in metrics.json; methods whose nets "
            f"depend on n are tested at --n only (default {','.join(map(str, d['eval_ns']))}; "
            "'none': --n only)"
        ),
    )
    add_flag(
        g,
        "--init_from",
        metavar="RUN_DIR",
        help=(
            "start from the best model of an earlier run of the same method (its folder, or a "
            "checkpoint .pt file) instead of random weights; metrics.json then also counts that "
            "run's training time (default: random weights, the paper's start)"
        ),
    )
    add_flag(
        g,
        "--digits",
        type=int,
        metavar="L",
        help=f"digits per number (default {d['digits']}: 112x28 images)",
    )
    add_flag(
        g,
        "--val_sequences",
        type=int,
        metavar="N",
        help=f"size of the fixed validation set (default {d['val_sequences']})",
    )
    add_flag(
        g,
        "--test_sequences",
        type=int,
        metavar="N",
        help=f"size of the fixed test set (default {d['test_sequences']})",
    )
    add_flag(
        g,
        "--eval_batch_size",
        type=int,
        metavar="B",
        help=f"sequences per evaluation batch (default {d['eval_batch_size']})",
    )
    add_flag(g, "--eval_seed", type=int, help="seed of the fixed validation and test sets")
    add_common_args(parser)  # also --threads (alias --num_threads) and --amp


@dataclass
class Task:
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


def int_list(text: str) -> list[int]:
    """``"3,5,7"`` -> ``[3, 5, 7]``; ``"none"`` or ``""`` -> ``[]`` (an argparse ``type``)."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 3,5,7, got {text!r}"
        ) from None


def _lengths(cfg: dict[str, Any], key: str) -> list[int]:
    """``cfg[key]`` (a list, a comma-separated string or None) as a list of integers >= 2."""
    v = cfg[key]
    if v is None:
        return []
    if isinstance(v, str):
        try:
            v = int_list(v)
        except argparse.ArgumentTypeError:
            v = None
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    ok = isinstance(v, list | tuple) and all(
        isinstance(m, int) and not isinstance(m, bool) and m >= 2 for m in v
    )
    if not ok:
        raise UserError(f"--{key} must be comma-separated integers >= 2 (e.g. 3,5,7), got {v!r}")
    return sorted(set(v))


def _positive_int(cfg: dict[str, Any], key: str, minimum: int = 1) -> int:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise UserError(f"--{key} must be an integer >= {minimum}, got {v!r}")
    return v


def validate_task(cfg: dict[str, Any], methods: Sequence[str], paper_ns: str) -> int:
    """Check ``--n`` (an integer >= 2) and ``--method`` (one of ``methods``); return ``n``."""
    n = cfg["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise UserError(f"--n must be an integer >= 2 (the paper uses {paper_ns}), got {n!r}")
    if cfg["method"] not in methods:
        raise UserError(f"--method must be one of {', '.join(methods)}, got {cfg['method']!r}")
    return n


def validate_common(cfg: dict[str, Any]) -> None:
    """Check the shared settings; :class:`UserError` naming the flag on a bad value."""
    for key in ("batch_size", "num_samples", "regroup", "steps_per_epoch", "eval_batch_size"):
        _positive_int(cfg, key)
    for key in ("val_sequences", "test_sequences"):
        _positive_int(cfg, key)
    _positive_int(cfg, "num_epochs", 0)
    cfg["regroup_ns"] = _lengths(cfg, "regroup_ns") or None
    cfg["eval_ns"] = _lengths(cfg, "eval_ns")
    if cfg["regroup_ns"]:
        if cfg["method"] not in ("deterministic", "stochastic"):
            raise UserError(
                "--regroup_ns needs a NeuralSort method (deterministic or stochastic): the "
                f"nets of {cfg['method']!r} depend on n"
            )
        pool = cfg["batch_size"] * int(cfg["n"])
        if max(cfg["regroup_ns"]) > pool:
            raise UserError(
                f"--regroup_ns lengths must be <= the items of a batch (--batch_size x --n = "
                f"{pool}), got {max(cfg['regroup_ns'])}"
            )
    digits = cfg["digits"]
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 9:
        raise UserError(f"--digits must be an integer in 1..9, got {digits!r}")
    for key in ("tau", "lr"):
        v = cfg[key]
        if not isinstance(v, int | float) or isinstance(v, bool) or not v > 0 or math.isinf(v):
            raise UserError(f"--{key} must be a positive number, got {v!r}")
    if not isinstance(cfg["weight_decay"], int | float) or cfg["weight_decay"] < 0:
        raise UserError(f"--weight_decay must be >= 0, got {cfg['weight_decay']!r}")
    if cfg["lr_schedule"] not in SCHEDULES:
        raise UserError(
            f"--lr_schedule must be one of {', '.join(SCHEDULES)}, got {cfg['lr_schedule']!r}"
        )
    w = cfg["warmup_epochs"]
    if not isinstance(w, int | float) or isinstance(w, bool) or not 0 <= w < math.inf:
        raise UserError(f"--warmup_epochs must be a number >= 0, got {w!r}")
    if cfg["threads"] is not None:
        _positive_int(cfg, "threads")
    if cfg["amp"] not in AMP_MODES:
        raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got {cfg['amp']!r}")


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


def _float_outputs(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return output.float()


def loss_module(model: nn.Module, amp: Amp, device: torch.device) -> nn.Module:
    """What a training step calls: ``(images, values, generator) -> loss``, under ``amp``.

    Wrapped in DistributedDataParallel with several processes. With AMP the per-image nets
    (:class:`DigitCNN`) run in half precision but hand float32 scores to the relaxations and losses
    (a forward hook casts their outputs), so the sort, its logarithm and the loss stay float32.
    """
    return distributed.wrap_ddp(_train_module(model, amp), device)


def _train_module(model: nn.Module, amp: Amp) -> nn.Module:
    """:func:`loss_module` before the DDP wrapper (the training loop wraps it)."""
    if amp.enabled:
        for sub in model.modules():
            if isinstance(sub, DigitCNN):
                sub.register_forward_hook(_float_outputs)
    return _TrainLoss(model)


def _device_source(source: MultiDigitNumbers, device: torch.device) -> MultiDigitNumbers:
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


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def train_and_test(
    cfg: dict[str, Any],
    task: Task,
    *,
    splits: dict[str, MultiDigitNumbers] | None = None,
) -> dict[str, Any]:
    """Train ``task`` as ``cfg`` says, then test the best-validation model; returns the metrics.

    Args:
        cfg: resolved configuration (see :data:`BASE_DEFAULTS` and the common run settings).
        task: the experiment.
        splits: train / val / test number sources; loaded from ``cfg["data_dir"]`` when None.
    """
    run, ctx, amp, raw = start_run(
        cfg,
        task.name,
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
    render_src = _device_source(train_src, device)
    image_shape = (cfg["digits"] * train_src.digit_shape[0], train_src.digit_shape[1])
    n = int(cfg["n"])
    val_set = splits["val"].eval_set(cfg["val_sequences"], n, seed=cfg["eval_seed"])
    test = test_set(splits["test"], cfg, n)

    model = task.build(cfg, image_shape).to(device)
    if cfg["init_from"] and not run.resumed:  # a resumed run restores its own weights
        _init_weights(model, str(cfg["init_from"]), run.path.parent)
    trainable = getattr(model, "trainable", True)
    noise = torch.Generator(device=device)
    noise.manual_seed(distributed.rank_seed(seed + 1))  # this rank's own stream
    batch_size = int(cfg["batch_size"])
    if ctx.is_main and world > 1:
        print(
            f"{task.name}: {world} processes x {batch_size} sequences = global batch "
            f"{world * batch_size}; output {run.path}"
        )
    loop = MultiDigitTask(
        model=model,
        train_module=_train_module(model, amp) if trainable else None,
        steps_per_epoch=int(cfg["steps_per_epoch"]),
        select=f"val_{task.select}",
        mode=task.mode,
        optimizer=(
            {"optimizer": "adam", "lr": cfg["lr"], "weight_decay": cfg["weight_decay"]}
            if trainable
            else None
        ),
        streams={"noise": noise},
        fallback_seed=distributed.rank_seed(seed + 2),
        plot_keys=task.plot_keys,
        time_key=None,
    )
    loop.setup(run, cfg, task, train_src, render_src, val_set, test, noise, device)
    return fit(loop, run, cfg, amp, device)
