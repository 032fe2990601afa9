"""The dKNN task's split of the training images (``neuralsort.experiments.dknn.task``)."""

from __future__ import annotations

import torch

from neuralsort.experiments.cli import main
from neuralsort.experiments.dknn.task import dknn_split


def _cfg(**kw):
    return {"k": 3, "val_size": 100, "train_subset": None, **kw}


def test_train_subset_is_drawn_from_every_class_of_a_class_ordered_set():
    """An image folder is stored class by class; --train_subset must not keep only its first
    classes (it kept the first N images, all of class 0 here)."""
    labels = torch.arange(10).repeat_interleave(100)  # 1,000 images, class by class
    info = {"val_size": 100}
    full, val = dknn_split(_cfg(), 1000, info)
    sub, val2 = dknn_split(_cfg(train_subset=50), 1000, info)
    assert torch.equal(val, val2)  # the validation part does not change
    assert sub.numel() == 50 and len(set(sub.tolist())) == 50
    assert set(sub.tolist()) <= set(full.tolist())
    assert torch.equal(sub, sub.sort().values)
    assert len(labels[sub].unique()) >= 8  # 50 random draws of 10 classes: nearly all present
    assert torch.equal(sub, dknn_split(_cfg(train_subset=50), 1000, info)[0])  # the same each run


def test_train_subset_below_k_is_refused_by_name(tmp_path, capsys):
    """Refused with the command's other flags, before any data is read: no run folder stays."""
    out = tmp_path / "run"
    args = ["dknn", "--dataset", "digits", "--k", "3", "--train_subset", "2", "--out", str(out)]
    assert main(args) != 0
    assert "--train_subset must be at least --k" in capsys.readouterr().err
    assert not out.exists()
