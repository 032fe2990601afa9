"""Tests of the shared run machinery (neuralsort.experiments.run_folder)."""

from __future__ import annotations

import argparse
import json
import os
import random
import stat

import numpy as np
import pytest
import torch
import yaml

from neuralsort.experiments.config import (
    UserError,
    add_common_args,
    add_flag,
    resolve_config,
    resolve_device,
)
from neuralsort.experiments.hardware import cpu_model
from neuralsort.experiments.run_folder import Run
from neuralsort.experiments.seeding import rng_state, seed_everything, set_rng_state


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_common_args(p)
    add_flag(p, "--tau", type=float)
    add_flag(p, "--num_samples", type=int)
    return p


def test_resolve_config_precedence(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("tau: 4.0\nnum_samples: 3\n_run: {ignored: true}\n")
    args = _parser().parse_args(["--config", str(cfg_file), "--num-samples", "7"])
    cfg = resolve_config(args, {"tau": 1.0, "num_samples": 5, "num_epochs": 2})
    assert cfg["tau"] == 4.0  # file beats default
    assert cfg["num_samples"] == 7  # flag (dashed alias) beats file
    assert cfg["num_epochs"] == 2 and cfg["seed"] == 0 and cfg["resume"] is False
    assert cfg.explicit == {"tau", "num_samples"}
    assert "_run" not in cfg


def test_resolve_config_rejects_unknown_yaml_key(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("taw: 4.0\n")
    args = _parser().parse_args(["--config", str(cfg_file)])
    with pytest.raises(UserError, match="taw"):
        resolve_config(args, {"tau": 1.0})
    with pytest.raises(UserError, match="not found"):
        resolve_config(_parser().parse_args(["--config", str(tmp_path / "no.yaml")]), {})


def test_seed_and_rng_state_roundtrip():
    gen = seed_everything(3)
    state = rng_state(gen)
    a = (torch.rand(3), torch.rand(2, generator=gen), np.random.rand(), random.random())  # noqa: NPY002
    set_rng_state(state, gen)
    b = (torch.rand(3), torch.rand(2, generator=gen), np.random.rand(), random.random())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[2] == b[2] and a[3] == b[3]


def test_resolve_device():
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="cuda"):
            resolve_device("cuda")


def test_run_files_and_checkpoints(tmp_path):
    gen = seed_everything(0)
    args = _parser().parse_args(["--out", str(tmp_path / "r"), "--tau", "2"])
    cfg = resolve_config(args, {"tau": 1.0, "num_samples": 5})
    run = Run.start(cfg, name="t")
    assert run.path == tmp_path / "r" and run.is_main and not run.resumed
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["tau"] == 2.0 and "git_commit" in saved["_run"]
    assert saved["_run"]["cpu"] == cpu_model() and saved["_run"]["cpu"]  # names the hardware
    run.log({"epoch": 0, "acc": np.float32(0.5)})
    state = {"w": torch.ones(2), "epoch": 1, "rng": rng_state(gen), "hist": [{"a": 1.0}]}
    assert run.load_checkpoint() is None
    run.save_checkpoint(state, is_best=True)
    state["epoch"] = 2
    run.save_checkpoint(state, is_best=False)
    assert run.load_checkpoint("last")["epoch"] == 2
    assert run.load_checkpoint("best")["epoch"] == 1
    run.write_metrics({"test_acc": 0.9})
    assert json.loads((run.path / "metrics.json").read_text()) == {"test_acc": 0.9}
    run.plot_history([{"epoch": 0, "acc": 0.1}, {"epoch": 1, "acc": 0.2}], ["acc"], "c.png")
    assert (run.path / "c.png").read_bytes()[:4] == b"\x89PNG"
    lines = (run.path / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["acc"] == 0.5 and "time" in json.loads(lines[-1])
    assert not list(run.path.glob("*.tmp"))

    # resume: settings not given explicitly come from the saved config.yaml; a longer run is
    # allowed, another training setting is not
    args2 = _parser().parse_args(["--out", str(tmp_path / "r"), "--resume", "--num_epochs", "9"])
    cfg2 = resolve_config(args2, {"tau": 1.0, "num_samples": 5})
    run2 = Run.start(cfg2, name="t")
    assert run2.resumed and cfg2["tau"] == 2.0 and cfg2["num_epochs"] == 9
    args3 = _parser().parse_args(
        ["--out", str(tmp_path / "r"), "--resume", "--num_samples", "9", "--tau", "2.0"]
    )
    cfg3 = resolve_config(args3, {"tau": 1.0, "num_samples": 5})
    with pytest.raises(UserError, match=r"--num_samples 9 \(saved: 5\): a resumed run keeps"):
        Run.start(cfg3, name="t")


def test_resume_without_out_finds_latest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(["--resume"])
    with pytest.raises(UserError, match="--out"):
        Run.start(resolve_config(args, {}), name="x")
    run = Run.start(resolve_config(_parser().parse_args([]), {}), name="x")
    run.save_checkpoint({"epoch": 1}, is_best=False)
    run2 = Run.start(resolve_config(args, {}), name="x")
    assert run2.path.resolve() == run.path.resolve() and run2.resumed


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_resume_of_a_folder_without_a_run_stops(tmp_path, folder):
    out = tmp_path / folder
    if folder == "empty":
        out.mkdir()
    args = _parser().parse_args(["--resume", "--out", str(out)])
    with pytest.raises(UserError, match=r"--resume --out .*: nothing to resume there"):
        Run.start(resolve_config(args, {}), name="x")
    assert (folder == "empty") == out.exists()  # nothing created


def test_resume_of_a_missing_folder_exits_2(tmp_path, capsys):
    from neuralsort.experiments.cli import main

    out = tmp_path / "typo"
    assert main(["dknn", "--dataset", "digits", "--resume", "--out", str(out)]) == 2
    assert "nothing to resume there (no such folder)" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_files_get_the_mode_of_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        args = _parser().parse_args(["--out", str(tmp_path / "r")])
        run = Run.start(resolve_config(args, {"tau": 1.0}), name="t")
        run.save_checkpoint({"epoch": 1}, is_best=True)
        run.write_metrics({"acc": 1.0})
        run.plot_history([{"epoch": 1, "val_acc": 0.5}], ["val_acc"], "c.png")
    finally:
        os.umask(old)
    files = ["config.yaml", "log.jsonl", "last.pt", "best.pt", "metrics.json", "c.png"]
    modes = {name: stat.S_IMODE((run.path / name).stat().st_mode) for name in files}
    assert modes == dict.fromkeys(files, 0o666 & ~umask)


def test_plot_has_a_readable_title_and_legend():
    import matplotlib

    matplotlib.use("Agg")
    from neuralsort.experiments.run_folder import history_figure, plot_title

    cfg = {"dataset": "imagefolder:/some/machine/path/pets", "method": "deterministic", "k": 5}
    cfg["tau"], cfg["out"] = 1.0, "/some/machine/path/run"
    title = plot_title("dknn-imagefolder-pets-deterministic-k5-t1", cfg)
    assert title == "Differentiable kNN on pets (deterministic, k = 5, τ = 1)"
    history = [{"epoch": e, "train_topk_correct": 0.9, "val_acc": 0.8} for e in (1, 2)]
    fig = history_figure(history, ["train_topk_correct", "val_acc"], title)
    ax = fig.axes[0]
    assert ax.get_title() == title
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "training: share of the soft k nearest with the query's label",
        "validation accuracy",
    ]
    assert plot_title(
        "sort-deterministic-n5", {"method": "deterministic", "n": 5, "tau": 16.0}
    ) == ("Sorting four-digit numbers (deterministic, n = 5, τ = 16)")


def test_a_new_run_does_not_overwrite_a_finished_or_saved_one(tmp_path):
    args = _parser().parse_args(["--out", str(tmp_path / "r")])
    Run.start(resolve_config(args, {"tau": 1.0}), name="t")  # config.yaml only: may start again
    run = Run.start(resolve_config(args, {"tau": 1.0}), name="t")
    run.save_checkpoint({"epoch": 1}, is_best=False)
    with pytest.raises(UserError, match=r"holds a run already; add --resume to continue it"):
        Run.start(resolve_config(args, {"tau": 1.0}), name="t")
    assert run.load_checkpoint("last")["epoch"] == 1


def test_resume_keeps_the_first_start_and_lists_each_resume(tmp_path):
    args = _parser().parse_args(["--out", str(tmp_path / "r")])
    run = Run.start(resolve_config(args, {"tau": 1.0}), name="t")
    run.save_checkpoint({"epoch": 1}, is_best=False)
    first = yaml.safe_load((run.path / "config.yaml").read_text())["_run"]
    again = _parser().parse_args(["--out", str(tmp_path / "r"), "--resume"])
    for _ in range(2):
        Run.start(resolve_config(again, {"tau": 1.0}), name="t")
    meta = yaml.safe_load((run.path / "config.yaml").read_text())["_run"]
    assert meta["started"] == first["started"] and meta["name"] == "t"
    assert len(meta["resumes"]) == 2 and all("git_commit" in r for r in meta["resumes"])
