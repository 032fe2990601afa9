"""Training-step throughput: images per second of each experiment's step, 1 vs N processes, AMP.

Each configuration starts ``P`` fresh processes (``torch.multiprocessing`` spawn; backend gloo on
the CPU, nccl on CUDA with one GPU per process), joins them the way ``torchrun`` would (the same
environment variables, :func:`neuralsort.experiments.distributed.setup`) and times the step the
training commands run, on synthetic data already on the device:

* ``dknn``: ``mnist-convnet`` embedding of ``q`` queries + ``m`` neighbours (28x28) per process,
  neighbour embeddings gathered across processes, NeuralSort kNN loss (deterministic, k=9);
* ``sort``: ``n=5`` sequences of 4-digit numbers (112x28 images) drawn and rendered on the device,
  deterministic NeuralSort, row-wise cross-entropy;
* ``quantile``: the same data, NeuralSort median regression (two nets).

Every process keeps its per-process batch (weak scaling: ``P`` processes handle ``P`` times the
images per step); images/s counts all processes. ``--amp`` lists the precisions to try (``fp16``
is skipped on the CPU, where it is emulated and slow, unless asked for explicitly).

Usage::

    python benchmarks/train_step.py                  # 1 and 2 processes, AMP off and bf16
    python benchmarks/train_step.py --device cuda --procs 1 2 4 8 --amp off bf16 fp16
    python benchmarks/train_step.py --procs 1 2 --threads 1 --steps 5 --warmup 2   # quick, CPU
    python benchmarks/train_step.py --backends --procs 1 --amp off   # native CPU operator vs torch

``--backends`` times, in one process, every step twice in turn: once with the native CPU
operator and once on the pure-PyTorch path (:mod:`neuralsort.backends`), and reports the median
step time of each and the ratio (side by side, so machine noise hits both alike).

Writes ``results/ops/train_step_<device>-<threads>threads.csv`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from neuralsort.experiments.distributed import free_port

# the one folder of benchmark results, the one the docs cite
RESULTS = Path(__file__).resolve().parent.parent / "results" / "ops"
EXPERIMENTS = ("dknn", "sort", "quantile")


def _dknn_step(args: argparse.Namespace, ctx: Any, amp: Any) -> tuple[Any, int]:
    """The ``neuralsort dknn`` step on MNIST-sized random images held on the device."""
    from neuralsort.experiments import distributed
    from neuralsort.experiments.dknn.task import step_loss
    from neuralsort.experiments.embedding_nets import create_model

    device, world, rank = ctx.device, ctx.world_size, ctx.rank
    q, m = args.dknn_batch
    g = torch.Generator().manual_seed(0)
    n_tr = 4096
    tr_x = torch.rand(n_tr, 1, 28, 28, generator=g).to(device)
    tr_y = torch.randint(0, 10, (n_tr,), generator=g).to(device)
    model = create_model("mnist-convnet", 1, image_size=(28, 28))
    model.to(device=device, memory_format=torch.channels_last)
    net = distributed.wrap_ddp(model, device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    cfg = {"k": 9, "tau": 16.0, "method": "deterministic", "num_samples": 5}
    noise = torch.Generator(device=device).manual_seed(1)
    perm_gen = torch.Generator().manual_seed(2)

    def step() -> float:
        qi = torch.randint(0, n_tr, (q * world,), generator=perm_gen)[rank * q : (rank + 1) * q]
        ni_all = torch.randint(0, n_tr, (m * world,), generator=perm_gen)
        qi, ni_all = qi.to(device), ni_all.to(device)
        ni = ni_all[rank * m : (rank + 1) * m]
        x = torch.cat([tr_x[qi], tr_x[ni]]).contiguous(memory_format=torch.channels_last)
        loss = step_loss(net, x, q, tr_y[qi], tr_y[ni_all], cfg, amp, noise)
        opt.zero_grad(set_to_none=True)
        amp.backward_step(loss, opt)
        value = float(loss.detach())
        if world > 1:  # the training loop also averages the loss over ranks at every step
            value = distributed.reduce_sum([value, 0.0])[0] / world
        return value

    return step, q + m


def _multidigit_step(args: argparse.Namespace, ctx: Any, amp: Any, kind: str) -> tuple[Any, int]:
    """The ``neuralsort sort`` / ``quantile`` step on a random digit pool held on the device."""
    from neuralsort.experiments.data.multidigit import MultiDigitNumbers
    from neuralsort.experiments.multidigit.medians import build_median_method
    from neuralsort.experiments.multidigit.sorters import build_sort_method
    from neuralsort.experiments.multidigit.task import device_source, loss_module

    device, world, rank = ctx.device, ctx.world_size, ctx.rank
    n, digits = 5, 4
    g = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (2000, 28, 28), dtype=torch.uint8, generator=g)
    src = MultiDigitNumbers(pool, torch.arange(2000) % 10, digits=digits, seed=0)
    dev_src = device_source(src, device)
    shape = (28 * digits, 28)
    if kind == "sort":
        model = build_sort_method("deterministic", n=n, image_shape=shape, tau=1.0)
        batch = args.sort_batch
    else:
        model = build_median_method(
            "deterministic", n=n, image_shape=shape, scale=float(10**digits), tau=1.0
        )
        batch = args.quantile_batch
    model.to(device)
    step_loss = loss_module(model, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    noise = torch.Generator(device=device).manual_seed(1)

    def step() -> float:
        index, values = src.sample_indices(batch * world, n)
        mine = slice(rank * batch, (rank + 1) * batch)
        images = dev_src.render(index[mine].to(device))
        with amp.autocast():
            loss = step_loss(images, values[mine].to(device), generator=noise)
        opt.zero_grad(set_to_none=True)
        amp.backward_step(loss, opt)
        return float(loss.detach())

    return step, batch * n


def _time_backends(step: Any, spec: dict[str, Any]) -> dict[str, float]:
    """Median seconds per step with the native CPU operator and on the PyTorch path, in turn."""
    import neuralsort as ns

    times: dict[str, list[float]] = {"native": [], "torch": []}
    for i in range(spec["steps"]):
        for name in ("native", "torch") if i % 2 == 0 else ("torch", "native"):
            with ns.backends.native(name == "native"):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _worker(rank: int, world: int, port: int, spec: dict[str, Any], result_file: str) -> None:
    from neuralsort.experiments import distributed

    os.environ.update(distributed.local_launch_env(rank, world, port))
    torch.set_num_threads(spec["threads"])
    from neuralsort.experiments.recipe import Amp

    args = argparse.Namespace(**spec["args"])
    ctx = distributed.setup(spec["device"])
    amp = Amp(spec["amp"], ctx.device)
    torch.manual_seed(0)
    if spec["experiment"] == "dknn":
        step, images = _dknn_step(args, ctx, amp)
    else:
        step, images = _multidigit_step(args, ctx, amp, spec["experiment"])
    for _ in range(spec["warmup"]):
        step()
    if spec.get("backends"):
        Path(result_file).write_text(json.dumps({"images": images, **_time_backends(step, spec)}))
        return
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    distributed.barrier()
    t0 = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    slowest = max(distributed.all_gather_objects(time.perf_counter() - t0))
    if ctx.is_main:
        Path(result_file).write_text(json.dumps({"images": images, "seconds": slowest}))


def run_config(spec: dict[str, Any], procs: int, timeout_s: float) -> dict[str, float]:
    """Spawn ``procs`` workers for ``spec``; returns what the first one measured: ``images`` per
    step per process and ``seconds`` for all steps (the slowest process), or with
    ``spec["backends"]`` the median ``native`` and ``torch`` seconds per step."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.txt")
        ctx = mp.spawn(_worker, args=(procs, free_port(), spec, out), nprocs=procs, join=False)
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.terminate()
                raise TimeoutError(f"{spec['experiment']} with {procs} processes took too long")
        return json.loads(Path(out).read_text())


