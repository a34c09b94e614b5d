"""Checkpoint pieces: optimizer state round trip, RNG states, atomic folders, weight loading."""
import json
import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch import nn

from common.checkpoint import (MANIFEST_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE,
                               list_checkpoints, load_checkpoint, load_optimizer, load_weights,
                               resolve_resume, rng_state, save_checkpoint, save_optimizer,
                               set_rng_state)
from common.config import ParamOverride, TrainConfig
from common.errors import DataError
from common.optim import build_optimizer, build_scheduler


class Tied(nn.Module):
    """A tiny LM head tied to its embedding: shared tensors must survive safetensors."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("queue", torch.zeros(4, 6))

    def forward(self, tokens):
        return self.head(self.norm(self.embed(tokens)))


def train_steps(model, optimizer, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        tokens = torch.randint(0, 11, (5,), generator=g)
        loss = nn.functional.cross_entropy(model(tokens), tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_optimizer_round_trip_continues_identically(tmp_path):
    cfg = TrainConfig(lr=1e-2, param_overrides=[ParamOverride(match="norm", lr_scale=0.5)])
    torch.manual_seed(0)
    a = Tied()
    opt_a = build_optimizer(a, cfg)
    train_steps(a, opt_a, 3)
    meta = save_optimizer(opt_a, tmp_path / OPTIMIZER_FILE)
    meta = json.loads(json.dumps(meta))  # it must survive state.json

    b = Tied()
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(b, cfg)
    load_optimizer(opt_b, tmp_path / OPTIMIZER_FILE, meta)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["state"].keys() == sb["state"].keys() and len(sa["state"]) > 0
    for i in sa["state"]:
        for k, v in sa["state"][i].items():
            assert torch.equal(v, sb["state"][i][k]), (i, k)
    assert [g["lr"] for g in sa["param_groups"]] == [g["lr"] for g in sb["param_groups"]]

    train_steps(a, opt_a, 2, seed=1)
    train_steps(b, opt_b, 2, seed=1)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_rng_state_round_trip_through_json():
    state = json.loads(json.dumps(rng_state()))
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_save_load_checkpoint_atomic_keep_two(tmp_path):
    accelerator = Accelerator(cpu=True)
    cfg = TrainConfig(steps=10, lr=1e-2, warmup_steps=2)
    torch.manual_seed(0)
    model = Tied()
    model.queue.fill_(3.0)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    for step in (1, 2, 3):
        train_steps(model, opt, 1, seed=step)
        sched.step()
        last = save_checkpoint(accelerator, tmp_path, step, model, opt, sched, {"history": []})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]
    assert {p.name for p in last.iterdir()} == {MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, MANIFEST_FILE}
    assert resolve_resume("auto", tmp_path) == last and resolve_resume("", tmp_path) is None

    torch.manual_seed(1)
    fresh = Tied()
    opt2 = build_optimizer(fresh, cfg)
    sched2 = build_scheduler(opt2, cfg)
    state = load_checkpoint(accelerator, last, fresh, opt2, sched2)
    assert state["step"] == 3 and sched2.state_dict() == sched.state_dict()
    assert fresh.head.weight is fresh.embed.weight  # tying survives loading
    for x, y in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(x, y)

    # overwriting a step folder (a re-run) swaps it in whole
    again = save_checkpoint(accelerator, tmp_path, 3, model, opt, sched, {"history": [1]})
    assert json.loads((again / STATE_FILE).read_text())["history"] == [1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]


def test_load_weights_accepts_file_folder_or_run_and_explains_mismatch(tmp_path):
    accelerator = Accelerator(cpu=True)
    cfg = TrainConfig(steps=4)
    torch.manual_seed(0)
    model = Tied()
    opt = build_optimizer(model, cfg)
    ckpt = save_checkpoint(accelerator, tmp_path, 4, model, opt, build_scheduler(opt, cfg), {})
    for where in (tmp_path, ckpt, ckpt / MODEL_FILE):
        other = Tied()
        assert load_weights(other, where) == ckpt / MODEL_FILE
        assert torch.equal(other.embed.weight, model.embed.weight)
    with pytest.raises(DataError, match="different model config"):
        load_weights(nn.Linear(6, 11), ckpt)
    with pytest.raises(DataError, match="no model weights"):
        load_weights(Tied(), tmp_path / "nowhere")
    with pytest.raises(DataError, match="train.resume"):
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)
