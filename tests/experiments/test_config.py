"""The shared checks of the settings (neuralsort.experiments.config) and of the recipe
(neuralsort.experiments.recipe), and every training command using them."""

from __future__ import annotations

import argparse

import pytest

from neuralsort.experiments.cli import main
from neuralsort.experiments.config import (
    COMMON_DEFAULTS,
    UserError,
    check_common,
    check_int,
    check_number,
)
from neuralsort.experiments.recipe import RECIPE_DEFAULTS, add_recipe_flags, check_recipe


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4", None])
def test_check_int_names_the_flag(value):
    with pytest.raises(UserError, match=r"--batch_size must be an integer >= 1, got"):
        check_int({"batch_size": value}, "batch_size")


def test_check_int_minimum_and_value():
    assert check_int({"num_epochs": 0}, "num_epochs", 0) == 0
    with pytest.raises(UserError, match=r"--n must be an integer >= 2"):
        check_int({"n": 1}, "n", 2)


@pytest.mark.parametrize("value", [0, -1.5, float("inf"), float("nan"), True, "1"])
def test_check_number_positive(value):
    with pytest.raises(UserError, match=r"--tau must be a positive number, got"):
        check_number({"tau": value}, "tau")


def test_check_number_non_negative_gives_a_float():
    assert check_number({"weight_decay": 0}, "weight_decay", positive=False) == 0.0
    assert isinstance(check_number({"tau": 2}, "tau"), float)
    with pytest.raises(UserError, match=r"--weight_decay must be a number >= 0, got -1"):
        check_number({"weight_decay": -1}, "weight_decay", positive=False)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_epochs", -1, "--num_epochs must be an integer >= 0"),
        ("steps_per_epoch", 0, "--steps_per_epoch must be an integer >= 1"),
        ("threads", 0, "--threads must be an integer >= 1"),
        ("amp", "fp8", "--amp must be one of off, bf16, fp16"),
    ],
)
def test_check_common(key, value, message):
    cfg = dict(COMMON_DEFAULTS)
    check_common(cfg)  # the defaults pass
    cfg[key] = value
    with pytest.raises(UserError, match=message):
        check_common(cfg)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optimizer", "rmsprop", "unknown --optimizer 'rmsprop'; choose one of sgd, adam, adamw"),
        ("lr_schedule", "linear", "unknown --lr_schedule 'linear'"),
        ("augment", "mixup", "unknown --augment 'mixup'"),
        ("momentum", -0.1, "--momentum must be a number >= 0"),
        ("weight_decay", "x", "--weight_decay must be a number >= 0"),
        ("warmup_epochs", float("inf"), "--warmup_epochs must be a number >= 0"),
        ("nloglr", float("nan"), "--nloglr must be a finite number"),
    ],
)
def test_check_recipe(key, value, message):
    cfg = {**RECIPE_DEFAULTS, "nloglr": 3.0}
    check_recipe(cfg)  # the defaults pass
    cfg[key] = value
    with pytest.raises(UserError, match=message):
        check_recipe(cfg)


def test_check_recipe_checks_only_what_the_command_has():
    check_recipe({"lr_schedule": "cosine", "weight_decay": 0.0})  # no optimizer, no augment


def test_add_recipe_flags_in_order_with_the_commands_help():
    parser = argparse.ArgumentParser()
    add_recipe_flags(parser, {"lr_schedule": "the schedule", "warmup_epochs": {"metavar": "E"}})
    flags = [a.option_strings[0] for a in parser._actions[1:]]
    assert flags == ["--lr_schedule", "--warmup_epochs"]
    args = parser.parse_args(["--lr-schedule", "cosine", "--warmup_epochs", "1.5"])
    assert args.lr_schedule == "cosine" and args.warmup_epochs == 1.5
    with pytest.raises(ValueError, match="unknown recipe flag 'lr'"):
        add_recipe_flags(parser, {"lr": None})


@pytest.mark.parametrize("command", ["dknn", "baseline", "sort", "quantile"])
@pytest.mark.parametrize(
    "setting, message",
    [
        ("amp: fp8", "--amp must be one of off, bf16, fp16, got 'fp8'"),
        ("threads: 0", "--threads must be an integer >= 1, got 0"),
        ("num_epochs: -1", "--num_epochs must be an integer >= 0, got -1"),
        ("lr_schedule: linear", "unknown --lr_schedule 'linear'"),
    ],
)
def test_every_command_checks_the_shared_settings(command, setting, message, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(setting + "\n")
    out = tmp_path / "run"
    argv = [command, "--config", str(config), "--out", str(out), "--data_dir", str(tmp_path)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # stopped before a run folder was made
