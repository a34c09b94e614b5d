"""Third-party checkpoints -> :class:`~common.models.encoder.Encoder` weights, first N blocks.

``full`` presets start students (and build teachers) from published self-supervised models.
Rather than vendoring fairseq or unilm, their state dicts are renamed into this project's
modules, which were given the few switches those models need (all off by default):

* **data2vec 2.0** (fairseq ``data2vec_multi``; ``.pt`` = ``{"model": state, "cfg": ...}``).
  Per modality ``modality_encoders.<IMAGE|TEXT>.`` holds the local encoder (patch conv /
  token + learned position embeddings + LayerNorm), the CLS ``extra_tokens``, the fixed
  sin-cos ``positions``, an optional ``alibi_scale`` (only when the model was trained with
  ALiBi: ``alibi`` + ``alibi_scale`` switches) and ``context_encoder.blocks`` ("prenet"
  blocks that run before the shared ``blocks.N``); block ``k`` of ours is prenet block ``k``,
  then shared block ``k - prenet``. Blocks are post-norm ``AltBlock``s with ``Block``'s names.
  Decoders, the EMA teacher (``_ema``/``ema.``) and other modalities are dropped.
  fairseq's text positions start at ``pad + 1``; that offset is sliced away.
* **BEiT v2** (unilm ``.pth`` = ``{"model": state}``, or timm's ``beitv2_*`` state dict).
  Pre-norm blocks with layer scale (``gamma_1/2`` -> ``ls1/ls2.gamma``), a relative position
  bias per block (or one shared ``rel_pos_bias`` copied into every block), and
  ``q_bias``/``v_bias`` folded into one qkv bias (a key bias is softmax-invariant, so zero
  is exact). An absolute ``pos_embed`` (BEiT v1 style) is split into the CLS token (its
  position is a constant) and fixed patch positions. Heads and pretraining-only modules
  (``lm_head``, ``cls_pt_layers``, ``mask_token``, ``fc_norm``, ``head``) are dropped.

Each conversion also returns the encoder settings the checkpoint implies (dim, heads,
norms, ALiBi, ...): :func:`check_settings` turns a mismatch with the chapter's config into
one line naming the overrides to set, and :func:`encoder_from_checkpoint` builds a teacher
from them directly.
"""
from __future__ import annotations

import logging
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import Tensor

from common.config import EncoderConfig, ImageEncoderConfig, TextEncoderConfig
from common.errors import DataError
from common.models.encoder import Encoder, build_image_encoder, build_text_encoder
from common.safe_pickle import checkpoint_pickle

log = logging.getLogger(__name__)

DATA2VEC2, BEIT, MMKD = "data2vec2", "beit", "mmkd"
FAIRSEQ_PAD = 1  # fairseq dictionaries: <s>=0, <pad>=1, </s>=2, <unk>=3
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
               "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
               "mlp.fc2.weight", "mlp.fc2.bias")


@dataclass
class Checkpoint:
    """A third-party state dict (tensors only) and, for fairseq, its model config."""

    state: Dict[str, Tensor]
    source: str  # where it came from, for messages
    model_cfg: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Converted:
    """Weights under :class:`Encoder` names plus the encoder settings they need."""

    state: Dict[str, Tensor]
    settings: Dict[str, Any]  # EncoderConfig field -> value the checkpoint implies
    available_blocks: int
    fmt: str


