"""``neuralsort reproduce``: committed configs, flags, and cells run end to end on tiny data.

The data set is the tiny synthetic MNIST of ``conftest.py`` (60 training, 30 test 8x8
images), its ``mnist_dir`` fixture.
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest
import torch
import yaml

from neuralsort.experiments.cli import build_parser, main
from neuralsort.experiments.config import UserError, resolve_config
from neuralsort.experiments.tables.grid import (
    all_cells,
    budgets_of,
    build_argv,
    config_root,
    expand_table,
)
from neuralsort.experiments.tables.spec import BUDGETS, TABLES


@pytest.fixture
def restore_threads():
    """``reproduce --threads`` sets torch's global thread count; put it back afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def attempts(cell_dir):
    return json.loads((cell_dir / "reproduce.json").read_text())["attempts"]


def test_grids_and_recipes_ship_in_the_package():
    root = config_root()
    assert not isinstance(root, pathlib.Path) or "experiments" in root.parts
    names = {f"{d.name}/{f.name}" for d in root.iterdir() if d.is_dir() for f in d.iterdir()}
    assert {f"tables/table{n}.yaml" for n in TABLES} <= names
    assert {"dknn/paper.yaml", "quality/sort-n5.yaml", "quality/quantile-n5.yaml"} <= names
    assert len(names) <= 30


def test_every_table_has_the_budgets_but_table_3_has_no_quality():
    assert [budgets_of(TABLES[t]) for t in sorted(TABLES)] == [
        list(BUDGETS),
        list(BUDGETS),
        [b for b in BUDGETS if b != "quality"],
    ]
    with pytest.raises(UserError, match="no budget 'quality'"):
        expand_table(TABLES[3], "quality")


@pytest.mark.parametrize(
    ("table", "budget"), [(t, b) for t in sorted(TABLES) for b in budgets_of(TABLES[t])]
)
def test_every_cell_resolves_through_its_command_parser(table, budget):
    spec = TABLES[table]
    cells = expand_table(spec, budget)
    names = [c.name for c in cells]
    assert len(names) == len(set(names))
    expected = set(spec.cells())
    if table == 3 and budget == "cpu":  # no CIFAR-100 at the cpu budget
        expected = {c for c in expected if not c.startswith("cifar100-")}
    if budget == "quality":  # the NeuralSort rows (Table 1: and the baselines at n = 5 and 15)
        expected = {
            c
            for c in expected
            if c.endswith(("-deterministic", "-stochastic"))
            or (table == 1 and c.startswith(("n5-", "n15-")))
        }
    assert {c.name for c in cells if not c.sweep} == expected
    parser = build_parser()
    for cell in cells:
        argv = build_argv(cell.command, cell.settings, out="x")
        assert argv[0] == cell.command and argv[-2:] == ["--out", "x"]
        args = parser.parse_args(argv)
        cfg = resolve_config(args, sys.modules[args.func.__module__].DEFAULTS)
        row, column, k = spec.parse(cell.name)
        if table == 3:
            assert cfg["dataset"] == column
            assert cell.command == ("dknn" if row.startswith("dknn") else "baseline")
            assert cfg["method"] == (row.split("-", 1)[1] if row.startswith("dknn") else row)
            assert cell.sweep == (k is not None) and cfg["k"] == (k or 9)
        else:
            assert cell.command == ("sort" if table == 1 else "quantile")
            assert (f"n{cfg['n']}", cfg["method"]) == (column, row)
        if budget == "smoke" and row not in ("knn", "knn-pca"):  # those two do not train
            assert cfg["num_epochs"] <= 2 and cfg["steps_per_epoch"] <= 20


