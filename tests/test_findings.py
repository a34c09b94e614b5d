"""eval.findings: the rule on hand-computed cases, and every finding judged on the committed
reference CSVs."""
import math

import pytest

from eval import findings as F
from common.results import append_rows


def _rows(chapter, run, metric_values, dataset="syn-coco", model="m"):
    return [{"chapter": chapter, "run": run, "model": model, "preset": "tiny", "dataset": dataset,
             "seed": seed, **{m: v[seed] for m, v in metric_values.items()}}
            for seed in range(len(next(iter(metric_values.values()))))]


def test_welch_paired_and_chance_comparisons_by_hand(tmp_path):
    path = tmp_path / "r.csv"
    # A: 10, 12, 14 (mean 12, sd 2); B: 5, 6, 7 (mean 6, sd 1): SE = sqrt(4/3 + 1/3) = 1.291
    append_rows(path, _rows("c", "a", {"i2t_r1": [10, 12, 14], "t2i_r1": [9, 12, 14]}))
    append_rows(path, _rows("c", "b", {"i2t_r1": [5, 6, 7], "t2i_r1": [12, 13, 14]}))
    table = F.per_seed(F.load_results(str(path)))
    a, b = F.Side("c", "a", "A"), F.Side("c", "b", "B")
    welch = F.compare(table, F.Comparison(a, b, "i2t_r1", "syn-coco"))
    assert welch["A - B"] == "6.00" and welch["2 SE"] == f"{2 * math.sqrt(5 / 3):.2f}" == "2.58"
    assert welch["verdict"] == "holds" and welch["tiny A"] == "12.00 ± 2.00 (n=3)"
    # the other way round on t2i: 11.67 vs 13: diff -1.33, SE sqrt(6.33/3 + 1/3) = 1.56: unclear
    assert F.compare(table, F.Comparison(a, b, "t2i_r1", "syn-coco"))["verdict"] == "unclear"
    assert F.compare(table, F.Comparison(b, a, "i2t_r1", "syn-coco"))["verdict"] == "reversed"
    # paired: i2t - t2i of run a per seed = 1, 0, 0: mean 0.33, sd 0.577, SE 0.333: unclear
    paired = F.compare(table, F.Comparison(a, a, "i2t_r1", "syn-coco", b_metric="t2i_r1"))
    assert paired["A - B"] == "0.33" and paired["2 SE"] == "0.67" and paired["verdict"] == "unclear"
    # against chance: R@1 on 5000 images is 0.02 %
    vs_chance = F.compare(table, F.Comparison(b, None, "i2t_r1", "syn-coco"))
    assert vs_chance["tiny B"] == "chance 0.02" and vs_chance["verdict"] == "holds"
    assert F.chance("i2t_mean_recall", "syn-flickr") == pytest.approx(100 * 16 / 3 / 1000)
    assert F.chance("zs_top1", "syn-imagenet") == 1.0
    # one seed is never enough, and a missing side is unclear
    one = tmp_path / "one.csv"
    append_rows(one, _rows("c", "a", {"i2t_r1": [10]}) + _rows("c", "b", {"i2t_r1": [5]}))
    t1 = F.per_seed(F.load_results(str(one)))
    assert F.compare(t1, F.Comparison(a, b, "i2t_r1", "syn-coco"))["verdict"] == "unclear"
    assert F.compare(t1, F.Comparison(a, F.Side("c", "zz", "Z"), "i2t_r1", "syn-coco"))["tiny B"] == "missing"


def test_finding_verdicts_from_their_comparisons():
    assert F.verdict([{"verdict": "holds"}] * 3) == "holds"
    assert F.verdict([{"verdict": "holds"}, {"verdict": "unclear"}]) == "mixed"
    assert F.verdict([{"verdict": "reversed"}, {"verdict": "unclear"}]) == "does not hold"


def test_every_finding_is_judged_on_the_committed_reference_csvs(tmp_path):
    text = F.main(["--out", str(tmp_path)])
    found = F.evaluate(F.load_results(str(F.REFERENCE_TINY / "*" / "*.csv")),
                       F.with_mean_recall(F.load_results(F.THESIS_CSV)))
    assert len(found) == 8 and all(f.verdict in ("holds", "does not hold", "mixed") for f in found)
    for f in found:  # every comparison has its tiny evidence, three seeds a side
        for r in f.results:
            assert r["tiny A"].endswith("(n=3)"), (f.key, r)
            assert r["tiny B"].startswith("chance") or r["tiny B"].endswith(("(n=3)", "(n=1)")), (f.key, r)
    assert (tmp_path / "findings.png").stat().st_size > 10_000
    assert (tmp_path / "findings.md").read_text().strip() == text.strip()
    assert "41.36" in text  # the thesis's SHRe COCO R@1 beside the tiny one
