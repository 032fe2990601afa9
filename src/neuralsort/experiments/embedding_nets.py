"""Embedding networks for the kNN experiments, chosen by name with :func:`create_model`.

* ``mnist-convnet``: the paper's MNIST net, conv 5x5x20 - ReLU - maxpool 2 - conv 5x5x50 - ReLU -
  maxpool 2 - FC -> 500 - ReLU (800 -> 500 for 28x28 inputs); 500-d embedding.
* ``resnet18``: pre-activation ResNet-18 (He et al. 2016, "Identity mappings") with the classifier
  removed; 512-d embedding after global average pooling. The stem is a 3x3 convolution, as usual
  for 28x28 and 32x32 inputs; inputs larger than 64 pixels get a stride-2 stem and a max-pool.
* ``resnet8``: the CIFAR ResNet-8 (three stages of one block, 16/32/64 channels), pre-activation;
  64-d embedding. A CPU-sized stand-in for ResNet-18 (77k parameters against 11M).
* ``fastnet``: a fast-training CIFAR net of the kind used by the published quick CIFAR-10
  trainers: a frozen 2x2 patch-whitening stem, then three blocks of conv 3x3 - max-pool 2 - BN -
  GELU - conv 3x3 - BN - GELU at widths 64/256/256, and a global max-pool; 256-d embedding,
  1.97M parameters for RGB input. ``fastnet-half`` is the same at widths 32/128/128 (0.5M).
* ``digits-net``: a small convnet for scikit-learn's 8x8 digits; 128-d embedding.

Every model maps ``(B, C, H, W)`` images to ``(B, embedding_dim)`` and exposes ``embedding_dim``.
:class:`Classifier` adds a linear head for the plain CNN baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import UserError

__all__ = [
    "MODELS",
    "MnistConvNet",
    "PreActResNet",
    "PreActResNet18",
    "PreActResNet8",
    "DigitsNet",
    "PatchWhitening",
    "FastNet",
    "Classifier",
    "create_model",
    "default_model_for",
    "model_for_data",
]


class MnistConvNet(nn.Module):
    """The paper's MNIST embedding net (500-d, ends in ReLU)."""

    def __init__(self, in_channels: int = 1, image_size: tuple[int, int] = (28, 28)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        h, w = image_size
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise ValueError(f"mnist-convnet needs images of at least 16x16, got {h}x{w}")
        self.fc = nn.Linear(50 * fh * fw, 500)
        self.embedding_dim = 500

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc(self.features(x).flatten(1)))


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """Pre-activation ResNet without its classifier: ``(B, C, H, W) -> (B, widths[-1])``.

    One stage per entry of ``widths``, each of ``blocks`` residual blocks; every stage after the
    first halves the resolution.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        widths: tuple[int, ...],
        blocks: int,
    ) -> None:
        super().__init__()
        if min(image_size) > 64:
            self.stem: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, cout in enumerate(widths):
            for b in range(blocks):
                layers.append(_PreActBlock(cin, cout, 2 if i > 0 and b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.embedding_dim = cin

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn(self.layers(self.stem(x))))
        return out.mean(dim=(2, 3))


class PreActResNet18(PreActResNet):
    """Pre-activation ResNet-18 without its classifier: ``(B, C, H, W) -> (B, 512)``."""

    def __init__(self, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__(in_channels, image_size, widths=(64, 128, 256, 512), blocks=2)


class PreActResNet8(PreActResNet):
    """The CIFAR ResNet-8 (He et al. 2016, n = 1), pre-activation, without its classifier.

    Three stages of one block, 16, 32 and 64 channels: ``(B, C, H, W) -> (B, 64)``, 77k
    parameters for RGB input, about 1/140 of ResNet-18's multiply-adds on 32x32 images.
    """

    def __init__(self, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__(in_channels, image_size, widths=(16, 32, 64), blocks=1)


class DigitsNet(nn.Module):
    """A small convnet for 8x8 digits: two 3x3 convolutions, a pool and a 128-d layer."""

    def __init__(self, in_channels: int = 1, image_size: tuple[int, int] = (8, 8)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        h, w = image_size
        self.fc = nn.Linear(64 * (h // 2) * (w // 2), 128)
        self.embedding_dim = 128

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc(self.features(x).flatten(1)))


class PatchWhitening(nn.Module):
    """A frozen ``p x p`` convolution that whitens image patches, fitted on its first batch.

    With :math:`\\Sigma = V \\operatorname{diag}(\\lambda) V^T` the covariance of the
    ``d = C p^2`` values of the first batch's ``p x p`` patches, the filters are the rows of
    :math:`\\operatorname{diag}(\\lambda + \\epsilon)^{-1/2} V^T` and their negatives, so the
    output has ``2 d`` channels whose first ``d`` are uncorrelated with unit variance on that batch
    (no padding: ``H - p + 1`` rows). The filters are buffers, saved and restored with the model;
    they are never trained.
    """

    def __init__(self, in_channels: int, patch: int = 2, eps: float = 5e-4) -> None:
        super().__init__()
        d = in_channels * patch * patch
        self.patch, self.eps, self.out_channels = patch, eps, 2 * d
        self.register_buffer("weight", torch.zeros(2 * d, in_channels, patch, patch))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Set the filters from the patches of ``x`` ``(B, C, H, W)``."""
        cols = F.unfold(x.float(), self.patch)  # (B, d, L)
        d = cols.shape[1]
        patches = cols.transpose(1, 2).reshape(-1, d).double()
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / max(1, patches.shape[0] - 1)
        vals, vecs = torch.linalg.eigh(cov)
        w = (vecs.T / (vals.clamp_min(0) + self.eps).sqrt()[:, None]).to(self.weight.dtype)
        w = w.view(d, *self.weight.shape[1:])
        self.weight.copy_(torch.cat([w, -w]))
        self.fitted.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.fitted):
            self.fit(x)
        return F.conv2d(x, self.weight.to(x.dtype))


