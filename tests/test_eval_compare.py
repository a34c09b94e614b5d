"""eval.compare: runs side by side with reference rows, mean/std over seeds, reruns counted
once; the printed numbers are parsed back and checked against the CSVs."""
import io
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from common.errors import UserError
from common.results import append_rows
from eval import compare
from eval.compare import REFERENCE_DIR, strip_seed


def row(run, seed, ts, dataset="syn-coco", **metrics):
    return {"chapter": "shre", "run": run, "model": "SHRe", "teacher": "tiny-cnn", "preset": "tiny",
            "dataset": dataset, "steps": 600, "seed": seed, "timestamp": ts, **metrics}


@pytest.fixture
def two_runs(tmp_path):
    a, b = tmp_path / "shre" / "tiny-a.csv", tmp_path / "shre" / "tiny-b.csv"
    append_rows(a, [row("tiny-a", 0, "2025-01-01T00:00:00", i2t_r1=10.0, t2i_r1=5.0),
                    row("tiny-a", 1, "2025-01-01T00:00:01", i2t_r1=20.0, t2i_r1=7.0),
                    row("tiny-a", 0, "2025-01-01T00:00:00", dataset="syn-imagenet", zs_top1=3.0)])
    # the same command again for seed 0: its newer row replaces the first, it is not a third seed
    append_rows(a, [row("tiny-a", 0, "2025-01-02T00:00:00", i2t_r1=12.0, t2i_r1=5.0)])
    append_rows(b, [row("tiny-b", 0, "2025-01-01T00:00:00", i2t_r1=30.0, t2i_r1=9.5)])
    return a, b


def parse_markdown(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, [c.strip() for c in line.strip("|").split("|")])) for line in lines[2:]]


def test_markdown_numbers_match_the_csvs(two_runs, capsys):
    a, b = two_runs
    compare.main([str(a), str(b), str(REFERENCE_DIR / "*.csv"), "--by", "run",
                  "--metrics", "i2t_r1", "t2i_r1", "--where", "dataset=syn-coco,coco5k"])
    rows = {(r["run"], r["dataset"]): r for r in parse_markdown(capsys.readouterr().out)}

    runs = pd.concat([pd.read_csv(a), pd.read_csv(b)])
    latest = runs[runs["dataset"] == "syn-coco"].sort_values("timestamp").groupby(["run", "seed"]).last()
    seeds_a = latest.loc["tiny-a"]
    assert seeds_a["i2t_r1"].tolist() == [12.0, 20.0]  # the rerun of seed 0 won
    mean, std = seeds_a["i2t_r1"].mean(), seeds_a["i2t_r1"].std()  # 16, 5.66
    a_row, b_row = rows[("tiny-a", "syn-coco")], rows[("tiny-b", "syn-coco")]
    assert a_row["i2t_r1"] == f"{mean:.2f} ± {std:.2f}" == "16.00 ± 5.66"
    assert a_row["t2i_r1"] == "6.00 ± 1.41" and a_row["n"] == "2"
    assert b_row["i2t_r1"] == "30.00" and b_row["n"] == "1" and b_row["ref"] == ""

    ref = pd.concat([pd.read_csv(p) for p in REFERENCE_DIR.glob("*.csv")])
    clip = ref[(ref["run"] == "ref-clip") & (ref["dataset"] == "coco5k")].iloc[0]
    assert rows[("ref-clip", "coco5k")]["i2t_r1"] == f"{clip['i2t_r1']:.2f}" == "58.40"
    assert rows[("ref-clip", "coco5k")]["ref"] == "ref"
    assert ("tiny-a", "syn-imagenet") not in rows  # filtered by --where


def test_seed_suffixes_average_and_csv_format(tmp_path, capsys):
    path = tmp_path / "shre" / "s.csv"
    append_rows(path, [row("tiny-c-seed0", 0, "t0", zs_top1=10.0, dataset="syn-imagenet"),
                       row("tiny-c-seed1", 1, "t1", zs_top1=14.0, dataset="syn-imagenet"),
                       row("other-seed3", 1, "t2", zs_top1=50.0, dataset="syn-imagenet")])
    compare.main([str(path), "--by", "run", "--format", "csv"])
    table = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("run")
    assert table.loc["tiny-c", "n"] == 2 and table.loc["tiny-c", "zs_top1"] == 12.0
    assert table.loc["tiny-c", "zs_top1_std"] == pytest.approx(math.sqrt(8))
    assert "other-seed3" in table.index  # suffix 3 is not its seed 1: kept as named
    assert list(table.columns)[-2:] == ["zs_top1", "zs_top1_std"]  # only metrics with values
    assert strip_seed("shre_s2", 2) == "shre" and strip_seed("shre", 0) == "shre"


def test_default_files_include_results_and_reference(two_runs, capsys):
    results = Path(os.environ["MMKD_RESULTS"])
    target = results / "shre" / "tiny-a.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(two_runs[0].read_bytes())
    compare.main(["--metrics", "i2t_r1", "zs_top1"])
    rows = parse_markdown(capsys.readouterr().out)
    assert {"tiny-a", "ref-clip", "thesis-shre"} <= {r["run"] for r in rows}
    assert list(rows[0])[:7] == ["chapter", "run", "model", "teacher", "preset", "steps", "dataset"]


def test_nothing_to_compare_and_bad_columns_are_user_errors(tmp_path):
    empty = tmp_path / "none-*.csv"
    with pytest.raises(UserError, match="no result rows"):
        compare.main([str(empty)])
    with pytest.raises(UserError, match="--by runs"):
        compare.main([str(REFERENCE_DIR / "*.csv"), "--by", "runs"])
    with pytest.raises(UserError, match="COLUMN=VALUE"):
        compare.main([str(REFERENCE_DIR / "*.csv"), "--where", "dataset"])


def test_where_matches_whole_numbers_in_columns_with_gaps(two_runs, capsys):
    # with the reference rows (no seed) beside them the seed column is float: seed=0 is 0.0
    a, _ = two_runs
    compare.main([str(a), str(REFERENCE_DIR / "*.csv"), "--by", "run", "--metrics", "i2t_r1",
                  "--where", "seed=0", "dataset=syn-coco", "--format", "csv"])
    table = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("run")
    assert list(table.index) == ["tiny-a"] and table.loc["tiny-a", "i2t_r1"] == 12.0
