"""The thesis's findings, each checked against result CSVs with a stated rule.

A finding is a list of comparisons "A is above B" on one metric of one test set, B being
another run, the same run on another metric (image->text vs text->image: paired by seed),
or chance. For each comparison the difference of the means over seeds is set against its
standard error (Welch, sqrt(s_A^2/n_A + s_B^2/n_B); paired: the std of the per-seed
differences / sqrt(n); against chance: s_A/sqrt(n_A)):

- **holds**: the difference exceeds two standard errors;
- **reversed**: it is below minus two standard errors;
- **unclear**: in between, or fewer than two seeds on every side.

A finding *holds* when every comparison holds, *does not hold* when none does, and is
*mixed* otherwise. The thesis's own numbers (``results/reference/thesis.csv``) stand
beside the tiny ones where the thesis reports the same comparison.

    python -m eval.findings                        # the committed reference CSVs (3 seeds)
    python -m eval.findings 'results/*/*.csv'      # your own runs
    make findings                                  # the same as the first line

Writes ``findings.md`` and ``findings.png`` to ``--out`` (default ``results/findings/``) and
prints the report.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.errors import UserError  # noqa: E402
from common.experiment import markdown_table  # noqa: E402
from common.paths import REPO_ROOT, results_dir  # noqa: E402
from common.results import load_results  # noqa: E402
from eval.compare import strip_seed, with_mean_recall  # noqa: E402

log = logging.getLogger("eval.findings")

REFERENCE_TINY = REPO_ROOT / "results" / "reference" / "tiny"
THESIS_CSV = REPO_ROOT / "results" / "reference" / "thesis.csv"
# images per retrieval test set (chance R@k = 100 k / images) and classes per label set
TEST_IMAGES = {"syn-coco": 5000, "syn-flickr": 1000, "coco5k": 5000, "flickr1k": 1000}
CLASSES = {"syn-imagenet": 100, "imagenet": 1000, "syn-knn100": 100, "syn-knn10": 10,
           "cifar100": 100, "cifar10": 10}
THESIS_DATASET = {"syn-coco": "coco5k", "syn-flickr": "flickr1k", "syn-imagenet": "imagenet"}
RETRIEVAL_SETS = ("syn-coco", "syn-flickr")
MEAN_RECALLS = ("i2t_mean_recall", "t2i_mean_recall")


@dataclass(frozen=True)
class Side:
    """The rows of one run: ``chapter`` and ``run`` (seed suffix dropped), optionally only
    the models whose name ends with ``model``; ``thesis`` names the thesis.csv run in the
    same role (empty: the thesis reports none)."""

    chapter: str
    run: str
    label: str
    model: str = ""
    thesis: str = ""


@dataclass(frozen=True)
class Comparison:
    """``a`` on ``metric`` above ``b`` on ``b_metric`` (default: the same metric) of
    ``dataset``; ``b=None`` compares with chance."""

    a: Side
    b: Optional[Side]
    metric: str
    dataset: str
    b_metric: str = ""


@dataclass
class Finding:
    key: str
    claim: str
    chapter: str
    comparisons: List[Comparison]
    note: str = ""
    results: List[Dict] = field(default_factory=list)
    verdict: str = ""


def _grid(a: Side, b: Optional[Side], metrics: Sequence[str] = MEAN_RECALLS,
          datasets: Sequence[str] = RETRIEVAL_SETS) -> List[Comparison]:
    return [Comparison(a, b, m, d) for d in datasets for m in metrics]


def findings() -> List[Finding]:
    """The thesis's findings as the tiny presets can test them (see the chapter READMEs)."""
    shre = Side("shre", "shre", "SHRe", model="SHRe", thesis="thesis-shre")
    ssa = {r: Side("separate_self_attention", r, label, thesis=t) for r, label, t in [
        ("mm-d2v2", "MM-D2V2 (2+1)", "thesis-mm-d2v2-beitv2"),
        ("mm-d2v2-7", "MM-D2V2 7 (3+1)", "thesis-mm-d2v2-7"),
        ("mm-d2v2-7_2", "MM-D2V2 7_2 (2+2)", "thesis-mm-d2v2-7_2"),
        ("unimodal-pair", "unimodal pair", "thesis-d2v2-pair")]}
    itc = {r: Side("itc_ablation", r, label, thesis=t) for r, label, t in [
        ("sx3hre-itc", "ITC", "thesis-sx3hre-itc"), ("sx3hre-cos", "cos", "thesis-sx3hre-cos"),
        ("sx3hre-no-itc", "-ITC", "thesis-sx3hre-noitc"), ("sx3hre-itc-bank", "ITC + bank", "")]}
    teachers = {r: Side("teacher_comparison", r, f"{r} teacher", model=f"({r} teacher)", thesis=t)
                for r, t in [("tiny-clr", "thesis-mm-d2v2-beitv2"), ("tiny-dino", "thesis-mm-d2v2-beitv2"),
                             ("tiny-d2v", "thesis-mm-d2v2-d2v2")]}
    distilled = Side("unimodal_vision_kd", "vision_kd", "distilled student", model="(distilled)")
    untrained = Side("unimodal_vision_kd", "vision_kd", "untrained student", model="(untrained)")
    asym = [Comparison(s, s, "i2t_mean_recall", d, b_metric="t2i_mean_recall")
            for s in [ssa["mm-d2v2"], ssa["mm-d2v2-7"], ssa["mm-d2v2-7_2"], itc["sx3hre-itc"],
                      itc["sx3hre-cos"], itc["sx3hre-no-itc"]] for d in RETRIEVAL_SETS]
    return [
        Finding("shre-aligns", "SHRe (logit KD from a supervised teacher + ITC) aligns images "
                "and captions: retrieval and zero-shot classification above chance", "shre",
                _grid(shre, None, ("i2t_r1", "t2i_r1")) + [Comparison(shre, None, "zs_top1", "syn-imagenet")]),
        Finding("feature-kd-aligns", "Feature KD alone (both CLS regress the image teacher's CLS) "
                "aligns the modalities: MM-D2V2 above the never-aligned unimodal pair",
                "separate_self_attention", _grid(ssa["mm-d2v2"], ssa["unimodal-pair"])),
        Finding("itc-cos-noitc", "ITC > cos > -ITC (alignment term of Sx3HRe)", "itc_ablation",
                _grid(itc["sx3hre-itc"], itc["sx3hre-cos"]) + _grid(itc["sx3hre-cos"], itc["sx3hre-no-itc"])),
        Finding("i2t-over-t2i", "Image->text retrieval beats text->image (every distilled "
                "student of chapters 3-4)", "separate_self_attention, itc_ablation", asym),
        Finding("7_2-base-7", "One more shared block helps, one more specific block does not: "
                "7_2 > baseline > 7", "separate_self_attention",
                _grid(ssa["mm-d2v2-7_2"], ssa["mm-d2v2"]) + _grid(ssa["mm-d2v2"], ssa["mm-d2v2-7"])),
        Finding("cls-teacher", "A teacher that trains its CLS directly (BEiT v2-like; tiny: "
                "tiny-clr, tiny-dino) beats one whose CLS regresses the mean of its patch "
                "targets (data2vec 2.0-like; tiny: tiny-d2v)", "teacher_comparison",
                _grid(teachers["tiny-clr"], teachers["tiny-d2v"])
                + _grid(teachers["tiny-dino"], teachers["tiny-d2v"]),
                note="thesis: BEiT v2 vs data2vec 2.0 image teacher of MM-D2V2 (chapter 3, Table 6)"),
        Finding("vision-student", "The distilled vision student beats the same network untrained "
                "(kNN, linear probe, fine-tuning)", "unimodal_vision_kd",
                [Comparison(distilled, untrained, m, d) for m, d in
                 [("knn_top1", "syn-knn100"), ("knn_top1", "syn-knn10"),
                  ("ft_top1", "syn-knn100 (linear probe)"), ("ft_top1", "syn-knn100 (fine-tune)")]],
                note="the thesis drafts give no numbers for this comparison in THESIS.md"),
        Finding("bank-over-batch", "A memory bank of past embeddings (more negatives) beats "
                "batch ITC", "itc_ablation", _grid(itc["sx3hre-itc-bank"], itc["sx3hre-itc"]),
                note="the thesis's plan; it reports no bank numbers"),
    ]


