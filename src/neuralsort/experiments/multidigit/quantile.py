"""``neuralsort quantile``: regressing the median of four-digit MNIST numbers (paper Table 2).

Each item of a sequence of ``n`` multi-digit images gets a sorting score from one net and a value
from another; the prediction is the value picked out by the relaxed median selector (the middle row
of the relaxed permutation). Baselines: ``constant`` (the mean training median), ``vanilla``
(a dense net on the image features) and Sinkhorn selectors. Reported: ``mse`` on values scaled by
1e-4 as in the paper, and R^2 twice: ``r2_corr`` (squared correlation, what the paper's column
behaves like) and ``r2`` (1 - MSE / Var).

Example::

    neuralsort quantile --n 5 --method deterministic --config quality/quantile-n5.yaml
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..config import UserError, resolve_config
from ..data.multidigit import MultiDigitEvalSet
from .medians import MEDIAN_METHODS, build_median_method
from .models import true_median
from .settings import BASE_DEFAULTS, add_multidigit_args, validate_task
from .task import Experiment, train_and_test

__all__ = [
    "DEFAULTS",
    "PAPER_NS",
    "MSE_SCALE",
    "add_parser",
    "main",
    "median_metrics",
    "evaluate_median",
]

PAPER_NS = (5, 9, 15)  # the n of the paper's table

DEFAULTS: dict[str, Any] = {**BASE_DEFAULTS, "batch_size": 5, "eval_ns": list(PAPER_NS)}

MSE_SCALE = 1e-4  # the paper reports squared errors of the raw numbers times 1e-4


def median_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``mse`` (times 1e-4), ``r2_corr`` (squared Pearson correlation) and ``r2`` (1 - MSE/Var).

    ``r2_corr`` is 0 when either side is constant; ``r2`` is 0 for a perfect constant (the mean)
    and negative for a model worse than the mean.
    """
    if pred.shape != target.shape or pred.dim() != 1 or pred.numel() < 2:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must be equal 1-D shapes "
            "with at least 2 entries"
        )
    p, t = pred.double(), target.double()
    mse = float(((p - t) ** 2).mean())
    var = float(t.var(unbiased=False))
    pc, tc = p - p.mean(), t - t.mean()
    denom = float((pc**2).sum() * (tc**2).sum())
    r2_corr = float((pc * tc).sum() ** 2 / denom) if denom > 0 else 0.0
    r2 = 1.0 - mse / var if var > 0 else 0.0
    return {"mse": mse * MSE_SCALE, "r2_corr": r2_corr, "r2": r2}


@torch.no_grad()
def evaluate_median(
    model: nn.Module, eval_set: MultiDigitEvalSet, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Median-regression metrics of ``model.predict`` over a fixed evaluation set."""
    model.eval()
    preds, targets = [], []
    for images, values in eval_set.batches(batch_size):
        preds.append(model.predict(images.to(device)).double().cpu())
        targets.append(true_median(values))
    model.train()
    return median_metrics(torch.cat(preds), torch.cat(targets))


def _build(cfg: dict[str, Any], image_shape: tuple[int, int]) -> nn.Module:
    return build_median_method(
        cfg["method"],
        n=int(cfg["n"]),
        image_shape=image_shape,
        scale=float(10 ** cfg["digits"]),
        tau=float(cfg["tau"]),
        num_samples=int(cfg["num_samples"]),
        regroup=int(cfg["regroup"]),
        lengths=cfg["regroup_ns"],
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``quantile`` on an argparse sub-parser collection."""
    p = subparsers.add_parser(
        "quantile",
        help="median regression on sequences of four-digit MNIST numbers (paper Table 2)",
        description=(
            "Predict the median value of n four-digit MNIST numbers (the paper's Table 2). "
            "Reports the test MSE on values scaled by 1e-4, the squared correlation (r2_corr) "
            "and 1 - MSE/Var (r2) for the best-validation checkpoint. Defaults are the paper's "
            "recipe (200 epochs x 625 steps); --config quality/quantile-n5.yaml is a shipped "
            "faster CPU recipe."
        ),
    )
    add_multidigit_args(p, MEDIAN_METHODS, DEFAULTS)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run ``neuralsort quantile`` with parsed ``args``; returns the exit status."""
    cfg = resolve_config(args, DEFAULTS)
    n = validate_task(cfg, MEDIAN_METHODS, ", ".join(map(str, PAPER_NS)))
    if cfg["regroup_near"]:
        raise UserError("--regroup_near applies to neuralsort sort only")
    experiment = Experiment(
        name=f"quantile-{cfg['method']}-n{n}",
        build=_build,
        evaluate=evaluate_median,
        select="mse",
        mode="min",
        plot_keys=["val_mse"],
    )
    metrics = train_and_test(cfg, experiment)
    if distributed.is_main():
        print(
            f"test mse {metrics['test_mse']:.4g} (x1e-4)  r2_corr {metrics['test_r2_corr']:.3f}  "
            f"r2 {metrics['test_r2']:.3f}  (best epoch {metrics['best_epoch']}; {cfg['out']})"
        )
        by_n = metrics["test_by_n"]
        if len(by_n) > 1:
            print("mse at every n: " + "  ".join(f"{m}: {v['mse']:.4g}" for m, v in by_n.items()))
    return 0
