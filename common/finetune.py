"""Fine-tuning and linear probing of a pretrained encoder: image classes and GLUE-style text tasks.

Chapter 1 of the thesis fine-tunes its students on CIFAR-10/100 and ImageNet: the mean of
the patch tokens (no CLS) goes through a LayerNorm and a linear layer; full fine-tuning
uses layer-wise learning-rate decay, ``lr_l = base_lr * decay^(L+1-l)`` for layer ``l`` of
``L`` blocks (embedding = 0, head = L+1; decay 0.81, BEiT's recipe), and the usual
augmentations (RandAugment, mixup, cutmix, random erasing, all from timm). A linear probe
freezes the encoder and trains only that head, without those augmentations. Text tasks put
a RoBERTa-style head on the BOS output and take sentence pairs joined by EOS.

Everything trains through :func:`common.train.fit`, so fine-tuning runs get the same
``metrics.jsonl``, checkpoints and exact resume as the chapters (``out_dir`` per task).
The encoder passed in is copied: the caller's weights are never changed.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import PIL.Image
import torch
from omegaconf import DictConfig, OmegaConf
from timm.data import Mixup, create_transform
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from common.config import ConfigError, DataConfig, TrainConfig
from common.data.datasets import DataSource, ImageLabelSet, TrainStream
from common.data.sources import dataset_name, open_source
from common.data.glue import GlueExample, GlueTask, dev_name, encode_examples, glue_metrics
from common.data.tokenizer import Tokenizer
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, to_model_input
from common.models.encoder import Encoder
from common.retrieval import percent_hits
from common.train import fit

log = logging.getLogger(__name__)

MODES = ("full", "linear")
PROTOCOL = {"full": "fine-tune", "linear": "linear probe"}  # the names result rows use
# A linear probe trains only the head on clean crops (MAE's protocol): these settings win
# over the preset's augmentation when mode=linear.
LINEAR_PROBE = {"mixup": 0.0, "cutmix": 0.0, "rand_augment": "", "reprob": 0.0,
                "label_smoothing": 0.0, "layer_decay": 1.0}


@dataclass
class FinetuneConfig:
    """One fine-tuning recipe. Defaults are the thesis' ImageNet setting (base lr 1e-3, layer
    decay 0.81) with BEiT/MAE's augmentation; presets in ``eval/configs/`` adapt it."""

    mode: str = "full"  # full | linear (frozen encoder, head only)
    epochs: float = 0.0  # > 0: train.steps = epochs over the training split (per task)
    layer_decay: float = 0.81  # 1.0 = none
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    hflip: float = 0.5
    rand_augment: str = "rand-m9-mstd0.5-inc1"  # timm auto_augment string; "" = off
    reprob: float = 0.25  # random erasing probability
    mixup: float = 0.8  # mixup alpha (0 = off)
    cutmix: float = 1.0  # cutmix alpha (0 = off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    head_dropout: float = 0.1  # text head only
    eval_batch_size: int = 256
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=10000, batch_size=256, lr=1e-3, weight_decay=0.05, warmup_frac=0.1, resume="auto",
        log_every=50))


def resolve_config(cfg: FinetuneConfig | DictConfig, train_size: int) -> FinetuneConfig:
    """A plain copy of ``cfg`` (a dataclass or its OmegaConf node) with ``epochs`` turned into
    ``train.steps`` for a split of ``train_size`` items and, in linear mode,
    :data:`LINEAR_PROBE` applied; checks the mode."""
    out = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else copy.deepcopy(cfg)
    if out.mode not in MODES:
        raise ConfigError(f"config error: mode={out.mode} is not one of {'|'.join(MODES)}")
    if out.epochs > 0:
        out.train.steps = max(1, math.ceil(out.epochs * train_size / out.train.batch_size))
    if out.mode == "linear":
        for key, value in LINEAR_PROBE.items():
            setattr(out, key, value)
    return out


# ---------------------------------------------------------------------------- the model
class EncoderClassifier(nn.Module):
    """``encoder`` -> pooled token (``mean`` of the non-extra tokens, or ``cls``) -> ``head``.

    :meth:`group_matcher` tells timm's layer-decay grouping which parameters form layer 0
    (the embedding) and layers 1..L (the blocks); the head and everything else form L+1.
    """

    def __init__(self, encoder: Encoder, head: nn.Module, pool: str = "mean"):
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        self.encoder, self.head, self.pool = encoder, head, pool

    def forward(self, inputs: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        x = self.encoder(inputs, padding_mask).x  # B x T x D
        if self.pool == "cls":
            return self.head(x[:, 0])
        extra = self.encoder.embed.num_extra_tokens
        return self.head(x[:, extra:].mean(dim=1))  # B x C

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return {"stem": r"^encoder\.embed", "blocks": [(r"^encoder\.blocks\.(\d+)", None)]}


def image_head(dim: int, num_classes: int) -> nn.Sequential:
    """LayerNorm -> Linear, the linear layer started near zero (MAE: std 2e-5) so the
    first steps do not disturb the pretrained features with large random gradients."""
    head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=2e-5)
    nn.init.zeros_(head[1].bias)
    return head


