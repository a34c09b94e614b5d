"""What a label-free tiny teacher's bootstrap reports (``report.json`` in its cache folder).

Its kNN accuracies after training, of the same network untrained, and chance, so a reader
sees at once whether the recipe learned. The accuracies are the chapters' own kNN
validation (:class:`common.knn.KnnSets`: ``knn_train`` as bank, ``knn_test`` as queries, 100
and 10 classes) of the final layer's CLS token and of its mean-pooled patch tokens.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from common.config import DataConfig
from common.data.synthetic import CLASSNAMES, COARSE_CLASSNAMES
from common.knn import KnnConfig, KnnSets
from common.models.encoder import Encoder, pool_tokens

LABELS = ("fine", "coarse")  # 100 classes (colour + shape) and 10 (shape)
POOLS = ("cls", "mean")
KNN_CHANCE = {f"{labels}_top{k}": round(100 * (1 - (1 - 1 / c) ** k), 2)
              for labels, c in (("fine", len(CLASSNAMES)), ("coarse", len(COARSE_CLASSNAMES)))
              for k in (1, 3)}  # any of k neighbours right by chance: 1 - (1 - 1/C)^k


def knn_sets(data: DataConfig) -> KnnSets:
    """The kNN validation sets of a bootstrap (both label sets, every image)."""
    return KnnSets(data, KnnConfig(labels=list(LABELS)), batch_size=500)


@torch.no_grad()
def knn_report(model: Encoder, knn: KnnSets) -> Dict[str, float]:
    """kNN top-1/top-3 (percent, bank -> queries) of the CLS token and of the mean-pooled
    patch tokens, per label set: ``{"cls_fine_top1": .., "mean_coarse_top3": .., ...}``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: Dict[str, float] = {}
    for pool in POOLS:
        metrics = knn.metrics(lambda x: pool_tokens(model(x).x, pool, model.embed.num_extra_tokens).float(),
                              device)
        for labels, key in zip(LABELS, knn.sets):
            out.update({f"{pool}_{labels}_top{k}": metrics[f"{key}_top{k}"] for k in (1, 3)})
    model.train(was_training)
    return out


def ssl_report(recipe: str, result: Any, settings: Dict[str, Any], trained: Dict[str, float],
               untrained: Dict[str, float]) -> Dict[str, Any]:
    """The ``report.json`` of a label-free teacher (see the module docstring)."""
    return {"recipe": recipe, "steps": result.step, "train_minutes": round(result.train_minutes, 2),
            "settings": settings,
            "knn": trained, "knn_untrained": untrained, "knn_chance": KNN_CHANCE,
            "knn_gain_over_untrained": {k: round(trained[k] - untrained[k], 2) for k in trained},
            "knn_bank": "knn_train", "knn_queries": "knn_test",
            "num_classes": {"fine": len(CLASSNAMES), "coarse": len(COARSE_CLASSNAMES)}}
