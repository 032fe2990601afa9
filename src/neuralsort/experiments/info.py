"""``neuralsort info``: the environment in a few lines, for bug reports and for building the
native CPU operator ahead of a run (a Docker image, or before many processes start at once)."""

from __future__ import annotations

import argparse
import os
import platform
import sys

from .hardware import cpu_model

__all__ = ["add_parser", "main"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser(
        "info",
        help="versions, devices and the native CPU operator (built here if it is not yet)",
        description=(
            "Print the environment in a few lines (versions, devices, the native CPU operator), "
            "for bug reports; builds the native CPU operator if it is not built yet, so it can "
            "be built ahead of a run (a Docker image, or before many processes start at once)."
        ),
    )


def main(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    import neuralsort as ns  # noqa: PLC0415

    lines = [
        f"neuralsort {ns.__version__}",
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
        f"platform {platform.platform()}",
        f"cpu {cpu_model()}, {os.cpu_count()} logical cores",
    ]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"cuda {torch.version.cuda}: {names}")
    else:
        lines.append("cuda: not available")
    available = ns.backends.is_available() if ns.backends.is_enabled() else False
    lines.append(f"native CPU operator: {'in use' if available else 'not in use'}")
    lines.append(f"  {ns.backends.status()}")
    lines.append(f"Triton kernels for CUDA (experimental): {ns.backends.triton_status()}")
    print("\n".join(lines))
    return 0
