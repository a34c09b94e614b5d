"""The eval CLIs end to end on a tiny SHRe checkpoint: --help, every metric CLI, rows in
results/eval/<run>.csv, and one-line errors.

The checkpoint is trained once per module (4 steps, one block per encoder) in its own
runs folder; every test reads it through ``python -m eval.<tool>``'s ``main``.
"""
import os
import runpy
import sys
from pathlib import Path

import pandas as pd
import pytest

from common.config import parse_cli
from common.errors import DataError
from common.paths import REPO_ROOT
from eval import finetune, knn_cifar, retrieval, zero_shot_imagenet
from common.chapters import chapter
from eval.checkpoint_model import load_run

TOOLS = ("retrieval", "zero_shot_imagenet", "knn_cifar", "finetune", "compare", "plot")
FEW_STEPS = ["train.steps=4", "train.eval_every=0", "train.batch_size=16", "train.log_every=2",
             "teacher.train.steps=3", "teacher.train.batch_size=16", "teacher.width=0.25",
             "data.coco_test_size=40", "data.flickr_test_size=20", "image.depth=1", "text.depth=1"]
SMALL = ["data.coco_test_size=40", "data.flickr_test_size=20"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(runs/shre/tiny/ of a 4-step SHRe run, the results folder its rows went to); the
    cache is the session's, so the tiny teacher and tokenizer are built once."""
    runs, results = tmp_path_factory.mktemp("eval_runs"), tmp_path_factory.mktemp("eval_results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMKD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        mp.setenv("MMKD_RUNS", str(runs))
        mp.setenv("MMKD_RESULTS", str(results))
        shre = chapter("shre").module
        shre.run(parse_cli(shre.ShreConfig, REPO_ROOT / "experiments" / "shre",
                           FEW_STEPS + ["run=tiny"]))
    return runs / "shre" / "tiny", results


@pytest.fixture
def run_dir(trained):
    return trained[0]


def eval_rows():
    return pd.read_csv(Path(os.environ["MMKD_RESULTS"]) / "eval" / "tiny.csv")


@pytest.mark.filterwarnings("ignore:'eval.:RuntimeWarning")  # runpy: the module is imported above
@pytest.mark.parametrize("tool", TOOLS)
def test_help(tool, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"eval/{tool}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(f"eval.{tool}", run_name="__main__")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m eval.{tool}") and len(out.splitlines()) > 5


def test_retrieval_matches_the_chapter_and_writes_rows(run_dir):
    rows = retrieval.main([str(run_dir), *SMALL])
    assert [r["dataset"] for r in rows] == ["syn-coco", "syn-flickr"]
    df = eval_rows()
    assert len(df) == 2 and (df["chapter"] == "shre").all() and (df["steps"] == 4).all()
    assert (df["seed"] == 0).all() and (df["run"] == "tiny").all()
    for col in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert df[col].between(0, 100).all()
    assert (df["i2t_r1"] <= df["i2t_r10"]).all()
    assert df["notes"].iloc[0] == "eval.retrieval on step_0000004"
    # a checkpoint folder and the weights file give the same numbers
    again = retrieval.main([str(run_dir / "checkpoints" / "step_0000004" / "model.safetensors"),
                            "--sets", "coco_test", *SMALL])  # options and overrides mix
    assert again[0]["i2t_r5"] == rows[0]["i2t_r5"] and len(again) == 1


def test_zero_shot_and_knn(run_dir):
    zs = zero_shot_imagenet.main([str(run_dir)])[0]
    assert zs["dataset"] == "syn-imagenet" and 0 <= zs["zs_top1"] <= zs["zs_top5"] <= 100
    knn = {r["dataset"]: r
           for r in knn_cifar.main([str(run_dir), "--labels", "coarse", "eval.batch_size=512"])}
    assert sorted(knn) == ["syn-knn10", "syn-knn10 (reverse)"]
    for r in knn.values():
        assert 0 <= r["knn_top1"] <= r["knn_top3"] <= 100
    assert "train split as queries" in knn["syn-knn10 (reverse)"]["notes"]
    assert set(eval_rows()["dataset"]) == {"syn-imagenet", "syn-knn10", "syn-knn10 (reverse)"}


def test_finetune_image_full_and_linear(run_dir):
    fast = ["ft.train.steps=4", "ft.train.batch_size=8", "ft.train.log_every=2"]
    full = finetune.main([str(run_dir), "--task", "cifar10", *fast])[0]
    assert full["dataset"] == "syn-knn10 (fine-tune)" and 0 <= full["ft_top1"] <= full["ft_top5"] <= 100
    assert full["notes"].endswith("fine-tune, 4 steps")
    linear = finetune.main([str(run_dir), "--mode", "linear", *fast])[0]
    assert linear["dataset"] == "syn-imagenet (linear probe)"
    ft_runs = run_dir / "finetune"  # beside the checkpoint, one folder per task, mode and recipe
    assert {"cifar10-full", "imagenet-linear"} <= {p.name.rsplit("-", 1)[0] for p in ft_runs.iterdir()}
    (log,) = ft_runs.glob("cifar10-full-*/metrics.jsonl")
    assert log.read_text().count('"ft_top1"') == 1  # evaluated once, after the last step


def test_finetune_text_stand_in(run_dir):
    rows = finetune.main([str(run_dir), "--task", "syn-pair", "ft.train.steps=3",
                          "ft.train.batch_size=8"])
    assert [r["dataset"] for r in rows] == ["syn-pair/f1", "syn-pair/acc"]
    assert all(0 <= r["glue_score"] <= 100 for r in rows)
    assert "synthetic stand-in task, not GLUE" in rows[0]["notes"]


def test_loader_rebuilds_the_chapter_model_and_names_it_as_the_chapter(trained, monkeypatch):
    run_dir, results = trained
    run = load_run(run_dir, SMALL)
    assert run.step == 4 and run.cfg.text.vocab_size == run.tokenizer.vocab_size
    assert run.cfg.data.coco_test_size == 40 and not run.model.training
    assert run.model_name == "shre"  # this test's results folder has no chapter rows
    monkeypatch.setenv("MMKD_RESULTS", str(results))
    assert load_run(run_dir).model_name == "SHRe"  # the chapter's label for this run and seed
    with pytest.raises(DataError, match="no config.yaml"):
        load_run(run_dir.parent)


@pytest.mark.filterwarnings("ignore:'eval.:RuntimeWarning")
def test_errors_are_one_line_and_exit_2(tmp_path, run_dir, monkeypatch, caplog):
    """What ``python -m eval.retrieval`` does with a wrong path or a typo in an override."""
    for args in ([str(tmp_path / "nope")], [str(run_dir), "trian.steps=3"]):
        monkeypatch.setattr(sys, "argv", ["eval/retrieval.py", *args])
        caplog.clear()
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module("eval.retrieval", run_name="__main__")
        assert exit_.value.code == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert ("does not exist" if "nope" in args[0] else "trian") in errors[0]
