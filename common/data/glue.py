"""GLUE for the text side: task definitions, the tsv loader, the official metrics and export.

Eight tasks as the thesis lists them (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE), read
from the tsv files of the original GLUE distribution under ``<data.root>/glue/<Task>/``
(``train.tsv``, ``dev.tsv``; MNLI ``dev_matched.tsv`` and ``dev_mismatched.tsv``). Columns
are found by their header names, so both the official files and the trimmed files of
:func:`prepare_glue` load; CoLA's official train/dev files have no header and are read by
position. Labels map to class indices in the order of the Hugging Face ``glue`` configs
(MNLI: entailment, neutral, contradiction), STS-B keeps its float score.

Metrics are the official ones, in percent like every other number in the result CSVs:
Matthews correlation (CoLA), accuracy (SST-2, QNLI, RTE, MNLI matched/mismatched), F1 of
the positive class and accuracy (MRPC, QQP), Pearson and Spearman correlation (STS-B).

Tiny presets have no GLUE offline, so two **synthetic stand-ins** built from the synthetic
world's captions keep the text fine-tuning path running on tiny checkpoints; they only
exercise the code path and are not GLUE numbers:

- ``syn-shape`` (single sentence, 10 classes, accuracy, SST-2-like): which shape is the
  main object of the image this caption describes;
- ``syn-pair`` (sentence pair, binary, F1/accuracy, MRPC-like): do two captions describe
  the same image (half of the negatives share the main object's colour and shape).
"""
from __future__ import annotations

import csv
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch

from common.config import DataConfig
from common.data.synthetic import SHAPES, SyntheticWorld
from common.data.tokenizer import Tokenizer
from common.errors import DataError, UserError

log = logging.getLogger(__name__)

Label = Union[int, float]


@dataclass(frozen=True)
class GlueExample:
    text_a: str
    text_b: Optional[str]
    label: Label


@dataclass(frozen=True)
class GlueTask:
    """One task: where its files are, which columns hold text and label, how it is scored.

    ``labels`` lists the label strings in class order (``None``: regression). ``columns``
    name the header fields; ``positions`` (text..., label) are used for header-less files.
    """

    name: str
    folder: str
    columns: Tuple[str, ...]  # text column(s), then the label column
    labels: Optional[Tuple[str, ...]]
    metrics: Tuple[str, ...]
    dev_splits: Tuple[str, ...] = ("dev",)
    positions: Optional[Tuple[int, ...]] = None  # header-less files: column indices
    hf: Tuple[str, ...] = ()  # HF glue config, then its text fields (for prepare_glue)

    @property
    def num_outputs(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.columns) == 3


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")
GLUE_TASKS: Dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("cola", "CoLA", ("sentence", "label"), BINARY, ("mcc",), positions=(3, 1),
             hf=("cola", "sentence")),
    GlueTask("sst2", "SST-2", ("sentence", "label"), BINARY, ("acc",), hf=("sst2", "sentence")),
    GlueTask("mrpc", "MRPC", ("#1 String", "#2 String", "Quality"), BINARY, ("f1", "acc"),
             hf=("mrpc", "sentence1", "sentence2")),
    GlueTask("stsb", "STS-B", ("sentence1", "sentence2", "score"), None, ("pearson", "spearman"),
             hf=("stsb", "sentence1", "sentence2")),
    GlueTask("qqp", "QQP", ("question1", "question2", "is_duplicate"), BINARY, ("acc", "f1"),
             hf=("qqp", "question1", "question2")),
    GlueTask("mnli", "MNLI", ("sentence1", "sentence2", "gold_label"),
             ("entailment", "neutral", "contradiction"), ("acc",),
             dev_splits=("dev_matched", "dev_mismatched"), hf=("mnli", "premise", "hypothesis")),
    GlueTask("qnli", "QNLI", ("question", "sentence", "label"), NLI2, ("acc",),
             hf=("qnli", "question", "sentence")),
    GlueTask("rte", "RTE", ("sentence1", "sentence2", "label"), NLI2, ("acc",),
             hf=("rte", "sentence1", "sentence2")),
)}
SYNTHETIC_TASKS: Dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("syn-shape", "", ("caption", "shape"), tuple(SHAPES), ("acc",)),
    GlueTask("syn-pair", "", ("caption1", "caption2", "same"), BINARY, ("f1", "acc")),
)}
_DEV_NAMES = {"dev_matched": "m", "dev_mismatched": "mm"}  # MNLI's two dev sets


def get_task(name: str) -> GlueTask:
    """The task called ``name`` (GLUE or synthetic stand-in); an unknown name is a UserError."""
    task = GLUE_TASKS.get(name) or SYNTHETIC_TASKS.get(name)
    if task is None:
        raise UserError(f"unknown text task '{name}'; choose one of "
                        f"{', '.join([*GLUE_TASKS, *SYNTHETIC_TASKS])}")
    return task


def dev_name(task: GlueTask, split: str) -> str:
    """How a dev split is named in result rows: ``mrpc``, ``mnli-m``, ``mnli-mm``."""
    return f"{task.name}-{_DEV_NAMES[split]}" if split in _DEV_NAMES else task.name


