"""Open a dataset *role* (``train``, ``coco_test``, ``flickr_test``, ``imagenet_val``,
``knn_train``, ``knn_test``) as a :class:`common.data.datasets.DataSource`.

Chapters never name files: they ask for a role, and the data config decides where it comes
from. ``data.source=synthetic`` (tiny presets) serves every role from the synthetic world;
``data.source=real`` (full presets) serves it from the datasets prepared under ``data.root``
by ``python -m common.data.prepare``: ``train`` = the image-text sets of ``data.train_sets``
mixed round-robin (:mod:`common.data.multi`), ``coco_test`` = COCO Karpathy 5k test,
``flickr_test`` = Flickr30K 1k test, ``imagenet_val`` / ``imagenet_train`` = ImageNet with
CLIP's class names, ``knn_train`` / ``knn_test`` = CIFAR train / test (``label="fine"``:
CIFAR-100, ``"coarse"``: CIFAR-10). A missing dataset is one :class:`DataError` line that
says which folder is missing and how to get it.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from common.config import DataConfig
from common.data.cc3m import open_cc3m
from common.data.cifar import CifarSource
from common.data.coco import open_karpathy
from common.data.datasets import DataSource
from common.data.image_index import IndexedImages
from common.data.transforms import ImageLike
from common.data.imagenet import open_imagenet
from common.data.imagenet_classes import TEMPLATES as CLIP_TEMPLATES
from common.data.multi import RoundRobinSource
from common.data.synthetic import TEMPLATES, SyntheticWorld
from common.data.visual_genome import open_visual_genome
from common.errors import DataError

# dataset folder under data.root -> how to get it
REAL_DATASETS: Dict[str, str] = {
    "coco": "the COCO 2014 images with Karpathy's dataset_coco.json",
    "cc3m": "the CC3M index Train_GCC-training.tsv (the images are downloaded from it)",
    "visual_genome": "the Visual Genome images with region_descriptions.json",
    "flickr30k": "the Flickr30K images with Karpathy's dataset_flickr30k.json",
    "imagenet": "the ImageNet-1k 2012 images in class folders",
    "cifar": "the CIFAR-10/100 python archives",
}
IMAGE_TEXT_SETS = ("coco", "cc3m", "visual_genome")
# role -> (name in result CSVs, dataset folder, split); "train" comes from data.train_sets
REAL_ROLES: Dict[str, Tuple[str, str, str]] = {
    "coco_test": ("coco5k", "coco", "test"),
    "flickr_test": ("flickr1k", "flickr30k", "test"),
    "imagenet_val": ("imagenet", "imagenet", "val"),
    "imagenet_train": ("imagenet", "imagenet", "train"),  # fine-tuning (eval.finetune)
    "knn_train": ("cifar", "cifar", "train"),
    "knn_test": ("cifar", "cifar", "test"),
}
# real test sets that data.coco_test_size / data.flickr_test_size cut to their first images
# (quick checks; the published protocols use all of them: 5,000 / 1,000)
TEST_SIZES = {"coco_test": ("coco_test_size", 5000), "flickr_test": ("flickr_test_size", 1000)}
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
    if cfg.source == "synthetic":
        return SYNTHETIC_NAMES.get(role, role)
    if role == "train":
        return "+".join(cfg.train_sets)
    name = REAL_ROLES[role][0] if role in REAL_ROLES else role
    size = _test_size(cfg, role)
    return f"{name}-first{size}" if size else name


def _test_size(cfg: DataConfig, role: str) -> int:
    """How many images of a real test set to keep (0 = all, the published protocol)."""
    key, full = TEST_SIZES.get(role, ("", 0))
    size = getattr(cfg, key, 0) if key else 0
    return size if 0 < size < full else 0


class FirstImages:
    """The first ``size`` images of a source, with their captions and labels."""

    def __init__(self, source: DataSource, size: int) -> None:
        self.source, self.size = source, min(size, len(source))
        self.classnames = source.classnames

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"FirstImages({self.source!r}, {self.size})"

    def image(self, index: int) -> ImageLike:
        return self.source.image(self._check(index))

    def captions(self, index: int) -> Sequence[str]:
        return self.source.captions(self._check(index))

    def label(self, index: int) -> int:
        return self.source.label(self._check(index))

    def _check(self, index: int) -> int:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return index


class FirstClasses:
    """The images of a labelled source whose class is one of its first ``classes``."""

    def __init__(self, source: DataSource, classes: int) -> None:
        self.source, self.classnames = source, list(source.classnames)[:classes]
        self.index = [i for i in range(len(source)) if source.label(i) < classes]

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"FirstClasses({self.source!r}, {len(self.classnames)})"

    def image(self, index: int) -> ImageLike:
        return self.source.image(self.index[index])

    def captions(self, index: int) -> Sequence[str]:
        return self.source.captions(self.index[index])

    def label(self, index: int) -> int:
        return self.source.label(self.index[index])


def check_image_files(source: DataSource) -> None:
    """Pre-flight of an evaluation set: every image file of a prepared split (of its first
    images under :class:`FirstImages`) must decode, so that a corrupt test image stops a run
    before training rather than after it. Drawn (synthetic) and array (CIFAR) sources have no
    files to check."""
    count = len(source)
    while isinstance(source, FirstImages):
        source = source.source
    if isinstance(source, IndexedImages):
        source.check_images(count)


def prompt_templates(cfg: DataConfig) -> List[str]:
    """Zero-shot prompt templates ("a photo of a {}.") for the classes of ``cfg``'s data:
    the synthetic world's, or CLIP's 80 ImageNet templates for real data (the first
    ``data.zero_shot_templates`` of them when that is set)."""
    if cfg.source == "synthetic":
        return list(TEMPLATES)
    return list(CLIP_TEMPLATES[:cfg.zero_shot_templates or None])


def zero_shot_source(cfg: DataConfig, role: str) -> DataSource:
    """The classification set of ``role`` for zero-shot evaluation: real data keeps only
    the first ``data.zero_shot_classes`` classes when that is set (a quick check)."""
    source = open_source(cfg, role)
    if cfg.source == "real" and 0 < cfg.zero_shot_classes < len(source.classnames):
        return FirstClasses(source, cfg.zero_shot_classes)
    return source


def zero_shot_name(cfg: DataConfig, role: str) -> str:
    """The ``dataset`` column of zero-shot rows: the set's name, plus the quick-check cuts."""
    name = dataset_name(cfg, role)
    if cfg.source == "real" and cfg.zero_shot_classes:
        name += f"-first{cfg.zero_shot_classes}cls"
    if cfg.source == "real" and 0 < cfg.zero_shot_templates < len(CLIP_TEMPLATES):
        name += f"-{cfg.zero_shot_templates}tmpl"
    return name