def test_the_recipes_each_budget_uses():
    cells = {(t, b): {c.name: c for c in cs} for (t, b), cs in all_cells().items()}
    # Tables 1 and 2 at the cpu budget run the quality recipes
    assert cells[1, "cpu"]["n3-sinkhorn"].settings["regroup"] == 32
    assert cells[1, "cpu"]["n15-stochastic"].settings["lr"] == 5e-3
    assert cells[2, "cpu"]["n9-vanilla"].settings["warmup_epochs"] == 1
    # ... with about 60 images a step at every n, in float32 (bf16 is slow without bf16 units)
    t1 = [cells[1, "cpu"][f"n{n}-deterministic"].settings for n in (3, 5, 7, 9, 15)]
    assert [c["steps_per_epoch"] for c in t1] == [200, 300, 200, 200, 200]
    images = [c.get("batch_size", 20) * n for c, n in zip(t1, (3, 5, 7, 9, 15), strict=True)]
    assert images == [60, 60, 56, 54, 60]
    assert cells[1, "cpu"]["n5-stochastic"].settings["amp"] == "off"
    # CIFAR-10 at the cpu budget: the fast-training net for the CNN and the dKNN rows alike,
    # one thread; the CNN with label smoothing and mirrored test images
    c10 = {row: cells[3, "cpu"][f"cifar10-{row}"].settings for row in ("cnn", "dknn-stochastic")}
    assert {s["model"] for s in c10.values()} == {"fastnet"}
    assert {s["threads"] for s in c10.values()} == {1}
    assert c10["cnn"]["label_smoothing"] == 0.2 and c10["cnn"]["test_flip"] is True
    assert c10["dknn-stochastic"]["method"] == "stochastic"
    # one paper recipe for the dKNN rows: lr 1e-4 and the default tau 16
    paper = cells[3, "paper"]["cifar10-dknn-stochastic-k3"].settings
    assert paper["nloglr"] == 4.0 and "tau" not in paper and paper["k"] == 3
    assert cells[1, "paper"]["n5-deterministic"].settings == {"method": "deterministic", "n": 5}
    # Table 1 at the quality budget: one n = 5 scorer warm-starts every other NeuralSort cell
    # (which run after it); the baselines at n = 5 and 15 train as many steps from scratch
    quality = all_cells()[1, "quality"]
    names = [c.name for c in quality]
    q = {c.name: c.settings for c in quality}

    def steps(cell):
        return q[cell]["num_epochs"] * q[cell]["steps_per_epoch"]

    assert steps("n5-deterministic") == 48_000 and "init_from" not in q["n5-deterministic"]
    assert steps("n15-deterministic") == 20_000
    assert q["n15-deterministic"]["init_from"] == "n5-deterministic"
    warm = [n for n in names if n.endswith(("-deterministic", "-stochastic"))]
    warm.remove("n5-deterministic")
    assert len(warm) == 9
    assert {q[n]["init_from"] for n in warm} == {"n5-deterministic", "n15-deterministic"}
    for n in warm:  # every warm start runs after the cell it starts from
        assert names.index(n) > names.index(q[n]["init_from"])
    for base in ("vanilla", "sinkhorn", "gumbel-sinkhorn"):
        assert steps(f"n5-{base}") == 48_000
        assert steps(f"n15-{base}") == 48_000 + steps("n15-deterministic")
        assert q[f"n15-{base}"]["batch_size"] == q["n15-deterministic"]["batch_size"] == 4
    assert len(quality) == 16
    # Table 2 at the quality budget: one n = 5 median model warm-starts the other NeuralSort cells
    median = {c.name: c.settings for c in all_cells()[2, "quality"]}
    assert list(median)[0] == "n5-deterministic" and len(median) == 6
    assert (
        median["n5-deterministic"]["num_epochs"] * median["n5-deterministic"]["steps_per_epoch"]
        == 20_000
    )
    assert {s.get("init_from") for n, s in median.items() if n != "n5-deterministic"} == {
        "n5-deterministic"
    }
    # Fashion-MNIST at the cpu budget: fastnet at half width for the CNN and the dKNN rows, one
    # thread; its autoencoder as MNIST's, dataset apart
    fashion = {
        r: cells[3, "cpu"][f"fashion-mnist-{r}"].settings for r in ("cnn", "dknn-stochastic")
    }
    assert {s["model"] for s in fashion.values()} == {"fastnet-half"}
    assert {s["threads"] for s in fashion.values()} == {1}
    assert fashion["cnn"]["test_flip"] is True and fashion["dknn-stochastic"]["tau"] == 64.0
    mnist_ae = dict(cells[3, "cpu"]["mnist-knn-ae"].settings, dataset=None)
    assert dict(cells[3, "cpu"]["fashion-mnist-knn-ae"].settings, dataset=None) == mnist_ae


