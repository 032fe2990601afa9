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

from torch import Tensor

from .. import distributed
from ..config import UserError, add_common_args, add_flag, check_int, check_number, resolve_config
from ..data import load_dataset, split_for_run
from ..knn_eval import knn_split_metrics
from ..loop import start_run
from ..recipe import RECIPE_DEFAULTS, add_recipe_flags
from ..seeding import seed_everything
from .methods import AutoEncoder, pca_project
from .task import Report, train_net

__all__ = ["DEFAULTS", "METHODS", "add_parser", "main", "pca_project", "AutoEncoder"]

METHODS = ("cnn", "knn", "knn-pca", "knn-ae")

DEFAULTS: dict[str, Any] = {
    "dataset": "mnist",
    "method": "cnn",
    "k": 9,
    "eval_ks": [],
    "tau": None,
    "nloglr": 3.0,
    "num_epochs": 20,
    "batch_size": 100,
    "code_dim": 50,
    "model": None,
    **RECIPE_DEFAULTS,
    "val_size": None,
    "eval_batch": 1000,
    "num_test_queries": 1000,
    "channels_last": True,
    "label_smoothing": 0.0,
    "logit_scale": 1.0,
}

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"num_epochs": 15, "optimizer": "adam", "k": 5},
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``neuralsort baseline``."""
    p = subparsers.add_parser(
        "baseline",
        help="Table 3 baselines: CNN classifier, kNN on pixels / PCA / autoencoder codes",
        description=(
            "The paper's Table 3 baselines: the dknn embedding net with a linear head (cnn), and "
            "hard kNN on raw pixels (knn), on principal components (knn-pca) or on an "
            "autoencoder's code (knn-ae)."
        ),
    )
    g = p.add_argument_group("experiment")
    add_flag(g, "--dataset", help="as for dknn (default mnist)")
    add_flag(g, "--method", choices=list(METHODS), help="default cnn (the original script's)")
    add_flag(g, "--k", type=int, help="neighbours for the kNN methods (default 9)")
    add_flag(
        g,
        "--eval_ks",
        type=int,
        nargs="+",
        metavar="K",
        help="kNN methods: also test at these k, from the same codes (metrics test_acc_by_k)",
    )
    add_flag(g, "--nloglr", type=float, help="learning rate = 10^-nloglr (default 3)")
    add_flag(g, "--tau", type=float, help="accepted, as by the original run_dknn.py; unused")
    add_flag(g, "--batch_size", type=int, help="training batch (default 100)")
    add_flag(g, "--code_dim", type=int, help="PCA components / autoencoder code size (50)")
    add_common_args(p, epochs_default=str(DEFAULTS["num_epochs"]))
    t = p.add_argument_group("training recipe (cnn, knn-ae)")
    add_flag(t, "--model", help="embedding net of the CNN (default as for dknn)")
    add_recipe_flags(
        t,
        {
            "optimizer": f"default {DEFAULTS['optimizer']}",
            "momentum": f"SGD momentum (default {DEFAULTS['momentum']})",
            "nesterov": "SGD with Nesterov momentum (off)",
            "norm_bias_lr": "learning-rate multiplier of the normalisation layers' biases, their "
            "weight decay divided by it (1)",
            "weight_decay": f"default {DEFAULTS['weight_decay']}",
            "lr_schedule": f"default {DEFAULTS['lr_schedule']}",
            "warmup_epochs": "linear learning-rate warm-up (default 0)",
            "augment": "training augmentation (default auto: as for dknn)",
            "test_flip": "CNN: classify by the summed logits of each image and its mirror image "
            "(off)",
        },
    )
    add_flag(t, "--val_size", type=int, help="validation images held out (as for dknn)")
    add_flag(t, "--eval_batch", type=int)
    add_flag(t, "--num_test_queries", type=int, help="kNN evaluation chunk (memory only)")
    add_flag(t, "--channels_last", action=argparse.BooleanOptionalAction)
    add_flag(t, "--label_smoothing", type=float, help="CNN cross-entropy label smoothing (0)")
    add_flag(t, "--logit_scale", type=float, help="CNN: logits multiplied by this (1)")
    return p


def main(args: argparse.Namespace) -> int:
    """Entry point of ``neuralsort baseline``."""
    cfg = resolve_config(args, DEFAULTS)
    extra = DATASET_DEFAULTS.get(str(cfg["dataset"]).lower())
    if extra:
        cfg = resolve_config(args, {**DEFAULTS, **extra})
    run_baseline(cfg)
    return 0


def _validate(cfg: dict[str, Any]) -> None:
    """The baseline's own settings (the loop checks the common and recipe ones)."""
    if cfg["method"] not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {cfg['method']!r}")
    for key in ("k", "batch_size", "code_dim", "eval_batch", "num_test_queries"):
        check_int(cfg, key)
    ks = cfg.get("eval_ks") or []
    if not isinstance(ks, list) or not all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks
    ):
        raise UserError(f"--eval_ks must be integers >= 1, got {ks!r}")
    if ks and cfg["method"] == "cnn":
        raise UserError("--eval_ks applies to the kNN methods (knn, knn-pca, knn-ae), not cnn")
    ls = cfg.get("label_smoothing", 0.0)
    if isinstance(ls, bool) or not isinstance(ls, int | float) or not 0.0 <= ls < 1.0:
        raise UserError(f"--label_smoothing must be in [0, 1), got {ls!r}")
    check_number(cfg, "logit_scale")


