"""CC3M through img2dataset: the thesis's "first N available images", as webdataset shards.

img2dataset (the open_clip / LAION downloader) turns a url list into resized images in tar
shards with their captions and per-shard success statistics. It pins ``pandas<3`` and
``webdataset<0.3``, which clash with this project's pins, so it runs as a command from its
own environment (``make img2dataset`` builds ``.venv-img2dataset``; any ``img2dataset`` on
``PATH`` or given with ``--img2dataset`` works too).

"The first N available" cannot be asked of img2dataset directly: it downloads whatever list
it gets. So the index is fed to it in rounds, in row order: each round takes the next rows
(as many as the success rate so far says are needed), runs img2dataset into
``cc3m/shards/round_<k>/`` and is marked done; the rounds stop once N images are there. The
index then keeps the first N successes by row (img2dataset stores each sample's row in its
json), so the subset is the same as the built-in downloader's. An interrupted preparation
reruns only the unfinished round. Images are resized so their shorter side is
``image_size`` (256: a RandomResizedCrop of 224 at scale >= 0.6 stays at or above full
resolution), never enlarged; the manifest keeps img2dataset's counts and failure reasons.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from common.data.cc3m import Row, read_index
from common.data.image_index import clean_caption
from common.data.manifest import finished, require_manifest, write_manifest
from common.data.webdataset_shards import read_shard, write_samples
from common.errors import DataError
from common.paths import REPO_ROOT

log = logging.getLogger(__name__)

TOOL_VENV = REPO_ROOT / ".venv-img2dataset"
DONE = ".done"


def find_img2dataset(explicit: str = "") -> Optional[str]:
    """The img2dataset command: ``explicit``, the project's tool environment, or ``PATH``."""
    if explicit:
        if not Path(explicit).is_file() and shutil.which(explicit) is None:
            raise DataError(f"--img2dataset {explicit} does not exist; pass the img2dataset "
                            f"executable (make img2dataset builds {TOOL_VENV}/bin/img2dataset)")
        return explicit
    local = TOOL_VENV / "bin" / "img2dataset"
    return str(local) if local.is_file() else shutil.which("img2dataset")


COUNTS = ("count", "successes", "failed_to_download", "failed_to_resize")


def _stats(folder: Path) -> Tuple[Counter, Counter]:
    """img2dataset's ``*_stats.json`` of ``folder`` summed: (counts, failure reasons)."""
    counts: Counter = Counter()
    reasons: Counter = Counter()
    for path in sorted(folder.glob("*_stats.json")):
        shard = json.loads(path.read_text())
        counts.update({k: int(shard.get(k, 0)) for k in COUNTS})
        reasons.update({k: v for k, v in shard.get("status_dict", {}).items() if k != "success"})
    return counts, reasons


def prepare_cc3m_img2dataset(root: Path, index: Optional[Path] = None, limit: int = 500_000,
                             image_size: int = 256, processes: int = 4, threads: int = 32,
                             retries: int = 3, timeout: float = 10.0, img2dataset: str = "",
                             force: bool = False) -> Dict:
    """The first ``limit`` available images of the CC3M ``index`` as webdataset shards in
    ``root/cc3m/shards``, indexed as split ``train``; returns the manifest."""
    folder = Path(root) / "cc3m"
    index = Path(index) if index else folder / "Train_GCC-training.tsv"
    settings = {"index": index.name, "limit": limit, "downloader": "img2dataset",
                "image_size": image_size}
    if not force and finished(folder, "cc3m", settings):
        log.info("cc3m: already prepared in %s (use --force to redo)", folder)
        return require_manifest(folder, "cc3m")
    command = find_img2dataset(img2dataset)
    if command is None:
        raise DataError("img2dataset is not installed; run make img2dataset (its own environment: "
                        "it pins pandas<3), pass --img2dataset PATH, or use --downloader urllib")
    shards = folder / "shards"
    if force and shards.exists():
        shutil.rmtree(shards)
    rows = read_index(index)
    empty, samples = 0, []
    totals: Counter = Counter()
    reasons: Counter = Counter()
    for k in itertools.count():
        round_dir = shards / f"round_{k:03d}"
        if not (round_dir / DONE).is_file():
            need = limit - len(samples)
            seen = totals["count"]
            rate = len(samples) / seen if seen else 0.8  # CC3M: roughly 80% of the urls answer
            batch: List[Row] = []
            for row in rows:
                row.caption = clean_caption(row.caption)
                if row.caption:
                    batch.append(row)
                else:
                    empty += 1
                if len(batch) >= max(64, math.ceil(need / max(rate, 0.05) * 1.1)):
                    break
            if not batch:
                break  # the index is exhausted
            _run(command, batch, round_dir, image_size, processes, threads, retries, timeout)
        else:
            empty += _skip_rows(rows, round_dir)
        samples.extend(s for shard in sorted(round_dir.glob("*.tar")) for s in read_shard(shard))
        counts, why = _stats(round_dir)  # only the rounds this preparation used
        totals.update(counts)
        reasons.update(why)
        if len(samples) >= limit:
            break
    samples.sort(key=lambda s: int(s.meta.get("row", -1)))
    kept = write_samples(folder, "train", samples[:limit])
    split = {"count": len(kept), "skipped": totals["count"] - totals["successes"] + empty,
             "unavailable": totals["failed_to_download"],
             "failed_to_resize": totals["failed_to_resize"], "empty_caption": empty,
             "failure_reasons": dict(reasons.most_common(20))}
    log.info("cc3m train: %d images in webdataset shards; img2dataset tried %d urls: %d failed to "
             "download, %d to decode/resize", len(kept), totals["count"],
             totals["failed_to_download"], totals["failed_to_resize"])
    return write_manifest(folder, "cc3m", {"train": split}, settings)


