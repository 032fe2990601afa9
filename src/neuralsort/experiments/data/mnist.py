"""MNIST and Fashion-MNIST from the four standard IDX files (gzipped or not).

Files expected in one folder::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

IDX format: a big-endian header ``0x00 0x00 <type code> <ndim>`` (magic 2051 for uint8 images with
3 dimensions, 2049 for uint8 labels with 1 dimension), then one big-endian int32 per dimension,
then the raw bytes.
"""

from __future__ import annotations

import gzip
import pathlib
import struct

import numpy as np
import torch

__all__ = ["IDX_FILES", "read_idx", "find_idx_file", "load_mnist_folder"]

# split -> (images stem, labels stem)
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_MAGIC_IMAGES = 2051
_MAGIC_LABELS = 2049


def find_idx_file(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    """Return ``folder/stem.gz`` or ``folder/stem`` (or the ``stem.idx3-ubyte`` spelling)."""
    for name in (
        stem + ".gz",
        stem,
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        p = folder / name
        if p.is_file():
            return p
    return None


def read_idx(path: str | pathlib.Path, expected_magic: int) -> np.ndarray:
    """Read one uint8 IDX file (gzipped when its name ends in ``.gz``) into a numpy array.

    Raises:
        ValueError: if the magic number is not ``expected_magic`` or the file is truncated.
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read ({exc}); is it a complete IDX file?") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected_magic:
        raise ValueError(
            f"{path}: bad IDX magic number {magic} (expected {expected_magic}); "
            "the file is not the expected MNIST-format file"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - header != count:
        raise ValueError(
            f"{path}: holds {len(raw) - header} data bytes but its header says {dims} = {count}; "
            "the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist_folder(
    folder: str | pathlib.Path,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load the four IDX files in ``folder``.

    Returns:
        ``train_images (N, 28, 28) uint8, train_labels (N,) int64, test_images, test_labels``.

    Raises:
        FileNotFoundError: naming the first missing file.
        ValueError: on a bad magic number or inconsistent image/label counts.
    """
    folder = pathlib.Path(folder)
    out: list[torch.Tensor] = []
    for split, (img_stem, lbl_stem) in IDX_FILES.items():
        img_path = find_idx_file(folder, img_stem)
        lbl_path = find_idx_file(folder, lbl_stem)
        for stem, p in ((img_stem, img_path), (lbl_stem, lbl_path)):
            if p is None:
                raise FileNotFoundError(str(folder / (stem + ".gz")))
        images = read_idx(img_path, _MAGIC_IMAGES)
        labels = read_idx(lbl_path, _MAGIC_LABELS)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
        out.append(torch.from_numpy(images.copy()))
        out.append(torch.from_numpy(labels.astype(np.int64)))
    return out[0], out[1], out[2], out[3]