# ---------------------------------------------------------------------------- tsv loading
def glue_dir(data: DataConfig) -> Path:
    """``<data.root>/glue`` (``data/glue`` without a root)."""
    return Path(data.root or "data") / "glue"


def load_split(root: Union[str, Path], task: GlueTask, split: str) -> List[GlueExample]:
    """The examples of ``<root>/<Task>/<split>.tsv`` (quotes are literal, as in GLUE)."""
    path = Path(root) / task.folder / f"{split}.tsv"
    if not path.is_file():
        raise DataError(f"GLUE file {path} does not exist; export GLUE with `python -m "
                        f"common.data.prepare glue` (needs the `datasets` package and internet "
                        f"once) or copy the GLUE tsv folders there, or set data.root")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise DataError(f"GLUE file {path} is empty; re-export it")
    if all(name in rows[0] for name in task.columns):
        indices, body, first_line = [rows[0].index(c) for c in task.columns], rows[1:], 2
    elif task.positions is not None:
        indices, body, first_line = list(task.positions), rows, 1
    else:
        raise DataError(f"GLUE file {path} has header {rows[0][:6]} but needs the columns "
                        f"{list(task.columns)}; is it the {task.folder} task's file?")
    out, skipped = [], 0
    for line, row in enumerate(body, start=first_line):
        if len(row) <= max(indices):
            skipped += 1  # the official QQP train file has a few broken lines
            continue
        *texts, label = (row[i] for i in indices)
        out.append(GlueExample(texts[0], texts[1] if len(texts) > 1 else None,
                               _parse_label(task, label, path, line)))
    if skipped:
        log.warning("%s: skipped %d malformed lines", path, skipped)
    return out


def _parse_label(task: GlueTask, value: str, path: Path, line: int) -> Label:
    if task.labels is None:
        try:
            return float(value)
        except ValueError:
            raise DataError(f"{path}:{line}: score {value!r} is not a number") from None
    if value not in task.labels:
        raise DataError(f"{path}:{line}: label {value!r} is not one of {list(task.labels)}; "
                        f"unlabelled test files cannot be used for fine-tuning")
    return task.labels.index(value)


def load_task(name: str, data: DataConfig) -> Tuple[GlueTask, List[GlueExample],
                                                   Dict[str, List[GlueExample]]]:
    """(task, train examples, {dev split: examples}): GLUE from tsv, stand-ins generated."""
    task = get_task(name)
    if name in SYNTHETIC_TASKS:
        from common.data.sources import synthetic_world
        train, dev = synthetic_task(name, synthetic_world(data))
        return task, train, {"dev": dev}
    root = glue_dir(data)
    return task, load_split(root, task, "train"), {s: load_split(root, task, s)
                                                   for s in task.dev_splits}


