"""Results CSVs: schema, filled-in provenance, atomic and concurrent appends, loading."""
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from common.errors import DataError
from common.paths import REPO_ROOT
from common.results import COLUMNS, append_rows, load_results


def row(**kw):
    return {"chapter": "shre", "run": "tiny", "model": "student", "dataset": "coco5k",
            "i2t_r1": 41.36, **kw}


def test_schema_has_the_design_columns():
    required = ("chapter run model teacher preset dataset i2t_r1 i2t_r5 i2t_r10 t2i_r1 t2i_r5 "
                "t2i_r10 zs_top1 zs_top5 knn_top1 knn_top3 params_m train_minutes steps seed "
                "git_sha timestamp reference notes").split()
    assert set(required) <= set(COLUMNS) and len(set(COLUMNS)) == len(COLUMNS)


def test_append_fills_provenance_and_loads_typed(tmp_path):
    path = tmp_path / "shre" / "tiny.csv"
    append_rows(path, [row(), row(dataset="flickr1k", git_sha="1e5", reference=True, notes="a, b")])
    append_rows(path, [row(run="other", steps=300)])
    df = load_results(path)
    assert list(df.columns) == list(COLUMNS) and len(df) == 3
    assert df["git_sha"].iloc[0] not in ("", None) and df["timestamp"].notna().all()
    assert df["git_sha"].iloc[1] == "1e5"  # text stays text
    assert df["reference"].tolist() == [False, True, False]
    assert df["notes"].iloc[1] == "a, b" and df["i2t_r1"].tolist() == [41.36] * 3
    assert df["steps"].iloc[2] == 300


def test_unknown_columns_are_named_and_nothing_is_written(tmp_path):
    path = tmp_path / "r.csv"
    append_rows(path, [row()])
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"\['i2t_r01'\]"):
        append_rows(path, [row(), row(i2t_r01=1.0)])
    assert path.read_bytes() == before


class Exploding:
    def __str__(self):
        raise RuntimeError("disk full")


def test_crash_mid_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "r.csv"
    append_rows(path, [row(), row(run="b")])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):  # the 2nd new row fails half-written
        append_rows(path, [row(run="c"), row(run="d", notes=Exploding())])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv.lock"]
    assert load_results(path)["run"].tolist() == ["tiny", "b"]


def test_two_processes_appending_concurrently_lose_nothing(tmp_path):
    path = tmp_path / "shared.csv"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from common.results import append_rows
        tag = sys.argv[1]
        for i in range(50):
            append_rows({str(path)!r}, [{{"chapter": "c", "run": f"{{tag}}-{{i}}", "seed": i,
                                          "notes": "x" * 200}}])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    df = load_results(path)
    assert len(df) == 100
    assert set(df["run"]) == {f"{t}-{i}" for t in "ab" for i in range(50)}
    assert (df["notes"] == "x" * 200).all()


def test_load_results_globs_and_errors(tmp_path):
    append_rows(tmp_path / "a" / "x.csv", [row(run="x")])
    append_rows(tmp_path / "b" / "y.csv", [row(run="y")])
    (tmp_path / "old.csv").write_text("chapter,run,i2t_r1\nshre,old,1.5\n")  # older, narrower schema
    df = load_results([str(tmp_path / "**" / "*.csv")])
    assert sorted(df["run"]) == ["old", "x", "y"] and list(df.columns) == list(COLUMNS)
    append_rows(tmp_path / "old.csv", [row(run="new")])  # upgraded to the full header
    assert pd.read_csv(tmp_path / "old.csv").columns.tolist() == list(COLUMNS)
    assert load_results(tmp_path / "old.csv")["run"].tolist() == ["old", "new"]
    empty = load_results(str(tmp_path / "none" / "*.csv"))
    assert empty.empty and list(empty.columns) == list(COLUMNS)
    with pytest.raises(DataError, match="does not exist"):
        load_results(tmp_path / "missing.csv")


def test_the_same_run_again_replaces_its_rows(tmp_path):
    path = tmp_path / "r.csv"
    append_rows(path, [row(), row(dataset="syn-flickr"), row(run="other")])
    append_rows(path, [row(notes="again"), row(dataset="syn-flickr", notes="again")])
    df = load_results(path)
    assert len(df) == 3 and df["run"].tolist() == ["other", "tiny", "tiny"]
    assert (df[df["run"] == "tiny"]["notes"] == "again").all()
    append_rows(path, [row(seed=1)])  # another seed is another row
    assert len(load_results(path)) == 4


def test_a_results_file_with_a_foreign_column_is_one_line_and_kept(tmp_path):
    from common.errors import DataError

    path = tmp_path / "r.csv"
    path.write_text("chapter,run,mystery\nshre,tiny,1\n")
    before = path.read_bytes()
    with pytest.raises(DataError, match=r"existing file .* unknown result columns \['mystery'\].*"
                                        r"move the file aside") as err:
        append_rows(path, [row()])
    assert "\n" not in str(err.value) and path.read_bytes() == before
