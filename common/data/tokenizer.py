"""Caption tokenizers: a BPE trained on the synthetic captions, or GPT-2's BPE from local files.

``data.tokenizer`` selects one:

- ``synthetic-bpe`` (tiny presets): byte-level BPE trained with ``tokenizers`` on
  :meth:`SyntheticWorld.caption_corpus` (or a given corpus), ``data.vocab_size`` tokens at
  most (fewer if the corpus runs out of merges), cached as JSON under
  ``cache_dir("tokenizers")`` keyed by a hash of the corpus settings and vocab size.
  Specials follow fairseq: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3.
- ``gpt2`` (full presets): GPT-2 byte-level BPE, offline, from ``vocab.json`` + ``merges.txt``
  (fairseq names them ``encoder.json`` + ``vocab.bpe``) or ``tokenizer.json``, found in
  ``<data.root>/gpt2``, ``<data.root>`` or ``cache_dir("tokenizers", "gpt2")``. If a fairseq
  ``dict.txt`` lies beside them (data2vec's dictionary), ids are mapped through it as fairseq
  does, so pretrained data2vec text embeddings line up: specials 0-3, then dict.txt order,
  then ``<mask>`` (50265 entries for data2vec/RoBERTa).
- a path to a ``tokenizer.json`` or a folder of the files above.

Sequences are ``BOS + tokens + EOS`` (the thesis' format), truncated to ``max_len`` keeping EOS.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, trainers

from common.config import DataConfig
from common.data.synthetic import GRAMMAR_VERSION, SyntheticWorld
from common.errors import DataError
from common.paths import cache_dir

log = logging.getLogger(__name__)

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
CORPUS_SCENES = 4000  # training scenes whose captions train the synthetic BPE


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the special ids and an optional id map (GPT-2 id ->
    fairseq dictionary id); produces padded id batches with a padding mask.
    ``prefix_space``: the pre-tokenizer adds a space before the text (so the first word gets
    the same tokens as any other); :meth:`decode` removes it again."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, bos_id: int, eos_id: int, pad_id: int,
                 id_map: Optional[np.ndarray] = None, vocab_size: Optional[int] = None,
                 prefix_space: bool = False) -> None:
        self.tokenizer, self.prefix_space = tokenizer, prefix_space
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.id_map = id_map
        self.vocab_size = vocab_size or tokenizer.get_vocab_size()
        self._inverse = None
        if id_map is not None:
            self._inverse = {int(v): k for k, v in enumerate(id_map) if v >= len(FAIRSEQ_SPECIALS)}

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` without BOS/EOS."""
        return self._map(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str], max_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``ids`` LongTensor [B, L] and ``padding_mask`` BoolTensor [B, L] (True at pads),
        with L the longest ``BOS + tokens + EOS`` in the batch, at most ``max_len``.

        An empty or whitespace-only text raises :class:`DataError`: it would otherwise train
        as a valid (BOS, EOS) caption and hide broken annotations.
        """
        if max_len < 2:
            raise ValueError(f"max_len must leave room for BOS and EOS, got {max_len}")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"caption {i} of the batch is empty ({text!r}); fix or drop it "
                                f"in the dataset's annotations")
        encoded = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        rows = [[self.bos_id] + self._map(e.ids)[:max_len - 2] + [self.eos_id] for e in encoded]
        length = max(len(row) for row in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.ones((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = False
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, skipping BOS/EOS/pads (and other specials)."""
        ids = [int(i) for i in ids if int(i) not in (self.bos_id, self.eos_id, self.pad_id)]
        if self._inverse is not None:
            ids = [self._inverse[i] for i in ids if i in self._inverse]
        text = self.tokenizer.decode(ids)
        return text[1:] if self.prefix_space and text.startswith(" ") else text

    def _map(self, ids: List[int]) -> List[int]:
        if self.id_map is None:
            return list(ids)
        return self.id_map[ids].tolist()


def build_tokenizer(cfg: DataConfig, corpus: Optional[Iterable[str]] = None) -> Tokenizer:
    """The tokenizer named by ``cfg.tokenizer`` (see the module docstring)."""
    if cfg.tokenizer == "synthetic-bpe":
        return _synthetic_bpe(cfg.vocab_size, corpus)
    if cfg.tokenizer == "gpt2":
        candidates = ([Path(cfg.root) / "gpt2", Path(cfg.root)] if cfg.root else [])
        candidates.append(cache_dir("tokenizers", "gpt2"))
        for folder in candidates:
            if _find_files(folder):
                return _load_gpt2(folder)
        raise DataError(
            f"GPT-2 BPE files not found: looked for vocab.json+merges.txt (or encoder.json+"
            f"vocab.bpe, or tokenizer.json) in {', '.join(str(c) for c in candidates)}; copy them "
            f"there from a machine with internet (e.g. the 'gpt2' model files on the Hugging Face "
            f"hub, plus fairseq's dict.txt for data2vec) or set data.tokenizer=/path/to/folder")
    path = Path(cfg.tokenizer)
    if path.exists():
        return _load_gpt2(path)
    raise DataError(f"data.tokenizer={cfg.tokenizer!r} is neither 'synthetic-bpe', 'gpt2' nor an "
                    f"existing tokenizer.json/folder; fix the path or pick one of the two names")


