"""benchmarks/ops.py runs end to end at a tiny size and judges the issue's targets correctly."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ops", ROOT / "benchmarks" / "ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
