"""Test isolation: caches, runs and results go to temp dirs; torch is seeded and single-threaded."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    # one session-wide cache so tiny teachers / tokenizers are built once per test run
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("MMKD_CACHE", str(cache))
    monkeypatch.setenv("MMKD_RUNS", str(tmp_path_factory.mktemp("runs")))
    monkeypatch.setenv("MMKD_RESULTS", str(tmp_path_factory.mktemp("results")))
    torch.manual_seed(0)
    yield
