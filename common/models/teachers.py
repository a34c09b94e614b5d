"""Frozen teachers: a registry from a name to a ready, eval-mode module.

``full`` presets name published weights (``timm:resnet50.a1_in1k`` with a local file for
offline machines, ``hf:<org/name>``, or a data2vec 2.0 / BEiT v2 checkpoint path, which
:mod:`common.models.converters` turns into an :class:`Encoder` whose architecture is read
off the checkpoint); ``tiny`` presets name a *recipe* (``tiny-cnn``, ...) of
:mod:`common.tiny_teachers`, trained once on the synthetic world and cached.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict

import timm
import torch
from torch import nn

from common.checkpoint import rng_preserved
from common.config import DataConfig, TeacherConfig
from common.errors import DataError
from common.models.converters import CHECKPOINT_SUFFIXES, encoder_from_checkpoint, read_checkpoint
from common.models.hub import hf_vision_model
from common.tiny_teachers.bootstrap import TINY_RECIPES, bootstrap, cache_folder

log = logging.getLogger(__name__)


def build_teacher(cfg: TeacherConfig, data: DataConfig) -> nn.Module:
    """The teacher named by ``cfg.name``, in eval mode with ``requires_grad=False``.

    Draws no random numbers of the caller (:func:`common.checkpoint.rng_preserved`): a tiny
    teacher is trained on a cold cache and loaded on a warm one, and the student built after
    it must start from the same random state either way.
    """
    with rng_preserved():
        return _build_teacher(cfg, data).eval().requires_grad_(False)


def _build_teacher(cfg: TeacherConfig, data: DataConfig) -> nn.Module:
    if cfg.name in TINY_RECIPES:
        model = bootstrap(cfg, data)
    elif cfg.name.startswith("timm:"):
        model = _timm_pretrained(cfg.name[len("timm:"):], cfg.weights)
    elif cfg.name.startswith("hf:"):
        model = hf_vision_model(cfg.name[len("hf:"):], cfg.weights)
    elif Path(cfg.name).suffix in CHECKPOINT_SUFFIXES:  # data2vec 2.0 / BEiT v2 / mmkd weights
        model, _ = encoder_from_checkpoint(read_checkpoint(cfg.name), cfg.encoder)
    else:
        raise DataError(f"unknown teacher '{cfg.name}'; use one of {sorted(TINY_RECIPES)}, "
                        f"timm:<model name> or hf:<org/name> (with teacher.weights=/path for "
                        f"offline use), or a checkpoint path ({'/'.join(CHECKPOINT_SUFFIXES)})")
    return model


def teacher_report(cfg: TeacherConfig, data: DataConfig) -> Dict[str, Any]:
    """The cached quality report of a tiny teacher ({} for published weights)."""
    if cfg.name not in TINY_RECIPES:
        return {}
    path = cache_folder(cfg, data) / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@torch.no_grad()
def teacher_embedding(teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """One ``[B, D]`` vector per image: the CLS output of a ViT teacher, the pooled pre-logit
    features of a timm CNN (the vector a feature-KD student regresses)."""
    if hasattr(teacher, "forward_head"):  # timm classifier
        return teacher.forward_head(teacher.forward_features(images), pre_logits=True)
    return teacher(images).cls


# ---------------------------------------------------------------------------- published weights
def _timm_pretrained(arch: str, weights: str) -> nn.Module:
    """A timm model with its published weights, from ``weights`` (a local file) if given."""
    if weights and not Path(weights).is_file():
        raise DataError(f"teacher weights file {weights} does not exist; download the weights of "
                        f"'{arch}' (timm / Hugging Face hub) and pass teacher.weights=/path/to/file")
    overlay = {"file": str(weights)} if weights else None
    try:
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as err:  # offline hub, unknown name, corrupt file: one actionable line
        raise DataError(f"could not load pretrained teacher '{arch}' ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); on a machine without "
                        f"internet download its weights once and pass teacher.weights=/path/to/"
                        f"model.safetensors") from None
