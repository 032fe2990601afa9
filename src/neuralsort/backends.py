"""Which implementation the relaxed-sort operators run on the CPU.

Every operator built on NeuralSort's relaxed rows (:func:`~neuralsort.neural_sort`,
:func:`~neuralsort.soft_sort`, :func:`~neuralsort.soft_rank`, :func:`~neuralsort.soft_topk`,
:func:`~neuralsort.soft_quantile`, :func:`~neuralsort.stochastic_neural_sort` and the modules
on top) has two implementations with the same results:

* **native** (the default on the CPU for float32/float64): one C++ operator,
  ``torch.ops.neuralsort.relaxed_rows``, whose forward builds each row, exponentiates and
  normalises it in one pass and whose backward reduces the softmax gradient without storing it.
  It is compiled on first use by :mod:`torch.utils.cpp_extension` against the installed torch
  (about 30 s on two cores, once per machine and torch version, into ``$NEURALSORT_CACHE_DIR``
  or ``~/.cache/neuralsort``; see :func:`status` for where).
* **torch**: plain PyTorch ops in a Python ``autograd.Function``. Used on CUDA and other
  devices, for half precision only through float32, where no C++ compiler or ninja is found, and
  wherever the native operator is switched off.

``NEURALSORT_NATIVE=0`` in the environment switches the native operator off before anything is
compiled.

On CUDA there is a third, **experimental** implementation, off by default: fused Triton kernels
(one launch forward, one backward) for float32 rows of up to 256 elements, where the PyTorch
path is bound by kernel launches. They are tested against the PyTorch path through Triton's CPU
interpreter but have not yet been run or timed on a GPU. ``NEURALSORT_TRITON=1`` switches them
on for the process, :func:`triton` inside a block.

Example:
    >>> import torch
    >>> import neuralsort as ns
    >>> with ns.backends.native(False):   # pure PyTorch inside the block
    ...     p = ns.neural_sort(torch.randn(3, 5), tau=1.0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from . import _native, _triton

__all__ = [
    "is_available",
    "is_enabled",
    "set_enabled",
    "native",
    "status",
    "triton",
    "triton_status",
]


def is_available() -> bool:
    """Whether the native CPU operator is built and loaded; builds it now if it is not yet."""
    return _native.available()


def is_enabled() -> bool:
    """Whether CPU operators use the native operator when it is available."""
    return _native.enabled()


def set_enabled(enabled: bool) -> None:
    """Switch the native CPU operator on or off for this process."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_enabled: `enabled` must be a bool, got {type(enabled).__name__}")
    _native.set_enabled(enabled)


@contextlib.contextmanager
def native(enabled: bool = True) -> Iterator[None]:
    """Context manager: use (or, with ``enabled=False``, avoid) the native operator inside."""
    before = _native.enabled()
    set_enabled(enabled)
    try:
        yield
    finally:
        _native.set_enabled(before)


def status() -> str:
    """One line: where the native operator was loaded from and what it was built for (its vector
    width and instruction set), or why it is not in use."""
    if not _native.enabled():
        return "switched off (NEURALSORT_NATIVE=0 or backends.set_enabled(False))"
    return _native.status()


def triton(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Context manager: use (or avoid) the experimental Triton kernels for CUDA tensors inside
    (they need the ``triton`` package; without it the PyTorch path runs)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"triton: `enabled` must be a bool, got {type(enabled).__name__}")
    return _triton.enabled(enabled)


def triton_status() -> str:
    """One line: whether the experimental Triton kernels are switched on, and Triton's version."""
    return _triton.status()
