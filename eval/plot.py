"""The thesis figures from the result CSVs and training logs, as PNG and PDF in results/figures/.

- ``recall_bars``: R@1/5/10 in both directions per model, one panel per test set, this
  repo's runs beside the published numbers (hatched; results/reference/);
- ``asymmetry``: image->text vs text->image mean recall per model (the thesis' Table 8
  observation: every model retrieves captions better than images);
- ``zero_shot``: zero-shot top-1 per model (the thesis' Table 4: random, Visual N-Grams, CLIP);
- ``curves_<chapter>_<run>``: each run's ``metrics.jsonl``: loss terms, learning rate,
  throughput, validation metrics;
- ``teacher_comparison``: teacher quality vs the student's retrieval (rows of
  results/teacher_comparison/: ``teacher:<name>`` rows carry the teacher's own accuracy).

A figure whose data is absent is skipped with one log line. Means over seeds, error bars =
std over seeds (:func:`eval.compare.aggregate`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.paths import results_dir, runs_dir  # noqa: E402
from common.results import load_results  # noqa: E402
from eval.compare import IDENTITY, aggregate, default_paths  # noqa: E402

log = logging.getLogger("eval.plot")

RECALL_COLS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
RECALL_LABELS = ("image→text R@1", "R@5", "R@10", "text→image R@1", "R@5", "R@10")
RECALL_COLOURS = ("#08519c", "#4292c6", "#9ecae1", "#a63603", "#f16913", "#fdae6b")
DATASET_TITLES = {"coco5k": "MSCOCO 5k test", "flickr1k": "Flickr30K 1k test",
                  "imagenet": "ImageNet-1k val", "syn-coco": "synthetic COCO-like test (tiny)",
                  "syn-flickr": "synthetic Flickr-like test (tiny)",
                  "syn-imagenet": "synthetic 100-class set (tiny)"}
# what a teacher row may report about the teacher itself, in order of preference
TEACHER_QUALITY = {"ft_top1": "teacher top-1 accuracy (%)", "knn_top1": "teacher kNN top-1 (%)",
                   "zs_top1": "teacher zero-shot top-1 (%)"}
RUN_KEYS = ("step", "lr", "samples_per_sec")
EVAL_PREFIXES = ("zs_", "i2t_", "t2i_", "knn_", "ft_", "val_", "glue", "acc")


def save(fig: plt.Figure, out: Path, name: str) -> List[Path]:
    """Write ``name``.png (150 dpi) and ``name``.pdf under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s (+ .pdf)", paths[0])
    return paths


def _title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset, dataset)


def labels(table: pd.DataFrame) -> List[str]:
    """Bar/point labels: the model, plus teacher or run where two rows share a model."""
    model = table["model"].fillna(table["run"]).astype(str)
    dup = model.duplicated(keep=False)
    teacher = table["teacher"].fillna("").astype(str)
    out = [f"{m} ({t})" if d and t else m for m, d, t in zip(model, dup, teacher)]
    seen: Dict[str, int] = {}
    for i, name in enumerate(out):  # still ambiguous: add the run
        seen[name] = seen.get(name, 0) + 1
    return [f"{n} [{r}]" if seen[n] > 1 else n for n, r in zip(out, table["run"].astype(str))]


