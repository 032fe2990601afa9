"""Every ```python block of the documentation runs.

The blocks of one page run in order in one namespace, as a reader would paste them, so a later
block may use what an earlier one defined. A block meant to be read but not run (it needs a GPU,
data sets or minutes) is preceded by the line ``<!-- not run -->``. The README's blocks run too
(its first one is also checked against its printed output by tests/test_readme.py).
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import importlib.util
import io
import pathlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
_BLOCK = re.compile(r"(<!-- not run -->\n)?```python\n(.*?)```", re.S)
# a tag that makes a page load something from another host
_EXTERNAL_ASSET = re.compile(
    r"<(?:script|link|img|source)\b[^>]*\b(?:src|href)=\"(?:https?:)?//", re.I
)


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


def _api_doctests() -> list[doctest.DocTest]:
    """The ``>>>`` examples of every object in the API reference (members of modules included)."""
    finder = doctest.DocTestFinder()
    tests: dict[str, doctest.DocTest] = {}
    for entry in sorted(_api_entries()):
        obj = _resolve(entry)
        for test in finder.find(obj, getattr(obj, "__qualname__", entry)):
            if test.examples:
                tests.setdefault(f"{test.filename}:{test.lineno}", test)
    return list(tests.values())


def test_api_reference_examples_run():
    """Every docstring example the API reference shows gives the output it shows."""
    tests = _api_doctests()
    names = {t.name.rsplit(".", 1)[-1] for t in tests}
    # the package's operators and each documented module show at least one example
    assert {"neural_sort", "losses", "backends"} <= names, names
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = io.StringIO()
    for test in tests:
        runner.run(test, out=out.write)
    assert runner.failures == 0, out.getvalue()


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
    # the site reads offline: no page loads a script, style sheet, font or image from elsewhere,
    # and the math renderer it loads instead is in the site, with its fonts and licence
    for page in tmp_path.rglob("*.html"):
        assert not _EXTERNAL_ASSET.search(page.read_text()), page.relative_to(tmp_path)
    tau_page = (tmp_path / "choosing-tau" / "index.html").read_text()
    assert 'src="../js/mathjax/tex-chtml.js"' in tau_page and "arithmatex" in tau_page
    mathjax = tmp_path / "js" / "mathjax"
    assert (mathjax / "tex-chtml.js").is_file() and (mathjax / "LICENSE").is_file()
    assert len(list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))) > 10
    assert (mathjax / "input" / "tex" / "extensions" / "ams.js").is_file()  # loaded on demand


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# an absolute path of a machine (``/home/me/...``, ``imagefolder:/data/...``)
_MACHINE_PATH = re.compile(r"(?:^|[\s:=(\"'`])/[\w.-]+/", re.M)


@pytest.mark.parametrize("rel", ["results/table1.md", "results/table2.md", "results/table3.md"])
def test_results_tables_on_the_site(rel):
    """A results table as the results page shows it: no machine's paths, no column of run
    folders (it made the table wider than the page), a line saying where the folders are."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    text = _hooks()._included(rel)
    assert not _MACHINE_PATH.search((ROOT / rel).read_text()), rel
    assert not _MACHINE_PATH.search((ROOT / rel).with_suffix(".csv").read_text()), rel
    tables = re.findall(r"(?:^\|.*\|\n)+", text, flags=re.M)
    assert tables
    for table in tables:
        rows = [re.split(r"(?<!\\)\|", row) for row in table.splitlines()]
        assert len({len(cells) for cells in rows}) == 1, table[:200]  # every row as wide
        assert "run folder" not in rows[0][-2]
    folders = f"`results/{pathlib.PurePath(rel).stem}/<budget>/<cell>/`"
    assert f"Each run's folder in the repository: {folders}." in text


def test_docs_build_names_the_missing_math_renderer(monkeypatch):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    hooks = _hooks()
    monkeypatch.setitem(sys.modules, "mathjax", None)  # as if not installed
    with pytest.raises(hooks.PluginError, match=r"docs extra.*django-static-mathjax"):
        hooks.mathjax_files()
