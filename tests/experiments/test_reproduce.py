"""``neuralsort reproduce``: committed configs, flags, and cells run end to end on tiny data.

The data set is the tiny synthetic MNIST of ``test_sorting_cli.py`` (60 training, 30 test 8x8
images), reused through its ``mnist_dir`` fixture.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_sorting_cli import mnist_dir  # noqa: F401 - the shared tiny-MNIST fixture

from neuralsort.experiments.cli import main
from neuralsort.experiments.report import BUDGETS, TABLES
from neuralsort.experiments.reproduce import (
    build_argv,
    default_config_root,
    list_cells,
    load_cell_config,
)
from neuralsort.experiments.run import UserError

CONFIGS = default_config_root()


@pytest.fixture
def restore_threads():
    """``reproduce --threads`` sets torch's global thread count; put it back afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def attempts(cell_dir):
    return json.loads((cell_dir / "reproduce.json").read_text())["attempts"]


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("budget", BUDGETS)
def test_committed_configs_cover_the_table_and_parse(table, budget):
    spec = TABLES[table]
    cells = list_cells(spec, CONFIGS / f"table{table}" / budget)
    names = {c.name for c in cells}
    expected = set(spec.cells())
    if table == 3 and budget == "cpu":  # no CIFAR-100 at the cpu budget
        expected = {c for c in expected if not c.startswith("cifar100-")}
    assert expected <= names
    for cell in cells:
        # every setting is a real flag of its command (else build_argv raises)
        argv = build_argv(cell.command, cell.settings, out="x")
        assert argv[0] == cell.command and argv[-2:] == ["--out", "x"]
        row, column, k = spec.parse(cell.name)
        s = cell.settings
        if table == 3:
            assert s["dataset"] == column
            assert cell.command == ("dknn" if row.startswith("dknn") else "baseline")
            assert s["method"] == (row.split("-", 1)[1] if row.startswith("dknn") else row)
            assert cell.sweep == (k is not None) and (k is None or s["k"] == k)
        else:
            assert cell.command == ("sort" if table == 1 else "quantile")
            assert (f"n{s['n']}", s["method"]) == (column, row)
        if budget == "smoke":
            assert s.get("num_epochs", 1) <= 2
            assert row in ("knn", "knn-pca") or s["steps_per_epoch"] <= 20


def test_build_argv_switches_and_unknown_settings():
    argv = build_argv(
        "dknn",
        {"k": 3, "pixel_knn": False, "channels_last": True, "tau": 16.0, "model": None},
        out="o",
        resume=True,
        data_dir="d",
        device="cpu",
    )
    assert argv == [
        "dknn",
        *("--k", "3", "--no-pixel_knn", "--channels_last", "--tau", "16.0"),
        *("--out", "o", "--data_dir", "d", "--device", "cpu", "--resume"),
    ]
    with pytest.raises(UserError, match="no setting 'nloglr_typo'"):
        build_argv("dknn", {"nloglr_typo": 3}, out="o")
    with pytest.raises(UserError, match="true or false"):
        build_argv("dknn", {"pixel_knn": "yes"}, out="o")


def test_cell_files_may_not_fix_data_or_output(tmp_path):
    bad = tmp_path / "n3-deterministic.yaml"
    bad.write_text(yaml.safe_dump({"command": "sort", "n": 3, "data_dir": "/work/data"}))
    with pytest.raises(UserError, match="data_dir must not be set"):
        load_cell_config(bad)
    bad.write_text(yaml.safe_dump({"command": "train", "n": 3}))
    with pytest.raises(UserError, match="'command' must be one of"):
        load_cell_config(bad)


