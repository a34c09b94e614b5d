"""kNN validation of image embeddings, as the thesis validates its students on CIFAR.

The ``knn_train`` split is the bank and ``knn_test`` the queries, and the reverse (thesis
draft 002, listing 1); top-1 and top-3 on every label set named in :class:`KnnConfig`
(``fine``: CIFAR-100 / the synthetic world's 100 colour+shape classes, ``coarse``:
CIFAR-10 / its 10 shapes). Used to judge a distilled student (chapter 1) and a teacher
(chapter 5) by the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, List, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from common.config import ConfigError, DataConfig
from common.data.datasets import DataSource, ImageLabelSet
from common.data.sources import dataset_name, open_source
from common.data.transforms import eval_transform
from common.evaluation import embed_images
from common.retrieval import embedding_spread, knn_topk_accuracies


REVERSE_NOTE = "test split as bank, train split as queries"


@dataclass
class KnnConfig:
    """kNN validation: ``knn_train`` is the bank, ``knn_test`` the queries (and the reverse)."""

    labels: List[str] = field(default_factory=lambda: ["fine", "coarse"])  # CIFAR-100 / CIFAR-10
    pool: str = "mean"  # the image embedding: mean of the patch tokens | cls
    bank_size: int = 0  # first N bank images (0 = all); small values for quick checks
    query_size: int = 0


def _first(dataset: Dataset, size: int) -> Dataset:
    return Subset(dataset, range(size)) if 0 < size < len(dataset) else dataset


def images_key(source: DataSource) -> Hashable:
    """What identifies ``source``'s images (not its labels): two label sets with the same key
    share one embedding. The synthetic world's fine and coarse splits are the same scenes,
    CIFAR-100 and CIFAR-10 are different image files; a source without ``images_key`` is
    embedded on its own."""
    return getattr(source, "images_key", id(source))


@dataclass
class _LabelSet:
    """One label set's bank and queries with their labels and what identifies their images."""

    bank: Dataset
    queries: Dataset
    bank_labels: Tensor
    query_labels: Tensor
    images: Hashable


class KnnSets:
    """The chapter's kNN validation: images of ``knn_train`` (bank) and ``knn_test``
    (queries) of every label set of ``knn.labels`` are embedded once per evaluation (once
    for label sets that are the same images, see :func:`images_key`) and scored in both
    directions. Keys: ``knn<C>_top<k>`` and ``knn<C>_rev_top<k>`` (C = the number of
    classes: 100 / 10, as CIFAR-100 / CIFAR-10)."""

    def __init__(self, data: DataConfig, knn: KnnConfig, batch_size: int):
        if not knn.labels:
            raise ConfigError("config error: knn.labels is empty; use [fine], [coarse] or both")
        transform = eval_transform(data.image_size)
        self.data, self.batch_size, self.num_workers = data, batch_size, data.num_workers
        self.sets: Dict[str, _LabelSet] = {}  # "knn100" -> its bank and queries
        self.names: Dict[str, str] = {}  # "knn100" -> dataset name in the result rows
        for label in knn.labels:
            bank_source = open_source(data, "knn_train", label)
            query_source = open_source(data, "knn_test", label)
            bank = _first(ImageLabelSet(bank_source, transform), knn.bank_size)
            queries = _first(ImageLabelSet(query_source, transform), knn.query_size)
            key = f"knn{len(bank_source.classnames)}"
            self.sets[key] = _LabelSet(
                bank, queries, torch.tensor([bank_source.label(i) for i in range(len(bank))]),
                torch.tensor([query_source.label(i) for i in range(len(queries))]),
                (images_key(bank_source), images_key(query_source)))
            self.names[key] = f"{dataset_name(data, 'knn_test')}{len(bank_source.classnames)}"

    @torch.no_grad()
    def metrics(self, encode_image: Callable[[Tensor], Tensor],
                device: torch.device) -> Dict[str, float]:
        """kNN top-1/top-3 (percent) of ``encode_image`` for every label set and direction,
        and the spread of the bank's embeddings (``<key>_mean_cos``, ``<key>_var_frac``:
        :func:`common.retrieval.embedding_spread`)."""
        embedded: Dict[Hashable, Tuple[Tensor, Tensor]] = {}
        out = {}
        for key, sets in self.sets.items():
            if sets.images not in embedded:
                embedded[sets.images] = tuple(
                    embed_images(encode_image, images, device, self.batch_size,
                                 self.num_workers)[0] for images in (sets.bank, sets.queries))
            bank, queries = embedded[sets.images]
            spread = embedding_spread(bank)
            out[f"{key}_mean_cos"], out[f"{key}_var_frac"] = (round(spread[k], 4) for k in ("mean_cos", "var_frac"))
            for name, acc in knn_topk_accuracies(queries, sets.query_labels, bank,
                                                 sets.bank_labels).items():
                out[f"{key}_{name}"] = round(acc, 2)
            for name, acc in knn_topk_accuracies(bank, sets.bank_labels, queries,
                                                 sets.query_labels).items():
                out[f"{key}_rev_{name}"] = round(acc, 2)
        return out

    def rows(self, metrics: Dict[str, float], meta: dict) -> List[dict]:
        """Result rows: per label set, bank->queries (with the bank's spread) and the reverse."""
        rows = []
        for key, name in self.names.items():
            rows.append({**meta, "dataset": name, "knn_top1": metrics[f"{key}_top1"],
                         "knn_top3": metrics[f"{key}_top3"], "emb_mean_cos": metrics.get(f"{key}_mean_cos"),
                         "emb_var_frac": metrics.get(f"{key}_var_frac")})
            rows.append({**meta, "dataset": f"{name} (reverse)",
                         "knn_top1": metrics[f"{key}_rev_top1"],
                         "knn_top3": metrics[f"{key}_rev_top3"],
                         "notes": "; ".join(filter(None, (meta.get("notes"), REVERSE_NOTE)))})
        return rows