def _skip_rows(rows: Iterator[Row], round_dir: Path) -> int:
    """Advance ``rows`` past the rows a finished round was given (its ``rows.tsv``); returns
    how many of them had an empty caption."""
    last = int((round_dir / "rows.tsv").read_text().splitlines()[-1].split("\t", 1)[0])
    empty = 0
    for row in rows:
        empty += not clean_caption(row.caption)
        if row.row >= last:
            break
    return empty


def _run(command: str, batch: List[Row], out: Path, image_size: int, processes: int,
         threads: int, retries: int, timeout: float) -> None:
    """One img2dataset round over ``batch`` into ``out``, marked done when it finished."""
    if out.exists():
        shutil.rmtree(out)  # an interrupted round starts over
    out.mkdir(parents=True)
    listing = out / "rows.tsv"
    listing.write_text("row\tcaption\turl\n" + "".join(f"{r.row}\t{r.caption}\t{r.url}\n"
                                                       for r in batch), encoding="utf-8")
    args = [command, "--url_list", str(listing), "--input_format", "tsv", "--url_col", "url",
            "--caption_col", "caption", "--save_additional_columns", '["row"]',
            "--output_format", "webdataset", "--output_folder", str(out),
            "--image_size", str(image_size), "--resize_mode", "keep_ratio",
            "--resize_only_if_bigger", "True", "--processes_count", str(processes),
            "--thread_count", str(threads), "--retries", str(retries), "--timeout", str(timeout),
            "--number_sample_per_shard", "10000", "--enable_wandb", "False"]
    log.info("cc3m: img2dataset on rows %d-%d into %s", batch[0].row, batch[-1].row, out)
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"img2dataset failed on {listing} (exit {proc.returncode}: {tail[0]}); "
                        f"rerun the same command to retry this round")
    (out / DONE).write_text("")


def index_cc3m_shards(root: Path, shards: Path, force: bool = False) -> Dict:
    """An existing img2dataset / webdataset copy of CC3M (the ``*.tar`` files under ``shards``,
    in name order) indexed in place as ``root/cc3m`` split ``train``; nothing is copied."""
    folder = Path(root) / "cc3m"
    settings = {"shards": str(Path(shards).resolve())}
    if not force and finished(folder, "cc3m", settings):
        log.info("cc3m: already indexed in %s (use --force to redo)", folder)
        return require_manifest(folder, "cc3m")
    files = sorted(Path(shards).rglob("*.tar"))
    if not files:
        raise DataError(f"no *.tar webdataset shards under {shards}; pass the folder img2dataset "
                        f"wrote (--output_folder)")
    folder.mkdir(parents=True, exist_ok=True)
    samples = [s for shard in files for s in read_shard(shard)]
    kept = write_samples(folder, "train", samples)
    tried = sum((_stats(d)[0] for d in sorted({f.parent for f in files})), Counter())
    split = {"count": len(kept), "skipped": len(samples) - len(kept),
             "empty_caption": len(samples) - len(kept),
             **({"img2dataset_tried": tried["count"]} if tried["count"] else {})}
    return write_manifest(folder, "cc3m", {"train": split}, settings)

