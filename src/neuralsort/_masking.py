"""Ragged rows (``mask=``): each row's real elements, grouped by their number, go through the
operator alone and are placed back; padding gets no mass and no gradient."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import check_mask, is_transformed


def real_mask(mask: object, x: Tensor, name: str, fn: str) -> Tensor | None:
    """The checked ``mask``, or ``None`` when there is none or every element is real."""
    m = check_mask(mask, x, name, fn)
    if m is not None and is_transformed(m):
        raise ValueError(
            f"{fn}: a `mask` batched by torch.func.vmap cannot be used (the real elements are "
            "grouped by their number, a data-dependent choice); pass the same unbatched mask "
            "for every sample, or loop over the samples"
        )
    if m is None or bool(m.all()):
        return None
    return m


def masked_apply(
    x: Tensor, mask: Tensor, op: Callable[[Tensor, Tensor], Tensor], tail: tuple[int, ...]
) -> Tensor:
    """Apply ``op`` to the real elements of every row of ``x`` alone (the sorted axis last).

    Rows are grouped by their number ``L`` of real elements; for each distinct ``L`` the rows of
    that length have their real elements gathered to the front in their original order
    (``xs``, ``(b, L)``, with their positions ``idx`` in ``0..n-1``) and ``op(xs, idx)`` returns
    the placed result ``(b, *tail)``. Rows with no real element give zeros (and zero gradients).
    Padded values never reach ``op`` (they are replaced by 0 first, so neither an infinite nor a
    NaN padding value leaks into values or gradients). Returns ``(*batch, *tail)``.
    """
    batch, n = x.shape[:-1], x.shape[-1]
    xf = torch.where(mask, x, x.new_zeros(())).reshape(-1, n)
    mf = mask.reshape(-1, n)
    lengths = mf.sum(dim=-1)
    # stable: real elements first, each group in its original order
    front = torch.sort((~mf).to(torch.uint8), dim=-1, stable=True).indices
    pieces, rows = [], []
    for length in torch.unique(lengths).tolist():
        sel = (lengths == length).nonzero().squeeze(1)
        if length == 0:
            zero = xf.index_select(0, sel).sum(dim=-1)  # all zeros, but on the autograd graph
            piece = zero.reshape(-1, *([1] * len(tail))).expand(-1, *tail)
        else:
            idx = front.index_select(0, sel)[:, :length]
            piece = op(xf.index_select(0, sel).gather(-1, idx), idx)
        pieces.append(piece)
        rows.append(sel)
    perm = torch.cat(rows)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    out = torch.cat(pieces).index_select(0, inverse)
    return out.reshape(*batch, *tail)


def scatter_columns(piece: Tensor, idx: Tensor, n: int) -> Tensor:
    """``(b, ..., L)`` values of the real elements -> ``(b, ..., n)``, zero at padded ones."""
    index = idx.reshape(idx.shape[0], *([1] * (piece.dim() - 2)), idx.shape[1]).expand_as(piece)
    return piece.new_zeros((*piece.shape[:-1], n)).scatter(-1, index, piece)


def pad_axis(piece: Tensor, axis: int, size: int) -> Tensor:
    """Zero-pad axis ``axis`` of ``piece`` at its end up to ``size``."""
    missing = size - piece.shape[axis]
    if missing == 0:
        return piece
    shape = list(piece.shape)
    shape[axis] = missing
    return torch.cat((piece, piece.new_zeros(shape)), dim=axis)
