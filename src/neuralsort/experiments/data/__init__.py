"""Data sets for the experiments: one entry point, :func:`load_dataset`.

Names: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``digits`` (scikit-learn's bundled
8x8 digits, needs no files) and ``imagefolder:PATH`` (``PATH/train/<class>/*``, ``PATH/test/...``).

Files are looked for in ``data_dir`` (the ``--data_dir`` flag) or else in ``$NEURALSORT_DATA`` and
``./data``; in each, sub-folders named like the data set are tried first (``mnist/``,
``fashion-mnist/``, ``cifar-10-batches-py/``, torchvision's ``MNIST/raw/`` ...), then the folder
itself. If the files are missing and torchvision is installed, it is asked to download them (this
needs a network); otherwise a :class:`~neuralsort.experiments.config.UserError` says which files to
get and from where.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import torch

from ..config import UserError
from .cifar import (
    CIFAR10_FILES,
    CIFAR10_JPEG_ARCHIVE,
    CIFAR100_FILES,
    load_cifar10_jpeg,
    load_cifar_folder,
)
from .digits import load_digits_split
from .imagefolder import load_image_folder
from .mnist import IDX_FILES, load_mnist_folder

__all__ = [
    "DATASETS",
    "VAL_SIZES",
    "load_dataset",
    "load_raw_dataset",
    "candidate_dirs",
    "normalize",
    "split_for_run",
    "fixed_sample",
    "train_val_split",
]

DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "digits", "imagefolder:PATH")

_SUBDIRS: dict[str, list[str]] = {
    "mnist": ["mnist", "MNIST/raw", "mnist/MNIST/raw", "MNIST", ""],
    "fashion-mnist": [
        "fashion-mnist",
        "fashion_mnist",
        "FashionMNIST/raw",
        "fashion-mnist/FashionMNIST/raw",
        "FashionMNIST",
        "",
    ],
    "cifar10": [
        "cifar-10-batches-py",
        "cifar10/cifar-10-batches-py",
        "cifar10",
        "cifar10-jpeg",
        "",
    ],
    "cifar100": ["cifar-100-python", "cifar100/cifar-100-python", "cifar100", ""],
}

_SOURCES = {
    "mnist": "https://yann.lecun.com/exdb/mnist/ (mirror: https://ossci-datasets.s3.amazonaws.com/mnist/)",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion)",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (untar it)",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (untar it)",
}

# Validation images held out of the training split (the paper's 55k/5k and 45k/5k; a quarter of
# the 1,438 digits, so that one image is 0.28% of validation accuracy). An image folder holds out
# a tenth of its training images, at most 5,000.
VAL_SIZES = {"mnist": 5000, "fashion-mnist": 5000, "cifar10": 5000, "cifar100": 5000, "digits": 360}


def candidate_dirs(data_dir: str | os.PathLike | None) -> list[pathlib.Path]:
    """Base folders searched: ``data_dir`` if given, else ``$NEURALSORT_DATA`` and ``./data``."""
    if data_dir:
        return [pathlib.Path(data_dir).expanduser()]
    out = []
    env = os.environ.get("NEURALSORT_DATA")
    if env:
        out.append(pathlib.Path(env).expanduser())
    out.append(pathlib.Path("data"))
    return out


def _expected_files(name: str) -> list[str]:
    if name in ("mnist", "fashion-mnist"):
        return [stem + ".gz" for pair in IDX_FILES.values() for stem in pair]
    files = CIFAR10_FILES if name == "cifar10" else CIFAR100_FILES
    return [*files["train"], *files["test"]]


def _try_load(name: str, folder: pathlib.Path) -> Any:
    if name in ("mnist", "fashion-mnist"):
        return load_mnist_folder(folder)
    if name == "cifar100":
        return load_cifar_folder(folder, num_classes=100)
    try:
        return load_cifar_folder(folder, num_classes=10)
    except FileNotFoundError:
        pass
    try:  # the image-folder copy, unpacked or as its archive
        loaded = load_cifar10_jpeg(folder)
    except FileNotFoundError:
        raise FileNotFoundError(str(folder / CIFAR10_FILES["train"][0])) from None
    tx, sx, classes = loaded[0], loaded[2], loaded[4]
    if len(classes) != 10 or tx.shape[1:] != (3, 32, 32) or sx.shape[1:] != (3, 32, 32):
        raise ValueError(f"{folder}: an image folder but not CIFAR-10 (10 classes of 32x32 RGB)")
    return loaded


def _torchvision_download(name: str, root: pathlib.Path) -> pathlib.Path | None:
    """Let torchvision download ``name`` under ``root``; return the folder of raw files or None."""
    try:
        import torchvision.datasets as tvd  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - not installed or broken: no download
        return None
    cls, sub = {
        "mnist": ("MNIST", "MNIST/raw"),
        "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw"),
        "cifar10": ("CIFAR10", "cifar-10-batches-py"),
        "cifar100": ("CIFAR100", "cifar-100-python"),
    }[name]
    try:
        for train in (True, False):
            getattr(tvd, cls)(str(root), train=train, download=True)
    except Exception:  # noqa: BLE001 - offline, read-only folder, ...: fall back to the message
        return None
    return root / sub


def load_raw_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Like :func:`load_dataset` but images stay uint8 ``(N, C, H, W)``, not normalised.

    ``info`` holds ``name, num_classes, in_channels, image_size, classes, source, val_size,
    max_value`` (255, or 16 for digits).
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    key = name.strip()
    lower = key.lower()
    info: dict[str, Any] = {"name": key}
    if lower == "digits":
        tx, ty, sx, sy = load_digits_split()
        classes = [str(i) for i in range(10)]
        info.update(source="sklearn.datasets.load_digits", max_value=16)
        info["val_size"] = VAL_SIZES["digits"]
    elif lower.startswith("imagefolder:"):
        path = pathlib.Path(key.split(":", 1)[1]).expanduser()
        if not str(path) or str(path) == ".":
            raise UserError("--dataset imagefolder:PATH needs a folder, e.g. imagefolder:./pets")
        tries = [path] + (
            [pathlib.Path(data_dir) / path] if data_dir and not path.is_absolute() else []
        )
        root = next((p for p in tries if (p / "train").is_dir() and (p / "test").is_dir()), None)
        if root is None:
            raise UserError(
                f"image folder {path} not found or incomplete: expected "
                f"{path}/train/<class>/*.jpg|png "
                f"and {path}/test/<class>/*.jpg|png (one sub-folder per class)"
            )
        try:
            tx, ty, sx, sy, classes = load_image_folder(root)
        except FileNotFoundError as exc:
            raise UserError(f"image folder {root}: missing {exc}") from None
        except ValueError as exc:
            raise UserError(str(exc)) from None
        info.update(source=str(root), max_value=255)
        info["val_size"] = min(5000, max(1, tx.shape[0] // 10))
    elif lower in _SUBDIRS:
        key = lower
        info["name"] = key
        tried: list[pathlib.Path] = []
        loaded = None
        problems: list[str] = []
        for base in candidate_dirs(data_dir):
            for sub in _SUBDIRS[key]:
                folder = base / sub if sub else base
                if not folder.is_dir() or folder in tried:
                    continue
                tried.append(folder)
                try:
                    loaded = _try_load(key, folder)
                except FileNotFoundError:
                    continue
                except ValueError as exc:
                    problems.append(str(exc))
                    continue
                info["source"] = str(folder)
                break
            if loaded is not None:
                break
        if loaded is None and download:
            root = candidate_dirs(data_dir)[0]
            folder = _torchvision_download(key, root)
            if folder is not None:
                try:
                    loaded = _try_load(key, folder)
                    info["source"] = str(folder)
                except (FileNotFoundError, ValueError):
                    loaded = None
        if loaded is None:
            where = ", ".join(
                str(p) if p.is_absolute() else f"./{p}" for p in candidate_dirs(data_dir)
            )
            msg = (
                f"data set '{key}' not found (searched {where} and their sub-folders "
                f"{', '.join(s + '/' for s in _SUBDIRS[key] if s)}): expected the files "
                f"{', '.join(_expected_files(key))}. Get them from {_SOURCES[key]}, put them in "
                "one folder and pass --data_dir FOLDER (or set NEURALSORT_DATA)."
            )
            if problems:
                msg += " Files found but unreadable: " + "; ".join(problems)
            if key == "cifar10":
                msg += (
                    " An image-folder copy (train/<class>/*.jpg, test/<class>/*.jpg) is also "
                    f"found there, unpacked or as {CIFAR10_JPEG_ARCHIVE}."
                )
            elif key.startswith("cifar"):
                msg += " An image-folder copy can be used with --dataset imagefolder:PATH."
            raise UserError(msg)
        if key in ("mnist", "fashion-mnist"):
            tx, ty, sx, sy = loaded
            _check_not_the_other(key, tx, info["source"])
            tx, sx = tx.unsqueeze(1), sx.unsqueeze(1)
            classes = [str(i) for i in range(10)]
        else:
            tx, ty, sx, sy, classes = loaded
        info["max_value"] = 255
        info["val_size"] = VAL_SIZES[key]
    else:
        raise UserError(f"unknown --dataset {name!r}; choose one of {', '.join(DATASETS)}")
    info.update(
        num_classes=len(classes),
        classes=classes,
        in_channels=int(tx.shape[1]),
        image_size=(int(tx.shape[2]), int(tx.shape[3])),
        num_train=int(tx.shape[0]),
        num_test=int(sx.shape[0]),
    )
    return tx, ty, sx, sy, info


def normalize(
    train_x: torch.Tensor, test_x: torch.Tensor, max_value: float
) -> tuple[torch.Tensor, torch.Tensor, list[float], list[float]]:
    """Scale to [0, 1] then standardise each channel with the training split's mean and std."""
    tr = train_x.to(torch.float32).div_(max_value)
    te = test_x.to(torch.float32).div_(max_value)
    mean = tr.mean(dim=(0, 2, 3), dtype=torch.float64)
    sq = tr.square().mean(dim=(0, 2, 3), dtype=torch.float64)
    std = (sq - mean.square()).clamp_min(1e-12).sqrt()
    m = mean.to(torch.float32).view(1, -1, 1, 1)
    s = std.to(torch.float32).view(1, -1, 1, 1)
    tr.sub_(m).div_(s)
    te.sub_(m).div_(s)
    return tr, te, mean.tolist(), std.tolist()


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Load a data set as normalised float tensors.

    Args:
        name: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``digits`` or
            ``imagefolder:PATH``.
        data_dir: folder to search (default ``$NEURALSORT_DATA``, then ``./data``).
        download: allow a torchvision download when the files are missing.

    Returns:
        ``train_x (N, C, H, W) float32, train_y (N,) int64, test_x, test_y, info``; the images
        are standardised per channel with the training split's statistics (``info["mean"]``,
        ``info["std"]``). ``info`` also holds ``num_classes, in_channels, image_size, classes,
        source, val_size``.

    Raises:
        UserError: unknown name, or files missing with no way to download them.
    """
    tx, ty, sx, sy, info = load_raw_dataset(name, data_dir, download=download)
    trf, tef, mean, std = normalize(tx, sx, float(info["max_value"]))
    info.update(mean=mean, std=std)
    return trf, ty, tef, sy, info


# Mean pixel (0-255) of the 60,000 training images: MNIST and Fashion-MNIST share their file
# names, so a folder of one can be read as the other.
_MEAN_PIXEL = {"mnist": 33.3, "fashion-mnist": 72.9}


def _check_not_the_other(key: str, images: torch.Tensor, source: str) -> None:
    """UserError when the full 60,000-image training set in ``source`` is the other data set."""
    if images.shape[0] != 60_000 or images.dtype != torch.uint8:
        return  # only the full data sets are told apart (smaller stand-ins are not)
    mean = float(images.float().mean())
    nearest = min(_MEAN_PIXEL, key=lambda k: abs(_MEAN_PIXEL[k] - mean))
    if nearest != key:
        raise UserError(
            f"--dataset {key}: the files in {source} look like {nearest} (mean pixel {mean:.1f}; "
            f"{key}'s is {_MEAN_PIXEL[key]}, {nearest}'s {_MEAN_PIXEL[nearest]}); point "
            f"--data_dir at the folder that holds {key}'s own files (e.g. DIR/{key}/)"
        )


def split_for_run(
    cfg: dict[str, Any], num_train: int, info: dict[str, Any], *, keep: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_val_split` with ``--val_size`` (``info["val_size"]``, the data set's, when
    None), leaving at least ``keep`` training images; UserError naming the flag otherwise."""
    val_size = info["val_size"] if cfg.get("val_size") is None else cfg["val_size"]
    top = num_train - keep
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 < val_size <= top:
        raise UserError(
            f"--val_size must be an integer in 1..{top} ({num_train} training images, at least "
            f"{keep} kept for training), got {val_size!r}"
        )
    return train_val_split(num_train, val_size)


def train_val_split(
    num_train: int, val_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a fixed train/validation split: ``val_size`` of ``num_train`` held out.

    The split depends only on ``seed`` (not on the run's seed), so every run of a data set
    validates on the same images.
    """
    if not 0 < val_size < num_train:
        raise ValueError(f"val_size must be in (0, {num_train}), got {val_size}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_train, generator=g)
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def fixed_sample(indices: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """``size`` of ``indices`` drawn at random, in ascending order, the same ones at every call
    (all of them when ``size`` is larger). Not the first ``size``: an image folder is stored class
    by class, so its first images are all of its first classes."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(indices.numel(), generator=g)[:size]
    return indices[pick.sort().values]
