"""Where published weights come from: timm and the Hugging Face hub, usable offline.

A machine without internet can still run ``full`` presets when the weights are on disk:
either as a file named in the config (``init_weights`` / ``teacher.weights``) or in the
Hugging Face cache (``HF_HUB_OFFLINE=1``). The cache is always tried first, so a cached
model never touches the network; anything that cannot be found ends in one
:class:`DataError` line saying which file to fetch and where to point the config.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

import timm
from torch import Tensor, nn

from common.errors import DataError
from common.models.converters import Checkpoint, read_checkpoint
from common.models.encoder import EncoderOutput

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _cached_then_online(load: Callable[[bool], Any], what: str, fix: str) -> Any:
    """``load(local_files_only)``: from the cache first, then (unless offline) the network."""
    try:
        return load(True)
    except Exception as err:
        if _offline():
            raise DataError(f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                            f"set ({_first_line(err)}); {fix}") from None
    try:
        return load(False)
    except Exception as err:
        raise DataError(f"could not load {what} ({_first_line(err)}); {fix}") from None


def timm_checkpoint(name: str, weights: str = "") -> Checkpoint:
    """The state dict of timm model ``name``: from the local file ``weights``, else downloaded."""
    if weights:
        return read_checkpoint(weights)
    try:  # timm reads the Hugging Face cache itself (offline too, with HF_HUB_OFFLINE=1)
        model = timm.create_model(name, pretrained=True)
    except Exception as err:
        raise DataError(f"could not load timm:{name} ({_first_line(err)}); on a machine without "
                        f"internet download its weights once and set the local file "
                        f"(init_weights=/path/to/model.safetensors)") from None
    return Checkpoint(model.state_dict(), f"timm:{name}")


def hf_checkpoint(repo: str, weights: str = "") -> Checkpoint:
    """The weights file of hub repository ``repo`` (a timm, fairseq or mmkd state dict)."""
    if weights:
        return read_checkpoint(weights)
    from huggingface_hub import hf_hub_download

    fix = (f"download it once (`hf download {repo}`) on a machine with internet and copy the "
           f"Hugging Face cache, or set init_weights=/path/to/the/weights/file")

    def load(local: bool) -> Path:
        errors = []
        for filename in WEIGHT_FILES:
            try:
                return Path(hf_hub_download(repo, filename, local_files_only=local))
            except Exception as err:  # try the next usual file name
                errors.append(err)
        raise errors[0]

    return read_checkpoint(_cached_then_online(load, f"hf:{repo}", fix))


class HFVisionEncoder(nn.Module):
    """A ``transformers`` vision model behind the :class:`Encoder` interface (images ->
    :class:`EncoderOutput` with ``layers``), so chapters treat hub teachers like their own."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, padding_mask: Optional[Tensor] = None, *,
                return_layers: bool = False) -> EncoderOutput:
        out = self.model(pixel_values=images, output_hidden_states=return_layers)
        layers = list(out.hidden_states[1:]) if return_layers else None  # without the embeddings
        return EncoderOutput(x=out.last_hidden_state, layers=layers)


def hf_vision_model(repo: str, local_dir: str = "") -> HFVisionEncoder:
    """``transformers.AutoModel`` of ``repo`` (or of the saved folder ``local_dir``), eval mode."""
    from transformers import AutoModel

    if local_dir and not Path(local_dir).is_dir():
        raise DataError(f"teacher.weights={local_dir} is not a folder; save hf:{repo} there with "
                        f"save_pretrained (or `hf download {repo} --local-dir {local_dir}`)")
    source = local_dir or repo
    fix = (f"download it once (`hf download {repo}`) and copy the Hugging Face cache, or pass "
           f"teacher.weights=/path/to/a/saved/model/folder")
    model = _cached_then_online(lambda local: AutoModel.from_pretrained(source, local_files_only=local),
                                f"hf:{repo}", fix)
    log.info("teacher hf:%s loaded from %s", repo, local_dir or "the Hugging Face hub/cache")
    return HFVisionEncoder(model.eval())