def test_smoke_cell_end_to_end_skips_when_done_and_resumes_when_interrupted(
    mnist_dir,  # noqa: F811
    tmp_path,
    restore_threads,
):
    results = tmp_path / "results"
    cmd = ["reproduce", "--table", "2", "--budget", "smoke", "--only", "n5-deterministic"]
    cmd += ["--results", str(results), "--data_dir", str(mnist_dir), "--device", "cpu"]
    cmd += ["--threads", "1"]  # tiny nets: one thread is fastest on a busy machine
    assert main(cmd) == 0
    cell = results / "table2" / "smoke" / "n5-deterministic"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["test_mse"] >= 0 and metrics["epochs"] == 2 and metrics["steps"] == 6
    saved = yaml.safe_load((cell / "config.yaml").read_text())
    assert saved["method"] == "deterministic" and saved["batch_size"] == 5
    (first,) = attempts(cell)
    assert first["status"] == "done" and not first["resumed"] and first["rc"] == 0
    assert first["hardware"]["device"] == "cpu" and first["hardware"]["torch_threads"] == 1
    assert (
        first["hardware"]["summary"].startswith("CPU")
        and "1 thread" in first["hardware"]["summary"]
    )
    assert "neuralsort quantile --n 5 --method deterministic" in first["command"]

    # run again: the finished cell is skipped, nothing is rewritten
    stamp = (cell / "metrics.json").stat().st_mtime_ns
    assert main(cmd) == 0
    assert (cell / "metrics.json").stat().st_mtime_ns == stamp
    assert len(attempts(cell)) == 1

    # an interrupted cell (checkpoint, no final metrics) is resumed, to the same result
    (cell / "metrics.json").unlink()
    assert main(cmd) == 0
    again = json.loads((cell / "metrics.json").read_text())
    assert again["test_mse"] == metrics["test_mse"]
    second = attempts(cell)[-1]
    assert second["resumed"] and second["command"].endswith("--resume")
    assert second["status"] == "done"


def test_overrides_and_failures_are_recorded(mnist_dir, tmp_path, capsys, restore_threads):  # noqa: F811
    results = tmp_path / "results"
    base = ["reproduce", "--table", "3", "--budget", "smoke", "--results", str(results)]
    # a kNN cell on the tiny data, which needs a smaller validation split than MNIST's 5,000;
    # the cell sets torch's threads, which must not leak into what runs after it
    torch.set_num_threads(2)
    ok = [*base, "--only", "mnist-knn", "--data_dir", str(mnist_dir), "--set", "val_size=10"]
    assert main([*ok, "--set", "threads=1"]) == 0
    assert torch.get_num_threads() == 2
    cell = results / "table3" / "smoke" / "mnist-knn"
    assert 0.0 <= json.loads((cell / "metrics.json").read_text())["test_acc"] <= 1.0
    record = json.loads((cell / "reproduce.json").read_text())
    assert record["overrides"] == {"val_size": 10, "threads": 1}
    assert "--val_size 10" in record["attempts"][0]["command"]
    assert record["attempts"][0]["hardware"]["torch_threads"] == 1

    # a cell whose data is missing fails with the command's message; reproduce exits 1
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = [*base, "--only", "mnist-knn-pca", "--data_dir", str(empty)]
    assert main(bad) == 1
    (attempt,) = attempts(results / "table3" / "smoke" / "mnist-knn-pca")
    assert attempt["status"] == "failed" and attempt["rc"] == 2
    assert "not found" in attempt["error"] and "mnist" in attempt["error"]

    assert main(["report", str(results), "--bench_dir", str(empty)]) == 0
    md = (results / "table3.md").read_text()
    assert "(smoke (overrides: threads=1, val_size=10))" in md  # the grid
    assert "| smoke (overrides: threads=1, val_size=10) | done |" in md  # the runs list
    assert "failed (smoke)" in md

    assert main([*base, "--only", "no-such-cell"]) == 2
    assert "no config for no-such-cell" in capsys.readouterr().err


def test_dry_run_lists_cells_without_running(tmp_path, capsys):
    results = tmp_path / "results"
    cmd = ["reproduce", "--table", "1", "--budget", "paper", "--results", str(results)]
    assert main([*cmd, "--dry_run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(TABLES[1].cells())
    assert out[0].split()[:4] == ["n3-vanilla", "missing", "->", "run"]
    assert "--num_epochs 200" in out[0] and "--steps_per_epoch 625" in out[0]
    assert not results.exists()