def write_grid(root, grid, **recipes):
    (root / "tables").mkdir(parents=True)
    (root / "tables" / "table1.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    for name, body in recipes.items():
        (root / "r").mkdir(exist_ok=True)
        (root / "r" / f"{name}.yaml").write_text(yaml.safe_dump(body))


GRID = {
    "command": "sort",
    "rows": {r: {"method": r} for r, _ in TABLES[1].rows},
    "columns": {c: {"n": int(c[1:])} for c, _ in TABLES[1].columns},
}


def test_grid_rules_apply_in_order_and_the_cell_identity_wins(tmp_path):
    budgets = {
        "smoke": [
            {"recipe": "r/a.yaml", "set": {"lr": 0.5}},
            {"columns": ["n3"], "rows": ["sinkhorn"], "set": {"tau": 2.0}},
            {"cells": ["n5-stochastic"], "set": {"tau": 3.0}},
        ]
    }
    write_grid(tmp_path, {**GRID, "budgets": budgets}, a={"lr": 0.1, "n": 99, "batch_size": 7})
    cells = {c.name: c.settings for c in expand_table(TABLES[1], "smoke", tmp_path)}
    assert cells["n3-sinkhorn"] == {
        "lr": 0.5,
        "n": 3,
        "batch_size": 7,
        "tau": 2.0,
        "method": "sinkhorn",
    }
    assert cells["n5-stochastic"]["tau"] == 3.0 and "tau" not in cells["n5-sinkhorn"]


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ([{"set": {"data_dir": "/data"}}], "data_dir must not be set"),
        ([{"rows": ["sinkorn"]}], "unknown name"),
        ([{"recipe": "r/missing.yaml"}], "not found"),
        ([{"sett": {"lr": 1}}], "a rule is a mapping"),
        ([{"skip": "yes"}], "skip must be true or false"),
    ],
)
def test_grid_mistakes_are_user_errors(tmp_path, budget, message):
    write_grid(tmp_path, {**GRID, "budgets": {"smoke": budget}})
    with pytest.raises(UserError, match=message):
        expand_table(TABLES[1], "smoke", tmp_path)


def test_skip_rules_leave_cells_out_and_warm_starts_run_after_their_source(tmp_path):
    budgets = {
        "smoke": [
            {"rows": ["vanilla", "sinkhorn", "gumbel-sinkhorn"], "skip": True},
            {"columns": ["n3", "n7", "n9"], "skip": True},
            {
                "cells": ["n5-stochastic", "n15-deterministic"],
                "set": {"init_from": "n15-stochastic"},
            },
            {"cells": ["n15-stochastic"], "set": {"init_from": "n5-deterministic"}},
        ]
    }
    write_grid(tmp_path, {**GRID, "budgets": budgets})
    names = [c.name for c in expand_table(TABLES[1], "smoke", tmp_path)]
    assert names == ["n5-deterministic", "n15-stochastic", "n5-stochastic", "n15-deterministic"]
    budgets["smoke"].append({"cells": ["n5-deterministic"], "set": {"init_from": "n5-stochastic"}})
    (tmp_path / "tables" / "table1.yaml").write_text(
        yaml.safe_dump({**GRID, "budgets": budgets}, sort_keys=False)
    )
    with pytest.raises(UserError, match="form a cycle"):
        expand_table(TABLES[1], "smoke", tmp_path)


def test_unknown_settings_fail_before_any_cell_runs(tmp_path, capsys):
    write_grid(tmp_path, {**GRID, "budgets": {"smoke": [{"set": {"nloglr_typo": 3}}]}})
    cmd = ["reproduce", "--table", "1", "--budget", "smoke", "--configs", str(tmp_path)]
    assert main([*cmd, "--results", str(tmp_path / "res")]) == 2
    assert "no setting 'nloglr_typo'" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


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
    # a flag that takes several values gets a list; one that takes one does not
    argv = build_argv("baseline", {"method": "knn-ae", "eval_ks": [1, 3]}, out="o")
    assert argv[:5] == ["baseline", "--method", "knn-ae", "--eval_ks", "1"] and argv[5] == "3"
    with pytest.raises(UserError, match="single value"):
        build_argv("baseline", {"k": [1, 3]}, out="o")


