"""Initialise an encoder from ``cfg.init``: nothing (random), or a checkpoint on disk.

``full`` presets start the students from pretrained unimodal models (the first N blocks of
data2vec 2.0 image / text); ``tiny`` presets start from scratch. A weights file that is
missing is one :class:`DataError` line saying what to download and where to put it.
"""
from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file

from common.config import EncoderConfig
from common.errors import DataError
from common.models.encoder import Encoder

log = logging.getLogger(__name__)


def init_encoder(encoder: Encoder, cfg: EncoderConfig, modality: str) -> Encoder:
    """Load ``cfg.init`` into ``encoder`` (an mmkd ``.safetensors`` of the same architecture)."""
    if not cfg.init:
        return encoder
    path = Path(cfg.init)
    if not path.is_file():
        raise DataError(f"{modality} encoder weights {path} do not exist; download the pretrained "
                        f"{modality} checkpoint (data2vec 2.0 base, fairseq .pt) and set "
                        f"{modality}.init=/path/to/it, or {modality}.init='' to start from scratch")
    if path.suffix != ".safetensors":
        raise DataError(f"{path}: converting third-party {modality} checkpoints (data2vec 2.0 / "
                        f"BEiT v2) is not in this version yet; pass an mmkd .safetensors file or "
                        f"{modality}.init=''")
    state = load_file(str(path))
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise DataError(f"{path} does not fit the {modality} encoder (missing {len(missing)} keys, "
                        f"e.g. {missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]}); "
                        f"check {modality}.depth/dim against the checkpoint")
    log.info("%s encoder initialised from %s", modality, path)
    return encoder