# ---------------------------------------------------------------------------- evidence
def per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One value per (chapter, run without seed suffix, model, dataset, seed) and metric:
    the newest non-empty one (a rerun counts once); mean recalls filled from R@1/5/10."""
    df = with_mean_recall(df[~df["reference"]]).sort_values("timestamp", kind="stable")
    df = df.assign(run=[strip_seed(r, s) for r, s in zip(df["run"], df["seed"])])
    keys = ["chapter", "run", "model", "dataset", "seed"]
    return df.groupby(keys, dropna=False, sort=False).last().reset_index()


def side_values(table: pd.DataFrame, side: Side, metric: str, dataset: str) -> pd.Series:
    """``metric`` of ``side`` on ``dataset`` by seed (NaN-free)."""
    rows = table[(table["chapter"] == side.chapter) & (table["run"] == side.run)
                 & (table["dataset"] == dataset)]
    if side.model:
        rows = rows[rows["model"].astype(str).str.endswith(side.model)]
    values = rows.dropna(subset=[metric]).groupby("seed")[metric].last()
    return values.astype(float)


def chance(metric: str, dataset: str) -> float:
    """Chance level of ``metric`` on ``dataset`` in percent (R@k: k / images; mean recall:
    the mean of R@1/5/10; top-1 of a label set: 1 / classes)."""
    if metric.startswith(("i2t_", "t2i_")):
        images = TEST_IMAGES[dataset]
        k = {"r1": 1, "r5": 5, "r10": 10, "mean_recall": 16 / 3}[metric.split("_", 1)[1]]
        return 100.0 * k / images
    return 100.0 / CLASSES[dataset.split(" (")[0]]  # "syn-knn100 (linear probe)": its label set


def judge(diff: float, se: float, enough: bool) -> str:
    if not enough or math.isnan(diff):
        return "unclear"
    if diff > 2 * se:
        return "holds"
    return "reversed" if diff < -2 * se else "unclear"


def compare(table: pd.DataFrame, c: Comparison) -> Dict:
    """The numbers and the verdict of one comparison."""
    a = side_values(table, c.a, c.metric, c.dataset)
    b_metric = c.b_metric or c.metric
    if c.b is None:
        level = chance(c.metric, c.dataset)
        b, diff = None, a.mean() - level
        se = a.std() / math.sqrt(len(a)) if len(a) > 1 else math.nan
        enough, b_text = len(a) > 1, f"chance {level:.2f}"
    else:
        b = side_values(table, c.b, b_metric, c.dataset)
        if c.a == c.b:  # one run on two metrics: paired by seed
            d = (a - b).dropna()
            diff = d.mean()
            se, enough = (d.std() / math.sqrt(len(d)), True) if len(d) > 1 else (math.nan, False)
        else:
            diff = a.mean() - b.mean()
            parts = [s.var() / len(s) for s in (a, b) if len(s) > 1]
            se, enough = math.sqrt(sum(parts)), bool(parts) and len(a) > 0 and len(b) > 0
        b_text = _mean_std(b)
    verdict = judge(diff, 0.0 if math.isnan(se) else se, enough)
    return {"a": c.a.label + ("" if not c.b_metric else f" {_direction(c.metric)}"),
            "b": ("chance" if c.b is None else c.b.label + ("" if not c.b_metric else f" {_direction(b_metric)}")),
            "dataset": c.dataset, "metric": _metric_name(c.metric if not c.b_metric else "mean_recall"),
            "tiny A": _mean_std(a), "tiny B": b_text, "A - B": _num(diff), "2 SE": _num(2 * se),
            "t": diff / se if se and not math.isnan(se) else math.nan, "verdict": verdict}


def _direction(metric: str) -> str:
    return "i2t" if metric.startswith("i2t") else "t2i"


def _metric_name(metric: str) -> str:
    return metric.replace("_mean_recall", " mean recall").replace("_r1", " R@1").replace("_top1", " top-1")


def _num(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _mean_std(values: pd.Series) -> str:
    if values is None or len(values) == 0:
        return "missing"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f} (n=1)"
    return f"{values.mean():.2f} ± {values.std():.2f} (n={len(values)})"


def thesis_pair(thesis: pd.DataFrame, c: Comparison) -> Tuple[str, str]:
    """The thesis's numbers for the two sides of ``c`` ('' where it reports none)."""
    dataset = THESIS_DATASET.get(c.dataset, "")

    def value(side: Optional[Side], metric: str) -> str:
        if side is None:
            return f"chance {chance(metric, dataset):.2f}" if dataset in TEST_IMAGES or dataset in CLASSES else ""
        if not side.thesis or not dataset:
            return ""
        rows = thesis[(thesis["run"] == side.thesis) & (thesis["dataset"] == dataset)][metric].dropna()
        return f"{rows.iloc[0]:.2f}" if len(rows) else ""

    return value(c.a, c.metric), value(c.b, c.b_metric or c.metric)


