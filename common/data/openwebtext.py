"""OpenWebText (Gokaslan & Cohen, 2019) -> GPT-2 BPE token shards, as data2vec's text data.

The thesis uses subsets 0-4 for training and subset 5 for validation. The corpus is
distributed as ``openwebtext.tar.xz``, which holds ``urlsf_subsetNN-K_data.xz`` archives: each
one an xz-compressed tar of ``.txt`` documents. Extract the outer tarball into
``<root>/openwebtext/raw`` (or point ``--raw`` at it); the inner archives are read directly.

Each inner archive becomes one shard of :mod:`common.data.text_shards` under
``<root>/openwebtext/<split>/``: documents are decoded as UTF-8 (invalid bytes replaced),
cleaned (NUL bytes removed, empty and whitespace-only lines dropped, remaining lines joined
by newlines), encoded with the configured tokenizer (``gpt2``: GPT-2's BPE from local files,
mapped through data2vec's ``dict.txt`` when it lies beside them) and closed by EOS. A shard
already on disk is skipped, so an interrupted run resumes per input archive.
"""
from __future__ import annotations

import logging
import re
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from common.config import DataConfig
from common.data.manifest import finished, require_manifest, write_manifest
from common.data.text_shards import (TOKEN_DTYPE, read_shard_meta, write_shard,
                                     write_shard_index)
from common.data.tokenizer import Tokenizer, build_tokenizer
from common.errors import DataError

log = logging.getLogger(__name__)

ARCHIVE = re.compile(r"urlsf_subset(\d+)-(\d+)_data\.xz$")


def clean_document(text: str) -> Tuple[str, int]:
    """(cleaned text, number of lines dropped): NULs removed, empty lines dropped."""
    lines = text.replace("\x00", "").splitlines()
    kept = [line for line in lines if line.strip()]
    return "\n".join(kept), len(lines) - len(kept)


def find_archives(raw: Path, subsets: Sequence[int]) -> List[Path]:
    """The inner archives of ``subsets`` under ``raw`` (searched recursively), in subset then
    part order."""
    found = []
    for path in raw.rglob("urlsf_subset*_data.xz"):
        match = ARCHIVE.search(path.name)
        if match and int(match.group(1)) in subsets:
            found.append(((int(match.group(1)), int(match.group(2))), path))
    return [path for _, path in sorted(found)]


def encode_archive(path: Path, tokenizer: Tokenizer) -> Tuple[np.ndarray, Dict[str, int]]:
    """All documents of one inner archive as one id array (EOS after each) and its counts."""
    ids: List[int] = []
    counts = {"documents": 0, "dropped_lines": 0, "nul_bytes": 0, "empty_documents": 0}
    try:
        with tarfile.open(path, "r:xz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
                counts["nul_bytes"] += raw.count("\x00")
                text, dropped = clean_document(raw)
                counts["dropped_lines"] += dropped
                if not text:
                    counts["empty_documents"] += 1
                    continue
                ids.extend(tokenizer.encode(text))
                ids.append(tokenizer.eos_id)
                counts["documents"] += 1
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"cannot read OpenWebText archive {path} ({type(err).__name__}: {err}); "
                        f"extract openwebtext.tar.xz again") from None
    return np.asarray(ids, dtype=np.int64), counts


def prepare_openwebtext(root: Path, raw: Optional[Path] = None,
                        train_subsets: Sequence[int] = (0, 1, 2, 3, 4),
                        val_subsets: Sequence[int] = (5,), tokenizer: str = "gpt2",
                        force: bool = False) -> Dict:
    """Binarise the ``train`` and ``val`` subsets into ``root/openwebtext``; returns the
    manifest."""
    folder = Path(root) / "openwebtext"
    raw = Path(raw) if raw else folder / "raw"
    settings = {"train_subsets": list(train_subsets), "val_subsets": list(val_subsets),
                "tokenizer": tokenizer}
    if not force and finished(folder, "openwebtext", settings):
        log.info("openwebtext: already prepared in %s (use --force to redo)", folder)
        return require_manifest(folder, "openwebtext")
    tok = build_tokenizer(DataConfig(tokenizer=tokenizer, root=str(root)))
    if tok.vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise DataError(f"tokenizer {tokenizer!r} has {tok.vocab_size} ids, more than uint16 "
                        f"shards hold; use GPT-2's BPE (50,257 ids)")
    splits = {}
    for split, subsets in (("train", train_subsets), ("val", val_subsets)):
        archives = find_archives(raw, subsets)
        if not archives:
            raise DataError(f"no urlsf_subset{subsets[0]:02d}-*_data.xz archives under {raw}; "
                            f"extract openwebtext.tar.xz there or pass --raw")
        out = folder / split
        shards = []
        totals = {"documents": 0, "empty_documents": 0, "dropped_lines": 0, "nul_bytes": 0}
        for path in tqdm(archives, desc=f"openwebtext {split}", unit="archive"):
            name = path.name[:-len(".xz")]
            meta = None if force else read_shard_meta(out, name)
            if meta is None:
                ids, counts = encode_archive(path, tok)
                meta = write_shard(out, name, ids, counts)
            shards.append(meta)
            for key in totals:
                totals[key] += meta[key]
        write_shard_index(out, shards, tok.eos_id, tok.vocab_size)
        tokens = sum(s["tokens"] for s in shards)
        splits[split] = {"count": totals["documents"], "tokens": tokens, "shards": len(shards),
                         "skipped": totals["empty_documents"],
                         "skipped_lines": totals["dropped_lines"],
                         "nul_bytes": totals["nul_bytes"]}
        log.info("openwebtext %s: %d documents, %d tokens in %d shards (dropped %d empty lines, "
                 "%d NUL bytes)", split, totals["documents"], tokens, len(shards),
                 totals["dropped_lines"], totals["nul_bytes"])
    return write_manifest(folder, "openwebtext", splits, settings)