def retrieval_table(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    table = aggregate(df, list(IDENTITY), list(metrics))
    return table.dropna(subset=[m for m in metrics], how="all")


# ---------------------------------------------------------------------------- figures
def recall_bars(df: pd.DataFrame, out: Path) -> List[Path]:
    table = retrieval_table(df, RECALL_COLS)
    if table.empty:
        log.info("recall_bars: no retrieval rows, skipped")
        return []
    datasets = list(dict.fromkeys(table["dataset"]))
    widest = max((table["dataset"] == d).sum() for d in datasets)
    fig, axes = plt.subplots(len(datasets), 1, squeeze=False, layout="constrained",
                             figsize=(max(8.0, 1.0 * widest + 2), 3.6 * len(datasets)))
    for ax, dataset in zip(axes[:, 0], datasets):
        part = table[table["dataset"] == dataset]
        order = part[list(RECALL_COLS)].mean(axis=1)  # runs first, then by mean recall
        part = part.assign(_order=order).sort_values(["reference", "_order"], kind="stable")
        part = part.reset_index(drop=True)
        x = np.arange(len(part))
        width = 0.8 / len(RECALL_COLS)
        for j, (col, label, colour) in enumerate(zip(RECALL_COLS, RECALL_LABELS, RECALL_COLOURS)):
            err = part[f"{col}_std"].where(part["n"] > 1)
            ax.bar(x + (j - 2.5) * width, part[col], width, yerr=err, color=colour, label=label,
                   hatch=["//" if r else "" for r in part["reference"]], edgecolor="white",
                   linewidth=0.3, capsize=2)
        ax.set_xticks(x, labels(part), rotation=25, ha="right", fontsize=8)
        span, centre = max(len(part), 4), (len(part) - 1) / 2  # bars keep their width
        ax.set_xlim(centre - span / 2, centre + span / 2)
        ax.set_ylabel("recall (%)")
        ax.set_ylim(0, 105)
        ax.set_title(_title(dataset), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in RECALL_COLOURS]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="grey", hatch="//"))
    names = [*RECALL_LABELS, "published (thesis / paper)"]
    fig.suptitle("Zero-shot retrieval recall per model (error bars: std over seeds)")
    fig.legend(handles, names, loc="outside lower center", ncol=7, fontsize=8)
    return save(fig, out, "recall_bars")


def asymmetry(df: pd.DataFrame, out: Path) -> List[Path]:
    table = retrieval_table(df, ("i2t_mean_recall", "t2i_mean_recall"))
    table = table.dropna(subset=["i2t_mean_recall", "t2i_mean_recall"])
    if table.empty:
        log.info("asymmetry: no rows with all of R@1/5/10, skipped")
        return []
    datasets = list(dict.fromkeys(table["dataset"]))
    tallest = max((table["dataset"] == d).sum() for d in datasets)
    fig, axes = plt.subplots(1, len(datasets), squeeze=False, layout="constrained",
                             figsize=(4.8 * len(datasets), 1.2 + 0.32 * tallest))
    for ax, dataset in zip(axes[0], datasets):
        part = table[table["dataset"] == dataset]
        part = part.sort_values(["reference", "i2t_mean_recall"], ascending=[False, True],
                                kind="stable").reset_index(drop=True)
        y = np.arange(len(part))
        ax.hlines(y, part["t2i_mean_recall"], part["i2t_mean_recall"], color="grey", lw=1)
        for key, colour, name in (("i2t_mean_recall", "#08519c", "image→text"),
                                  ("t2i_mean_recall", "#a63603", "text→image")):
            ax.errorbar(part[key], y, xerr=part[f"{key}_std"].where(part["n"] > 1), fmt="o",
                        color=colour, label=name, capsize=2, ms=5)
        names = [f"{n} *" if r else n for n, r in zip(labels(part), part["reference"])]
        ax.set_yticks(y, names, fontsize=8)
        ax.set(title=_title(dataset), xlabel="mean of R@1, R@5, R@10 (%)")
        right = float(part[["i2t_mean_recall", "t2i_mean_recall"]].max().max())
        ax.set_xlim(0, max(1.0, right) * 1.08)
        ax.set_ylim(-0.6, max(len(part), 4) - 0.4)  # same row spacing in every panel
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Retrieval asymmetry: image→text vs text→image mean recall (* published)")
    return save(fig, out, "asymmetry")


