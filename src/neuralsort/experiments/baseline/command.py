"""``neuralsort baseline``: the paper's Table 3 baselines.

* ``cnn``: the embedding net of ``neuralsort dknn`` plus a linear head, trained with cross-entropy
  (head included in the optimiser, unlike the original script); best-validation weights on test.
* ``knn``: hard kNN on raw (standardised) pixels.
* ``knn-pca``: kNN on the first ``--code_dim`` (50) principal components of the training part.
* ``knn-ae``: kNN on the ``--code_dim``-d code of a small fully-connected autoencoder trained
  with mean squared error (Adam, ``--num_epochs`` epochs).

Same data, splits, run folder and resume behaviour as ``neuralsort dknn``; under ``torchrun`` the
networks train with DistributedDataParallel, each rank on its own slice of every global batch
(``--batch_size`` per process), and evaluation runs on rank 0.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed
from .config import AMP_MODES, UserError, add_common_args, add_flag, resolve_config
from .data import load_dataset, train_val_split
from .knn_eval import embed, knn_accuracy
from .models import Classifier, create_model, default_model_for
from .run import Run
from .seeding import seed_everything
from .trainer import EpochStats, Result, Task, fit, start_run
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

__all__ = ["DEFAULTS", "METHODS", "add_parser", "main", "pca_project", "AutoEncoder"]

METHODS = ("cnn", "knn", "knn-pca", "knn-ae")

DEFAULTS: dict[str, Any] = {
    "dataset": "mnist",
    "method": "cnn",
    "k": 9,
    "tau": None,
    "nloglr": 3.0,
    "num_epochs": 20,
    "batch_size": 100,
    "code_dim": 50,
    "model": None,
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "lr_schedule": "constant",
    "warmup_epochs": 0.0,
    "augment": "auto",
    "val_size": None,
    "eval_batch": 1000,
    "num_test_queries": 1000,
    "channels_last": True,
    "label_smoothing": 0.0,
    "test_flip": False,
}

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"num_epochs": 15, "optimizer": "adam", "k": 5},
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``neuralsort baseline``."""
    p = subparsers.add_parser(
        "baseline",
        help="Table 3 baselines: CNN classifier, kNN on pixels / PCA / autoencoder codes",
        description=__doc__.split("\n\n")[0],
    )
    g = p.add_argument_group("experiment")
    add_flag(g, "--dataset", help="as for dknn (default mnist)")
    add_flag(g, "--method", choices=list(METHODS), help="default cnn (the original script's)")
    add_flag(g, "--k", type=int, help="neighbours for the kNN methods (default 9)")
    add_flag(g, "--nloglr", type=float, help="learning rate = 10^-nloglr (default 3)")
    add_flag(g, "--tau", type=float, help="accepted, as by the original run_dknn.py; unused")
    add_flag(g, "--batch_size", type=int, help="training batch (default 100)")
    add_flag(g, "--code_dim", type=int, help="PCA components / autoencoder code size (50)")
    add_common_args(p)
    t = p.add_argument_group("training recipe (cnn, knn-ae)")
    add_flag(t, "--model", help="embedding net of the CNN (default as for dknn)")
    add_flag(t, "--optimizer", choices=list(OPTIMIZERS), help="default sgd")
    add_flag(t, "--momentum", type=float)
    add_flag(t, "--weight_decay", type=float)
    add_flag(t, "--lr_schedule", choices=list(SCHEDULES))
    add_flag(t, "--warmup_epochs", type=float)
    add_flag(t, "--augment", choices=list(AUGMENTS))
    add_flag(t, "--val_size", type=int)
    add_flag(t, "--eval_batch", type=int)
    add_flag(t, "--num_test_queries", type=int, help="kNN evaluation chunk (memory only)")
    add_flag(t, "--channels_last", action=argparse.BooleanOptionalAction)
    add_flag(t, "--label_smoothing", type=float, help="CNN cross-entropy label smoothing (0)")
    add_flag(
        t,
        "--test_flip",
        action=argparse.BooleanOptionalAction,
        help="CNN: classify by the summed logits of each image and its mirror image (off)",
    )
    return p


