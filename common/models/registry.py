"""Initialise an encoder from ``cfg.init``: nothing (random), a file, timm or the HF hub.

``full`` presets start the students from pretrained unimodal models (the first N blocks of
data2vec 2.0 image / text, or of BEiT v2); ``tiny`` presets start from scratch. ``init`` is

* ``""``: random initialisation;
* a local path: a fairseq data2vec 2.0 ``.pt``, a BEiT v2 ``.pth``, or a ``.safetensors``
  (this project's own encoder weights, or a timm BEiT state dict);
* ``timm:<name>``: timm's published weights of ``name`` (``init_weights`` = the local file);
* ``hf:<org/name>``: the weights file of a Hugging Face hub repository (``init_weights`` =
  the local file), e.g. ``hf:timm/beitv2_base_patch16_224.in1k_ft_in22k_in1k``.

The key layout decides the conversion (:mod:`common.models.converters`); whatever is
missing or does not fit is one :class:`DataError` line saying what to download or set.
"""
from __future__ import annotations

from pathlib import Path

from common.config import EncoderConfig
from common.errors import DataError
from common.models.converters import (EMBED_SETTINGS, Checkpoint, check_settings, convert,
                                      load_converted, load_pretrained, read_checkpoint)
from common.models.encoder import Encoder
from common.models.hub import hf_checkpoint, timm_checkpoint


def open_checkpoint(source: str, weights: str = "", key: str = "encoder") -> Checkpoint:
    """The checkpoint named by an ``init`` string (path, ``timm:``, ``hf:``); ``key`` is the
    config section, for messages."""
    if source.startswith("timm:"):
        return timm_checkpoint(source[len("timm:"):], weights)
    if source.startswith("hf:"):
        return hf_checkpoint(source[len("hf:"):], weights)
    if not Path(source).is_file():
        raise DataError(f"{key} weights {source} do not exist; download the pretrained checkpoint "
                        f"(data2vec 2.0 .pt, BEiT v2 .pth) and set {key}.init=/path/to/it, or "
                        f"{key}.init='' to start from scratch")
    return read_checkpoint(source)


def init_encoder(encoder: Encoder, cfg: EncoderConfig, modality: str) -> Encoder:
    """Load ``cfg.init`` (see the module docstring) into ``encoder``, first ``cfg.depth`` blocks."""
    if not cfg.init:
        return encoder
    ckpt = open_checkpoint(cfg.init, cfg.init_weights, modality)
    return load_pretrained(encoder, ckpt, cfg, modality)


def init_blocks(encoder: Encoder, cfg: EncoderConfig, modality: str, key: str) -> Encoder:
    """Load only the first ``cfg.depth`` blocks (and final norm) of ``cfg.init`` into ``encoder``,
    keeping its embedding: a student that shares another model's (frozen) embedding, e.g. the
    vision-KD student on its BEiT v2 teacher's patch embedding, built from data2vec 2.0 blocks.
    The blocks' architecture must match (one line naming the overrides otherwise)."""
    ckpt = open_checkpoint(cfg.init, cfg.init_weights, key)
    converted = convert(ckpt, modality, cfg, getattr(encoder.embed, "pad_id", 1))
    check_settings(converted, cfg, key, ckpt.source, ignore=EMBED_SETTINGS)
    load_converted(encoder, converted, ckpt.source, key, keep="embed.")
    return encoder
