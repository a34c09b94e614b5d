"""Test isolation: caches, runs and results go to temp dirs; torch is seeded and single-threaded."""

import pytest
import torch
from omegaconf import OmegaConf

from common.config import DataConfig, TeacherConfig


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    # one session-wide cache so tiny teachers / tokenizers are built once per test run
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("MMKD_CACHE", str(cache))
    monkeypatch.setenv("MMKD_RUNS", str(tmp_path_factory.mktemp("runs")))
    monkeypatch.setenv("MMKD_RESULTS", str(tmp_path_factory.mktemp("results")))
    torch.manual_seed(0)
    yield


@pytest.fixture
def vit_teacher_cfgs():
    """``make(recipe, steps=2)`` -> (TeacherConfig, DataConfig) of a tiny ViT recipe small
    enough to bootstrap in seconds: 2 blocks of width 32 on 32-px images, batch 8."""
    def make(recipe: str, steps: int = 2):
        t = OmegaConf.structured(TeacherConfig)
        t.name = recipe
        e = t.encoder
        e.image_size, e.patch_size, e.dim, e.depth, e.heads, e.mlp_ratio = 32, 8, 32, 2, 2, 2.0
        t.train.steps, t.train.batch_size, t.train.log_every = steps, 8, 1
        d = OmegaConf.structured(DataConfig)
        d.image_size = 32
        return t, d

    return make
