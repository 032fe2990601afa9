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


def test_kernels_agree_with_the_torch_path_in_the_interpreter():
    pytest.importorskip("triton", reason="Triton is Linux-only; the dev extra installs it there")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEURALSORT_", "TRITON_"))}
    env.update(TRITON_INTERPRET="1", NEURALSORT_TRITON="1", NEURALSORT_NATIVE="0")
    here = Path(__file__).parent
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "triton_interpreted.py"],
        capture_output=True,
        text=True,
        env=env,
        cwd=here,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_off_by_default_and_never_for_cpu_tensors_without_the_interpreter():
    x = torch.zeros(2, 8)
    assert not _triton.usable(x)  # NEURALSORT_TRITON unset
    with _triton.enabled(True):
        assert not _triton.usable(x)  # a CPU tensor, no interpreter
        torch.testing.assert_close(ns.neural_sort(x, 1.0).sum(-1), torch.ones(2, 8))


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
