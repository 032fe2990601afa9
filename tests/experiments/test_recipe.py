"""The recipe's defaults, flags and checks (neuralsort.experiments.recipe)."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from neuralsort.experiments.config import UserError
from neuralsort.experiments.recipe import (
    RECIPE_DEFAULTS,
    add_recipe_flags,
    augment_batch,
    check_recipe,
    make_optimizer,
    make_scheduler,
    parameter_groups,
)


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
        ("norm_bias_lr", 0.0, "--norm_bias_lr must be a positive number"),
        ("nesterov", True, None),  # fine with sgd and momentum 0.9 (below: not without them)
    ],
)
def test_check_recipe(key, value, message):
    cfg = {**RECIPE_DEFAULTS, "nloglr": 3.0}
    check_recipe(cfg)  # the defaults pass
    cfg[key] = value
    if message is None:
        check_recipe(cfg)
        return
    with pytest.raises(UserError, match=message):
        check_recipe(cfg)


@pytest.mark.parametrize("change", [{"optimizer": "adam"}, {"momentum": 0.0}])
def test_nesterov_needs_sgd_with_momentum(change):
    with pytest.raises(UserError, match="--nesterov needs --optimizer sgd and a --momentum"):
        check_recipe({**RECIPE_DEFAULTS, "nesterov": True, **change})


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4))


def test_parameter_groups_scale_the_norm_biases():
    torch.manual_seed(0)
    net = _net()
    cfg = {**RECIPE_DEFAULTS, "lr": 0.5, "weight_decay": 1e-3, "norm_bias_lr": 64.0}
    opt = make_optimizer(parameter_groups(net, cfg), {**cfg, "nesterov": True})
    rest, biases = opt.param_groups
    assert {id(p) for p in biases["params"]} == {id(net[1].bias), id(net[3].bias)}
    assert len(rest["params"]) == 4  # conv weight and bias, the two norm weights
    assert biases["lr"] == 32.0 and biases["weight_decay"] == pytest.approx(1e-3 / 64)
    assert rest["lr"] == 0.5 and rest["weight_decay"] == 1e-3
    assert rest["nesterov"] and biases["nesterov"] and rest["momentum"] == 0.9
    # each step decays a norm bias as much as any other weight: lr x weight decay is the same
    assert biases["lr"] * biases["weight_decay"] == pytest.approx(rest["lr"] * rest["weight_decay"])
    # the schedule scales both groups alike
    sched = make_scheduler(
        opt, {"lr_schedule": "cosine", "warmup_epochs": 0}, steps_per_epoch=2, num_epochs=1
    )
    opt.step()
    sched.step()
    assert biases["lr"] / rest["lr"] == pytest.approx(64.0)


def test_parameter_groups_default_to_one_group():
    net = _net()
    params = parameter_groups(net, {**RECIPE_DEFAULTS})
    assert [id(p) for p in params] == [id(p) for p in net.parameters()]
    opt = make_optimizer(params, {**RECIPE_DEFAULTS, "lr": 0.1})
    assert len(opt.param_groups) == 1 and not opt.param_groups[0]["nesterov"]


def test_flipshift_translates_by_at_most_two_pixels_and_flips():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 2] = 1.0  # one bright pixel, left of the centre
    out = augment_batch(x, "flipshift", torch.Generator().manual_seed(0))
    cols = out[:, 0].amax(1).argmax(1)  # the column the pixel went to
    moved = (cols - 2).abs()
    mirrored = (cols - 6).abs()  # 8 - 2: its mirror image
    assert bool(((moved <= 2) | (mirrored <= 2)).all())
    assert bool((mirrored <= 2).any()) and bool((moved <= 2).any())
    assert out.sum(dim=(1, 2, 3)).eq(1.0).all()  # one pixel each: moved, never smeared


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


def test_augment_batch_draws_from_a_generator_on_the_images_device(device):
    # sort/quantile draw the shifts from each rank's noise stream, which lives on the device
    x = torch.rand(6, 1, 8, 8, device=device)
    outs = [
        augment_batch(x, "flipshift", torch.Generator(device=device).manual_seed(3))
        for _ in range(2)
    ]
    assert outs[0].device == x.device and outs[0].shape == x.shape
    assert torch.equal(outs[0], outs[1])
