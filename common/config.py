"""Typed configs: OmegaConf structured dataclasses + YAML presets + dotlist overrides.

Every chapter declares one top-level dataclass composed of the pieces below, ships a
``tiny.yaml`` and a ``full.yaml`` that only *set values* of that schema, and calls
:func:`load_config`. Because the schema is a structured config in struct mode, a key
that does not exist (``trian.steps=3``) or a value of the wrong type (``train.steps=abc``)
fails immediately with one line naming the key, instead of silently doing nothing.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.errors import UserError
from common.tiny_teachers.settings import ClrSettings, D2VSettings, DinoSettings

PRESET_FRAGMENTS = Path(__file__).resolve().parent.parent / "configs" / "presets"

T = TypeVar("T")


class ConfigError(UserError):
    """A user-caused configuration problem; the message is a complete one-line explanation."""


@dataclass
class EncoderConfig:
    """A stack of ALiBi transformer blocks as in data2vec 2.0 (shared by image and text)."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    layer_norm_first: bool = False  # data2vec 2.0 blocks are post-norm
    # pre-norm only: a LayerNorm after the last block (unilm BEiT v2); timm's avg-pool
    # BEiT v2 (fc_norm after pooling) has none, so its CLS output is the last block's
    final_norm: bool = True
    norm_eps: float = 1e-6
    drop_path: float = 0.0
    dropout: float = 0.0
    alibi: bool = True
    # learnable per-block, per-head factor on the ALiBi bias (data2vec 2.0's `alibi_scale`)
    alibi_scale: bool = False
    layer_scale: float = 0.0  # > 0: per-channel residual scales with this init (BEiT v2); 0 = none
    rel_pos_bias: bool = False  # per-block relative position bias on the patch grid (BEiT v2; images)
    freeze_embed: bool = False  # freeze the modality encoder (patch/token embedding)
    # with freeze_embed: embedding parameters that still train, by name inside the embedding
    # (chapters 3-5: the image CLS token and the text token table, which holds the BOS token)
    embed_trainable: List[str] = field(default_factory=list)
    init: str = ""  # "" = random; else a checkpoint path / hub name (see common.models.registry)
    init_weights: str = ""  # local weights file for a timm:/hf: `init` (offline machines)


@dataclass
class ImageEncoderConfig(EncoderConfig):
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    abs_pos: bool = True  # fixed sin-cos positions added to the patches (data2vec 2.0); BEiT v2: none


@dataclass
class TextEncoderConfig(EncoderConfig):
    vocab_size: int = 50265  # overwritten from the tokenizer when it is built
    max_len: int = 64
    learned_pos: bool = True


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic | coco | cc3m | imagenet | ... (see common.data)
    root: str = ""  # dataset folder for real sources (full preset)
    image_size: int = 224  # network input size after transforms
    render_size: int = 0  # synthetic only: rendered size before cropping (0 = image_size)
    crop_scale: List[float] = field(default_factory=lambda: [0.6, 1.0])
    hflip: float = 0.5
    max_text_len: int = 64
    tokenizer: str = "synthetic-bpe"  # synthetic-bpe | gpt2 | path to a tokenizer.json
    vocab_size: int = 1024  # synthetic-bpe only
    train_size: int = 100_000  # synthetic only: number of distinct training images
    # test images: synthetic, how many the world draws; real, the first N of the Karpathy test
    # split (quick checks; results then name the set e.g. coco5k-first1000)
    coco_test_size: int = 5000
    flickr_test_size: int = 1000
    # real zero-shot quick checks (0 = the published protocol): only the first N ImageNet
    # classes (their images and classifier rows), only the first N of CLIP's 80 templates;
    # results then name the set e.g. imagenet-first10cls-2tmpl
    zero_shot_classes: int = 0
    zero_shot_templates: int = 0
    num_workers: int = 0
    # real only: prepared image-text sets under data.root mixed round-robin for training
    # (coco | cc3m | visual_genome; see common.data.multi)
    train_sets: List[str] = field(default_factory=lambda: ["coco", "cc3m"])


