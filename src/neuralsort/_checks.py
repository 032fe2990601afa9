"""Argument checks shared by the operators: every failure names the argument and what to do."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

TauLike = float | Tensor

# torch.compiler.is_compiling appeared in torch 2.3
is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)

_is_wrapped = getattr(
    getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", lambda t: False
)


def values_readable(t: Tensor) -> bool:
    """Whether argument checks may read ``t``'s values (not while torch.compile traces, nor
    under a :mod:`torch.func` transform, where ``vmap`` forbids data-dependent branches)."""
    return not is_compiling() and not _is_wrapped(t)


def is_transformed(x: Tensor) -> bool:
    """Whether ``x`` is seen through a :mod:`torch.func` transform (``grad``, ``jacrev``,
    ``jvp``, ``vmap``) or carries a forward-mode tangent: the operators then run as plain
    differentiable PyTorch ops, which every transform composes with."""
    if is_compiling():  # (dynamo cannot trace the check; compiled code is not transformed here)
        return False
    if _is_wrapped(x):
        return True
    forward_ad = torch.autograd.forward_ad
    return forward_ad._current_level >= 0 and forward_ad.unpack_dual(x).tangent is not None


def check_float_tensor(x: object, name: str, fn: str) -> Tensor:
    """Return ``x`` if it is a floating-point tensor, else raise ``TypeError``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: `{name}` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{fn}: `{name}` must be a floating-point tensor, got dtype {x.dtype} "
            f"with shape {tuple(x.shape)}; convert it first, e.g. `{name}.float()`"
        )
    return x


def canonical_dim(x: Tensor, dim: int, name: str, fn: str) -> int:
    """Normalise ``dim`` to a non-negative axis of ``x`` that is non-empty."""
    # (`type(dim) is int` first: the numbers.Integral check is slow, and this runs every call)
    if type(dim) is not int and (isinstance(dim, bool) or not isinstance(dim, numbers.Integral)):
        raise TypeError(f"{fn}: `dim` must be an int, got {type(dim).__name__}")
    ndim = x.dim()
    if ndim == 0:
        raise ValueError(
            f"{fn}: `{name}` must have at least one dimension to sort along, got a 0-d tensor"
        )
    if not -ndim <= dim < ndim:
        raise ValueError(
            f"{fn}: `dim`={dim} is out of range for `{name}` of shape {tuple(x.shape)} "
            f"(valid: {-ndim} to {ndim - 1})"
        )
    dim = int(dim) % ndim
    if x.shape[dim] == 0:
        raise ValueError(
            f"{fn}: `{name}` has an empty axis dim={dim} (shape {tuple(x.shape)}); "
            "there is nothing to sort"
        )
    return dim


def check_tau(tau: object, fn: str) -> TauLike:
    """``tau`` must be a positive finite number or a positive scalar tensor."""
    if isinstance(tau, Tensor):
        if tau.numel() != 1:
            raise ValueError(
                f"{fn}: `tau` must be a scalar, got a tensor of shape {tuple(tau.shape)}"
            )
        if not tau.is_floating_point():
            raise TypeError(f"{fn}: `tau` must be a floating-point tensor, got {tau.dtype}")
        # (its value cannot be read while torch.compile traces or under vmap)
        if values_readable(tau) and (not bool(torch.isfinite(tau).all()) or bool((tau <= 0).any())):
            raise ValueError(f"{fn}: `tau` must be positive and finite, got {tau.item()!r}")
        return tau.reshape(())
    if type(tau) is not float and (isinstance(tau, bool) or not isinstance(tau, numbers.Real)):
        raise TypeError(f"{fn}: `tau` must be a positive number, got {type(tau).__name__}")
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(
            f"{fn}: `tau` must be positive and finite, got {tau!r}; "
            "smaller tau gives a sharper relaxation, e.g. tau=1.0"
        )
    return float(tau)


def check_sort_input(
    x: object, dim: int, tau: object, name: str, fn: str
) -> tuple[Tensor, int, TauLike]:
    """The checks every sorting operator starts with: a float tensor, a valid non-empty ``dim``
    and a valid ``tau``, in that order. Returns ``(x, dim normalised, tau)``."""
    x = check_float_tensor(x, name, fn)
    return x, canonical_dim(x, dim, name, fn), check_tau(tau, fn)


def check_positive_int(value: object, name: str, fn: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{fn}: `{name}` must be a positive int, got {value!r}")
    return int(value)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are computed in float32; float32 and float64 are kept."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_mask(mask: object, x: Tensor, name: str, fn: str) -> Tensor | None:
    """``mask`` must be ``None`` or a bool tensor of ``x``'s shape (True = a real element).

    Returns it on ``x``'s device; ``None`` stays ``None``.
    """
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"{fn}: `mask` must be a bool torch.Tensor of the shape of `{name}` "
            f"{tuple(x.shape)}, got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{fn}: `mask` must be a bool tensor (True = real element), got dtype {mask.dtype}; "
            "convert it first, e.g. `mask.bool()`"
        )
    if mask.shape != x.shape:
        raise ValueError(
            f"{fn}: `mask` must have the shape of `{name}` {tuple(x.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    return mask.to(x.device)


def check_tol(tol: object, fn: str) -> float | None:
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"{fn}: `tol` must be None or a float in [0, 1), got {type(tol).__name__}")
    if not 0.0 <= float(tol) < 1.0:
        raise ValueError(f"{fn}: `tol` must be None or lie in [0, 1), got {tol!r}")
    return float(tol)


def check_k(k: object, x: Tensor, d: int, fn: str) -> int:
    n = x.shape[d]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(
            f"{fn}: `k` must be an int in 1..{n} (the size of dim={d} of `scores` with "
            f"shape {tuple(x.shape)}), got {k!r}"
        )
    return k
