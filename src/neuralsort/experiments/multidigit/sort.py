"""``neuralsort sort``: sorting sequences of four-digit MNIST numbers (the paper's Table 1).

Each training step draws ``batch_size`` sequences of ``n`` multi-digit numbers; the method outputs
a relaxed permutation matrix and is trained with the row-wise cross-entropy against the true
(descending) sorting permutation. Reported: ``exact`` (fraction of sequences sorted entirely right)
and ``elementwise`` (fraction of sorted positions right), on the fixed validation set after every
epoch and on the test set for the best-validation checkpoint.

Example::

    neuralsort sort --n 5 --method deterministic --tau 1 --config quality/sort-n5.yaml
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..config import resolve_config
from ..data.multidigit import MultiDigitEvalSet
from .settings import BASE_DEFAULTS, add_multidigit_args, validate_task
from .sorters import SORT_METHODS, build_sort_method
from .task import Experiment, train_and_test

__all__ = [
    "DEFAULTS",
    "PAPER_NS",
    "add_parser",
    "main",
    "sort_correct",
    "sort_metrics",
    "evaluate_sort",
]

PAPER_NS = (3, 5, 7, 9, 15)  # the n of the paper's table

DEFAULTS: dict[str, Any] = {**BASE_DEFAULTS, "batch_size": 20, "eval_ns": list(PAPER_NS)}


def sort_correct(pred_perm: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Which sorted positions a predicted permutation gets right, ``(B, n)`` bool.

    ``pred_perm[b, i]`` is the input index the method puts at position ``i`` of the descending
    order. A position counts as right when the number placed there equals the true ``i``-th
    largest number, so swapping two equal numbers is not an error.
    """
    if pred_perm.shape != values.shape:
        raise ValueError(
            f"pred_perm {tuple(pred_perm.shape)} and values {tuple(values.shape)} must match"
        )
    truth = torch.sort(values, dim=-1, descending=True).values
    return values.gather(-1, pred_perm.long()) == truth


def sort_metrics(pred_perm: torch.Tensor, values: torch.Tensor) -> dict[str, float]:
    """``exact``: fraction of sequences with every position right; ``elementwise``: of positions."""
    ok = sort_correct(pred_perm, values)
    return {"exact": float(ok.all(-1).double().mean()), "elementwise": float(ok.double().mean())}


@torch.no_grad()
def evaluate_sort(
    model: nn.Module, eval_set: MultiDigitEvalSet, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Exact and element-wise accuracy of ``model.predict`` over a fixed evaluation set."""
    model.eval()
    exact = elementwise = 0.0
    for images, values in eval_set.batches(batch_size):
        ok = sort_correct(model.predict(images.to(device)).cpu(), values)
        exact += float(ok.all(-1).double().sum())
        elementwise += float(ok.double().mean(-1).sum())
    model.train()
    return {"exact": exact / len(eval_set), "elementwise": elementwise / len(eval_set)}


def _build(cfg: dict[str, Any], image_shape: tuple[int, int]) -> nn.Module:
    return build_sort_method(
        cfg["method"],
        n=int(cfg["n"]),
        image_shape=image_shape,
        tau=float(cfg["tau"]),
        num_samples=int(cfg["num_samples"]),
        regroup=int(cfg["regroup"]),
        lengths=cfg["regroup_ns"],
        near=float(cfg["regroup_near"]),
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``sort`` on an argparse sub-parser collection."""
    p = subparsers.add_parser(
        "sort",
        help="sort sequences of four-digit MNIST numbers (paper Table 1)",
        description=(
            "Sort sequences of n four-digit MNIST numbers (the paper's Table 1). Trains with the "
            "row-wise cross-entropy between the relaxed and the true permutation; reports the "
            "fraction of sequences sorted entirely right (exact) and of positions right "
            "(elementwise) for the best-validation checkpoint. Defaults are the paper's recipe "
            "(200 epochs x 625 steps); --config quality/sort-n3.yaml or quality/sort-n5.yaml "
            "are shipped faster CPU recipes."
        ),
    )
    add_multidigit_args(p, SORT_METHODS, DEFAULTS)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run ``neuralsort sort`` with parsed ``args``; returns the exit status."""
    cfg = resolve_config(args, DEFAULTS)
    n = validate_task(cfg, SORT_METHODS, ", ".join(map(str, PAPER_NS)))
    experiment = Experiment(
        name=f"sort-{cfg['method']}-n{n}",
        build=_build,
        evaluate=evaluate_sort,
        select="exact",
        mode="max",
        plot_keys=["val_exact", "val_elementwise"],
    )
    metrics = train_and_test(cfg, experiment)
    if distributed.is_main():
        print(
            f"test exact {metrics['test_exact']:.4f}  "
            f"elementwise {metrics['test_elementwise']:.4f}  "
            f"(best epoch {metrics['best_epoch']}; {cfg['out']})"
        )
        by_n = metrics["test_by_n"]
        if len(by_n) > 1:
            print(
                "exact at every n: " + "  ".join(f"{m}: {v['exact']:.4f}" for m, v in by_n.items())
            )
    return 0
