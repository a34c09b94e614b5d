"""Preset composition: a preset's ``defaults`` fragments (configs/presets/) merge first, its
own values win over them, and command-line overrides win over everything."""
from dataclasses import dataclass, field

import pytest

from common.config import PRESET_FRAGMENTS, ConfigError, EvalConfig, TrainConfig, load_config


@dataclass
class Schema:
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def test_fragments_merge_in_order_then_the_file_then_overrides(tmp_path):
    preset = tmp_path / "full.yaml"
    preset.write_text("defaults: [thesis_schedule]\ntrain:\n  lr: 1.0e-4\n")
    cfg = load_config(Schema, preset, ["train.batch_size=8"])
    assert cfg.train.steps == 60000 and cfg.train.precision == "bf16"  # from the fragment
    assert cfg.train.lr == 1e-4  # the file's own value wins over the fragment
    assert cfg.train.batch_size == 8  # the command line wins over both
    assert "defaults" not in cfg


def test_an_unknown_fragment_is_one_line_naming_the_choices(tmp_path):
    preset = tmp_path / "full.yaml"
    preset.write_text("defaults: [thesis_shedule]\n")
    with pytest.raises(ConfigError, match=r"defaults names 'thesis_shedule', which is not one of "
                                          r"\[.*'thesis_schedule'.*\]") as err:
        load_config(Schema, preset)
    assert "\n" not in str(err.value)
    assert (PRESET_FRAGMENTS / "thesis_schedule.yaml").is_file()


@pytest.mark.parametrize("override,message", [
    ("train.steps=0", "train.steps=0 is out of range; allowed: >= 1"),
    ("train.steps=-5", "train.steps=-5 is out of range; allowed: >= 1"),
    ("train.batch_size=0", "train.batch_size=0 is out of range; allowed: >= 1"),
    ("eval.batch_size=0", "eval.batch_size=0 is out of range; allowed: >= 1"),
    ("teacher.train.lr=0", "teacher.train.lr=0.0 is out of range; allowed: > 0"),
    ("data.max_text_len=1", "data.max_text_len=1 is out of range; allowed: >= 2"),
    ("data.max_text_len=99", "data.max_text_len=99 is longer than the text encoder's positions "
                             "(text.max_len=32)"),
    ("data.crop_scale=[0.9,0.5]", "data.crop_scale=[0.9, 0.5] is out of range"),
])
def test_out_of_range_settings_are_one_line_before_anything_runs(override, message):
    from common.chapters import chapter

    with pytest.raises(ConfigError) as err:
        chapter("shre").load_config("tiny", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_preset_of_every_chapter_is_in_range():
    from common.chapters import chapters

    for c in chapters():
        for preset in ("tiny", "full"):
            c.load_config(preset)


def test_full_no_decay_entries_name_parameters_that_train():
    """Chapters 3-5 full: every train.no_decay entry (image CLS token, text token table) is a
    trainable parameter of the student built from the preset (width shrunk only)."""
    from torch import nn

    from common.chapters import chapters
    from common.models.encoder import build_image_encoder, build_text_encoder
    from common.optim import param_groups

    checked = 0
    for chapter in chapters("full"):
        cfg = chapter.load_config("full")
        if "no_decay" not in cfg.train or not cfg.train.no_decay:
            continue
        for key in ("image", "text"):
            cfg[key].dim, cfg[key].depth, cfg[key].heads = 24, 1, 2
        cfg.image.image_size, cfg.text.vocab_size = 32, 50
        model = nn.ModuleDict({"image": build_image_encoder(cfg.image),
                               "text": build_text_encoder(cfg.text, pad_id=1)})
        groups = param_groups(model, cfg.train.weight_decay, cfg.train.no_decay)
        decay = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
        for entry in cfg.train.no_decay:
            assert [d for n, d in decay.items() if entry in n] == [0.0], (chapter.name, entry)
        checked += 1
    assert checked >= 3


def test_relative_weight_paths_are_read_under_data_root(tmp_path, monkeypatch):
    """Before: `weights/...` in a preset was looked up from the working directory, so a run with
    data.root=/datasets missed /datasets/weights/."""
    from common.chapters import chapter

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.pt").write_bytes(b"")
    cfg = chapter("teacher_comparison").load_config(
        "full", [f"data.root={tmp_path}/datasets", "text.init=mine.pt"])
    assert cfg.image.init == f"{tmp_path}/datasets/weights/data2vec2_base_imagenet.pt"
    assert cfg.teacher.name == f"{tmp_path}/datasets/weights/beitv2_base_patch16_224_pt1k.pth"
    assert cfg.text.init == "mine.pt"  # exists from the working directory: kept
    shre = chapter("shre").load_config("full", [f"data.root={tmp_path}/d"])
    assert shre.teacher.name == "timm:resnet50.a1_in1k"  # a hub name stays as it is
    assert shre.teacher.weights == f"{tmp_path}/d/weights/resnet50.a1_in1k.safetensors"
    from common.config import apply_overrides  # a variant's teacher, merged later, too
    variant = apply_overrides(cfg, ["teacher.name=weights/data2vec2_base_imagenet.pt"], "variant d2v2")
    assert variant.teacher.name == f"{tmp_path}/datasets/weights/data2vec2_base_imagenet.pt"
    assert chapter("shre").load_config("tiny").teacher.name == "tiny-cnn"
