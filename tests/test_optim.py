"""AdamW groups (who gets weight decay, overrides) and the warmup + cosine schedule."""
import math

import pytest
import torch
from torch import nn

from common.config import ParamOverride, TrainConfig
from common.optim import build_optimizer, build_scheduler, lr_factor, param_groups, warmup_steps


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))  # 3-d: only no_decay exempts it
        self.block = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.logit_scale = nn.Parameter(torch.tensor(2.6))  # 0-d
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _by_name(groups):
    return {n: (g["weight_decay"], g["lr_scale"]) for g in groups for n in g["param_names"]}


def test_weight_decay_only_on_matrices_and_no_decay_names():
    groups = param_groups(Toy(), 0.05, no_decay=["cls_token"])
    got = _by_name(groups)
    assert got == {
        "embed.weight": (0.05, 1.0), "cls_token": (0.0, 1.0), "block.weight": (0.05, 1.0),
        "block.bias": (0.0, 1.0), "norm.weight": (0.0, 1.0), "norm.bias": (0.0, 1.0),
        "head.weight": (0.05, 1.0), "head.bias": (0.0, 1.0), "logit_scale": (0.0, 1.0)}
    assert len(groups) == 2  # one per (lr_scale, wd); frozen params left out
    assert sum(len(g["params"]) for g in groups) == len(got)


def test_overrides_first_match_wins_and_minus_one_keeps_decay():
    overrides = [ParamOverride(match="head", lr_scale=0.1, weight_decay=-1.0),
                 ParamOverride(match="embed", lr_scale=1.0, weight_decay=0.0),
                 ParamOverride(match="head.weight", lr_scale=5.0, weight_decay=0.3)]  # shadowed
    got = _by_name(param_groups(Toy(), 0.05, overrides=overrides))
    assert got["head.weight"] == (0.05, 0.1)
    assert got["head.bias"] == (0.0, 0.1)
    assert got["embed.weight"] == (0.0, 1.0)
    assert got["cls_token"] == (0.05, 1.0)  # no no_decay given this time
    assert got["block.weight"] == (0.05, 1.0)


def test_build_optimizer_uses_cfg_and_group_lr_scale():
    cfg = TrainConfig(lr=1e-3, betas=[0.9, 0.98], eps=1e-6,
                      param_overrides=[ParamOverride(match="head", lr_scale=0.1)])
    opt = build_optimizer(Toy(), cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([1e-4, 1e-4, 1e-3, 1e-3])
    assert all(g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6 for g in opt.param_groups)


def _lrs_after(scheduler, optimizer, steps):
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return [g["lr"] for g in optimizer.param_groups]


def test_warmup_then_cosine_per_group():
    cfg = TrainConfig(steps=110, lr=1e-3, min_lr=1e-5, warmup_steps=10,
                      param_overrides=[ParamOverride(match="head", lr_scale=0.1)])
    opt = build_optimizer(Toy(), cfg)
    sched = build_scheduler(opt, cfg)
    scales = [g["lr_scale"] for g in opt.param_groups]
    first = [g["lr"] for g in opt.param_groups]
    assert first == pytest.approx([1e-3 * s / 11 for s in scales])  # (0 + 1) / (10 + 1)
    # after 10 steps the warmup is over: step 10 runs at the peak
    assert _lrs_after(sched, opt, 10) == pytest.approx([1e-3 * s for s in scales], rel=1e-12)
    # cosine midpoint (step 10 + 100/2): min + (peak - min) / 2, min_lr scaled like the group
    mid = 1e-5 + 0.5 * (1e-3 - 1e-5)
    assert _lrs_after(sched, opt, 50) == pytest.approx([mid * s for s in scales], rel=1e-12)
    assert _lrs_after(sched, opt, 50) == pytest.approx([1e-5 * s for s in scales], rel=1e-12)


def test_warmup_frac_and_schedule_resume():
    cfg = TrainConfig(steps=200, lr=1.0, warmup_steps=-1, warmup_frac=0.1)
    assert warmup_steps(cfg) == 20
    assert lr_factor(20, cfg) == 1.0
    assert lr_factor(20 + 90, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(500, cfg) == 0.0  # past the end: min_lr
    model = Toy()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    _lrs_after(sched, opt, 37)
    opt2 = build_optimizer(model, cfg)
    sched2 = build_scheduler(opt2, cfg)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert _lrs_after(sched2, opt2, 5) == _lrs_after(sched, opt, 5)
