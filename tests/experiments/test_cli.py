"""The ``neuralsort`` command line: the seed report's commands, --version, user errors."""

from __future__ import annotations

import argparse
import ast
import pathlib
import shlex

import pytest
import torch

from neuralsort.experiments.baseline import command as baseline
from neuralsort.experiments.cli import build_parser, main
from neuralsort.experiments.config import resolve_config
from neuralsort.experiments.dknn import command as dknn
from neuralsort.experiments.tables.grid import config_root

# The report's commands (seed/000_0cf7df97f5b2e5de.txt) with the script names replaced.
SEED_DKNN = [
    "--k=9 --tau=80 --nloglr=3 --method=deterministic --dataset=cifar10 --num_epochs=30",
    "--k=9 --tau=80 --nloglr=3 --method=deterministic --dataset=cifar100 --num_epochs=30",
    "--k=9 --tau=80 --nloglr=3 --method=stochastic --dataset=cifar10 --num_epochs=30",
    "--k=9 --tau=80 --nloglr=3 --method=stochastic --dataset=cifar100 --num_epochs=30",
]
SEED_BASELINE = ["--dataset=cifar10 --nloglr=3", "--dataset=cifar100 --nloglr=3"]


@pytest.mark.parametrize("line", SEED_DKNN)
def test_seed_dknn_lines_parse(line):
    args = build_parser().parse_args(["dknn", *shlex.split(line)])
    cfg = resolve_config(args, dknn.DEFAULTS)
    assert cfg["k"] == 9 and cfg["tau"] == 80.0 and cfg["nloglr"] == 3.0
    assert cfg["num_epochs"] == 30 and cfg["method"] in ("deterministic", "stochastic")
    assert cfg["method"] in line and cfg["dataset"] in line
    # the original's defaults for the flags the report leaves out
    assert cfg["num_train_queries"] == 100 and cfg["num_train_neighbors"] == 100
    assert cfg["num_samples"] == 5 and cfg["resume"] is False


@pytest.mark.parametrize("line", SEED_BASELINE)
def test_seed_baseline_lines_parse(line):
    args = build_parser().parse_args(["baseline", *shlex.split(line)])
    cfg = resolve_config(args, baseline.DEFAULTS)
    assert cfg["method"] == "cnn" and cfg["nloglr"] == 3.0 and cfg["dataset"] in line


def test_all_seed_flags_and_dashed_aliases():
    line = (
        "dknn --k 3 --tau 1 --nloglr 4 --method stochastic --dataset mnist --num_epochs 2 "
        "--num_train_queries 50 --num-test-queries 20 --num-train-neighbors 60 "
        "--num_samples 2 --resume --data-dir /d --out /o --seed 3 --device cpu "
        "--steps-per-epoch 5 --optimizer adam --lr_schedule cosine"
    )
    args = build_parser().parse_args(shlex.split(line))
    cfg = resolve_config(args, dknn.DEFAULTS)
    assert (cfg["num_test_queries"], cfg["num_train_neighbors"], cfg["num_samples"]) == (20, 60, 2)
    assert cfg["resume"] is True and cfg["data_dir"] == "/d" and cfg["steps_per_epoch"] == 5
    assert cfg["optimizer"] == "adam" and cfg["lr_schedule"] == "cosine"


def test_help_lists_each_command_on_one_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    commands = ["dknn", "baseline", "sort", "quantile", "reproduce", "report", "info"]
    for cmd in commands:
        (line,) = [x for x in out.splitlines() if x.split()[:1] == [cmd]]
        assert len(line.split()) > 2, line  # the name, then its help on the same line


def test_subcommand_help_groups_flags_and_names_a_flags_value_once(capsys):
    with pytest.raises(SystemExit):
        main(["dknn", "--help"])
    out = capsys.readouterr().out
    assert "--num_train_queries, --num-train-queries NUM_TRAIN_QUERIES" in out
    assert "--num_train_queries NUM_TRAIN_QUERIES," not in out
    headings = [line for line in out.splitlines() if line.endswith(":") and not line[0].isspace()]
    for group in ("run folder:", "data:", "training length and precision:"):
        assert group in headings, headings


def test_version_and_bad_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "neuralsort" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["dknn", "--method", "random"])
    assert e.value.code == 2
    assert main([]) == 2