def open_source(cfg: DataConfig, role: str, label: str = "fine") -> DataSource:
    """The data source that plays ``role`` under ``cfg`` (``label``: fine or coarse classes)."""
    if cfg.source == "synthetic":
        return synthetic_world(cfg).source(role, label=label)
    if cfg.source != "real":
        raise DataError(f"unknown data.source '{cfg.source}'; use 'synthetic' (tiny presets) or "
                        f"'real' (full presets, with data.root pointing at the prepared datasets)")
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    if role == "train":
        unknown = [n for n in cfg.train_sets if n not in IMAGE_TEXT_SETS]
        if unknown or not cfg.train_sets:
            raise DataError(f"data.train_sets={list(cfg.train_sets)}: choose one or more of "
                            f"{list(IMAGE_TEXT_SETS)}")
        sources = [_open_real(cfg, name, "train", role, label) for name in cfg.train_sets]
        return sources[0] if len(sources) == 1 else RoundRobinSource(sources, cfg.train_sets)
    if role not in REAL_ROLES:
        raise DataError(f"no real dataset plays the role '{role}'; choose one of "
                        f"{sorted(REAL_ROLES) + ['train']}")
    _, name, split = REAL_ROLES[role]
    source = _open_real(cfg, name, split, role, label)
    size = _test_size(cfg, role)
    return FirstImages(source, size) if size else source


def _open_real(cfg: DataConfig, name: str, split: str, role: str, label: str) -> DataSource:
    """Split ``split`` of the prepared dataset ``name`` under ``data.root``."""
    root = Path(cfg.root or "data")
    path = root / name
    if not path.is_dir():
        raise DataError(f"dataset folder {path} (needed for '{role}') does not exist; get "
                        f"{REAL_DATASETS[name]}, run python -m common.data.prepare {name} "
                        f"--root {root}, or set data.root=/path/to/datasets")
    if name in ("coco", "flickr30k"):
        return open_karpathy(path, name, split)
    if name == "cc3m":
        return open_cc3m(path, split)
    if name == "visual_genome":
        return open_visual_genome(path, split)
    if name == "imagenet":
        return open_imagenet(path, split)
    return CifarSource(path, "cifar100" if label == "fine" else "cifar10", split)
