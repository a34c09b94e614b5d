"""eval.plot: every figure is written as PNG and PDF from result CSVs and metrics.jsonl logs,
and a figure without data is skipped with one log line."""
import json
import logging

import pandas as pd

from common.results import append_rows
from eval import plot
from eval.compare import REFERENCE_DIR


def rows(chapter="shre", teacher="tiny-cnn", run="tiny", seed=0, **metrics):
    base = {"chapter": chapter, "run": run, "model": "SHRe", "teacher": teacher, "preset": "tiny",
            "steps": 600, "seed": seed}
    return [{**base, "dataset": "syn-coco", "i2t_r1": 10.0 + seed, "i2t_r5": 30.0, "i2t_r10": 40.0,
             "t2i_r1": 8.0, "t2i_r5": 22.0, "t2i_r10": 31.0 + seed},
            {**base, "dataset": "syn-imagenet", "zs_top1": 20.0 + seed, "zs_top5": 50.0}]


def write_log(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 3, "lo')  # torn line


def test_all_figures_are_written(tmp_path, caplog):
    csv = tmp_path / "results" / "shre" / "tiny.csv"
    append_rows(csv, rows(seed=0) + rows(seed=1))
    runs = tmp_path / "runs"
    write_log(runs / "shre" / "tiny" / "metrics.jsonl", [
        {"step": 1, "loss": 3.0, "kd_image": 1.0, "itc": 2.0, "lr": 1e-4, "samples_per_sec": 100.0},
        {"step": 2, "loss": 2.5, "kd_image": 0.8, "itc": 1.7, "lr": 2e-4, "samples_per_sec": 110.0,
         "zs_top1": 4.0}])
    out = tmp_path / "figures"
    with caplog.at_level(logging.INFO, logger="eval.plot"):
        written = plot.main([str(csv), str(REFERENCE_DIR / "*.csv"), "--runs", str(runs),
                             "--out", str(out)])
    names = sorted(p.name for p in written)
    assert names == sorted(f"{n}.{ext}" for n in ("recall_bars", "asymmetry", "zero_shot",
                                                  "curves_shre_tiny") for ext in ("png", "pdf"))
    assert all(p.stat().st_size > 5000 for p in written)
    skipped = [r.message for r in caplog.records if "skipped" in r.message]
    assert len(skipped) == 1 and skipped[0].startswith("teacher_comparison")


def test_teacher_comparison_and_log_key_split(tmp_path):
    csv = tmp_path / "teacher_comparison" / "t.csv"
    append_rows(csv, rows("teacher_comparison", "beitv2", "beit")
                + rows("teacher_comparison", "d2v2", "d2v2")
                + [{"chapter": "teacher_comparison", "run": r, "model": f"teacher:{t}", "teacher": t,
                    "dataset": "syn-imagenet", "ft_top1": q, "seed": 0}
                   for r, t, q in (("beit", "beitv2", 80.0), ("d2v2", "d2v2", 40.0))])
    written = plot.main([str(csv), "--only", "teacher_comparison", "--out", str(tmp_path)])
    assert [p.name for p in written] == ["teacher_comparison.png", "teacher_comparison.pdf"]

    frame = pd.DataFrame([
        {"step": 1, "loss": 1.0, "logit_scale": 14.0, "lr": 1.0, "samples_per_sec": 5.0},
        {"step": 2, "zs_top1": 3.0},
        {"step": 3, "loss": 0.9, "logit_scale": 14.1, "lr": 0.5, "samples_per_sec": 6.0, "knn_top1": 7.0}])
    assert plot.split_keys(frame) == (["loss", "logit_scale"], ["zs_top1", "knn_top1"])
