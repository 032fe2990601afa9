"""The worked example of docs/experiments.md, "Adding an experiment", runs as written: its module
and recipe saved as files, registered as a command, trained, resumed and checked."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from neuralsort.experiments import cli

PAGE = Path(__file__).resolve().parents[2] / "docs" / "experiments.md"


def section_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block of the page's "Adding an experiment" section."""
    text = PAGE.read_text()
    start = text.index("\n## Adding an experiment\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end > 0 else None]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The page's module as ranker.py and its recipe as rank.yaml in a working directory."""
    blocks = section_blocks()
    module, run = [code for lang, code in blocks if lang == "python"]
    (recipe,) = [code for lang, code in blocks if lang == "yaml"]
    assert module.startswith("# ranker.py\n")
    (tmp_path / "ranker.py").write_text(module)
    (tmp_path / "rank.yaml").write_text(recipe)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", list(cli.COMMANDS))  # the example appends to it
    yield run
    sys.modules.pop("ranker", None)


def test_the_example_is_short():
    module = section_blocks()[0][1]
    assert len(module.splitlines()) <= 100


def test_adding_an_experiment_runs_as_written(example, tmp_path, capsys):
    exec(compile(example, str(PAGE), "exec"), {"__name__": "__docs__"})
    out = tmp_path / "runs" / "rank-demo"
    assert {"config.yaml", "log.jsonl", "metrics.json", "last.pt", "best.pt", "history.png"} <= {
        p.name for p in out.iterdir()
    }
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["n"], config["tau"], config["num_epochs"], config["lr"]) == (10, 0.5, 4, 0.05)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 4
    assert metrics["test_spearman"] > 0.9  # it learnt the hidden order
    printed = capsys.readouterr().out
    assert f"test Spearman {metrics['test_spearman']:.3f}" in printed
    assert re.search(r"test Spearman 0\.9\d\d", printed)  # what the page says it ends with

    # a registered command like the others: its help, and a resume of the finished run
    assert cli.main(["rank", "--resume", "--out", str(out), "--num_epochs", "5"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert len(resumed["history"]) == 5 and resumed["history"][:4] == metrics["history"]
    with pytest.raises(SystemExit):
        cli.main(["rank", "--help"])
    assert "--lr_schedule" in capsys.readouterr().out


def test_the_example_checks_its_settings(example, capsys):
    import ranker  # noqa: F401 - the page's module, from the working directory

    cli.COMMANDS.append("ranker")
    assert cli.main(["rank", "--n", "1", "--out", "bad"]) == 2
    assert "--n must be an integer >= 2" in capsys.readouterr().err
    Path("bad.yaml").write_text("amp: fp8\n")  # the shared settings: checked by the loop
    assert cli.main(["rank", "--config", "bad.yaml", "--out", "bad"]) == 2
    assert "--amp must be one of off, bf16, fp16" in capsys.readouterr().err
    assert not Path("bad").exists()
