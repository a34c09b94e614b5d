"""Two processes on CPU (gloo) through the documented launch command: a cold tiny-teacher
cache is bootstrapped without deadlock, the run trains as a world of two, result rows are
written once, and a second launch resumes from the checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from common.distributed import is_main_process, single_process

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
          "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", str(ROOT / "experiments" / "shre" / "run.py")]
FEW_STEPS = ["train.eval_every=2", "train.ckpt_every=2", "train.batch_size=16",
             "train.log_every=2", "teacher.train.steps=3", "teacher.train.batch_size=16",
             "teacher.width=0.25", "data.coco_test_size=60", "data.flickr_test_size=30",
             "image.depth=1", "text.depth=1"]


def _launch(*args, env):
    return subprocess.run([*LAUNCH, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.mark.slow  # two launches of a 4-step tiny SHRe run in two processes: ~30 s
def test_two_processes_bootstrap_train_write_rows_once_and_resume(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMKD_CACHE": str(tmp_path / "cache"),
           "MMKD_RUNS": str(tmp_path / "runs"), "MMKD_RESULTS": str(tmp_path / "results")}
    first = _launch("train.steps=4", *FEW_STEPS, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "bootstrapping teacher tiny-cnn" in first.stderr  # the cache was cold
    assert "2 process(es)" in first.stderr
    rows = pd.read_csv(tmp_path / "results" / "shre" / "shre.csv")
    assert len(rows) == 4  # coco, flickr, zero-shot, teacher: once, not once per rank
    run = tmp_path / "runs" / "shre" / "shre"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]

    again = _launch("train.steps=6", *FEW_STEPS, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and "step 4 of 6" in again.stderr
    assert "bootstrapping" not in again.stderr  # the teacher came from the cache


def test_only_rank_zero_writes_and_bootstraps_see_a_world_of_one(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_main_process()
    with single_process():
        assert "WORLD_SIZE" not in os.environ and "LOCAL_RANK" not in os.environ
        assert is_main_process()
    assert os.environ["WORLD_SIZE"] == "2" and os.environ["RANK"] == "1"
