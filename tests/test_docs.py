"""Every ```python block of the documentation runs.

The blocks of one page run in order in one namespace, as a reader would paste them, so a later
block may use what an earlier one defined. A block meant to be read but not run (it needs a GPU,
data sets or minutes) is preceded by the line ``<!-- not run -->``. The README's blocks run too
(its first one is also checked against its printed output by tests/test_readme.py).
"""

from __future__ import annotations

import contextlib
import io
import re
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
