"""AdamW parameter groups and the warmup + cosine learning-rate schedule of every chapter.

The thesis trains everything with AdamW (betas 0.9/0.98, eps 1e-6), linear warmup and a
cosine decay, stepped once per optimizer step. Weight decay only applies to matrices:
biases, norm weights and every other 1-d (or 0-d, e.g. a learnable temperature) parameter
get none, as do parameters named in ``train.no_decay`` (chapter 3 found that keeping the
image CLS token and the text embedding free of decay helped).

Each group carries an ``lr_scale``; its learning rate is ``train.lr * lr_scale`` times the
schedule factor, so per-layer scaling (``train.param_overrides``, or timm's
``param_groups_layer_decay`` which emits the same key) composes with the schedule.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from common.config import ConfigError, ParamOverride, TrainConfig


def param_groups(model: nn.Module, weight_decay: float, no_decay: Iterable[str] = (),
                 overrides: Sequence[ParamOverride] = ()) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into AdamW groups by (lr_scale, weight decay).

    A parameter gets weight decay 0 if it is a bias, has fewer than 2 dimensions (norm
    weights, CLS tokens of shape [D], temperatures) or its name contains a ``no_decay``
    substring. Then the first override whose ``match`` is a substring of the name sets its
    ``lr_scale`` and, unless the override's ``weight_decay`` is -1, its weight decay.
    Frozen parameters (``requires_grad=False``) are left out. Groups keep the order in which
    their first parameter appears and list their parameter names under ``param_names``.
    """
    no_decay = tuple(no_decay)
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.ndim < 2 or name.endswith(".bias") or any(s in name for s in no_decay)
        decay = 0.0 if plain else float(weight_decay)
        lr_scale = 1.0
        for override in overrides:
            if override.match and override.match in name:
                lr_scale = float(override.lr_scale)
                if override.weight_decay >= 0:
                    decay = float(override.weight_decay)
                break
        group = groups.setdefault((lr_scale, decay), {
            "params": [], "param_names": [], "weight_decay": decay, "lr_scale": lr_scale})
        group["params"].append(param)
        group["param_names"].append(name)
    names = [n for g in groups.values() for n in g["param_names"]]
    idle = [s for s in no_decay if not any(s in n for n in names)]
    if idle:  # e.g. a frozen embedding: the setting would silently do nothing
        raise ConfigError(f"config error: train.no_decay={idle} names no trainable parameter; "
                          f"unfreeze it (e.g. <encoder>.embed_trainable) or drop the entry")
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    groups: list[dict[str, Any]] | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` of ``model`` (or over ready-made ``groups``, e.g. timm's
    layer-decay groups); each group's lr is ``cfg.lr * group["lr_scale"]`` (scale 1 if absent)."""
    if groups is None:
        groups = param_groups(model, cfg.weight_decay, cfg.no_decay, cfg.param_overrides)
    if not groups:
        raise ConfigError("config error: the model has no trainable parameters "
                          "(all requires_grad=False?); nothing to train")
    groups = [{**g, "lr": cfg.lr * g.get("lr_scale", 1.0)} for g in groups]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


def warmup_steps(cfg: TrainConfig) -> int:
    """``train.warmup_steps``, or ``warmup_frac * steps`` when it is -1 (the thesis: 10%)."""
    if cfg.warmup_steps >= 0:
        return cfg.warmup_steps
    return round(cfg.warmup_frac * cfg.steps)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based), as nanoGPT's ``get_lr``.

    Warmup: ``(step + 1) / (W + 1)`` for ``step < W``, so the first step already learns and
    step ``W`` runs at the peak. Then a half cosine from the peak down to ``min_lr`` at
    ``cfg.steps``, and ``min_lr`` beyond (a resumed run that trains longer).
    """
    warmup = warmup_steps(cfg)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    min_ratio = cfg.min_lr / cfg.lr
    progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + coeff * (1.0 - min_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> LambdaLR:
    """Per-step warmup + cosine for every group (each scaled by its own lr_scale).

    A LambdaLR around a plain function: its ``state_dict`` is just counters and base lrs
    (JSON-friendly), so a resumed run continues the schedule exactly.
    """
    if cfg.lr <= 0:
        raise ConfigError(f"config error: train.lr must be > 0 (got {cfg.lr})")

    def factor(step: int) -> float:
        return lr_factor(step, cfg)

    return LambdaLR(optimizer, factor)