# ---------------------------------------------------------------------------- synthetic BPE
def _synthetic_bpe(vocab_size: int, corpus: Optional[Iterable[str]]) -> Tokenizer:
    if corpus is None:
        key = {"corpus": "synthetic", "grammar": GRAMMAR_VERSION, "seed": 0,
               "scenes": CORPUS_SCENES}
    else:
        corpus = list(corpus)
        key = {"corpus": hashlib.sha256("\n".join(corpus).encode()).hexdigest()}
    key.update(kind="byte-level-bpe", vocab_size=vocab_size)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir("tokenizers") / f"synthetic-bpe-{vocab_size}-{digest}.json"
    if path.is_file():
        log.info("tokenizer: reusing %s", path)
        tok = tokenizers.Tokenizer.from_file(str(path))
    else:
        texts = corpus if corpus is not None else SyntheticWorld().caption_corpus(CORPUS_SCENES)
        tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(FAIRSEQ_SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tok.save(str(tmp))
        os.replace(tmp, path)  # atomic: concurrent builders never read a half-written file
        log.info("tokenizer: trained byte-level BPE (%d tokens) -> %s", tok.get_vocab_size(), path)
    ids = [tok.token_to_id(t) for t in FAIRSEQ_SPECIALS]
    return Tokenizer(tok, bos_id=ids[0], eos_id=ids[2], pad_id=ids[1], prefix_space=True)


# ---------------------------------------------------------------------------- GPT-2 files
_FILE_SETS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"), ("tokenizer.json",))


def _find_files(folder: Path) -> Optional[Tuple[Path, ...]]:
    for names in _FILE_SETS:
        if all((folder / n).is_file() for n in names):
            return tuple(folder / n for n in names)
    return None


def _load_gpt2(path: Path) -> Tokenizer:
    """GPT-2 BPE from a tokenizer.json file or a folder (see the module docstring)."""
    files = (path,) if path.is_file() else _find_files(path)
    if files is None:
        raise DataError(f"{path} has none of vocab.json+merges.txt, encoder.json+vocab.bpe or "
                        f"tokenizer.json; copy the GPT-2 BPE files there")
    try:
        if len(files) == 1:
            tok = tokenizers.Tokenizer.from_file(str(files[0]))
        else:
            tok = tokenizers.Tokenizer(models.BPE.from_file(str(files[0]), str(files[1])))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
    except Exception as err:  # tokenizers raises plain Exception on malformed files
        raise DataError(f"cannot load the BPE files {[str(f) for f in files]} ({err}); "
                        f"re-download them") from None
    folder = path.parent if path.is_file() else path
    if (folder / "dict.txt").is_file():
        return _with_fairseq_dict(tok, folder / "dict.txt")
    vocab = tok.get_vocab()
    bos = next((vocab[t] for t in ("<s>", "<|endoftext|>") if t in vocab), None)
    eos = next((vocab[t] for t in ("</s>", "<|endoftext|>") if t in vocab), None)
    if bos is None or eos is None:
        raise DataError(f"{path}: no <s>/</s> or <|endoftext|> token in the vocabulary; "
                        f"this is not a GPT-2 style BPE")
    return Tokenizer(tok, bos_id=bos, eos_id=eos, pad_id=vocab.get("<pad>", eos))


def _with_fairseq_dict(tok: tokenizers.Tokenizer, dict_path: Path) -> Tokenizer:
    """fairseq's GPT-2 dictionary: line k of dict.txt ("<gpt2 id> <count>") is id 4 + k;
    ids missing from it become <unk>; ``<mask>`` is appended as fairseq's RoBERTa does."""
    id_map = np.full(tok.get_vocab_size(), 3, dtype=np.int64)
    lines = dict_path.read_text(encoding="utf-8").splitlines()
    for k, line in enumerate(lines):
        symbol = line.split(" ", 1)[0]
        if symbol.isdigit() and int(symbol) < len(id_map):
            id_map[int(symbol)] = len(FAIRSEQ_SPECIALS) + k
    return Tokenizer(tok, bos_id=0, eos_id=2, pad_id=1, id_map=id_map,
                     vocab_size=len(FAIRSEQ_SPECIALS) + len(lines) + 1)
