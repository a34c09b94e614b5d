"""Conceptual Captions 3M (Sharma et al., 2018): the thesis trains on its first 500k images
that can still be downloaded.

CC3M is distributed as an index only: ``Train_GCC-training.tsv``, one ``caption<TAB>url`` per
line. :func:`prepare_cc3m` walks it in order and downloads until ``limit`` images are
available, so "the first 500k available" is the same set on every machine (up to link rot):

- threads fetch ``workers`` urls at a time; a transient failure (timeout, connection reset,
  HTTP 408/429/5xx) is retried ``retries`` times with exponential backoff; a permanent one
  (HTTP 404 and other 4xx, a file that is not an image, a malformed url) is *unavailable*;
- every outcome is appended to ``download_log.tsv`` right after the image is written
  (atomically), so an interrupted run resumes where it stopped: finished rows are skipped,
  unavailable ones are not tried again, transient failures are;
- images are stored as downloaded (no re-encoding) in ``images/<row // 10000>/<row>.<ext>``.

The fetch function is a parameter (``fetch(url, timeout) -> bytes``, raising
:class:`Unavailable` for permanent failures); the default uses ``urllib``, which also reads
``file://`` urls, so the whole path is testable offline.
"""
from __future__ import annotations

import http.client
import io
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import PIL.Image
from tqdm import tqdm

from common.data.image_index import IndexedImages, clean_caption, write_index
from common.data.manifest import finished, require_manifest, write_atomic, write_manifest
from common.errors import DataError

log = logging.getLogger(__name__)

Fetch = Callable[[str, float], bytes]
RETRYABLE_HTTP = (408, 425, 429, 500, 502, 503, 504)
USER_AGENT = "mmkd-cc3m/1.0 (research dataset download; one request per image)"
LOG_NAME = "download_log.tsv"
OK, UNAVAILABLE, FAILED = "ok", "unavailable", "failed"


class Unavailable(Exception):
    """A url that will not work on retry (gone, forbidden, not an image)."""


