"""What a run runs on, in words: the CPU model, the device and, on CUDA, the GPU.

Every measurement names its hardware: ``reproduce`` records :func:`hardware_info` for each attempt,
a run folder's ``config.yaml`` records :func:`cpu_model` (and the GPU) for each start, and
``neuralsort info`` prints them.
"""

from __future__ import annotations

import os
import pathlib
import platform
from typing import Any

__all__ = ["cpu_model", "gpu_name", "hardware_info"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s on Linux, else what :mod:`platform` says)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_name() -> str | None:
    """The first CUDA GPU's name, or None where CUDA is not available."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def hardware_info(device: str | None = None) -> dict[str, Any]:
    """What a run on ``device`` (``auto`` like the commands) runs on, with a one-line summary."""
    import torch

    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
    }
    name = (device or "auto").lower()
    use_cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    mps = getattr(torch.backends, "mps", None)
    use_mps = name == "mps" or (
        name == "auto" and not use_cuda and mps is not None and mps.is_available()
    )
    if use_cuda and torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = gpu_name()
        info["summary"] = f"GPU {info['gpu']}"
    elif use_mps:
        info["device"] = "mps"
        info["summary"] = f"Apple GPU (mps), {info['cpu']}"
    else:
        info["device"] = "cpu"
        t = info["torch_threads"]
        info["summary"] = f"CPU {info['cpu']}, {t} thread{'s' if t != 1 else ''}"
    return info
