"""Teacher registry: tiny bootstraps are trained once and cached; bad names/paths are one clear error."""
import pytest
import torch
from omegaconf import OmegaConf

from common.config import DataConfig, TeacherConfig
from common.errors import DataError
from common.models import teachers
from common.tiny_teachers import bootstrap


def _cfgs(steps: int = 3):
    t = OmegaConf.structured(TeacherConfig)
    t.width, t.train.steps, t.train.batch_size, t.train.log_every = 0.25, steps, 16, 1
    d = OmegaConf.structured(DataConfig)
    d.image_size = 32
    return t, d


def test_tiny_cnn_is_trained_once_then_loaded_from_cache(monkeypatch):
    t, d = _cfgs()
    first = teachers.build_teacher(t, d)
    report = teachers.teacher_report(t, d)
    assert report["steps"] == 3 and report["chance_top1"] == 1.0
    assert 0.0 <= report["val_top1"] <= 100.0
    assert not first.training and not any(p.requires_grad for p in first.parameters())

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached teacher was trained again")

    monkeypatch.setattr(teachers.TINY_RECIPES["tiny-cnn"], "train", must_not_train)
    second = teachers.build_teacher(t, d)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert (a == b).all(), name


@pytest.mark.parametrize("recipe", ["tiny-cnn", "tiny-clr"])
def test_a_bootstrap_is_a_function_of_its_config_alone(monkeypatch, tmp_path, vit_teacher_cfgs, recipe):
    """Two machines bootstrap the same weights: the init does not read the global RNG (which
    imports leave in a different state in every process; tiny-cnn's once did)."""
    t, d = _cfgs(steps=2) if recipe == "tiny-cnn" else vit_teacher_cfgs(recipe)
    weights = []
    for cache, global_seed in (("a", 1), ("b", 2)):
        monkeypatch.setenv("MMKD_CACHE", str(tmp_path / cache))
        torch.manual_seed(global_seed)
        teachers.build_teacher(t, d)
        weights.append((bootstrap.cache_folder(t, d) / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]


def test_cache_key_changes_with_the_recipe():
    t, d = _cfgs()
    key = bootstrap.cache_key(t, d)
    t.train.steps = 4
    assert bootstrap.cache_key(t, d) != key
    t.train.steps, d.image_size = 3, 48
    assert bootstrap.cache_key(t, d) != key


def test_unknown_teacher_and_missing_weights_are_one_line_errors(tmp_path):
    t, d = _cfgs()
    t.name = "tiny-nope"
    with pytest.raises(DataError, match="unknown teacher 'tiny-nope'"):
        teachers.build_teacher(t, d)
    t.name, t.weights = "timm:resnet50.a1_in1k", str(tmp_path / "missing.safetensors")
    with pytest.raises(DataError, match="does not exist") as err:
        teachers.build_teacher(t, d)
    assert "\n" not in str(err.value)


def test_cache_key_ignores_what_a_recipe_does_not_read():
    # the ViT recipes never read the CNN's arch/width and the CNN never reads encoder, so two
    # chapters that differ only there share one bootstrapped teacher
    t, d = _cfgs()
    t.name = "tiny-d2v"
    key = bootstrap.cache_key(t, d)
    t.arch, t.width = "resnet18", 0.25
    assert bootstrap.cache_key(t, d) == key
    t.encoder.depth += 1
    assert bootstrap.cache_key(t, d) != key
    t.name = "tiny-cnn"
    key = bootstrap.cache_key(t, d)
    t.encoder.depth += 1
    assert bootstrap.cache_key(t, d) == key
    t.width = 0.5
    assert bootstrap.cache_key(t, d) != key
