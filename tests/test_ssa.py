"""End-to-end: the separate self-attention chapter's tiny preset with a few steps, its CSV
rows, seeds, the eval-CLI contract (a run folder rebuilt through ``build_model``) and errors."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from common.config import EncoderConfig, ImageEncoderConfig, TextEncoderConfig, parse_cli
from common.models.encoder import EncoderOutput
from common.models.multimodal import HeadConfig, build_multimodal
from common.results import COLUMNS
from eval.checkpoint_model import load_run

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "experiments" / "separate_self_attention"
spec = importlib.util.spec_from_file_location("ssa_run", CHAPTER / "run.py")
ssa = importlib.util.module_from_spec(spec)
sys.modules["ssa_run"] = ssa  # dataclasses resolve string annotations through sys.modules
spec.loader.exec_module(ssa)

FEW_STEPS = ["train.steps=3", "train.batch_size=16", "train.log_every=1",
             "teacher.train.steps=3", "teacher.train.batch_size=16", "teacher.width=0.25",
             "data.coco_test_size=60", "data.flickr_test_size=30"]


def test_tiny_run_all_variants_and_rebuild_from_config(monkeypatch):
    monkeypatch.delenv("SEEDS", raising=False)
    monkeypatch.setenv("EXTRAS", "1")  # the extra (comparison) rows too
    rows = ssa.run(parse_cli(ssa.SsaConfig, CHAPTER, FEW_STEPS))
    df = pd.read_csv(Path(os.environ["MMKD_RESULTS"]) / "separate_self_attention" / "ssa.csv")
    assert list(df.columns) == list(COLUMNS) and len(df) == len(rows) == 12
    assert list(dict.fromkeys(df["run"])) == ["mm-d2v2", "mm-d2v2-7", "mm-d2v2-7_2", "unimodal-pair",
                                               "mm-d2v2-raw", "mm-d2v2-cnn"]
    assert sorted(set(df["dataset"])) == ["syn-coco", "syn-flickr"]
    by_run = df[df["dataset"] == "syn-coco"].set_index("run")
    # one more specific block adds two blocks (one per modality), one more shared block adds one
    base, deeper, shared2 = (by_run.loc[r, "params_m"] for r in ["mm-d2v2", "mm-d2v2-7", "mm-d2v2-7_2"])
    assert deeper - base == pytest.approx(2 * (shared2 - base), abs=0.02) and shared2 > base
    pair = by_run.loc["unimodal-pair"]
    assert pair["steps"] == 0 and pair["teacher"] == "none" and pair["params_m"] < base
    trained = df[df["run"] != "unimodal-pair"]
    assert (trained["steps"] == 3).all()
    # label-free by default; the supervised CNN is the one labelled comparison row
    assert dict(trained.groupby("run")["teacher"].first()) == {
        "mm-d2v2": "tiny-clr", "mm-d2v2-7": "tiny-clr", "mm-d2v2-7_2": "tiny-clr",
        "mm-d2v2-raw": "tiny-clr", "mm-d2v2-cnn": "tiny-cnn"}
    for _, row in df.iterrows():
        assert row["i2t_mean_recall"] == pytest.approx((row["i2t_r1"] + row["i2t_r5"] + row["i2t_r10"]) / 3)
        for col in ["cos_pos_encoder", "cos_neg_encoder", "cos_pos_shared", "cos_neg_shared"]:
            assert -1 <= row[col] <= 1, col
        assert row["notes"].startswith("R@1 i2t/t2i by level: encoder")

    # the eval CLIs' contract: config.yaml of a run folder + the chapter's build_model + weights
    folder = Path(os.environ["MMKD_RUNS"]) / "separate_self_attention" / "mm-d2v2-7_2-seed0"
    loaded = load_run(folder)
    assert loaded.cfg.shared.depth == 2 and loaded.cfg.head.target_dim == 128  # tiny-clr's CLS
    assert loaded.cfg.head.kd_target == "batch"
    assert loaded.step == 3 and loaded.model_name == "MM-D2V2 7_2 (2+2)"
    assert loaded.model.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    assert '"kd_text"' in (folder / "metrics.jsonl").read_text()

def test_seeds_from_the_environment_run_and_record_each_seed(monkeypatch):
    monkeypatch.setenv("SEEDS", "2")
    rows = ssa.run(parse_cli(ssa.SsaConfig, CHAPTER, FEW_STEPS + ["only=[mm-d2v2]", "run=seeds"]))
    assert sorted({(r["run"], r["seed"]) for r in rows}) == [("mm-d2v2", 0), ("mm-d2v2", 1)]
    runs = Path(os.environ["MMKD_RUNS"]) / "separate_self_attention"
    assert (runs / "mm-d2v2-seed0" / "config.yaml").is_file()
    assert OmegaConf.load(runs / "mm-d2v2-seed1" / "config.yaml").train.seed == 1


def test_ssa_losses_are_the_two_regressions():
    class Teacher(torch.nn.Module):
        def forward(self, images):
            return EncoderOutput(x=images.flatten(1)[:, None, :6])

    torch.manual_seed(0)
    model = build_multimodal(ImageEncoderConfig(dim=8, depth=1, heads=2, image_size=8, patch_size=4),
                             TextEncoderConfig(dim=8, depth=1, heads=2, vocab_size=20, max_len=8),
                             EncoderConfig(dim=8, depth=1, heads=2), HeadConfig(target_dim=6), 1)
    ids = torch.tensor([[0, 5, 2], [0, 6, 2]])
    out = ssa.ssa_losses(model, Teacher(), {"image": torch.randn(2, 3, 8, 8), "text_ids": ids,
                                            "text_padding_mask": ids.eq(1)})
    assert set(out) == {"loss", "kd_image", "kd_text"}
    torch.testing.assert_close(out["loss"], out["kd_image"] + out["kd_text"])


def test_unknown_config_key_is_one_line_before_training():
    proc = subprocess.run([sys.executable, str(CHAPTER / "run.py"), "image.dpeth=3"], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "dpeth" in errors[0]
    assert not (Path(os.environ["MMKD_RUNS"]) / "separate_self_attention").exists()


TINY_FULL = ["image.dim=32", "image.heads=2", "image.depth=1", "image.image_size=32", "text.dim=32",
             "text.heads=2", "text.depth=1", "text.max_len=8", "text.vocab_size=64", "shared.dim=32",
             "shared.heads=2", "teacher.encoder.dim=48", "teacher.encoder.heads=2",
             "teacher.encoder.depth=1", "teacher.encoder.image_size=32", "data.image_size=32",
             "data.max_text_len=8", "train.batch_size=2", "train.precision='no'"]


def test_full_model_benches_at_a_tiny_shape():
    from common import bench

    assert "separate_self_attention" in bench.benchable_chapters()
    out = bench.bench_chapter("separate_self_attention", steps=1, overrides=TINY_FULL, device="cpu")
    assert out["batch"] == 2 and out["steps_per_s"] > 0 and out["flops_per_step"] > 0
