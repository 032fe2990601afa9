"""The training recipe's pieces shared by the experiments: optimiser, learning-rate schedule,
augmentation, mixed precision (AMP), progress bars, and the recipe's defaults, flags and checks."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed
from .checkpoint import restore_generator
from .config import AMP_MODES, UserError, add_flag, check_number

__all__ = [
    "RECIPE_DEFAULTS",
    "add_recipe_flags",
    "check_recipe",
    "OPTIMIZERS",
    "SCHEDULES",
    "AUGMENTS",
    "make_optimizer",
    "parameter_groups",
    "make_scheduler",
    "augment_batch",
    "resolve_augment",
    "index_stream",
    "Amp",
    "restore_generator",
    "progress",
    "count_parameters",
]

T = TypeVar("T")

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
AUGMENTS = ("auto", "none", "shift", "flipshift", "flipcrop")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


# The paper's training recipe of the kNN experiments (dknn and the baselines' networks): SGD with
# momentum 0.9 and L2 weight decay 5e-4 at a constant learning rate (``nloglr``, 10^-3 by default),
# no warm-up, augmentation by the images' kind; evaluated on the images alone (no test-time
# flips). A command splices it into its DEFAULTS.
RECIPE_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "nesterov": False,
    "norm_bias_lr": 1.0,
    "weight_decay": 5e-4,
    "lr_schedule": "constant",
    "warmup_epochs": 0.0,
    "augment": "auto",
    "test_flip": False,
}

# How each recipe flag parses its value (the help is the command's: it states the command's
# defaults)
_RECIPE_FLAGS: dict[str, dict[str, Any]] = {
    "optimizer": {"choices": list(OPTIMIZERS)},
    "momentum": {"type": float},
    "nesterov": {"action": argparse.BooleanOptionalAction},
    "norm_bias_lr": {"type": float, "metavar": "M"},
    "weight_decay": {"type": float},
    "lr_schedule": {"choices": list(SCHEDULES)},
    "warmup_epochs": {"type": float},
    "augment": {"choices": list(AUGMENTS)},
    "test_flip": {"action": argparse.BooleanOptionalAction},
}


def add_recipe_flags(group: Any, helps: dict[str, str | dict[str, Any] | None]) -> None:
    """Add the recipe flags named in ``helps`` to ``group``, in that order.

    Each value is the flag's help (None: none), or a dict of further :func:`add_flag` arguments
    (``help``, ``metavar``).
    """
    for key, extra in helps.items():
        if key not in _RECIPE_FLAGS:
            raise ValueError(f"add_recipe_flags: unknown recipe flag {key!r}")
        kwargs = dict(extra) if isinstance(extra, dict) else {"help": extra}
        add_flag(group, f"--{key}", **_RECIPE_FLAGS[key], **kwargs)


def check_recipe(cfg: dict[str, Any]) -> None:
    """Check the recipe settings ``cfg`` holds (see :data:`RECIPE_DEFAULTS`, and ``nloglr``);
    :class:`UserError` naming the flag on a bad value."""
    choices = {"optimizer": OPTIMIZERS, "lr_schedule": SCHEDULES, "augment": AUGMENTS}
    for key, names in choices.items():
        if key in cfg and cfg[key] not in names:
            raise UserError(f"unknown --{key} {cfg[key]!r}; choose one of {', '.join(names)}")
    for key in ("momentum", "weight_decay", "warmup_epochs"):
        if key in cfg:
            check_number(cfg, key, positive=False)
    if "norm_bias_lr" in cfg:
        check_number(cfg, "norm_bias_lr")
    if cfg.get("nesterov") and (cfg.get("optimizer") != "sgd" or not cfg.get("momentum")):
        raise UserError("--nesterov needs --optimizer sgd and a --momentum above 0")
    nloglr = cfg.get("nloglr")
    if nloglr is not None and not (
        isinstance(nloglr, int | float) and not isinstance(nloglr, bool) and math.isfinite(nloglr)
    ):
        raise UserError(f"--nloglr must be a finite number, got {nloglr!r}")


def make_optimizer(params: Any, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """``cfg["optimizer"]`` with ``cfg["lr"]`` (else ``10**-cfg["nloglr"]``) and ``weight_decay``.

    ``sgd`` is the paper's (momentum, L2 weight decay; Nesterov momentum with ``nesterov``);
    ``adam`` uses L2 weight decay, ``adamw`` decoupled weight decay. ``params`` may be
    :func:`parameter_groups`, whose groups scale the learning rate and the weight decay.
    """
    name = cfg["optimizer"]
    lr = float(cfg["lr"]) if cfg.get("lr") is not None else 10.0 ** (-float(cfg["nloglr"]))
    wd = float(cfg["weight_decay"])
    if isinstance(params, list) and params and isinstance(params[0], dict):
        params = [
            {
                "params": g["params"],
                "lr": lr * g.get("lr_scale", 1.0),
                "weight_decay": wd * g.get("weight_decay_scale", 1.0),
            }
            for g in params
        ]
    if name == "sgd":
        momentum = float(cfg["momentum"])
        nesterov = bool(cfg.get("nesterov", False))
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise UserError(f"unknown --optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def parameter_groups(model: nn.Module, cfg: dict[str, Any]) -> Any:
    """The parameters of ``model`` for :func:`make_optimizer`.

    With ``cfg["norm_bias_lr"]`` = M other than 1 (a trick of the fast CIFAR-10 trainers), two
    groups: the biases of the normalisation layers (batch, group and layer norm) learn at M times
    the learning rate with their weight decay divided by M (so that each step decays them as much
    as the other weights), and every other parameter as usual. Otherwise all parameters in one
    group, as ``model.parameters()``.
    """
    mult = float(cfg.get("norm_bias_lr", 1.0))
    params = list(model.parameters())
    if mult == 1.0:
        return params
    biases = [m.bias for m in model.modules() if isinstance(m, _NORMS) and m.bias is not None]
    if not biases:
        return params
    chosen = {id(b) for b in biases}
    rest = [p for p in params if id(p) not in chosen]
    return [
        {"params": rest},
        {"params": biases, "lr_scale": mult, "weight_decay_scale": 1.0 / mult},
    ]


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: dict[str, Any], *, steps_per_epoch: int, num_epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step learning-rate multiplier: linear warm-up then ``cfg["lr_schedule"]``.

    ``constant``; ``cosine`` decays to 0 over all steps; ``step`` divides by 10 at 50% and 75%.
    """
    kind = cfg["lr_schedule"]
    if kind not in SCHEDULES:
        raise UserError(f"unknown --lr_schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    total = max(1, steps_per_epoch * num_epochs)
    warm = int(round(float(cfg.get("warmup_epochs") or 0.0) * steps_per_epoch))

    def factor(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, total - warm))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def resolve_augment(kind: str, in_channels: int) -> str:
    """``auto`` means ``flipcrop`` for colour images and ``none`` for grayscale."""
    if kind not in AUGMENTS:
        raise UserError(f"unknown --augment {kind!r}; choose one of {', '.join(AUGMENTS)}")
    if kind == "auto":
        return "flipcrop" if in_channels == 3 else "none"
    return kind


