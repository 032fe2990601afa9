"""Moving the sorted axis last and back; dtype conversion without a call when nothing changes."""

from __future__ import annotations

import torch
from torch import Tensor


def to_last(x: Tensor, dim: int) -> Tensor:
    """``x`` with axis ``dim`` moved last (no view, so no autograd node, when it already is)."""
    return x if dim == x.dim() - 1 else x.movedim(dim, -1)


def from_last(x: Tensor, dim: int) -> Tensor:
    return x if dim == x.dim() - 1 else x.movedim(-1, dim)


def as_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.to(dtype)`` without its call cost when nothing changes (this runs on every call)."""
    return x if x.dtype == dtype else x.to(dtype)
