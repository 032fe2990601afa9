"""``neuralsort dknn``: train an embedding with the NeuralSort kNN loss, classify by hard kNN.

Protocol (the paper's, Section 6.1, and its authors' code): the training split is divided into
a training part and a held-out validation part (55k/5k for MNIST and Fashion-MNIST, 45k/5k for
CIFAR). Each step draws ``num_train_queries`` queries and ``num_train_neighbors`` candidate
neighbours from two independent shuffles of the training part and minimises
:func:`neuralsort.knn.dknn_loss`. After each epoch the validation images are classified by hard
kNN (majority vote of the ``k`` nearest) over the embedded training part; the best-validation
checkpoint is finally evaluated the same way on the test split, beside plain kNN on raw pixels.

The seed report's command lines work with ``python run_dknn.py`` replaced by ``neuralsort dknn``.

Several processes (``torchrun --nproc_per_node N -m neuralsort.experiments.cli dknn ...``): each
rank embeds its own ``num_train_queries`` queries and ``num_train_neighbors`` neighbours, disjoint
slices of the same two shuffles; the neighbour embeddings of all ranks are gathered, so every query
is ranked against ``N x num_train_neighbors`` candidates. The global batch is the per-process batch
times ``N`` and one step computes exactly the loss of one process with that batch; an epoch keeps
its number of images (``N`` times fewer steps). Validation and test run on rank 0.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuralsort.knn import dknn_loss

from . import distributed
from .config import AMP_MODES, UserError, add_common_args, add_flag, resolve_config
from .data import load_dataset, train_val_split
from .knn_eval import embed, knn_accuracy
from .models import create_model, default_model_for
from .run import Run
from .seeding import seed_everything
from .trainer import EpochStats, Result, Task, fit
from .training import (
    AUGMENTS,
    OPTIMIZERS,
    SCHEDULES,
    Amp,
    augment_batch,
    count_parameters,
    index_stream,
    resolve_augment,
)

__all__ = [
    "DEFAULTS",
    "DATASET_DEFAULTS",
    "IMAGEFOLDER_DEFAULTS",
    "dataset_defaults",
    "add_parser",
    "main",
    "run_dknn",
]

# The paper's protocol (SGD, momentum 0.9, weight decay 5e-4, 100 queries x 100 neighbours).
DEFAULTS: dict[str, Any] = {
    "dataset": "mnist",
    "k": 9,
    "tau": 16.0,
    "nloglr": 3.0,
    "method": "deterministic",
    "num_epochs": 200,
    "num_train_queries": 100,
    "num_train_neighbors": 100,
    "num_test_queries": 1000,
    "num_samples": 5,
    "model": None,
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "lr_schedule": "constant",
    "warmup_epochs": 0.0,
    "augment": "auto",
    "val_size": None,
    "train_subset": None,
    "eval_every": 1,
    "eval_batch": 1000,
    "checkpoint_minutes": 10.0,
    "pixel_knn": True,
    "channels_last": True,
    "stop_after_steps": None,
}

# Per-data-set defaults layered over DEFAULTS (the YAML file and flags still win).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # the embedded quick start: seconds per epoch on a laptop CPU
    # (one thread: the net is so small that a second thread only adds synchronisation)
    "digits": {
        "num_epochs": 15,
        "optimizer": "adam",
        "nloglr": 3.0,
        "tau": 1.0,
        "k": 5,
        "threads": 1,
    },
}


# A user's own ``imagefolder:PATH``: the recipe of configs/dknn/mnist-fast.yaml (Adam, cosine decay,
# 10 epochs), which beat the paper's SGD defaults on a folder of 8,000 28x28 grayscale images
# (93.35% test after 10 epochs against 87.45% after 3). The net and the augmentation depend on the
# images and are picked once they are loaded (see _fit_to_images).
IMAGEFOLDER_DEFAULTS: dict[str, Any] = {
    "num_epochs": 10,
    "optimizer": "adam",
    "nloglr": 3.0,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",
}


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """The defaults layered over :data:`DEFAULTS` for ``dataset`` (empty for the paper's)."""
    lower = str(dataset).lower()
    if lower.startswith("imagefolder:"):
        return IMAGEFOLDER_DEFAULTS
    return DATASET_DEFAULTS.get(lower, {})


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``neuralsort dknn``."""
    p = subparsers.add_parser(
        "dknn",
        help="differentiable kNN: NeuralSort kNN loss + hard-kNN classification (Table 3)",
        description=__doc__.split("\n\n")[0],
    )
    g = p.add_argument_group("experiment (the seed's flags)")
    add_flag(
        g,
        "--dataset",
        help="mnist, fashion-mnist, cifar10, cifar100, digits or imagefolder:PATH (default mnist)",
    )
    add_flag(g, "--k", type=int, help="number of neighbours (default 9)")
    add_flag(g, "--tau", type=float, help="NeuralSort temperature (default 16)")
    add_flag(g, "--nloglr", type=float, help="learning rate = 10^-nloglr (default 3)")
    add_flag(
        g,
        "--method",
        choices=["deterministic", "stochastic"],
        help="NeuralSort variant (default deterministic)",
    )
    add_flag(g, "--num_train_queries", type=int, help="queries per training step (default 100)")
    add_flag(
        g, "--num_train_neighbors", type=int, help="candidate neighbours per step (default 100)"
    )
    add_flag(
        g,
        "--num_test_queries",
        type=int,
        help="queries per kNN evaluation chunk; memory only, results do not change (default 1000)",
    )
    add_flag(g, "--num_samples", type=int, help="Plackett-Luce samples, stochastic (default 5)")
    add_common_args(p)
    t = p.add_argument_group("training recipe")
    add_flag(
        t,
        "--model",
        help="embedding net: mnist-convnet, resnet18, digits-net (default: mnist-convnet for "
        "mnist and small grayscale image folders, digits-net for digits, else resnet18)",
    )
    add_flag(t, "--optimizer", choices=list(OPTIMIZERS), help="default sgd (the paper's)")
    add_flag(t, "--momentum", type=float, help="SGD momentum (default 0.9)")
    add_flag(t, "--weight_decay", type=float, help="default 5e-4")
    add_flag(t, "--lr_schedule", choices=list(SCHEDULES), help="default constant")
    add_flag(t, "--warmup_epochs", type=float, help="linear learning-rate warm-up (default 0)")
    add_flag(
        t,
        "--augment",
        choices=list(AUGMENTS),
        help="training augmentation (default auto: flipcrop for colour images, none otherwise)",
    )
    add_flag(t, "--val_size", type=int, help="validation images held out (default 5000)")
    add_flag(
        t,
        "--train_subset",
        type=int,
        help="use only the first N images of the training part (smoke tests, debugging)",
    )
    add_flag(t, "--eval_every", type=int, help="validate every N epochs (default 1)")
    add_flag(t, "--eval_batch", type=int, help="images per forward pass when embedding")
    add_flag(
        t,
        "--checkpoint_minutes",
        type=float,
        help="also checkpoint inside an epoch this often (default 10)",
    )
    add_flag(
        t,
        "--pixel_knn",
        action=argparse.BooleanOptionalAction,
        help="also report plain kNN on raw pixels (default on)",
    )
    add_flag(
        t,
        "--channels_last",
        action=argparse.BooleanOptionalAction,
        help="channels-last memory format: faster convolutions on CPUs (default on)",
    )
    add_flag(t, "--stop_after_steps", type=int, help=argparse.SUPPRESS)  # tests: simulate a kill
    return p


def _slug(dataset: str) -> str:
    if dataset.lower().startswith("imagefolder:"):
        return "imagefolder-" + (pathlib.Path(dataset.split(":", 1)[1]).name or "data")
    return dataset.lower()


def _validate(cfg: dict[str, Any], world: int = 1) -> None:
    def positive(key: str, kind: type = int) -> None:
        v = cfg[key]
        if not isinstance(v, kind) or isinstance(v, bool) or v <= 0:
            raise UserError(f"--{key} must be a positive {kind.__name__}, got {v!r}")

    for key in ("k", "num_train_queries", "num_train_neighbors", "num_test_queries"):
        positive(key)
    for key in ("num_samples", "eval_every", "eval_batch"):
        positive(key)
    for key in ("tau", "checkpoint_minutes"):
        if isinstance(cfg[key], int) and not isinstance(cfg[key], bool):
            cfg[key] = float(cfg[key])
        positive(key, float)
    if not isinstance(cfg["num_epochs"], int) or cfg["num_epochs"] < 0:
        raise UserError(f"--num_epochs must be an int >= 0, got {cfg['num_epochs']!r}")
    if cfg["steps_per_epoch"] is not None:
        positive("steps_per_epoch")
    if cfg["k"] > cfg["num_train_neighbors"] * world:
        per = f" x {world} processes" if world > 1 else ""
        raise UserError(
            f"--k {cfg['k']} exceeds --num_train_neighbors {cfg['num_train_neighbors']}{per}: "
            "a query needs at least k candidate neighbours"
        )
    if cfg["method"] not in ("deterministic", "stochastic"):
        raise UserError(f"--method must be deterministic or stochastic, got {cfg['method']!r}")
    if not math.isfinite(float(cfg["nloglr"])):
        raise UserError(f"--nloglr must be a finite number, got {cfg['nloglr']!r}")
    if cfg["amp"] not in AMP_MODES:
        raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got {cfg['amp']!r}")
    if cfg["threads"] is not None:
        positive("threads")


def _cleanup_fresh(run: Run) -> None:
    """Remove a just-created run folder that holds nothing but its config and log."""
    if run.resumed or not run.is_main or not run.path.is_dir():
        return
    if {p.name for p in run.path.iterdir()} <= {"config.yaml", "log.jsonl"}:
        shutil.rmtree(run.path, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``neuralsort dknn``."""
    cfg = resolve_config(args, DEFAULTS)
    extra = dataset_defaults(cfg["dataset"])
    if extra:
        cfg = resolve_config(args, {**DEFAULTS, **extra})
    run_dknn(cfg)
    return 0


def run_dknn(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """Run the experiment described by a resolved config; returns the metrics (None if stopped)."""
    # a one-shot control (tests simulate a kill with it): never saved, never resumed
    stop_after = cfg.pop("stop_after_steps", None)
    _validate(cfg, max(1, distributed.world_size()))
    ctx = distributed.setup(cfg["device"])  # joins the process group under torchrun
    Amp(cfg["amp"], ctx.device)  # fail on an unsupported --amp before opening a run folder
    name = (
        f"dknn-{_slug(cfg['dataset'])}-{cfg['method']}-k{cfg['k']}"
        f"-t{cfg['tau']:g}-lr{float(cfg['nloglr']):g}"
    )
    run = Run.start(cfg, name=name)
    try:
        _validate(cfg, ctx.world_size)  # a resumed run may have brought back its saved settings
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        amp = Amp(cfg["amp"], ctx.device)
        train_x, train_y, test_x, test_y, info = load_dataset(cfg["dataset"], cfg["data_dir"])
    except UserError:
        _cleanup_fresh(run)
        raise
    _fit_to_images(cfg, info, run)
    return _train(run, cfg, ctx, amp, train_x, train_y, test_x, test_y, info, stop_after)


def _fit_to_images(cfg: dict[str, Any], info: dict[str, Any], run: Run) -> None:
    """An image folder's net and augmentation, from its images; stated in the log and config.yaml.

    Grayscale images up to 64 pixels a side get the MNIST convnet and small shifts, colour images
    ResNet-18 and flips with crops (see :func:`default_model_for`); ``--model`` and ``--augment``
    still choose. A resumed run keeps what its config.yaml says.
    """
    if not str(cfg["dataset"]).lower().startswith("imagefolder:"):
        return
    explicit = getattr(cfg, "explicit", set())
    picked: dict[str, Any] = {}
    if not cfg["model"]:
        picked["model"] = default_model_for(info["name"], info["image_size"], info["in_channels"])
    if cfg["augment"] == "auto" and "augment" not in explicit:
        picked["augment"] = "shift" if info["in_channels"] == 1 else "flipcrop"
    if not picked:
        return
    cfg.update(picked)
    h, w = info["image_size"]
    kind = "grayscale" if info["in_channels"] == 1 else f"{info['in_channels']}-channel"
    chosen = {key: cfg[key] for key in ("model", "augment", *IMAGEFOLDER_DEFAULTS)}
    recipe = ", ".join(f"{key} {value}" for key, value in chosen.items())
    note = f"image folder of {kind} {h}x{w} images: {recipe} (change with --model, --optimizer...)"
    run.save_config(recipe=note)
    run.log({"event": "recipe", **picked, "note": note})
    if run.is_main:
        print(note)


def _step_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    q: int,
    query_labels: torch.Tensor,
    neighbor_labels: torch.Tensor,
    cfg: dict[str, Any],
    amp: Amp,
    noise: torch.Generator,
) -> torch.Tensor:
    """The kNN loss of one step: ``x`` holds this rank's ``q`` queries then its neighbours.

    The embedding runs under ``amp``; the loss runs in float32 over the neighbours of every rank
    (gathered in rank order), ``neighbor_labels`` being the labels of all of them.
    """
    with amp.autocast():
        e = model(x)
    e = e.float()
    neighbors = distributed.all_gather_with_grad(e[q:])
    return dknn_loss(
        e[:q],
        neighbors,
        query_labels,
        neighbor_labels,
        cfg["k"],
        tau=cfg["tau"],
        method=cfg["method"],
        n_samples=cfg["num_samples"],
        generator=noise,
    )


def _train(
    run: Run,
    cfg: dict[str, Any],
    ctx: distributed.Context,
    amp: Amp,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    info: dict[str, Any],
    stop_after: int | None = None,
) -> dict[str, Any] | None:
    world, device = ctx.world_size, ctx.device
    seed = int(cfg["seed"])
    # `gen` draws the shuffles: the same on every rank, each rank then takes its own slice
    gen = seed_everything(seed)
    # private streams: augmentation (shares `gen` in one process, as it always did) and noise
    aug_gen = gen if world == 1 else torch.Generator().manual_seed(distributed.rank_seed(seed))
    noise_gen = torch.Generator(device=device)
    noise_gen.manual_seed(distributed.rank_seed(seed + 1))

    k = cfg["k"]
    val_size = int(cfg["val_size"] or info["val_size"])
    if not 0 < val_size < train_x.shape[0] - cfg["k"]:
        raise UserError(f"--val_size must be in 1..{train_x.shape[0] - cfg['k'] - 1}")
    tr_idx, va_idx = train_val_split(train_x.shape[0], val_size)
    if cfg["train_subset"]:
        if int(cfg["train_subset"]) < k:
            raise UserError(f"--train_subset must be at least --k ({k})")
        tr_idx = tr_idx[: int(cfg["train_subset"])]
    data = _Data(
        train_x[tr_idx].to(device),
        train_y[tr_idx].to(device),
        train_x[va_idx].to(device),
        train_y[va_idx],
        test_x.to(device),
        test_y,
    )
    del train_x
    n_tr = data.tr_x.shape[0]
    q, m = cfg["num_train_queries"], cfg["num_train_neighbors"]
    big_q, big_m = q * world, m * world  # the global batch
    if big_m > n_tr or big_q > n_tr:
        per = f" times {world} processes" if world > 1 else ""
        raise UserError(
            f"--num_train_queries/--num_train_neighbors{per} must not exceed the {n_tr} "
            "training images"
        )
    steps = max(1, n_tr // big_q)
    if cfg["steps_per_epoch"]:
        steps = min(steps, int(cfg["steps_per_epoch"]))

    model_name = cfg["model"] or default_model_for(
        info["name"], info["image_size"], info["in_channels"]
    )
    try:
        model = create_model(model_name, info["in_channels"], image_size=info["image_size"])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model.to(device=device, memory_format=fmt)
    task = _DknnTask(
        model=model,
        steps_per_epoch=steps,
        select="val_acc",
        ties_to_later=True,
        optimizer=cfg,
        generator=gen,
        # in one process the augmentation draws from `gen`, saved with the global generators
        streams={"noise": noise_gen} if world == 1 else {"noise": noise_gen, "aug": aug_gen},
        fallback_seed=distributed.rank_seed(seed + 2),
        sync_every_step=True,
        checkpoint_minutes=float(cfg["checkpoint_minutes"]),
        plot_keys=["train_topk_correct", "val_acc"],
        plot_file="accuracy.png",
    )
    task.setup(run, cfg, info, data, model_name, aug_gen, noise_gen, fmt, device)
    procs = f" x {world} processes (global batch {big_q}+{big_m})" if world > 1 else ""
    precision = f", amp {amp.mode}" if amp.enabled else ""
    if ctx.is_main:
        print(
            f"dknn on {info['name']}: {n_tr} train / {val_size} val / {data.te_x.shape[0]} test "
            f"images, {model_name} ({count_parameters(model):,} parameters) on {device}{procs}"
            f"{precision}, {cfg['method']} k={k} tau={cfg['tau']:g} "
            f"lr=1e-{float(cfg['nloglr']):g}, {steps} steps x {cfg['num_epochs']} epochs; "
            f"output {run.path}"
        )
    run.log(
        {
            "event": "setup",
            "model": model_name,
            "steps_per_epoch": steps,
            "n_train": n_tr,
            "world_size": world,
            "amp": amp.mode,
        }
    )
    return fit(task, run, cfg, amp, device, stop_after=stop_after)


@dataclass
class _Data:
    tr_x: torch.Tensor
    tr_y: torch.Tensor
    va_x: torch.Tensor
    va_y: torch.Tensor
    te_x: torch.Tensor
    te_y: torch.Tensor


class _DknnTask(Task):
    """The kNN loss over queries and neighbours drawn from two shuffles of the training part."""

    def setup(
        self,
        run: Run,
        cfg: dict[str, Any],
        info: dict[str, Any],
        data: _Data,
        model_name: str,
        aug_gen: torch.Generator,
        noise_gen: torch.Generator,
        fmt: torch.memory_format,
        device: torch.device,
    ) -> None:
        self.run, self.cfg, self.info, self.data = run, cfg, info, data
        self.model_name, self.aug_gen, self.noise_gen = model_name, aug_gen, noise_gen
        self.fmt, self.device = fmt, device
        self.augment = resolve_augment(cfg["augment"], info["in_channels"])
        self.world = distributed.world_size() if distributed.is_distributed() else 1
        self.rank = distributed.rank() if self.world > 1 else 0
        self.perm_q = self.perm_n = self.src_q = self.src_n = None

    def start_epoch(self, epoch: int) -> None:
        q, m, n = (
            self.cfg["num_train_queries"],
            self.cfg["num_train_neighbors"],
            len(self.data.tr_x),
        )
        self.perm_q = index_stream(n, self.steps_per_epoch * q * self.world, self.generator)
        self.perm_n = index_stream(n, self.steps_per_epoch * m * self.world, self.generator)
        self._pin()

    def _pin(self) -> None:
        # pinned host memory lets the per-step index copies to the GPU run asynchronously
        pin = self.device.type == "cuda"
        self.src_q = self.perm_q.pin_memory() if pin else self.perm_q
        self.src_n = self.perm_n.pin_memory() if pin else self.perm_n

    def state(self, mid_epoch: bool) -> dict[str, Any]:
        return {
            "perm_q": self.perm_q if mid_epoch else None,
            "perm_n": self.perm_n if mid_epoch else None,
            "model_name": self.model_name,
            "noise_rng": self.noise_gen.get_state(),  # rank 0's, as in earlier checkpoints
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.perm_q, self.perm_n = state.get("perm_q"), state.get("perm_n")
        if self.perm_q is not None:
            self._pin()

    def loss(self, net: nn.Module, step: int, amp: Amp) -> tuple[torch.Tensor, dict[str, float]]:
        # this rank's slices of the step's global batch (everything in one process)
        q, m, rank, d = (
            self.cfg["num_train_queries"],
            self.cfg["num_train_neighbors"],
            self.rank,
            self.data,
        )
        qs = (step * self.world + rank) * q
        qi = self.src_q[qs : qs + q].to(self.device, non_blocking=True)
        big_m = m * self.world
        ni_all = self.src_n[step * big_m : (step + 1) * big_m].to(self.device, non_blocking=True)
        ni = ni_all[rank * m : (rank + 1) * m]
        x = torch.cat([d.tr_x[qi], d.tr_x[ni]])
        x = augment_batch(x, self.augment, self.aug_gen).contiguous(memory_format=self.fmt)
        loss = _step_loss(net, x, q, d.tr_y[qi], d.tr_y[ni_all], self.cfg, amp, self.noise_gen)
        return loss, {}

    def record(self, stats: EpochStats) -> dict[str, Any]:
        return {
            "epoch": stats.epoch,
            "train_topk_correct": -stats.loss,
            "lr": stats.lr,
            "train_s": stats.seconds,
        }

    def diverged(self, epoch: int, step: int | None, loss: float) -> str | None:
        return (
            f"the loss became {loss} at epoch {epoch} step {step}; lower the "
            "learning rate (raise --nloglr) or change --tau"
        )

    def validate_now(self, epoch: int, num_epochs: int) -> bool:
        return epoch % self.cfg["eval_every"] == 0 or epoch == num_epochs

    def _knn(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Hard-kNN accuracy of embedded ``x`` against the embedded training part."""
        cfg, d = self.cfg, self.data
        opts = dict(batch_size=cfg["eval_batch"], channels_last=cfg["channels_last"])
        emb_tr = embed(self.model, d.tr_x, **opts)
        emb = embed(self.model, x, **opts)
        return knn_accuracy(
            emb, y, emb_tr, d.tr_y, cfg["k"],
            num_classes=self.info["num_classes"], query_chunk=cfg["num_test_queries"],
        )  # fmt: skip

    def validate(self) -> dict[str, Any]:
        t_val = time.time()
        val_acc = self._knn(self.data.va_x, self.data.va_y)
        return {"val_acc": val_acc, "val_s": time.time() - t_val}

    def epoch_message(self, rec: dict[str, Any], is_best: bool, num_epochs: int) -> str:
        val_txt = f"val acc {rec['val_acc']:.4f}" if "val_acc" in rec else "no val"
        return (
            f"epoch {rec['epoch']}/{num_epochs}: train top-k correctness "
            f"{rec['train_topk_correct']:.4f}, {val_txt}{' (best)' if is_best else ''}, "
            f"{rec['epoch_time_s']:.1f}s"
        )

    def finish(self, result: Result) -> dict[str, Any]:
        """Rank 0: best-validation weights, hard kNN over the embedded training part, on test."""
        cfg, d, info, run = self.cfg, self.data, self.info, self.run
        k = cfg["k"]
        t_eval = time.time()
        test_acc = self._knn(d.te_x, d.te_y)
        eval_s = time.time() - t_eval
        pixel_acc = None
        if cfg["pixel_knn"]:
            pixel_acc = knn_accuracy(
                d.te_x.flatten(1), d.te_y, d.tr_x.flatten(1), d.tr_y, k,
                num_classes=info["num_classes"], query_chunk=cfg["num_test_queries"],
            )  # fmt: skip
        wall = result.elapsed
        best_val = result.best if result.best is not None else -1.0
        metrics = {
            "dataset": info["name"],
            "method": cfg["method"],
            "k": k,
            "tau": cfg["tau"],
            "model": self.model_name,
            "val_acc": result.best,
            "best_epoch": result.best_epoch or 0,
            "test_acc": test_acc,
            "pixel_knn_test_acc": pixel_acc,
            "test_eval_s": eval_s,
            "epochs": int(cfg["num_epochs"]),
            "steps_per_epoch": result.steps_per_epoch,
            "wall_time_s": wall,
            "device": str(self.device),
            "world_size": self.world,
            "amp": cfg["amp"],
            "history": result.history,
        }
        run.write_metrics(metrics)
        run.log({"event": "done", "test_acc": test_acc, "pixel_knn_test_acc": pixel_acc})
        parts = [
            f"{info['name']} test accuracy: dKNN ({cfg['method']}, k={k}) {100 * test_acc:.2f}%"
        ]
        if pixel_acc is not None:
            parts.append(f"plain kNN (raw pixels) {100 * pixel_acc:.2f}%")
        if best_val >= 0:
            parts.append(f"val {100 * best_val:.2f}% @ epoch {result.best_epoch}")
        parts += [f"{wall / 60:.1f} min", str(run.path)]
        print("  |  ".join(parts))
        return metrics
