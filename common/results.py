"""The results-CSV schema every chapter and eval CLI writes, and how to read it back.

One row per (run, dataset, metric set): a retrieval row fills ``i2t_*``/``t2i_*``, a
zero-shot row ``zs_*``, a kNN row ``knn_*``, a fine-tuning / linear-probe row ``ft_*``, a
GLUE row ``glue_score`` (the task's official metric, task in ``dataset``); the rest stay
empty. Recalls and accuracies are in percent. ``reference`` marks numbers copied from the
thesis or other papers (``results/reference.csv``) rather than produced by this code.

Unknown keys are an error naming them (a typo like ``i2t_r01`` would otherwise become a
silent new column); add a column to :data:`COLUMNS` when a chapter needs one. Old files
written with fewer columns are upgraded in place on the next append.
"""
from __future__ import annotations

import csv
import functools
import glob
import os
import re
import stat
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
from filelock import FileLock

from common.errors import DataError
from common.paths import REPO_ROOT

COLUMNS: tuple[str, ...] = (
    "chapter", "run", "model", "teacher", "preset", "dataset",
    "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
    "zs_top1", "zs_top5", "knn_top1", "knn_top3", "ft_top1", "ft_top5", "glue_score",
    "i2t_mean_recall", "t2i_mean_recall",
    # mean cosine of matching / non-matching pairs after the modality encoders and the shared blocks
    "cos_pos_encoder", "cos_neg_encoder", "cos_pos_shared", "cos_neg_shared",
    # spread of an image embedding over the kNN bank: mean cosine between different images and
    # the share of its energy that varies across images (common.retrieval.embedding_spread)
    "emb_mean_cos", "emb_var_frac",
    "params_m", "train_minutes", "steps", "seed",
    "git_sha", "timestamp", "reference",
    # the key=value overrides the run was started with (command line, then its variant's)
    "overrides", "notes",
)
INT_COLUMNS = ("steps", "seed")
TEXT_COLUMNS = ("chapter", "run", "model", "teacher", "preset", "dataset", "git_sha", "timestamp",
                "overrides", "notes")


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """Short commit of the repo, ``-dirty`` if it has local changes; "unknown" outside git."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def append_rows(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append ``rows`` to the CSV at ``path`` (created with a header if missing), atomically.

    Several processes may append to the same file: a ``FileLock`` on ``path + ".lock"``
    serialises them, and each append rewrites the file into a temp file beside it that
    replaces the original with ``os.replace``, so a crash at any point leaves either the
    old or the new file, never half a row. ``git_sha``, ``timestamp`` and ``reference``
    (False) are filled in where absent. Raises ``ValueError`` naming unknown keys.

    Idempotent: an existing row with the same :data:`ROW_KEY` as a new one (chapter, run,
    model, dataset, steps, seed: the same run evaluated again, e.g. a finished run started a
    second time) is replaced by it, not repeated. A file with columns this version does not
    know is one :class:`DataError` line and is left as it is.

    A write the OS refuses (disk full, no permission) is one :class:`DataError` line. Temp
    files: removed on any exception; one left by a writer killed mid-append (kill -9)
    is removed by the next append, which holds the lock, so no other writer owns it.
    """
    path = Path(path)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    new = [_complete(dict(r), now) for r in rows]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            _rewrite(path, new)
    except OSError as err:  # disk full, no permission: the old file is intact
        raise DataError(f"cannot write results to {path} ({err.strerror or err}); free space or "
                        f"make the folder writable (or set MMKD_RESULTS elsewhere) and run the "
                        f"same command again: the run's checkpoints are kept, so it only "
                        f"evaluates again") from err


def _rewrite(path: Path, new: list[dict[str, Any]]) -> None:
    """The locked part of :func:`append_rows`: old rows (less those ``new`` replaces) and
    ``new`` into a temp file that replaces ``path``."""
    _remove_orphan_temps(path)
    old = _read_rows(path)
    try:
        _check_keys(old, f"existing file {path}")
    except ValueError as err:
        raise DataError(f"{err}; move the file aside (or merge its columns) and rerun: the "
                        f"run's checkpoints are kept, so it only evaluates again") from None
    replaced = {_row_key(r) for r in new}
    old = [r for r in old if _row_key(r) not in replaced]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(old)
            writer.writerows(new)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)  # not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _remove_orphan_temps(path: Path) -> None:
    """Delete temp files of ``path`` (``tempfile.mkstemp`` names, as :func:`append_rows`
    makes them); call it only while holding the file's lock."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if pattern.fullmatch(tmp.name):
            tmp.unlink(missing_ok=True)


ROW_KEY = ("chapter", "run", "model", "dataset", "steps", "seed")


def _row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    """What identifies a row, as the CSV spells it (numbers and blanks read back as text)."""
    return tuple("" if row.get(k) is None else str(row.get(k)) for k in ROW_KEY)


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _complete(row: dict[str, Any], now: str) -> dict[str, Any]:
    _check_keys([row], "row")
    row.setdefault("git_sha", git_sha())
    row.setdefault("timestamp", now)
    row.setdefault("reference", False)
    return row


def _check_keys(rows: Sequence[Mapping[str, Any]], where: str) -> None:
    unknown = sorted({k for r in rows for k in r} - set(COLUMNS))
    if unknown:
        raise ValueError(f"{where} has unknown result columns {unknown}; known: {', '.join(COLUMNS)} "
                         f"(add new ones to common.results.COLUMNS)")


def load_results(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Read result CSVs (paths or glob patterns, ``**`` allowed) into one DataFrame.

    Columns come in :data:`COLUMNS` order (missing ones empty), text columns stay strings
    (a sha like ``1e5`` is not a number) and ``reference`` is boolean. A pattern matching
    nothing contributes no rows; a plain path that does not exist is a :class:`DataError`.
    """
    if isinstance(paths_or_globs, (str, os.PathLike)):
        paths_or_globs = [paths_or_globs]
    files: list[str] = []
    for item in map(str, paths_or_globs):
        if glob.has_magic(item):
            files.extend(sorted(glob.glob(item, recursive=True)))
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise DataError(f"results file {item} does not exist; run the chapter first or pass a glob")
    frames = [pd.read_csv(f, dtype={c: "string" for c in TEXT_COLUMNS}, keep_default_na=True)
              for f in files]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="string" if c in TEXT_COLUMNS else "bool" if c == "reference"
                                          else "Int64" if c in INT_COLUMNS else "float64") for c in COLUMNS})
    df = pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS)
    df["reference"] = df["reference"].astype("string").str.lower().isin(["true", "1"])
    for c in INT_COLUMNS:  # whole numbers even where a file leaves them empty: seed=0 reads "0", not "0.0"
        df[c] = pd.to_numeric(df[c]).astype("Int64")
    return df
