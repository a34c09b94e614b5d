"""Visual Genome region descriptions (Krishna et al., 2017) as (image, phrase) pairs.

The thesis' preliminary runs add VG to the image-text mix (108,249 images, 5,408,689 pairs):
every region phrase ("man wearing a red hat") is a caption of the *whole* image, as VLMo and
ALBEF use it. Input, as distributed (v1.2)::

    <root>/visual_genome/region_descriptions.json  # [{"id": 1, "regions": [{"phrase": ..}, ..]}]
    <root>/visual_genome/VG_100K/<image_id>.jpg  and  VG_100K_2/<image_id>.jpg

Prepared as one split, ``train``: per image all its non-empty phrases (one is drawn per visit
by :class:`common.data.datasets.ImageTextPairs`); images missing on disk are skipped and counted.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

from tqdm import tqdm

from common.data.image_index import IndexedImages, clean_caption, write_index
from common.data.manifest import finished, require_manifest, write_manifest
from common.errors import DataError

log = logging.getLogger(__name__)

IMAGE_DIRS = ("VG_100K", "VG_100K_2", "images")


def prepare_visual_genome(root: Path, regions: Optional[Path] = None, force: bool = False) -> Dict:
    """Index ``root/visual_genome`` from ``region_descriptions.json``; returns the manifest."""
    folder = Path(root) / "visual_genome"
    source = Path(regions) if regions else folder / "region_descriptions.json"
    if not source.is_file():
        raise DataError(f"Visual Genome regions file {source} does not exist; download "
                        f"region_descriptions.json (v1.2) into {folder} or pass --regions")
    settings = {"regions": source.name, "size": source.stat().st_size}
    if not force and finished(folder, "visual_genome", settings):
        log.info("visual_genome: already prepared in %s (use --force to redo)", folder)
        return require_manifest(folder, "visual_genome")
    try:
        entries = json.loads(source.read_text(encoding="utf-8"))
        entries = [(int(e["id"]), [r["phrase"] for r in e["regions"]]) for e in entries]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{source} is not a Visual Genome region_descriptions.json "
                        f"({type(err).__name__}: {err}); re-download it") from None
    files: List[str] = []
    captions: List[List[str]] = []
    missing = empty = 0
    for image_id, phrases in tqdm(entries, desc="visual_genome", unit="img"):
        found = next((f"{d}/{image_id}.jpg" for d in IMAGE_DIRS
                      if (folder / d / f"{image_id}.jpg").is_file()), None)
        kept = [p for p in map(clean_caption, phrases) if p]
        empty += len(phrases) - len(kept)
        if found is None or not kept:
            missing += 1
            continue
        files.append(found)
        captions.append(kept)
    write_index(folder, "train", files, captions=captions)
    pairs = sum(map(len, captions))
    log.info("visual_genome train: %d images, %d (image, phrase) pairs (skipped: %d images "
             "without file or phrase, %d empty phrases)", len(files), pairs, missing, empty)
    split = {"count": len(files), "pairs": pairs, "skipped": missing, "skipped_phrases": empty}
    return write_manifest(folder, "visual_genome", {"train": split}, settings)


def open_visual_genome(folder: Path, split: str = "train") -> IndexedImages:
    """The prepared (image, all its region phrases) items."""
    require_manifest(folder, "visual_genome")
    return IndexedImages(folder, split, name="visual_genome")