def augment_batch(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Random translations (``shift``: up to 2 px; ``flipshift``: up to 2 px plus horizontal
    flips; ``flipcrop``: up to 4 px plus horizontal flips).

    Borders are filled by replicating edge pixels. Randomness comes only from ``generator``
    (on the CPU or on ``x``'s device), so runs are reproducible.
    """
    if kind == "none":
        return x
    pad = 4 if kind == "flipcrop" else 2
    b, c, h, w = x.shape
    on = generator.device  # draw where the generator lives, then move to the images

    def offsets() -> Tensor:
        return torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=on).to(x.device)

    oy, ox = offsets(), offsets()
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    rows = (oy[:, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    xp = xp.gather(2, rows.expand(b, c, h, w + 2 * pad))
    cols = (ox[:, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    out = xp.gather(3, cols.expand(b, c, h, w))
    if kind in ("flipshift", "flipcrop"):
        flip = (torch.rand(b, generator=generator, device=on) < 0.5).to(x.device).view(b, 1, 1, 1)
        out = torch.where(flip, out.flip(3), out)
    return out


def index_stream(n: int, total: int, generator: torch.Generator) -> Tensor:
    """``total`` indices into ``range(n)``: concatenated independent shuffles (each a full pass)."""
    reps = -(-total // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])[:total]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Amp:
    """Mixed precision for the training steps: ``off``, ``bf16`` or ``fp16``.

    ``autocast()`` wraps the forward pass in :func:`torch.autocast` with that dtype (convolutions
    and matrix products then run in half precision, losses and softmaxes in float32); ``fp16``
    also scales the loss with a :class:`torch.amp.GradScaler`, which skips a step whose gradients
    overflowed. ``off`` is exactly the plain float32 step. Evaluation is not affected.

    Args:
        mode: one of ``off``, ``bf16``, ``fp16``.
        device: the training device (``cpu`` autocast supports both half types).
    """

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in AMP_MODES:
            raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
        self.mode = mode
        self.device = torch.device(device)
        self.enabled = mode != "off"
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode, torch.float32)
        if mode == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("--amp bf16 needs a GPU with bfloat16 support; use --amp fp16")
        try:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=mode == "fp16")
        except (RuntimeError, ValueError, TypeError) as exc:
            raise UserError(
                f"--amp fp16 is not supported on {self.device.type} ({exc}); use --amp bf16 or off"
            ) from None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the forward pass (a no-op when ``off``)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward()`` then ``optimizer.step()``, through the gradient scaler for fp16."""
        if not self.scaler.is_enabled():
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The gradient scaler's state (empty unless fp16)."""
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (ignored when empty or when this run does not scale)."""
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)


def progress(iterable: Iterable[T], **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` on stderr; off with ``NEURALSORT_PROGRESS=0`` or rank != 0.

    Returns the ``tqdm`` object (iterate it; ``set_postfix`` works).
    """
    from tqdm.auto import tqdm

    off = os.environ.get("NEURALSORT_PROGRESS", "1") == "0" or distributed.rank() != 0
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, disable=off, **kwargs)
