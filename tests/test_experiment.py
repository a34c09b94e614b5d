"""Run folders: a continued run must be the same experiment as the one it continues."""
import pytest
from omegaconf import OmegaConf

from common.checkpoint import STATE_FILE
from common.errors import UserError
from common.experiment import config_changes, run_folder


def _cfg(**changes):
    cfg = OmegaConf.create({"chapter": "demo", "run": "r", "model": {"dim": 128, "depth": 2},
                            "teacher": {"name": "tiny-cnn"}, "train": {"steps": 100, "lr": 1e-3},
                            "eval": {"batch_size": 500}})
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def test_config_changes_lists_model_settings_but_not_training_or_evaluation():
    assert config_changes(_cfg(), _cfg(train__steps=200, train__lr=5e-4, eval__batch_size=64)) == []
    assert config_changes(_cfg(), _cfg(model__dim=256, teacher__name="tiny-clr")) == [
        "model.dim: 128 -> 256", "teacher.name: tiny-cnn -> tiny-clr"]
    added = _cfg()
    OmegaConf.update(added, "model.heads", 4, force_add=True)
    assert config_changes(_cfg(), added) == ["model.heads: <unset> -> 4"]


def _with_checkpoint(cfg):
    folder = run_folder(cfg)
    step = folder / "checkpoints" / "step_0000010"
    step.mkdir(parents=True)
    (step / STATE_FILE).write_text("{}")
    return folder


def test_run_folder_refuses_to_continue_a_run_of_another_model():
    folder = _with_checkpoint(_cfg())
    saved = (folder / "config.yaml").read_text()
    with pytest.raises(UserError, match=r"model\.dim: 128 -> 256.*delete the folder"):
        run_folder(_cfg(model__dim=256))
    assert (folder / "config.yaml").read_text() == saved  # the old run's snapshot is kept
    assert run_folder(_cfg(train__steps=200)) == folder  # training longer is a continuation
    assert OmegaConf.load(folder / "config.yaml").train.steps == 200


def test_run_folder_without_checkpoints_takes_any_config():
    run_folder(_cfg())
    folder = run_folder(_cfg(model__dim=256))  # nothing trained yet: nothing to protect
    assert OmegaConf.load(folder / "config.yaml").model.dim == 256


def test_a_run_saved_before_a_setting_existed_continues(tmp_path):
    """A schema field added later (e.g. teacher.clr) is absent from an older config.yaml; at its
    default it is no change, so the old run still resumes."""
    from omegaconf import OmegaConf

    from common.chapters import chapter

    cfg = chapter("shre").load_config("tiny")
    folder = _with_checkpoint(cfg)
    old = OmegaConf.load(folder / "config.yaml")
    del old.teacher["clr"]
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(old))
    assert run_folder(cfg) == folder
    cfg.teacher.clr.temperature = 0.5
    with pytest.raises(UserError, match=r"teacher.clr.temperature: 0.2 -> 0.5"):
        run_folder(cfg)


def test_a_chapter_declares_which_of_its_sections_a_continued_run_may_change():
    """Chapter 1 may change how its student is validated and fine-tuned (its config's
    RESUMABLE_SECTIONS); another chapter's run may not change a section it has not declared."""
    from common.chapters import chapter

    kd = chapter("unimodal_vision_kd").load_config("tiny")
    folder = _with_checkpoint(kd)
    kd.finetune.train.steps, kd.knn.bank_size = 7, 100
    assert run_folder(kd) == folder
    kd.student.depth += 1
    with pytest.raises(UserError, match=r"student.depth: 2 -> 3"):
        run_folder(kd)
    assert config_changes(_cfg(), _cfg(knn__bank_size=100)) == ["knn.bank_size: <unset> -> 100"]
