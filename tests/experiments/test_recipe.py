"""The recipe's defaults, flags and checks (neuralsort.experiments.recipe)."""

from __future__ import annotations

import argparse

import pytest

from neuralsort.experiments.config import UserError
from neuralsort.experiments.recipe import RECIPE_DEFAULTS, add_recipe_flags, check_recipe


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
