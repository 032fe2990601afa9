"""The benchmark scripts run end to end at tiny sizes; ops.py judges the issue's targets."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load("ops")


def test_writes_a_row_per_case_and_the_targets(bench, tmp_path, capsys):
    bench.main(["--sizes", "3x16", "--repeats", "3", "--budget_s", "1", "--out", str(tmp_path)])
    with open(next(tmp_path.glob("ops_*.csv"))) as f:
        rows = list(csv.DictReader(f))
    ops = {r["op"] for r in rows}
    assert {"floor: softmax(B,n,n)", "neural_sort", "soft_topk k=9", "floor: softmax(B,9,n)"} <= ops
    assert all(float(r["median_ms"]) > 0 for r in rows)
    assert "| 3 | 16 | neural_sort |" in capsys.readouterr().out


def test_targets_are_judged_against_the_thresholds(bench):
    def row(op, ms):
        return {"B": 100, "n": 100, "op": op, "median_ms": ms}

    rows = [
        row("floor: softmax(B,n,n)", 2.0),
        row("neural_sort", 2.6),  # 1.3x the floor: missed
        row("soft_topk k=9", 0.5),  # 5.2x faster: met
        row("floor: softmax(B,9,n)", 0.4),
    ]
    for r in rows:
        r["vs_floor"] = r["median_ms"] / 2.0
        r["speedup_vs_neural_sort"] = 2.6 / r["median_ms"]
    lines = bench.check_targets(rows)
    assert lines[0].endswith("1.30x  missed")
    assert "5.2x  met" in lines[1] and "takes 1.25x its time" in lines[1]


def test_train_step_benchmark_writes_its_table(tmp_path):
    # a subprocess: its workers are spawned, and they import the script by its module name
    # every experiment's step: each builds its model and loss through the commands' own code
    args = ["--device", "cpu", "--procs", "1", "--amp", "off"]
    args += ["--experiments", "dknn", "sort", "quantile"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), *args, "--steps", "1"]
        + ["--warmup", "0", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "train_step_cpu-1threads.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["experiment"] for r in rows] == ["dknn", "sort", "quantile"]
    assert all(float(r["images_per_s"]) > 0 for r in rows)


def test_large_n_benchmark_runs_at_the_smallest_size(tmp_path):
    rows = load("large_n").main(
        ["--sizes", "1x256", "--repeats", "1", "--budget_s", "1", "--out", str(tmp_path)]
    )
    methods = {r["method"] for r in rows}
    assert {"exact", "tol=1e-6", "dense"} <= methods
    assert all(r["median_ms"] > 0 and r["peak_rss_MiB"] >= 0 for r in rows)
    assert (tmp_path / "large_n_cpu-1threads.csv").exists()


def test_large_n_benchmark_runs_only_the_chosen_cases(tmp_path):
    main = load("large_n").main
    rows = main(
        ["--sizes", "1x64", "--repeats", "1", "--no_memory", "--methods", "default", "tol=1e-6",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert [r["method"] for r in rows] == ["default", "tol=1e-6"]
    with pytest.raises(SystemExit):
        main(["--sizes", "1x64", "--methods", "tol=1e-7", "--out", str(tmp_path)])


def test_scorer_digits_counts_wrong_orders_by_the_first_differing_digit():
    order_errors = load("scorer_digits").order_errors
    values = torch.tensor([1200, 1210, 1211, 2200, 15])
    # a scorer that reads the first three digits and ignores the last
    scores = (values // 10).float()
    rows = {r["first_differing_digit"]: r for r in order_errors(scores, values, 4, window=10)}
    # pairs: (15, others) and (1xxx, 2200) first differ in digit 1; (1200, 1210) and
    # (1200, 1211) in digit 3; (1210, 1211) in digit 4, scored equal: the wrong order
    assert rows[1]["pairs"] == 7 and rows[1]["wrong_order"] == 0.0
    assert rows[3]["pairs"] == 2 and rows[3]["wrong_order"] == 0.0
    assert rows[4]["pairs"] == 1 and rows[4]["wrong_order"] == 1.0
    assert 2 not in rows
    # reversed scores: every pair in the wrong order
    flipped = order_errors(-scores, values, 4, window=10)
    assert all(r["wrong_order"] == 1.0 for r in flipped)


def test_scorer_digits_splits_errors_into_typical_noise_and_outliers():
    mod = load("scorer_digits")
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 10_000, (4000,), generator=gen)
    # a scorer with steps 20 / 2 / 0.2 / 0.02 per digit (its digit-3 and -4 slopes), noise 0.5
    # on every image and 30 more on every 25th (the outliers)
    d = mod.digits_of(values, 4).double()
    exact = d @ torch.tensor([20.0, 2.0, 0.2, 0.02], dtype=torch.float64)
    noise = 0.5 * torch.randn(4000, generator=gen, dtype=torch.float64)
    noise[::25] += 30.0
    model = mod.noise_model(exact + noise, values, 4)
    assert model["slope_digit3"] == pytest.approx(0.2, abs=0.03)
    assert model["slope_digit4"] == pytest.approx(0.02, abs=0.03)
    assert model["typical_noise"] == pytest.approx(0.5, rel=0.15)
    assert model["outlier_fraction"] == pytest.approx(0.04, abs=0.005)
    (row,) = mod.exact_rates(model, values, [9], sequences=500, seed=1)
    # removing both sources leaves the fitted value, which orders every pair right
    assert row["both"] == 1.0
    assert row["as_scored"] < row["outliers_replaced"] < row["both"]
    assert row["as_scored"] < row["typical_noise_removed"] < row["both"]
    with pytest.raises(ValueError, match="3 or more digits"):
        mod.noise_model(exact, values % 100, 2)


def test_dknn_test_flip_repeats_the_runs_own_accuracy(tmp_path, capsys):
    """The plain re-evaluation of a finished run is the run's own number; the flipped one is an
    accuracy too."""
    import json

    from neuralsort.experiments.cli import main as cli

    run = tmp_path / "run"
    args = ["dknn", "--dataset", "digits", "--num_epochs", "1", "--steps_per_epoch", "3"]
    args += ["--k", "3", "--no-pixel_knn", "--out", str(run)]
    assert cli(args) == 0
    capsys.readouterr()
    load("dknn_test_flip").main([str(run)])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    assert row["plain_test_acc"] == metrics["test_acc"]
    assert row["plain_val_acc"] == metrics["val_acc"]
    assert 0 < row["flip_test_acc"] <= 1 and 0 < row["flip_val_acc"] <= 1
    assert "plain_val_acc_by_k" not in row  # without --ks: the run's k only

    load("dknn_test_flip").main([str(run), "--ks", "1", "5"])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert set(row["flip_test_acc_by_k"]) == {"1", "3", "5"}  # the run's k as well
    assert row["plain_val_acc_by_k"]["3"] == metrics["val_acc"]
    assert row["flip_test_acc_by_k"]["3"] == row["flip_test_acc"]

    with pytest.raises(SystemExit):  # a folder that is not a finished run: named, no traceback
        load("dknn_test_flip").main([str(tmp_path / "missing")])
    assert "missing: not a finished neuralsort dknn run folder" in capsys.readouterr().err
