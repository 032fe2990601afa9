"""MkDocs hooks: serve the math renderer from the site, and show the committed results.

- MathJax 3 (the ``tex-chtml`` component, its fonts and the parts it loads on demand) is copied
  into the site as ``js/mathjax/`` from the package the docs extra installs
  (``django-static-mathjax``, a plain copy of MathJax despite its name), so formulas render with
  no network.
- The plots of results/ and results/ops/ are added to the site as ``results/...``, for the
  pages to show.
- ``<!-- ops-table results/ops/ops_cpu-1threads.csv -->`` becomes a table of the operator
  benchmark (median forward + backward time, ratio to the floor), ``<!-- csv-table FILE -->`` a
  plain table of any CSV file, both read from the committed files when the site is built.
- A line ``<!-- include results/table1.md -->`` in a page is replaced by that file's text, its
  headings moved one level down and its links to run folders (which are in the repository, not
  on the site) written as repository paths; a table's ``run folder`` column is left out, with
  one line under the table saying where the folders are (a column of paths made the table wider
  than the page). The tables are never copied by hand.
"""

from __future__ import annotations

import csv
import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
MATHJAX_URI = "js/mathjax"
# tex-chtml.js, then what it loads by itself: TeX extensions (autoload), the CommonHTML fonts, the
# menu and its accessibility parts (the speech rules included)
_MATHJAX_PARTS = ("tex-chtml.js", "input/tex", "output/chtml", "ui", "a11y", "sre")
_INCLUDE = re.compile(r"^<!-- include (\S+) -->$", re.M)
_OPS = re.compile(r"^<!-- ops-table (\S+) -->$", re.M)
_CSV = re.compile(r"^<!-- csv-table (\S+) -->$", re.M)
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_CELL_EDGE = re.compile(r"(?<!\\)\|")  # a table's column separator (not an escaped \|)


def mathjax_files() -> dict[str, Path]:
    """``{site path: installed file}`` of the MathJax copy the site serves, its licence included."""
    try:
        import mathjax  # django-static-mathjax: MathJax's own files under static/mathjax/
    except ImportError:
        mathjax = None
    home = Path(mathjax.__file__).parent / "static" / "mathjax" if mathjax else Path()
    es5 = home / "es5"
    if mathjax is None or not (es5 / "tex-chtml.js").is_file():
        raise PluginError(
            "MathJax is not installed: the site serves its own copy of it; install the docs "
            'extra (pip install -e ".[docs]"), which brings django-static-mathjax'
        )
    found = {f"{MATHJAX_URI}/LICENSE": home / "LICENSE"}
    for part in _MATHJAX_PARTS:
        top = es5 / part
        for path in [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()):
            found[f"{MATHJAX_URI}/{path.relative_to(es5).as_posix()}"] = path
    return found


def on_files(files, config):
    for uri, path in mathjax_files().items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    results = ROOT / "results"
    for png in sorted([*results.glob("*.png"), *(results / "ops").rglob("*.png")]):
        uri = png.relative_to(ROOT).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files


def _included(rel: str) -> str:
    path = ROOT / rel
    base = posixpath.dirname(rel)
    text = path.read_text()

    def link(m: re.Match) -> str:
        bang, label, target = m.groups()
        if "://" in target or target.startswith("#"):
            return m.group(0)
        repo_path = posixpath.normpath(posixpath.join(base, target))
        if bang:  # an image: published under the same path by on_files
            return f"![{label}]({repo_path})"
        if label.strip("`") == target:
            return f"`{repo_path}`"
        return f"{label} (`{repo_path}`)"

    text = _without_run_folders(text, posixpath.join(base, Path(rel).stem))
    text = _LINK.sub(link, text)
    return re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)


def _without_run_folders(text: str, folders: str) -> str:
    """``text`` with the last column of each table whose last column is ``run folder`` removed,
    and a line after such a table naming the folders: ``folders/<budget>/<cell>/``."""
    out: list[str] = []
    dropping = False
    for line in text.split("\n"):
        cells = _CELL_EDGE.split(line) if line.startswith("|") else []
        if len(cells) > 3 and cells[-2].strip() == "run folder":
            dropping = True
        elif not cells and dropping:
            out += ["", f"Each run's folder in the repository: `{folders}/<budget>/<cell>/`."]
            dropping = False
        out.append("|".join(cells[:-2] + [""]) if dropping else line)
    return "\n".join(out)


def _rows(rel: str) -> list[dict[str, str]]:
    with open(ROOT / rel, newline="") as f:
        return list(csv.DictReader(f))


def _ops_table(rel: str) -> str:
    """Rows = operators, columns = sizes: "median ms (ratio to the floor x)"."""
    rows = _rows(rel)
    sizes = list(dict.fromkeys((r["B"], r["n"]) for r in rows))
    ops = list(dict.fromkeys(r["op"] for r in rows))
    cell = {(r["op"], r["B"], r["n"]): r for r in rows}
    out = ["| op | " + " | ".join(f"B={b}, n={n}" for b, n in sizes) + " |"]
    out.append("| --- " * (len(sizes) + 1) + "|")
    for op in ops:
        vals = []
        for b, n in sizes:
            r = cell.get((op, b, n))
            vals.append(
                f"{float(r['median_ms']):.2f} ms ({float(r['vs_floor']):.2f}×)" if r else "-"
            )
        out.append(f"| {op} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def _csv_table(rel: str) -> str:
    rows = _rows(rel)
    cols = list(rows[0])

    def fmt(v: str) -> str:
        try:
            x = float(v)
        except ValueError:
            return v
        return v if x.is_integer() else f"{x:.3g}"

    out = ["| " + " | ".join(cols) + " |", "| --- " * len(cols) + "|"]
    out += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    markdown = _OPS.sub(lambda m: _ops_table(m.group(1)), markdown)
    markdown = _CSV.sub(lambda m: _csv_table(m.group(1)), markdown)
    return _INCLUDE.sub(lambda m: _included(m.group(1)), markdown)
