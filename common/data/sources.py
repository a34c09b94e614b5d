"""Open a dataset *role* (``train``, ``coco_test``, ``flickr_test``, ``imagenet_val``,
``knn_train``, ``knn_test``) as a :class:`common.data.datasets.DataSource`.

Chapters never name files: they ask for a role, and the data config decides where it comes
from. ``data.source=synthetic`` (tiny presets) serves every role from the synthetic world;
``data.source=real`` (full presets) serves it from the prepared datasets under ``data.root``
(COCO Karpathy 5k, Flickr30K 1k, ImageNet val, CIFAR, COCO+CC3M for training). A missing
dataset is one :class:`DataError` line that says which folder is missing and how to get it.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, List, Tuple

from common.config import DataConfig
from common.data.datasets import DataSource
from common.data.synthetic import TEMPLATES, SyntheticWorld
from common.errors import DataError

# role -> (name in result CSVs, folder under data.root, how to get it)
REAL_ROLES: Dict[str, Tuple[str, str, str]] = {
    "train": ("coco+cc3m", "coco", "the COCO 2014 images with Karpathy's dataset_coco.json, and "
              "the CC3M subset"),
    "coco_test": ("coco5k", "coco", "the COCO 2014 images with Karpathy's dataset_coco.json"),
    "flickr_test": ("flickr1k", "flickr30k", "the Flickr30K images with Karpathy's "
                    "dataset_flickr30k.json"),
    "imagenet_val": ("imagenet", "imagenet", "the ImageNet-1k 2012 validation images in class "
                     "folders"),
    "knn_train": ("cifar", "cifar", "the CIFAR-10/100 python batches"),
    "knn_test": ("cifar", "cifar", "the CIFAR-10/100 python batches"),
}
SYNTHETIC_NAMES = {"train": "syn-train", "coco_test": "syn-coco", "flickr_test": "syn-flickr",
                   "imagenet_val": "syn-imagenet", "knn_train": "syn-knn", "knn_test": "syn-knn"}


@functools.lru_cache(maxsize=8)
def _world(seed: int, train_size: int, coco: int, flickr: int, render: int) -> SyntheticWorld:
    return SyntheticWorld(seed=seed, train_size=train_size, coco_test_size=coco,
                          flickr_test_size=flickr, render_size=render)


def synthetic_world(cfg: DataConfig) -> SyntheticWorld:
    """One shared world per data config (test scenes are deduplicated once per process)."""
    return _world(0, cfg.train_size, cfg.coco_test_size, cfg.flickr_test_size,
                  cfg.render_size or cfg.image_size)


def dataset_name(cfg: DataConfig, role: str) -> str:
    """The ``dataset`` column of result rows for ``role``."""
    names = SYNTHETIC_NAMES if cfg.source == "synthetic" else {k: v[0] for k, v in REAL_ROLES.items()}
    return names.get(role, role)


def prompt_templates(cfg: DataConfig) -> List[str]:
    """Zero-shot prompt templates ("a photo of a {}.") for the classes of ``cfg``'s data."""
    if cfg.source == "synthetic":
        return list(TEMPLATES)
    raise DataError("zero-shot templates for real data arrive with the full-preset loaders; "
                    "use the tiny preset meanwhile")


def open_source(cfg: DataConfig, role: str, label: str = "fine") -> DataSource:
    """The data source that plays ``role`` under ``cfg`` (``label``: fine or coarse classes)."""
    if cfg.source == "synthetic":
        return synthetic_world(cfg).source(role, label=label)
    if cfg.source != "real":
        raise DataError(f"unknown data.source '{cfg.source}'; use 'synthetic' (tiny presets) or "
                        f"'real' (full presets, with data.root pointing at the prepared datasets)")
    if role not in REAL_ROLES:
        raise DataError(f"no real dataset plays the role '{role}'; choose one of {sorted(REAL_ROLES)}")
    _, folder, how = REAL_ROLES[role]
    path = Path(cfg.root or "data") / folder
    if not path.is_dir():
        raise DataError(f"dataset folder {path} (needed for '{role}') does not exist; get {how}, "
                        f"or set data.root=/path/to/datasets")
    raise DataError(f"found {path}, but the loader for real '{role}' data is not in this version "
                    f"yet (tracked in the full-preset issue); use the tiny preset meanwhile")
