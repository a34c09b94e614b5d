"""Tiny teachers: each recipe trained once on the synthetic world and cached.

``tiny`` presets name a *recipe* (``tiny-cnn``, ``tiny-d2v``, ``tiny-dino``, ``tiny-clr``)
instead of published weights. It is trained once and cached under ``cache_dir("teachers")``,
keyed by a hash of everything that changes the result: the recipe, its architecture, its
bootstrap training config, its settings section (``teacher.d2v`` / ``dino`` / ``clr``),
the data settings and the world grammar version. Every chapter that asks for the same teacher
reuses the same entry; a file lock makes concurrent runs build it once. Each entry holds
``model.safetensors`` and ``report.json`` (the teacher's own quality on held-out synthetic
images, next to chance).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict

from filelock import FileLock
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
import torch
from torch import nn

from common.config import DataConfig, TeacherConfig, to_dict
from common.data.synthetic import GRAMMAR_VERSION
from common.distributed import single_process
from common.paths import cache_dir
from common.models.encoder import Encoder, build_image_encoder
from common.tiny_teachers.cnn import build_cnn
from common.tiny_teachers.settings import ClrSettings, D2VSettings, DinoSettings

log = logging.getLogger(__name__)


class Recipe:
    """How to build and train one kind of tiny teacher. ``train`` names the training function
    as ``"module:function"``, imported when a teacher is bootstrapped (a chapter that loads a
    cached teacher does not import the recipes' training code). ``section`` names the
    :class:`TeacherConfig` field that holds its settings (``""``: none; ``settings_type``
    turns it into the dataclass the training function takes)."""

    def __init__(self, build: Callable[[TeacherConfig], nn.Module], train: str, section: str = "",
                 settings_type: type | None = None):
        self._build, self._train, self.section, self.settings_type = build, train, section, settings_type

    def build(self, cfg: TeacherConfig) -> nn.Module:
        """The untrained teacher, initialised from ``cfg.train.seed`` whatever the process's
        global RNG state is (imports may have drawn from it), which is left untouched: the
        same config bootstraps the same weights on every machine."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            return self._build(cfg)

    def settings(self, cfg: TeacherConfig) -> Dict[str, Any]:
        """The recipe's settings of ``cfg`` as a plain dict ({} for none)."""
        return OmegaConf.to_container(OmegaConf.create(getattr(cfg, self.section))) if self.section else {}

    def train(self, model: nn.Module, cfg: TeacherConfig, data: DataConfig, out_dir: Path) -> Dict[str, Any]:
        module, name = self._train.split(":")
        train = getattr(importlib.import_module(module), name)
        if not self.section:
            return train(model, cfg, data, out_dir)
        return train(model, cfg, data, out_dir, settings=self.settings_type(**self.settings(cfg)))


def build_vit(cfg: TeacherConfig) -> Encoder:
    """The label-free recipes' architecture: ``cfg.encoder`` as an ALiBi image encoder
    (:meth:`Recipe.build` seeds its initialisation)."""
    return build_image_encoder(cfg.encoder)


TINY_RECIPES: Dict[str, Recipe] = {
    # supervised (cnn.py): the fine labels
    "tiny-cnn": Recipe(build_cnn, "common.tiny_teachers.cnn:train_cnn"),
    # label-free, data2vec 2.0-style (d2v.py): CLS regresses the mean of the patch targets
    "tiny-d2v": Recipe(build_vit, "common.tiny_teachers.d2v:train_d2v", "d2v", D2VSettings),
    # label-free, DINO (dino.py): EMA self-distillation of the CLS across background-swapped views
    "tiny-dino": Recipe(build_vit, "common.tiny_teachers.dino:train_dino", "dino", DinoSettings),
    # label-free, MoCo v3 (clr.py): InfoNCE between the CLS of views sharing their main object
    "tiny-clr": Recipe(build_vit, "common.tiny_teachers.clr:train_clr", "clr", ClrSettings),
}


def cache_key(cfg: TeacherConfig, data: DataConfig) -> str:
    """Hash of everything that changes a bootstrapped teacher."""
    cnn = cfg.name == "tiny-cnn"  # the CNN reads arch/width, the ViT recipes read encoder
    relevant = {
        "recipe": cfg.name, "arch": cfg.arch if cnn else None, "width": cfg.width if cnn else None,
        "train": to_dict(cfg.train), "encoder": None if cnn else to_dict(cfg.encoder),
        "data": {k: to_dict(data)[k] for k in ("image_size", "render_size", "crop_scale", "hflip",
                                               "train_size")},
        "grammar": GRAMMAR_VERSION,
        # tiny-cnn 2: its initialisation is seeded (version 1 drew it from the global RNG, so
        # two machines bootstrapped different CNNs); the ViT recipes were always seeded
        "version": 2 if cnn else 1,
    }
    settings = TINY_RECIPES[cfg.name].settings(cfg) if cfg.name in TINY_RECIPES else None
    if settings:  # recipe-level settings (mask ratio, EMA schedule, ...) of self-supervised recipes
        relevant["settings"] = settings
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def cache_folder(cfg: TeacherConfig, data: DataConfig) -> Path:
    return cache_dir("teachers") / f"{cfg.name}-{cache_key(cfg, data)}"


def bootstrap(cfg: TeacherConfig, data: DataConfig) -> nn.Module:
    """Load the cached tiny teacher, training it first if no run has done so yet."""
    folder = cache_folder(cfg, data)
    model = TINY_RECIPES[cfg.name].build(cfg)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "model.safetensors").is_file():
            log.info("bootstrapping teacher %s (once; cached in %s)", cfg.name, folder)
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            with single_process():  # see common.distributed.single_process: no deadlock
                report = TINY_RECIPES[cfg.name].train(model, cfg, data, tmp / "run")
            save_file(model.state_dict(), str(tmp / "model.safetensors"))
            (tmp / "report.json").write_text(json.dumps(report, indent=2))
            shutil.rmtree(tmp / "run")
            os.replace(tmp, folder)  # atomic: a half-trained teacher is never cached
            log.info("teacher %s: %s", cfg.name, report)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model
