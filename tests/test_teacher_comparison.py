"""Chapter 5 (importance of the teacher): the objective without a teacher, refused settings,
and an end-to-end run of the tiny preset with few steps, its rows and its figure."""
import importlib.util
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from common.mm_d2v2 import alignment_losses, check_alignment
from common.config import ConfigError, EncoderConfig, ImageEncoderConfig, TextEncoderConfig, parse_cli
from common.losses import itc_loss
from common.models.multimodal import HeadConfig, build_multimodal
from common.results import COLUMNS
from eval import plot

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "experiments" / "teacher_comparison"
spec = importlib.util.spec_from_file_location("teachers_run", CHAPTER / "run.py")
teachers = importlib.util.module_from_spec(spec)
sys.modules["teachers_run"] = teachers  # dataclasses resolve string annotations through sys.modules
spec.loader.exec_module(teachers)

FEW_STEPS = ["train.steps=3", "train.batch_size=16", "train.log_every=1",
             "teacher.train.steps=3", "teacher.train.batch_size=16", "teacher.width=0.25",
             "teacher.encoder.dim=32", "teacher.encoder.depth=2", "teacher.encoder.heads=2",
             "data.coco_test_size=60", "data.flickr_test_size=30", "image.depth=1", "text.depth=1",
             "knn.bank_size=200", "knn.query_size=100", "eval.batch_size=100"]


def test_without_a_teacher_only_the_alignment_term_is_left():
    torch.manual_seed(0)
    model = build_multimodal(ImageEncoderConfig(dim=8, depth=1, heads=2, image_size=8, patch_size=4),
                             TextEncoderConfig(dim=8, depth=1, heads=2, vocab_size=20, max_len=8),
                             EncoderConfig(dim=8, depth=1, heads=2), HeadConfig(proj="shared"), 1,
                             contrastive=True)
    ids = torch.tensor([[0, 5, 6, 2], [0, 7, 2, 1], [0, 8, 9, 2]])
    batch = {"image": torch.randn(3, 3, 8, 8), "text_ids": ids, "text_padding_mask": ids.eq(1)}
    out = alignment_losses(model, None, batch, "itc")
    assert "kd_image" not in out and "kd_text" not in out
    image, text, scale = model(batch["image"], ids, ids.eq(1))
    expected = itc_loss(image.embedding, text.embedding, scale)
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["itc"], expected)


def test_nothing_to_train_is_refused_before_training():
    with pytest.raises(ConfigError, match="nothing to train"):
        check_alignment("x", "none", "none", has_teacher=False)
    check_alignment("x", "itc", "shared", has_teacher=False)  # ITC alone is a valid run
    cfg = parse_cli(teachers.TeacherComparisonConfig, CHAPTER, FEW_STEPS + ["align=none", "head.proj=none"])
    with pytest.raises(ConfigError, match="no-teacher"):
        teachers.run(cfg)  # the no-teacher variant would train nothing: refused first
    assert not (Path(os.environ["MMKD_RUNS"]) / "teacher_comparison").exists()


@pytest.mark.slow  # four tiny teacher bootstraps (3 steps each) + eight 3-step students: ~1 min
def test_tiny_run_every_teacher_writes_teacher_and_student_rows_and_the_figure(monkeypatch, tmp_path):
    monkeypatch.delenv("SEEDS", raising=False)
    monkeypatch.setenv("EXTRAS", "1")  # the extra rows (tiny-cnn, raw targets) too
    rows = teachers.run(parse_cli(teachers.TeacherComparisonConfig, CHAPTER, FEW_STEPS))
    df = pd.read_csv(Path(os.environ["MMKD_RESULTS"]) / "teacher_comparison" / "teachers.csv")
    assert list(df.columns) == list(COLUMNS)
    judged = df[df["model"].str.startswith("teacher:")]
    # four teachers judged by kNN on both label sets, both directions; no row for "none"
    assert sorted(set(judged["teacher"])) == ["tiny-clr", "tiny-cnn", "tiny-d2v", "tiny-dino"]
    # every run with a teacher judges it (7 of the 8 variants), 4 rows each
    assert len(judged) == 7 * 4 and judged["knn_top1"].between(0, 100).all()
    assert sorted(set(judged["dataset"])) == ["syn-knn10", "syn-knn10 (reverse)", "syn-knn100",
                                              "syn-knn100 (reverse)"]
    forward = judged[~judged["dataset"].str.contains("reverse")]  # with the bank's spread
    assert forward["emb_mean_cos"].between(-1, 1).all() and forward["emb_var_frac"].between(0, 1).all()
    students = df[~df["model"].str.startswith("teacher:")]
    assert len(students) == len(rows) == 8 * 3  # COCO-like, Flickr-like, zero-shot per variant
    assert list(dict.fromkeys(students["run"])) == ["tiny-d2v", "tiny-dino", "tiny-clr", "tiny-cnn",
                                                     "no-teacher", "tiny-d2v-raw", "tiny-dino-raw",
                                                     "tiny-clr-raw"]
    assert set(students[students["run"] == "no-teacher"]["teacher"]) == {"none"}
    assert set(students[students["run"].str.endswith("-raw")]["overrides"].str.split().str[-1]) == {
        "head.kd_target=raw"}  # the variant's overrides are recorded after the command line's
    zs = students[students["dataset"] == "syn-imagenet"]
    assert len(zs) == 8 and zs["zs_top1"].between(0, 100).all()
    coco = students[students["dataset"] == "syn-coco"]
    assert coco["i2t_r1"].notna().all() and coco["t2i_mean_recall"].notna().all()

    written = plot.main([str(Path(os.environ["MMKD_RESULTS"]) / "teacher_comparison" / "teachers.csv"),
                         "--only", "teacher_comparison", "--out", str(tmp_path)])
    assert [p.name for p in written] == ["teacher_comparison.png", "teacher_comparison.pdf"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_a_student_that_fails_leaves_no_orphan_teacher_rows(monkeypatch):
    import common.mm_d2v2

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(common.mm_d2v2, "fit", killed)  # the student's training
    cfg = parse_cli(teachers.TeacherComparisonConfig, CHAPTER, FEW_STEPS + ["only=[tiny-cnn]"])
    with pytest.raises(Killed):
        teachers.run(cfg)
    assert not (Path(os.environ["MMKD_RESULTS"]) / "teacher_comparison").exists()
