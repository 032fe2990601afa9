"""The training task of ``neuralsort dknn`` on the shared loop (the protocol: :mod:`.command`).

Each step embeds this rank's ``num_train_queries`` queries and ``num_train_neighbors`` neighbours,
slices of two shuffles of the training part, and minimises :func:`neuralsort.knn.dknn_loss` against
the neighbours of every rank (with ``all_queries``: every image against all the others of every
rank); validation and test classify by hard kNN over the embedded training part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuralsort.knn import dknn_loss

from .. import distributed
from ..config import UserError
from ..data import fixed_sample, split_for_run
from ..embedding_nets import model_for_data
from ..knn_eval import embed, knn_accuracy
from ..loop import EpochStats, Result, Task, fit
from ..recipe import (
    Amp,
    augment_batch,
    count_parameters,
    index_stream,
    resolve_augment,
)
from ..run_folder import Run
from ..seeding import seed_everything

__all__ = ["DknnTask", "train_dknn", "dknn_split", "step_loss"]


def step_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    q: int,
    query_labels: torch.Tensor,
    neighbor_labels: torch.Tensor,
    cfg: dict[str, Any],
    amp: Amp,
    noise: torch.Generator,
    rank: int = 0,
) -> torch.Tensor:
    """The kNN loss of one step: ``x`` holds this rank's ``q`` queries then its neighbours.

    The embedding runs under ``amp``; the loss runs in float32 over the neighbours of every rank
    (gathered in rank order), ``neighbor_labels`` being the labels of all of them. With
    ``cfg["all_queries"]`` every image of ``x`` is a query against every rank's images but
    itself (``rank`` places it among them): ``query_labels`` are then the labels of ``x`` and
    ``neighbor_labels`` those of every rank's ``x``, in rank order.
    """
    with amp.autocast():
        e = model(x)
    e = e.float()
    mask = None
    if cfg.get("all_queries"):
        query, neighbors = e, distributed.all_gather_with_grad(e)
        b = e.shape[0]
        mask = torch.ones(b, neighbors.shape[0], dtype=torch.bool, device=e.device)
        own = torch.arange(b, device=e.device)
        mask[own, rank * b + own] = False
    else:
        query, neighbors = e[:q], distributed.all_gather_with_grad(e[q:])
    return dknn_loss(
        query,
        neighbors,
        query_labels,
        neighbor_labels,
        cfg["k"],
        tau=cfg["tau"],
        method=cfg["method"],
        n_samples=cfg["num_samples"],
        generator=noise,
        mask=mask,
    )


def dknn_split(
    cfg: dict[str, Any], num_train: int, info: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the run's training part (``train_subset`` applied) and validation part of the
    ``num_train`` training images; a bad ``val_size`` is a UserError.

    ``train_subset`` keeps that many images of the training part, drawn by :func:`fixed_sample`
    (the same ones in every run)."""
    k = cfg["k"]
    tr_idx, va_idx = split_for_run(cfg, num_train, info, keep=k + 1)
    if cfg["train_subset"]:  # at least k: checked with the command's other flags
        tr_idx = fixed_sample(tr_idx, int(cfg["train_subset"]))
    return tr_idx, va_idx


def train_dknn(
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
    """Train the embedding on the images (split into training and validation parts), test the
    best-validation net; returns the metrics (None when ``stop_after`` steps stopped it first)."""
    world, device = ctx.world_size, ctx.device
    seed = int(cfg["seed"])
    # `gen` draws the shuffles: the same on every rank, each rank then takes its own slice
    gen = seed_everything(seed)
    # private streams: augmentation (shares `gen` in one process, as it always did) and noise
    aug_gen = gen if world == 1 else torch.Generator().manual_seed(distributed.rank_seed(seed))
    noise_gen = torch.Generator(device=device)
    noise_gen.manual_seed(distributed.rank_seed(seed + 1))

    k = cfg["k"]
    tr_idx, va_idx = dknn_split(cfg, train_x.shape[0], info)
    val_size = len(va_idx)
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

    model_name, model = model_for_data(cfg["model"], info)
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model.to(device=device, memory_format=fmt)
    task = DknnTask(
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
        run=run,
        cfg=cfg,
        info=info,
        data=data,
        model_name=model_name,
        aug_gen=aug_gen,
        noise_gen=noise_gen,
        fmt=fmt,
        device=device,
    )
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
            "parameters": count_parameters(model),
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


@dataclass(kw_only=True, eq=False)
class DknnTask(Task):
    """The kNN loss over queries and neighbours drawn from two shuffles of the training part.

    Attributes:
        run, cfg: the run folder and its resolved settings.
        info: the data set's description (name, classes, image size).
        data: the training, validation and test images and labels.
        model_name: the embedding net's name (saved in the checkpoints).
        aug_gen: the augmentation's generator; ``noise_gen`` the Plackett-Luce noise's.
        fmt: the memory format of the training batches.
        device: the training device.
    """

    run: Run
    cfg: dict[str, Any]
    info: dict[str, Any]
    data: _Data
    model_name: str
    aug_gen: torch.Generator
    noise_gen: torch.Generator
    fmt: torch.memory_format
    device: torch.device

    def __post_init__(self) -> None:
        self.augment = resolve_augment(self.cfg["augment"], self.info["in_channels"])
        self.world = distributed.active_world_size()
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
        query_y, neighbor_y = d.tr_y[qi], d.tr_y[ni_all]
        if self.cfg["all_queries"]:  # each rank's queries, then its neighbours
            w = self.world
            qi_all = self.src_q[step * w * q : (step + 1) * w * q].to(self.device)
            query_y = torch.cat([query_y, d.tr_y[ni]])
            neighbor_y = torch.cat([d.tr_y[qi_all].view(w, q), neighbor_y.view(w, m)], 1).flatten()
        loss = step_loss(
            net, x, q, query_y, neighbor_y, self.cfg, amp, self.noise_gen, rank=self.rank
        )
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
        opts = dict(
            batch_size=cfg["eval_batch"],
            channels_last=cfg["channels_last"],
            flip=bool(cfg["test_flip"]),
        )
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
