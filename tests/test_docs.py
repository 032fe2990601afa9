"""Every ```python block of the documentation runs.

The blocks of one page run in order in one namespace, as a reader would paste them, so a later
block may use what an earlier one defined. A block meant to be read but not run (it needs a GPU,
data sets or minutes) is preceded by the line ``<!-- not run -->``. The README's blocks run too
(its first one is also checked against its printed output by tests/test_readme.py).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
_BLOCK = re.compile(r"(<!-- not run -->\n)?```python\n(.*?)```", re.S)


def python_blocks(page: Path) -> list[tuple[int, str, bool]]:
    """``(line, code, runs)`` for each ```python block of ``page``."""
    text = page.read_text()
    return [
        (text.count("\n", 0, m.start(2)) + 1, m.group(2), m.group(1) is None)
        for m in _BLOCK.finditer(text)
    ]


def test_the_docs_have_examples():
    assert sum(len(python_blocks(p)) for p in PAGES) >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_examples_run(page: Path):
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for line, code, runs in python_blocks(page):
        if not runs:
            compile(code, f"{page.name}:{line}", "exec")  # still valid Python
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            # line numbers in a traceback point into the page
            exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)


def _api_entries() -> set[str]:
    text = "".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    entries = set(re.findall(r"^::: (\S+)", text, flags=re.M))
    # members listed under a module's entry
    for module, block in re.findall(r"^::: (\S+)\n((?:[ \t]+.*\n)*)", text, flags=re.M):
        entries.update(f"{module}.{m}" for m in re.findall(r"^\s+- (\w+)$", block, flags=re.M))
    return entries


def _resolve(path: str) -> object:
    """The object an API entry documents: the longest importable module, then attributes
    (``neuralsort.sinkhorn.sinkhorn`` is the function in the module, not the root's name)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def test_every_public_name_has_an_api_entry():
    import neuralsort
    import neuralsort.losses

    documented = {id(_resolve(entry)) for entry in _api_entries()}
    assert id(None) not in documented, "an API entry names nothing importable"
    modules = {"losses", "backends", "knn", "nn", "__version__"}
    for name in set(neuralsort.__all__) - modules:
        assert id(getattr(neuralsort, name)) in documented, name
    for name in neuralsort.losses.__all__:
        assert id(getattr(neuralsort.losses, name)) in documented, name
    assert id(neuralsort.backends) in documented


def test_pages_show_figures_that_exist():
    for page in (ROOT / "docs").rglob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\((img/[^)]+)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name}: {target}"


def test_mkdocs_build_strict(tmp_path):
    """The site builds with warnings as errors (where the docs extra is installed)."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