@dataclass
class ParamOverride:
    """Optimizer settings for parameters whose name contains ``match``."""

    match: str = ""
    lr_scale: float = 1.0
    weight_decay: float = -1.0  # -1: keep the group's weight decay


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 0.0
    warmup_steps: int = -1  # -1: warmup_frac * steps
    warmup_frac: float = 0.1
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    grad_clip: float = 2.0  # 0 disables clipping
    # parameter-name substrings that get weight decay 0 (biases, norms and 1-d params always do)
    no_decay: List[str] = field(default_factory=list)
    # per-parameter-name overrides, first match wins, e.g. [{match: text.embed, weight_decay: 0.0}]
    param_overrides: List[ParamOverride] = field(default_factory=list)
    precision: str = "no"  # no | fp16 | bf16 (fp16/bf16 only on CUDA)
    deepspeed: str = ""  # DeepSpeed json (ZeRO-2), used only when CUDA is available
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    ckpt_every: int = 0  # 0: only at the end
    resume: str = ""  # checkpoint folder, or "auto" for the newest one of this run
    seed: int = 0
    # experiment trackers besides metrics.jsonl: none | tensorboard | wandb | aim | mlflow | all,
    # or a comma-separated list (common.tracking)
    log_with: str = "none"


@dataclass
class EvalConfig:
    """What a chapter evaluates on. Names are *roles* that :func:`common.data.sources.open_source`
    maps to the synthetic world (tiny) or to real datasets (full)."""

    retrieval: List[str] = field(default_factory=lambda: ["coco_test", "flickr_test"])
    zero_shot: str = "imagenet_val"  # "" disables zero-shot classification
    batch_size: int = 256


@dataclass
class TeacherConfig:
    """Which frozen teacher a chapter distils from.

    ``name``: ``tiny-cnn`` (supervised CNN) or another ``tiny-*`` recipe of
    :mod:`common.tiny_teachers` (settings: ``d2v`` / ``dino`` / ``clr``), bootstrapped on the
    synthetic world once and cached;
    ``timm:<model>`` (e.g. ``timm:resnet50.a1_in1k``) with ``weights`` a local file for
    offline use; ``hf:<org/name>`` (a ``transformers`` model; ``weights`` a local copy of it);
    or a local checkpoint path (data2vec 2.0 ``.pt``, BEiT v2 ``.pth``, an mmkd or timm
    ``.safetensors``), converted into an ALiBi/BEiT-style :class:`~common.models.Encoder`.
    """

    name: str = "tiny-cnn"
    weights: str = ""  # local weights file for timm/hf teachers (offline machines)
    arch: str = "resnet10t"  # tiny-cnn: the timm architecture trained from scratch
    width: float = 1.0  # tiny-cnn: channel multiplier of the ResNet stages (0.5 = half as wide)
    encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)  # tiny ViT recipes
    train: TrainConfig = field(default_factory=TrainConfig)  # the bootstrap's own training
    # each label-free recipe's own settings (common.tiny_teachers.settings; in the cache key)
    d2v: D2VSettings = field(default_factory=D2VSettings)
    dino: DinoSettings = field(default_factory=DinoSettings)
    clr: ClrSettings = field(default_factory=ClrSettings)


def _format_error(err: Exception, where: str) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    key = getattr(err, "full_key", None)
    if key:
        return f"config error in {where}: {msg} (key '{key}'); see the chapter's tiny.yaml for valid keys"
    return f"config error in {where}: {msg}; see the chapter's tiny.yaml for valid keys"


