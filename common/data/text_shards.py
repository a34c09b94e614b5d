"""Binarised text: uint16 token shards on disk, and endless random windows over them.

A prepared split (``<folder>/<split>/``) is a set of shards plus ``index.json``:

- ``<name>.bin``: raw little-endian uint16 token ids (``np.memmap(path, np.uint16)`` reads it;
  GPT-2's 50,257 ids and data2vec's 50,265-entry dictionary both fit), every document
  followed by the tokenizer's EOS, as fairseq and nanoGPT binarise text;
- ``<name>.json``: that shard's counts, written after the ``.bin`` (its presence marks the
  shard finished, which is what makes preparation resumable per input file);
- ``index.json``: the shard list in order, with token counts, EOS id and vocabulary size.

:class:`RandomWindows` turns a split into the training stream of the text encoder: item
``k`` is a window of ``seq_len`` consecutive tokens at a position drawn uniformly from all
windows that fit inside one shard, a pure function of ``(seed, k)``, so step ``s`` reads
items ``[s*B, (s+1)*B)`` and resuming reproduces the batches (as
:class:`common.data.datasets.TrainStream` does for images).
"""
from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from common.data.manifest import require_manifest, write_atomic
from common.errors import DataError

TOKEN_DTYPE = np.uint16
MAX_OPEN_SHARDS = 64  # memory maps kept open per process (each holds a file descriptor)


def write_shard(folder: Path, name: str, ids: np.ndarray, info: Dict[str, Any]) -> Dict[str, Any]:
    """Write one shard (``ids`` already checked to fit uint16) and then its sidecar."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{name}.bin", np.asarray(ids, dtype=TOKEN_DTYPE).tobytes())
    meta = {"file": f"{name}.bin", "tokens": int(len(ids)), **info}
    write_atomic(folder / f"{name}.json", json.dumps(meta).encode())
    return meta


def read_shard_meta(folder: Path, name: str) -> Dict[str, Any] | None:
    """A finished shard's sidecar, or None when the shard is missing or was cut short."""
    sidecar, data = folder / f"{name}.json", folder / f"{name}.bin"
    if not (sidecar.is_file() and data.is_file()):
        return None
    meta = json.loads(sidecar.read_text())
    expected = meta["tokens"] * np.dtype(TOKEN_DTYPE).itemsize
    return meta if data.stat().st_size == expected else None


def write_shard_index(folder: Path, shards: Sequence[Dict[str, Any]], eos_id: int,
                      vocab_size: int) -> None:
    index = {"shards": list(shards), "eos_id": eos_id, "vocab_size": vocab_size,
             "dtype": np.dtype(TOKEN_DTYPE).name}
    write_atomic(folder / "index.json", (json.dumps(index, indent=1) + "\n").encode())


class TokenShards:
    """The shards of one prepared split; ``len`` is the number of tokens. Shards are memory
    mapped on first use (at most :data:`MAX_OPEN_SHARDS` at a time)."""

    def __init__(self, folder: Path, split: str) -> None:
        self.folder = Path(folder) / split
        index_path = self.folder / "index.json"
        if not index_path.is_file():
            raise DataError(f"{index_path} is missing: the '{split}' token shards were not "
                            f"prepared; run python -m common.data.prepare openwebtext --root "
                            f"{Path(folder).parent}")
        index = json.loads(index_path.read_text())
        self.files: List[str] = [s["file"] for s in index["shards"]]
        self.sizes = np.array([s["tokens"] for s in index["shards"]], dtype=np.int64)
        self.eos_id, self.vocab_size = int(index["eos_id"]), int(index["vocab_size"])
        self._open: "collections.OrderedDict[int, np.memmap]" = collections.OrderedDict()

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def __repr__(self) -> str:
        return f"TokenShards({str(self.folder)!r}, {len(self.files)} shards, {len(self)} tokens)"

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_open": collections.OrderedDict()}  # workers map their own

    def shard(self, i: int) -> np.memmap:
        """Shard ``i`` as a read-only uint16 memory map."""
        if i in self._open:
            self._open.move_to_end(i)
        else:
            if len(self._open) >= MAX_OPEN_SHARDS:
                self._open.popitem(last=False)
            path = self.folder / self.files[i]
            if not path.is_file():
                raise DataError(f"token shard {path} is missing; rerun python -m "
                                f"common.data.prepare openwebtext (finished shards are kept)")
            self._open[i] = np.memmap(path, dtype=TOKEN_DTYPE, mode="r")
        return self._open[i]


class RandomWindows(Dataset):
    """Item ``k``: a LongTensor of ``seq_len`` consecutive tokens of ``shards`` at a uniformly
    random position, drawn from ``np.random.default_rng([seed, k])`` (see the module docstring)."""

    def __init__(self, shards: TokenShards, seq_len: int, seed: int) -> None:
        self.shards, self.seq_len, self.seed = shards, seq_len, seed
        starts = np.maximum(shards.sizes - seq_len + 1, 0)  # windows that fit in each shard
        self._ends = np.cumsum(starts)
        if len(self._ends) == 0 or self._ends[-1] == 0:
            raise DataError(f"{shards!r} has no shard of at least {seq_len} tokens; prepare more "
                            f"text or lower the sequence length")

    def __getitem__(self, k: int) -> torch.Tensor:
        u = int(np.random.default_rng([self.seed, k]).integers(self._ends[-1]))
        shard = int(np.searchsorted(self._ends, u, side="right"))
        start = u - (int(self._ends[shard - 1]) if shard else 0)
        window = self.shards.shard(shard)[start:start + self.seq_len]
        return torch.from_numpy(window.astype(np.int64))


def open_text_shards(folder: Path, split: str) -> TokenShards:
    """The prepared OpenWebText split (``train`` or ``val``) in ``folder``."""
    require_manifest(folder, "openwebtext")
    return TokenShards(folder, split)
