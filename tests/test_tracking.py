"""train.log_with: Accelerate's trackers receive what metrics.jsonl receives, offline."""
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.chapters import chapter
from common.config import ConfigError, parse_cli
from common.paths import REPO_ROOT, runs_dir
from common.tracking import hyperparameters, tracker_names

FEW_STEPS = ["train.steps=4", "train.eval_every=2", "train.batch_size=16", "train.log_every=1",
             "teacher.train.steps=3", "teacher.train.batch_size=16", "teacher.width=0.25",
             "data.coco_test_size=40", "data.flickr_test_size=20", "image.depth=1", "text.depth=1"]


def test_tracker_names_and_one_line_errors(monkeypatch):
    assert tracker_names("none") == [] and tracker_names("tensorboard") == ["tensorboard"]
    assert "tensorboard" in tracker_names("all")
    with pytest.raises(ConfigError, match=r"unknown \['tensorbord'\]; use none, all or"):
        tracker_names("tensorbord")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # nothing installed
    with pytest.raises(ConfigError, match=r"needs the 'wandb' package; pip install wandb"):
        tracker_names("wandb")


def test_an_unknown_tracker_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"train.log_with=tensorbord is out of range; allowed: "
                                          r"none, tensorboard, wandb, aim, mlflow, all"):
        chapter("shre").load_config("tiny", ["train.log_with=tensorbord"])


def test_hyperparameters_are_the_flat_resolved_config(tmp_path):
    (tmp_path / "config.yaml").write_text("train:\n  lr: 0.001\n  betas: [0.9, 0.98]\ndata:\n  root: ''\n")
    assert hyperparameters(tmp_path, {}) == {"train.lr": 0.001, "train.betas": "[0.9, 0.98]",
                                             "data.root": ""}


@pytest.mark.slow
def test_tiny_shre_logs_losses_lr_throughput_and_eval_metrics_to_tensorboard():
    shre = chapter("shre").module
    cfg = parse_cli(shre.ShreConfig, REPO_ROOT / "experiments" / "shre",
                    FEW_STEPS + ["run=tracked", "train.log_with=tensorboard"])
    shre.run(cfg)
    run = runs_dir("shre", "tracked")
    events = sorted((run / "trackers" / "mmkd").glob("events.out.tfevents.*"))
    assert events, list((run / "trackers").rglob("*"))
    acc = EventAccumulator(str(events[0].parent)).Reload()
    scalars = acc.Tags()["scalars"]
    for tag in ("loss", "itc", "lr", "samples_per_sec", "zs_top1"):
        assert tag in scalars, scalars
    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in acc.Scalars("loss")] == [r["step"] for r in jsonl] == [1, 2, 3, 4]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in jsonl])
    assert [e.step for e in acc.Scalars("zs_top1")] == [2, 4]
    hparams = next((run / "trackers" / "mmkd").rglob("hparams.yml")).read_text()
    assert "train.log_with: tensorboard" in hparams and "image.depth: 1" in hparams