# The autoencoder's optimiser where the command line does not choose one (recorded in the run's
# config.yaml, so that a resumed run rebuilds the same optimiser); with --optimizer given, the
# recipe flags keep their defaults.
KNN_AE_RECIPE: dict[str, Any] = {"optimizer": "adam", "weight_decay": 0.0}


def run_baseline(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one baseline from a resolved config; returns the metrics."""
    explicit = getattr(cfg, "explicit", set())
    if cfg["method"] == "knn-ae" and "optimizer" not in explicit:
        cfg.update({k: v for k, v in KNN_AE_RECIPE.items() if k not in explicit})
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
    tr_idx, va_idx = split_for_run(cfg, train_x.shape[0], info, keep=cfg["k"])
    tr_x, tr_y = train_x[tr_idx].to(device), train_y[tr_idx].to(device)
    va_x, va_y = train_x[va_idx].to(device), train_y[va_idx]
    te_x = test_x.to(device)
    k, c = cfg["k"], info["num_classes"]
    chunk = cfg["num_test_queries"]

    def knn_metrics(tr: Tensor, va: Tensor, te: Tensor) -> tuple[float, float, dict[str, Any]]:
        pairs = {"val": (va, va_y), "test": (te, test_y)}
        at_k, extra = knn_split_metrics(
            pairs, tr, tr_y, k, cfg["eval_ks"], num_classes=c, query_chunk=chunk
        )
        return at_k["val"], at_k["test"], extra

    method = cfg["method"]
    report = Report(run, cfg, info, str(device), ctx.world_size)
    if method in ("cnn", "knn-ae"):
        return train_net(run, cfg, amp, gen, (tr_x, tr_y, va_x, va_y, te_x, test_y), info, report)
    metrics = None
    if ctx.is_main:  # nothing to train: rank 0 computes, the others wait
        if method == "knn":
            codes = (tr_x.flatten(1), va_x.flatten(1), te_x.flatten(1))
        else:
            ptr, (pva, pte) = pca_project(
                tr_x.flatten(1), [va_x.flatten(1), te_x.flatten(1)], cfg["code_dim"]
            )
            codes = (ptr, pva, pte)
        val_acc, test_acc, extra = knn_metrics(*codes)
        metrics = report(val_acc, test_acc, [], time.time() - t0, extra)
        run.write_metrics(metrics)
    distributed.barrier()
    return distributed.broadcast_object(metrics)
