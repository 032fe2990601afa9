"""What test-time flips give a trained dKNN embedding: hard-kNN accuracy with and without them.

For each finished ``neuralsort dknn`` run folder, the best-validation net (``best.pt``) embeds the
run's training part, validation part and test split twice: as the images are, and as the sums
``f(x) + f(mirror(x))`` that ``--test_flip`` uses. It prints one JSON line per run with the
validation and test accuracy of both at the run's k, and with ``--ks`` at each of those k as
well (``*_acc_by_k``: choose k on the validation numbers). The numbers of the kind the run used
(``flip`` for a run trained with ``test_flip``, else ``plain``) repeat the run's own
(``metrics.json``), which checks that the re-evaluation is the run's.

Usage::

    python benchmarks/dknn_test_flip.py RUN_DIR [RUN_DIR ...] [--ks 1 3 5 9 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from neuralsort.experiments.data import load_dataset
from neuralsort.experiments.dknn.task import dknn_split
from neuralsort.experiments.embedding_nets import model_for_data
from neuralsort.experiments.knn_eval import accuracy_by_k, embed


def flip_gain(run_dir: Path, ks: list[int] | None = None) -> dict[str, Any]:
    """Validation and test accuracy of ``run_dir``'s best net, plain and with test-time flips,
    at the run's k (``{plain,flip}_{val,test}_acc``) and at each of ``ks``."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    train_x, train_y, test_x, test_y, info = load_dataset(cfg["dataset"], cfg["data_dir"])
    tr, va = dknn_split(cfg, train_x.shape[0], info)
    _, model = model_for_data(cfg["model"], info)
    state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    start = time.time()
    out: dict[str, Any] = {"run": str(run_dir), "k": cfg["k"], "dataset": info["name"]}
    for name, flip in (("plain", False), ("flip", True)):
        opts = dict(batch_size=cfg["eval_batch"], channels_last=cfg["channels_last"], flip=flip)
        keys = embed(model, train_x[tr], **opts)
        pairs = {
            split: (embed(model, x, **opts), y)
            for split, x, y in (("val", train_x[va], train_y[va]), ("test", test_x, test_y))
        }
        by_k = accuracy_by_k(
            pairs, keys, train_y[tr], sorted({cfg["k"], *(ks or [])}),
            num_classes=info["num_classes"], query_chunk=cfg["num_test_queries"],
        )  # fmt: skip
        for split in pairs:
            accs = by_k[f"{split}_acc_by_k"]
            out[f"{name}_{split}_acc"] = accs[str(cfg["k"])]
            if ks:
                out[f"{name}_{split}_acc_by_k"] = accs
    out["seconds"] = round(time.time() - start, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("runs", nargs="+", type=Path, help="finished neuralsort dknn run folders")
    p.add_argument(
        "--ks", type=int, nargs="+", default=None, metavar="K",
        help="also report the accuracy at each of these k (default: the run's k only)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    for run_dir in args.runs:
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "best.pt").is_file():
            p.error(f"{run_dir}: not a finished neuralsort dknn run folder (needs config.yaml "
                    "and best.pt); pass the --out folder of a dknn run")  # fmt: skip
    torch.set_num_threads(args.threads)
    for run_dir in args.runs:
        print(json.dumps(flip_gain(run_dir, args.ks)), flush=True)


if __name__ == "__main__":
    main()
