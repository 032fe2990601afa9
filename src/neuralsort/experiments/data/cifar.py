"""CIFAR-10 and CIFAR-100 from the standard Python pickle layouts.

``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``.
``cifar-100-python/``: ``train``, ``test``, ``meta`` (the 100 *fine* labels are used).
Each batch is a pickled dict with ``data`` (N, 3072) uint8 rows (R, G, B planes of 32x32) and
``labels`` / ``fine_labels``.

The files are read with a restricted unpickler that only rebuilds numpy arrays and plain Python
containers, so a tampered file cannot run code.
"""

from __future__ import annotations

import pathlib
import pickle
from typing import Any

import numpy as np
import torch

__all__ = ["CIFAR10_FILES", "CIFAR100_FILES", "load_cifar_folder", "read_pickle"]

CIFAR10_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
    "meta": "batches.meta",
}
CIFAR100_FILES = {"train": ["train"], "test": ["test"], "meta": "meta"}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")


def read_pickle(path: pathlib.Path) -> dict[str, Any]:
    """Read one CIFAR batch file; keys are returned as ``str``."""
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable CIFAR pickle file ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _decode_names(names: Any) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_cifar_folder(
    folder: str | pathlib.Path, *, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Load ``cifar-10-batches-py`` (``num_classes=10``) or ``cifar-100-python`` (100).

    Returns:
        ``train_images (N, 3, 32, 32) uint8, train_labels (N,) int64, test_images, test_labels,
        class_names``.

    Raises:
        FileNotFoundError: naming the first missing file.
        ValueError: on malformed content.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    folder = pathlib.Path(folder)
    files = CIFAR10_FILES if num_classes == 10 else CIFAR100_FILES
    label_key = "labels" if num_classes == 10 else "fine_labels"
    out: list[torch.Tensor] = []
    for split in ("train", "test"):
        xs, ys = [], []
        for name in files[split]:
            p = folder / name
            if not p.is_file():
                raise FileNotFoundError(str(p))
            d = read_pickle(p)
            if "data" not in d or label_key not in d:
                raise ValueError(f"{p}: missing 'data' or '{label_key}' entry")
            data = np.asarray(d["data"], dtype=np.uint8)
            labels = np.asarray(d[label_key], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
                raise ValueError(f"{p}: data {data.shape} / labels {labels.shape} malformed")
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"{p}: labels outside 0..{num_classes - 1}")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        out.append(torch.from_numpy(np.concatenate(xs)))
        out.append(torch.from_numpy(np.concatenate(ys)))
    names = [str(i) for i in range(num_classes)]
    meta = folder / str(files["meta"])
    if meta.is_file():
        m = read_pickle(meta)
        key = "label_names" if num_classes == 10 else "fine_label_names"
        if key in m and len(m[key]) == num_classes:
            names = _decode_names(m[key])
    return out[0], out[1], out[2], out[3], names
