"""Hard k-nearest-neighbour classification for evaluation, in chunks.

Squared distances come from one matrix product per chunk, ``|x|^2 - 2 q.x`` (the query's own
``|q|^2`` does not change its ranking), and each chunk keeps only its ``k`` smallest with
``torch.topk``, so memory is ``O(query_chunk x neighbor_chunk)``: never a queries x N x D tensor.

Prediction: the majority class among the ``k`` nearest; a tie goes to the tied class whose
nearest member is closest.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["knn_neighbors", "knn_predict", "knn_accuracy", "embed"]


def knn_neighbors(
    query: Tensor,
    keys: Tensor,
    k: int,
    *,
    query_chunk: int = 1024,
    key_chunk: int = 16384,
) -> tuple[Tensor, Tensor]:
    """Indices ``(Q, k)`` of the ``k`` nearest ``keys`` rows of each query row, nearest first.

    Also returns the matching squared distances up to the per-query constant ``|q|^2``.
    """
    if query.dim() != 2 or keys.dim() != 2 or query.shape[1] != keys.shape[1]:
        raise ValueError(
            f"knn_neighbors: query (Q, D) and keys (N, D) must share D, got "
            f"{tuple(query.shape)} and {tuple(keys.shape)}"
        )
    n = keys.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"knn_neighbors: k must be in 1..{n} (number of keys), got {k}")
    if query_chunk < 1 or key_chunk < 1:
        raise ValueError("knn_neighbors: query_chunk and key_chunk must be positive")
    keys_sq = keys.pow(2).sum(1)
    out_idx = []
    out_d = []
    for qs in range(0, query.shape[0], query_chunk):
        q = query[qs : qs + query_chunk]
        best_d: Tensor | None = None
        best_i: Tensor | None = None
        for ks in range(0, n, key_chunk):
            kb = keys[ks : ks + key_chunk]
            d = keys_sq[ks : ks + key_chunk].unsqueeze(0) - 2.0 * (q @ kb.T)
            kk = min(k, kb.shape[0])
            vals, idx = torch.topk(d, kk, dim=1, largest=False, sorted=True)
            idx = idx + ks
            if best_d is None:
                best_d, best_i = vals, idx
            else:
                cat_d = torch.cat([best_d, vals], 1)
                cat_i = torch.cat([best_i, idx], 1)
                vals2, pos = torch.topk(cat_d, min(k, cat_d.shape[1]), dim=1, largest=False)
                best_d, best_i = vals2, cat_i.gather(1, pos)
        out_d.append(best_d)
        out_idx.append(best_i)
    return torch.cat(out_idx), torch.cat(out_d)


def knn_predict(
    query: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    k: int,
    *,
    num_classes: int | None = None,
    query_chunk: int = 1024,
    key_chunk: int = 16384,
) -> Tensor:
    """Majority vote of the ``k`` nearest keys for each query: ``(Q,)`` int64 class indices."""
    if key_labels.shape != (keys.shape[0],):
        raise ValueError(
            f"knn_predict: key_labels must be ({keys.shape[0]},), got {tuple(key_labels.shape)}"
        )
    c = int(num_classes) if num_classes is not None else int(key_labels.max().item()) + 1
    idx, _ = knn_neighbors(query, keys, k, query_chunk=query_chunk, key_chunk=key_chunk)
    labels = key_labels.to(idx.device)[idx]  # (Q, k), nearest first
    votes = torch.zeros(labels.shape[0], c, device=labels.device, dtype=torch.float64)
    votes.scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.float64))
    # tie-break: the class whose nearest member has the smallest rank wins (bonus < 1 vote)
    kk = labels.shape[1]
    rank = torch.arange(kk, device=labels.device).expand_as(labels)
    first = torch.full_like(votes, float(kk))
    first.scatter_reduce_(1, labels, rank.to(torch.float64), reduce="amin")
    votes += (kk - first) / (kk + 1)
    return votes.argmax(1)


def knn_accuracy(
    query: Tensor,
    query_labels: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    k: int,
    *,
    num_classes: int | None = None,
    query_chunk: int = 1024,
) -> float:
    """Fraction of queries whose kNN prediction equals their label."""
    pred = knn_predict(query, keys, key_labels, k, num_classes=num_classes, query_chunk=query_chunk)
    return (pred.cpu() == query_labels.cpu()).double().mean().item()


def accuracy_by_k(
    pairs: dict[str, tuple[Tensor, Tensor]],
    keys: Tensor,
    key_labels: Tensor,
    ks: list[int],
    *,
    num_classes: int | None = None,
    query_chunk: int = 1024,
) -> dict[str, dict[str, float]]:
    """``{"<split>_acc_by_k": {"<k>": accuracy}}`` for each split's ``(queries, labels)`` in
    ``pairs`` against the same keys: one embedding, every k."""
    return {
        f"{split}_acc_by_k": {
            str(k): knn_accuracy(
                q, y, keys, key_labels, k, num_classes=num_classes, query_chunk=query_chunk
            )
            for k in ks
        }
        for split, (q, y) in pairs.items()
    }


def knn_split_metrics(
    pairs: dict[str, tuple[Tensor, Tensor]],
    keys: Tensor,
    key_labels: Tensor,
    k: int,
    eval_ks: list[int],
    *,
    num_classes: int | None = None,
    query_chunk: int = 1024,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Each split's kNN accuracy at ``k`` (``{"val": ..., "test": ...}``) and, with ``eval_ks``,
    :func:`accuracy_by_k` restricted to those k; every k classified once, from the same codes."""
    ks = sorted({k, *eval_ks})
    by_k = accuracy_by_k(
        pairs, keys, key_labels, ks, num_classes=num_classes, query_chunk=query_chunk
    )
    at_k = {split: by_k[f"{split}_acc_by_k"][str(k)] for split in pairs}
    extra = {
        name: {str(j): accs[str(j)] for j in eval_ks} for name, accs in by_k.items()
    } if eval_ks else {}  # fmt: skip
    return at_k, extra


@torch.no_grad()
def embed(
    model: nn.Module,
    x: Tensor,
    *,
    batch_size: int = 1000,
    device: torch.device | None = None,
    channels_last: bool = False,
    flip: bool = False,
) -> Tensor:
    """Embed ``x`` in eval mode, in batches; returns ``(N, D)`` float32 on ``device``.

    ``channels_last`` feeds 4-d batches in that memory format (faster convolutions on CPUs).
    ``flip`` (test-time flips) returns ``f(x) + f(mirror(x))``, ``mirror`` reversing the last
    (width) axis: the embedding of an image and of its mirror image, summed.
    """
    was_training = model.training
    model.eval()
    dev = device if device is not None else next(model.parameters()).device
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format

    def one(batch: Tensor) -> Tensor:
        return model(batch.contiguous(memory_format=fmt)).float()

    outs = []
    for i in range(0, x.shape[0], batch_size):
        batch = x[i : i + batch_size].to(dev, non_blocking=True)
        out = one(batch)
        if flip:
            out = out + one(batch.flip(-1))
        outs.append(out.contiguous())
    model.train(was_training)
    return torch.cat(outs)
