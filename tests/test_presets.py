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
