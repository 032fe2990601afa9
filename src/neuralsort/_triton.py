"""Fused GPU kernels (Triton) for the relaxed permutation rows of short score vectors.

EXPERIMENTAL, off by default: ``NEURALSORT_TRITON=1`` switches them on for CUDA tensors. They
have been checked against the PyTorch path only through Triton's CPU interpreter
(``TRITON_INTERPRET=1``, see tests/test_triton.py), not yet timed or run on a GPU.

Why: on CUDA the PyTorch path launches a dozen small kernels per call (sort, gathers, prefix
sums, the softmax and its clamp), so for short rows it is bound by launches, not by arithmetic.
Here one program per batch element does everything for ``n <= MAX_N``, in one launch forward
and one backward, with the same formulas as the fused CPU kernel (``_kernels/relaxed_rows.h``):

* forward: ``a_j = sum_k |x_j - x_k|`` directly (O(n^2), in float64, where the differences of
  float32 scores are exact), then for each row ``i`` the logits
  ``(coef_i xc_j - a_j) / tau``, taken again relative to the element each row peaks at (as the
  CPU paths do: ``(coef_i (xc_j - xc_k) - (a_j - a_k)) / tau``, each difference before any
  scaling, ``a`` kept as a float32 pair), floored at ``max - logit_range`` (free here), and
  their softmax;
* backward: with ``L = P (G - <G_i, P_i>)`` (the softmax backward),
  ``u_j = sum_i coef_i L_ij`` and ``v_j = -sum_i L_ij``; the gradient of ``x`` is
  ``(u + J_a^T v) / tau`` with ``(J_a^T v)_k = sum_j (v_k + v_j) s_kj``, ``s_kj = +1`` when
  ``k`` comes after ``j`` in the stable ascending order, ``-1`` when before (at ties, the
  subgradient the native CPU kernel's stable-order prefix sums take); the tau gradient's sum
  ``sum_ij L_ij (coef_i (x_j - x_k) - (a_j - a_k))``, ``k`` the peak of row ``i``, as on the
  CPU paths.

Second derivatives (``create_graph=True``) go through the PyTorch path's formulas.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
from torch import Tensor

MAX_N = 256  # longer rows keep the PyTorch path (one program per batch element would idle the GPU)
_TILE = 4096  # elements per 2-D tile a program holds at once

_enabled = os.environ.get("NEURALSORT_TRITON", "0").strip().lower() in ("1", "true", "yes")
_interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"  # CPU tensors too (tests)


@functools.cache
def _kernels():
    """``(forward_kernel, backward_kernel)``, or ``None`` where Triton cannot be imported."""
    try:
        from . import _triton_kernels  # noqa: PLC0415
    except ImportError:
        return None
    return _triton_kernels.forward_kernel, _triton_kernels.backward_kernel


def usable(x: Tensor) -> bool:
    """Whether these kernels take ``x``: switched on, a float32 CUDA tensor (any device under
    the interpreter), rows of at most ``MAX_N``, Triton importable."""
    return (
        _enabled
        and (x.is_cuda or _interpret)
        and x.dtype == torch.float32
        and 0 < x.shape[-1] <= MAX_N
        and _kernels() is not None
    )


def status() -> str:
    """One line: switched on or off, and whether Triton can be imported."""
    try:
        import triton  # noqa: PLC0415

        found = f"triton {triton.__version__}"
    except ImportError:
        found = "triton not installed"
    state = "on" if _enabled else "off (NEURALSORT_TRITON=1 switches them on)"
    return f"{state}; {found}"


@contextlib.contextmanager
def enabled(value: bool):
    """Switch the kernels on or off inside a block (tests compare them with the other paths)."""
    global _enabled
    before, _enabled = _enabled, value
    try:
        yield
    finally:
        _enabled = before


@contextlib.contextmanager
def _hint_on_failure(which: str):
    """Kernel compilation or launch errors name the way back to the PyTorch path."""
    try:
        yield
    except Exception as err:
        raise RuntimeError(
            f"neuralsort: the experimental Triton {which} kernel failed ({type(err).__name__}: "
            f"{err}). Unset NEURALSORT_TRITON (or leave `neuralsort.backends.triton()`) to use "
            "the PyTorch path, and please report the GPU and versions (`neuralsort info`)."
        ) from err


def _launch_meta(n: int, m: int) -> dict[str, int]:
    """Tile sizes (powers of two) and warps for rows of ``n`` and ``m`` rows, both kernels."""
    block_n = max(16, 1 << (n - 1).bit_length())
    block_m = min(max(1, _TILE // block_n), max(1, 1 << (m - 1).bit_length()))
    block_k = min(_TILE // block_n, block_n)
    warps = 4 if block_n <= 128 else 8
    return {"BLOCK_N": block_n, "BLOCK_M": block_m, "BLOCK_K": block_k, "num_warps": warps}


def forward(x: Tensor, coef: Tensor, tau: Tensor, logit_range: float) -> tuple[Tensor, ...]:
    """``(p, xc, a)`` for ``x`` ``(..., n)`` float32, ``coef`` ``(m,)`` and a scalar tensor
    ``tau`` (read on the device: no synchronisation); ``p`` is ``(..., m, n)``."""
    forward_kernel, _ = _kernels()
    x = x.contiguous()
    n, m = x.shape[-1], coef.shape[0]
    batch = x.numel() // n
    p = torch.empty((*x.shape[:-1], m, n), dtype=x.dtype, device=x.device)
    xc, a = torch.empty_like(x), torch.empty_like(x)
    if batch:
        with _hint_on_failure("forward"):
            forward_kernel[(batch,)](
                x, coef.to(x.dtype).contiguous(), tau.to(x.dtype), p, xc, a, logit_range, n, m,
                **_launch_meta(n, m),
            )  # fmt: skip
    return p, xc, a


def backward(
    grad_p: Tensor, p: Tensor, coef: Tensor, xc: Tensor, a: Tensor, tau: Tensor, need_tau: bool
) -> tuple[Tensor, Tensor | None]:
    """``(grad_x, sum_b tau_part_b)``; the gradient of tau is ``-tau_part / tau^2``."""
    _, backward_kernel = _kernels()
    n, m = xc.shape[-1], coef.shape[0]
    batch = xc.numel() // n
    grad_x = torch.empty_like(xc)
    scratch = torch.empty_like(xc)
    tau_part = torch.zeros(max(batch, 1), dtype=torch.float64, device=xc.device)
    if batch:
        with _hint_on_failure("backward"):
            backward_kernel[(batch,)](
                grad_p.to(p.dtype).contiguous(), p, coef.to(p.dtype).contiguous(),
                tau.to(p.dtype), xc, a, grad_x, tau_part, scratch, n, m,
                NEED_TAU=need_tau, **_launch_meta(n, m),
            )  # fmt: skip
    return grad_x, (tau_part.sum() if need_tau else None)