# ----------------------------------------------------------------------------- reading files
def _unpickle(path: Path) -> Any:
    """``torch.load`` a third-party file: with ``weights_only=True`` if it holds only tensors
    and containers, else (fairseq configs, argparse namespaces, enums) through
    :mod:`common.safe_pickle`, which resolves only plain-data globals: nothing in the file runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as err:
        raise DataError(f"{path} is not a readable torch checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); download it again") from None
    log.info("%s holds non-tensor objects (e.g. a fairseq config): reading it with a restricted "
             "unpickler (plain data only, no code from the file runs)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=checkpoint_pickle)
    except Exception as err:
        raise DataError(f"could not unpickle {path} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); re-save its weights "
                        f"alone, e.g. torch.save({{'model': ckpt['model']}}, 'weights.pt')") from None


def _plain_cfg(cfg: Any) -> Dict[str, Any]:
    """The fairseq ``cfg["model"]`` as a plain dict ({} when absent or unreadable)."""
    try:
        if OmegaConf.is_config(cfg):
            cfg = OmegaConf.to_container(cfg, resolve=False)
        model = cfg.get("model", {}) if isinstance(cfg, Mapping) else {}
        return dict(model) if isinstance(model, Mapping) else {}
    except Exception as err:  # a config we cannot read only costs the consistency checks
        log.warning("ignoring the checkpoint's config (%s: %s)", type(err).__name__, err)
        return {}


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file into a :class:`Checkpoint`.

    Containers are unwrapped as the releases store them (``model``, ``module``,
    ``state_dict``); non-tensor entries (fairseq's ``_ema`` dict) are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist; download it (see the chapter's "
                        f"README) or fix the path")
    if path.suffix == ".safetensors":
        return Checkpoint(load_file(str(path)), str(path))
    obj = _unpickle(path)
    cfg: Dict[str, Any] = {}
    if isinstance(obj, Mapping):
        cfg = _plain_cfg(obj.get("cfg"))
        for key in ("model", "module", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a state dict; pass a checkpoint "
                        f"file of data2vec 2.0 (.pt), BEiT v2 (.pth) or safetensors weights")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    return Checkpoint(state, str(path), cfg)


def detect_format(state: Mapping[str, Tensor], source: str = "checkpoint") -> str:
    """``data2vec2``, ``beit`` or ``mmkd`` (this project's own encoder keys), from key names."""
    if any(k.startswith("modality_encoders.") for k in state):
        return DATA2VEC2
    if any(k.startswith("embed.") for k in state) and any(k.startswith("blocks.") for k in state):
        return MMKD
    if "patch_embed.proj.weight" in state and "blocks.0.attn.qkv.weight" in state:
        beit_only = ("attn.q_bias", "attn.relative_position_bias_table", "gamma_1")
        if any(k.startswith("rel_pos_bias.") or k.endswith(beit_only) for k in state):
            return BEIT
        raise DataError(f"{source} looks like a plain timm ViT (no BEiT relative position bias, "
                        f"layer scale or q/v biases); only data2vec 2.0 and BEiT v2 checkpoints "
                        f"convert into mmkd encoders (use a timm: teacher for other ViTs)")
    raise DataError(f"{source}: unknown key layout (e.g. {sorted(state)[:3]}); expected a "
                    f"data2vec 2.0 (fairseq), BEiT v2 or mmkd checkpoint")


# ----------------------------------------------------------------------------- data2vec 2.0
def _block_ids(state: Mapping[str, Tensor], prefix: str) -> List[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})


def _take_block(state: Mapping[str, Tensor], src: str, dst: str, used: set) -> Dict[str, Tensor]:
    out = {}
    for key in _BLOCK_KEYS:
        if src + key in state:
            out[dst + key] = state[src + key]
            used.add(src + key)
    return out


def _alibi_scales(scale: Tensor, blocks: int, heads: int) -> List[Tensor]:
    """fairseq's ``alibi_scale`` ``[1 | layers, 1, 1 | H, 1, 1]`` -> one ``[H]`` vector per block."""
    scale = scale.reshape(scale.shape[0], -1)  # L x (1|H)
    rows = [scale[k if scale.shape[0] > 1 else 0] for k in range(blocks)]
    return [row.expand(heads).clone().float() for row in rows]