def zero_shot(df: pd.DataFrame, out: Path) -> List[Path]:
    table = retrieval_table(df, ("zs_top1",)).dropna(subset=["zs_top1"])
    if table.empty:
        log.info("zero_shot: no zero-shot rows, skipped")
        return []
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), squeeze=False, layout="constrained",
                             figsize=(max(4.5, 1.1 * len(table) + 1.5), 4.2))
    for ax, dataset in zip(axes[0], datasets):
        part = table[table["dataset"] == dataset].sort_values("zs_top1").reset_index(drop=True)
        bars = ax.bar(labels(part), part["zs_top1"], yerr=part["zs_top1_std"].where(part["n"] > 1),
                      color=["#a63603" if r else "#08519c" for r in part["reference"]],
                      hatch=["//" if r else "" for r in part["reference"]], edgecolor="white",
                      capsize=3)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        span, centre = max(len(part), 3), (len(part) - 1) / 2  # a lone bar keeps a bar's width
        ax.set_xlim(centre - span / 2, centre + span / 2)
        ax.set_title(_title(dataset), fontsize=10)
        ax.set_ylabel("zero-shot top-1 (%)")
        ax.tick_params(axis="x", rotation=25, labelsize=8)
        for tick in ax.get_xticklabels():
            tick.set_ha("right")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("CLIP-style zero-shot classification (hatched: published)")
    return save(fig, out, "zero_shot")


