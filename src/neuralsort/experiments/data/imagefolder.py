"""Any image data set in the folder layout ``ROOT/train/<class>/*.png|jpg`` and ``ROOT/test/...``.

Class indices follow the sorted class-folder names of ``train/``. Images are decoded with Pillow;
all are converted to the mode of the first image (grayscale ``L`` or ``RGB``) and resized to its
size if they differ. Decoded tensors are cached (see :func:`load_image_folder`).
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
import torch

from ... import _native

__all__ = [
    "IMAGE_SUFFIXES",
    "load_image_folder",
    "default_cache_dir",
    "read_cache",
    "write_cache",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}


def default_cache_dir() -> pathlib.Path:
    """``$NEURALSORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/neuralsort``, else
    ``~/.cache/neuralsort`` (the folder that also holds the native operator's builds)."""
    return _native.cache_dir()


Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]


def read_cache(path: pathlib.Path) -> Split | None:
    """The decoded splits saved by :func:`write_cache`, or None if missing or unreadable."""
    if not path.is_file():
        return None
    try:
        c = torch.load(path, map_location="cpu", weights_only=True)
        return c["train_x"], c["train_y"], c["test_x"], c["test_y"], list(c["classes"])
    except Exception:  # noqa: BLE001 - a broken cache is simply rebuilt
        return None


def write_cache(path: pathlib.Path, loaded: Split) -> None:
    """Save decoded splits atomically; a folder that cannot be written is skipped silently."""
    tx, ty, sx, sy, classes = loaded
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        c = {"train_x": tx, "train_y": ty, "test_x": sx, "test_y": sy, "classes": classes}
        torch.save(c, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache location only costs decoding time next run


def _list_split(split_dir: pathlib.Path) -> dict[str, list[tuple[str, int, int]]]:
    """``{class: [(file path, size, mtime_ns), ...]}``, classes and files sorted by name."""
    classes: dict[str, list[tuple[str, int, int]]] = {}
    with os.scandir(split_dir) as it:
        class_dirs = sorted((e.name, e.path) for e in it if e.is_dir())
    for name, path in class_dirs:
        files = []
        with os.scandir(path) as it:
            for e in it:
                if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file():
                    st = e.stat()
                    files.append((e.path, st.st_size, st.st_mtime_ns))
        if files:
            files.sort()
            classes[name] = files
    return classes


def _fingerprint(
    root: pathlib.Path, listing: dict[str, dict[str, list[tuple[str, int, int]]]]
) -> str:
    h = hashlib.sha1(str(root.resolve()).encode())
    for split, classes in listing.items():
        for name, files in classes.items():
            h.update(f"{split}/{name}:".encode())
            h.update(repr(files).encode())
    return h.hexdigest()[:16]


def _decode(files: list[pathlib.Path], mode: str, size: tuple[int, int], desc: str) -> torch.Tensor:
    from PIL import Image

    from ..recipe import progress

    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), size[1], size[0], channels), dtype=np.uint8)
    for i, f in enumerate(progress(files, desc=desc, unit="img", total=len(files))):
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if im.size != size:
                    im = im.resize(size, Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as exc:
            raise ValueError(f"{f}: cannot decode image ({exc})") from None
        out[i] = arr.reshape(size[1], size[0], channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_image_folder(
    root: str | pathlib.Path, *, cache_dir: str | pathlib.Path | None = None, use_cache: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Load ``root/train`` and ``root/test`` image folders.

    Args:
        root: folder holding ``train/`` and ``test/``, each with one sub-folder per class.
        cache_dir: where decoded tensors are cached (default :func:`default_cache_dir`); the cache
            key covers every file's name, size and modification time.
        use_cache: set False to always decode.

    Returns:
        ``train_images (N, C, H, W) uint8, train_labels (N,) int64, test_images, test_labels,
        class_names``.

    Raises:
        FileNotFoundError: if ``train/`` or ``test/`` is missing or holds no images.
        ValueError: if ``test/`` has a class that ``train/`` lacks, or an image cannot be decoded.
    """
    from PIL import Image

    root = pathlib.Path(root)
    listing: dict[str, dict[str, list[tuple[str, int, int]]]] = {}
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            raise FileNotFoundError(str(d))
        listing[split] = _list_split(d)
        if not listing[split]:
            raise FileNotFoundError(f"{d}/<class>/*.png|jpg (no images found)")
    class_names = sorted(listing["train"])
    extra = sorted(set(listing["test"]) - set(class_names))
    if extra:
        raise ValueError(f"{root / 'test'}: classes {extra} do not exist in {root / 'train'}")

    cache_file = None
    if use_cache:
        cdir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache_file = cdir / f"imagefolder-{root.name}-{_fingerprint(root, listing)}.pt"
        cached = read_cache(cache_file)
        if cached is not None:
            return cached

    first = listing["train"][class_names[0]][0][0]
    with Image.open(first) as im:
        mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
        size = im.size
    tensors: list[torch.Tensor] = []
    for split in ("train", "test"):
        files: list[str] = []
        labels: list[int] = []
        for name, fs in listing[split].items():
            files.extend(f[0] for f in fs)
            labels.extend([class_names.index(name)] * len(fs))
        tensors.append(_decode(files, mode, size, desc=f"decoding {split} images"))
        tensors.append(torch.tensor(labels, dtype=torch.int64))

    loaded = (tensors[0], tensors[1], tensors[2], tensors[3], class_names)
    if cache_file is not None:
        write_cache(cache_file, loaded)
    return loaded
