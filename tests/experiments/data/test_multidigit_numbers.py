"""The multi-digit MNIST number source: determinism, rendering, splits, evaluation sets."""

import pytest
import torch

from neuralsort.experiments.data.multidigit import (
    MultiDigitNumbers,
    digits_of,
    make_splits,
)


def fake_mnist(num: int, seed: int = 0, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images (every one different) with labels cycling through 0..9."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num, 1, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(num) % 10
    return images, labels


def test_digits_of_most_significant_first():
    v = torch.tensor([[0, 7, 1234], [9999, 1000, 42]])
    d = digits_of(v, 4)
    assert d.shape == (2, 3, 4)
    assert d[0, 2].tolist() == [1, 2, 3, 4]
    assert d[0, 0].tolist() == [0, 0, 0, 0]
    assert d[1, 2].tolist() == [0, 0, 4, 2]
    powers = torch.tensor([1000, 100, 10, 1])
    assert torch.equal((d * powers).sum(-1), v)


def test_same_seed_same_sequences_and_state_restore():
    images, labels = fake_mnist(200)
    a = MultiDigitNumbers(images, labels, seed=7)
    b = MultiDigitNumbers(images, labels, seed=7)
    c = MultiDigitNumbers(images, labels, seed=8)
    xa, va = a.sample_batch(3, 5)
    xb, vb = b.sample_batch(3, 5)
    xc, vc = c.sample_batch(3, 5)
    assert torch.equal(xa, xb) and torch.equal(va, vb)
    assert not torch.equal(va, vc)
    # the stream continues identically after saving and restoring the generator state
    state = a.state_dict()
    x1, v1 = a.sample_batch(2, 4)
    a.load_state_dict(state)
    x2, v2 = a.sample_batch(2, 4)
    assert torch.equal(x1, x2) and torch.equal(v1, v2)
    # consecutive batches differ
    assert not torch.equal(v1, a.sample_batch(2, 4)[1])


def test_shapes_range_and_dtype():
    images, labels = fake_mnist(100)
    src = MultiDigitNumbers(images, labels, digits=4, seed=0)
    x, v = src.sample_batch(6, 3)
    assert x.shape == (6, 3, 1, 112, 28) and x.dtype == torch.float32
    assert v.shape == (6, 3) and v.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    _, many = src.sample_indices(500, 4)
    assert int(many.min()) >= 0 and int(many.max()) <= 9999
    assert int(many.max()) > 9000 and int(many.min()) < 1000  # spread over the whole range


def test_close_sequences_lie_in_a_window():
    images, labels = fake_mnist(100)
    src = MultiDigitNumbers(images, labels, digits=4, seed=0)
    g = torch.Generator().manual_seed(1)
    _, v = src.sample_indices(2000, 5, g, close=0.5, spread=100)
    width = v.amax(1) - v.amin(1)
    close = width < 100
    # about half the sequences from a window (a uniform draw of 5 lies within 100 rarely: ~0.05%)
    assert 0.45 < close.float().mean() < 0.55
    assert int(v.min()) >= 0 and int(v.max()) <= 9999
    assert int(v[close].min()) < 100 and int(v[close].max()) > 9900  # windows anywhere
    # without close sequences the stream is the plain one (same draws as before)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(src.sample_indices(4, 5, g1)[1], src.sample_indices(4, 5, g2, close=0.0)[1])
    with pytest.raises(ValueError, match="spread must be in 2..10"):
        src.sample_indices(2, 5, g, close=0.5, spread=1)


def test_rendered_images_are_the_digits_of_the_value():
    images, labels = fake_mnist(300, seed=1)
    src = MultiDigitNumbers(images, labels, digits=4, seed=3)
    index, values = src.sample_indices(4, 5)
    rendered = src.render(index)
    expected_digits = digits_of(values, 4)
    # each chosen image shows the right digit ...
    assert torch.equal(labels[index], expected_digits)
    # ... and the stacked image is exactly those source images, most significant digit on top
    for b in range(4):
        for i in range(5):
            for k in range(4):
                tile = rendered[b, i, 0, 28 * k : 28 * (k + 1)]
                assert torch.equal(tile, images[index[b, i, k], 0].float() / 255.0)
    # decoding: match every 28x28 tile back to its unique source image and read the number
    flat = images.reshape(images.shape[0], -1).float() / 255.0
    tiles = rendered.reshape(4, 5, 4, 28 * 28)
    nearest = torch.cdist(tiles.reshape(-1, 784), flat).argmin(-1).reshape(4, 5, 4)
    decoded = (labels[nearest] * torch.tensor([1000, 100, 10, 1])).sum(-1)
    assert torch.equal(decoded, values)


def test_shift_moves_each_digit_tile_on_its_own():
    # one bright pixel in the middle of every digit image: after the shift it lies within 2
    # pixels of the middle of its own tile, each tile with its own offset
    images = torch.zeros(20, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 14, 14] = 255
    src = MultiDigitNumbers(images, torch.arange(20) % 10, digits=4, seed=0)
    index, _ = src.sample_indices(8, 5)
    moved = src.render(index, augment="shift", generator=torch.Generator().manual_seed(1))
    again = src.render(index, augment="shift", generator=torch.Generator().manual_seed(1))
    assert torch.equal(moved, again)  # the generator alone decides
    tiles = moved.reshape(-1, 28, 28)
    assert torch.equal(tiles.sum((1, 2)), torch.ones(len(tiles)))  # nothing lost
    at = tiles.reshape(len(tiles), -1).argmax(1)
    dy, dx = at // 28 - 14, at % 28 - 14
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) > 10
    assert torch.equal(src.render(index, augment="none"), src.render(index))