def _preset_parts(path: Path) -> List[Tuple[str, Any]]:
    """``(file, values)`` to merge for a preset, in order: the fragments its top-level
    ``defaults: [name, ...]`` names (``configs/presets/<name>.yaml``, blocks that several
    chapters share, e.g. the data2vec 2.0 architecture), then the preset's own values, which
    win. The command line's overrides come after all of them."""
    try:
        own = OmegaConf.load(path)
    except OmegaConfBaseException as err:
        raise ConfigError(_format_error(err, str(path))) from None
    names = own.pop("defaults", []) if isinstance(own, DictConfig) else []
    if not isinstance(names, (list, ListConfig)):
        raise ConfigError(f"config error in {path}: defaults must be a list of fragment names "
                          f"from {PRESET_FRAGMENTS}")
    parts = []
    for name in names:
        fragment = PRESET_FRAGMENTS / f"{name}.yaml"
        if not fragment.is_file():
            raise ConfigError(f"config error in {path}: defaults names '{name}', which is not one "
                              f"of {sorted(p.stem for p in PRESET_FRAGMENTS.glob('*.yaml'))} "
                              f"({PRESET_FRAGMENTS})")
        parts.append((str(fragment), OmegaConf.load(fragment)))
    return parts + [(str(path), own)]


def load_config(schema: Type[T], preset: str | os.PathLike | None = None,
                overrides: Sequence[str] = ()) -> T:
    """Build ``schema`` defaults, merge a YAML preset, then ``key=value`` overrides.

    Returns the merged config as an OmegaConf object typed like ``schema`` (attribute
    access, struct mode: unknown keys raise). Raises :class:`ConfigError` with one line
    naming the offending file or override.
    """
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    if preset is not None:
        path = Path(preset)
        if not path.is_file():
            raise ConfigError(f"config error: preset file {path} does not exist; "
                              f"choose one of {sorted(p.name for p in path.parent.glob('*.yaml'))}")
        for where, part in _preset_parts(path):
            try:
                cfg = OmegaConf.merge(cfg, part)
            except OmegaConfBaseException as err:
                raise ConfigError(_format_error(err, where)) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config error: override '{item}' is not of the form key=value "
                              f"(e.g. train.steps=200)")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise ConfigError(_format_error(err, f"override '{item}'")) from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(_format_error(err, "interpolation")) from None
    validate(cfg)
    resolve_weight_paths(cfg)
    return cfg  # type: ignore[return-value]


def _at_least(low: float) -> Tuple[Any, str]:
    return (lambda v: v >= low), f">= {low:g}"


_POSITIVE = ((lambda v: v > 0), "> 0")
LOG_WITH = ("none", "tensorboard", "wandb", "aim", "mlflow", "all")  # common.tracking
_FRACTION = ((lambda v: 0 <= v <= 1), "in [0, 1]")
# per config section type: field -> (allowed?, the allowed range in words)
RANGES: Dict[type, Dict[str, Tuple[Any, str]]] = {
    TrainConfig: {"steps": _at_least(1), "batch_size": _at_least(1), "lr": _POSITIVE,
                  "min_lr": _at_least(0), "warmup_frac": _FRACTION, "weight_decay": _at_least(0),
                  "grad_clip": _at_least(0), "log_every": _at_least(0),
                  "log_with": ((lambda v: {n.strip() for n in v.split(",")} <= set(LOG_WITH)),
                               ", ".join(LOG_WITH) + " or a comma-separated list of them")},
    EvalConfig: {"batch_size": _at_least(1)},
    DataConfig: {"image_size": _at_least(1), "max_text_len": _at_least(2), "hflip": _FRACTION,
                 "num_workers": _at_least(0),
                 "crop_scale": ((lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1),
                                "[min, max] with 0 < min <= max <= 1")},
}


def validate(cfg: Any, path: str = "") -> None:
    """Every numeric setting of a known section inside its allowed range, or one
    :class:`ConfigError` line naming the key, its value and the range; checked when the config
    is loaded, before any data is touched or any file is written."""
    if not isinstance(cfg, DictConfig):
        return
    for name, (ok, allowed) in RANGES.get(OmegaConf.get_type(cfg), {}).items():
        value = cfg[name]
        if not ok(list(value) if isinstance(value, ListConfig) else value):
            raise ConfigError(f"config error: {path}{name}={value} is out of range; allowed: {allowed}")
    for key in cfg:
        validate(cfg._get_node(key), f"{path}{key}.")
    data, text = cfg.get("data"), cfg.get("text")
    if not path and isinstance(data, DictConfig) and isinstance(text, DictConfig) and "max_len" in text:
        if "max_text_len" in data and data.max_text_len > text.max_len:
            raise ConfigError(f"config error: data.max_text_len={data.max_text_len} is longer than "
                              f"the text encoder's positions (text.max_len={text.max_len}); "
                              f"allowed: data.max_text_len <= text.max_len")


