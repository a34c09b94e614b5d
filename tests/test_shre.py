"""End-to-end: the SHRe chapter's tiny preset with a few steps, its CSV rows and its errors."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from common.config import parse_cli
from common.results import COLUMNS

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "experiments" / "shre"
spec = importlib.util.spec_from_file_location("shre_run", CHAPTER / "run.py")
shre = importlib.util.module_from_spec(spec)
sys.modules["shre_run"] = shre  # dataclasses resolve string annotations through sys.modules
spec.loader.exec_module(shre)

FEW_STEPS = ["train.steps=4", "train.eval_every=2", "train.batch_size=16", "train.log_every=2",
             "teacher.train.steps=3", "teacher.train.batch_size=16", "teacher.width=0.25",
             "data.coco_test_size=60", "data.flickr_test_size=30", "image.depth=1", "text.depth=1"]


def test_tiny_run_writes_result_rows_and_resumes_without_retraining():
    cfg = parse_cli(shre.ShreConfig, CHAPTER, FEW_STEPS)
    rows = shre.run(cfg)
    csv = Path(os.environ["MMKD_RESULTS"]) / "shre" / "shre.csv"
    df = pd.read_csv(csv)
    assert list(df.columns) == list(COLUMNS)
    assert sorted(df["dataset"]) == ["syn-coco", "syn-flickr", "syn-imagenet", "syn-imagenet"]
    assert (df["chapter"] == "shre").all() and (df["preset"] == "tiny").all()
    assert (df["teacher"] == "tiny-cnn").all()
    teacher = df[df["model"] == "teacher:tiny-cnn"].iloc[0]
    assert teacher["steps"] == 3 and 0 <= teacher["ft_top1"] <= teacher["ft_top5"] <= 100
    df = df[df["model"] == "SHRe"]
    assert (df["steps"] == 4).all()
    retrieval = df[df["dataset"] != "syn-imagenet"]
    for col in ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]:
        assert retrieval[col].between(0, 100).all(), col
    assert (retrieval["i2t_r1"] <= retrieval["i2t_r10"]).all()
    zs = df[df["dataset"] == "syn-imagenet"].iloc[0]
    assert 0 <= zs["zs_top1"] <= zs["zs_top5"] <= 100
    metrics = (Path(os.environ["MMKD_RUNS"]) / "shre" / "shre" / "metrics.jsonl").read_text()
    assert '"kd_text"' in metrics and '"itc"' in metrics and '"zs_top1"' in metrics

    # the same command again continues the finished run: nothing is retrained, and its rows
    # replace the first ones instead of repeating them
    again = shre.run(parse_cli(shre.ShreConfig, CHAPTER, FEW_STEPS))
    assert [r["zs_top1"] for r in again if "zs_top1" in r] == [r["zs_top1"] for r in rows if "zs_top1" in r]
    assert len(pd.read_csv(csv)) == 4


def test_seeds_run_into_their_own_folders_and_rows_record_the_overrides(monkeypatch):
    monkeypatch.setenv("SEEDS", "2")
    rows = shre.run(parse_cli(shre.ShreConfig, CHAPTER, FEW_STEPS + ["run=seeded", "train.seed=3"]))
    assert sorted({r["seed"] for r in rows}) == [3, 4]
    runs = Path(os.environ["MMKD_RUNS"]) / "shre"
    assert (runs / "seeded" / "config.yaml").is_file()  # the first seed keeps the run's folder
    assert "seed: 4" in (runs / "seeded-seed4" / "config.yaml").read_text()
    df = pd.read_csv(Path(os.environ["MMKD_RESULTS"]) / "shre" / "seeded.csv")
    by_seed = df[(df["model"] == "SHRe") & (df["dataset"] == "syn-coco")].set_index("seed")
    assert by_seed.loc[3, "i2t_r10"] != by_seed.loc[4, "i2t_r10"] or \
        by_seed.loc[3, "t2i_r10"] != by_seed.loc[4, "t2i_r10"]  # two trainings, not one twice
    # what the run was started with, less the seed (a column) and nothing the chapter filled in
    assert set(df["overrides"]) == {" ".join(FEW_STEPS + ["run=seeded"])}


def test_shre_losses_are_finite_and_use_the_teacher_for_both_modalities():
    import torch
    from torch import nn

    from common.models.dual import DualEncoder
    from common.models.heads import SharedHead

    class Enc(nn.Module):  # CLS = the mean input, enough to check the wiring
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 8)

        def forward(self, x, padding_mask=None):
            from common.models.encoder import EncoderOutput
            x = x.float().reshape(len(x), -1, 4)
            return EncoderOutput(self.proj(x))

    head = SharedHead(8, 5)
    model = DualEncoder(Enc(), Enc(), head, head)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    batch = {"image": torch.randn(3, 16), "text_ids": torch.randn(3, 8),
             "text_padding_mask": torch.zeros(3, 8, dtype=torch.bool)}
    out = shre.shre_losses(model, teacher, batch)
    assert set(out) == {"loss", "kd_image", "kd_text", "itc", "logit_scale"}
    assert torch.isclose(out["loss"], out["kd_image"] + out["kd_text"] + out["itc"])
    out["loss"].backward()
    assert model.image_head.fc2.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()})


def _cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(CHAPTER / "run.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_unknown_config_key_is_one_line_and_exit_2():
    proc = _cli("trian.steps=3")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "trian" in errors[0] and "train" in errors[0]
    assert "Traceback" not in proc.stderr


def test_full_preset_without_data_names_what_is_missing(tmp_path):
    proc = _cli(f"data.root={tmp_path}", env_extra={"PRESET": "full"})
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and str(tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (Path(os.environ["MMKD_RUNS"]) / "shre").exists()  # nothing half-created


def test_killed_run_resumes_to_the_same_weights_and_metrics(monkeypatch):
    """Kill a tiny run right after its step-2 checkpoint, rerun the same command: the final
    weights and result rows equal those of an uninterrupted run."""
    import torch
    from safetensors.torch import load_file

    common = FEW_STEPS + ["train.ckpt_every=2"]
    shre.run(parse_cli(shre.ShreConfig, CHAPTER, common + ["run=straight"]))

    real_fit = shre.fit

    def killed_fit(*args, **kwargs):
        def kill(model, step):
            if step == 3:
                raise KeyboardInterrupt  # what Ctrl-C / a kill does between two steps
        return real_fit(*args, **{**kwargs, "on_step_end": kill})

    monkeypatch.setattr(shre, "fit", killed_fit)
    with pytest.raises(KeyboardInterrupt):
        shre.run(parse_cli(shre.ShreConfig, CHAPTER, common + ["run=killed"]))
    monkeypatch.setattr(shre, "fit", real_fit)
    resumed = shre.run(parse_cli(shre.ShreConfig, CHAPTER, common + ["run=killed"]))

    runs = Path(os.environ["MMKD_RUNS"]) / "shre"
    a = load_file(str(runs / "straight" / "checkpoints" / "step_0000004" / "model.safetensors"))
    b = load_file(str(runs / "killed" / "checkpoints" / "step_0000004" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    straight = pd.read_csv(Path(os.environ["MMKD_RESULTS"]) / "shre" / "straight.csv")
    metric_cols = ["i2t_r1", "i2t_r10", "t2i_r1", "t2i_r10", "zs_top1", "zs_top5"]
    pd.testing.assert_frame_equal(straight[metric_cols],
                                  pd.DataFrame(resumed).reindex(columns=metric_cols),
                                  check_dtype=False)


@pytest.mark.slow
def test_tiny_preset_learns_far_above_chance():
    """A shortened tiny preset (teacher bootstrap included) must align image and text:
    recall and zero-shot accuracy many times above chance, not a pipeline that runs."""
    cfg = parse_cli(shre.ShreConfig, CHAPTER, ["run=learns", "train.steps=300", "train.eval_every=0",
                                               "data.coco_test_size=1000",
                                               "data.flickr_test_size=500"])
    rows = {r["dataset"]: r for r in shre.run(cfg) if r["model"] == "SHRe"}
    coco, flickr, zs = rows["syn-coco"], rows["syn-flickr"], rows["syn-imagenet"]
    # chance: R@1 = 0.1 (1,000 images) and 0.2 (500 images); zero-shot top-1 = 1 (100 classes)
    assert coco["i2t_r1"] > 20 * 0.1 and coco["t2i_r1"] > 20 * 0.1, coco
    assert flickr["i2t_r1"] > 20 * 0.2 and flickr["t2i_r1"] > 20 * 0.2, flickr
    assert zs["zs_top1"] > 5 * 1.0, zs


def test_head_is_sized_by_the_teacher_not_the_zero_shot_set(monkeypatch):
    """Without a zero-shot set (and with a 1000-class ImageNet set next to a 100-class tiny
    teacher) the shared head has one output per teacher class, saved in config.yaml."""
    from omegaconf import OmegaConf

    seen = {}

    class Stop(Exception):
        pass

    def no_training(model, *args, **kwargs):
        seen["classes"] = model.image_head.fc2.out_features
        raise Stop

    monkeypatch.setattr(shre, "fit", no_training)
    with pytest.raises(Stop):
        shre.run(parse_cli(shre.ShreConfig, CHAPTER, FEW_STEPS + ["eval.zero_shot=''", "run=nozs"]))
    assert seen["classes"] == 100  # tiny-cnn's classes
    saved = OmegaConf.load(Path(os.environ["MMKD_RUNS"]) / "shre" / "nozs" / "config.yaml")
    assert saved.head_classes == 100
