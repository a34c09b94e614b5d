"""``tiny-cnn``: a supervised timm ResNet trained from scratch on the synthetic world's fine
labels, the tiny stand-in for the ImageNet-supervised ResNet-50 of the SHRe chapter."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import timm
import torch
import torch.nn.functional as F
from torch import nn

from common.config import DataConfig, TeacherConfig
from common.data.datasets import ImageLabelSet, TrainStream
from common.data.synthetic import CLASSNAMES, SyntheticWorld
from common.data.transforms import eval_transform, to_model_input, train_transform
from common.train import fit


def build_cnn(cfg: TeacherConfig) -> nn.Module:
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


def train_cnn(model: nn.Module, cfg: TeacherConfig, data: DataConfig, out_dir: Path) -> Dict[str, Any]:
    """Supervised training on the fine labels (colour + shape of the main object): the tiny
    stand-in for the ImageNet-supervised ResNet-50 of the SHRe chapter."""
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
