"""``neuralsort dknn``: train an embedding with the NeuralSort kNN loss, classify by hard kNN.

Protocol (the paper's, Section 6.1, and its authors' code): the training split is divided into
a training part and a held-out validation part (55k/5k for MNIST and Fashion-MNIST, 45k/5k for
CIFAR). Each step draws ``num_train_queries`` queries and ``num_train_neighbors`` candidate
neighbours from two independent shuffles of the training part and minimises
:func:`neuralsort.knn.dknn_loss`. After each epoch the validation images are classified by hard
kNN (majority vote of the ``k`` nearest) over the embedded training part; the best-validation
checkpoint is finally evaluated the same way on the test split, beside plain kNN on raw pixels.
Two options leave the protocol: ``all_queries`` makes every image of a step, queries and
neighbours alike, a query against all the step's other images (``dknn_loss`` with a ``mask``
that leaves each query out of its own candidates), and ``test_flip`` validates and tests with
the summed embeddings of each image and its mirror image.

The original ``run_dknn.py``'s command lines work with ``python run_dknn.py`` replaced by
``neuralsort dknn``.

Several processes (``torchrun --nproc_per_node N -m neuralsort.experiments.cli dknn ...``): each
rank embeds its own ``num_train_queries`` queries and ``num_train_neighbors`` neighbours, disjoint
slices of the same two shuffles; the neighbour embeddings of all ranks are gathered, so every query
is ranked against ``N x num_train_neighbors`` candidates (with ``all_queries``, against every
rank's images). The global batch is the per-process batch
times ``N`` and one step computes exactly the loss of one process with that batch; an epoch keeps
its number of images (``N`` times fewer steps). Validation and test run on rank 0.
"""

from __future__ import annotations

import argparse
import pathlib
import textwrap
from typing import Any

from .. import distributed
from ..config import UserError, add_common_args, add_flag, check_int, check_number, resolve_config
from ..data import DATASETS, VAL_SIZES, load_dataset
from ..embedding_nets import MODELS, default_model_for
from ..loop import start_run
from ..recipe import RECIPE_DEFAULTS, add_recipe_flags
from ..run_folder import Run
from .task import train_dknn

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
    "all_queries": False,
    "model": None,
    **RECIPE_DEFAULTS,
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
# (93.35% test after 10 epochs against 87.45% after 3), and on 5,000 32x32 colour images with
# fastnet beat raw-pixel kNN (39.7% against 28.2%, results/quality/imagefolder-c10small/). The net
# and the augmentation depend on the images and are picked once they are loaded (_fit_to_images).
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


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


# the data sets whose defaults differ from DEFAULTS (the paper's), as --help names them
_OWN_DEFAULTS = {
    ds: {key: v for key, v in own.items() if key not in DEFAULTS or DEFAULTS[key] != v}
    for ds, own in {**DATASET_DEFAULTS, "imagefolder:PATH": IMAGEFOLDER_DEFAULTS}.items()
}


def _others_text(key: str) -> str:
    """What the data sets with their own defaults get for ``key``: ``digits 5, ...`` or ''."""
    return ", ".join(f"{ds} {_value_text(d[key])}" for ds, d in _OWN_DEFAULTS.items() if key in d)


def _default_text(key: str) -> str:
    """``default X`` for ``key``, then what the data sets with their own defaults get."""
    text = f"default {_value_text(DEFAULTS[key])}"
    others = _others_text(key)
    return f"{text}; {others}" if others else text


def _val_size_text() -> str:
    common = max(set(VAL_SIZES.values()), key=list(VAL_SIZES.values()).count)
    others = ", ".join(f"{ds} {n}" for ds, n in VAL_SIZES.items() if n != common)
    return (
        f"validation images held out (default {common}; {others}, imagefolder:PATH a tenth of "
        f"its training images, at most {common})"
    )


