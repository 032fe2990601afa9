"""CIFAR-10 recipe probes: validation accuracy against training images seen, on a subset.

Trains one net on ``subset`` images of the 45k training part (the commands' fixed split), the
ones ``neuralsort dknn --train_subset`` keeps (drawn at random once), and, after every epoch over
those images, prints one JSON line with the accuracy on 2,000 validation images (drawn at random
once) and the number of training images seen so far. One torch thread. (The CIFAR-10 copy is
stored class by class: its first images are all airplanes, automobiles and birds.)

* ``cnn``: net + linear head, cross-entropy with label smoothing ``ls``, batches of ``bs``
  drawn with replacement; accuracy with and without mirrored test images (``acc``,
  ``acc_flip``).
* ``dknn``: the NeuralSort kNN loss on ``qm`` queries and ``qm`` neighbours a step, drawn with
  replacement (an epoch: ``subset / qm`` steps); accuracy of hard kNN (``k``) over the embedded
  subset. With ``"pairs": "all"`` the same ``2 qm`` images a step are each a query against all
  of them, the query itself included, at ``k + 1`` (the image itself is always its own nearest,
  so the loss ranks the other ``k`` like the paper's): twice the queries for the same
  embedding cost.

Both use flips and translations (``aug``), ``make_optimizer`` / ``make_scheduler`` of the commands
(cosine decay over ``epochs`` after ``warm`` warm-up epochs). Settings are one JSON object::

    python benchmarks/cifar_subset.py '{"mode": "cnn", "epochs": 8, "opt": "sgd", "lr": 0.2,
        "wd": 5e-4, "ls": 0.2, "warm": 1, "bs": 256}' --data_dir DIR
    python benchmarks/cifar_subset.py '{"mode": "dknn", "epochs": 6, "opt": "adam",
        "lr": 0.001, "wd": 0, "tau": 16, "k": 9, "warm": 0.5}' --data_dir DIR

Optional keys: ``model`` (default ``fastnet``), ``subset`` (10000), ``bs`` (256), ``qm`` (100),
``k`` (9), ``method`` (deterministic), ``wd`` (5e-4), ``ls`` (0), ``warm`` (0), and the step
settings of the commands' recipes: ``mom`` (SGD momentum, 0.9), ``nesterov`` (false),
``norm_bias_lr`` (1), ``logit_scale`` (the CNN's; 1), ``aug`` (``flipcrop``; or ``flipshift``),
``pairs`` (dknn: ``split``, the paper's queries and neighbours; or ``all``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import torch.nn.functional as F

from neuralsort.experiments.data import fixed_sample, load_dataset
from neuralsort.experiments.dknn.task import dknn_split
from neuralsort.experiments.embedding_nets import Classifier, create_model
from neuralsort.experiments.knn_eval import embed, knn_accuracy
from neuralsort.experiments.recipe import (
    augment_batch,
    make_optimizer,
    make_scheduler,
    parameter_groups,
)
from neuralsort.knn import dknn_loss


def run(cfg: dict[str, Any], data_dir: str | None) -> None:
    """Train as ``cfg`` says and print one JSON line per epoch."""
    torch.set_num_threads(1)
    mode, epochs, n_sub = cfg["mode"], cfg["epochs"], cfg.get("subset", 10000)
    if mode not in ("cnn", "dknn"):
        raise SystemExit(f"mode must be cnn or dknn, got {mode!r}")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tx, ty, _, _, info = load_dataset("cifar10", data_dir, download=False)
    tr, va = dknn_split({"k": cfg.get("k", 9), "train_subset": n_sub}, tx.shape[0], info)
    va = fixed_sample(va, 2000)
    trx, try_ = tx[tr], ty[tr]
    vax, vay = tx[va], ty[va]
    net = create_model(cfg.get("model", "fastnet"), 3, image_size=(32, 32))
    model = Classifier(net, 10, logit_scale=cfg.get("logit_scale", 1.0)) if mode == "cnn" else net
    model = model.to(memory_format=torch.channels_last)
    bs, qm = cfg.get("bs", 256), cfg.get("qm", 100)
    per_step = bs if mode == "cnn" else 2 * qm
    steps = n_sub // (bs if mode == "cnn" else qm)
    step_cfg = {
        "optimizer": cfg["opt"], "lr": cfg["lr"], "weight_decay": cfg.get("wd", 5e-4),
        "momentum": cfg.get("mom", 0.9), "nesterov": cfg.get("nesterov", False),
        "norm_bias_lr": cfg.get("norm_bias_lr", 1.0),
    }  # fmt: skip
    opt = make_optimizer(parameter_groups(model, step_cfg), step_cfg)
    sched = make_scheduler(
        opt,
        {"lr_schedule": "cosine", "warmup_epochs": cfg.get("warm", 0.0)},
        steps_per_epoch=steps,
        num_epochs=epochs,
    )
    seen, t0 = 0, time.time()

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            if mode == "cnn":
                out = embed(model, vax, batch_size=500, channels_last=True)
                acc = (out.argmax(1) == vay).double().mean().item()
                out = out + embed(model, vax.flip(3), batch_size=500, channels_last=True)
                return {"acc": acc, "acc_flip": (out.argmax(1) == vay).double().mean().item()}
            etr = embed(model, trx, batch_size=500, channels_last=True)
            eva = embed(model, vax, batch_size=500, channels_last=True)
            k = cfg.get("k", 9)
            return {"acc": knn_accuracy(eva, vay, etr, try_, k, num_classes=10, query_chunk=1000)}

    for ep in range(epochs):
        model.train()
        for _ in range(steps):
            if mode == "cnn":
                idx = torch.randint(0, n_sub, (bs,), generator=g)
                x = augment_batch(trx[idx], cfg.get("aug", "flipcrop"), g).contiguous(
                    memory_format=torch.channels_last
                )
                loss = F.cross_entropy(model(x), try_[idx], label_smoothing=cfg.get("ls", 0.0))
            else:
                qi = torch.randint(0, n_sub, (qm,), generator=g)
                ni = torch.randint(0, n_sub, (qm,), generator=g)
                x = augment_batch(
                    torch.cat([trx[qi], trx[ni]]), cfg.get("aug", "flipcrop"), g
                ).contiguous(memory_format=torch.channels_last)
                e = model(x)
                opts = dict(tau=cfg["tau"], method=cfg.get("method", "deterministic"), n_samples=5)
                if cfg.get("pairs", "split") == "all":
                    y = torch.cat([try_[qi], try_[ni]])
                    loss = dknn_loss(e, e, y, y, cfg.get("k", 9) + 1, **opts)
                else:
                    loss = dknn_loss(e[:qm], e[qm:], try_[qi], try_[ni], cfg.get("k", 9), **opts)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen += per_step
        r: dict[str, Any] = evaluate()
        r.update(
            epoch=ep + 1,
            seen=seen,
            loss=float(loss.detach()),
            min=round((time.time() - t0) / 60, 2),
        )
        print(json.dumps({**cfg, **r}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("settings", help="one JSON object (see the module docstring)")
    p.add_argument("--data_dir", "--data-dir", default=None, help="folder holding CIFAR-10")
    args = p.parse_args()
    run(json.loads(args.settings), args.data_dir)


if __name__ == "__main__":
    main()