class _ConvPoolBlock(nn.Module):
    """conv 3x3 - max-pool 2 - BN - GELU - conv 3x3 - BN - GELU.

    As in the fast CIFAR-10 trainers: each convolution starts as the identity on its first
    ``min(cin, cout)`` output channels (an implicit residual; the others keep PyTorch's random
    start), the BatchNorm scales stay at 1 (only their biases learn) and the running statistics
    average with momentum 0.4.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, momentum=0.4)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.4)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                nn.init.dirac_(conv.weight[: min(conv.in_channels, conv.out_channels)])
        for bn in (self.bn1, self.bn2):
            bn.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.bn2(self.conv2(x)))


class FastNet(nn.Module):
    """A fast-training CIFAR net without its classifier: ``(B, C, H, W) -> (B, widths[-1])``.

    A frozen 2x2 :class:`PatchWhitening` stem and GELU, then one :class:`_ConvPoolBlock` per
    width (each halves the resolution), then a global max-pool. Images of at least 8x8 pixels.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: tuple[int, int] = (32, 32),
        widths: tuple[int, ...] = (64, 256, 256),
    ) -> None:
        super().__init__()
        if min(image_size) < 8:
            raise ValueError(f"fastnet needs images of at least 8x8, got {image_size}")
        self.whiten = PatchWhitening(in_channels)
        blocks: list[nn.Module] = []
        cin = self.whiten.out_channels
        for w in widths:
            blocks.append(_ConvPoolBlock(cin, w))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.embedding_dim = cin

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(F.gelu(self.whiten(x)))
        return out.amax(dim=(2, 3))


class FastNetHalf(FastNet):
    """:class:`FastNet` at half width (32/128/128)."""

    def __init__(self, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__(in_channels, image_size, widths=(32, 128, 128))


class Classifier(nn.Module):
    """An embedding net followed by a linear head (the plain CNN baseline); the logits are
    multiplied by ``logit_scale`` (the fast CIFAR-10 trainers use 1/9)."""

    def __init__(self, embed: nn.Module, num_classes: int, *, logit_scale: float = 1.0) -> None:
        super().__init__()
        self.embed = embed
        self.head = nn.Linear(int(embed.embedding_dim), num_classes)
        self.logit_scale = float(logit_scale)

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(self.embed(x))
        return out if self.logit_scale == 1.0 else out * self.logit_scale


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnist-convnet": MnistConvNet,
    "resnet18": PreActResNet18,
    "resnet8": PreActResNet8,
    "fastnet": FastNet,
    "fastnet-half": FastNetHalf,
    "digits-net": DigitsNet,
}


def create_model(
    name: str, in_channels: int, *, image_size: tuple[int, int] = (28, 28)
) -> nn.Module:
    """Build the embedding net ``name`` (see :data:`MODELS`) for the given input shape."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    return MODELS[name](in_channels=in_channels, image_size=tuple(image_size))


# Image sizes up to which an image folder gets a small net (the MNIST ConvNet for grayscale
# images, fastnet for colour ones) instead of ResNet-18.
SMALL_IMAGE = 64


def default_model_for(
    dataset: str, image_size: tuple[int, int], in_channels: int | None = None
) -> str:
    """The default embedding net for a data set and its images.

    The paper's choice for its data sets: the convnet for MNIST, ResNet-18 for Fashion-MNIST and
    CIFAR, a small net for scikit-learn's 8x8 digits. Other data (``imagefolder:PATH``) by the
    images: ``digits-net`` below 16 pixels; up to :data:`SMALL_IMAGE` pixels a side the MNIST
    convnet for grayscale images (``in_channels == 1``) and ``fastnet`` for colour ones; ResNet-18
    for larger images.
    """
    name = dataset.lower()
    if name == "mnist":
        return "mnist-convnet"
    if name == "digits" or min(image_size) < 16:
        return "digits-net"
    if name.startswith("imagefolder") and max(image_size) <= SMALL_IMAGE:
        return "mnist-convnet" if in_channels == 1 else "fastnet"
    return "resnet18"


def model_for_data(name: str | None, info: dict[str, Any]) -> tuple[str, nn.Module]:
    """The embedding net ``name`` (None: :func:`default_model_for` the data set) for the images
    ``info`` describes (``name``, ``image_size``, ``in_channels``), and its name; a bad name is a
    :class:`~neuralsort.experiments.config.UserError`."""
    size, channels = info["image_size"], info["in_channels"]
    name = name or default_model_for(info["name"], size, channels)
    try:
        return name, create_model(name, channels, image_size=size)
    except ValueError as exc:
        raise UserError(str(exc)) from None
