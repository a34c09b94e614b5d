"""webdataset tar shards (what img2dataset writes) as a prepared split of :mod:`image_index`.

A webdataset shard is a plain tar file whose members are grouped into samples by their
key, the member name up to its first dot: ``000000012.jpg`` + ``000000012.txt`` (caption)
+ ``000000012.json`` (img2dataset: url, size, the extra columns it was asked to keep). The
open_clip / LAION tools stream such shards; this project needs deterministic, resumable
random access instead (every item a pure function of (seed, index), as for the folder
layouts), so each shard is indexed once: where every image's bytes lie inside the tar
(``<split>.spans.npy``) and its caption, in the same index files as every other dataset.
The shards stay as they are and are read by offset.
"""
from __future__ import annotations

import json
import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

from common.data.image_index import clean_caption, write_index
from common.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class ShardSample:
    """One sample of a shard: where its image is, its caption and its json metadata."""

    shard: Path
    key: str
    offset: int = 0
    size: int = 0
    caption: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)


def read_shard(path: Path) -> Iterator[ShardSample]:
    """The samples of one tar shard in member order (a sample without an image is skipped)."""
    samples: Dict[str, ShardSample] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                key, _, ext = name.partition(".")
                sample = samples.setdefault(key, ShardSample(path, key))
                ext = ext.lower()
                if ext in IMAGE_EXTENSIONS:
                    sample.offset, sample.size = member.offset_data, member.size
                elif ext in ("txt", "json"):
                    data = tar.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
                    if ext == "txt":
                        sample.caption = data
                    else:
                        sample.meta = json.loads(data)
    except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"webdataset shard {path} is damaged ({type(err).__name__}: {err}); "
                        f"download or write it again") from None
    for sample in samples.values():
        if sample.size:
            yield sample


def index_shards(folder: Path, split: str, shards: Sequence[Path]) -> List[ShardSample]:
    """Index the samples of ``shards`` (in the given order) as split ``split`` of ``folder``
    (see :func:`write_samples`)."""
    if not shards:
        raise DataError(f"no webdataset shards (*.tar) to index for {folder}")
    return write_samples(folder, split, [s for shard in shards for s in read_shard(shard)])


def write_samples(folder: Path, split: str, samples: Sequence[ShardSample]) -> List[ShardSample]:
    """Write the index files of ``samples`` as split ``split`` of ``folder``; samples with an
    empty caption are dropped. Shard paths inside ``folder`` are stored relative to it, others
    absolute (an existing copy is used where it lies)."""
    kept = [s for s in samples if clean_caption(s.caption)]
    if not kept:
        raise DataError(f"the webdataset shards for {folder} hold no sample with an image and "
                        f"a caption")
    base = folder.resolve()

    def name(path: Path) -> str:
        path = path.resolve()
        return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)

    write_index(folder, split, [name(s.shard) for s in kept],
                captions=[[clean_caption(s.caption)] for s in kept],
                spans=[(s.offset, s.size) for s in kept])
    log.info("%s %s: %d samples from %d webdataset shards", folder.name, split, len(kept),
             len({s.shard for s in kept}))
    return kept
