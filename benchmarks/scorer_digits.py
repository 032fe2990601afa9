"""Which digits a trained NeuralSort scorer reads: order errors by the first digit that differs.

A NeuralSort sorter of four-digit numbers scores each image on its own, so its errors at any n
come from pairs of numbers that it scores in the wrong order. This script scores ``--numbers``
test numbers (MNIST test digits, as the fixed test sets use) with the scorer of a finished
``neuralsort sort`` run (its ``best.pt``), and prints, for pairs of different numbers whose
values are close (at most ``--window`` ranks apart in value order), the fraction scored in the
wrong order, grouped by the first (most significant) digit in which they differ. A scorer that
reads a digit well has a low rate for pairs that first differ there; one that ignores a digit
scores such pairs at chance (0.5).

It also splits a scorer's errors into their two sources. The scores are fitted by least squares
as ``s = a[leading digits] + b3 d3 + b4 d4 + r`` (one level per value of all but the last two
digits, one slope per last digit; refitted without the outliers): ``b3`` and ``b4`` are how far
apart the scorer puts numbers that differ by one in those digits, and the residual ``r`` is the
image's own noise: its robust size (1.4826 x the median absolute deviation) and the fraction of
*outliers* (``|r|`` over 5 times that). Then the exact-sort rate of random sequences of n of
these numbers is computed four ways: as scored; with the outliers' residuals replaced by typical
noise; with the typical noise removed (the fitted value, outliers kept); and with both.

``--split train`` scores numbers drawn from the training digits instead (``val``: the validation
digits): a scorer that does much better on the digit images it trained on than on new ones has
learned those images rather than the digits.

Usage::

    python benchmarks/scorer_digits.py RUN_DIR [RUN_DIR ...] --data_dir DIR [--split train]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from neuralsort.experiments.data.multidigit import digits_of
from neuralsort.experiments.multidigit.sorters import NeuralSortSorter
from neuralsort.experiments.multidigit.task import load_multidigit_splits


def load_scorer(run_dir: Path, image_shape: tuple[int, int]) -> NeuralSortSorter:
    """The NeuralSort sorter saved in ``run_dir/best.pt``."""
    state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)["model"]
    sorter = NeuralSortSorter(image_shape)
    sorter.load_state_dict(state)
    return sorter.eval()


def order_errors(
    scores: torch.Tensor, values: torch.Tensor, digits: int, window: int
) -> list[dict[str, float]]:
    """Wrong-order rates of close pairs by the first digit in which they differ.

    ``scores`` and ``values`` are 1-D; larger values should score higher (the sort commands sort
    in descending order of the scores). Pairs of equal values are left out.
    """
    order = torch.argsort(values, stable=True)
    v, s = values[order], scores[order]
    d = digits_of(v, digits)  # (N, digits), most significant first
    pairs = torch.zeros(digits)
    wrong = torch.zeros(digits)
    n = v.numel()
    for offset in range(1, min(window, n - 1) + 1):
        a, b = slice(0, n - offset), slice(offset, n)
        differ = v[b] != v[a]
        first = (d[b] != d[a]).int().argmax(1)
        bad = (s[b] <= s[a]) & differ
        pairs += torch.bincount(first[differ], minlength=digits)[:digits].float()
        wrong += torch.bincount(first[bad], minlength=digits)[:digits].float()
    return [
        {
            "first_differing_digit": k + 1,
            "pairs": int(pairs[k]),
            "wrong_order": float(wrong[k] / pairs[k]),
        }
        for k in range(digits)
        if pairs[k] > 0
    ]


def noise_model(scores: torch.Tensor, values: torch.Tensor, digits: int) -> dict[str, Any]:
    """Fit ``s = a[leading digits] + b3 d3 + b4 d4 + r`` (see the module docstring).

    Returns the slopes, the robust residual size, the outlier fraction and, for
    :func:`exact_rates`, the fitted values, residuals and outlier mask (float64 tensors).
    """
    if digits < 3:
        raise ValueError(f"noise_model needs numbers of 3 or more digits, got {digits}")
    s = scores.double()
    d = digits_of(values, digits)
    groups = torch.nn.functional.one_hot(values // 100, 10 ** (digits - 2)).double()
    x = torch.cat([groups, d[:, -2:].double()], 1)
    keep = torch.ones_like(s, dtype=torch.bool)
    for _ in range(3):  # least squares, then again without the outliers (they would bias it)
        coef = torch.linalg.lstsq(x[keep], s[keep, None]).solution[:, 0]
        fitted = x @ coef
        residual = s - fitted
        typical = float((residual - residual.median()).abs().median()) * 1.4826
        outlier = residual.abs() > 5 * typical
        keep = ~outlier
    return {
        "slope_digit3": float(coef[-2]),
        "slope_digit4": float(coef[-1]),
        "typical_noise": typical,
        "outlier_fraction": float(outlier.double().mean()),
        "fitted": fitted,
        "residual": residual,
        "outlier": outlier,
    }


def exact_rates(
    model: dict[str, Any], values: torch.Tensor, ns: list[int], sequences: int, seed: int
) -> list[dict[str, float]]:
    """Exact-sort rates of random sequences of each n, as scored and with the noise changed."""
    gen = torch.Generator().manual_seed(seed)
    fitted, residual, outlier = model["fitted"], model["residual"], model["outlier"]
    noise = torch.randn(residual.shape, generator=gen, dtype=residual.dtype)
    calm = torch.where(outlier, noise * model["typical_noise"], residual)
    variants = {
        "as_scored": fitted + residual,
        "outliers_replaced": fitted + calm,
        "typical_noise_removed": fitted + torch.where(outlier, residual, 0.0),
        "both": fitted,
    }
    rows = []
    for n in ns:
        pick = torch.stack(
            [torch.randperm(len(values), generator=gen)[:n] for _ in range(sequences)]
        )
        v = values[pick]
        truth = v.sort(1).values  # equal numbers may come in either order
        row: dict[str, float] = {"n": n}
        for name, score in variants.items():
            ranked = v.gather(1, torch.argsort(score[pick], dim=1, stable=True))
            row[name] = float((ranked == truth).all(1).double().mean())
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("runs", nargs="+", type=Path, help="folders of finished `neuralsort sort` runs")
    p.add_argument("--data_dir", "--data-dir", default=None, help="folder holding MNIST")
    p.add_argument("--numbers", type=int, default=8000, help="test numbers to score (8000)")
    p.add_argument("--window", type=int, default=400, help="pairs at most this many ranks apart")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn numbers (0)")
    p.add_argument(
        "--ns", type=int, nargs="+", default=[5, 9, 15], help="sequence lengths (5 9 15)"
    )
    p.add_argument("--sequences", type=int, default=4000, help="sequences per n (4000)")
    p.add_argument(
        "--split",
        choices=["test", "val", "train"],
        default="test",
        help="which digit images make the numbers (test: MNIST's test set, the default)",
    )
    args = p.parse_args()
    if args.numbers < 2 or args.window < 1:
        p.error("--numbers must be >= 2 and --window >= 1")
    torch.set_num_threads(1)
    test = load_multidigit_splits({"data_dir": args.data_dir, "digits": 4, "seed": 0})[args.split]
    shape = (test.num_digits * test.digit_shape[0], test.digit_shape[1])
    index, values = test.sample_indices(1, args.numbers, torch.Generator().manual_seed(args.seed))
    for run in args.runs:
        sorter = load_scorer(run, shape)
        with torch.no_grad():
            scores = torch.cat(
                [
                    sorter.scores(test.render(index[:, i : i + 500]))
                    for i in range(0, args.numbers, 500)
                ],
                dim=1,
            )
        rows = order_errors(scores[0], values[0], test.num_digits, args.window)
        model = noise_model(scores[0], values[0], test.num_digits)
        noise = {k: round(v, 4) for k, v in model.items() if isinstance(v, float)}
        rates = exact_rates(model, values[0], args.ns, args.sequences, args.seed + 1)
        out = {"run": str(run), "split": args.split, "numbers": args.numbers, "window": args.window}
        out["by_digit"] = rows
        print(json.dumps({**out, "noise": noise, "exact": rates}))


if __name__ == "__main__":
    main()
