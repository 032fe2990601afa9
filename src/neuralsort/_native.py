"""The fused CPU operator ``torch.ops.neuralsort.relaxed_rows``: build, cache, load.

The C++ sources in ``_kernels/`` are compiled on first use by
:func:`torch.utils.cpp_extension.load` (a JIT build with ninja and the system C++ compiler,
against the installed torch), once per machine and torch version (about 30 s on two cores),
into a folder of ``$NEURALSORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/neuralsort``, else
``~/.cache/neuralsort`` (``TORCH_EXTENSIONS_DIR`` does not apply). The folder and extension name
hold a hash of the sources, torch, Python, the compiler, the flags and the CPU: ``-march=native``
makes a library for this CPU only, so a cache shared by machines of different kinds (a cluster's
home directory) holds one build per kind. ``$NEURALSORT_CXXFLAGS`` is appended to the compiler
flags (a later ``-march`` wins): ``NEURALSORT_CXXFLAGS=-march=x86-64-v3`` makes a build that
runs on any AVX2 machine.

Processes that start together (one per GPU) wait for one build: cpp_extension's own lock file
(``lock`` in the build folder) is taken inside an advisory ``flock`` of ours, which the kernel
releases when its holder dies. A build killed half-way (Ctrl-C, a job's time limit) leaves
cpp_extension's lock file behind, and every later process would wait on it forever; holding
the ``flock``, a process knows no other is building, so it removes such a stale file first.

Where the build fails (no compiler, no ninja, no torch headers) the operators keep their
pure-PyTorch path, with the same results, and one warning says why. ``NEURALSORT_NATIVE=0``
skips the kernel; :mod:`neuralsort.backends` reports on it and switches it at run time.

Under :func:`torch.compile` the library is loaded (built if need be) while dynamo traces, by
:func:`_loaded`, which dynamo runs eagerly and treats as a constant, so a fresh process can
compile a function calling the operators with ``fullgraph=True``.
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
import sysconfig
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

# registers neuralsort_py::rows_backward, the Python op through which the C++ operator's
# autograd node takes second derivatives: before the library that calls it is loaded
from . import _dense  # noqa: F401
from ._checks import is_compiling, is_transformed
from ._rows import ascending_order as _numpy_order

_KERNELS = Path(__file__).parent / "_kernels"
_SOURCE_SUFFIXES = (".cpp", ".cc", ".cxx")
_HEADER_SUFFIXES = (".h", ".hpp")
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
    """Where neuralsort caches what it builds or decodes: ``$NEURALSORT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/neuralsort``, else ``~/.cache/neuralsort``."""
    if env := os.environ.get("NEURALSORT_CACHE_DIR"):
        return Path(env).absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neuralsort"


def _compiler() -> str:
    """The C++ compiler: ``$CXX`` if set, else the first of ``c++``, ``g++``, ``clang++``."""
    if cxx := os.environ.get("CXX"):
        if not shutil.which(cxx):
            raise RuntimeError(f"the C++ compiler CXX={cxx!r} was not found")
        return cxx
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return name
    raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")


def _ninja_dir() -> str | None:
    """A folder to add to ``PATH`` for cpp_extension to find ``ninja`` (the ``ninja`` package
    installs it next to this Python, which is not on ``PATH`` in an unactivated environment)."""
    if shutil.which("ninja"):
        return None
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        if folder and shutil.which("ninja", path=folder):
            return folder
    raise RuntimeError("ninja was not found (pip install ninja)")


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


def _sources() -> tuple[list[Path], list[Path]]:
    """(the files to compile, every file the build depends on) in ``_kernels/``."""
    files = sorted(p for p in _KERNELS.iterdir() if p.suffix in _SOURCE_SUFFIXES + _HEADER_SUFFIXES)
    return [p for p in files if p.suffix in _SOURCE_SUFFIXES], files


def _build_key(cxx: str) -> hashlib._Hash:
    """A hash of everything the library depends on except the flag set: the sources, torch
    (its version and where it is installed, which sets the include paths of the build: two
    environments with the same torch version get two builds rather than rebuilding each other's),
    Python, the compiler and the CPU."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256()
    for path in _sources()[1]:
        key.update(path.name.encode() + b"\0" + path.read_bytes())
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    torch_dir = str(Path(torch.__file__).resolve().parent)
    python_include = sysconfig.get_paths().get("include", "")
    for part in (torch.__version__, torch_dir, str(abi), sys.version, python_include, cxx, version):
        key.update(part.encode() + b"\0")
    key.update(_cpu_fingerprint().encode())
    return key


@contextlib.contextmanager
def _environ(**changes: str | None):
    """``os.environ`` with ``changes`` inside the block (``None``: leave as is)."""
    saved = {k: os.environ.get(k) for k, v in changes.items() if v is not None}
    os.environ.update({k: v for k, v in changes.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _build_lock(directory: Path):
    """An exclusive ``flock`` on ``directory/.build.lock`` (released by the kernel on exit);
    yields whether it is one (not on Windows)."""
    try:
        import fcntl  # noqa: PLC0415  (POSIX only)
    except ImportError:
        yield False
        return
    with open(directory / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_and_load(cxx: str) -> Path:
    """Load the cached library, building it first if needed; returns its path."""
    from torch.utils import cpp_extension  # noqa: PLC0415  (only needed to load)

    if not (Path(cpp_extension.include_paths()[0]) / "torch" / "library.h").exists():
        raise RuntimeError("torch's C++ headers are missing (a torch without them was installed)")
    env_path = _path_with_ninja()  # (first: a missing ninja is no flag set's failure)
    base_key = _build_key(cxx)
    extra = _extra_flags()
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    candidates = []  # (name, folder, compile flags) per flag set, in order of preference
    for base in _FLAG_SETS:
        flags = [*base, *extra, f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
        key = base_key.copy()
        key.update(shlex.join(flags).encode())
        name = f"neuralsort_ops_{key.hexdigest()[:16]}"
        candidates.append((name, cache_dir() / name, flags))

    def library(name: str, folder: Path) -> Path:
        return folder / f"{name}{cpp_extension.LIB_EXT}"

    def load(name: str, folder: Path, flags: list[str]) -> Path:
        # the build compiles a copy of the sources in its folder, so that the same sources
        # installed elsewhere (another checkout, another environment) find it up to date
        # (rewritten only if they differ, so that ninja sees no newer file; atomically, so that
        # a process killed while copying leaves no half file)
        copies = folder / "src"
        copies.mkdir(parents=True, exist_ok=True)
        for path in _sources()[1]:
            copy, data = copies / path.name, path.read_bytes()
            if not copy.exists() or copy.read_bytes() != data:
                partial = copy.with_name(f".{copy.name}.{os.getpid()}")
                partial.write_bytes(data)
                os.replace(partial, copy)
        # -fopenmp links libgomp as well; the library is loaded into a process that has torch's
        # libraries already, so it needs no rpath
        ldflags = [f for f in flags if f == "-fopenmp"]
        with _environ(CXX=cxx, PATH=env_path):
            cpp_extension.load(
                name,
                [str(copies / p.name) for p in _sources()[0]],
                extra_cflags=flags,
                extra_ldflags=ldflags,
                build_directory=str(folder),
                is_python_module=False,
            )
        return library(name, folder)

    cache_dir().mkdir(parents=True, exist_ok=True)
    with _build_lock(cache_dir()) as exclusive:
        if exclusive:
            # cpp_extension's lock files, left by a process killed while it held one: stale,
            # since no other process is building or loading while this one holds the flock
            for _, folder, _ in candidates:
                (folder / "lock").unlink(missing_ok=True)
        for name, folder, flags in candidates:
            built = library(name, folder)
            if built.exists():  # built before: ninja should find nothing to do
                before = built.stat().st_mtime_ns
                loaded = load(name, folder, flags)
                if built.stat().st_mtime_ns != before:
                    print(f"neuralsort: rebuilt the fused CPU kernel in {folder}", file=sys.stderr)
                return loaded
        print(
            f"neuralsort: compiling the fused CPU kernel into {cache_dir()} (once per machine "
            "and torch version, ~30 s; NEURALSORT_NATIVE=0 skips it)",
            file=sys.stderr,
        )
        errors = []
        for name, folder, flags in candidates:
            try:
                return load(name, folder, flags)
            except RuntimeError as err:  # cpp_extension's "Error building extension ..."
                output = str(err).strip()[-400:] or "no output"
                errors.append(f"{cxx} {' '.join(flags)}: {output}")
    raise RuntimeError(f"{cxx} failed with every flag set:\n" + "\n".join(errors))


def _path_with_ninja() -> str | None:
    folder = _ninja_dir()
    return None if folder is None else folder + os.pathsep + os.environ.get("PATH", "")


def _load():
    """The operator, building it on first call; ``None`` where that is impossible."""
    op = _state["op"]
    if op is not None or _state["tried"]:
        return op
    with _lock:
        if _state["tried"]:
            return _state["op"]
        try:
            path = _build_and_load(_compiler())
            op = torch.ops.neuralsort.relaxed_rows
            _state["values_op"] = torch.ops.neuralsort.relaxed_sorted_values
            _state["rows_forward"] = torch.ops.neuralsort.relaxed_rows_forward
            _state["rows_backward"] = torch.ops.neuralsort.relaxed_rows_backward
            _state["windowed_forward"] = torch.ops.neuralsort.windowed_forward
            _state["windowed_backward"] = torch.ops.neuralsort.windowed_backward
            _state["ascending_order"] = torch.ops.neuralsort.ascending_order
        except Exception as err:  # noqa: BLE001  (whatever fails, the PyTorch path works)
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
                "and ninja enable it; NEURALSORT_NATIVE=0 skips the attempt.",
                RuntimeWarning,
                stacklevel=5,  # the public operator (_load, _loaded, usable, relaxed_rows)
            )
            op = None
        else:
            _state["reason"] = f"loaded {path}: {torch.ops.neuralsort.build_info()}"
        _state["op"] = op
        _state["tried"] = True
        return op


def _loaded() -> bool:
    """Whether the operator is loaded, building and loading it first if needed.

    Dynamo cannot trace the build (a lock, subprocesses, files), and ``torch.compiler.disable``
    would break the graph. Marked as having a constant result, this runs eagerly while dynamo
    traces (once per compiled function) and its result becomes a constant of the graph; once
    loaded, the library stays loaded, so the constant holds."""
    return _load() is not None


# what torch.compiler.assume_constant_result(_loaded) does (torch 2.0 to 2.13), without
# importing torch._dynamo, which would add ~1.8 s to `import neuralsort`
_loaded._dynamo_marked_constant = True  # type: ignore[attr-defined]


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
    return _enabled and x.is_cpu and x.dtype in _DTYPES and x.shape[-1] <= _MAX_ROW and _loaded()


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


def windowed_forward(
    vs: Tensor,
    a: Tensor,
    coef: Tensor,
    rank: Tensor,
    inv_tau: float,
    tol: float,
    v: Tensor,
    w: Tensor,
) -> tuple[Tensor, ...]:
    """The windows of ``tol=`` and the reductions of their rows over the sorted scores ``vs``
    (float64) with ``A 1`` in ``a``: ``(y, u, lo, hi)`` (see :mod:`neuralsort._windowed`)."""
    return _state["windowed_forward"](vs, a, coef, rank, inv_tau, tol, v, w)  # type: ignore[operator]


def windowed_backward(
    vs: Tensor,
    a: Tensor,
    coef: Tensor,
    rank: Tensor,
    inv_tau: float,
    lo: Tensor,
    hi: Tensor,
    v: Tensor,
    w: Tensor,
    gy: Tensor,
    gu: Tensor,
    need_v: bool,
    need_tau: bool,
) -> tuple[Tensor, ...]:
    """The backward of :func:`windowed_forward` over the windows ``lo``, ``hi`` it found (it
    builds their rows again): ``(grad_vs, grad_a, grad_v, tau_part)`` (``tau_part`` 0 unless
    ``need_tau``)."""
    return _state["windowed_backward"](  # type: ignore[operator]
        vs, a, coef, rank, inv_tau, lo, hi, v, w, gy, gu, need_v, need_tau
    )


def rows_forward(
    x: Tensor, coef: Tensor, rank_of_row: Tensor, tau: Tensor, logit_range: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The rows alone, without autograd: ``(p, xc, a, order)`` (``xc``, ``a``, ``order``: what
    :func:`rows_backward` takes), for callers that build rows a chunk at a time."""
    p, xc, a, order, _ = _state["rows_forward"](x, coef, rank_of_row, tau, logit_range, False)
    return p, xc, a, order


def rows_backward(
    grad_p: Tensor,
    p: Tensor,
    coef: Tensor,
    rank_of_row: Tensor,
    tau: Tensor,
    order: Tensor,
    xc: Tensor,
    a: Tensor,
    need_tau: bool,
) -> tuple[Tensor, Tensor]:
    """The vector-Jacobian product of :func:`rows_forward`'s rows: ``(grad_x, grad_tau)``."""
    return _state["rows_backward"](  # type: ignore[operator]
        grad_p, p, coef, rank_of_row, tau, order, xc, a, need_tau, False
    )


# rows at least this long are sorted by the kernels' radix sort (numpy's sort is faster on
# shorter ones: 256 elements 0.09 ms against 0.15 for 64 rows, 1,024 elements 1.2 against 0.44)
_RADIX_MIN = 512


def ascending_order(x: Tensor) -> Tensor:
    """:func:`neuralsort._rows.ascending_order` (stable, ascending, ``-0`` as ``+0``), by the
    compiled radix sort for long float32 rows on the CPU."""
    if (
        x.dtype == torch.float32
        and x.shape[-1] >= _RADIX_MIN
        and not is_compiling()
        and not is_transformed(x)
        and usable(x)
    ):
        return _state["ascending_order"](x.detach())  # type: ignore[operator]
    return _numpy_order(x)
