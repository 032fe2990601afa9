"""The training task of ``neuralsort sort`` and ``neuralsort quantile`` on the shared loop.

Every rank draws the same global batch of ``batch_size x world_size`` sequences from the shared,
seeded source and renders only its own slice; validation and test run the experiment's
``evaluate`` on fixed sets (see :mod:`.multidigit_train`).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import torch
from torch import nn

from . import distributed
from .config import UserError
from .data.multidigit import MultiDigitEvalSet, MultiDigitNumbers
from .run import Run
from .trainer import EpochStats, Result
from .trainer import Task as LoopTask
from .training import Amp

__all__ = ["MultiDigitTask", "init_source", "test_set"]


def test_set(source: MultiDigitNumbers, cfg: dict[str, Any], n: int) -> MultiDigitEvalSet:
    """The fixed test set of sequences of ``n`` numbers: the same for every run at that ``n`` with
    the same ``test_sequences`` and ``eval_seed``, whatever n it trained at."""
    return source.eval_set(int(cfg["test_sequences"]), n, seed=int(cfg["eval_seed"]) + 1)


def init_source(
    init_from: str, beside: pathlib.Path | None = None
) -> tuple[pathlib.Path, pathlib.Path | None]:
    """The checkpoint ``--init_from`` names (a run folder's ``best.pt``, or a file) and the
    ``metrics.json`` beside it (None if there is none).

    A relative path that does not exist from the working directory is looked up in ``beside``
    (the folder holding this run's folder), so a cell of a table grid can name another cell.
    """
    path = pathlib.Path(init_from).expanduser()
    if not path.exists() and not path.is_absolute() and beside is not None:
        path = beside / path
    ckpt = path / "best.pt" if path.is_dir() else path
    if not ckpt.is_file():
        raise UserError(
            f"--init_from {init_from}: no checkpoint there (give a finished run's folder, which "
            "holds best.pt, or a .pt file)"
        )
    metrics = ckpt.parent / "metrics.json"
    return ckpt, metrics if metrics.is_file() else None


class MultiDigitTask(LoopTask):
    """A multi-digit experiment on the shared loop: global batches from one seeded source."""

    def setup(
        self,
        run: Run,
        cfg: dict[str, Any],
        task: Any,
        train_src: MultiDigitNumbers,
        render_src: MultiDigitNumbers,
        val_set: MultiDigitEvalSet,
        test_set: MultiDigitEvalSet,
        noise: torch.Generator,
        device: torch.device,
    ) -> None:
        self.run, self.cfg, self.task, self.device, self.noise = run, cfg, task, device, noise
        self.train_src, self.render_src = train_src, render_src
        self.val_set, self.test_set = val_set, test_set
        self.world = distributed.world_size() if distributed.is_distributed() else 1
        self.rank = distributed.rank() if self.world > 1 else 0
        self.n, self.batch_size = int(cfg["n"]), int(cfg["batch_size"])
        self.eval_bs = int(cfg["eval_batch_size"])

    def state(self, mid_epoch: bool) -> dict[str, Any]:
        # "noise": rank 0's stream, as in earlier checkpoints
        return {"data": self.train_src.state_dict(), "noise": self.noise.get_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.train_src.load_state_dict(state["data"])

    def loss(self, net: nn.Module, step: int, amp: Amp) -> tuple[torch.Tensor, dict[str, float]]:
        # the global batch from the shared source; this rank renders its own slice
        bs, device = self.batch_size, self.device
        index, all_values = self.train_src.sample_indices(bs * self.world, self.n)
        mine = slice(self.rank * bs, (self.rank + 1) * bs)
        images = self.render_src.render(index[mine].to(device, non_blocking=True))
        values = all_values[mine].to(device)
        if self.train_module is None:  # nothing to train (the constant baseline)
            self.model.observe(all_values.to(device))  # every rank sees the whole global batch
            with torch.no_grad():
                return self.model.loss(images, values), {}
        with amp.autocast():
            return net(images, values, generator=self.noise), {}

    def record(self, stats: EpochStats) -> dict[str, Any]:
        return {
            "epoch": stats.epoch,
            "step": stats.epoch * stats.steps,
            "train_loss": stats.loss,
            "lr": stats.lr,
            "epoch_seconds": stats.seconds,
            "steps_per_second": stats.steps / max(stats.seconds, 1e-9),
        }

    def diverged(self, epoch: int, step: int | None, loss: float) -> str:
        return f"training diverged in epoch {epoch} (loss {loss}); lower --lr or raise --tau"

    def validate(self) -> dict[str, Any]:
        val = self.task.evaluate(self.model, self.val_set, self.device, self.eval_bs)
        return {f"val_{k}": v for k, v in val.items()}

    def _init_record(self) -> dict[str, Any]:
        """Where the weights started (``--init_from``) and the training time that made them.

        ``init_train_seconds``: the earlier run's ``train_seconds`` plus its own
        ``init_train_seconds``, so a chain of warm starts counts all of its training.
        """
        if not self.cfg["init_from"]:
            return {}
        ckpt, metrics_file = init_source(str(self.cfg["init_from"]), self.run.path.parent)
        before = None
        if metrics_file is not None:
            earlier = json.loads(metrics_file.read_text())
            before = float(earlier.get("train_seconds", 0.0)) + float(
                earlier.get("init_train_seconds", 0.0)
            )
        return {"init_from": str(ckpt), "init_train_seconds": before}

    def finish(self, result: Result) -> dict[str, Any]:
        cfg, run = self.cfg, self.run
        test = self.task.evaluate(self.model, self.test_set, self.device, self.eval_bs)
        test_by_n = {str(self.n): test}
        if getattr(self.model, "any_n", False):  # one model for every n: test it at each
            for m in cfg["eval_ns"]:
                if m != self.n:
                    fixed = test_set(self.test_set.source, cfg, m)
                    test_by_n[str(m)] = self.task.evaluate(
                        self.model, fixed, self.device, self.eval_bs
                    )
        test_by_n = {k: test_by_n[k] for k in sorted(test_by_n, key=int)}
        best_record = next((r for r in result.history if r["epoch"] == result.best_epoch), {})
        steps = len(result.history) * result.steps_per_epoch
        seconds = result.train_seconds
        metrics: dict[str, Any] = {
            **{f"test_{k}": v for k, v in test.items()},
            "test_by_n": test_by_n,
            **{k: v for k, v in best_record.items() if k.startswith("val_")},
            "best_epoch": result.best_epoch,
            "epochs": len(result.history),
            "steps": steps,
            "train_seconds": seconds,
            "steps_per_second": steps / seconds if seconds > 0 else None,
            "n": self.n,
            "method": cfg["method"],
            "test_sequences": len(self.test_set),
            "val_sequences": len(self.val_set),
            "world_size": self.world,
            "amp": cfg["amp"],
            **self._init_record(),
            "device": str(self.device),
        }
        run.write_metrics(metrics)
        run.log({"event": "test", **metrics})
        return metrics