def pca_project(train: Tensor, others: list[Tensor], dim: int) -> tuple[Tensor, list[Tensor]]:
    """Project onto the top ``dim`` principal components of ``train`` (rows are samples)."""
    if not 1 <= dim <= train.shape[1]:
        raise UserError(f"--code_dim must be in 1..{train.shape[1]}, got {dim}")
    x = train.double()
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / max(1, x.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    comps = vecs[:, -dim:].flip(1)
    proj = (xc @ comps).float()
    return proj, [((o.double() - mean) @ comps).float() for o in others]


class AutoEncoder(nn.Module):
    """Fully-connected autoencoder ``D -> 500 -> 250 -> code -> 250 -> 500 -> D``."""

    def __init__(self, in_dim: int, code_dim: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(in_dim, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, 250),
            nn.ReLU(inplace=True),
            nn.Linear(250, code_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_dim, 250),
            nn.ReLU(inplace=True),
            nn.Linear(250, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, in_dim),
        )
        self.embedding_dim = code_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x.flatten(1))


def main(args: argparse.Namespace) -> int:
    """Entry point of ``neuralsort baseline``."""
    cfg = resolve_config(args, DEFAULTS)
    extra = DATASET_DEFAULTS.get(str(cfg["dataset"]).lower())
    if extra:
        cfg = resolve_config(args, {**DEFAULTS, **extra})
    run_baseline(cfg)
    return 0


def _validate(cfg: dict[str, Any]) -> None:
    if cfg["method"] not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {cfg['method']!r}")
    for key in ("k", "batch_size", "code_dim", "eval_batch", "num_test_queries"):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise UserError(f"--{key} must be a positive int, got {v!r}")
    if not isinstance(cfg["num_epochs"], int) or cfg["num_epochs"] < 0:
        raise UserError(f"--num_epochs must be an int >= 0, got {cfg['num_epochs']!r}")
    if cfg["amp"] not in AMP_MODES:
        raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got {cfg['amp']!r}")
    ls = cfg.get("label_smoothing", 0.0)
    if isinstance(ls, bool) or not isinstance(ls, int | float) or not 0.0 <= ls < 1.0:
        raise UserError(f"--label_smoothing must be in [0, 1), got {ls!r}")
    t = cfg["threads"]
    if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t <= 0):
        raise UserError(f"--threads must be a positive int, got {t!r}")


