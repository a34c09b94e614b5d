"""Frozen teachers: a registry from a name to a ready, eval-mode module.

``full`` presets name published weights (``timm:resnet50.a1_in1k`` with a local file for
offline machines, ``hf:<org/name>``, or a data2vec 2.0 / BEiT v2 checkpoint path, which
:mod:`common.models.converters` turns into an :class:`Encoder` whose architecture is read
off the checkpoint); ``tiny`` presets name a *recipe* (``tiny-cnn``, ...) that is trained once
on the synthetic world and cached under ``cache_dir("teachers")``, keyed by a hash of
everything that changes the result (recipe, architecture, bootstrap training config, data
settings, world grammar version). Every chapter that asks for the same teacher reuses the
same cache entry; a file lock makes concurrent runs build it once.

Each cache entry holds ``model.safetensors`` and ``report.json`` (the teacher's own quality
on held-out synthetic images, next to chance), so chapters can put the teacher's accuracy
beside the student's numbers.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict

import timm
import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors.torch import load_file, save_file
from torch import nn

from common.checkpoint import rng_preserved
from common.config import DataConfig, TeacherConfig, to_dict
from common.data.datasets import ImageLabelSet, TrainStream
from common.data.synthetic import CLASSNAMES, GRAMMAR_VERSION, SyntheticWorld
from common.data.transforms import eval_transform, to_model_input, train_transform
from common.distributed import single_process
from common.errors import DataError
from common.models.converters import CHECKPOINT_SUFFIXES, encoder_from_checkpoint, read_checkpoint
from common.models.hub import hf_vision_model
from common.models.tiny_clr import ClrSettings, train_clr
from common.models.tiny_dino import DinoSettings, train_dino
from common.models.tiny_teachers import D2VSettings, build_vit, train_d2v
from common.paths import cache_dir

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
    path = _cache_folder(cfg, data) / "report.json"
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


# ---------------------------------------------------------------------------- tiny bootstraps
def _cache_key(cfg: TeacherConfig, data: DataConfig) -> str:
    """Hash of everything that changes a bootstrapped teacher."""
    cnn = cfg.name == "tiny-cnn"  # the CNN reads arch/width, the ViT recipes read encoder
    relevant = {
        "recipe": cfg.name, "arch": cfg.arch if cnn else None, "width": cfg.width if cnn else None,
        "train": to_dict(cfg.train), "encoder": None if cnn else to_dict(cfg.encoder),
        "data": {k: to_dict(data)[k] for k in ("image_size", "render_size", "crop_scale", "hflip",
                                               "train_size")},
        "grammar": GRAMMAR_VERSION, "version": 1,
    }
    settings = TINY_RECIPES[cfg.name].settings if cfg.name in TINY_RECIPES else None
    if settings:  # recipe-level settings (mask ratio, EMA schedule, ...) of self-supervised recipes
        relevant["settings"] = settings
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def _cache_folder(cfg: TeacherConfig, data: DataConfig) -> Path:
    return cache_dir("teachers") / f"{cfg.name}-{_cache_key(cfg, data)}"


def bootstrap(cfg: TeacherConfig, data: DataConfig) -> nn.Module:
    """Load the cached tiny teacher, training it first if no run has done so yet."""
    folder = _cache_folder(cfg, data)
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


class Recipe:
    """How to build and train one kind of tiny teacher. ``settings`` (a JSON-able dict) holds
    recipe constants that are not in :class:`TeacherConfig` and enter the cache key."""

    def __init__(self, build: Callable[[TeacherConfig], nn.Module],
                 train: Callable[[nn.Module, TeacherConfig, DataConfig, Path], Dict[str, Any]],
                 settings: Dict[str, Any] | None = None):
        self.build, self.train, self.settings = build, train, dict(settings or {})


def _build_cnn(cfg: TeacherConfig) -> nn.Module:
    """A timm ResNet trained from scratch; ``width`` scales every stage (CPU-sized teachers)."""
    widths = tuple(max(8, int(c * cfg.width)) for c in (64, 128, 256, 512))
    return timm.create_model(cfg.arch, pretrained=False, num_classes=len(CLASSNAMES),
                             channels=widths, stem_width=max(8, int(32 * cfg.width)))


@torch.no_grad()
def classification_accuracy(model: nn.Module, dataset: ImageLabelSet, batch_size: int = 256,
                            ks: tuple = (1, 5)) -> Dict[str, float]:
    """Top-k accuracy (percent) of a classifier over a labelled dataset."""
    model.eval()
    hits = {k: 0 for k in ks}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    for batch in loader:
        top = model(to_model_input(batch["image"])).topk(max(ks), dim=-1).indices  # B x K
        match = top == batch["label"][:, None]
        for k in ks:
            hits[k] += int(match[:, :k].any(-1).sum())
    return {f"top{k}": 100.0 * hits[k] / len(dataset) for k in ks}


def _train_cnn(model: nn.Module, cfg: TeacherConfig, data: DataConfig, out_dir: Path) -> Dict[str, Any]:
    """Supervised training on the fine labels (colour + shape of the main object): the tiny
    stand-in for the ImageNet-supervised ResNet-50 of the SHRe chapter."""
    from common.train import fit  # the loop imports the data stack; keep teachers importable alone

    world = SyntheticWorld.from_config(data)
    train = TrainStream(ImageLabelSet(world.source("train"), train_transform(
        data.image_size, data.crop_scale, data.hflip)), seed=cfg.train.seed)
    val = ImageLabelSet(world.source("imagenet_val"), eval_transform(data.image_size))

    def step_fn(net: nn.Module, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        logits = net(batch["image"])  # B x C
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=0.1)
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        return {"loss": loss, "train_acc": acc}

    result = fit(model, step_fn, train, cfg.train, out_dir, num_workers=data.num_workers)
    acc = classification_accuracy(model, val)
    return {"recipe": cfg.name, "arch": cfg.arch, "steps": result.step,
            "train_minutes": round(result.train_minutes, 2),
            "val_top1": round(acc["top1"], 2), "val_top5": round(acc["top5"], 2),
            "chance_top1": 100.0 / len(CLASSNAMES), "chance_top5": 500.0 / len(CLASSNAMES),
            "val_split": "imagenet_val", "num_classes": len(CLASSNAMES)}


def _vit_recipe(train: Callable[..., Dict[str, Any]], settings: Any) -> Recipe:
    """A label-free ALiBi ViT trained by ``train(model, cfg, data, out_dir, settings=...)``;
    its settings dataclass enters the cache key."""
    return Recipe(build_vit, functools.partial(train, settings=settings), asdict(settings))


TINY_RECIPES: Dict[str, Recipe] = {
    "tiny-cnn": Recipe(_build_cnn, _train_cnn),
    # label-free, data2vec 2.0-style (tiny_teachers.py): CLS regresses the mean of the patch targets
    "tiny-d2v": _vit_recipe(train_d2v, D2VSettings(cls_objective="mean_patches")),
    # label-free, DINO (tiny_dino.py): EMA self-distillation of the CLS across background-swapped views
    "tiny-dino": _vit_recipe(train_dino, DinoSettings()),
    # label-free, MoCo v3 (tiny_clr.py): InfoNCE between the CLS of views sharing their main object
    "tiny-clr": _vit_recipe(train_clr, ClrSettings()),
}
