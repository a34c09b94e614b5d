"""ImageNet-1k 2012 (1.28M train / 50k val): CLIP-style zero-shot evaluation and fine-tuning.

Input, either:

- class folders, the layout torchvision's ``ImageFolder`` reads (val images moved into their
  class folders, e.g. by the usual ``valprep.sh``)::

      <root>/imagenet/train/n01440764/*.JPEG ...   <root>/imagenet/val/n01440764/*.JPEG ...

- or a Hugging Face copy of ``imagenet-1k`` (``--hf PATH``: a ``save_to_disk`` folder or a
  local folder of its parquet/arrow files; needs ``pip install datasets``). Its encoded
  images are written out unchanged into the class-folder layout above (existing files are
  kept, so an interrupted export resumes), then indexed like any other copy.

Labels are ImageNet's standard ones: the index of the WordNet id in sorted order (timm's
``ImageNetInfo``), so that a subset of class folders still gets the right labels; the class
names are CLIP's (:mod:`common.data.imagenet_classes`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from common.data.image_index import IndexedImages, write_index
from common.data.imagenet_classes import CLASSNAMES
from common.data.manifest import (finished, read_manifest, require_manifest, write_atomic,
                                  write_manifest)
from common.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
HF_SPLITS = {"train": "train", "validation": "val", "val": "val"}  # HF name -> ours
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def wnids() -> List[str]:
    """The 1000 WordNet ids of ImageNet-1k; class ``k`` is ``wnids()[k]``."""
    from timm.data import ImageNetInfo  # imported here: timm takes seconds to import

    return list(ImageNetInfo().label_names())


def prepare_imagenet(root: Path, hf: Optional[Path] = None, force: bool = False) -> Dict:
    """Index the class folders of ``root/imagenet`` (after exporting ``hf`` into them, when
    given); returns the manifest. Skipped when the same splits were already indexed."""
    folder = Path(root) / "imagenet"
    source = str(Path(hf).resolve()) if hf is not None else ""
    if hf is not None:
        done = read_manifest(folder)
        if not force and done and done.get("settings", {}).get("hf") == source:
            log.info("imagenet: %s already exported and indexed in %s (use --force to redo)", hf,
                     folder)
            return done
        _export_hf(Path(hf), folder)
    present = [s for s in SPLITS if (folder / s).is_dir()]
    if not present:
        raise DataError(f"no ImageNet class folders in {folder} (expected {folder}/val/n01440764/"
                        f"... and/or {folder}/train/...); extract ImageNet there or pass --hf PATH")
    settings = {"splits": present, "hf": source}
    if not force and finished(folder, "imagenet", settings):
        log.info("imagenet: already prepared in %s (use --force to redo)", folder)
        return require_manifest(folder, "imagenet")
    label_of = {wnid: k for k, wnid in enumerate(wnids())}
    splits = {}
    for split in present:
        files, labels = _scan(folder, split, label_of)
        write_index(folder, split, files, labels=labels)
        splits[split] = {"count": len(files), "classes": len(set(labels))}
        log.info("imagenet %s: %d images in %d classes", split, len(files), len(set(labels)))
    return write_manifest(folder, "imagenet", splits, settings)


def _scan(folder: Path, split: str, label_of: Dict[str, int]) -> Tuple[List[str], List[int]]:
    files, labels = [], []
    class_dirs = sorted(d.name for d in os.scandir(folder / split) if d.is_dir())
    for wnid in tqdm(class_dirs, desc=f"imagenet {split}", unit="class", leave=False):
        if wnid not in label_of:
            raise DataError(f"{folder / split / wnid} is not an ImageNet-1k class folder (expected "
                            f"WordNet ids like n01440764); move it out of {folder / split}")
        names = sorted(e.name for e in os.scandir(folder / split / wnid)
                       if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
        files.extend(f"{split}/{wnid}/{name}" for name in names)
        labels.extend([label_of[wnid]] * len(names))
    return files, labels


def _export_hf(path: Path, folder: Path) -> None:
    """Write the encoded images of a Hugging Face ``imagenet-1k`` copy into class folders."""
    try:
        import datasets
    except ImportError:
        raise DataError("reading a Hugging Face dataset needs the 'datasets' package; run "
                        "pip install datasets, or give ImageNet as class folders") from None
    if not path.exists():
        raise DataError(f"Hugging Face dataset path {path} does not exist; pass the folder of "
                        f"a save_to_disk copy or of the parquet files")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        dataset = datasets.load_from_disk(str(path))
    else:  # streamed: a non-streaming load would first copy all images into the HF cache
        dataset = datasets.load_dataset(str(path), streaming=True)
    if not isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(f"{path} holds a single split; save the DatasetDict (with 'train' and/or "
                        f"'validation') instead")
    names = wnids()
    for hf_split, rows in dataset.items():
        split = HF_SPLITS.get(hf_split)
        if split is None:
            log.info("imagenet: skipping split '%s' of %s (unlabelled)", hf_split, path)
            continue
        rows = rows.cast_column("image", datasets.Image(decode=False))
        for i, row in enumerate(tqdm(rows, desc=f"export {hf_split}", unit="img")):
            name = Path(row["image"].get("path") or f"{hf_split}_{i:08d}.JPEG").name
            target = folder / split / names[row["label"]] / name
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, row["image"]["bytes"])


def open_imagenet(folder: Path, split: str) -> IndexedImages:
    """Split ``split`` (train or val) of the prepared ImageNet, with CLIP's class names."""
    require_manifest(folder, "imagenet")
    return IndexedImages(folder, split, classnames=CLASSNAMES, name="imagenet")
