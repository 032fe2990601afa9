"""Data loaders on tiny files written in each standard format by the tests themselves."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from neuralsort.experiments.cli import main as cli_main
from neuralsort.experiments.config import UserError
from neuralsort.experiments.data import load_dataset, load_raw_dataset, train_val_split
from neuralsort.experiments.data.mnist import read_idx

RNG = np.random.default_rng(0)


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def write_mnist(folder, n_train=12, n_test=5, gz=True, magic=2051):
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train": (
            RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            RNG.integers(0, 10, n_train, dtype=np.uint8),
        ),
        "t10k": (
            RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            RNG.integers(0, 10, n_test, dtype=np.uint8),
        ),
    }
    for split, (x, y) in data.items():
        for stem, arr, mg in (
            (f"{split}-images-idx3-ubyte", x, magic),
            (f"{split}-labels-idx1-ubyte", y, 2049),
        ):
            raw = _idx_bytes(arr, mg)
            if gz:
                with gzip.open(folder / (stem + ".gz"), "wb") as f:
                    f.write(raw)
            else:
                (folder / stem).write_bytes(raw)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_roundtrip(tmp_path, gz):
    data = write_mnist(tmp_path / "mnist", gz=gz)
    tx, ty, sx, sy, info = load_raw_dataset("mnist", tmp_path, download=False)
    assert tx.shape == (12, 1, 28, 28) and tx.dtype == torch.uint8
    assert np.array_equal(tx[:, 0].numpy(), data["train"][0])
    assert np.array_equal(sy.numpy(), data["t10k"][1].astype(np.int64)) and sy.dtype == torch.int64
    assert info["num_classes"] == 10 and info["source"] == str(tmp_path / "mnist")


def test_mnist_bad_magic_and_truncation(tmp_path):
    write_mnist(tmp_path / "bad", magic=2049)  # image files carry the label magic
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad" / "train-images-idx3-ubyte.gz", 2051)
    with pytest.raises(UserError, match="magic"):
        load_dataset("mnist", tmp_path / "bad", download=False)
    p = tmp_path / "trunc"
    p.write_bytes(_idx_bytes(np.zeros((3, 2, 2), np.uint8), 2051)[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p, 2051)


def test_fashion_mnist_subfolder_and_env(tmp_path, monkeypatch):
    write_mnist(tmp_path / "fashion-mnist", n_train=7)
    monkeypatch.setenv("NEURALSORT_DATA", str(tmp_path))
    tx, ty, sx, sy, info = load_dataset("fashion-mnist", None, download=False)
    assert tx.shape == (7, 1, 28, 28) and tx.dtype == torch.float32
    assert abs(tx.mean().item()) < 1e-5 and abs(tx.std(unbiased=False).item() - 1) < 1e-4


def _write_cifar(folder, files, label_key, n, num_classes, meta, names_key):
    folder.mkdir(parents=True)
    arrays = []
    for name in files:
        x = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = RNG.integers(0, num_classes, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, label_key: y, b"batch_label": b"x"}, f)
        arrays.append((x, y))
    with open(folder / meta, "wb") as f:
        pickle.dump({names_key: [f"c{i}".encode() for i in range(num_classes)]}, f)
    return arrays


def test_cifar10_and_cifar100(tmp_path):
    files10 = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    a10 = _write_cifar(
        tmp_path / "cifar-10-batches-py", files10, b"labels", 4, 10, "batches.meta", b"label_names"
    )
    tx, ty, sx, sy, info = load_raw_dataset("cifar10", tmp_path, download=False)
    assert tx.shape == (20, 3, 32, 32) and sx.shape == (4, 3, 32, 32)
    # channel planes: the first 1024 bytes of a row are the red plane
    assert np.array_equal(tx[0, 0].numpy().ravel(), a10[0][0][0, :1024])
    assert ty[:4].tolist() == a10[0][1] and info["classes"][3] == "c3"

    a100 = _write_cifar(
        tmp_path / "c100" / "cifar-100-python",
        ["train", "test"],
        b"fine_labels",
        6,
        100,
        "meta",
        b"fine_label_names",
    )
    tx, ty, sx, sy, info = load_dataset("cifar100", tmp_path / "c100", download=False)
    assert info["num_classes"] == 100 and tx.shape == (6, 3, 32, 32)
    assert sy.tolist() == a100[1][1]


def test_cifar_refuses_code_in_pickle(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name in ("train", "test"):
        with open(d / name, "wb") as f:
            pickle.dump(
                {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0], "evil": print}, f
            )
    with pytest.raises(UserError, match="refusing"):
        load_dataset("cifar100", tmp_path, download=False)


def test_imagefolder(tmp_path, monkeypatch):
    from PIL import Image

    root = tmp_path / "pets"
    sizes = {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 2}}
    for split, classes in sizes.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                ext = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(arr).save(root / split / cls / f"{i}.{ext}")
    # one odd-sized image is resized to the common size
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "train" / "dog" / "big.png")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    cache = tmp_path / "cache"
    monkeypatch.setenv("NEURALSORT_CACHE_DIR", str(cache))
    tx, ty, sx, sy, info = load_raw_dataset(f"imagefolder:{root}")
    assert tx.shape == (6, 3, 10, 12) and sx.shape == (3, 3, 10, 12)
    assert ty.tolist() == [0, 0, 0, 1, 1, 1] and sy.tolist() == [0, 1, 1]
    assert info["classes"] == ["cat", "dog"] and info["in_channels"] == 3
    assert list(cache.glob("*.pt")), "decoded tensors should be cached"
    tx2, *_ = load_raw_dataset(f"imagefolder:{root}")  # from the cache
    assert torch.equal(tx, tx2)
    png = np.asarray(Image.open(root / "train" / "cat" / "0.png"))
    assert np.array_equal(tx[0].permute(1, 2, 0).numpy(), png)
    with pytest.raises(UserError, match="train/<class>"):
        load_dataset(f"imagefolder:{tmp_path / 'nothing'}")


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
CIFAR10_CLASSES += ["dog", "frog", "horse", "ship", "truck"]


def _write_cifar10_jpeg(root, n_train=2, n_test=1):
    """A tiny CIFAR-10 image-folder copy (32x32 JPEGs, every class) under ``root``."""
    from PIL import Image

    for split, n in (("train", n_train), ("test", n_test)):
        for cls in CIFAR10_CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i:04d}.jpg")


def test_cifar10_jpeg_archive_is_decoded_once(tmp_path, monkeypatch):
    """``cifar10`` finds the JPEG copy's archive; it is decoded like the unpacked copy, once."""
    import os
    import tarfile

    copy = tmp_path / "unpacked"
    _write_cifar10_jpeg(copy)
    data = tmp_path / "data"
    data.mkdir()
    archive = data / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("test", "train"):  # members out of order: the loader sorts them
            tar.add(copy / split, arcname=split)
    cache = tmp_path / "cache"
    monkeypatch.setenv("NEURALSORT_CACHE_DIR", str(cache))
    tx, ty, sx, sy, info = load_raw_dataset("cifar10", data, download=False)
    assert tx.shape == (20, 3, 32, 32) and sx.shape == (10, 3, 32, 32) and tx.dtype == torch.uint8
    assert ty.tolist() == [c for c in range(10) for _ in range(2)] and sy.tolist() == list(
        range(10)
    )
    assert info["classes"] == CIFAR10_CLASSES and info["num_classes"] == 10
    # the same pixels as the unpacked copy read as an image folder
    fx, fy, fsx, fsy, _ = load_raw_dataset(f"imagefolder:{copy}")
    assert torch.equal(tx, fx) and torch.equal(sx, fsx) and torch.equal(ty, fy)
    cached = sorted(cache.glob("cifar10-jpeg-*.pt"))
    assert len(cached) == 1
    # a second load reads the cache file: make the archive unreadable to prove it
    saved = archive.read_bytes()
    stat = archive.stat()
    archive.write_bytes(b"x" * len(saved))
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    tx2, *_ = load_raw_dataset("cifar10", data, download=False)
    assert torch.equal(tx, tx2)
    # a changed archive (new modification time) is decoded again, into a new cache file
    archive.write_bytes(saved)
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    tx3, *_ = load_raw_dataset("cifar10", data, download=False)
    assert torch.equal(tx, tx3) and len(list(cache.glob("cifar10-jpeg-*.pt"))) == 2
    # the unpacked copy in a data folder is found too
    tx4, *_ = load_raw_dataset("cifar10", copy, download=False)
    assert torch.equal(tx, tx4)


