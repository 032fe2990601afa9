"""The training task of ``neuralsort baseline`` (``cnn`` and ``knn-ae``) on the shared loop.

Each rank takes its own slice of every global batch of one shuffle of the training part; the CNN
is trained with cross-entropy (its head included in the optimiser), the autoencoder with the mean
squared reconstruction error. Validation and test run on rank 0: the CNN classifies by its logits,
the autoencoder by hard kNN over its codes of the training part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import distributed
from ..config import UserError
from ..embedding_nets import Classifier, model_for_data
from ..knn_eval import embed, knn_accuracy, knn_split_metrics
from ..loop import EpochStats, Result, Task, fit
from ..recipe import Amp, augment_batch, count_parameters, index_stream, resolve_augment
from ..run_folder import Run
from .methods import AutoEncoder, Reconstruction

__all__ = ["BaselineTask", "Report", "train_net"]


class Report:
    """Rank 0: a baseline's metrics, its log line and its printed result."""

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
        self.run.log({"event": "done", "val_acc": val_acc, "test_acc": test_acc})
        what = "CNN" if method == "cnn" else f"{method} (k={k})"
        print(
            f"{self.info['name']} test accuracy: {what} {100 * test_acc:.2f}%  |  val "
            f"{100 * val_acc:.2f}%  |  {wall / 60:.1f} min  |  {self.run.path}"
        )
        return metrics


def train_net(
    run: Run,
    cfg: dict[str, Any],
    amp: Amp,
    gen: torch.Generator,
    data: tuple[Tensor, ...],
    info: dict[str, Any],
    report: Report,
) -> dict[str, Any]:
    """Train the CNN classifier or the autoencoder on the shared loop; returns the metrics."""
    world = distributed.active_world_size()
    tr_x = data[0]
    device = tr_x.device
    # `gen` (shared by all ranks) shuffles; augmentation draws from a private stream per rank
    seed = int(cfg["seed"])
    aug_gen = gen if world == 1 else torch.Generator().manual_seed(distributed.rank_seed(seed))
    method = cfg["method"]
    if method == "cnn":
        name, net = model_for_data(cfg["model"], info)
        model: nn.Module = Classifier(net, info["num_classes"], logit_scale=cfg["logit_scale"])
        augment = resolve_augment(cfg["augment"], info["in_channels"])
    else:
        name = "autoencoder"
        model = AutoEncoder(tr_x[0].numel(), cfg["code_dim"])
        augment = "none"
    fmt = torch.channels_last if cfg["channels_last"] and method == "cnn" else None
    model.to(device=device, memory_format=fmt or torch.contiguous_format)
    # every parameter (head included) goes to the optimiser
    opt_cfg = dict(cfg)
    n = tr_x.shape[0]
    bs = min(cfg["batch_size"], n // world)
    if bs < 1:
        raise UserError(f"{world} processes need at least {world} training images")
    steps = max(1, n // (bs * world))
    if cfg["steps_per_epoch"]:
        steps = min(steps, int(cfg["steps_per_epoch"]))
    task = BaselineTask(
        model=model,
        train_module=model if method == "cnn" else Reconstruction(model),
        steps_per_epoch=steps,
        select="val_acc",
        ties_to_later=True,
        optimizer=opt_cfg,
        generator=gen,
        streams={"aug": aug_gen} if world > 1 else {},  # in one process `aug_gen` is `gen`
        plot_keys=["train_acc", "val_acc"] if method == "cnn" else ["val_acc"],
        plot_file="accuracy.png",
        cfg=cfg,
        data=data,
        info=info,
        aug_gen=aug_gen,
        augment=augment,
        fmt=fmt,
        bs=bs,
        world=world,
        name=name,
        report=report,
    )
    run.log({"event": "setup", "model": name, "parameters": count_parameters(model)})
    if run.is_main:
        procs = f" x {world} processes (global batch {bs * world})" if world > 1 else ""
        print(
            f"baseline {method} on {info['name']}: {name} ({count_parameters(model):,} "
            f"parameters) on {device}{procs}, {steps} steps x {cfg['num_epochs']} epochs; "
            f"output {run.path}"
        )
    return fit(task, run, cfg, amp, device)


@dataclass(kw_only=True, eq=False)
class BaselineTask(Task):
    """Cross-entropy of the CNN classifier, or the autoencoder's reconstruction error.

    Attributes:
        cfg: the resolved settings.
        data: training, validation and test images and labels (``tr_x, tr_y, va_x, va_y, te_x,
            te_y``).
        info: the data set's description.
        aug_gen: the augmentation's generator; ``augment`` its kind.
        fmt: the training batches' memory format (None: as they are).
        bs: images per rank and step; ``world`` the number of processes.
        name: the net's name; ``report`` makes the metrics at the end.
    """

    cfg: dict[str, Any]
    data: tuple[Tensor, ...]
    info: dict[str, Any]
    aug_gen: torch.Generator
    augment: str
    fmt: torch.memory_format | None
    bs: int
    world: int
    name: str
    report: Report

    def __post_init__(self) -> None:
        self.tr_x, self.tr_y, self.va_x, self.va_y, self.te_x, self.te_y = self.data
        self.rank = distributed.rank() if self.world > 1 else 0
        self.cnn = self.cfg["method"] == "cnn"
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

    def _embed(self, x: Tensor, flip: bool = False) -> Tensor:
        cfg = self.cfg
        return embed(
            self.model, x, batch_size=cfg["eval_batch"], channels_last=bool(self.fmt), flip=flip
        )

    def _knn(self, x: Tensor, y: Tensor) -> float:
        cfg, c = self.cfg, self.info["num_classes"]
        codes_tr, codes = self._embed(self.tr_x), self._embed(x)
        chunk = cfg["num_test_queries"]
        return knn_accuracy(
            codes, y, codes_tr, self.tr_y, cfg["k"], num_classes=c, query_chunk=chunk
        )

    def _accuracy(self, x: Tensor, y: Tensor) -> float:
        if self.cnn:
            logits = self._embed(x, flip=bool(self.cfg.get("test_flip")))
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
        extra: dict[str, Any] = {"model": self.name}
        if self.cnn:
            test_acc = self._accuracy(self.te_x, self.te_y)
            val_acc = result.best
            if val_acc is None:
                val_acc = self._accuracy(self.va_x, self.va_y)
        else:  # each split embedded once, then every k from the same codes
            pairs = {
                "val": (self._embed(self.va_x), self.va_y),
                "test": (self._embed(self.te_x), self.te_y),
            }
            at_k, by_k = knn_split_metrics(
                pairs,
                self._embed(self.tr_x),
                self.tr_y,
                self.cfg["k"],
                self.cfg.get("eval_ks") or [],
                num_classes=self.info["num_classes"],
                query_chunk=self.cfg["num_test_queries"],
            )
            val_acc, test_acc = at_k["val"], at_k["test"]
            extra.update(by_k)
        return self.report(val_acc, test_acc, result.history, result.elapsed, extra)
