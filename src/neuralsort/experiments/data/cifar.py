"""CIFAR-10 and CIFAR-100 from the standard Python pickle layouts.

``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``.
``cifar-100-python/``: ``train``, ``test``, ``meta`` (the 100 *fine* labels are used).
Each batch is a pickled dict with ``data`` (N, 3072) uint8 rows (R, G, B planes of 32x32) and
``labels`` / ``fine_labels``.

The files are read with a restricted unpickler that only rebuilds numpy arrays and plain Python
containers, so a tampered file cannot run code.

CIFAR-10 can also come as an image-folder copy (``train/<class>/*.jpg``, ``test/<class>/*.jpg``),
unpacked or as the archive ``cifar10-jpeg.tar.gz``: :func:`load_cifar10_jpeg` decodes it once and
keeps the decoded images in a tensor file in the user cache folder, keyed by the source's path,
size and modification time (a changed source is decoded again). JPEG is lossy: accuracies on such
a copy are not the benchmark's.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pickle
import tarfile
from typing import Any

import numpy as np
import torch

from .imagefolder import (
    IMAGE_SUFFIXES,
    Split,
    default_cache_dir,
    load_image_folder,
    read_cache,
    write_cache,
)

__all__ = [
    "CIFAR10_FILES",
    "CIFAR100_FILES",
    "CIFAR10_JPEG_ARCHIVE",
    "load_cifar_folder",
    "load_cifar10_jpeg",
    "read_pickle",
]

# The archive name of the JPEG copy looked for in a data folder.
CIFAR10_JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"

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


def _archive_members(path: pathlib.Path) -> dict[str, dict[str, list[tuple[str, bytes]]]]:
    """``{split: {class: [(member name, bytes), ...]}}`` of the images in a ``.tar.gz``.

    A member counts when its path ends in ``train|test/<class>/<file>`` with an image suffix.
    """
    out: dict[str, dict[str, list[tuple[str, bytes]]]] = {"train": {}, "test": {}}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or len(parts) < 3 or parts[-3] not in out:
                    continue
                if os.path.splitext(parts[-1])[1].lower() not in IMAGE_SUFFIXES:
                    continue
                f = tar.extractfile(member)
                if f is not None:
                    out[parts[-3]].setdefault(parts[-2], []).append((member.name, f.read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable image archive ({exc})") from None
    return out


def _decode_archive(path: pathlib.Path) -> Split:
    """Decode every image of the archive: RGB ``uint8`` tensors, classes in sorted order."""
    from PIL import Image

    from ..recipe import progress

    members = _archive_members(path)
    classes = sorted(members["train"])
    if not classes or not members["test"]:
        raise FileNotFoundError(f"{path}: train/<class>/*.jpg and test/<class>/*.jpg")
    extra = sorted(set(members["test"]) - set(classes))
    if extra:
        raise ValueError(f"{path}: test classes {extra} do not exist in train/")
    out: list[Any] = []
    for split in ("train", "test"):
        items = [
            (name, data, classes.index(c))
            for c in sorted(members[split])
            for name, data in sorted(members[split][c])
        ]
        images = np.empty((len(items), 32, 32, 3), dtype=np.uint8)
        for i, (name, data, _) in enumerate(
            progress(items, desc=f"decoding {split} images", unit="img", total=len(items))
        ):
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im = im.convert("RGB")
                    if im.size != (32, 32):
                        raise ValueError(f"{im.size[0]}x{im.size[1]} pixels, not 32x32")
                    images[i] = np.asarray(im, dtype=np.uint8)
            except (OSError, ValueError) as exc:
                raise ValueError(f"{path}: {name}: cannot decode image ({exc})") from None
        out.append(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        out.append(torch.tensor([label for _, _, label in items], dtype=torch.int64))
    return out[0], out[1], out[2], out[3], classes


def load_cifar10_jpeg(
    folder: str | pathlib.Path, *, cache_dir: str | pathlib.Path | None = None
) -> Split:
    """CIFAR-10 from an image-folder copy in ``folder``, decoded once and cached.

    ``folder`` holds either ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (read by
    :func:`~.imagefolder.load_image_folder`, with its cache) or the archive
    :data:`CIFAR10_JPEG_ARCHIVE` of that layout. The archive's decoded images are saved to
    ``cache_dir`` (default: the user cache folder of
    :func:`~.imagefolder.default_cache_dir`) under a name made from the archive's resolved
    path, size and modification time; later loads read that file (under a second instead of a
    minute or two of decoding). A cache that cannot be written only costs decoding time.

    Returns:
        ``train_images (N, 3, 32, 32) uint8, train_labels (N,) int64, test_images,
        test_labels, class_names`` (the class folders' names, sorted).

    Raises:
        FileNotFoundError: if ``folder`` holds neither layout.
        ValueError: on an unreadable archive or image, or images that are not 32x32.
    """
    folder = pathlib.Path(folder)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return load_image_folder(folder, cache_dir=cache_dir)
    archive = folder / CIFAR10_JPEG_ARCHIVE
    if not archive.is_file():
        raise FileNotFoundError(str(archive))
    st = archive.stat()
    key = f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()
    cdir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cdir / f"cifar10-jpeg-{hashlib.sha1(key).hexdigest()[:16]}.pt"
    cached = read_cache(cache_file)
    if cached is not None:
        return cached
    loaded = _decode_archive(archive)
    write_cache(cache_file, loaded)
    return loaded
