"""scikit-learn's bundled 8x8 handwritten digits: a data set that needs no download.

1,797 grayscale 8x8 images with values 0..16 and labels 0..9. The split is fixed: a stratified
80/20 train/test split drawn with seed 0, identical on every machine.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["load_digits_split"]


def load_digits_split(
    test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``train_images (N, 1, 8, 8) uint8 (0..16), train_labels, test_images, test_labels``.

    The split is stratified by class and depends only on ``test_fraction`` and ``seed``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    test_idx: list[np.ndarray] = []
    train_idx: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * idx.size))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = np.sort(np.concatenate(train_idx))
    te = np.sort(np.concatenate(test_idx))
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    return x[tr], y[tr], x[te], y[te]