def text_head(dim: int, num_outputs: int, dropout: float) -> nn.Sequential:
    """RoBERTa's classification head on the BOS output: dense -> tanh -> dropout -> linear."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout),
                         nn.Linear(dim, num_outputs))


# BEiT v2 / MAE / data2vec fine-tune without weight decay on these (timm's
# ``no_weight_decay()``): shrinking the CLS token or the positions toward 0 only erases
# what pretraining learned, there is nothing to regularize.
NO_WEIGHT_DECAY = ("cls_token", "pos_embed")


def no_weight_decay_names(model: nn.Module) -> List[str]:
    """Full names of ``model``'s parameters whose last part is in :data:`NO_WEIGHT_DECAY`
    (timm's grouping matches whole names, e.g. ``encoder.embed.cls_token``)."""
    return [name for name, _ in model.named_parameters()
            if name.rsplit(".", 1)[-1] in NO_WEIGHT_DECAY]


def layer_decay_param_groups(model: nn.Module, weight_decay: float, layer_decay: float
                             ) -> List[Dict[str, Any]]:
    """AdamW groups with ``lr_scale = layer_decay^(L+1-l)`` (timm's ``param_groups_layer_decay``).

    ``model`` needs a ``group_matcher`` (as :class:`EncoderClassifier`). 1-d parameters and
    :func:`no_weight_decay_names` get no weight decay; frozen parameters are left out.
    :func:`common.train.fit` multiplies each group's ``lr_scale`` into the scheduled lr.
    """
    return param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay,
                                    no_weight_decay_list=no_weight_decay_names(model))


def finetunable(encoder: Encoder) -> Encoder:
    """A copy of ``encoder`` whose embedding trains too: full fine-tuning tunes every layer,
    the embedding as layer 0 of the layer-decay table (THESIS.md chapter 1: lr 2.3e-4 for
    L=6), even when the chapter that trained it froze the embedding (``freeze_embed``).
    The caller's encoder is left untouched."""
    out = copy.deepcopy(encoder)
    out.freeze_embed = False
    out.embed.requires_grad_(True)
    return out


def classifier_setup(encoder: Encoder, head: nn.Module, pool: str, cfg: FinetuneConfig
                     ) -> tuple[EncoderClassifier, List[nn.Module], List[Dict[str, Any]]]:
    """The model, frozen modules and optimizer groups of one fine-tuning run on a copy of
    ``encoder``: full fine-tuning trains all of it (:func:`finetunable`), a linear probe
    freezes all of it and trains only ``head``."""
    linear = cfg.mode == "linear"
    model = EncoderClassifier(copy.deepcopy(encoder) if linear else finetunable(encoder),
                              head, pool=pool)
    frozen = [model.encoder] if linear else []
    for module in frozen:
        module.requires_grad_(False)
    return model, frozen, layer_decay_param_groups(model, cfg.train.weight_decay, cfg.layer_decay)


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Percent of rows whose label is among the top k logits; ties count against the row."""
    true = logits.gather(1, labels[:, None].long())  # B x 1
    ranks = (logits >= true).sum(dim=1) - 1  # B: other classes scoring at least as high
    return {f"top{k}": percent_hits(ranks, k) for k in ks}


# ---------------------------------------------------------------------------- image data
class AugmentedImages(Dataset):
    """``{"image", "label"}`` through a timm (PIL) train transform: float images, already
    normalised (``to_model_input`` passes them through); the sources' uint8 tensors and arrays
    become PIL images for it.

    timm's crops, RandAugment and erasing draw from Python's ``random`` and numpy's global
    generator; both are seeded here from the torch generator, which :class:`TrainStream`
    seeds per item, and restored after, so item k stays a pure function of (seed, k) as
    everywhere else in the repo.
    """

    def __init__(self, source: DataSource, transform: Callable[[PIL.Image.Image], Tensor]):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        image = self.source.image(index)
        if isinstance(image, np.ndarray):
            image = PIL.Image.fromarray(image)
        elif isinstance(image, Tensor):
            image = TF.to_pil_image(image)
        states = random.getstate(), np.random.get_state()
        seed = int(torch.randint(2**31, ()))
        random.seed(seed)
        np.random.seed(seed)
        try:
            pixels = self.transform(image.convert("RGB"))
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
        return {"image": pixels, "label": self.source.label(index)}


def train_image_transform(cfg: FinetuneConfig, image_size: int) -> Callable:
    """timm's ImageNet train transform: random resized crop, flip, RandAugment, erasing.

    ``color_jitter=None``: timm adds ColorJitter(0.4) whenever RandAugment is off, which
    would turn the linear probe's clean crops into colour-jittered ones."""
    return create_transform(image_size, is_training=True, scale=tuple(cfg.crop_scale),
                            hflip=cfg.hflip, auto_augment=cfg.rand_augment or None,
                            color_jitter=None,
                            interpolation="bicubic", re_prob=cfg.reprob, re_mode="pixel",
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)