def test_leading_zeros_are_rendered():
    # digit 0 images are all black, every other digit all white: a small number has dark tops
    images = torch.full((20, 28, 28), 255, dtype=torch.uint8)
    labels = torch.arange(20) % 10
    images[labels == 0] = 0
    src = MultiDigitNumbers(images, labels, digits=4)
    # render 0007 directly: one image per digit, chosen from the pool by its label
    zero, seven = int((labels == 0).nonzero()[0]), int((labels == 7).nonzero()[0])
    img = src.render(torch.tensor([zero, zero, zero, seven]))[0]
    assert img.shape == (112, 28)
    assert float(img[: 3 * 28].max()) == 0.0 and float(img[3 * 28 :].min()) == 1.0
    # and sampled leading zeros are kept: every number below 1000 starts with a black tile
    x, v = src.sample_batch(300, 1)
    lead = x[:, 0, 0, :28]
    below = v[:, 0] < 1000
    assert bool(below.any())
    assert bool((lead[below].amax(dim=(-1, -2)) == 0).all())
    assert bool((lead[~below].amin(dim=(-1, -2)) == 1).all())


def test_float_pool_is_used_as_given():
    images = torch.rand(30, 1, 28, 28) * 3.0 - 1.0
    labels = torch.arange(30) % 10
    src = MultiDigitNumbers(images, labels, digits=2)
    index, _ = src.sample_indices(1, 1)
    assert torch.equal(src.render(index)[0, 0, 0, :28], images[index[0, 0, 0], 0])


def test_eval_set_is_fixed_and_independent_of_the_training_stream():
    images, labels = fake_mnist(100)
    src = MultiDigitNumbers(images, labels, seed=0)
    e1 = src.eval_set(7, 3, seed=5)
    src.sample_batch(4, 3)  # advancing the training stream does not change the eval set
    e2 = src.eval_set(7, 3, seed=5)
    assert torch.equal(e1.values, e2.values) and torch.equal(e1.digit_index, e2.digit_index)
    assert len(e1) == 7
    batches = list(e1.batches(3))
    assert [b[1].shape[0] for b in batches] == [3, 3, 1]
    assert torch.equal(torch.cat([b[1] for b in batches]), e1.values)
    assert batches[0][0].shape == (3, 3, 1, 112, 28)
    assert not torch.equal(src.eval_set(7, 3, seed=6).values, e1.values)


def test_splits_draw_from_disjoint_pools():
    train_x, _ = fake_mnist(120, seed=0)
    test_x, _ = fake_mnist(40, seed=1)
    # label each image with a pool id hidden in pixel (0, 0) to trace where digits come from
    train_x[:100, 0, 0, 0] = 1
    train_x[100:, 0, 0, 0] = 2
    test_x[:, 0, 0, 0] = 3
    train_y, test_y = torch.arange(120) % 10, torch.arange(40) % 10
    splits = make_splits(train_x, train_y, test_x, test_y, digits=2, seed=0, num_val=20)
    assert len(splits["train"]) == 100 and len(splits["val"]) == 20 and len(splits["test"]) == 40
    for name, pool_id in (("train", 1), ("val", 2), ("test", 3)):
        x, _ = splits[name].sample_batch(8, 4)
        corners = (x[..., 0, ::28, 0] * 255).round()
        assert bool((corners == pool_id).all()), name


@pytest.mark.parametrize(
    ("kwargs", "err"),
    [
        ({"images": torch.zeros(10, 2, 28, 28, dtype=torch.uint8)}, ValueError),
        ({"labels": torch.zeros(9, dtype=torch.int64)}, ValueError),
        ({"labels": torch.zeros(10, dtype=torch.int64)}, ValueError),  # digits 1..9 missing
        ({"labels": torch.arange(10).float()}, TypeError),
        ({"digits": 0}, ValueError),
    ],
)
def test_bad_arguments(kwargs, err):
    args = {
        "images": torch.zeros(10, 1, 28, 28, dtype=torch.uint8),
        "labels": torch.arange(10),
    }
    digits = kwargs.pop("digits", 4)
    args.update(kwargs)
    with pytest.raises(err):
        MultiDigitNumbers(args["images"], args["labels"], digits=digits)


def test_bad_batch_arguments():
    src = MultiDigitNumbers(*fake_mnist(20))
    with pytest.raises(ValueError, match="batch_size"):
        src.sample_batch(0, 3)
    with pytest.raises(ValueError, match="n must"):
        src.sample_batch(2, 0)
