"""The on-disk index of one prepared split, and the :class:`DataSource` that reads it.

Every image dataset (COCO/Flickr30K Karpathy, CC3M, Visual Genome, ImageNet) is prepared into
the same few files beside its images, so one loader serves them all:

- ``<split>.images.txt``: image paths relative to the dataset folder, one per line;
- ``<split>.labels.npy``: int64 class per image (labelled datasets only);
- ``<split>.captions.txt`` + ``<split>.captions.npy``: all captions as UTF-8 lines, and the
  int64 byte offsets ``[N+1]``: image ``i``'s captions are the lines in bytes
  ``offsets[i]:offsets[i+1]`` (captioned datasets only);
- ``<split>.spans.npy``: int64 ``[N, 2]`` (byte offset, size) of each image inside the file
  ``images.txt`` names, a webdataset tar shard (:mod:`common.data.webdataset_shards`); read
  by offset, so shards are as randomly accessible as folders of files.

Why not one JSON: Visual Genome has 5.4M phrases; as Python strings they would cost several
GB in every data-loader worker, while a memory-mapped text file costs nothing until read and
is shared by all workers through the page cache.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from common.data.manifest import write_atomic
from common.data.transforms import load_image
from common.errors import DataError


def clean_caption(text: str) -> str:
    """One line of text: whitespace runs (newlines included) become one space, ends stripped;
    an empty result means the caption is unusable."""
    return " ".join(text.replace("\x00", " ").split())


def write_index(folder: Path, split: str, files: Sequence[str],
                labels: Optional[Sequence[int]] = None,
                captions: Optional[Sequence[Sequence[str]]] = None,
                spans: Optional[Sequence[Tuple[int, int]]] = None) -> None:
    """Write the index files of ``split`` (see the module docstring); ``captions[i]`` must be
    non-empty, cleaned captions (:func:`clean_caption`) of ``files[i]``; ``spans[i]`` locates
    the image inside ``files[i]`` when that is a tar shard."""
    if any("\n" in f for f in files):
        raise ValueError("image paths must not contain newlines")
    write_atomic(folder / f"{split}.images.txt", "".join(f"{f}\n" for f in files).encode())
    if labels is not None:
        _save_npy(folder / f"{split}.labels.npy", np.asarray(labels, dtype=np.int64))
    if captions is not None:
        chunks = ["".join(f"{c}\n" for c in caps).encode() for caps in captions]
        offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in chunks], out=offsets[1:])
        write_atomic(folder / f"{split}.captions.txt", b"".join(chunks))
        _save_npy(folder / f"{split}.captions.npy", offsets)
    if spans is not None:
        _save_npy(folder / f"{split}.spans.npy", np.asarray(spans, dtype=np.int64).reshape(-1, 2))


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.stem}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


class IndexedImages:
    """One prepared split as a :class:`common.data.datasets.DataSource`: ``image(i)`` decodes
    the file (a missing or corrupt one raises :class:`DataError` naming it), ``captions(i)``
    reads its lines from the memory-mapped caption file, ``label(i)`` is -1 when unlabelled."""

    def __init__(self, folder: Path, split: str, classnames: Sequence[str] = (),
                 name: str = "") -> None:
        self.folder, self.split = Path(folder), split
        self.name = name or self.folder.name
        self.classnames = classnames
        images = self.folder / f"{split}.images.txt"
        if not images.is_file():
            raise DataError(f"{images} is missing: split '{split}' of {self.folder} was not "
                            f"prepared; run python -m common.data.prepare {self.name} "
                            f"--root {self.folder.parent}")
        self.files: List[str] = images.read_text(encoding="utf-8").splitlines()
        labels = self.folder / f"{split}.labels.npy"
        self.labels = np.load(labels) if labels.is_file() else None
        offsets = self.folder / f"{split}.captions.npy"
        self.offsets = np.load(offsets) if offsets.is_file() else None
        spans = self.folder / f"{split}.spans.npy"
        self.spans = np.load(spans) if spans.is_file() else None
        self._text: Optional[np.memmap] = None
        for what, array, size in (("labels", self.labels, len(self.files)),
                                  ("caption offsets", self.offsets, len(self.files) + 1),
                                  ("shard spans", self.spans, len(self.files))):
            if array is not None and len(array) != size:
                raise DataError(f"{self.folder}: {split} has {len(self.files)} images but "
                                f"{len(array)} {what}; prepare it again (delete manifest.json)")

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"IndexedImages({self.name!r}, {self.split!r}, {len(self)} images)"

    def __getstate__(self) -> Dict[str, Any]:
        # data-loader workers reopen the memory map instead of receiving a copy of the text
        return {**self.__dict__, "_text": None}

    def path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self.folder / self.files[index]

    def span(self, index: int) -> Optional[Tuple[int, int]]:
        """(offset, size) of item ``index`` inside its tar shard; None for a plain image file."""
        return None if self.spans is None else (int(self.spans[index, 0]), int(self.spans[index, 1]))

    def image(self, index: int) -> torch.Tensor:
        return load_image(self.path(index), span=self.span(index))

    def check_images(self, count: Optional[int] = None, threads: int = 8) -> None:
        """Decode the first ``count`` (default: all) images, JPEGs at reduced scale, and raise
        the :class:`DataError` of the first bad one. Threads, because PIL decodes without
        the GIL."""
        indices = range(len(self) if count is None else min(count, len(self)))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(lambda i: load_image(self.path(i), draft=64, span=self.span(i)), indices):
                pass

    def captions(self, index: int) -> List[str]:
        if self.offsets is None:
            return []
        if self._text is None:
            self._text = np.memmap(self.folder / f"{self.split}.captions.txt", dtype=np.uint8,
                                   mode="r")
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return bytes(self._text[start:stop]).decode("utf-8").splitlines()

    def label(self, index: int) -> int:
        return -1 if self.labels is None else int(self.labels[index])
