"""``neuralsort dknn`` end to end on tiny data: outputs, stochastic mode, resume equivalence."""

from __future__ import annotations

import gzip
import json
import pathlib
import pickle

import numpy as np
import pytest
import torch
import yaml

from neuralsort.experiments.cli import main

TINY = [
    "--dataset",
    "digits",
    "--num_epochs",
    "2",
    "--steps_per_epoch",
    "4",
    "--num_train_queries",
    "20",
    "--num_train_neighbors",
    "30",
    "--k",
    "3",
    "--eval_batch",
    "500",
    "--seed",
    "1",
]


def _metrics(path):
    m = json.loads((path / "metrics.json").read_text())
    for rec in m["history"]:
        for key in ("epoch_time_s", "train_s", "val_s"):
            rec.pop(key, None)
    for key in ("wall_time_s", "test_eval_s"):
        m.pop(key)
    return m


def test_tiny_run_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["dknn", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dKNN (deterministic, k=3)" in text and "plain kNN (raw pixels)" in text
    m = json.loads((out / "metrics.json").read_text())
    assert 0.5 < m["test_acc"] <= 1 and 0 <= m["val_acc"] <= 1 and m["pixel_knn_test_acc"] > 0.9
    assert [r["epoch"] for r in m["history"]] == [1, 2] and m["wall_time_s"] > 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["k"] == 3 and cfg["optimizer"] == "adam" and "git_commit" in cfg["_run"]
    assert (out / "accuracy.png").stat().st_size > 1000
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and "model" in ckpt
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[-1]["event"] == "done"


def test_all_queries_makes_every_image_a_query_against_the_others(tmp_path, monkeypatch, capsys):
    """--all_queries: each step's loss takes all 50 images as queries against all 50 with the
    query itself masked out; k is checked against the 49 others."""
    from neuralsort.experiments.dknn import task as dknn_task

    seen, real = [], dknn_task.dknn_loss

    def spy(query, neighbors, *args, **kw):
        seen.append((query.shape[0], neighbors.shape[0], kw["mask"]))
        return real(query, neighbors, *args, **kw)

    monkeypatch.setattr(dknn_task, "dknn_loss", spy)
    out = tmp_path / "all"
    assert main(["dknn", *TINY, "--all_queries", "--no-pixel_knn", "--out", str(out)]) == 0
    assert len(seen) == 8  # 2 epochs x 4 steps
    for q, n, mask in seen:
        assert (q, n) == (50, 50) and torch.equal(mask, ~torch.eye(50, dtype=torch.bool))
    assert yaml.safe_load((out / "config.yaml").read_text())["all_queries"] is True
    assert 0.5 < json.loads((out / "metrics.json").read_text())["test_acc"] <= 1
    capsys.readouterr()
    bad = [*TINY, "--all_queries", "--k", "50", "--out", str(tmp_path / "bad")]
    assert main(["dknn", *bad]) == 2
    assert "--k 50 exceeds the 49 other images of a step" in capsys.readouterr().err


def test_test_flip_embeds_every_evaluated_image_with_its_mirror(tmp_path, monkeypatch):
    """--test_flip: validation and test embed the training part and the queries with flips, and
    the config records it; without it nothing is flipped."""
    from neuralsort.experiments import knn_eval
    from neuralsort.experiments.dknn import task as dknn_task

    calls = []

    def spy(model, x, **kw):
        calls.append((x.shape[0], kw.get("flip", False)))
        return knn_eval.embed(model, x, **kw)

    monkeypatch.setattr(dknn_task, "embed", spy)
    for flag, want in (("--test_flip", True), ("--no-test_flip", False)):
        calls.clear()
        out = tmp_path / flag
        assert main(["dknn", *TINY, flag, "--no-pixel_knn", "--out", str(out)]) == 0
        # per validation (2 epochs) and the test: the training part, then the queries
        assert len(calls) == 6 and {f for _, f in calls} == {want}
        assert yaml.safe_load((out / "config.yaml").read_text())["test_flip"] is want
        assert 0.5 < json.loads((out / "metrics.json").read_text())["test_acc"] <= 1


@pytest.mark.parametrize(
    "method, stop_at",
    [("deterministic", 2), ("deterministic", 4), ("stochastic", 6)],
)
def test_resume_equals_uninterrupted(tmp_path, method, stop_at):
    # on the CPU: bit-identical (CUDA's float reductions may change order between runs)
    common = [*TINY, "--method", method, "--num_samples", "2", "--device", "cpu"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["dknn", *common, "--out", str(a)]) == 0
    # killed after `stop_at` steps (mid-epoch for 2 and 6, at an epoch boundary for 4)
    assert main(["dknn", *common, "--out", str(b), "--stop_after_steps", str(stop_at)]) == 0
    assert not (b / "metrics.json").exists()
    # settings come from config.yaml; the device from this command line
    assert main(["dknn", "--resume", "--out", str(b), "--device", "cpu"]) == 0
    assert _metrics(a) == _metrics(b)
    sa = torch.load(a / "last.pt", weights_only=True)["model"]
    sb = torch.load(b / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(sa[key], sb[key]) for key in sa)


def test_seed_stochastic_command_runs_on_tiny_cifar(tmp_path, capsys):
    """The report's crashing command (stochastic, CIFAR) now trains; tiny data, one step."""
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                    b"labels": rng.integers(0, 10, 8).tolist(),
                },
                f,
            )
    line = "--k=9 --tau=80 --nloglr=3 --method=stochastic --dataset=cifar10 --num_epochs=1"
    rc = main(
        [
            "dknn",
            *line.split(),
            "--data_dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
            "--steps_per_epoch",
            "1",
            "--val_size",
            "8",
            "--num_train_queries",
            "8",
            "--num_train_neighbors",
            "16",
            "--no-pixel-knn",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["method"] == "stochastic" and m["model"] == "resnet18" and m["k"] == 9


def test_mnist_format_run(tmp_path):
    """An MNIST-format folder (tiny, written here) goes through the paper's convnet."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for split, n in (("train", 60), ("t10k", 20)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n, dtype=np.uint8) % 10
        for stem, arr, magic in (
            (f"{split}-images-idx3-ubyte", x, 2051),
            (f"{split}-labels-idx1-ubyte", y, 2049),
        ):
            head = magic.to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in arr.shape)
            with gzip.open(folder / f"{stem}.gz", "wb") as f:
                f.write(head + arr.tobytes())
    rc = main(
        [
            "dknn",
            "--dataset",
            "mnist",
            "--data_dir",
            str(tmp_path),
            "--val_size",
            "10",
            "--num_train_queries",
            "10",
            "--num_train_neighbors",
            "20",
            "--num_epochs",
            "1",
            "--steps_per_epoch",
            "2",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["model"] == "mnist-convnet"


SHARED_MNIST = pathlib.Path(__file__).resolve().parents[4] / "shared" / "data"


@pytest.mark.skipif(
    not (SHARED_MNIST / "mnist" / "train-images-idx3-ubyte.gz").is_file(),
    reason="CI smoke run: needs ../shared/data/mnist",
)
def test_mnist_smoke_on_shared_data(tmp_path):
    """Real MNIST, a few steps on a training subset: the pipeline learns something."""
    rc = main(
        [
            "dknn",
            "--dataset",
            "mnist",
            "--data_dir",
            str(SHARED_MNIST),
            "--num_epochs",
            "1",
            "--steps_per_epoch",
            "15",
            "--train_subset",
            "2000",
            "--val_size",
            "500",
            "--optimizer",
            "adam",
            "--tau",
            "1",
            "--no-pixel-knn",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["test_acc"] > 0.8 and m["val_acc"] > 0.8


def _image_folder(root, mode, size, n_train=24, n_test=6):
    """A tiny ``train/<class>/*.png`` + ``test/<class>/*.png`` folder of random images."""
    from PIL import Image

    rng = np.random.default_rng(2)
    shape = (size, size) if mode == "L" else (size, size, 3)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n // 2):
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(arr, mode=mode).save(root / split / cls / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "mode, size, model, augment",
    [("L", 28, "mnist-convnet", "shift"), ("RGB", 32, "fastnet", "flipcrop")],
)
def test_imagefolder_picks_net_and_recipe_from_images(
    tmp_path, monkeypatch, capsys, mode, size, model, augment
):
    """Small grayscale folders get the MNIST convnet, small colour ones fastnet; both Adam."""
    monkeypatch.setenv("NEURALSORT_CACHE_DIR", str(tmp_path / "cache"))
    root = _image_folder(tmp_path / "imgs", mode, size)
    out = tmp_path / "r"
    small = ["--val_size", "4", "--num_train_queries", "4", "--num_train_neighbors", "8"]
    tiny = [*small, "--k", "3", "--num_epochs", "1", "--steps_per_epoch", "1", "--no-pixel-knn"]
    assert main(["dknn", "--dataset", f"imagefolder:{root}", *tiny, "--out", str(out)]) == 0
    assert (
        f"model {model}, augment {augment}, num_epochs 1, optimizer adam" in capsys.readouterr().out
    )
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"] == model and cfg["augment"] == augment
    assert cfg["optimizer"] == "adam" and cfg["lr_schedule"] == "cosine"
    assert cfg["weight_decay"] == 0.0 and "model " + model in cfg["_run"]["recipe"]
    assert json.loads((out / "metrics.json").read_text())["model"] == model
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "recipe" and r["model"] == model for r in log)
    # a resumed run keeps its net and states its recipe again
    assert main(["dknn", "--resume", "--out", str(out), "--num_epochs", "2"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"] == model and "model " + model in cfg["_run"]["recipe"]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
    # --model still chooses; the paper's data sets keep the paper's defaults
    out2 = tmp_path / "r2"
    argv = ["dknn", "--dataset", f"imagefolder:{root}", *tiny, "--model", "digits-net"]
    assert main([*argv, "--out", str(out2)]) == 0
    assert yaml.safe_load((out2 / "config.yaml").read_text())["model"] == "digits-net"


def test_paper_data_sets_keep_paper_defaults():
    from neuralsort.experiments.dknn.command import DEFAULTS, dataset_defaults

    assert dataset_defaults("mnist") == {} and dataset_defaults("cifar10") == {}
    assert DEFAULTS["optimizer"] == "sgd" and DEFAULTS["num_epochs"] == 200
    assert dataset_defaults("imagefolder:/x")["optimizer"] == "adam"