def test_bad_value_is_a_one_line_user_error(tmp_path, capsys):
    rc = main(
        [
            "dknn",
            "--dataset",
            "digits",
            "--k",
            "20",
            "--num_train_neighbors",
            "10",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "--num_train_neighbors" in err and "Traceback" not in err


def _shipped(folder: str) -> list[str]:
    return sorted(
        f"{folder}/{p.name}" for p in (config_root() / folder).iterdir() if p.name.endswith(".yaml")
    )


CONFIGS = _shipped("dknn")
BASELINE_CONFIGS = _shipped("baseline")


@pytest.mark.parametrize(
    "command, path", [("dknn", p) for p in CONFIGS] + [("baseline", p) for p in BASELINE_CONFIGS]
)
def test_shipped_configs_resolve(command, path):
    module = dknn if command == "dknn" else baseline
    args = build_parser().parse_args([command, "--config", path, "--num_epochs", "1"])
    cfg = resolve_config(args, module.DEFAULTS)  # unknown keys would raise UserError
    assert cfg["num_epochs"] == 1 and cfg["dataset"] in (
        "digits",
        "mnist",
        "fashion-mnist",
        "cifar10",
        "cifar100",
    )
    assert cfg["model"] in (
        None,
        "mnist-convnet",
        "resnet18",
        "digits-net",
        "fastnet",
        "fastnet-half",
    )


def test_configs_exist():
    assert {"dknn/paper.yaml", "dknn/mnist-fast.yaml", "dknn/digits.yaml"} <= set(CONFIGS)
    assert {"dknn/cifar10-fast.yaml"} <= set(CONFIGS)
    assert BASELINE_CONFIGS == ["baseline/cifar10-fast.yaml"]


def test_subnormals_flushed_only_while_a_command_runs(tmp_path, monkeypatch):
    seen = []

    def fake_main(args):
        seen.append(float(torch.tensor([1e-40], dtype=torch.float32) * 1.0))
        return 0

    from neuralsort.experiments import cli

    parser = cli.build_parser
    monkeypatch.setattr(
        cli,
        "build_parser",
        lambda: _with_func(parser(), fake_main),
    )
    assert cli.main(["report", str(tmp_path)]) == 0
    assert seen == [0.0]  # flushed inside the command
    assert float(torch.tensor([1e-40], dtype=torch.float32) * 1.0) != 0.0  # restored


def _with_func(parser, func):
    parser.set_defaults(func=func)
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    sub.choices["report"].set_defaults(func=func)
    return parser


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_flags_are_spelt_in_full(capsys):
    parsers = list(_all_parsers(build_parser()))
    assert len(parsers) >= 8 and not any(p.allow_abbrev for p in parsers)
    cases = [
        ("--num_epoch 2", "--num_epoch 2 (did you mean --num_epochs?)"),
        ("--num-epoch 2", "--num-epoch 2 (did you mean --num-epochs?)"),
        ("--num_epochs 2 --tua 1", "--tua 1 (did you mean --tau?)"),
    ]
    for line, unknown in cases:
        with pytest.raises(SystemExit) as e:
            main(["dknn", "--dataset", "digits", *shlex.split(line)])
        err = capsys.readouterr().err
        # the sub-command's usage, the unknown flag and the flag meant
        assert e.value.code == 2 and err.startswith("usage: neuralsort dknn "), err
        assert f"neuralsort dknn: error: unrecognized arguments: {unknown}\n" in err
    with pytest.raises(SystemExit):
        main(["--bogus"])
    assert capsys.readouterr().err.startswith("usage: neuralsort [-h]")


def test_dknn_help_shows_what_each_data_set_gets(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["dknn", "--help"])
    out = capsys.readouterr().out
    assert "number of neighbours (default 9; digits 5)" in out
    assert "NeuralSort temperature (default 16; digits 1)" in out
    assert "number of training epochs (default 200; digits 15, imagefolder:PATH 10)" in out
    assert "default sgd; digits adam, imagefolder:PATH adam" in out
    assert "validation images held out (default 5000; digits 360," in out
    # the epilog: every setting the quick start's data set changes, in one line
    (digits,) = [line for line in out.splitlines() if line.startswith("  digits: ")]
    for key, value in dknn.DATASET_DEFAULTS["digits"].items():
        if dknn.DEFAULTS.get(key) != value:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            assert f"{key} {shown}" in digits, key


def test_the_scripts_parsers_refuse_abbreviations_too():
    root = pathlib.Path(__file__).resolve().parents[2]
    scripts = [*root.glob("benchmarks/*.py"), *root.glob("examples/*.py"), root / "docs/figures.py"]
    found = 0
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and getattr(func, "attr", None) == "ArgumentParser":
                found += 1
                flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                assert flags.get("allow_abbrev") is False, path.name
    assert found >= 5
