"""Fixtures shared by the experiments' tests."""

import gzip
import struct

import pytest
import torch


def write_idx(path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as a gzipped IDX file (magic 2051 for images, 2049 for labels)."""
    a = array.to(torch.uint8).contiguous()
    header = struct.pack(">I", 0x0800 | a.dim()) + struct.pack(">" + "I" * a.dim(), *a.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(a.flatten().tolist()))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """60 training and 30 test 8x8 'digit' images: digit d is a bar at row d plus noise."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "mnist"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for stem, num in (("train", 60), ("t10k", 30)):
        labels = torch.arange(num) % 10
        images = torch.randint(0, 60, (num, 8, 8), generator=g)
        images[torch.arange(num), (labels * 8) // 10, :] = 255
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return root
