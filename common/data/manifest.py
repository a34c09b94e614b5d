"""``manifest.json``: what ``python -m common.data.prepare NAME`` produced in a dataset folder.

Every prepared folder carries one: the dataset name, per-split counts (``count`` items, and
``skipped`` ones with a reason, e.g. unavailable CC3M urls or missing COCO images) and the
settings that made it. It is written last and atomically, so its presence means "finished":
``prepare`` skips a folder whose manifest matches the requested settings, and loaders refuse a
folder without one with a line that names the command to run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from common.errors import DataError

MANIFEST = "manifest.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: readers (and a resumed
    run after a crash) see the old file or the whole new one, never half of it."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_manifest(folder: Path, dataset: str, splits: Dict[str, Dict[str, int]],
                   settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Record ``splits`` (``{split: {"count": n, "skipped": m, ...}}``) for ``dataset``."""
    manifest = {"dataset": dataset, "splits": splits, "settings": settings or {}}
    write_atomic(folder / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def read_manifest(folder: Path) -> Optional[Dict[str, Any]]:
    """The manifest of ``folder``, or None when it was never (completely) prepared."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path} is not valid JSON; delete it and rerun "
                        f"python -m common.data.prepare") from None


def finished(folder: Path, dataset: str, settings: Optional[Dict[str, Any]] = None) -> bool:
    """True when ``folder`` already holds ``dataset`` prepared with the same ``settings``."""
    manifest = read_manifest(folder)
    return (manifest is not None and manifest.get("dataset") == dataset
            and manifest.get("settings", {}) == (settings or {}))


def require_manifest(folder: Path, dataset: str) -> Dict[str, Any]:
    """The manifest of a prepared ``folder``; a :class:`DataError` naming the prepare command
    when the folder exists but was not prepared (or not to the end)."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("dataset") != dataset:
        raise DataError(f"{folder} has no {MANIFEST} for '{dataset}': it was not prepared (or "
                        f"preparation stopped early); run python -m common.data.prepare "
                        f"{dataset} --root {folder.parent}")
    return manifest
