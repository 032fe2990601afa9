"""Chunked hard-kNN evaluation against a brute-force reference."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from neuralsort.experiments.knn_eval import embed, knn_accuracy, knn_neighbors, knn_predict


def brute_force_predict(query: np.ndarray, keys: np.ndarray, labels: np.ndarray, k: int):
    """Full distance matrix, stable sort, majority vote; ties -> class of the nearest tied."""
    d = ((query[:, None, :] - keys[None, :, :]) ** 2).sum(-1)
    out = []
    for row in d:
        order = np.argsort(row, kind="stable")[:k]
        votes = Counter(labels[order].tolist())
        top = max(votes.values())
        tied = {c for c, v in votes.items() if v == top}
        out.append(next(int(labels[j]) for j in order if labels[j] in tied))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_predict_matches_brute_force(k):
    g = torch.Generator().manual_seed(k)
    keys = torch.randn(203, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (203,), generator=g)
    query = torch.randn(57, 6, generator=g, dtype=torch.float64)
    pred = knn_predict(query, keys, labels, k, num_classes=4, query_chunk=10, key_chunk=16)
    ref = brute_force_predict(query.numpy(), keys.numpy(), labels.numpy(), k)
    assert np.array_equal(pred.numpy(), ref)
    idx, _ = knn_neighbors(query, keys, k, query_chunk=7, key_chunk=5)
    ref_idx = torch.cdist(query, keys).topk(k, largest=False).indices
    assert torch.equal(idx, ref_idx)


def test_tie_goes_to_nearest_class():
    keys = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    labels = torch.tensor([2, 0, 0, 2])
    # nearest to 0.1: labels 2, 0, 0, 2 -> 2 votes each, class 2 has the nearest member
    assert knn_predict(torch.tensor([[0.1]]), keys, labels, 4).item() == 2
    assert knn_predict(torch.tensor([[1.4]]), keys, labels, 4).item() == 0
    acc = knn_accuracy(torch.tensor([[0.1], [1.4]]), torch.tensor([2, 2]), keys, labels, 4)
    assert acc == 0.5


def test_knn_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        knn_neighbors(torch.zeros(2, 3), torch.zeros(4, 3), 5)
    with pytest.raises(ValueError, match="share D"):
        knn_neighbors(torch.zeros(2, 3), torch.zeros(4, 2), 1)


def test_embed_flip_sums_the_embeddings_of_each_image_and_its_mirror():
    """``flip`` gives f(x) + f(mirror x) for a net that tells left from right, in any batch size;
    the net is put back in training mode."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(12, 4))
    net.train()
    x = torch.randn(7, 2, 4, 4)
    with torch.no_grad():
        want = net(x) + net(x.flip(3))
        plain = net(x)
    for bs in (1, 3, 7):
        got = embed(net, x, batch_size=bs, flip=True, channels_last=bs == 3)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(embed(net, x, batch_size=bs), plain)
    assert not torch.allclose(want, 2 * plain)  # the mirror image really embeds differently
    assert net.training