def _recipes_text() -> str:
    """The --help epilog: each data set's settings where they differ from the paper's."""
    paper = [d for d in DATASETS if d not in _OWN_DEFAULTS]
    items = [
        f"{', '.join(paper)}: the original run_dknn.py's protocol, as each flag says (its lr "
        "1e-3 is outside the paper's grid; --config dknn/paper.yaml sets the paper's 1e-4)"
    ]
    for ds, own in _OWN_DEFAULTS.items():
        items.append(f"{ds}: " + ", ".join(f"{k} {_value_text(v)}" for k, v in own.items()))
    wrap = textwrap.TextWrapper(78, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(
        ["defaults by data set (a --config file and flags override them):"]
        + [line for item in items for line in wrap.wrap(item)]
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``neuralsort dknn``."""
    p = subparsers.add_parser(
        "dknn",
        help="differentiable kNN: NeuralSort kNN loss + hard-kNN classification (Table 3)",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog=_recipes_text(),
    )
    g = p.add_argument_group("experiment (the original run_dknn.py flags)")
    add_flag(
        g,
        "--dataset",
        help="mnist, fashion-mnist, cifar10, cifar100, digits or imagefolder:PATH (default mnist)",
    )
    add_flag(g, "--k", type=int, help=f"number of neighbours ({_default_text('k')})")
    add_flag(g, "--tau", type=float, help=f"NeuralSort temperature ({_default_text('tau')})")
    add_flag(
        g, "--nloglr", type=float, help=f"learning rate = 10^-nloglr ({_default_text('nloglr')})"
    )
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
    add_flag(
        g,
        "--all_queries",
        action=argparse.BooleanOptionalAction,
        help="every image of a step, queries and neighbours alike, is a query against all the "
        "step's other images (across processes too): twice the queries for the same embedding "
        "cost (default off: the original's queries against neighbours)",
    )
    add_common_args(p, epochs_default=_default_text("num_epochs").removeprefix("default "))
    for action in p._actions:  # the shared flags, with this command's defaults
        if action.dest == "threads" and action.help.endswith(")"):
            action.help = f"{action.help[:-1]}; {_others_text('threads')})"
    t = p.add_argument_group("training recipe")
    add_flag(
        t,
        "--model",
        help=f"embedding net: {', '.join(MODELS)} (default: mnist-convnet for mnist and small "
        "grayscale image folders, fastnet for small colour image folders, digits-net for digits "
        "and images under 16 pixels, else resnet18)",
    )
    add_recipe_flags(
        t,
        {
            "optimizer": _default_text("optimizer"),
            "momentum": f"SGD momentum ({_default_text('momentum')})",
            "nesterov": "SGD with Nesterov momentum (default off)",
            "norm_bias_lr": "learning-rate multiplier of the normalisation layers' biases, their "
            "weight decay divided by it (default 1)",
            "weight_decay": _default_text("weight_decay"),
            "lr_schedule": _default_text("lr_schedule"),
            "warmup_epochs": "linear learning-rate warm-up (default 0)",
            "augment": "training augmentation (default auto: flipcrop for colour images, none "
            "otherwise)",
            "test_flip": "validate and test by kNN over the summed embeddings of each image and "
            "its mirror image, for the training part and the queries alike (default off)",
        },
    )
    add_flag(t, "--val_size", type=int, help=_val_size_text())
    add_flag(
        t,
        "--train_subset",
        type=int,
        help="use only N images of the training part, the same N (drawn at random) in every "
        "run (smoke tests, debugging)",
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
    """The experiment's own settings (the loop checks the common and recipe ones)."""
    for key in ("k", "num_train_queries", "num_train_neighbors", "num_test_queries"):
        check_int(cfg, key)
    for key in ("num_samples", "eval_every", "eval_batch"):
        check_int(cfg, key)
    for key in ("tau", "checkpoint_minutes"):
        cfg[key] = check_number(cfg, key)  # a float: the run's name reads the same either way
    per = f" x {world} processes" if world > 1 else ""
    if cfg["all_queries"]:
        others = (cfg["num_train_queries"] + cfg["num_train_neighbors"]) * world - 1
        if cfg["k"] > others:
            raise UserError(
                f"--k {cfg['k']} exceeds the {others} other images of a step (--all_queries: "
                f"--num_train_queries + --num_train_neighbors{per}, less the query itself)"
            )
    elif cfg["k"] > cfg["num_train_neighbors"] * world:
        raise UserError(
            f"--k {cfg['k']} exceeds --num_train_neighbors {cfg['num_train_neighbors']}{per}: "
            "a query needs at least k candidate neighbours"
        )
    if cfg["method"] not in ("deterministic", "stochastic"):
        raise UserError(f"--method must be deterministic or stochastic, got {cfg['method']!r}")
    if cfg["train_subset"] and int(cfg["train_subset"]) < cfg["k"]:
        raise UserError(f"--train_subset must be at least --k ({cfg['k']})")


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
    run, ctx, amp, data = start_run(
        cfg,
        lambda c: (  # once the settings are checked
            f"dknn-{_slug(c['dataset'])}-{c['method']}-k{c['k']}"
            f"-t{c['tau']:g}-lr{float(c['nloglr']):g}"
        ),
        check=lambda c: _validate(c, max(1, distributed.world_size())),
        load=lambda c: load_dataset(c["dataset"], c["data_dir"]),
    )
    train_x, train_y, test_x, test_y, info = data
    _fit_to_images(cfg, info, run)
    return train_dknn(run, cfg, ctx, amp, train_x, train_y, test_x, test_y, info, stop_after)


def _fit_to_images(cfg: dict[str, Any], info: dict[str, Any], run: Run) -> None:
    """An image folder's net and augmentation, from its images; stated in the log and config.yaml.

    Images up to 64 pixels a side get the MNIST convnet (grayscale) or ``fastnet`` (colour),
    larger ones ResNet-18 (see :func:`default_model_for`); grayscale images are augmented by
    small shifts, colour ones by flips with crops. ``--model`` and ``--augment`` still choose. A
    resumed run keeps what its config.yaml says.
    """
    if not str(cfg["dataset"]).lower().startswith("imagefolder:"):
        return
    explicit = getattr(cfg, "explicit", set())
    picked: dict[str, Any] = {}
    if not cfg["model"]:
        picked["model"] = default_model_for(info["name"], info["image_size"], info["in_channels"])
    if cfg["augment"] == "auto" and "augment" not in explicit:
        picked["augment"] = "shift" if info["in_channels"] == 1 else "flipcrop"
    cfg.update(picked)  # nothing left to pick on --resume: the saved config.yaml says it
    h, w = info["image_size"]
    kind = "grayscale" if info["in_channels"] == 1 else f"{info['in_channels']}-channel"
    chosen = {key: cfg[key] for key in ("model", "augment", *IMAGEFOLDER_DEFAULTS)}
    recipe = ", ".join(f"{key} {value}" for key, value in chosen.items())
    note = f"image folder of {kind} {h}x{w} images: {recipe} (change with --model, --optimizer...)"
    run.save_config(recipe=note)
    run.log({"event": "recipe", "model": cfg["model"], "augment": cfg["augment"], "note": note})
    if run.is_main:
        print(note)
