"""The shared training loop's own rules (its runs are tested through the commands)."""

import torch

from neuralsort.experiments.loop import Task, _better


def test_a_nan_validation_never_holds_the_best_checkpoint():
    task = Task(model=torch.nn.Linear(1, 1), steps_per_epoch=1, select="val_acc")
    nan = float("nan")
    assert _better(nan, None, task)  # something must be best
    assert _better(0.1, nan, task) and not _better(nan, 0.1, task)
    task.mode = "min"
    assert _better(0.1, nan, task) and not _better(nan, 0.1, task) and _better(0.1, 0.2, task)
