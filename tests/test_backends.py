"""neuralsort.backends: the switch between the native CPU operator and the pure-PyTorch path."""

import pytest
import torch

import neuralsort as ns


def test_context_manager_switches_and_restores():
    before = ns.backends.is_enabled()
    with ns.backends.native(False):
        assert not ns.backends.is_enabled()
        assert "switched off" in ns.backends.status()
        with ns.backends.native(True):
            assert ns.backends.is_enabled()
        assert not ns.backends.is_enabled()
    assert ns.backends.is_enabled() == before


def test_restores_after_an_exception():
    before = ns.backends.is_enabled()
    with pytest.raises(RuntimeError), ns.backends.native(not before):
        raise RuntimeError("boom")
    assert ns.backends.is_enabled() == before


def test_set_enabled_needs_a_bool():
    with pytest.raises(TypeError, match="enabled"):
        ns.backends.set_enabled("no")  # type: ignore[arg-type]


def test_switched_off_means_no_native_node_in_the_graph():
    x = torch.randn(2, 6, requires_grad=True)
    with ns.backends.native(False):
        p = ns.neural_sort(x, tau=1.0)
    assert type(p.grad_fn).__name__.startswith("RelaxedRows")


def test_triton_switch_restores_and_leaves_cpu_tensors_alone():
    from neuralsort import _triton  # noqa: PLC0415

    before = _triton._enabled
    x = torch.randn(2, 6)
    with ns.backends.triton(not before):
        assert _triton._enabled is (not before)
        torch.testing.assert_close(ns.neural_sort(x, tau=1.0).sum(-1), torch.ones(2, 6))
    assert _triton._enabled is before
    with pytest.raises(TypeError, match="enabled"):
        ns.backends.triton(1)  # type: ignore[arg-type]
