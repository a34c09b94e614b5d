"""Every ``experiments/*/full.yaml`` against THESIS.md, and the launch configs it relies on.

Each chapter's full preset is loaded through the chapter's own config class (as ``run.py
preset=full`` does) and compared with the thesis settings below. Chapters are found by
glob, so a chapter folder gets checked as soon as its ``full.yaml`` exists; a folder that
is not in :data:`EXPECTED` fails until its row is added here.
"""
import json
import logging
import math
import re

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from omegaconf import DictConfig, OmegaConf

from common.chapters import chapters
from common.paths import REPO_ROOT


class OneOf:
    def __init__(self, *values):
        self.values = values

    def ok(self, value) -> bool:
        return any(_equal(value, v) for v in self.values)

    def __repr__(self) -> str:
        return f"one of {self.values}"


class Mentions:
    """A string naming one of these (case-insensitive substrings)."""

    def __init__(self, *names):
        self.names = names

    def ok(self, value) -> bool:
        return any(n.lower() in str(value).lower() for n in self.names)

    def __repr__(self) -> str:
        return f"a name containing one of {self.names}"


def _equal(a, b) -> bool:
    if isinstance(b, float) or isinstance(a, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    if isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


MIXED = OneOf("bf16", "fp16")  # "mixed precision" (THESIS.md, common to all chapters)

# Per chapter folder: config path -> expected value (literal or OneOf/Mentions/Between).
# "warmup" is the effective warmup (train.warmup_steps, or warmup_frac * steps).
EXPECTED = {
    # THESIS.md "Chapter 1: unimodal vision KD" [002, 003]
    "unimodal_vision_kd": {
        "train.steps": 30_000, "train.batch_size": 256, "train.lr": 5e-4, "warmup": 3_000,
        "train.weight_decay": 0.01, "train.grad_clip": 2.0, "train.precision": MIXED,
        "teacher.name": Mentions("beit", "data2vec"),  # BEiT v2 [003] / data2vec 2.0 image [002]
        "data.crop_scale": [0.08, 1.0],  # unimodal RandomResizedCrop (common section)
    },
    # THESIS.md "Chapter 2: SHRe reproduction" [001, Table 3-5]
    "shre": {
        "train.steps": 60_000, "train.batch_size": 256, "train.lr": 5e-4, "warmup": 6_000,
        "train.weight_decay": 0.01, "train.precision": MIXED,
        "train.deepspeed": "configs/deepspeed_zero2.json",  # "DeepSpeed ZeRO-2 on one GPU"
        "train.eval_every": 6_000,  # CLIP zero-shot ImageNet every 6k steps
        "image.depth": 7, "text.depth": 7,  # first 7 blocks of data2vec 2.0 image / text ...
        "image.init": Mentions("data2vec"), "text.init": Mentions("data2vec"),  # ... pretrained
        "head_hidden": 4.0,  # shared network Linear 768 -> 3072 (= 4 x 768) ...
        "teacher.name": Mentions("resnet50"),  # ImageNet-supervised ResNet-50
        "data.max_text_len": 64, "data.crop_scale": [0.6, 1.0],
        # grad clip: not stated for SHRe in THESIS.md (the preset reuses chapter 1's 2.0)
    },
    # THESIS.md "Chapter 3: separate self-attention, MM-D2V2" [000, 001 Tables 6-8]
    "separate_self_attention": {
        "image.depth": 5, "text.depth": 5, "shared.depth": 1,  # baseline: 5 specific + 1 shared
        "image.freeze_embed": True, "text.freeze_embed": True,  # embedding layers frozen
        "train.weight_decay": 0.01,  # "others 0.01"
        "teacher.name": Mentions("beit"),  # BEiT v2 (the dagger rows, much better than D2V2)
        "train.precision": MIXED,
    },
    # THESIS.md "Chapter 4: image-text contrastive learning and its ablation" [001, 004]
    # (the memory bank, ~16k-32k entries, is one of its variants, not the base preset)
    "itc_ablation": {"align": "itc", "train.precision": MIXED},
    # THESIS.md "Chapter 5: importance of the teacher" [001]: teachers vary per run, the
    # student is chapter 3's; only the common settings below apply.
    "teacher_comparison": {"train.precision": MIXED},
}


def _get(cfg, path):
    node = cfg
    for part in path.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            raise KeyError(path)
        node = node[part]
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


def _warmup(train) -> int:
    return train.warmup_steps if train.warmup_steps >= 0 else round(train.warmup_frac * train.steps)


def _encoders(node, path=""):
    """(path, node) of every encoder config (has dim, heads and depth) in the tree."""
    if not isinstance(node, DictConfig):
        return
    if {"dim", "heads", "depth"} <= set(node.keys()):
        yield path, node
    for key in node.keys():
        yield from _encoders(node[key], f"{path}.{key}" if path else key)


FULL = chapters("full")


def test_every_full_preset_is_covered():
    assert FULL, "no experiments/*/full.yaml found"
    missing = [c.name for c in FULL if c.name not in EXPECTED]
    assert not missing, f"add the THESIS.md settings of {missing} to EXPECTED"


@pytest.mark.parametrize("chapter", FULL, ids=[c.name for c in FULL])
def test_full_preset_matches_thesis(chapter):
    cfg = chapter.load_config("full")
    wrong = []
    for path, want in EXPECTED.get(chapter.name, {}).items():
        have = _warmup(cfg.train) if path == "warmup" else _get(cfg, path)
        if not (want.ok(have) if hasattr(want, "ok") else _equal(have, want)):
            wrong.append(f"{path}={have!r} (THESIS.md: {want!r})")
    # common to all chapters: AdamW (0.9, 0.98), eps 1e-6, 10% warmup, 224 px, mixed precision
    train = cfg.train
    common = {"train.betas": (list(train.betas), [0.9, 0.98]), "train.eps": (train.eps, 1e-6),
              "warmup": (_warmup(train), round(0.1 * train.steps)),
              "data.image_size": (cfg.data.image_size, 224)}
    if "text" in cfg:
        common["data.max_text_len"] = (cfg.data.max_text_len, 64)
    wrong += [f"{k}={have!r} (THESIS.md: {want!r})" for k, (have, want) in common.items()
              if not _equal(have, want)]
    if not MIXED.ok(train.precision):
        wrong.append(f"train.precision={train.precision!r} (THESIS.md: mixed precision)")
    # embedding dim 768, 12 heads: every student encoder (the teacher's comes from its weights)
    for path, enc in _encoders(cfg):
        if not path.startswith("teacher") and (enc.dim, enc.heads) != (768, 12):
            wrong.append(f"{path}.dim/heads={enc.dim}/{enc.heads} (THESIS.md: 768/12)")
    if train.deepspeed:
        assert (REPO_ROOT / train.deepspeed).is_file(), train.deepspeed
    assert not wrong, f"{chapter.name}/full.yaml: " + "; ".join(wrong)


# ----------------------------------------------------------------------------- launch configs
def test_deepspeed_config_is_zero2_with_auto_precision():
    ds = json.loads((REPO_ROOT / "configs/deepspeed_zero2.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2
    # precision, clipping and micro batch are filled from train.* by common.train.fit
    assert ds["fp16"]["enabled"] == ds["bf16"]["enabled"] == "auto"
    assert ds["gradient_clipping"] == ds["train_micro_batch_size_per_gpu"] == "auto"


@pytest.mark.parametrize("name,processes", [("accelerate_1gpu.yaml", 1), ("accelerate_multi_gpu.yaml", 4)])
def test_accelerate_configs_are_valid_and_use_zero2(name, processes):
    cfg = load_config_from_file(str(REPO_ROOT / "configs" / name))
    assert cfg.distributed_type == DistributedType.DEEPSPEED and cfg.num_processes == processes
    assert cfg.deepspeed_config["deepspeed_config_file"] == "configs/deepspeed_zero2.json"
    assert not cfg.use_cpu
    # accelerate refuses mixed_precision next to a deepspeed_config_file: it comes from train.*
    assert cfg.mixed_precision is None


def test_makefile_launches_full_presets_through_accelerate():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "ACCELERATE_CONFIG ?= configs/accelerate_1gpu.yaml" in makefile
    assert re.search(r"RUN = \$\(VENV\)/bin/accelerate launch --config_file \$\(ACCELERATE_CONFIG\)", makefile)
    assert re.search(r"exp-shre: .*\n\t\$\(RUN\) experiments/shre/run.py", makefile)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_full_train_settings_degrade_on_cpu_with_one_log_line(monkeypatch, caplog):
    from common.train import _make_accelerator

    # what `accelerate launch --config_file configs/accelerate_1gpu.yaml` exports
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "configs/deepspeed_zero2.json")
    train = next(c for c in FULL if c.name == "shre").load_config("full").train
    assert train.deepspeed and train.precision in ("bf16", "fp16")
    with caplog.at_level(logging.INFO, logger="common.train"):
        accelerator, amp_dtype = _make_accelerator(train)
    assert amp_dtype is None and accelerator.distributed_type != DistributedType.DEEPSPEED
    assert [r.getMessage() for r in caplog.records if r.name == "common.train"] == [
        "CUDA not available: training in fp32 on CPU, DeepSpeed off"]