# ---------------------------------------------------------------------------- model input
def encode_examples(tokenizer: Tokenizer, examples: Sequence[GlueExample],
                    max_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``ids`` [B, L] and ``padding_mask`` [B, L] (True at pads) of single sentences
    ``BOS a EOS`` or pairs ``BOS a EOS EOS b EOS``: fairseq's RoBERTa/data2vec GLUE input,
    where the second sentence is prefixed with the EOS separator. Pairs that do not fit
    ``max_len`` lose tokens from the end of the longer sentence first."""
    rows = []
    for example in examples:
        a = tokenizer.encode(example.text_a)
        if example.text_b is None:
            rows.append([tokenizer.bos_id, *a[:max_len - 2], tokenizer.eos_id])
            continue
        b = tokenizer.encode(example.text_b)
        while len(a) + len(b) > max_len - 4 and (a or b):
            (a if len(a) >= len(b) else b).pop()
        rows.append([tokenizer.bos_id, *a, tokenizer.eos_id, tokenizer.eos_id, *b, tokenizer.eos_id])
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
    mask = torch.ones((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = False
    return ids, mask


# ---------------------------------------------------------------------------- metrics
def _binary_counts(preds: np.ndarray, labels: np.ndarray) -> Tuple[int, int, int, int]:
    tp = int(((preds == 1) & (labels == 1)).sum())
    tn = int(((preds == 0) & (labels == 0)).sum())
    fp = int(((preds == 1) & (labels == 0)).sum())
    fn = int(((preds == 0) & (labels == 1)).sum())
    return tp, tn, fp, fn


def matthews_corr(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation of binary predictions (0 when a marginal is empty, as sklearn)."""
    tp, tn, fp, fn = _binary_counts(np.asarray(preds), np.asarray(labels))
    denom = float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return (tp * tn - fp * fn) / np.sqrt(denom) if denom else 0.0


def f1_score(preds: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of the positive class (1): ``2 tp / (2 tp + fp + fn)``, 0 without positives."""
    tp, _, fp, fn = _binary_counts(np.asarray(preds), np.asarray(labels))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    return float(pd.Series(x, dtype=float).corr(pd.Series(y, dtype=float)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the ranks (ties get their average rank, as scipy)."""
    return pearson(pd.Series(x, dtype=float).rank(), pd.Series(y, dtype=float).rank())


def glue_metrics(task: GlueTask, preds: Sequence[Label], labels: Sequence[Label]) -> Dict[str, float]:
    """The task's official metrics in percent, e.g. ``{"f1": 88.2, "acc": 84.1}`` for MRPC.

    ``preds`` are class indices (or scores for STS-B), ``labels`` as loaded.
    """
    p, y = np.asarray(preds), np.asarray(labels)
    fns = {"acc": lambda: float((p == y).mean()), "mcc": lambda: matthews_corr(p, y),
           "f1": lambda: f1_score(p, y), "pearson": lambda: pearson(p, y),
           "spearman": lambda: spearman(p, y)}
    return {name: 100.0 * fns[name]() for name in task.metrics}


# ---------------------------------------------------------------------------- synthetic stand-ins
SYNTHETIC_TRAIN, SYNTHETIC_DEV = 4000, 1000


def synthetic_task(name: str, world: SyntheticWorld, num_train: int = SYNTHETIC_TRAIN,
                   num_dev: int = SYNTHETIC_DEV) -> Tuple[List[GlueExample], List[GlueExample]]:
    """(train, dev) examples of a stand-in task: train from the world's ``train`` scenes, dev
    from its ``imagenet_val`` scenes (never trained on), deterministic."""
    return (_synthetic_examples(name, world, "train", num_train, seed=1),
            _synthetic_examples(name, world, "imagenet_val", num_dev, seed=2))


def _synthetic_examples(name: str, world: SyntheticWorld, split: str, count: int,
                        seed: int) -> List[GlueExample]:
    r = random.Random(seed)
    count = min(count, world.len_split(split))
    scenes = [world.scene(split, i) for i in range(count)]
    captions = [world.captions(s) for s in scenes]
    if name == "syn-shape":
        return [GlueExample(r.choice(c), None, s.coarse_label) for s, c in zip(scenes, captions)]
    by_class: Dict[int, List[int]] = {}
    for i, s in enumerate(scenes):
        by_class.setdefault(s.label, []).append(i)
    out = []
    for i, scene in enumerate(scenes):
        first, second = r.sample(captions[i], 2)
        if r.random() < 0.5:
            out.append(GlueExample(first, second, 1))
            continue
        same_class = [j for j in by_class[scene.label] if j != i]
        if same_class and r.random() < 0.5:  # a hard negative: same main object
            j = r.choice(same_class)
        else:
            j = r.randrange(count - 1)
            j += j >= i  # any other image
        out.append(GlueExample(first, r.choice(captions[j]), 0))
    return out


# ---------------------------------------------------------------------------- export
def prepare_glue(root: Union[str, Path], tasks: Sequence[str] = tuple(GLUE_TASKS)) -> Path:
    """Export the Hugging Face ``glue`` datasets to GLUE-style tsv files under ``<root>/glue``.

    Each task gets ``<Task>/train.tsv`` and its dev file(s) with the header names of the
    original distribution (CoLA header-less, as the original), so :func:`load_split` reads
    them exactly as it reads a downloaded GLUE. Needs the ``datasets`` package and internet
    (or its cache) once. Returns the ``glue`` folder.
    """
    try:
        import datasets
    except ImportError:
        raise UserError("exporting GLUE needs the `datasets` package: pip install datasets") from None
    out = Path(root) / "glue"
    hf_splits = {"train": "train", "dev": "validation", "dev_matched": "validation_matched",
                 "dev_mismatched": "validation_mismatched"}
    for name in tasks:
        task = get_task(name)
        config, *fields = task.hf
        folder = out / task.folder
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", *task.dev_splits):
            rows = _load_hf_split(datasets, config, hf_splits[split], folder)
            path = folder / f"{split}.tsv"
            tmp = path.with_suffix(".tsv.tmp")
            lines = [] if task.positions is not None else ["\t".join(task.columns)]
            for row in rows:
                texts = [_clean(row[k]) for k in fields]
                label = f"{row['label']:g}" if task.labels is None else task.labels[row["label"]]
                # CoLA as the original: source, label, original label, sentence
                fields_out = [*texts, label] if task.positions is None else ["hf", label, "", texts[0]]
                lines.append("\t".join(fields_out))
            tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            tmp.replace(path)
            log.info("wrote %s (%d examples)", path, len(rows))
    return out


def _load_hf_split(datasets: Any, config: str, split: str, folder: Path) -> Any:
    """One split of Hugging Face's ``glue`` dataset; no network (or no cache) is one line."""
    try:
        return datasets.load_dataset("glue", config, split=split)
    except Exception as err:  # ConnectionError, hub errors, offline-mode misses: all mean "not here"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(f"could not get GLUE {config}/{split} from the Hugging Face hub "
                        f"({type(err).__name__}: {first[:200]}); run this once with internet (it "
                        f"is cached), or copy the original GLUE tsv files into {folder}") from None


def _clean(text: str) -> str:
    """Tabs and newlines would break a tsv line; GLUE sentences never need them."""
    return " ".join(text.split())
