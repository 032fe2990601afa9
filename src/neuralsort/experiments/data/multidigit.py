"""Multi-digit MNIST numbers: the data of the paper's sorting and median experiments.

An item is a number with ``digits`` decimal digits (leading zeros included) drawn uniformly from
``[0, 10**digits - 1]``. Its image stacks one randomly chosen MNIST image per digit vertically,
most significant digit on top, so four digits give a ``112 x 28`` image. A sequence holds ``n``
such items.

Everything is built with tensor indexing from the MNIST tensors held in memory (no per-image Python
loop), and every source of randomness is a ``torch.Generator`` owned by the object, so the same seed
gives the same sequences.

Splits (:func:`make_splits`): training and validation digits come from disjoint parts of the MNIST
training set (the first 50,000 and the last 10,000 images), test digits from the MNIST test set.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..recipe import augment_batch

__all__ = [
    "MultiDigitEvalSet",
    "MultiDigitNumbers",
    "digits_of",
    "make_splits",
]


def digits_of(values: torch.Tensor, num_digits: int) -> torch.Tensor:
    """Decimal digits of non-negative integers, most significant first.

    Args:
        values: integer tensor of any shape, entries in ``[0, 10**num_digits - 1]``.
        num_digits: how many digits to write (leading zeros included).

    Returns:
        ``(*values.shape, num_digits)`` int64 tensor of digits in ``0..9``.
    """
    if values.dtype.is_floating_point or values.dtype == torch.bool:
        raise TypeError(f"values must be an integer tensor, got dtype {values.dtype}")
    powers = 10 ** torch.arange(num_digits - 1, -1, -1, device=values.device, dtype=torch.int64)
    return (values.to(torch.int64).unsqueeze(-1) // powers) % 10


class MultiDigitNumbers:
    """A source of sequences of multi-digit numbers rendered from one pool of MNIST digits.

    Args:
        images: the digit pool, ``(N, 1, H, W)`` or ``(N, H, W)``; uint8 (0..255) or floating point
            (used as given).
        labels: ``(N,)`` integer digit labels in ``0..9``; every digit must occur at least once.
        digits: number of digits per item (``l`` in the paper; 4 gives ``112 x 28`` images).
        seed: seed of the generator that :meth:`sample_batch` draws from.

    Rendered images are float32, ``(B, n, 1, digits * H, W)``; uint8 pools are scaled to ``[0, 1]``.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, *, digits: int = 4, seed: int = 0
    ) -> None:
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError("images and labels must be torch tensors")
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(
                f"images must have shape (N, 1, H, W) or (N, H, W), got {tuple(images.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must have shape (N,) = ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= 18:
            raise ValueError(f"digits must be an integer in 1..18, got {digits!r}")
        labels = labels.to(torch.int64)
        if labels.numel() and (labels.min() < 0 or labels.max() > 9):
            raise ValueError("labels must be digits in 0..9")
        counts = torch.bincount(labels, minlength=10)
        if (counts == 0).any():
            missing = [d for d in range(10) if counts[d] == 0]
            raise ValueError(
                f"the image pool has no example of digit(s) {missing}: every digit 0..9 is needed"
            )
        self.images = images.cpu()
        self.labels = labels.cpu()
        self.num_digits = digits
        self.digit_shape = tuple(images.shape[-2:])
        # table[d, :counts[d]] = the pool indices of the images of digit d (in pool order).
        order = torch.argsort(self.labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        ranks = torch.arange(labels.numel()) - starts[self.labels[order]]
        table = torch.zeros(10, int(counts.max()), dtype=torch.int64)
        table[self.labels[order], ranks] = order
        self._table = table
        self._counts = counts
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        """Number of digit images in the pool."""
        return int(self.images.shape[0])

    @property
    def max_value(self) -> int:
        """The largest representable number, ``10**digits - 1``."""
        return 10**self.num_digits - 1

    # -- randomness ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The generator state (for checkpoints)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        self.generator.set_state(state["generator"])

    # -- sampling ------------------------------------------------------------------------------
    def sample_indices(
        self,
        batch_size: int,
        n: int,
        generator: torch.Generator | None = None,
        *,
        close: float = 0.0,
        spread: int = 100,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw numbers and the pool image for each of their digits.

        Numbers are uniform on ``[0, 10**digits)``; with ``close > 0`` each sequence is, with
        probability ``close``, instead drawn uniformly from a window ``[c, c + spread)`` at a
        uniform ``c``, so that its numbers share their leading digits (hard sequences for
        training: they are ordered by the trailing digits).

        Returns:
            ``(digit_index (B, n, digits) int64, values (B, n) int64)``: ``digit_index[b, i, k]`` is
            the pool index of the image shown for the k-th digit (most significant first) of item i.
        """
        _check_positive_int(batch_size, "batch_size")
        _check_positive_int(n, "n")
        gen = self.generator if generator is None else generator
        values = torch.randint(0, 10**self.num_digits, (batch_size, n), generator=gen)
        if close > 0.0:
            if not 2 <= spread <= 10**self.num_digits:
                raise ValueError(f"spread must be in 2..10**digits, got {spread!r}")
            pick = torch.rand(batch_size, 1, generator=gen) < close
            start = torch.randint(
                0, 10**self.num_digits - spread + 1, (batch_size, 1), generator=gen
            )
            near = start + torch.randint(0, spread, (batch_size, n), generator=gen)
            values = torch.where(pick, near, values)
        digit_values = digits_of(values, self.num_digits)
        u = torch.rand(digit_values.shape, generator=gen, dtype=torch.float64)
        counts = self._counts[digit_values]
        rank = torch.minimum((u * counts).to(torch.int64), counts - 1)
        return self._table[digit_values, rank], values

    def render(
        self,
        digit_index: torch.Tensor,
        *,
        augment: str = "none",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Stack the images of ``digit_index (..., digits)`` into ``(..., 1, digits*H, W)``.

        ``augment="shift"`` moves each digit image by up to 2 pixels in each direction before
        stacking (see :func:`~neuralsort.experiments.recipe.augment_batch`), with offsets drawn
        from ``generator`` (the source's own when None).
        """
        if digit_index.shape[-1] != self.num_digits:
            raise ValueError(
                f"digit_index must end with an axis of size digits={self.num_digits}, "
                f"got shape {tuple(digit_index.shape)}"
            )
        h, w = self.digit_shape
        lead = digit_index.shape[:-1]
        pix = self.images[digit_index.reshape(-1)]  # (M * digits, 1, H, W)
        pix = pix.to(torch.float32)
        if self.images.dtype == torch.uint8:
            pix = pix / 255.0
        if augment != "none":
            pix = augment_batch(pix, augment, self.generator if generator is None else generator)
        return pix.reshape(*lead, 1, self.num_digits * h, w)

    def sample_batch(self, batch_size: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of ``batch_size`` sequences of ``n`` numbers from the owned generator.

        Returns:
            ``(images (B, n, 1, digits*28, 28) float32, values (B, n) int64)``.
        """
        index, values = self.sample_indices(batch_size, n)
        return self.render(index), values

    def eval_set(self, num_sequences: int, n: int, *, seed: int = 0) -> MultiDigitEvalSet:
        """A fixed evaluation set: ``num_sequences`` sequences of ``n`` numbers drawn with ``seed``.

        Only the indices are stored; images are rendered batch by batch when iterated.
        """
        gen = torch.Generator().manual_seed(int(seed))
        index, values = self.sample_indices(num_sequences, n, generator=gen)
        return MultiDigitEvalSet(self, index, values)


class MultiDigitEvalSet:
    """A fixed set of sequences over a :class:`MultiDigitNumbers` pool (see its ``eval_set``)."""

    def __init__(
        self, source: MultiDigitNumbers, digit_index: torch.Tensor, values: torch.Tensor
    ) -> None:
        self.source = source
        self.digit_index = digit_index
        self.values = values

    def __len__(self) -> int:
        """Number of sequences."""
        return int(self.values.shape[0])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, values)`` for consecutive chunks of at most ``batch_size`` sequences."""
        _check_positive_int(batch_size, "batch_size")
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.source.render(self.digit_index[start:stop]), self.values[start:stop]


def make_splits(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    digits: int = 4,
    seed: int = 0,
    num_val: int = 10_000,
) -> dict[str, MultiDigitNumbers]:
    """Train / val / test number sources with disjoint digit pools.

    The MNIST training images are split in order: all but the last ``num_val`` form the training
    pool (50,000 for MNIST), the last ``num_val`` the validation pool; the test pool is the MNIST
    test set. Each source gets its own generator seeded from ``seed``.
    """
    n_train = int(train_images.shape[0])
    if not 0 < num_val < n_train:
        raise ValueError(f"num_val must be in 1..{n_train - 1} (training images), got {num_val}")
    cut = n_train - num_val
    return {
        "train": MultiDigitNumbers(
            train_images[:cut], train_labels[:cut], digits=digits, seed=seed
        ),
        "val": MultiDigitNumbers(
            train_images[cut:], train_labels[cut:], digits=digits, seed=seed + 1
        ),
        "test": MultiDigitNumbers(test_images, test_labels, digits=digits, seed=seed + 2),
    }


def _check_positive_int(value: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
