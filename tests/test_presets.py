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
