"""Every chapter declares itself (common.chapters.Declaration): tools read the declaration
instead of guessing a schema or build_model's arguments."""
import dataclasses

import pytest

from common.chapters import Chapter, Declaration, chapters


def test_every_chapter_declares_its_config_and_build_model():
    found = chapters()
    assert {c.name for c in found} >= {"shre", "unimodal_vision_kd", "separate_self_attention",
                                       "itc_ablation", "teacher_comparison"}
    for c in found:
        declared = c.declaration
        assert isinstance(declared, Declaration) and dataclasses.is_dataclass(declared.config)
        assert callable(declared.build_model)
        assert c.load_config("tiny").chapter == c.name


def test_a_chapter_without_a_declaration_is_one_line(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "run.py").write_text("from dataclasses import dataclass\n\n\n@dataclass\n"
                                           "class XConfig:\n    train: int = 0\n")
    with pytest.raises(TypeError, match=r"must declare CHAPTER = Declaration\(config="):
        Chapter(tmp_path / "x").schema