def convert_data2vec2(ckpt: Checkpoint, modality: str, depth: int, *, heads: int,
                      pad_id: int = FAIRSEQ_PAD, max_len: int = 0) -> Converted:
    """The first ``depth`` blocks (prenet, then shared) of a data2vec 2.0 ``modality`` model.

    ``heads`` sizes the ALiBi scales; ``pad_id`` / ``max_len`` (text) pick the position rows.
    """
    state, src = ckpt.state, ckpt.source
    mod = {"image": "IMAGE", "text": "TEXT"}[modality]
    p = f"modality_encoders.{mod}."
    if not any(k.startswith(p) for k in state):
        present = sorted({k.split(".")[1] for k in state if k.startswith("modality_encoders.")})
        raise DataError(f"{src} has no {mod} encoder (it has {present}); pass the data2vec 2.0 "
                        f"{modality} checkpoint")
    cfg = ckpt.model_cfg
    if cfg.get("layer_norm_first") or (modality == "image" and f"{p}context_encoder.norm.weight" not in state):
        raise DataError(f"{src} is a pre-norm data2vec 2.0 model; only the released post-norm ones "
                        f"are supported")
    prenet, shared = _block_ids(state, f"{p}context_encoder.blocks."), _block_ids(state, "blocks.")
    available = len(prenet) + len(shared)
    if depth > available:
        raise DataError(f"{src} has {available} blocks but {modality}.depth={depth}; "
                        f"set {modality}.depth <= {available}")
    used: set = set()
    out: Dict[str, Tensor] = {}
    for k in range(depth):
        block_src = f"{p}context_encoder.blocks.{k}." if k < len(prenet) else f"blocks.{k - len(prenet)}."
        out.update(_take_block(state, block_src, f"blocks.{k}.", used))

    def take(key: str, dst: str) -> Optional[Tensor]:
        if p + key not in state:
            return None
        used.add(p + key)
        out[dst] = state[p + key]
        return out[dst]

    first = f"{p}context_encoder.blocks.0." if prenet else "blocks.0."
    dim, hidden = state[first + "attn.proj.weight"].shape[0], state[first + "mlp.fc1.weight"].shape[0]
    settings: Dict[str, Any] = {"dim": dim, "mlp_ratio": hidden / dim, "layer_norm_first": False,
                                "alibi": f"{p}alibi_scale" in state,
                                "alibi_scale": f"{p}alibi_scale" in state}
    if "num_heads" in cfg:
        settings["heads"] = int(cfg["num_heads"])
    if "norm_eps" in cfg:
        settings["norm_eps"] = float(cfg["norm_eps"])
    if f"{p}alibi_scale" in state:
        used.add(f"{p}alibi_scale")
        scale = state[f"{p}alibi_scale"]
        scale = scale[None] if scale.dim() == 4 else scale  # as fairseq's upgrade_state_dict_named
        if scale.shape[2] > 1:  # one scale per head: the head count (checked against the config)
            settings["heads"] = heads = scale.shape[2]
        for k, row in enumerate(_alibi_scales(scale, depth, heads)):
            out[f"blocks.{k}.alibi_scale"] = row

    if modality == "image":
        proj = take("local_encoder.proj.weight", "embed.patch_embed.proj.weight")
        take("local_encoder.proj.bias", "embed.patch_embed.proj.bias")
        take("context_encoder.norm.weight", "embed.norm.weight")
        take("context_encoder.norm.bias", "embed.norm.bias")
        cls = take("extra_tokens", "embed.cls_token")
        pos = take("fixed_positional_encoder.positions", "embed.pos_embed")
        if proj is None or cls is None or cls.shape[1] != 1:
            raise DataError(f"{src}: expected a patch embedding and exactly one extra (CLS) token "
                            f"under {p}; this image model layout is not supported")
        grid = math.isqrt(pos.shape[1]) if pos is not None else 0
        settings.update(patch_size=proj.shape[-1], in_chans=proj.shape[1], abs_pos=pos is not None)
        if grid:
            settings["image_size"] = grid * proj.shape[-1]
    else:
        if f"{p}context_encoder.norm.weight" in state:
            raise DataError(f"{src}: text prenet blocks with their own LayerNorm are not supported")
        modality_cfg = cfg.get("modalities", {}).get("text", {}) if isinstance(cfg.get("modalities"), Mapping) else {}
        if modality_cfg.get("no_scale_embedding") is False:
            raise DataError(f"{src}: scaled token embeddings (no_scale_embedding=False) are not supported")
        tokens = take("local_encoder.embed_tokens.weight", "embed.token_embed.weight")
        take("local_encoder.layernorm_embedding.weight", "embed.norm.weight")
        take("local_encoder.layernorm_embedding.bias", "embed.norm.bias")
        positions = state.get(f"{p}local_encoder.embed_positions.weight")
        if tokens is None or positions is None or "embed.norm.weight" not in out:
            raise DataError(f"{src}: expected token + learned position embeddings and "
                            f"layernorm_embedding under {p}local_encoder; not supported otherwise")
        used.add(f"{p}local_encoder.embed_positions.weight")
        if pad_id != FAIRSEQ_PAD:  # positions and token rows are indexed by fairseq's dictionary
            raise DataError(f"{src} is a data2vec 2.0 (fairseq) text model, indexed by fairseq's "
                            f"GPT-2 dictionary, but the tokenizer has pad id {pad_id} (no dict.txt); "
                            f"put fairseq's dict.txt beside the GPT-2 vocab.json/merges.txt")
        usable = positions.shape[0] - (pad_id + 1)
        if max_len > usable:
            raise DataError(f"{src} has {usable} text positions but text.max_len={max_len}; "
                            f"set text.max_len <= {usable}")
        out["embed.pos_embed"] = positions[pad_id + 1: pad_id + 1 + max_len][None]  # 1 x L x D
        settings.update(vocab_size=tokens.shape[0], learned_pos=True)

    def backbone(k: str) -> bool:  # keys of the modules this conversion keeps
        if m := re.match(re.escape(p) + r"context_encoder\.blocks\.(\d+)\.", k):
            return int(m.group(1)) < depth
        if m := re.match(r"blocks\.(\d+)\.", k):
            return len(prenet) + int(m.group(1)) < depth
        return k.startswith(p) and not k.startswith(f"{p}decoder.")

    _check_leftovers(state, used, src, backbone)
    return Converted(out, settings, available, DATA2VEC2)