# config section type -> its fields that name a weights file (or a local hub copy)
WEIGHT_FIELDS: Dict[type, Tuple[str, ...]] = {EncoderConfig: ("init", "init_weights"),
                                              TeacherConfig: ("name", "weights")}


def weights_path(value: str, root: str) -> str:
    """Where a weights setting points. Hub names (``timm:...``, ``hf:...``), ``tiny-*`` recipes,
    ``none`` and absolute paths stay as they are; a relative path is taken under ``data.root``
    (the presets' ``weights/<file>`` is ``<data.root>/weights/<file>``, beside the datasets),
    unless it exists from the working directory (``teacher.name=./mine.pt``)."""
    if (not value or value == "none" or value.startswith("tiny-") or ":" in value
            or Path(value).is_absolute() or Path(value).exists() or not root):
        return value
    return str(Path(root) / value)


def resolve_weight_paths(cfg: Any) -> None:
    """Rewrite every weights path of ``cfg`` with :func:`weights_path` (``data.root`` of the
    top-level config), so a run finds its checkpoints wherever its datasets are."""
    data = cfg.get("data") if isinstance(cfg, DictConfig) else None
    root = str(data.root) if isinstance(data, DictConfig) and "root" in data else ""

    def walk(node: Any) -> None:
        if not isinstance(node, DictConfig):
            return
        kind = OmegaConf.get_type(node)
        for key in node:
            value = node._get_node(key)
            if isinstance(value, DictConfig):
                walk(value)
            elif kind is not None and any(issubclass(kind, t) and key in f
                                          for t, f in WEIGHT_FIELDS.items()):
                node[key] = weights_path(str(node[key]), root)

    if root:
        walk(cfg)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg)


def to_dict(cfg: Any) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


# overrides that select or seed runs rather than change one (not recorded: rows have columns for them)
UNRECORDED_OVERRIDES = ("only=", "seeds=", "train.seed=")


def parse_cli(schema: Type[T], chapter_dir: str | os.PathLike,
              argv: Optional[Sequence[str]] = None) -> T:
    """Chapter entry point helper: ``run.py [preset=tiny|full] key=value ...``.

    The preset may also come from the ``PRESET`` environment variable (what the Makefile
    passes); the chosen preset name is written into ``cfg.preset`` when the schema has it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = os.environ.get("PRESET") or "tiny"
    rest = []
    for item in argv:
        if item.startswith("preset="):
            preset = item.split("=", 1)[1]
        else:
            rest.append(item)
    return load_preset(schema, chapter_dir, preset, rest)


def load_preset(schema: Type[T], chapter_dir: str | os.PathLike, preset: str,
                overrides: Sequence[str] = ()) -> T:
    """A chapter's ``<preset>.yaml`` merged into ``schema`` with ``key=value`` overrides; the
    preset's name goes into ``cfg.preset`` and the overrides into ``cfg.overrides`` (what
    the result rows record; the seed and the selection of runs have columns of their own)
    where the schema has them."""
    cfg = load_config(schema, Path(chapter_dir) / f"{preset}.yaml", overrides)
    if "preset" in cfg:
        cfg.preset = preset
    if "overrides" in cfg:
        cfg.overrides = [o for o in overrides if not o.startswith(UNRECORDED_OVERRIDES)]
    return cfg


def apply_overrides(cfg: T, overrides: Sequence[str], where: str) -> T:
    """A copy of a loaded config with ``key=value`` overrides merged (e.g. one variant of a
    chapter), failing as :func:`load_config` does with one line that names ``where``."""
    out = OmegaConf.merge(cfg)  # a copy: the caller's config stays as it was
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config error in {where}: '{item}' is not of the form key=value")
        try:
            out = OmegaConf.merge(out, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise ConfigError(_format_error(err, f"{where}: '{item}'")) from None
    validate(out)
    resolve_weight_paths(out)
    return out  # type: ignore[return-value]