@torch.no_grad()
def evaluate_image_classifier(model: nn.Module, dataset: Dataset, batch_size: int) -> Dict[str, float]:
    """``{"ft_top1", "ft_top5"}`` in percent over ``dataset`` (eval transform applied)."""
    device = next(model.parameters()).device
    logits, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        logits.append(model(to_model_input(batch["image"].to(device))).float().cpu())
        labels.append(batch["label"])
    acc = topk_accuracy(torch.cat(logits), torch.cat(labels), (1, 5))
    return {"ft_top1": acc["top1"], "ft_top5": acc["top5"]}


def finetune_classifier(encoder: Encoder, train_source: DataSource, val_source: DataSource,
                        cfg: FinetuneConfig | DictConfig, out_dir: str | Path,
                        image_size: Optional[int] = None) -> Dict[str, float]:
    """Fine-tune (or linearly probe) a copy of ``encoder`` on ``train_source``'s labels.

    Returns the final validation ``{"ft_top1", "ft_top5", "steps", "train_minutes"}``; the
    curves are in ``out_dir/metrics.jsonl``. ``image_size`` defaults to the encoder's.
    Running again with the same ``out_dir`` resumes (``train.resume=auto``) or, if
    finished, only reports.
    """
    cfg = resolve_config(cfg, len(train_source))
    num_classes = len(train_source.classnames)
    if num_classes < 2:
        raise ConfigError(f"config error: fine-tuning needs a labelled training split, "
                          f"{train_source!r} has {num_classes} classes")
    mixing = cfg.mixup > 0 or cfg.cutmix > 0
    if mixing and cfg.train.batch_size % 2:
        raise ConfigError(f"config error: mixup/cutmix need an even batch size, got "
                          f"train.batch_size={cfg.train.batch_size}")
    size = image_size or encoder.embed.patch_embed.img_size[0]
    model, frozen, groups = classifier_setup(encoder, image_head(encoder.dim, num_classes),
                                             "mean", cfg)

    mixup = (Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                   switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.label_smoothing,
                   num_classes=num_classes) if mixing else None)
    criterion = (SoftTargetCrossEntropy() if mixup is not None
                 else nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing))

    def step(m: nn.Module, batch: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        images, targets = batch["image"], batch["label"]
        if mixup is not None:
            images, targets = mixup(images, targets)  # soft targets B x C
        return {"loss": criterion(m(images).float(), targets)}

    val = ImageLabelSet(val_source, eval_transform(size))
    train = TrainStream(AugmentedImages(train_source, train_image_transform(cfg, size)),
                        seed=cfg.train.seed)
    log.info("%s on %d classes: %d steps, batch %d, lr %.2g, layer decay %.2f", cfg.mode,
             num_classes, cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.layer_decay)
    result = fit(model, step, train, cfg.train, out_dir,
                 evaluate=lambda m, _: evaluate_image_classifier(m, val, cfg.eval_batch_size),
                 frozen=frozen, param_groups=groups)
    final = {k: v for k, v in result.history[-1].items() if k != "step"}
    return {**final, "steps": result.step, "train_minutes": result.train_minutes}


# ---------------------------------------------------------------------------- text tasks
class _Examples(Dataset):
    def __init__(self, examples: Sequence[GlueExample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> GlueExample:
        return self.examples[index]


def _text_batch(tokenizer: Tokenizer, max_len: int) -> Callable[[List[GlueExample]], Dict[str, Tensor]]:
    def collate(items: List[GlueExample]) -> Dict[str, Tensor]:
        ids, mask = encode_examples(tokenizer, items, max_len)
        return {"text_ids": ids, "padding_mask": mask,
                "label": torch.tensor([item.label for item in items])}
    return collate


@torch.no_grad()
def predict_text(model: nn.Module, examples: Sequence[GlueExample], tokenizer: Tokenizer,
                 max_len: int, regression: bool, batch_size: int) -> List[float]:
    """Predicted class indices (or scores, for regression) of ``examples``."""
    device = next(model.parameters()).device
    collate = _text_batch(tokenizer, max_len)
    preds: List[float] = []
    for start in range(0, len(examples), batch_size):
        batch = collate(list(examples[start:start + batch_size]))
        out = model(batch["text_ids"].to(device), batch["padding_mask"].to(device)).float().cpu()
        preds.extend(out[:, 0].tolist() if regression else out.argmax(dim=1).tolist())
    return preds


def finetune_text_classifier(encoder: Encoder, tokenizer: Tokenizer, task: GlueTask,
                             train: Sequence[GlueExample], dev: Mapping[str, Sequence[GlueExample]],
                             cfg: FinetuneConfig | DictConfig, out_dir: str | Path,
                             max_len: int) -> Dict[str, float]:
    """Fine-tune (or probe) a copy of the text ``encoder`` on ``task``; return the final dev
    metrics ``{"<dev name>/<metric>": percent}`` (e.g. ``mnli-m/acc``) plus ``steps`` and
    ``train_minutes``. Image augmentation settings do not apply to text."""
    cfg = resolve_config(cfg, len(train))
    if not train or not all(dev.values()):
        raise ConfigError(f"config error: task {task.name} has an empty train or dev split")
    regression = task.labels is None
    model, frozen, groups = classifier_setup(
        encoder, text_head(encoder.dim, task.num_outputs, cfg.head_dropout), "cls", cfg)
    criterion: nn.Module = (nn.MSELoss() if regression
                            else nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing))

    def step(m: nn.Module, batch: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        out = m(batch["text_ids"], batch["padding_mask"]).float()
        target = batch["label"].float() if regression else batch["label"].long()
        return {"loss": criterion(out[:, 0] if regression else out, target)}

    def evaluate(m: nn.Module, _: int) -> Dict[str, float]:
        metrics = {}
        for split, examples in dev.items():
            preds = predict_text(m, examples, tokenizer, max_len, regression, cfg.eval_batch_size)
            scores = glue_metrics(task, preds, [e.label for e in examples])
            metrics.update({f"{dev_name(task, split)}/{k}": v for k, v in scores.items()})
        return metrics

    log.info("%s %s: %d train examples, %d steps, batch %d, lr %.2g", cfg.mode, task.name,
             len(train), cfg.train.steps, cfg.train.batch_size, cfg.train.lr)
    result = fit(model, step, TrainStream(_Examples(train), seed=cfg.train.seed), cfg.train,
                 out_dir, collate_fn=_text_batch(tokenizer, max_len), evaluate=evaluate,
                 frozen=frozen, param_groups=groups)
    final = {k: v for k, v in result.history[-1].items() if k != "step"}
    return {**final, "steps": result.step, "train_minutes": result.train_minutes}


# ---------------------------------------------------------------------------- CIFAR rows
def cifar_finetune_rows(data: DataConfig, encoder: Encoder, recipes: Mapping[str, Any],
                        modes: Sequence[str], labels: Sequence[str], out_root: Path, name: str,
                        meta: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Linear probe and/or full fine-tuning (``modes``, each with its recipe in ``recipes``) of
    ``encoder`` on the ``knn_train`` split's ``labels`` (fine: CIFAR-100, coarse: CIFAR-10),
    validated on ``knn_test``: the thesis's CIFAR fine-tuning. One result row per label set and
    mode; the runs live in ``out_root/<name>-<classes>-<mode>/`` (the same call resumes)."""
    rows = []
    for label in labels:
        train = open_source(data, "knn_train", label)
        val = open_source(data, "knn_test", label)
        classes = len(val.classnames)
        for mode in modes:
            if mode not in PROTOCOL:
                raise ConfigError(f"config error: finetune_modes has '{mode}'; use linear and/or full")
            recipe = dataclasses.replace(OmegaConf.to_object(recipes[mode]), mode=mode)
            result = finetune_classifier(finetunable(encoder), train, val, recipe,
                                         out_root / f"{name}-{classes}-{mode}",
                                         image_size=data.image_size)
            rows.append({**meta, "dataset": f"{dataset_name(data, 'knn_test')}{classes} "
                                            f"({PROTOCOL[mode]})",
                         "ft_top1": result["ft_top1"], "ft_top5": result["ft_top5"],
                         "notes": f"{PROTOCOL[mode]}: {result['steps']} steps, "
                                  f"{result['train_minutes']:.2f} min"})
    return rows
