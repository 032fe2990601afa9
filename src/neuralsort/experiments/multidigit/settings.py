"""The settings of ``neuralsort sort`` and ``neuralsort quantile``: their shared defaults, their
flags and the checks of their values.

The experiments themselves are :mod:`.sort` and :mod:`.quantile`; the training task they both run
on the shared loop is :mod:`.task`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..config import UserError, add_common_args, add_flag, check_int, check_number
from ..recipe import add_recipe_flags

__all__ = [
    "BASE_DEFAULTS",
    "MULTIDIGIT_AUGMENTS",
    "add_multidigit_args",
    "int_list",
    "validate_common",
    "validate_task",
]

# --augment for sequences of digit images: each digit image on its own (no flips: digits have a
# handedness)
MULTIDIGIT_AUGMENTS = ("none", "shift")

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
    "close_sequences": 0.0,
    "close_spread": 100,
    "augment": "none",
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
    add_recipe_flags(
        g,
        {
            "lr_schedule": "learning-rate schedule over all steps (default constant, as the paper)",
            "warmup_epochs": {
                "metavar": "E",
                "help": "linear learning-rate warm-up over the first E epochs (default 0)",
            },
            "weight_decay": "Adam weight decay (default 0)",
            "augment": {
                "metavar": "{none,shift}",
                "help": "training images: none (default, the paper's) or shift: each digit image "
                "moved by up to 2 pixels in each direction, drawn anew at every step (validation "
                "and test images stay as they are)",
            },
        },
    )
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
        "--close_sequences",
        type=float,
        metavar="F",
        help=(
            "draw this fraction of the training sequences from a window of --close_spread "
            "consecutive numbers, so that they are ordered by their trailing digits (hard "
            "sequences; validation and test sets stay uniform; default 0)"
        ),
    )
    add_flag(
        g,
        "--close_spread",
        type=int,
        metavar="W",
        help="width of the window of --close_sequences (default 100: the last two digits)",
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
    add_flag(
        g,
        "--eval_seed",
        type=int,
        help=f"seed of the fixed validation and test sets (default {d['eval_seed']})",
    )
    # also --threads (alias --num_threads) and --amp
    add_common_args(parser, epochs_default=str(d["num_epochs"]))


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


def validate_task(cfg: dict[str, Any], methods: Sequence[str], paper_ns: str) -> int:
    """Check ``--n`` (an integer >= 2) and ``--method`` (one of ``methods``); return ``n``."""
    n = cfg["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise UserError(f"--n must be an integer >= 2 (the paper uses {paper_ns}), got {n!r}")
    if cfg["method"] not in methods:
        raise UserError(f"--method must be one of {', '.join(methods)}, got {cfg['method']!r}")
    return n


def validate_common(cfg: dict[str, Any]) -> None:
    """Check the settings of both experiments (the loop checks the common and recipe ones too);
    :class:`UserError` naming the flag on a bad value."""
    for key in ("batch_size", "num_samples", "regroup", "steps_per_epoch", "eval_batch_size"):
        check_int(cfg, key)
    for key in ("val_sequences", "test_sequences"):
        check_int(cfg, key)
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
        check_number(cfg, key)
    near = cfg["regroup_near"]
    if isinstance(near, bool) or not isinstance(near, int | float) or not 0.0 <= near <= 1.0:
        raise UserError(f"--regroup_near must be a fraction in [0, 1], got {near!r}")
    if near and cfg["method"] not in ("deterministic", "stochastic"):
        raise UserError(
            f"--regroup_near needs a NeuralSort method (deterministic or stochastic), got "
            f"{cfg['method']!r}"
        )
    if cfg["augment"] not in MULTIDIGIT_AUGMENTS:
        raise UserError(
            f"--augment must be one of {', '.join(MULTIDIGIT_AUGMENTS)} for sequences of digit "
            f"images, got {cfg['augment']!r}"
        )
    close = cfg["close_sequences"]
    if isinstance(close, bool) or not isinstance(close, int | float) or not 0.0 <= close <= 1.0:
        raise UserError(f"--close_sequences must be a fraction in [0, 1], got {close!r}")
    spread = cfg["close_spread"]
    top = 10**digits if close else float("inf")  # the window must fit only when it is used
    if isinstance(spread, bool) or not isinstance(spread, int) or not 2 <= spread <= top:
        raise UserError(
            f"--close_spread must be an integer in 2..10^digits = {10**digits}, got {spread!r}"
        )
