"""Where things live: the repo root, the cache (tokenizers, tiny teachers) and run outputs.

All paths are relative to the repository so a clone works anywhere; ``MMKD_CACHE``
and ``MMKD_RUNS`` move the cache and the run folders (tests point them at temp dirs).
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir(*parts: str) -> Path:
    """``$MMKD_CACHE`` or ``<repo>/.cache/mmkd``, joined with ``parts`` and created."""
    root = Path(os.environ.get("MMKD_CACHE", REPO_ROOT / ".cache" / "mmkd"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir(*parts: str) -> Path:
    """``$MMKD_RUNS`` or ``<repo>/runs``: checkpoints and metric logs of training runs."""
    root = Path(os.environ.get("MMKD_RUNS", REPO_ROOT / "runs"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir(*parts: str) -> Path:
    """``$MMKD_RESULTS`` or ``<repo>/results``: result CSVs and figures."""
    root = Path(os.environ.get("MMKD_RESULTS", REPO_ROOT / "results"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