def test_smoke_cell_end_to_end_skips_when_done_and_resumes_when_interrupted(
    mnist_dir,
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
    assert main([*ok, "--set", "threads=1", "--note", "tiny copy"]) == 0
    assert torch.get_num_threads() == 2
    cell = results / "table3" / "smoke" / "mnist-knn"
    assert 0.0 <= json.loads((cell / "metrics.json").read_text())["test_acc"] <= 1.0
    record = json.loads((cell / "reproduce.json").read_text())
    assert record["overrides"] == {"val_size": 10, "threads": 1}
    assert record["note"] == "tiny copy"
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
    assert "(smoke; tiny copy)" in md  # the grid: budget and note
    assert "| smoke (overrides: threads=1, val_size=10); tiny copy | done |" in md  # the runs
    assert "failed (smoke)" in md

    assert main([*base, "--only", "no-such-cell"]) == 2
    assert "no config for no-such-cell" in capsys.readouterr().err


def test_dry_run_of_everything_lists_every_cell(tmp_path, capsys):
    assert main(["reproduce", "--dry_run", "--sweep", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.splitlines()
    headers = [line for line in out if line.startswith("# table")]
    assert len(headers) == sum(len(budgets_of(TABLES[t])) for t in TABLES)
    assert len(out) - len(headers) == sum(len(c) for c in all_cells().values())
    assert main(["reproduce", "--table", "1"]) == 2  # a real run needs both


def test_dry_run_lists_cells_without_running(tmp_path, capsys):
    results = tmp_path / "results"
    cmd = ["reproduce", "--table", "1", "--budget", "paper", "--results", str(results)]
    assert main([*cmd, "--dry_run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(TABLES[1].cells())
    assert out[0].split()[:4] == ["n3-vanilla", "missing", "->", "run"]
    # the command's defaults are the paper's recipe: only the cell's identity is passed
    assert "neuralsort sort --n 3 --method vanilla --out" in out[0]
    assert not results.exists()


def test_threads_flag_replaces_the_thread_count_a_cell_sets(tmp_path, capsys):
    # the CIFAR-10 dKNN cells run one thread by their grid; --threads 2 must give them two
    cell = {c.name: c for c in all_cells()[3, "cpu"]}["cifar10-dknn-stochastic"]
    assert cell.settings["threads"] == 1
    cmd = ["reproduce", "--table", "3", "--budget", "cpu", "--results", str(tmp_path / "r")]
    cmd += ["--only", "cifar10-dknn-stochastic", "--dry_run"]
    assert main(cmd) == 0
    assert "--threads 1 " in capsys.readouterr().out
    assert main([*cmd, "--threads", "2"]) == 0
    line = capsys.readouterr().out
    assert "--threads 2 " in line and "--threads 1 " not in line


def test_a_finished_run_of_older_settings_is_shown_and_kept(tmp_path, capsys):
    results = tmp_path / "results"
    cell = {c.name: c for c in all_cells()[1, "paper"]}["n3-vanilla"]
    out = results / "table1" / "paper" / "n3-vanilla"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({TABLES[1].final_metric: 0.5}))
    record = {"cell": "n3-vanilla", "cell_sha256": cell.sha256, "attempts": []}
    (out / "reproduce.json").write_text(json.dumps(record))
    cmd = ["reproduce", "--table", "1", "--budget", "paper", "--results", str(results)]
    assert main([*cmd, "--dry_run", "--only", "n3-vanilla"]) == 0
    assert capsys.readouterr().out.split()[:4] == ["n3-vanilla", "done", "->", "skip"]
    (out / "reproduce.json").write_text(json.dumps({**record, "cell_sha256": "0" * 64}))
    assert main([*cmd, "--dry_run", "--only", "n3-vanilla"]) == 0
    assert capsys.readouterr().out.split()[:4] == ["n3-vanilla", "changed", "->", "skip"]
    assert main([*cmd, "--only", "n3-vanilla"]) == 0  # kept, with a note
    assert "its settings changed since; delete the folder to rerun" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text()) == {TABLES[1].final_metric: 0.5}


def _fake_run(results, table, budget, name, *, done, overrides=None, sha=None):
    """A run folder as reproduce leaves it: finished (metrics.json) or half-finished (last.pt)."""
    cell = {c.name: c for c in all_cells()[table, budget]}[name]
    out = results / f"table{table}" / budget / name
    out.mkdir(parents=True)
    if done:
        (out / "metrics.json").write_text(json.dumps({TABLES[table].final_metric: 0.5}))
    else:
        (out / "last.pt").write_bytes(b"checkpoint")
    record = {"cell": name, "cell_sha256": sha or cell.sha256, "attempts": []}
    if overrides is not None:
        record["overrides"] = overrides
    (out / "reproduce.json").write_text(json.dumps(record))
    return out


def test_a_half_finished_run_of_other_settings_is_not_resumed(tmp_path, capsys):
    results = tmp_path / "results"
    out = _fake_run(results, 1, "paper", "n3-vanilla", done=False, sha="0" * 64)
    cmd = ["reproduce", "--table", "1", "--budget", "paper", "--results", str(results)]
    cmd += ["--only", "n3-vanilla"]
    assert main([*cmd, "--dry_run"]) == 0
    assert capsys.readouterr().out.split()[:4] == ["n3-vanilla", "changed", "->", "stop"]
    assert main(cmd) == 1
    captured = capsys.readouterr()
    assert "half-finished run" in captured.err and "Move or delete the folder" in captured.err
    assert "not resumed (settings changed)" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "reproduce.json"]  # untouched


def test_other_overrides_count_as_other_settings_but_threads_do_not(tmp_path, capsys):
    results = tmp_path / "results"
    _fake_run(results, 1, "paper", "n3-vanilla", done=True, overrides={"threads": 2, "lr": 0.1})
    cmd = ["reproduce", "--table", "1", "--budget", "paper", "--results", str(results)]
    cmd += ["--only", "n3-vanilla", "--dry_run"]
    assert main([*cmd, "--set", "lr=0.1"]) == 0  # threads alone differ: the same run
    assert capsys.readouterr().out.split()[:4] == ["n3-vanilla", "done", "->", "skip"]
    assert main([*cmd, "--set", "lr=0.2", "--set", "threads=2"]) == 0
    assert capsys.readouterr().out.split()[:4] == ["n3-vanilla", "changed", "->", "skip"]


def test_a_run_whose_command_the_grid_now_gives_counts_as_current(tmp_path, capsys):
    # a run made with --set (so another hash and overrides than the cell's today) is current
    # when the command it ran with is the cell's command today, wherever and however fast it ran
    results = tmp_path / "results"
    cell = {c.name: c for c in all_cells()[1, "paper"]}["n3-vanilla"]
    out = _fake_run(results, 1, "paper", "n3-vanilla", done=True, overrides={"lr": 0.1})
    argv = build_argv(cell.command, {**cell.settings, "lr": 0.1}, out="/elsewhere/run")
    ran = "neuralsort " + " ".join([*argv, "--threads", "2", "--data_dir", "/data"])
    record = json.loads((out / "reproduce.json").read_text())
    record = {**record, "cell_sha256": "0" * 64, "attempts": [{"command": ran}]}
    (out / "reproduce.json").write_text(json.dumps(record))
    cmd = ["reproduce", "--table", "1", "--budget", "paper", "--results", str(results)]
    cmd += ["--only", "n3-vanilla", "--dry_run"]
    assert main([*cmd, "--set", "lr=0.1"]) == 0
    assert capsys.readouterr().out.split()[:4] == ["n3-vanilla", "done", "->", "skip"]
    assert main(cmd) == 0  # today's cell has the default lr: another command
    assert capsys.readouterr().out.split()[:4] == ["n3-vanilla", "changed", "->", "skip"]


def test_a_cell_another_process_runs_is_skipped(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")  # the lock needs POSIX file locks
    results = tmp_path / "results"
    base = results / "table1" / "paper"
    base.mkdir(parents=True)
    with open(base / ".n3-vanilla.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running reproduce holds it
        cmd = ["reproduce", "--table", "1", "--budget", "paper", "--results", str(results)]
        assert main([*cmd, "--only", "n3-vanilla"]) == 0
    out = capsys.readouterr().out
    assert "skip n3-vanilla: another process is running it" in out
    assert "skipped (running elsewhere)" in out
    assert not (base / "n3-vanilla").exists()


def test_a_file_system_without_locks_runs_the_cell_unlocked(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    from neuralsort.experiments.tables.reproduce import _cell_lock

    def no_locks(fd, op):
        raise OSError(37, "No locks available")  # ENOLCK, as some network mounts answer

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with _cell_lock(tmp_path / "table1" / "paper", "n3-vanilla") as free:
        assert free


def test_an_attempt_records_the_cells_threads_from_its_start(mnist_dir, tmp_path, monkeypatch):
    # a session killed mid-cell leaves only the attempt's first record: it must name the
    # threads the cell runs with, not the ones reproduce started with
    import neuralsort.experiments.tables.reproduce as rep

    seen = []
    real = rep._write_json

    def spy(path, data):
        if data.get("attempts"):
            seen.append(data["attempts"][-1]["hardware"]["torch_threads"])
        real(path, data)

    monkeypatch.setattr(rep, "_write_json", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cmd = ["reproduce", "--table", "3", "--budget", "smoke", "--only", "mnist-knn"]
        cmd += ["--results", str(tmp_path), "--data_dir", str(mnist_dir)]
        assert main([*cmd, "--set", "val_size=10", "--set", "threads=1"]) == 0
        assert seen[0] == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
