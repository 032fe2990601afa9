"""The fused CPU operator ``torch.ops.neuralsort.relaxed_rows``: build, cache, load.

``_kernels/extension.cpp`` (with the kernels in ``_kernels/relaxed_rows.h``) is compiled on first
use with the system C++ compiler against the installed torch, once per machine and torch
version (about 30 s on two cores), into ``$NEURALSORT_CACHE_DIR``, else
``$XDG_CACHE_HOME/neuralsort``, else ``~/.cache/neuralsort``; the file name is a hash of the
sources, torch, the compiler and the CPU. Processes that start together (one per GPU) wait for
one build under a file lock.

``$NEURALSORT_CXXFLAGS`` is appended to the compiler flags: ``-march=native`` makes a library for
this CPU only, so a cache shared by machines of different kinds (a cluster's home directory)
holds one build per kind; ``NEURALSORT_CXXFLAGS=-march=x86-64-v3`` makes one that runs on any AVX2
machine instead.

Where the build fails (no compiler, no torch headers) the operators keep their pure-PyTorch
path, with the same results, and one warning says why. ``NEURALSORT_NATIVE=0`` skips the
kernel; :mod:`neuralsort.backends` reports on it and switches it at run time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

_KERNELS = Path(__file__).parent / "_kernels"
_SOURCES = (_KERNELS / "extension.cpp", _KERNELS / "relaxed_rows.h")
# the first flag set that compiles wins (older compilers lack C++20, some -march=native, some
# OpenMP). -fopenmp is what makes at::parallel_for parallel: with torch's OpenMP backend it is
# a pragma in a header, compiled into this library.
_FLAG_SETS = (
    ["-O3", "-march=native", "-std=c++20", "-fopenmp"],
    ["-O3", "-march=native", "-std=c++17", "-fopenmp"],
    ["-O3", "-std=c++17", "-fopenmp"],
    ["-O3", "-std=c++17"],
)

_DTYPES = (torch.float32, torch.float64)
_lock = threading.Lock()
_state: dict[str, object] = {"op": None, "tried": False, "reason": "not built yet"}
_enabled = os.environ.get("NEURALSORT_NATIVE", "1").strip().lower() not in ("0", "false", "no")


def cache_dir() -> Path:
    if env := os.environ.get("NEURALSORT_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neuralsort"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _extra_flags() -> list[str]:
    """``$NEURALSORT_CXXFLAGS``, appended to every flag set (so a later ``-march`` wins)."""
    return shlex.split(os.environ.get("NEURALSORT_CXXFLAGS", ""))


def _cpu_fingerprint() -> str:
    """What ``-march=native`` depends on: a library built on one CPU may not run on another."""
    text = platform.machine() + platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("model name", "flags", "Features")):
                text += line
                if not line.startswith("model name"):
                    break
    return text


def _torch_dirs() -> tuple[list[Path], Path]:
    root = Path(torch.__file__).parent
    return [root / "include", root / "include" / "torch" / "csrc" / "api" / "include"], root / "lib"


def _build(cxx: str) -> Path:
    includes, libdir = _torch_dirs()
    if not (includes[0] / "torch" / "library.h").exists():
        raise RuntimeError(f"torch's C++ headers are missing (looked in {includes[0]})")
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    extra = _extra_flags()
    key = hashlib.sha256()
    for part in (*(p.read_bytes() for p in _SOURCES), torch.__version__, str(abi), version,
                 _cpu_fingerprint(), str(_FLAG_SETS), str(extra)):  # fmt: skip
        key.update(part if isinstance(part, bytes) else part.encode())
    out_dir = cache_dir()
    target = out_dir / f"neuralsort_ops-{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(out_dir):
        if target.exists():  # another process built it while this one waited
            return target
        print(
            f"neuralsort: compiling the fused CPU kernel into {out_dir} (once per machine and "
            "torch version, ~30 s; NEURALSORT_NATIVE=0 skips it)",
            file=sys.stderr,
        )
        errors = []
        for flags in (base + extra for base in _FLAG_SETS):
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
            os.close(fd)
            cmd = [
                cxx, *flags, "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                *(f"-I{p}" for p in includes), str(_SOURCES[0]), "-o", tmp,
                f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-lc10", "-ltorch_cpu", "-ltorch",
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if proc.returncode == 0:
                os.replace(tmp, target)  # atomic: nobody sees a half-written library
                return target
            os.unlink(tmp)
            output = proc.stderr.strip()[-400:] or "no output"
            errors.append(f"{cxx} {' '.join(flags)} (exit {proc.returncode}): {output}")
    raise RuntimeError(f"{cxx} failed with every flag set:\n" + "\n".join(errors))


@contextlib.contextmanager
def _build_lock(directory: Path):
    try:
        import fcntl  # noqa: PLC0415  (POSIX only)
    except ImportError:
        yield
        return
    with open(directory / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load():
    """The operator, building it on first call; ``None`` where that is impossible."""
    op = _state["op"]
    if op is not None or _state["tried"]:
        return op
    with _lock:
        if _state["tried"]:
            return _state["op"]
        try:
            cxx = _compiler()
            if cxx is None:
                raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
            path = _build(cxx)
            torch.ops.load_library(str(path))
            op = torch.ops.neuralsort.relaxed_rows
            _state["values_op"] = torch.ops.neuralsort.relaxed_sorted_values
        except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as err:
            _state["reason"] = f"{type(err).__name__}: {err}"
            extra = shlex.join(_extra_flags())
            check_extra = (
                f"NEURALSORT_CXXFLAGS={extra!r} was added to every flag set: correct or unset it. "
                if extra
                else ""
            )
            warnings.warn(
                "neuralsort: the fused CPU kernel could not be built, so the operators use their "
                "pure-PyTorch path (same results, slower for small inputs). Reason: "
                f"{_state['reason']}. {check_extra}A working g++ or clang++ (or CXX naming one) "
                "enables it; NEURALSORT_NATIVE=0 skips the attempt.",
                RuntimeWarning,
                stacklevel=4,
            )
            op = None
        else:
            _state["reason"] = f"loaded {path}: {torch.ops.neuralsort.build_info()}"
        _state["op"] = op
        _state["tried"] = True
        return op


def enabled() -> bool:
    return _enabled


def set_enabled(value: bool) -> None:
    global _enabled
    _enabled = bool(value)


def available() -> bool:
    """Whether the operator is built and loaded (building it now if needed)."""
    return _load() is not None


def status() -> str:
    return str(_state["reason"])


# the kernels index a row with 32-bit ranks
_MAX_ROW = 2**31 - 1


def usable(x: Tensor) -> bool:
    """Whether the fused operator handles ``x``: CPU float32/float64 rows of fewer than 2**31
    elements, enabled and built."""
    return (
        _enabled
        and x.is_cpu
        and x.dtype in _DTYPES
        and x.shape[-1] <= _MAX_ROW
        and _load() is not None
    )


def relaxed_rows(
    x: Tensor, coef: Tensor, rank_of_row: Tensor, tau: Tensor, logit_range: float
) -> Tensor:
    """``P[..., i, j] = softmax_j((coef_i * xc_j - (A_xc 1)_j) / tau)`` for ``x`` ``(..., n)``."""
    return _state["op"](x, coef, rank_of_row, tau, logit_range)  # type: ignore[operator]


def relaxed_sorted_values(
    x: Tensor, coef: Tensor, rank_of_row: Tensor, tau: Tensor, logit_range: float
) -> Tensor:
    """``sum_j P[..., i, j] x[..., j]``: the rows of :func:`relaxed_rows` applied to ``x``."""
    return _state["values_op"](x, coef, rank_of_row, tau, logit_range)  # type: ignore[operator]