def run_baseline(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one baseline from a resolved config; returns the metrics."""
    ds = str(cfg["dataset"]).lower().replace(":", "-").replace("/", "_")
    run, ctx, amp, data = start_run(
        cfg,
        f"baseline-{cfg['method']}-{ds}",
        check=_validate,
        load=lambda c: load_dataset(c["dataset"], c["data_dir"]),
    )
    train_x, train_y, test_x, test_y, info = data
    t0 = time.time()
    gen = seed_everything(int(cfg["seed"]))
    device = ctx.device
    val_size = int(cfg["val_size"] or info["val_size"])
    tr_idx, va_idx = train_val_split(train_x.shape[0], val_size)
    tr_x, tr_y = train_x[tr_idx].to(device), train_y[tr_idx].to(device)
    va_x, va_y = train_x[va_idx].to(device), train_y[va_idx]
    te_x = test_x.to(device)
    k, c = cfg["k"], info["num_classes"]
    chunk = cfg["num_test_queries"]

    def knn_pair(tr: Tensor, va: Tensor, te: Tensor) -> tuple[float, float]:
        return (
            knn_accuracy(va, va_y, tr, tr_y, k, num_classes=c, query_chunk=chunk),
            knn_accuracy(te, test_y, tr, tr_y, k, num_classes=c, query_chunk=chunk),
        )

    method = cfg["method"]
    report = _Report(run, cfg, info, str(device), ctx.world_size)
    if method in ("cnn", "knn-ae"):
        return _train_net(run, cfg, amp, gen, (tr_x, tr_y, va_x, va_y, te_x, test_y), info, report)
    metrics = None
    if ctx.is_main:  # nothing to train: rank 0 computes, the others wait
        if method == "knn":
            val_acc, test_acc = knn_pair(tr_x.flatten(1), va_x.flatten(1), te_x.flatten(1))
        else:
            ptr, (pva, pte) = pca_project(
                tr_x.flatten(1), [va_x.flatten(1), te_x.flatten(1)], cfg["code_dim"]
            )
            val_acc, test_acc = knn_pair(ptr, pva, pte)
        metrics = report(val_acc, test_acc, [], time.time() - t0, {})
    distributed.barrier()
    return distributed.broadcast_object(metrics)


class _Report:
    """Rank 0: write a baseline's metrics.json and log line, and print its result."""

    def __init__(
        self, run: Run, cfg: dict[str, Any], info: dict[str, Any], device: str, world: int
    ) -> None:
        self.run, self.cfg, self.info, self.device, self.world = run, cfg, info, device, world

    def __call__(
        self,
        val_acc: float,
        test_acc: float,
        history: list[dict[str, Any]],
        wall: float,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        cfg, method, k = self.cfg, self.cfg["method"], self.cfg["k"]
        metrics = {
            "dataset": self.info["name"],
            "method": method,
            "k": k if method != "cnn" else None,
            "val_acc": val_acc,
            "test_acc": test_acc,
            "wall_time_s": wall,
            "device": self.device,
            "world_size": self.world,
            "amp": cfg["amp"] if method in ("cnn", "knn-ae") else None,
            "history": history,
            **extra,
        }
        self.run.write_metrics(metrics)
        self.run.log({"event": "done", "val_acc": val_acc, "test_acc": test_acc})
        what = "CNN" if method == "cnn" else f"{method} (k={k})"
        print(
            f"{self.info['name']} test accuracy: {what} {100 * test_acc:.2f}%  |  val "
            f"{100 * val_acc:.2f}%  |  {wall / 60:.1f} min  |  {self.run.path}"
        )
        return metrics


class _Reconstruct(nn.Module):
    """The autoencoder's training forward (code, then reconstruction) for DDP to wrap."""

    def __init__(self, ae: AutoEncoder) -> None:
        super().__init__()
        self.ae = ae

    def forward(self, x: Tensor) -> Tensor:
        return self.ae.decoder(self.ae.encoder(x.flatten(1)))


def _train_net(
    run: Run,
    cfg: dict[str, Any],
    amp: Amp,
    gen: torch.Generator,
    data: tuple[Tensor, ...],
    info: dict[str, Any],
    report: _Report,
) -> dict[str, Any]:
    """Train the CNN classifier or the autoencoder on the shared loop; returns the metrics."""
    world = distributed.world_size() if distributed.is_distributed() else 1
    tr_x = data[0]
    device = tr_x.device
    # `gen` (shared by all ranks) shuffles; augmentation draws from a private stream per rank
    seed = int(cfg["seed"])
    aug_gen = gen if world == 1 else torch.Generator().manual_seed(distributed.rank_seed(seed))
    method = cfg["method"]
    if method == "cnn":
        name = cfg["model"] or default_model_for(
            info["name"], info["image_size"], info["in_channels"]
        )
        try:
            net = create_model(name, info["in_channels"], image_size=info["image_size"])
        except ValueError as exc:
            raise UserError(str(exc)) from None
        model: nn.Module = Classifier(net, info["num_classes"])
        augment = resolve_augment(cfg["augment"], info["in_channels"])
    else:
        name = "autoencoder"
        model = AutoEncoder(tr_x[0].numel(), cfg["code_dim"])
        augment = "none"
    fmt = torch.channels_last if cfg["channels_last"] and method == "cnn" else None
    model.to(device=device, memory_format=fmt or torch.contiguous_format)
    # every parameter (head included) goes to the optimiser
    opt_cfg = dict(cfg)
    if method == "knn-ae" and "optimizer" not in getattr(cfg, "explicit", set()):
        opt_cfg.update(optimizer="adam", weight_decay=0.0)
    n = tr_x.shape[0]
    bs = min(cfg["batch_size"], n // world)
    if bs < 1:
        raise UserError(f"{world} processes need at least {world} training images")
    steps = max(1, n // (bs * world))
    if cfg["steps_per_epoch"]:
        steps = min(steps, int(cfg["steps_per_epoch"]))
    task = _BaselineTask(
        model=model,
        train_module=model if method == "cnn" else _Reconstruct(model),
        steps_per_epoch=steps,
        select="val_acc",
        ties_to_later=True,
        optimizer=opt_cfg,
        generator=gen,
        streams={"aug": aug_gen} if world > 1 else {},  # in one process `aug_gen` is `gen`
        plot_keys=["train_acc", "val_acc"] if method == "cnn" else ["val_acc"],
        plot_file="accuracy.png",
    )
    task.setup(cfg, data, info, aug_gen, augment, fmt, bs, world, name, report)
    run.log({"event": "setup", "model": name, "parameters": count_parameters(model)})
    if run.is_main:
        procs = f" x {world} processes (global batch {bs * world})" if world > 1 else ""
        print(
            f"baseline {method} on {info['name']}: {name} ({count_parameters(model):,} "
            f"parameters) on {device}{procs}, {steps} steps x {cfg['num_epochs']} epochs; "
            f"output {run.path}"
        )
    return fit(task, run, cfg, amp, device)


class _BaselineTask(Task):
    """Cross-entropy of the CNN classifier, or the autoencoder's reconstruction error."""

    def setup(
        self,
        cfg: dict[str, Any],
        data: tuple[Tensor, ...],
        info: dict[str, Any],
        aug_gen: torch.Generator,
        augment: str,
        fmt: torch.memory_format | None,
        bs: int,
        world: int,
        name: str,
        report: _Report,
    ) -> None:
        self.cfg, self.info, self.aug_gen, self.augment = cfg, info, aug_gen, augment
        self.tr_x, self.tr_y, self.va_x, self.va_y, self.te_x, self.te_y = data
        self.fmt, self.bs, self.world, self.name, self.report = fmt, bs, world, name, report
        self.rank = distributed.rank() if world > 1 else 0
        self.cnn = cfg["method"] == "cnn"
        self.order: Tensor | None = None

    def start_epoch(self, epoch: int) -> None:
        n = self.tr_x.shape[0]
        self.order = index_stream(n, self.steps_per_epoch * self.bs * self.world, self.generator)
        if self.tr_x.device.type == "cuda":
            self.order = self.order.pin_memory()  # asynchronous per-step index copies

    def loss(self, net: nn.Module, step: int, amp: Amp) -> tuple[Tensor, dict[str, float]]:
        lo = (step * self.world + self.rank) * self.bs  # this rank's slice of the global batch
        idx = self.order[lo : lo + self.bs].to(self.tr_x.device, non_blocking=True)
        x = augment_batch(self.tr_x[idx], self.augment, self.aug_gen)
        if self.fmt is not None:
            x = x.contiguous(memory_format=self.fmt)
        with amp.autocast():
            out = net(x)
        if not self.cnn:
            return F.mse_loss(out.float(), x.flatten(1)), {}
        logits = out.float()
        correct = int((logits.argmax(1) == self.tr_y[idx]).sum())
        smooth = float(self.cfg.get("label_smoothing") or 0.0)
        loss = F.cross_entropy(logits, self.tr_y[idx], label_smoothing=smooth)
        return loss, {"correct": correct}

    def record(self, stats: EpochStats) -> dict[str, Any]:
        rec: dict[str, Any] = {"epoch": stats.epoch, "train_loss": stats.loss}
        if self.cnn:
            rec["train_acc"] = stats.sums["correct"] / (stats.steps * self.bs * self.world)
        return rec

    def _embed(self, x: Tensor) -> Tensor:
        cfg = self.cfg
        return embed(self.model, x, batch_size=cfg["eval_batch"], channels_last=bool(self.fmt))

    def _knn(self, x: Tensor, y: Tensor) -> float:
        cfg, c = self.cfg, self.info["num_classes"]
        codes_tr, codes = self._embed(self.tr_x), self._embed(x)
        chunk = cfg["num_test_queries"]
        return knn_accuracy(
            codes, y, codes_tr, self.tr_y, cfg["k"], num_classes=c, query_chunk=chunk
        )

    def _accuracy(self, x: Tensor, y: Tensor) -> float:
        if self.cnn:
            logits = self._embed(x)
            if self.cfg.get("test_flip"):
                logits = logits + self._embed(x.flip(3))
            return (logits.argmax(1).cpu() == y).double().mean().item()
        return self._knn(x, y)

    def validate(self) -> dict[str, Any]:
        return {"val_acc": self._accuracy(self.va_x, self.va_y)}

    def epoch_message(self, rec: dict[str, Any], is_best: bool, num_epochs: int) -> str:
        return (
            f"epoch {rec['epoch']}/{num_epochs}: train loss {rec['train_loss']:.4f}, val acc "
            f"{rec['val_acc']:.4f}{' (best)' if is_best else ''}, {rec['epoch_time_s']:.1f}s"
        )

    def finish(self, result: Result) -> dict[str, Any]:
        test_acc = self._accuracy(self.te_x, self.te_y)
        if self.cnn and result.best is not None:
            val_acc = result.best
        else:
            val_acc = self._accuracy(self.va_x, self.va_y)
        return self.report(val_acc, test_acc, result.history, result.elapsed, {"model": self.name})