def compare_backends(args: argparse.Namespace, amps: list[str], kept: dict[str, Any]) -> None:
    """One process per experiment and precision; each step timed on both paths in turn."""
    print(
        f"# torch {torch.__version__}, cpu, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}; {args.steps} steps on each path, "
        f"alternating, after {args.warmup} warm-up"
    )
    print("| experiment | amp | images/step | native ms/step | torch ms/step | speed-up |")
    print("|---|---|---|---|---|---|")
    for exp in args.experiments:
        for amp in amps:
            spec = {
                "experiment": exp, "device": "cpu", "amp": amp, "threads": args.threads,
                "steps": args.steps, "warmup": args.warmup, "args": kept, "backends": True,
            }  # fmt: skip
            r = run_config(spec, 1, args.timeout_s)
            print(
                f"| {exp} | {amp} | {r['images']} | {r['native'] * 1e3:.1f} | "
                f"{r['torch'] * 1e3:.1f} | {r['torch'] / r['native']:.2f}x |",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts")
    parser.add_argument("--amp", nargs="+", default=None, choices=["off", "bf16", "fp16"])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument(
        "--dknn_batch", type=int, nargs=2, default=[100, 100], metavar=("Q", "M"),
        help="queries and neighbours per process (the paper's 100 and 100)",
    )  # fmt: skip
    parser.add_argument("--sort_batch", type=int, default=20, help="sequences per process")
    parser.add_argument("--quantile_batch", type=int, default=5, help="sequences per process")
    parser.add_argument("--timeout_s", type=float, default=600.0, help="per configuration")
    parser.add_argument(
        "--backends", action="store_true",
        help="CPU, one process: native operator vs pure-PyTorch path, step by step in turn",
    )  # fmt: skip
    parser.add_argument("--out", default=str(RESULTS), help="default: results/ops")
    args = parser.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":
        have = torch.cuda.device_count()
        too_many = [p for p in args.procs if p > have]
        if too_many:
            parser.error(f"--procs {too_many}: this machine has {have} GPU(s), one per process")
    amps = args.amp or (["off", "bf16", "fp16"] if args.device == "cuda" else ["off", "bf16"])
    if args.device == "cuda" and "bf16" in amps and not torch.cuda.is_bf16_supported():
        amps = [a for a in amps if a != "bf16"]
    kept = {k: getattr(args, k) for k in ("dknn_batch", "sort_batch", "quantile_batch")}
    if args.backends:
        if args.device != "cpu":
            parser.error("--backends compares the CPU operator; use --device cpu")
        compare_backends(args, amps, kept)
        return

    rows: list[dict[str, Any]] = []
    for exp in args.experiments:
        for amp in amps:
            base = None
            for procs in args.procs:
                spec = {
                    "experiment": exp,
                    "device": args.device,
                    "amp": amp,
                    "threads": args.threads,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "args": kept,
                }
                measured = run_config(spec, procs, args.timeout_s)
                images, seconds = int(measured["images"]), measured["seconds"]
                rate = images * procs * args.steps / seconds
                if procs == args.procs[0]:
                    base = rate / procs
                rows.append(
                    {
                        "experiment": exp,
                        "device": args.device,
                        "amp": amp,
                        "procs": procs,
                        "threads_per_proc": args.threads,
                        "images_per_step_per_proc": images,
                        "steps": args.steps,
                        "seconds": round(seconds, 4),
                        "images_per_s": round(rate, 1),
                        "scaling_efficiency": round(rate / (base * procs), 3) if base else None,
                    }
                )
                print(
                    f"{exp:9s} amp={amp:4s} procs={procs}: {rate:9.1f} images/s "
                    f"({seconds / args.steps * 1000:.0f} ms/step)",
                    flush=True,
                )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_step_{args.device}-{args.threads}threads.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    where = f"cuda ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else "cpu"
    print(
        f"\n# torch {torch.__version__}, {where}, {args.threads} thread(s) per "
        f"process, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    print("| experiment | amp | processes | images/step/process | images/s | scaling efficiency |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['experiment']} | {r['amp']} | {r['procs']} | {r['images_per_step_per_proc']} "
            f"| {r['images_per_s']:.1f} | {r['scaling_efficiency']} |"
        )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
