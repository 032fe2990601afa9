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

from . import checkpoint, distributed
from .config import AMP_MODES, UserError, add_common_args, add_flag, resolve_config
from .data import load_dataset, train_val_split
from .knn_eval import embed, knn_accuracy
from .models import Classifier, create_model, default_model_for
from .run import Run
from .seeding import seed_everything
from .training import (
    AUGMENTS,
    OPTIMIZERS,
    SCHEDULES,
    Amp,
    augment_batch,
    count_parameters,
    index_stream,
    make_optimizer,
    make_scheduler,
    progress,
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
    add_flag(g, "--tau", type=float, help="accepted for the seed's command lines; unused")
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
    t = cfg["threads"]
    if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t <= 0):
        raise UserError(f"--threads must be a positive int, got {t!r}")


def run_baseline(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one baseline from a resolved config; returns the metrics."""
    _validate(cfg)
    ctx = distributed.setup(cfg["device"])  # joins the process group under torchrun
    Amp(cfg["amp"], ctx.device)  # fail on an unsupported --amp before opening a run folder
    ds = str(cfg["dataset"]).lower().replace(":", "-").replace("/", "_")
    run = Run.start(cfg, name=f"baseline-{cfg['method']}-{ds}")
    t0 = time.time()
    try:
        _validate(cfg)
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        amp = Amp(cfg["amp"], ctx.device)
        train_x, train_y, test_x, test_y, info = load_dataset(cfg["dataset"], cfg["data_dir"])
    except UserError:
        if (
            run.is_main
            and not run.resumed
            and {p.name for p in run.path.iterdir()} <= {"config.yaml", "log.jsonl"}
        ):
            import shutil

            shutil.rmtree(run.path, ignore_errors=True)
        raise
    gen = seed_everything(int(cfg["seed"]))
    device = ctx.device
    val_size = int(cfg["val_size"] or info["val_size"])
    tr_idx, va_idx = train_val_split(train_x.shape[0], val_size)
    tr_x, tr_y = train_x[tr_idx].to(device), train_y[tr_idx].to(device)
    va_x, va_y = train_x[va_idx].to(device), train_y[va_idx]
    te_x = test_x.to(device)
    k, c = cfg["k"], info["num_classes"]
    chunk = cfg["num_test_queries"]
    history: list[dict[str, Any]] = []

    def knn_pair(tr: Tensor, va: Tensor, te: Tensor) -> tuple[float, float]:
        return (
            knn_accuracy(va, va_y, tr, tr_y, k, num_classes=c, query_chunk=chunk),
            knn_accuracy(te, test_y, tr, tr_y, k, num_classes=c, query_chunk=chunk),
        )

    method = cfg["method"]
    extra: dict[str, Any] = {}
    if method in ("knn", "knn-pca"):  # nothing to train: rank 0 computes, the others wait
        val_acc = test_acc = 0.0
        if ctx.is_main and method == "knn":
            val_acc, test_acc = knn_pair(tr_x.flatten(1), va_x.flatten(1), te_x.flatten(1))
        elif ctx.is_main:
            ptr, (pva, pte) = pca_project(
                tr_x.flatten(1), [va_x.flatten(1), te_x.flatten(1)], cfg["code_dim"]
            )
            val_acc, test_acc = knn_pair(ptr, pva, pte)
    else:
        val_acc, test_acc, history, extra = _train_net(
            run, cfg, ctx, amp, gen, tr_x, tr_y, va_x, va_y, te_x, test_y, info
        )
    if not ctx.is_main:
        distributed.barrier()
        return distributed.broadcast_object(None)
    wall = time.time() - t0 + extra.pop("elapsed_before", 0.0)
    metrics = {
        "dataset": info["name"],
        "method": method,
        "k": k if method != "cnn" else None,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "wall_time_s": wall,
        "device": str(device),
        "world_size": ctx.world_size,
        "amp": cfg["amp"] if method in ("cnn", "knn-ae") else None,
        "history": history,
        **extra,
    }
    run.write_metrics(metrics)
    run.log({"event": "done", "val_acc": val_acc, "test_acc": test_acc})
    if history:
        run.plot_history(
            history, [kk for kk in ("train_acc", "val_acc") if kk in history[0]], "accuracy.png"
        )
    what = "CNN" if method == "cnn" else f"{method} (k={k})"
    print(
        f"{info['name']} test accuracy: {what} {100 * test_acc:.2f}%  |  val {100 * val_acc:.2f}%"
        f"  |  {wall / 60:.1f} min  |  {run.path}"
    )
    distributed.barrier()
    return distributed.broadcast_object(metrics)


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
    ctx: distributed.Context,
    amp: Amp,
    gen: torch.Generator,
    tr_x: Tensor,
    tr_y: Tensor,
    va_x: Tensor,
    va_y: Tensor,
    te_x: Tensor,
    te_y: Tensor,
    info: dict[str, Any],
) -> tuple[float, float, list[dict[str, Any]], dict[str, Any]]:
    """Train the CNN classifier or the autoencoder; checkpoint each epoch; resume-safe.

    Returns the validation and test accuracy (on rank 0; zeros elsewhere), history and extras.
    """
    t_start = time.time()
    device, world, rank = ctx.device, ctx.world_size, ctx.rank
    say = print if ctx.is_main else (lambda *a, **k: None)
    # `gen` (shared by all ranks) shuffles; augmentation draws from a private stream per rank
    aug_gen = (
        gen
        if world == 1
        else torch.Generator().manual_seed(distributed.rank_seed(int(cfg["seed"])))
    )
    method = cfg["method"]
    c = info["num_classes"]
    if method == "cnn":
        name = cfg["model"] or default_model_for(
            info["name"], info["image_size"], info["in_channels"]
        )
        try:
            net = create_model(name, info["in_channels"], image_size=info["image_size"])
        except ValueError as exc:
            raise UserError(str(exc)) from None
        model: nn.Module = Classifier(net, c)
        augment = resolve_augment(cfg["augment"], info["in_channels"])
    else:
        name = "autoencoder"
        model = AutoEncoder(tr_x[0].numel(), cfg["code_dim"])
        augment = "none"
    fmt = torch.channels_last if cfg["channels_last"] and method == "cnn" else None
    model.to(device=device, memory_format=fmt or torch.contiguous_format)
    net = distributed.wrap_ddp(model if method == "cnn" else _Reconstruct(model), device)
    # every parameter (head included) goes to the optimiser
    opt_cfg = dict(cfg)
    if method == "knn-ae" and "optimizer" not in getattr(cfg, "explicit", set()):
        opt_cfg.update(optimizer="adam", weight_decay=0.0)
    opt = make_optimizer(model.parameters(), opt_cfg)
    n = tr_x.shape[0]
    bs = min(cfg["batch_size"], n // world)
    if bs < 1:
        raise UserError(f"{world} processes need at least {world} training images")
    steps = max(1, n // (bs * world))
    if cfg["steps_per_epoch"]:
        steps = min(steps, int(cfg["steps_per_epoch"]))
    num_epochs = int(cfg["num_epochs"])
    sched = make_scheduler(opt, cfg, steps_per_epoch=steps, num_epochs=num_epochs)

    epoch, history, best_val, elapsed_before = 0, [], -1.0, 0.0
    state = run.load_checkpoint("last", shared=True) if run.resumed else None
    streams = {"aug": aug_gen} if world > 1 else {}  # in one process `aug_gen` is `gen`
    parts = dict(model=model, optimizer=opt, scheduler=sched, amp=amp, generator=gen)
    if state is not None:
        checkpoint.restore(state, run.path / "last.pt", **parts, streams=streams)
        epoch, history = state["epoch"], list(state["history"])
        best_val, elapsed_before = state["best_val"], state["elapsed"]
    procs = f" x {world} processes (global batch {bs * world})" if world > 1 else ""
    say(
        f"baseline {method} on {info['name']}: {name} ({count_parameters(model):,} parameters) "
        f"on {device}{procs}, {steps} steps x {num_epochs} epochs; output {run.path}"
    )

    def evaluate() -> tuple[float, Tensor | None]:
        if method == "cnn":
            logits = embed(model, va_x, batch_size=cfg["eval_batch"], channels_last=fmt is not None)
            return (logits.argmax(1).cpu() == va_y).double().mean().item(), None
        codes_tr = embed(model, tr_x, batch_size=cfg["eval_batch"], channels_last=fmt is not None)
        codes_va = embed(model, va_x, batch_size=cfg["eval_batch"], channels_last=fmt is not None)
        acc = knn_accuracy(
            codes_va,
            va_y,
            codes_tr,
            tr_y,
            cfg["k"],
            num_classes=c,
            query_chunk=cfg["num_test_queries"],
        )
        return acc, codes_tr

    from tqdm.auto import tqdm

    write = tqdm.write if ctx.is_main else say
    while epoch < num_epochs:
        t_ep = time.time()
        model.train()
        order = index_stream(n, steps * bs * world, gen)
        if device.type == "cuda":
            order = order.pin_memory()  # asynchronous per-step index copies
        loss_sum, correct = 0.0, 0
        for step in progress(range(steps), desc=f"epoch {epoch + 1}/{num_epochs}", unit="step"):
            lo = (step * world + rank) * bs  # this rank's slice of the global batch
            idx = order[lo : lo + bs].to(device, non_blocking=True)
            x = augment_batch(tr_x[idx], augment, aug_gen)
            if fmt is not None:
                x = x.contiguous(memory_format=fmt)
            with amp.autocast():
                out = net(x)
            if method == "cnn":
                logits = out.float()
                loss = F.cross_entropy(logits, tr_y[idx])
                correct += int((logits.argmax(1) == tr_y[idx]).sum())
            else:
                loss = F.mse_loss(out.float(), x.flatten(1))
            opt.zero_grad(set_to_none=True)
            amp.backward_step(loss, opt)
            sched.step()
            loss_sum += float(loss.detach())
        # means over ranks (each rank's loss is the mean over its equal share)
        loss_sum, correct = distributed.reduce_sum([loss_sum / world, correct])
        val_acc = 0.0
        if ctx.is_main:  # the other ranks wait at the barrier below
            val_acc, _ = evaluate()
        distributed.barrier()
        rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / steps}
        if method == "cnn":
            rec["train_acc"] = correct / (steps * bs * world)
        rec.update(val_acc=val_acc, epoch_time_s=time.time() - t_ep)
        history.append(rec)
        run.log(rec)
        is_best = val_acc >= best_val
        best_val = max(best_val, val_acc)
        epoch += 1
        state = checkpoint.training_state(
            **parts,
            streams=streams,
            epoch=epoch,
            history=history,
            best_val=best_val,
            elapsed=elapsed_before + time.time() - t_start,
        )
        run.save_checkpoint(state, is_best=is_best)
        write(
            f"epoch {epoch}/{num_epochs}: train loss {rec['train_loss']:.4f}, val acc "
            f"{val_acc:.4f}{' (best)' if is_best else ''}, {rec['epoch_time_s']:.1f}s"
        )
    if not ctx.is_main:
        return 0.0, 0.0, history, {"model": name, "elapsed_before": elapsed_before}
    best = run.load_checkpoint("best")
    if best is not None:
        model.load_state_dict(best["model"])
    if method == "cnn":
        logits = embed(model, te_x, batch_size=cfg["eval_batch"], channels_last=fmt is not None)
        test_acc = (logits.argmax(1).cpu() == te_y).double().mean().item()
        val_acc = best_val if best_val >= 0 else evaluate()[0]
    else:
        val_acc, codes_tr = evaluate()
        codes_te = embed(model, te_x, batch_size=cfg["eval_batch"], channels_last=fmt is not None)
        test_acc = knn_accuracy(
            codes_te,
            te_y,
            codes_tr,
            tr_y,
            cfg["k"],
            num_classes=c,
            query_chunk=cfg["num_test_queries"],
        )
    return val_acc, test_acc, history, {"model": name, "elapsed_before": elapsed_before}
