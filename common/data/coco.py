"""COCO and Flickr30K with Karpathy's splits: the training pairs and the two retrieval tests.

Both come as one ``dataset_<name>.json`` (Karpathy & Fei-Fei, 2015): ``{"images": [{"filepath",
"filename", "split", "sentences": [{"raw", ...}], ...}]}`` with ``split`` one of ``train``,
``restval``, ``val``, ``test``. Prepared splits, as every image-text paper since uses them:

- COCO: ``train`` = train + restval (113,287 images, 566,747 captions: the "COCO" of the
  thesis' pretraining mix), ``val`` and ``test`` (5,000 images each; ``test`` is the 5k
  retrieval benchmark, 25,010 captions);
- Flickr30K: ``train`` (29,000), ``val`` (1,014) and ``test`` (1,000 images, the 1k benchmark).

Expected layout (the json may also be passed with ``--json``)::

    <root>/coco/dataset_coco.json   <root>/coco/train2014/*.jpg   <root>/coco/val2014/*.jpg
    <root>/flickr30k/dataset_flickr30k.json   <root>/flickr30k/flickr30k-images/*.jpg

Images missing on disk (or left without captions) and empty captions are skipped and counted
in ``manifest.json``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from common.data.image_index import IndexedImages, clean_caption, write_index
from common.data.manifest import finished, require_manifest, write_manifest
from common.errors import DataError

log = logging.getLogger(__name__)

# prepared split -> Karpathy splits it merges
SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
# dataset -> (folder under --root, annotation file, image folders tried in order, relative to it)
KARPATHY = {
    "coco": ("coco", "dataset_coco.json", ("", "images")),
    "flickr30k": ("flickr30k", "dataset_flickr30k.json", ("flickr30k-images", "images", "")),
}


def prepare_karpathy(name: str, root: Path, json_path: Optional[Path] = None,
                     force: bool = False) -> Dict:
    """Index ``name`` (``coco`` or ``flickr30k``) under ``root/<folder>`` from Karpathy's json;
    returns the manifest. Skipped when already prepared from the same json (``force`` redoes it)."""
    folder_name, json_name, image_dirs = KARPATHY[name]
    folder = Path(root) / folder_name
    source = Path(json_path) if json_path else folder / json_name
    if not source.is_file():
        raise DataError(f"Karpathy split file {source} does not exist; download {json_name} "
                        f"(Karpathy's caption_datasets) into {folder} or pass --json")
    settings = {"json": source.name, "size": source.stat().st_size}
    if not force and finished(folder, name, settings):
        log.info("%s: already prepared in %s (use --force to redo)", name, folder)
        return require_manifest(folder, name)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        images = json.loads(source.read_text(encoding="utf-8"))["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{source} is not a Karpathy split file ({type(err).__name__}: {err}); "
                        f"re-download {json_name}") from None
    splits = {}
    for split, karpathy_splits in SPLITS.items():
        entries = [e for e in images if e.get("split") in karpathy_splits]
        files, captions, counts = _collect(folder, entries, image_dirs, f"{name} {split}")
        write_index(folder, split, files, captions=captions)
        splits[split] = counts
        log.info("%s %s: %d images, %d captions (skipped: %d images without file or caption, "
                 "%d empty captions)",
                 name, split, counts["count"], counts["captions"], counts["skipped"],
                 counts["skipped_captions"])
    return write_manifest(folder, name, splits, settings)


def _collect(folder: Path, entries: Sequence[dict], image_dirs: Sequence[str],
             desc: str) -> Tuple[List[str], List[List[str]], Dict[str, int]]:
    files: List[str] = []
    captions: List[List[str]] = []
    missing = empty = 0
    for entry in tqdm(entries, desc=desc, unit="img", leave=False):
        relative = "/".join(p for p in (entry.get("filepath", ""), entry["filename"]) if p)
        found = next((f"{d}/{relative}".lstrip("/") for d in image_dirs
                      if (folder / d / relative).is_file()), None)
        caps = [clean_caption(s["raw"]) for s in entry.get("sentences", [])]
        kept = [c for c in caps if c]
        empty += len(caps) - len(kept)
        if found is None or not kept:
            missing += 1
            continue
        files.append(found)
        captions.append(kept)
    return files, captions, {"count": len(files), "captions": sum(map(len, captions)),
                             "skipped": missing, "skipped_captions": empty}


def open_karpathy(folder: Path, name: str, split: str) -> IndexedImages:
    """Split ``split`` (train, val or test) of the prepared ``name`` in ``folder``."""
    require_manifest(folder, name)
    return IndexedImages(folder, split, name=name)
