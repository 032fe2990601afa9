"""The experimental Triton kernels, checked on the CPU through Triton's interpreter.

The checks themselves are in tests/triton_interpreted.py; Triton reads ``TRITON_INTERPRET`` when
its kernels are defined, so they run in a fresh process with it set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import neuralsort as ns
from neuralsort import _triton


def _interpreted(test_file: str) -> subprocess.CompletedProcess:
    """``pytest tests/<test_file>`` in a fresh process with the Triton kernels taking every
    float32 CPU tensor of up to 256 elements a row (through the interpreter)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEURALSORT_", "TRITON_"))}
    env.update(TRITON_INTERPRET="1", NEURALSORT_TRITON="1", NEURALSORT_NATIVE="0")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parent,
        timeout=1200,
    )


def test_kernels_agree_with_the_torch_path_in_the_interpreter():
    pytest.importorskip("triton", reason="the dev extra installs Triton on x86-64 Linux only")
    proc = _interpreted("triton_interpreted.py")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_every_operator_test_passes_on_the_kernels_in_the_interpreter():
    # tests/test_ops.py's float32 cases (properties, reference, convergence, bad input, NaN
    # rows, dims, half precision) then run on the Triton kernels
    pytest.importorskip("triton", reason="the dev extra installs Triton on x86-64 Linux only")
    proc = _interpreted("test_ops.py")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout, proc.stdout[-2000:]


def test_off_by_default_and_never_for_cpu_tensors_without_the_interpreter():
    x = torch.zeros(2, 8)
    assert not _triton.usable(x)  # NEURALSORT_TRITON unset
    with _triton.enabled(True):
        assert not _triton.usable(x)  # a CPU tensor, no interpreter
        torch.testing.assert_close(ns.neural_sort(x, tau=1.0).sum(-1), torch.ones(2, 8))


def test_a_failing_kernel_names_the_way_back(monkeypatch):
    class Broken:  # stands in for a kernel Triton cannot compile for this GPU
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise ValueError("unsupported architecture")

            return launch

    monkeypatch.setattr(_triton, "_kernels", lambda: (Broken(), Broken()))
    with pytest.raises(RuntimeError, match="forward kernel failed.*Unset NEURALSORT_TRITON"):
        _triton.forward(torch.zeros(2, 8), torch.ones(3), torch.tensor(1.0), 64.0)
    with pytest.raises(RuntimeError, match="backward kernel failed"):
        p, xc, a = torch.zeros(2, 3, 8), torch.zeros(2, 8), torch.zeros(2, 8)
        _triton.backward(p, p, torch.ones(3), xc, a, torch.tensor(1.0), False)