def verdict(results: Sequence[Dict]) -> str:
    held = sum(r["verdict"] == "holds" for r in results)
    if held == len(results):
        return "holds"
    return "does not hold" if held == 0 else "mixed"


def evaluate(df: pd.DataFrame, thesis: pd.DataFrame) -> List[Finding]:
    table = per_seed(df)
    out = findings()
    for f in out:
        f.results = []
        for c in f.comparisons:
            row = compare(table, c)
            row["thesis A"], row["thesis B"] = thesis_pair(thesis, c)
            f.results.append(row)
        f.verdict = verdict(f.results)
    return out


# ---------------------------------------------------------------------------- report
RULE = ("A comparison holds when A - B exceeds two standard errors (2 SE) over seeds, is "
        "reversed below minus two, unclear otherwise; a finding holds when all its comparisons "
        "hold, does not hold when none does, and is mixed otherwise (`eval/findings.py`).")
COLUMNS = ["a", "b", "dataset", "metric", "tiny A", "tiny B", "A - B", "2 SE", "verdict",
           "thesis A", "thesis B"]


def summary(found: Sequence[Finding]) -> str:
    """One line per finding: its claim, chapter, verdict and how many comparisons hold."""
    rows = [{"finding": f"{i}. `{f.key}`: {f.claim}", "chapter": f.chapter, "verdict": f.verdict,
             "holding": f"{sum(r['verdict'] == 'holds' for r in f.results)}/{len(f.results)}"}
            for i, f in enumerate(found, 1)]
    return markdown_table(rows, ["finding", "chapter", "verdict", "holding"])


