"""The chapters as tools see them: every ``experiments/<folder>`` with a ``run.py``.

Tools that treat all chapters alike (the full-preset benchmark, the preset checks) find
them here rather than keeping their own lists, so a new chapter plugs in by existing. A
chapter's ``run.py`` declares itself with ``CHAPTER = Declaration(config=..., build_model=...)``:
its config dataclass (the schema of its ``tiny.yaml`` / ``full.yaml``) and how to build its
untrained model from a config and a tokenizer (what ``eval/`` rebuilds before loading a
checkpoint), and optionally its training step for ``make bench`` (``bench``, see :mod:`common.bench`).
Chapter scripts are files, not a package, so they are imported by path under
``mmkd_chapter_<folder>``.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, List, Optional, Sequence

from common.config import load_preset
from common.paths import REPO_ROOT

EXPERIMENTS = REPO_ROOT / "experiments"


@dataclass(frozen=True)
class Declaration:
    """What a chapter's ``run.py`` declares as ``CHAPTER``: its config dataclass, and
    ``build_model(cfg, tokenizer)``, the untrained model of a config (the tokenizer gives the
    pad id and vocabulary; ``cfg.text.vocab_size`` is already set from it)."""

    config: type
    build_model: Callable[[Any, Any], Any]
    # ``make bench PRESET=full``: cfg (the full preset) -> common.bench.BenchCase, the chapter's
    # training step at the preset's size with random weights; None: not benchmarked
    bench: Optional[Callable[[Any], Any]] = None


@dataclass(frozen=True)
class Chapter:
    """One chapter folder: its script (imported on first use), config schema and presets."""

    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @functools.cached_property
    def module(self) -> ModuleType:
        """``run.py``, imported once (its ``__main__`` block does not run)."""
        name = f"mmkd_chapter_{self.name}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, self.folder / "run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
        return module

    @property
    def declaration(self) -> Declaration:
        """``run.py``'s ``CHAPTER`` declaration."""
        declared = getattr(self.module, "CHAPTER", None)
        if not isinstance(declared, Declaration):
            raise TypeError(f"{self.folder / 'run.py'} must declare CHAPTER = Declaration(config=<its "
                            f"config dataclass>, build_model=<cfg, tokenizer -> model>)")
        return declared

    @property
    def schema(self) -> type:
        """The config dataclass ``run.py`` declares."""
        return self.declaration.config

    def preset_path(self, preset: str) -> Path:
        return self.folder / f"{preset}.yaml"

    def load_config(self, preset: str = "full", overrides: Sequence[str] = ()) -> Any:
        """``<preset>.yaml`` merged into the chapter's schema (with ``key=value`` overrides)."""
        return load_preset(self.schema, self.folder, preset, overrides)


def chapters(preset: Optional[str] = None, root: Path = EXPERIMENTS) -> List[Chapter]:
    """Every chapter folder (with a ``<preset>.yaml`` when ``preset`` is given), by name."""
    folders = sorted(p.parent for p in root.glob("*/run.py"))
    return [Chapter(f) for f in folders if preset is None or (f / f"{preset}.yaml").is_file()]


def chapter(name: str, root: Path = EXPERIMENTS) -> Chapter:
    """The chapter in folder ``name``."""
    if not (root / name / "run.py").is_file():
        raise KeyError(f"no chapter '{name}' (choose from {[c.name for c in chapters(root=root)]})")
    return Chapter(root / name)