def test_cifar10_jpeg_rejects_other_folders(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("NEURALSORT_CACHE_DIR", str(tmp_path / "cache"))
    for split in ("train", "test"):
        (tmp_path / "pets" / split / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(
            tmp_path / "pets" / split / "cat" / "0.png"
        )
    with pytest.raises(UserError, match="not CIFAR-10"):
        load_raw_dataset("cifar10", tmp_path / "pets", download=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cifar10-jpeg.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not a readable image archive"):
        load_raw_dataset("cifar10", tmp_path / "bad", download=False)


def test_digits_fixed_split():
    tx, ty, sx, sy, info = load_dataset("digits")
    assert tx.shape[1:] == (1, 8, 8) and tx.shape[0] + sx.shape[0] == 1797
    tx2, ty2, *_ = load_dataset("digits")
    assert torch.equal(ty, ty2) and torch.equal(tx, tx2)
    assert set(sy.tolist()) == set(range(10))


def test_missing_data_message_and_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NEURALSORT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        load_dataset("mnist", tmp_path / "empty", download=False)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "--data_dir" in msg and "http" in msg
    rc = cli_main(
        [
            "dknn",
            "--dataset",
            "cifar10",
            "--data_dir",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err_text = capsys.readouterr().err
    assert rc == 2 and "data_batch_1" in err_text and "Traceback" not in err_text
    assert "cifar10-jpeg.tar.gz" in err_text
    assert len(err_text.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists(), "a failed start should not leave an empty run folder"
    with pytest.raises(UserError, match="unknown --dataset"):
        load_dataset("svhn")


def test_train_val_split_is_fixed_and_disjoint():
    a_tr, a_va = train_val_split(100, 10)
    b_tr, b_va = train_val_split(100, 10)
    assert torch.equal(a_va, b_va) and len(a_va) == 10 and len(a_tr) == 90
    assert len(set(a_tr.tolist()) | set(a_va.tolist())) == 100
    with pytest.raises(ValueError, match="val_size"):
        train_val_split(10, 10)


def test_mnist_and_fashion_mnist_files_are_told_apart():
    from neuralsort.experiments.data import _check_not_the_other

    fashion_like = torch.full((60_000, 28, 28), 73, dtype=torch.uint8)
    with pytest.raises(UserError, match=r"--dataset mnist: the files in /d look like fashion"):
        _check_not_the_other("mnist", fashion_like, "/d")
    _check_not_the_other("fashion-mnist", fashion_like, "/d")
    _check_not_the_other("mnist", fashion_like[:100], "/d")  # stand-ins are not judged
