"""``neuralsort baseline`` on digits: each method runs; the CNN's head is trained; PCA is right."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from neuralsort.experiments.baseline.command import pca_project
from neuralsort.experiments.cli import main
from neuralsort.experiments.embedding_nets import Classifier, create_model


@pytest.mark.parametrize("method", ["knn", "knn-pca", "knn-ae", "cnn"])
def test_baseline_methods_on_digits(tmp_path, method, capsys):
    out = tmp_path / method
    args = [
        "baseline",
        "--dataset",
        "digits",
        "--method",
        method,
        "--k",
        "3",
        "--num_epochs",
        "2",
        "--steps_per_epoch",
        "5",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and 0 <= m["val_acc"] <= 1
    floor = {"knn": 0.95, "knn-pca": 0.95, "knn-ae": 0.3, "cnn": 0.3}[method]
    assert m["test_acc"] > floor
    assert "test accuracy" in capsys.readouterr().out
    if method in ("cnn", "knn-ae"):
        assert len(m["history"]) == 2 and (out / "best.pt").is_file()


def test_cnn_head_is_trained(tmp_path):
    out = tmp_path / "cnn"
    base = [
        "baseline",
        "--dataset",
        "digits",
        "--method",
        "cnn",
        "--steps_per_epoch",
        "3",
        "--out",
        str(out),
    ]
    assert main([*base, "--num_epochs", "0"]) == 0
    # zero epochs: nothing saved; one epoch: the head's weights move
    assert not (out / "last.pt").exists()
    assert main([*base, "--num_epochs", "1", "--out", str(tmp_path / "one")]) == 0
    state = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    torch.manual_seed(0)  # the run's seed: same initial weights
    fresh = Classifier(create_model("digits-net", 1, image_size=(8, 8)), 10).state_dict()
    head0 = fresh["head.weight"]
    assert not torch.allclose(state["head.weight"], head0)
    opt_state = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["optimizer"]
    n_params = len(
        list(Classifier(create_model("digits-net", 1, image_size=(8, 8)), 10).parameters())
    )
    assert len(opt_state["param_groups"][0]["params"]) == n_params


def test_pca_matches_svd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 12, generator=g) @ torch.randn(12, 12, generator=g)
    y = torch.randn(5, 12, generator=g)
    px, (py,) = pca_project(x, [y], 4)
    xc = x.double().numpy() - x.double().numpy().mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    ref = xc @ vt[:4].T
    # components are defined up to sign
    signs = np.sign((px.numpy() * ref).sum(0))
    assert np.allclose(px.numpy(), ref * signs, atol=1e-4)
    assert py.shape == (5, 4)


def test_cnn_label_smoothing_and_test_flip(tmp_path, capsys):
    """Label smoothing changes the training loss; --test_flip scores images with their mirrors."""
    base = ["baseline", "--dataset", "digits", "--method", "cnn", "--num_epochs", "1"]
    base += ["--steps_per_epoch", "4"]
    losses = {}
    for smooth in ("0", "0.3"):
        out = tmp_path / f"ls{smooth}"
        args = [*base, "--label_smoothing", smooth, "--test_flip", "--out", str(out)]
        assert main(args) == 0
        m = json.loads((out / "metrics.json").read_text())
        losses[smooth] = m["history"][0]["train_loss"]
        assert 0 <= m["test_acc"] <= 1
    # the same seed and steps: only the loss differs (smoothing raises it on a confident net)
    assert losses["0"] != losses["0.3"]
    capsys.readouterr()
    assert main([*base, "--label_smoothing", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "--label_smoothing must be in [0, 1)" in capsys.readouterr().err
    assert main([*base, "--logit_scale", "0", "--out", str(tmp_path / "bad2")]) == 2
    assert "--logit_scale must be a positive number" in capsys.readouterr().err


def test_cnn_with_the_fast_trainers_step(tmp_path):
    """Nesterov momentum, norm biases at 64x the learning rate, scaled logits, flipshift: the
    run records them and trains."""
    out = tmp_path / "fast"
    args = ["baseline", "--dataset", "digits", "--method", "cnn", "--num_epochs", "1"]
    args += ["--steps_per_epoch", "3", "--optimizer", "sgd", "--nesterov", "--momentum", "0.85"]
    args += ["--norm_bias_lr", "64", "--logit_scale", "0.111", "--augment", "flipshift"]
    assert main([*args, "--out", str(out)]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["nesterov"] is True and cfg["norm_bias_lr"] == 64.0
    assert cfg["logit_scale"] == 0.111 and cfg["augment"] == "flipshift"
    assert 0 <= json.loads((out / "metrics.json").read_text())["test_acc"] <= 1


def test_test_flip_sums_mirrored_logits():
    from neuralsort.experiments.baseline.task import BaselineTask

    class Net(torch.nn.Module):
        """Logits ``[L^2, R]`` from the sums ``L`` and ``R`` of the left and right halves."""

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            w = x.shape[-1] // 2
            left, right = x[..., :w].sum((1, 2, 3)), x[..., w:].sum((1, 2, 3))
            return torch.stack([left.square(), right], 1)

    x = torch.zeros(1, 1, 1, 2)
    x[0, 0, 0] = torch.tensor([1.0, 0.9])
    # alone: [1, 0.9] says class 0; its mirror [0.81, 1] says 1; their sum [1.81, 1.9] says 1
    y = torch.tensor([0])
    cfg = {"method": "cnn", "eval_batch": 10, "test_flip": False}
    task = BaselineTask(
        model=Net(), steps_per_epoch=1, select="val_acc", cfg=cfg, data=(x, y, x, y, x, y),
        info={}, aug_gen=None, augment="none", fmt=None, bs=1, world=1, name="net", report=None,
    )  # fmt: skip
    assert task._accuracy(x, y) == 1.0
    cfg["test_flip"] = True
    assert task._accuracy(x, y) == 0.0


@pytest.mark.parametrize("method", ["knn-pca", "knn-ae"])
def test_eval_ks_tests_every_k_from_the_same_codes(tmp_path, method):
    common = ["baseline", "--dataset", "digits", "--method", method, "--num_epochs", "1",
              "--steps_per_epoch", "3"]  # fmt: skip
    out = tmp_path / "many"
    assert main([*common, "--k", "3", "--eval_ks", "1", "3", "5", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["test_acc_by_k"]) == set(m["val_acc_by_k"]) == {"1", "3", "5"}
    assert m["test_acc_by_k"]["3"] == m["test_acc"] and m["val_acc_by_k"]["3"] == m["val_acc"]
    if method == "knn-pca":  # nothing trained: a run at k = 5 alone gives the same number
        single = tmp_path / "k5"
        assert main([*common, "--k", "5", "--out", str(single)]) == 0
        assert (
            json.loads((single / "metrics.json").read_text())["test_acc"]
            == (m["test_acc_by_k"]["5"])
        )


def test_eval_ks_is_checked(tmp_path, capsys):
    base = ["baseline", "--dataset", "digits", "--out", str(tmp_path / "x")]
    assert main([*base, "--method", "knn", "--eval_ks", "0"]) == 2
    assert "--eval_ks must be integers >= 1" in capsys.readouterr().err
    assert main([*base, "--method", "cnn", "--eval_ks", "3"]) == 2
    assert "not cnn" in capsys.readouterr().err


@pytest.mark.parametrize("optimizer", [[], ["--optimizer", "sgd"]])
def test_knn_ae_records_its_optimiser_and_resumes_with_it(tmp_path, optimizer):
    out = tmp_path / "ae"
    args = ["baseline", "--dataset", "digits", "--method", "knn-ae", "--steps_per_epoch", "3"]
    args += [*optimizer, "--out", str(out)]
    assert main([*args, "--num_epochs", "1"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optimizer"] == ("sgd" if optimizer else "adam")
    assert saved["weight_decay"] == (5e-4 if optimizer else 0.0)
    state = torch.load(out / "last.pt", weights_only=True)["optimizer"]
    assert ("momentum_buffer" in str(state)) == bool(optimizer)
    # a longer run from its checkpoint rebuilds the same optimiser
    assert main(["baseline", "--resume", "--out", str(out), "--num_epochs", "2"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2


@pytest.mark.parametrize(("command", "size"), [("dknn", "0"), ("baseline", "5000")])
def test_a_bad_val_size_names_the_flag_and_its_range(tmp_path, capsys, command, size):
    args = [command, "--dataset", "digits", "--val_size", size, "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--val_size must be an integer in 1..1" in err and f"got {size}" in err
    assert "Traceback" not in err
