"""CIFAR-sized training steps against the machine's float32 matrix-multiply peak.

Measures, in one process with ``--threads`` torch threads:

* the float32 matmul peak: the best GFLOP/s of ``--matmul_size`` square products
  (``2 n^3`` flops each), measured before and after the steps, the ceiling any convolution
  lowered to matrix products can reach;
* for each net of ``--models``: images/s of one training step on images already in memory
  (32x32 RGB, or ``--image C H W``: ``--image 1 28 28`` for MNIST and Fashion-MNIST;
  channels-last unless ``--no-channels_last``), for the CNN baseline (net + linear head,
  cross-entropy, SGD; ``--batch`` images) and the dKNN (100 queries + 100 neighbours, the
  deterministic NeuralSort kNN loss, k = 9); the flops of a step are three times those of the
  forward pass (counted over the convolutions and linear layers), so ``GFLOP/s`` and ``% of
  peak`` say how much of the peak the step uses.

Every figure is the median of ``--steps`` timed steps after ``--warmup`` untimed ones. Prints a
Markdown table with the CPU's name; ``--csv FILE`` also writes it.

Usage::

    python benchmarks/cifar_step.py --threads 1
    python benchmarks/cifar_step.py --threads 2 --models fastnet fastnet-half resnet8 --csv out.csv
    python benchmarks/cifar_step.py --image 1 28 28 --models fastnet-half mnist-convnet
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neuralsort.experiments.embedding_nets import Classifier, create_model
from neuralsort.knn import dknn_loss


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak(n: int, repeats: int) -> float:
    """Best GFLOP/s of ``repeats`` float32 ``n x n`` matrix products."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    """Flops of one forward pass per image, over ``Conv2d`` and ``Linear`` layers (2 per MAC)."""
    total = [0.0]

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total[0] += 2.0 * out.numel() * mod.in_channels // mod.groups * kh * kw
        elif isinstance(mod, nn.Linear):
            total[0] += 2.0 * out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0] / x.shape[0]


def make_step(
    task: str, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    """One training step of ``task`` (``cnn``: cross-entropy; ``dknn``: 100 + 100 kNN loss)."""

    def step() -> None:
        if task == "cnn":
            loss = F.cross_entropy(model(x), y)
        else:
            e = model(x)
            loss = dknn_loss(e[:100], e[100:], y[:100], y[100:], 9, tau=16.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_steps(step: Callable[[], None], steps: int, warmup: int) -> float:
    """Median seconds of ``step()`` over ``steps`` timed calls after ``warmup`` untimed."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_model(name: str, args: argparse.Namespace) -> list[dict[str, object]]:
    """Rows for the CNN and dKNN steps of net ``name``."""
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    rows = []
    for task in ("cnn", "dknn"):
        torch.manual_seed(0)
        c, h, w = args.image
        net = create_model(name, c, image_size=(h, w))
        model = Classifier(net, 10) if task == "cnn" else net
        model.to(memory_format=fmt)
        batch = args.batch if task == "cnn" else 200
        x = torch.randn(batch, c, h, w, generator=g).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (batch,), generator=g)
        model.train()
        model(x)  # fits a data-dependent stem before the flops are counted
        flops = 3.0 * forward_flops(model, x)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        sec = time_steps(make_step(task, model, opt, x, y), args.steps, args.warmup)
        params = sum(p.numel() for p in model.parameters())
        rows.append(
            {
                "model": name,
                "image": "x".join(map(str, args.image)),
                "step": task,
                "batch": batch,
                "parameters": params,
                "images_per_s": batch / sec,
                "gflop_per_image": flops / 1e9,
                "gflop_per_s": flops * batch / sec / 1e9,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--models", nargs="+", default=["fastnet", "fastnet-half", "resnet8"])
    p.add_argument("--batch", type=int, default=256, help="CNN batch (default 256)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--matmul_size", "--matmul-size", type=int, default=2048)
    p.add_argument(
        "--channels_last", "--channels-last", action=argparse.BooleanOptionalAction, default=True
    )
    p.add_argument(
        "--image",
        type=int,
        nargs=3,
        default=[3, 32, 32],
        metavar=("C", "H", "W"),
        help="channels, height and width of the images (default 3 32 32)",
    )
    p.add_argument("--csv", type=Path, default=None, help="also write the table to this file")
    args = p.parse_args()
    for key in ("threads", "batch", "steps", "matmul_size"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be a positive integer")
    if min(args.image) < 1:
        p.error("--image needs three positive integers: channels, height, width")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    torch.set_num_threads(args.threads)
    repeats = max(3, args.steps)
    # the peak before and after the steps, the better of the two: a busy moment lowers one
    peak = matmul_peak(args.matmul_size, repeats)
    rows = [r for name in args.models for r in bench_model(name, args)]
    peak = max(peak, matmul_peak(args.matmul_size, repeats))
    for r in rows:
        r["pct_of_peak"] = 100.0 * float(r["gflop_per_s"]) / peak
    print(
        f"{cpu_name()}, {args.threads} thread(s), float32, "
        f"{'x'.join(map(str, args.image))} images, "
        f"{'channels-last' if args.channels_last else 'contiguous'}; "
        f"matmul peak ({args.matmul_size}^2): {peak:.1f} GFLOP/s\n"
    )
    print("| net | step | batch | parameters | images/s | GFLOP/image | GFLOP/s | % of peak |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['model']} | {r['step']} | {r['batch']} | {r['parameters']:,} | "
            f"{r['images_per_s']:.0f} | {r['gflop_per_image']:.3f} | {r['gflop_per_s']:.1f} | "
            f"{r['pct_of_peak']:.0f} |"
        )
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
