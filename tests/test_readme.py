"""The README's example prints what the README says, and CI runs the README's own commands."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_usage_example_prints_what_the_readme_says():
    code = _blocks("python")[0]
    expected = _blocks("text")[0]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "README.md", "exec"), {})
    assert buf.getvalue().strip() == expected.strip()


def test_ci_runs_the_readme_commands():
    setup, test = _blocks("bash")[:2]
    ci = (ROOT / ".ci" / "run").read_text()
    for line in setup.strip().splitlines()[1:] + test.strip().splitlines():
        assert line.strip() in ci, f"README command missing from .ci/run: {line}"
    assert "python3 -m venv" in ci


def test_results_grids_match_the_run_folders():
    """Every number in the README's results comes from results/, as `report --readme` writes it."""
    from neuralsort.experiments.tables.readme import render_readme

    text, blocks = render_readme(README, ROOT, ROOT / "results")
    assert blocks == ["table1", "table2", "table3", "compute"]
    assert text == README, "run `neuralsort report results --readme README.md`"


def test_citation_file_cites_the_readme_bibtex():
    import yaml

    bib = _blocks("bibtex")[0]
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())["preferred-citation"]
    fields = dict(re.findall(r"(\w+)\s*=\s*\{(.*?)\},?\n", bib))
    assert cff["title"] == fields["title"]
    assert str(cff["year"]) == fields["year"]
    assert cff["url"] == fields["url"]
    names = [f"{a['given-names']} {a['family-names']}" for a in cff["authors"]]
    assert " and ".join(names) == fields["author"]
