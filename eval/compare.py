"""Result CSVs side by side: one row per run (and dataset), mean and std over seeds.

Reads the chapters' and eval CLIs' rows (``results/*/*.csv``) and the published numbers
(``results/reference/*.csv``, marked ``ref``), groups rows by every identifying column but
the seed (or by ``--by``), and prints a markdown table of the metrics. Several seeds of one
setting are runs named ``<run>-seed<k>`` (trained with ``train.seed=k``): the suffix is
dropped before grouping, so they average into one line with ``n`` seeds. A seed that wrote
the same row twice (a rerun) counts once, with its newest values.

    python -m eval.compare                                    # everything
    python -m eval.compare --where dataset=coco5k,flickr1k --metrics i2t_mean_recall t2i_mean_recall
    python -m eval.compare results/shre/*.csv --by run --format csv
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from common.errors import UserError
from common.experiment import markdown_table
from common.paths import REPO_ROOT, results_dir
from common.results import COLUMNS, TEXT_COLUMNS, load_results

REFERENCE_DIR = REPO_ROOT / "results" / "reference"
RECALLS = {"i2t": ("i2t_r1", "i2t_r5", "i2t_r10"), "t2i": ("t2i_r1", "t2i_r5", "t2i_r10")}
NOT_METRICS = {*TEXT_COLUMNS, "params_m", "train_minutes", "steps", "seed", "reference"}
METRICS = tuple(c for c in COLUMNS if c not in NOT_METRICS)
IDENTITY = ("chapter", "run", "model", "teacher", "preset", "steps")
_SEED_SUFFIX = re.compile(r"[-_](?:seed|s)(\d+)$")


def default_paths() -> List[str]:
    """Every run's CSV under ``results/`` (or ``$MMKD_RESULTS``) plus the reference CSVs,
    each file once (without ``$MMKD_RESULTS`` the first glob already holds the second)."""
    found = [*results_dir().glob("*/*.csv"), *REFERENCE_DIR.glob("*.csv")]
    return [str(p) for p in dict.fromkeys(p.resolve() for p in found)]


def with_mean_recall(df: pd.DataFrame) -> pd.DataFrame:
    """Fill empty ``i2t_mean_recall`` / ``t2i_mean_recall`` (the thesis' Table 8 "average
    recall") from R@1/5/10 where all three are there, e.g. in reference rows."""
    df = df.copy()
    for direction, cols in RECALLS.items():
        column = f"{direction}_mean_recall"
        df[column] = df[column].fillna(df[list(cols)].mean(axis=1, skipna=False))
    return df


def strip_seed(run: Any, seed: Any) -> Any:
    """``shre-seed1`` with seed 1 -> ``shre``; names whose suffix is not their seed stay."""
    if not isinstance(run, str) or pd.isna(seed):
        return run
    match = _SEED_SUFFIX.search(run)
    return run[:match.start()] if match and int(match.group(1)) == int(seed) else run


def select(df: pd.DataFrame, where: Sequence[str]) -> pd.DataFrame:
    """Rows whose ``column`` is one of the comma-separated values of each ``column=v1,v2``."""
    for item in where:
        column, sep, values = item.partition("=")
        if not sep or column not in df.columns:
            raise UserError(f"--where {item!r} must be COLUMN=VALUE[,VALUE] with a column of "
                            f"{', '.join(COLUMNS)}")
        df = df[df[column].astype("string").isin(values.split(","))]
    return df


def aggregate(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per group of ``by`` + dataset + reference: ``n``, ``<m>`` mean and ``<m>_std``.

    First each (setting, seed), a setting being every :data:`IDENTITY` column plus dataset,
    keeps per metric its newest non-empty value: a rerun does not count twice, and a run's
    rows that fill other columns (zero-shot vs teacher accuracy) do not mix. Then the groups
    of ``by`` average over what they hold; ``n`` counts it (seeds, by default).
    """
    keys = list(dict.fromkeys([*by, "dataset", "reference"]))
    setting = list(dict.fromkeys([*IDENTITY, *keys, "seed"]))
    df = with_mean_recall(df).sort_values("timestamp", kind="stable", na_position="first")
    df["run"] = [strip_seed(r, s) for r, s in zip(df["run"], df["seed"])]
    df = df.dropna(how="all", subset=list(metrics))
    if df.empty:
        return pd.DataFrame(columns=[*keys, "n", *metrics])
    per_seed = df.groupby(setting, dropna=False, sort=False)[list(metrics)].last().reset_index()
    grouped = per_seed.groupby(keys, dropna=False, sort=False)[list(metrics)]
    out = pd.concat([grouped.mean(), grouped.std().add_suffix("_std")], axis=1)
    out.insert(0, "n", grouped.size())
    out = out.reset_index()
    return out.sort_values(["dataset", "reference", *[k for k in by if k != "dataset"]],
                           kind="stable", na_position="last").reset_index(drop=True)


def _cell(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.2f}" if n < 2 or pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def render(table: pd.DataFrame, by: Sequence[str], metrics: Sequence[str], fmt: str) -> str:
    """The aggregated table as markdown (``mean ± std``), plain text or CSV (separate std columns)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    keys = list(dict.fromkeys([*by, "dataset"]))
    rows: List[Dict[str, Any]] = []
    for rec in table.to_dict("records"):
        row = {k: "" if pd.isna(rec[k]) else _label(rec[k]) for k in keys}
        row["ref"] = "ref" if rec["reference"] else ""
        row["n"] = str(int(rec["n"]))
        row.update({m: _cell(rec[m], rec[f"{m}_std"], int(rec["n"])) for m in metrics})
        rows.append(row)
    columns = [*keys, "ref", "n", *metrics]
    if fmt == "plain":
        return pd.DataFrame(rows, columns=columns).to_string(index=False)
    return markdown_table(rows, columns)


def _label(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def main(argv: Optional[Sequence[str]] = None) -> str:
    text = build(argv)
    print(text)
    return text


def build(argv: Optional[Sequence[str]] = None) -> str:
    """The table ``python -m eval.compare <argv>`` prints (also what README result blocks
    hold, :mod:`eval.readme_tables`)."""
    p = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__.splitlines()[0],
                                epilog="\n".join(__doc__.splitlines()[-3:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="*", help="result CSVs or globs (default: results/*/*.csv and "
                                          "results/reference/*.csv)")
    p.add_argument("--by", nargs="+", default=list(IDENTITY), metavar="COLUMN",
                   help=f"columns that identify a row besides dataset (default: {' '.join(IDENTITY)})")
    p.add_argument("--metrics", nargs="+", default=None, choices=METRICS, metavar="METRIC",
                   help=f"metrics to show (default: every one stored with a value; mean "
                        f"recall is filled in from R@1/5/10 when asked for); of {', '.join(METRICS)}")
    p.add_argument("--where", nargs="+", default=[], metavar="COLUMN=VALUE",
                   help="keep rows whose column has one of the comma-separated values")
    p.add_argument("--no-reference", action="store_true", help="leave out the published numbers")
    p.add_argument("--format", choices=["markdown", "plain", "csv"], default="markdown")
    args = p.parse_args(argv)
    unknown = [c for c in args.by if c not in COLUMNS]
    if unknown:
        raise UserError(f"--by {' '.join(unknown)}: not result columns; choose from "
                        f"{', '.join(COLUMNS)}")
    df = select(load_results(args.csv or default_paths()), args.where)
    if args.no_reference:
        df = df[~df["reference"]]
    metrics = args.metrics or [m for m in METRICS if df[m].notna().any()]
    if df.empty or not metrics:
        raise UserError("no result rows to compare: run a chapter (e.g. make exp-shre) or an "
                        "eval CLI first, or check the CSV paths and --where filters")
    return render(aggregate(df, args.by, metrics), args.by, metrics, args.format)


if __name__ == "__main__":
    from common.cli import main as cli_main
    cli_main(lambda: main(sys.argv[1:]))