def read_metrics(path: Path) -> pd.DataFrame:
    """One row per logged step of a ``metrics.jsonl`` (a torn last line is ignored)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return pd.DataFrame(records)


def split_keys(frame: pd.DataFrame) -> tuple[List[str], List[str]]:
    """(loss terms, validation metrics) of a metrics log: terms are logged on every training
    log line (those with ``lr``), metrics only on evaluation steps or by their name."""
    logged = frame[frame["lr"].notna()] if "lr" in frame else frame.iloc[0:0]
    terms, metrics = [], []
    for key in frame.columns:
        if key in RUN_KEYS:
            continue
        every_line = len(logged) and logged[key].notna().all()
        (terms if every_line and not key.startswith(EVAL_PREFIXES) else metrics).append(key)
    return terms, metrics


def curves(runs: Path, out: Path) -> List[Path]:
    paths = sorted(runs.glob("**/metrics.jsonl"))
    if not paths:
        log.info("curves: no metrics.jsonl under %s, skipped", runs)
        return []
    written = []
    for path in paths:
        frame = read_metrics(path)
        if frame.empty or "step" not in frame:
            continue
        name = "_".join(path.parent.relative_to(runs).parts)
        terms, metrics = split_keys(frame)
        fig, axes = plt.subplots(2, 2, figsize=(11, 7), layout="constrained")
        panels = [(axes[0, 0], terms, "logged terms", "value"),
                  (axes[0, 1], ["lr"], "learning rate", "lr (peak group)"),
                  (axes[1, 0], ["samples_per_sec"], "throughput", "samples / s"),
                  (axes[1, 1], metrics, "validation", "metric (%)")]
        for ax, keys, title, ylabel in panels:
            keys = [k for k in keys if k in frame and frame[k].notna().any()]
            for key in keys:
                sel = frame[["step", key]].dropna()
                ax.plot(sel["step"], sel[key], marker="o" if len(sel) < 15 else None, ms=3, label=key)
            ax.set(title=title, xlabel="step", ylabel=ylabel)
            if title == "logged terms" and keys and (frame[keys].fillna(1.0) > 0).all().all():
                ax.set_yscale("log")  # terms of very different size (KD vs ITC vs temperature)
                ax.set_title("logged terms (log scale)")
            ax.grid(alpha=0.3)
            if keys:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", color="grey")
        fig.suptitle(f"training curves: {path.parent.relative_to(runs)}")
        written += save(fig, out, f"curves_{name}")
    return written


def teacher_comparison(df: pd.DataFrame, out: Path) -> List[Path]:
    part = df[df["chapter"] == "teacher_comparison"]
    if part.empty:
        log.info("teacher_comparison: no rows of results/teacher_comparison/, skipped")
        return []
    is_teacher = part["model"].fillna("").str.startswith("teacher:")
    quality = aggregate(part[is_teacher], ["teacher"], list(TEACHER_QUALITY))
    students = retrieval_table(part[~is_teacher], ("i2t_mean_recall", "t2i_mean_recall"))
    students = students.dropna(subset=["i2t_mean_recall", "t2i_mean_recall"])
    if students.empty:
        log.info("teacher_comparison: no student retrieval rows, skipped")
        return []
    column = next((c for c in TEACHER_QUALITY if c in quality and quality[c].notna().any()), None)
    if column is not None:  # one value per teacher: the 100-class (CIFAR-100) forward kNN if there
        quality = quality.dropna(subset=[column])
        forward = quality[~quality["dataset"].astype(str).str.contains("reverse")]
        fine = forward[forward["dataset"].astype(str).str.endswith("100")]
        quality = fine if not fine.empty else (forward if not forward.empty else quality)
        quality_set = str(quality["dataset"].iloc[0])
    datasets = list(dict.fromkeys(students["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), squeeze=False, layout="constrained",
                             figsize=(5.5 * len(datasets), 4.5))
    for ax, dataset in zip(axes[0], datasets):
        sel = students[students["dataset"] == dataset].reset_index(drop=True)
        names = sel["teacher"].fillna("none").astype(str)
        if column is None:  # no teacher accuracies: students side by side
            x = np.arange(len(sel))
            ax.bar(x - 0.2, sel["i2t_mean_recall"], 0.4, label="image→text", color="#08519c")
            ax.bar(x + 0.2, sel["t2i_mean_recall"], 0.4, label="text→image", color="#a63603")
            ax.set_xticks(x, names, rotation=20, ha="right")
            ax.set_xlabel("teacher")
        else:
            xs = names.map(quality.groupby("teacher")[column].first())
            if xs.isna().any():  # students without a judged teacher (no distillation): a line
                for key, style, colour in (("i2t_mean_recall", "--", "#08519c"),
                                           ("t2i_mean_recall", ":", "#a63603")):
                    for yv, name in zip(sel.loc[xs.isna(), key], names[xs.isna()]):
                        ax.axhline(yv, ls=style, color=colour, lw=1)
                        who = "no teacher" if name == "none" else f"teacher {name}"
                        ax.annotate(f"{who} ({'i→t' if key.startswith('i2t') else 't→i'})",
                                    (0.01, yv), xycoords=("axes fraction", "data"), fontsize=7,
                                    xytext=(0, 2), textcoords="offset points", color=colour)
            judged = xs.notna()
            for key, marker, colour, label in (("i2t_mean_recall", "o", "#08519c", "image→text"),
                                               ("t2i_mean_recall", "s", "#a63603", "text→image")):
                ax.errorbar(xs[judged], sel.loc[judged, key], yerr=sel.loc[judged, f"{key}_std"].fillna(0),
                            fmt=marker, color=colour, label=label, capsize=3)
            # a teacher may train several students (e.g. raw and standardised targets): name the run
            for xv, yv, name in zip(xs[judged], sel.loc[judged, "i2t_mean_recall"], sel.loc[judged, "run"]):
                ax.annotate(name, (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(f"{TEACHER_QUALITY[column]}, {quality_set}")
            ax.margins(x=0.15)
        ax.set(title=_title(dataset), ylabel="student mean recall (%), error bars: std over seeds")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Importance of the teacher: teacher quality vs student retrieval")
    return save(fig, out, "teacher_comparison")


FIGURES: Dict[str, Callable[[pd.DataFrame, Path], List[Path]]] = {
    "recall_bars": recall_bars, "asymmetry": asymmetry, "zero_shot": zero_shot,
    "teacher_comparison": teacher_comparison}


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    p = argparse.ArgumentParser(prog="python -m eval.plot", description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="*", help="result CSVs or globs (default: results/*/*.csv and "
                                          "results/reference/*.csv)")
    p.add_argument("--runs", type=Path, default=None,
                   help="folder searched for metrics.jsonl (default: runs/, or $MMKD_RUNS)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: results/figures)")
    p.add_argument("--only", nargs="+", choices=[*FIGURES, "curves"], default=None,
                   help="draw only these figures")
    args = p.parse_args(argv)
    out = args.out or results_dir("figures")
    wanted = args.only or [*FIGURES, "curves"]
    df = load_results(args.csv or default_paths())
    written: List[Path] = []
    for name in wanted:
        written += curves(args.runs or runs_dir(), out) if name == "curves" else FIGURES[name](df, out)
    log.info("%d figure files in %s", len(written), out)
    return written


if __name__ == "__main__":
    from common.cli import main as cli_main
    cli_main(lambda: main(sys.argv[1:]))
