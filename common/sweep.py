"""Variants x seeds: the rows of a chapter's table, each a small set of config overrides.

A thesis table compares a few models that differ in one or two settings (a deeper encoder,
no contrastive term, ...). A chapter lists them in its preset as :class:`Variant` entries;
:func:`expand` turns the chapter config into one config per (variant, seed), validating
every override before anything trains, so a typo in the last variant stops the run at
once instead of after the first ones have trained.

Seeds: ``seeds`` in the config, or the ``SEEDS`` environment variable (``SEEDS=3 make
exp-ssa``), runs seeds ``train.seed, train.seed + 1, ...``; the seed is in every result row
and in the run folder (``runs/<chapter>/<variant>-seed<k>/``), so reruns resume per seed.

Extra rows: a variant marked ``extra`` (a labelled comparison, or the thesis's recipe where
it collapses at tiny scale) is not part of a chapter's default run, so that ``make exp-all``
trains what the thesis's tables and findings need; ``EXTRAS=1`` (``make reference`` sets it)
or naming it in ``only`` runs it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, List, Sequence, Tuple

from common.config import ConfigError, apply_overrides

log = logging.getLogger(__name__)

KINDS = ("train", "unimodal_pair")


@dataclass
class Variant:
    """One row of a chapter's table.

    ``name`` becomes the ``run`` column and the run folder; ``model`` the ``model`` column
    (the thesis's row label). ``kind``: ``train`` (distil and evaluate) or ``unimodal_pair``
    (evaluate the modality encoders as built, pretrained in ``full``, without any training:
    the "image model for images, text model for texts" baseline). ``overrides`` are
    ``key=value`` settings applied on top of the chapter config. ``extra``: run only on
    request (see the module docstring).
    """

    name: str = ""
    model: str = ""
    kind: str = "train"
    overrides: List[str] = field(default_factory=list)
    extra: bool = False


def seed_count(configured: int) -> int:
    """``SEEDS`` from the environment when set (the Makefile's knob), else ``configured``."""
    raw = os.environ.get("SEEDS", "").strip()
    if not raw:
        return configured
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"config error: SEEDS={raw!r} must be a positive integer (e.g. SEEDS=3)")
    return int(raw)


def include_extras() -> bool:
    """``EXTRAS`` from the environment: 1 runs the ``extra`` variants too, 0 or unset not."""
    raw = os.environ.get("EXTRAS", "").strip()
    if raw not in ("", "0", "1"):
        raise ConfigError(f"config error: EXTRAS={raw!r} must be 1 (run the extra rows too) or 0")
    return raw == "1"


def expand(cfg: Any, variants: Sequence[Variant], only: Sequence[str] = (),
           seeds: int = 1, extras: bool = False) -> List[Tuple[Variant, Any]]:
    """``[(variant, config)]`` for every selected variant and seed, in table order.

    ``only`` selects variants by name; when it is empty every variant runs, the ``extra``
    ones only with ``extras``. Each config has ``run`` set to the variant's name and
    ``train.seed`` shifted by the seed index. Raises :class:`ConfigError` for an unknown
    name in ``only``, an unknown ``kind`` or a bad override.
    """
    names = [v.name for v in variants]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ConfigError(f"config error: only={list(only)} names unknown variants {unknown}; "
                          f"choose from {names}")
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"config error: variant names must be unique and non-empty, got {names}")
    out = []
    skipped = [v.name for v in variants if v.extra and not only and not extras]
    if skipped:
        log.info("extra rows not run (EXTRAS=1 or only=[...] runs them): %s", ", ".join(skipped))
    for variant in variants:
        if only and variant.name not in only:
            continue
        if variant.kind not in KINDS:
            raise ConfigError(f"config error: variant '{variant.name}' has kind '{variant.kind}'; "
                              f"use one of {KINDS}")
        base = apply_overrides(cfg, list(variant.overrides), f"variant '{variant.name}'")
        if variant.name in skipped:  # checked all the same: a typo fails every run, not just its own
            continue
        base.run = variant.name
        if "overrides" in base:
            base.overrides = [*cfg.overrides, *variant.overrides]
        runs = 1 if variant.kind == "unimodal_pair" else seeds  # nothing random is trained
        for k in range(runs):
            seeded = apply_overrides(base, [f"train.seed={cfg.train.seed + k}"], "seeds")
            out.append((variant, seeded))
    log.info("%d run(s): %s", len(out), ", ".join(f"{v.name}/seed{c.train.seed}" for v, c in out))
    return out


def chapter_runs(cfg: Any) -> List[Tuple[Variant, Any]]:
    """:func:`expand` of a variant chapter's config (its ``variants``, ``only`` and ``seeds``)
    with the environment's ``SEEDS`` and ``EXTRAS``: the runs its loop trains and the ones
    ``make exp-all`` plans, chosen in one place."""
    return expand(cfg, cfg.variants, cfg.only, seed_count(cfg.seeds), include_extras())


def seed_runs(cfg: Any, seeds: int = 1) -> List[Tuple[str, Any]]:
    """``[(run folder name, config)]`` of a chapter without variants, one per seed.

    The first seed (``train.seed``) keeps the run's own folder ``<run>``, so a one-seed run
    and the eval commands that name ``runs/<chapter>/<run>`` are unchanged; seed
    ``train.seed + k`` goes to ``<run>-seed<train.seed + k>``. Rows record the seed.
    """
    out = []
    for k in range(seeds):
        seeded = cfg if k == 0 else apply_overrides(cfg, [f"train.seed={cfg.train.seed + k}"], "seeds")
        out.append((cfg.run if k == 0 else f"{cfg.run}-seed{seeded.train.seed}", seeded))
    if seeds > 1:
        log.info("%d seeds: %s", seeds, ", ".join(name for name, _ in out))
    return out