def report(found: Sequence[Finding], sources: Sequence[str], seeds: int) -> str:
    lines = ["# Thesis findings at tiny scale", "",
             f"Evidence: {', '.join(sources)} (up to {seeds} seeds per run). {RULE}", "",
             summary(found), ""]
    for i, f in enumerate(found, 1):
        lines += [f"## {i}. {f.key}: {f.verdict}", "", f.claim + ("" if not f.note else f" ({f.note})."), "",
                  markdown_table(f.results, COLUMNS), ""]
    return "\n".join(lines)


def figure(found: Sequence[Finding], path: Path) -> Path:
    """Every comparison's (A - B) / SE, one row each, grouped by finding; the dashed lines
    are the +/- 2 SE thresholds of the rule."""
    rows = [(f"{i}. {f.key}: {r['a']} vs {r['b']}, {r['dataset']}, {r['metric']}", r["t"], r["verdict"])
            for i, f in enumerate(found, 1) for r in f.results]
    colours = {"holds": "#1a9850", "reversed": "#d73027", "unclear": "#999999"}
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    t = np.array([r[1] for r in rows], dtype=float)
    shown = np.clip(np.nan_to_num(t, nan=0.0), -20, 20)
    ax.scatter(shown, y, c=[colours[r[2]] for r in rows], s=18, zorder=3)
    for x in (-2, 2):
        ax.axvline(x, color="black", linestyle="--", linewidth=0.8)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_yticks(y)
    ax.set_yticklabels([r[0] for r in rows], fontsize=6)
    ax.set_xlabel("(A - B) / standard error over seeds (clipped at ±20)")
    ax.set_title("Thesis findings at tiny scale: green holds, red reversed, grey unclear", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def reference_findings() -> List[Finding]:
    """Every finding judged on the committed reference CSVs (what the README's block shows)."""
    return evaluate(load_results(str(REFERENCE_TINY / "*" / "*.csv")),
                    with_mean_recall(load_results(THESIS_CSV)))


def main(argv: Optional[Sequence[str]] = None) -> str:
    p = argparse.ArgumentParser(prog="python -m eval.findings", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="*", help="result CSVs or globs (default: the committed "
                                          "results/reference/tiny/*/*.csv)")
    p.add_argument("--out", type=Path, default=None, help="folder for findings.md and findings.png "
                                                          "(default: results/findings/)")
    args = p.parse_args(argv)
    sources = args.csv or [str(REFERENCE_TINY / "*" / "*.csv")]
    df = load_results(sources)
    if df.empty:
        raise UserError(f"no result rows in {', '.join(sources)}: run `SEEDS=3 make exp-all` "
                        f"(or pass your CSVs) first")
    found = evaluate(df, with_mean_recall(load_results(THESIS_CSV)))
    seeds = int(df["seed"].nunique())
    shown = [str(Path(s).relative_to(REPO_ROOT)) if Path(s).is_relative_to(REPO_ROOT) else s for s in sources]
    text = report(found, shown, seeds)
    out = args.out or results_dir("findings")
    out.mkdir(parents=True, exist_ok=True)
    (out / "findings.md").write_text(text + "\n")
    figure(found, out / "findings.png")
    print(text)
    return text


if __name__ == "__main__":
    from common.cli import main as cli_main
    cli_main(lambda: main(sys.argv[1:]))
