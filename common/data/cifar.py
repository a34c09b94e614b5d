"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009): the kNN probes of chapter 1 and fine-tuning sets.

Input: the official "python version" archives ``cifar-10-python.tar.gz`` and
``cifar-100-python.tar.gz`` in ``<root>/cifar/`` (or given with ``--archive``), or their
extracted folders ``cifar-10-batches-py/`` and ``cifar-100-python/``. An archive with its
official name is checked against the published MD5 before it is extracted. The pickled
batches (``data`` rows of 3072 bytes, red then green then blue planes of 32x32) are converted
once into ``<variant>_<split>_images.npy`` (uint8 Nx32x32x3) and ``..._labels.npy``, which the
loader memory-maps: no unpickling per worker, and pickle is read only at preparation time.

An archive is extracted into a temp folder that is renamed into place when complete, so an
interrupted extraction leaves no half folder; an extracted folder that lacks one of its
files (an older interrupted extraction, a partial copy) is extracted again from the archive,
and ``force`` re-extracts whenever the archive is there.

Roles: CIFAR-100 with its 100 fine labels is the ``fine`` kNN task, CIFAR-10 the ``coarse``
one (:func:`common.data.sources.open_source`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from common.data.manifest import finished, require_manifest, write_manifest
from common.errors import DataError
from common.safe_pickle import load_arrays

log = logging.getLogger(__name__)

# variant -> (archive, published MD5, extracted folder, {split: batch files}, meta file,
#             label key, class-name key)
VARIANTS = {
    "cifar10": ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                "cifar-10-batches-py",
                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                 "cifar-100-python", {"train": ["train"], "test": ["test"]},
                 "meta", "fine_labels", "fine_label_names"),
}


def prepare_cifar(root: Path, archives: Sequence[Path] = (), verify: bool = True,
                  force: bool = False) -> Dict:
    """Extract (after an MD5 check when ``verify``) and convert both variants into
    ``root/cifar``; returns the manifest. ``archives`` overrides where the tarballs are."""
    folder = Path(root) / "cifar"
    folder.mkdir(parents=True, exist_ok=True)
    if not force and finished(folder, "cifar", {"variants": sorted(VARIANTS)}):
        log.info("cifar: already prepared in %s (use --force to redo)", folder)
        return require_manifest(folder, "cifar")
    given = {Path(a).name: Path(a) for a in archives}
    splits = {}
    for variant, (archive, md5, extracted, batches, meta, label_key, names_key) in VARIANTS.items():
        source = folder / extracted
        expected = [meta, *(f for files in batches.values() for f in files)]
        missing = [f for f in expected if not (source / f).is_file()]
        tarball = given.get(archive, folder / archive)
        if missing and source.is_dir() and not tarball.is_file():
            raise DataError(f"{source} is incomplete (no {', '.join(missing)}) and there is no "
                            f"{tarball} to extract it again from; download the archive there (or "
                            f"pass --archive PATH)")
        if missing or (force and tarball.is_file()):
            _extract(tarball, md5 if verify else None, folder, extracted)
        classnames = [_text(n) for n in _get(_unpickle(source / meta), names_key, source / meta)]
        for split, files in batches.items():
            images, labels = _read_batches([source / f for f in files], label_key)
            np.save(folder / f"{variant}_{split}_images.npy", images)
            np.save(folder / f"{variant}_{split}_labels.npy", labels)
            splits[f"{variant}_{split}"] = {"count": len(labels), "classes": len(classnames)}
            log.info("%s %s: %d images, %d classes", variant, split, len(labels), len(classnames))
        (folder / f"{variant}_classes.txt").write_text("".join(f"{n}\n" for n in classnames))
    return write_manifest(folder, "cifar", splits, {"variants": sorted(VARIANTS)})


def _extract(archive: Path, md5: Optional[str], folder: Path, extracted: str) -> None:
    """Extract ``archive``'s ``extracted/`` folder to ``folder/extracted``, replacing it whole."""
    if not archive.is_file():
        raise DataError(f"CIFAR archive {archive} does not exist; download it from "
                        f"https://www.cs.toronto.edu/~kriz/cifar.html into {folder} (or pass "
                        f"--archive PATH)")
    if md5 is not None:
        with open(archive, "rb") as f:
            digest = hashlib.file_digest(f, "md5").hexdigest()
        if digest != md5:
            raise DataError(f"{archive} has MD5 {digest}, expected {md5}: the download is "
                            f"incomplete or altered; download it again (or pass --no-verify for a "
                            f"deliberately modified copy)")
    log.info("extracting %s", archive)
    tmp = folder / f".{extracted}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        if not (tmp / extracted).is_dir():
            raise DataError(f"{archive} did not contain {extracted}/; re-download it")
        shutil.rmtree(folder / extracted, ignore_errors=True)
        os.replace(tmp / extracted, folder / extracted)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot extract {archive} ({err}); download it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpickle(path: Path) -> dict:
    # the batches were pickled by Python 2: byte-string keys, latin1 for any str payloads
    try:
        with open(path, "rb") as f:
            return load_arrays(f, encoding="bytes")  # nothing but arrays: no code from the file runs
    except FileNotFoundError:
        raise DataError(f"CIFAR batch {path} is missing; extract the archive again (prepare "
                        f"with --force)") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(f"CIFAR batch {path} is corrupt ({err}); extract the archive again "
                        f"(prepare with --force)") from None


def _get(batch: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"CIFAR batch {path} has no '{key}' entry; is it the python version of "
                    f"the dataset?")


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _read_batches(paths: List[Path], label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        data = np.asarray(_get(batch, "data", path), dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # N x 32 x 32 x 3
        labels.append(np.asarray(_get(batch, label_key, path), dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


class CifarSource:
    """One split of one CIFAR variant as a :class:`common.data.datasets.DataSource` (uint8
    32x32x3 images, no captions)."""

    def __init__(self, folder: Path, variant: str, split: str) -> None:
        if variant not in VARIANTS or split not in ("train", "test"):
            raise ValueError(f"unknown CIFAR split {variant}/{split}")
        require_manifest(folder, "cifar")
        self.variant, self.split = variant, split
        # CIFAR-10 and CIFAR-100 are different images: fine and coarse never share embeddings
        self.images_key = (str(folder.resolve()), variant, split)
        self.images = np.load(folder / f"{variant}_{split}_images.npy", mmap_mode="r")
        self.labels = np.load(folder / f"{variant}_{split}_labels.npy")
        self.classnames = (folder / f"{variant}_classes.txt").read_text().splitlines()

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"CifarSource({self.variant!r}, {self.split!r})"

    def image(self, index: int) -> np.ndarray:
        return np.array(self.images[index])  # a writable copy: torch.from_numpy needs one

    def captions(self, index: int) -> List[str]:
        return []

    def label(self, index: int) -> int:
        return int(self.labels[index])
