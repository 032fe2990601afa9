"""Embedding nets: output shapes and the registry."""

from __future__ import annotations

import pytest
import torch

from neuralsort.experiments.embedding_nets import (
    Classifier,
    MnistConvNet,
    PatchWhitening,
    create_model,
    default_model_for,
)


@pytest.mark.parametrize(
    "name, channels, size, dim",
    [
        ("mnist-convnet", 1, (28, 28), 500),
        ("mnist-convnet", 3, (32, 32), 500),
        ("resnet18", 1, (28, 28), 512),
        ("resnet18", 3, (32, 32), 512),
        ("resnet8", 3, (32, 32), 64),
        ("resnet8", 1, (96, 96), 64),
        ("digits-net", 1, (8, 8), 128),
        ("fastnet", 3, (32, 32), 256),
        ("fastnet-half", 3, (32, 32), 128),
        ("fastnet-half", 1, (28, 28), 128),
    ],
)
def test_embedding_shapes(name, channels, size, dim):
    torch.manual_seed(0)
    m = create_model(name, channels, image_size=size)
    out = m(torch.randn(2, channels, *size))
    assert out.shape == (2, dim) and m.embedding_dim == dim
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_fastnet_starts_as_the_fast_cifar_trainers_do():
    """Identity-initialised convolutions, BatchNorm scales fixed at 1, running momentum 0.4;
    the frozen scales get no gradient."""
    torch.manual_seed(0)
    m = create_model("fastnet", 3, image_size=(32, 32))
    block = m.blocks[1]
    w = block.conv2.weight  # 256 -> 256: the identity on every channel
    eye = torch.zeros_like(w)
    eye[torch.arange(256), torch.arange(256), 1, 1] = 1.0
    assert torch.equal(w, eye)
    w1 = block.conv1.weight  # 64 -> 256: the identity on the first 64 output channels only
    assert torch.equal(w1[:64, :, 1, 1], torch.eye(64)) and w1[64:].abs().sum() > 0
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and all(not b.weight.requires_grad and b.bias.requires_grad for b in bns)
    assert {b.momentum for b in bns} == {0.4}
    m(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(b.weight.grad is None and b.bias.grad is not None for b in bns)


def test_resnet_sizes():
    """ResNet-18 keeps its 11.17M parameters; ResNet-8 is the CIFAR one (16/32/64, 77k)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(create_model("resnet18", 3, image_size=(32, 32))) == 11_167_040
    r8 = create_model("resnet8", 3, image_size=(32, 32))
    assert count(r8) == 77_200 and len(r8.layers) == 3
    assert [b.conv2.out_channels for b in r8.layers] == [16, 32, 64]


def test_paper_mnist_net_layout():
    m = MnistConvNet()
    assert m.fc.in_features == 800 and m.fc.out_features == 500
    convs = [mod for mod in m.features if isinstance(mod, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [20, 50] and convs[0].kernel_size == (5, 5)


def test_registry_and_classifier():
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vgg", 1)
    assert default_model_for("mnist", (28, 28)) == "mnist-convnet"
    assert default_model_for("cifar10", (32, 32)) == "resnet18"
    assert default_model_for("digits", (8, 8)) == "digits-net"
    # an image folder: small nets for small images, grayscale and colour; ResNet-18 above 64 px
    assert default_model_for("imagefolder-pets", (28, 28), 1) == "mnist-convnet"
    assert default_model_for("imagefolder-pets", (32, 32), 3) == "fastnet"
    assert default_model_for("imagefolder-pets", (96, 96), 3) == "resnet18"
    c = Classifier(create_model("digits-net", 1, image_size=(8, 8)), 10)
    assert c(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_fastnet_size_and_layout():
    """fastnet: 64/256/256 conv-pool blocks, 1.97M parameters; the whitening stem is frozen."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    net = create_model("fastnet", 3, image_size=(32, 32))
    assert count(net) == 1_969_920 and net.embedding_dim == 256
    assert [b.conv2.out_channels for b in net.blocks] == [64, 256, 256]
    assert count(net.whiten) == 0 and net.whiten.out_channels == 24
    assert count(create_model("fastnet-half", 3, image_size=(32, 32))) == 496_512
    with pytest.raises(ValueError, match="at least 8x8"):
        create_model("fastnet", 3, image_size=(6, 6))


def test_patch_whitening_decorrelates_and_is_saved():
    g = torch.Generator().manual_seed(0)
    # correlated channels: the second is the first plus a little noise
    base = torch.rand(16, 1, 12, 12, generator=g)
    x = torch.cat([base, base + 0.1 * torch.rand(16, 1, 12, 12, generator=g)], 1)
    w = PatchWhitening(2, eps=1e-9)  # (almost) exact whitening
    assert not bool(w.fitted)
    out = w(x)
    assert bool(w.fitted) and out.shape == (16, 16, 11, 11)
    first = out[:, :8].permute(0, 2, 3, 1).reshape(-1, 8).double()
    cov = torch.cov(first.T)
    assert torch.allclose(cov, torch.eye(8, dtype=torch.float64), atol=0.02)
    assert torch.equal(out[:, 8:], -out[:, :8])
    # the fitted filters travel with the state dict and are not refitted on other data
    w2 = PatchWhitening(2, eps=1e-9)
    w2.load_state_dict(w.state_dict())
    assert bool(w2.fitted) and torch.equal(w2(x * 3), w(x * 3))
    assert torch.equal(w.weight, w2.weight)


def test_classifier_scales_its_logits():
    torch.manual_seed(0)
    net = create_model("fastnet-half", 3, image_size=(32, 32)).eval()
    plain = Classifier(net, 10)
    scaled = Classifier(net, 10, logit_scale=1 / 9)
    scaled.head.load_state_dict(plain.head.state_dict())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(scaled(x), plain(x) / 9)
