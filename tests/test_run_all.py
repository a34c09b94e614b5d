"""make exp-all's scheduler: one job per (variant, seed), tiny teachers first, jobs in
parallel processes, and the same rows as the chapter's own loop."""
import os
from pathlib import Path

import pandas as pd
import pytest

from common import run_all
from common.chapters import chapter
from common.errors import UserError
from common.paths import REPO_ROOT

FEW = ["train.steps=3", "train.batch_size=16", "train.log_every=1", "teacher.train.steps=3",
       "teacher.train.batch_size=16", "teacher.width=0.25", "data.coco_test_size=60",
       "data.flickr_test_size=30"]


def test_plan_teachers_first_then_one_job_per_variant_and_seed(monkeypatch, tmp_path):
    monkeypatch.setenv("SEEDS", "2")
    monkeypatch.setenv("EXTRAS", "1")
    monkeypatch.setenv("MMKD_CACHE", str(tmp_path))  # teachers earlier tests cached are not planned
    jobs = run_all.plan("tiny", FEW, ["shre", "separate_self_attention"])
    names = [j.name for j in jobs]
    # tiny-clr (chapter 3's default), tiny-cnn as SHRe's (the command line's settings) and as
    # the supervised comparison row's (its variant pins SHRe's preset settings): each once
    assert sorted(n.split("-")[1] for n in names if n.startswith("teacher/")) == ["clr", "cnn", "cnn"]
    assert all(n.startswith("teacher/") for n in names[:3])
    ssa = {n for n in names if n.startswith("separate_self_attention/")}
    variants = [v.name for v in chapter("separate_self_attention").load_config("tiny", FEW).variants]
    expected = {f"separate_self_attention/{v}/seed{k}" for v in variants for k in (0, 1)
                if v != "unimodal-pair" or k == 0}  # nothing random is trained in the pair
    assert ssa == expected
    job = next(j for j in jobs if j.name == "separate_self_attention/mm-d2v2-7/seed1")
    assert job.argv[-3:] == ["only=[mm-d2v2-7]", "seeds=1", "train.seed=1"] and job.env == {"SEEDS": None}
    assert len(job.needs) == 1 and job.needs[0].name.startswith("tiny-clr-")  # label-free by default
    # a chapter without variants is one job that loops its seeds itself
    shre = next(j for j in jobs if j.name == "shre")
    assert "SEEDS" not in shre.env and shre.cost == 2 * 3
    with pytest.raises(UserError, match="unknown chapter"):
        run_all.plan("tiny", FEW, ["no_such_chapter"])
    # by default the extra rows (comparisons) are not planned, nor the teacher only they use
    monkeypatch.delenv("EXTRAS")
    extras = {v.name for v in chapter("separate_self_attention").load_config("tiny", FEW).variants if v.extra}
    default = [j.name for j in run_all.plan("tiny", FEW, ["shre", "separate_self_attention"])]
    assert extras and not any(n.split("/")[1] in extras for n in default if n.startswith("separate"))
    assert sorted(n.split("-")[1] for n in default if n.startswith("teacher/")) == ["clr", "cnn"]


@pytest.mark.slow
def test_parallel_jobs_write_the_rows_of_the_chapter_run(monkeypatch, tmp_path):
    """Two processes at a time give the rows of the chapter's own serial loop, to the digit."""
    monkeypatch.setenv("SEEDS", "2")
    args = FEW + ["only=[mm-d2v2,unimodal-pair]"]
    run_all.execute(run_all.plan("tiny", args, ["separate_self_attention"]), workers=2,
                    preset="tiny", threads=1)
    parallel = pd.read_csv(Path(os.environ["MMKD_RESULTS"]) / "separate_self_attention" / "ssa.csv")
    logs = sorted(p.name for p in (Path(os.environ["MMKD_RUNS"]) / "exp-all").glob("*.log")
                  if not p.name.startswith("teacher__"))  # its teacher may be cached already
    assert logs == ["separate_self_attention__mm-d2v2__seed0.log", "separate_self_attention__mm-d2v2__seed1.log",
                    "separate_self_attention__unimodal-pair__seed0.log"]

    serial_results = tmp_path / "serial"
    monkeypatch.setenv("MMKD_RESULTS", str(serial_results))
    monkeypatch.setenv("MMKD_RUNS", str(tmp_path / "serial-runs"))  # trained again, not resumed
    ssa = chapter("separate_self_attention")
    ssa.module.run(ssa.load_config("tiny", args))
    serial = pd.read_csv(serial_results / "separate_self_attention" / "ssa.csv")
    key = ["run", "seed", "dataset"]
    metrics = ["i2t_r1", "i2t_r10", "t2i_r1", "t2i_r10", "cos_pos_shared", "params_m"]
    a, b = (df.sort_values(key).reset_index(drop=True)[key + metrics + ["overrides"]]
            for df in (parallel, serial))
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 6  # 2 seeds x 2 test sets + the untrained pair's 2


def test_a_failed_job_stops_new_starts_and_names_its_log(monkeypatch):
    monkeypatch.delenv("SEEDS", raising=False)
    jobs = [run_all.Job("bad", ["-c", "import sys; print('the reason'); sys.exit(3)"], cost=2),
            run_all.Job("later", ["-c", "open('never-written', 'w')"], cost=1)]
    with pytest.raises(UserError, match=r"bad failed \(exit 3\): the reason \(full log: .*bad\.log\)"):
        run_all.execute(jobs, workers=1, preset="tiny", threads=1)
    assert not (REPO_ROOT / "never-written").exists()  # jobs run in the repo root
