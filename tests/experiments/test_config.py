"""The shared checks of the settings (neuralsort.experiments.config), and every training command
using them and the recipe's."""

from __future__ import annotations

import pytest

from neuralsort.experiments.cli import main
from neuralsort.experiments.config import (
    COMMON_DEFAULTS,
    UserError,
    check_common,
    check_int,
    check_number,
)


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