def fetch_url(url: str, timeout: float) -> bytes:
    """The body at ``url`` (http, https or file); :class:`Unavailable` for permanent failures,
    any ``OSError`` for transient ones."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        if err.code in RETRYABLE_HTTP:
            raise
        raise Unavailable(f"HTTP {err.code}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, FileNotFoundError):
            raise Unavailable(str(err.reason)) from None
        raise


@dataclass
class Row:
    """One line of the CC3M index (``row`` counts from 0)."""

    row: int
    caption: str
    url: str


def read_index(path: Path) -> Iterator[Row]:
    """The rows of a ``caption<TAB>url`` file (a header line without a url is skipped)."""
    if not path.is_file():
        raise DataError(f"CC3M index {path} does not exist; download Train_GCC-training.tsv "
                        f"from https://ai.google.com/research/ConceptualCaptions and pass --index")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 2:
                raise DataError(f"{path} line {number + 1} has {len(fields)} tab-separated fields, "
                                f"expected caption<TAB>url; is it the CC3M index?")
            if number == 0 and "://" not in fields[1]:
                continue
            yield Row(number, fields[0], fields[1])


def image_extension(data: bytes) -> str:
    """File extension of encoded image ``data`` ("jpg", "png", ...); :class:`Unavailable` when
    it is not a readable image (CC3M's dead links often serve an HTML page instead)."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            image.verify()
            fmt = image.format or ""
    except Exception as err:  # PIL raises many types for non-images
        raise Unavailable(f"not an image ({type(err).__name__})") from None
    return {"JPEG": "jpg", "": "img"}.get(fmt, fmt.lower())


class Downloader:
    """Fetch-with-retries of single rows into ``folder/images`` (see the module docstring)."""

    def __init__(self, folder: Path, fetch: Fetch = fetch_url, retries: int = 3,
                 timeout: float = 10.0, backoff: float = 1.0) -> None:
        self.folder, self.fetch = folder, fetch
        self.retries, self.timeout, self.backoff = retries, timeout, backoff

    def __call__(self, row: Row) -> Tuple[str, str]:
        """(status, file relative to the folder, or the reason it is unavailable)."""
        try:
            data = self._fetch_with_retries(row.url)
            ext = image_extension(data)
        except (Unavailable, ValueError) as err:  # ValueError: urllib's malformed url
            return UNAVAILABLE, _one_line(err)
        except (OSError, http.client.HTTPException) as err:
            return FAILED, _one_line(err)
        relative = f"images/{row.row // 10000:04d}/{row.row:08d}.{ext}"
        target = self.folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
        return OK, relative

    def _fetch_with_retries(self, url: str) -> bytes:
        for attempt in range(self.retries):
            try:
                return self.fetch(url, self.timeout)
            except (OSError, http.client.HTTPException):
                time.sleep(self.backoff * 2 ** attempt)
        return self.fetch(url, self.timeout)


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def read_log(path: Path) -> Dict[int, Tuple[str, str]]:
    """row -> (status, file or reason) from a download log; the last entry of a row wins and
    a line cut short by a crash is ignored."""
    done: Dict[int, Tuple[str, str]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            if len(fields) == 3 and fields[0].isdigit() and fields[1] in (OK, UNAVAILABLE, FAILED):
                done[int(fields[0])] = (fields[1], fields[2])
    return done


def prepare_cc3m(root: Path, index: Optional[Path] = None, limit: int = 500_000,
                 workers: int = 16, retries: int = 3, timeout: float = 10.0,
                 backoff: float = 1.0, fetch: Fetch = fetch_url, force: bool = False) -> Dict:
    """Download the first ``limit`` available images of the CC3M ``index`` into ``root/cc3m``
    and index them as split ``train``; returns the manifest (``count``, and rows ``skipped``
    because their url was unavailable, failed after retries or had an empty caption)."""
    folder = Path(root) / "cc3m"
    index = Path(index) if index else folder / "Train_GCC-training.tsv"
    settings = {"index": index.name, "limit": limit}
    if not force and finished(folder, "cc3m", settings):
        log.info("cc3m: already prepared in %s (use --force to redo)", folder)
        return require_manifest(folder, "cc3m")
    folder.mkdir(parents=True, exist_ok=True)
    done = read_log(folder / LOG_NAME)
    download = Downloader(folder, fetch, retries, timeout, backoff)
    kept: List[Row] = []
    files: List[str] = []
    counts = {UNAVAILABLE: 0, FAILED: 0, "empty_caption": 0}
    bar = tqdm(total=limit, desc="cc3m", unit="img")
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            open(folder / LOG_NAME, "a", encoding="utf-8") as log_file:
        for rows in _chunks(read_index(index), max(64, 8 * workers)):
            for row in rows:
                row.caption = clean_caption(row.caption)
            todo = [r for r in rows if r.caption and not _is_done(folder, done.get(r.row))]
            for row, result in zip(todo, pool.map(download, todo)):  # in row order
                log_file.write(f"{row.row}\t{result[0]}\t{result[1]}\n")
                log_file.flush()  # logged as soon as known: a crash loses no finished row
                done[row.row] = result
            for row in rows:
                if len(kept) >= limit:
                    break
                status, detail = done[row.row] if row.caption else ("empty_caption", "")
                if status == OK:
                    kept.append(row)
                    files.append(detail)
                    bar.update()
                else:
                    counts[status] += 1
            bar.set_postfix(unavailable=counts[UNAVAILABLE], failed=counts[FAILED])
            if len(kept) >= limit:
                break
    bar.close()
    if not kept:
        raise DataError(f"none of the CC3M urls in {index} could be downloaded ({counts[FAILED]} "
                        f"failed, {counts[UNAVAILABLE]} unavailable); check the network and rerun "
                        f"(finished rows are kept)")
    write_index(folder, "train", files, captions=[[r.caption] for r in kept])
    split = {"count": len(kept), "skipped": sum(counts.values()), **counts}
    log.info("cc3m train: %d images; skipped %d unavailable, %d failed after %d retries, "
             "%d empty captions", len(kept), counts[UNAVAILABLE], counts[FAILED], retries,
             counts["empty_caption"])
    return write_manifest(folder, "cc3m", {"train": split}, settings)


def _chunks(rows: Iterator[Row], size: int) -> Iterator[List[Row]]:
    chunk: List[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _is_done(folder: Path, entry: Optional[Tuple[str, str]]) -> bool:
    """A logged row needs no new attempt: unavailable, or downloaded and still on disk."""
    if entry is None or entry[0] == FAILED:
        return False
    return entry[0] == UNAVAILABLE or (folder / entry[1]).is_file()


def open_cc3m(folder: Path, split: str = "train") -> IndexedImages:
    """The prepared CC3M subset (one caption per image)."""
    require_manifest(folder, "cc3m")
    return IndexedImages(folder, split, name="cc3m")
