"""The examples run end to end (in a subprocess, as a user runs them) and their metric improves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> str:
    env = dict(os.environ)
    # this checkout's package, whatever is installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def metric(out: str, label: str) -> tuple[float, float]:
    before = float(re.search(rf"{label}: before training (-?[\d.]+)", out).group(1))
    after = float(re.search(rf"final {label}: (-?[\d.]+)", out).group(1))
    return before, after


def test_spearman_regression():
    pytest.importorskip("sklearn", reason="the example reads scikit-learn's bundled diabetes data")
    before, after = metric(run_example("spearman_regression.py"), "test Spearman correlation")
    assert after >= 0.6, after
    assert after > before + 0.05, (before, after)


def test_ranking():
    before, after = metric(run_example("ranking.py"), r"test NDCG@10")
    assert after >= 0.85, after
    assert after > before + 0.3, (before, after)