# ----------------------------------------------------------------------------- BEiT v2
def convert_beit(ckpt: Checkpoint, depth: int) -> Converted:
    """The first ``depth`` blocks of a BEiT (v2) model, unilm or timm key names."""
    state, src = ckpt.state, ckpt.source
    blocks = _block_ids(state, "blocks.")
    if depth > len(blocks):
        raise DataError(f"{src} has {len(blocks)} blocks but depth={depth}; set depth <= {len(blocks)}")
    used: set = set()
    out: Dict[str, Tensor] = {}
    shared_table = state.get("rel_pos_bias.relative_position_bias_table")
    used.update(k for k in state if k.startswith("rel_pos_bias."))
    for k in range(depth):
        b = f"blocks.{k}."
        out.update(_take_block(state, b, b, used))
        q, v = state.get(b + "attn.q_bias"), state.get(b + "attn.v_bias")
        if q is not None and v is not None:
            out[b + "attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])  # 3D
            used.update({b + "attn.q_bias", b + "attn.v_bias"})
        elif b + "attn.qkv.bias" not in out:  # no qkv bias at all: a zero bias is the same map
            out[b + "attn.qkv.bias"] = torch.zeros(state[b + "attn.qkv.weight"].shape[0])
        for gamma, ls in (("gamma_1", "ls1.gamma"), ("gamma_2", "ls2.gamma")):
            if b + gamma in state:
                out[b + ls] = state[b + gamma]
                used.add(b + gamma)
        table = state.get(b + "attn.relative_position_bias_table")
        if table is not None:
            used.add(b + "attn.relative_position_bias_table")
        if shared_table is not None:  # timm adds the shared bias to each block's own
            table = shared_table if table is None else table + shared_table
        if table is not None:
            out[b + "attn.rel_pos.relative_position_bias_table"] = table
        used.add(b + "attn.relative_position_index")

    proj = state["patch_embed.proj.weight"]
    out["embed.patch_embed.proj.weight"] = proj
    out["embed.patch_embed.proj.bias"] = state["patch_embed.proj.bias"]
    cls, pos = state["cls_token"], state.get("pos_embed")
    used.update({"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed"})
    if pos is not None:  # BEiT adds a position to the CLS token too: fold it into the token
        out["embed.cls_token"] = cls + pos[:, :1]
        out["embed.pos_embed"] = pos[:, 1:]  # 1 x N x D
    else:
        out["embed.cls_token"] = cls
    dim = proj.shape[0]
    final_norm = "norm.weight" in state  # timm's avg-pool variants: fc_norm after pooling only
    if final_norm:
        out["norm.weight"], out["norm.bias"] = state["norm.weight"], state["norm.bias"]
        used.update({"norm.weight", "norm.bias"})

    table = state.get("blocks.0.attn.relative_position_bias_table", shared_table)
    settings: Dict[str, Any] = {
        "dim": dim, "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        "layer_norm_first": True, "alibi": False, "alibi_scale": False,
        "layer_scale": 0.1 if "blocks.0.gamma_1" in state else 0.0,
        "rel_pos_bias": table is not None, "abs_pos": pos is not None, "norm_eps": 1e-6,
        "final_norm": final_norm,
        "patch_size": proj.shape[-1], "in_chans": proj.shape[1],
    }
    if table is not None:
        settings["heads"] = table.shape[1]
        side = (math.isqrt(table.shape[0] - 3) + 1) // 2  # (2W-1)^2 + 3 entries for a W x W grid
        settings["image_size"] = side * proj.shape[-1]
    elif pos is not None:
        settings["image_size"] = math.isqrt(pos.shape[1] - 1) * proj.shape[-1]

    def backbone(k: str) -> bool:  # keys of the modules this conversion keeps
        if m := re.match(r"blocks\.(\d+)\.", k):
            return int(m.group(1)) < depth
        return k.startswith("patch_embed.")

    _check_leftovers(state, used, src, backbone)
    return Converted(out, settings, len(blocks), BEIT)


def _check_leftovers(state: Mapping[str, Tensor], used: set, source: str,
                     backbone: Callable[[str], bool]) -> None:
    """Backbone keys that were not converted are an error (a layout this code does not know);
    the rest (heads, decoders, EMA copies, other modalities, unused blocks) is dropped."""
    unknown = sorted(k for k in state if k not in used and backbone(k))
    if unknown:
        raise DataError(f"{source}: {len(unknown)} backbone keys have no place in an mmkd encoder "
                        f"(e.g. {unknown[:3]}); this checkpoint variant is not supported")
    dropped = sum(1 for k in state if k not in used)
    if dropped:
        log.info("%s: dropped %d keys outside the first blocks (heads, decoders, EMA, other "
                 "modalities)", source, dropped)


# ----------------------------------------------------------------------------- encoders
def convert(ckpt: Checkpoint, modality: str, cfg: EncoderConfig, pad_id: int = FAIRSEQ_PAD) -> Converted:
    """Dispatch on the key layout; an mmkd file passes through unchanged."""
    fmt = detect_format(ckpt.state, ckpt.source)
    if fmt == DATA2VEC2:
        return convert_data2vec2(ckpt, modality, cfg.depth, heads=cfg.heads, pad_id=pad_id,
                                 max_len=getattr(cfg, "max_len", 0))
    if fmt == BEIT:
        if modality != "image":
            raise DataError(f"{ckpt.source} is a BEiT (image) checkpoint, not a {modality} one")
        return convert_beit(ckpt, cfg.depth)
    return Converted(dict(ckpt.state), {}, len(_block_ids(ckpt.state, "blocks.")), MMKD)


# the settings that describe a checkpoint's embedding, not its blocks
EMBED_SETTINGS = frozenset({"abs_pos", "image_size", "patch_size", "in_chans", "vocab_size",
                            "learned_pos"})


def check_settings(converted: Converted, cfg: EncoderConfig, key: str, source: str,
                   ignore: frozenset = frozenset()) -> None:
    """One :class:`DataError` naming every override the checkpoint needs (``key``: config path;
    settings in ``ignore`` are not compared)."""
    wrong = []
    for name, want in converted.settings.items():
        if name in ignore or name == "vocab_size" or not hasattr(cfg, name):  # vocab: the tokenizer's
            continue
        have = getattr(cfg, name)
        if name == "layer_scale":
            same = (have > 0) == (want > 0)
        elif isinstance(want, float):
            same = math.isclose(float(have), want, rel_tol=1e-6)
        else:
            same = have == want
        if not same:
            wrong.append(f"{key}.{name}={str(want).lower() if isinstance(want, bool) else want}")
    if wrong:
        raise DataError(f"{source} needs {' '.join(wrong)} (the checkpoint's architecture); "
                        f"set them in the preset or on the command line")


def load_converted(encoder: Encoder, converted: Converted, source: str, key: str,
                   keep: str = "") -> Encoder:
    """Copy converted weights into ``encoder``: every key, every shape, or one clear error.
    Weights under the ``keep`` prefix (e.g. ``embed.``) are neither loaded nor required."""
    own = encoder.state_dict()
    if keep:
        converted = Converted({k: v for k, v in converted.state.items() if not k.startswith(keep)},
                              converted.settings, converted.available_blocks, converted.fmt)
    for name, value in converted.state.items():
        if name in own and own[name].shape != value.shape:
            raise DataError(f"{source}: {name} has shape {tuple(value.shape)} but the {key} encoder "
                            f"expects {tuple(own[name].shape)}; check {key}.dim/mlp_ratio/heads/"
                            f"patch_size/image_size/vocab_size/max_len against the checkpoint")
    missing, unexpected = encoder.load_state_dict(converted.state, strict=False)
    missing = [k for k in missing if not (keep and k.startswith(keep))]
    if missing or unexpected:
        raise DataError(f"{source} does not fit the {key} encoder (missing {len(missing)} keys, e.g. "
                        f"{missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]}); check "
                        f"{key}.depth and the architecture switches against the checkpoint")
    return encoder


def load_pretrained(encoder: Encoder, ckpt: Checkpoint, cfg: EncoderConfig, modality: str,
                    key: Optional[str] = None) -> Encoder:
    """Fill ``encoder`` (built from ``cfg``) with the first ``cfg.depth`` blocks of ``ckpt``."""
    key = key or modality
    pad_id = getattr(encoder.embed, "pad_id", FAIRSEQ_PAD)
    converted = convert(ckpt, modality, cfg, pad_id)
    check_settings(converted, cfg, key, ckpt.source)
    load_converted(encoder, converted, ckpt.source, key)
    log.info("%s encoder: first %d of %d blocks of %s (%s)", key, cfg.depth,
             converted.available_blocks, ckpt.source, converted.fmt)
    return encoder


def encoder_from_checkpoint(ckpt: Checkpoint, base: EncoderConfig, modality: str = "image",
                            pad_id: int = FAIRSEQ_PAD) -> Tuple[Encoder, EncoderConfig]:
    """A whole pretrained encoder (all its blocks), its architecture read off the checkpoint.

    ``base`` supplies what the weights cannot tell (heads without a fairseq config, the
    text ``max_len``); returns the encoder and the config it was built from.
    """
    schema = ImageEncoderConfig if modality == "image" else TextEncoderConfig
    cfg = OmegaConf.merge(OmegaConf.structured(schema), base)
    probe = convert(ckpt, modality, OmegaConf.merge(cfg, {"depth": 0}), pad_id)
    cfg = OmegaConf.merge(cfg, {k: v for k, v in probe.settings.items() if k in cfg},
                          {"depth": probe.available_blocks, "init": ""})
    encoder = build_image_encoder(cfg) if modality == "image" else build_text_encoder(cfg, pad_id)
    return load_pretrained(encoder, ckpt, cfg, modality, key="teacher.encoder"), cfg
