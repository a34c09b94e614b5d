"""Chapter plumbing shared by every ``experiments/<chapter>/run.py``.

A chapter script reads like the chapter (teacher, student, losses, ``fit``); the parts
that are the same everywhere live here: the run folder with its config snapshot, the
evaluation sets of the data config, result rows in the DESIGN.md schema, and the table
printed at the end.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from common.checkpoint import list_checkpoints
from common.config import DataConfig, EvalConfig
from common.data.datasets import ImageLabelSet, RetrievalSet
from common.data.sources import (check_image_files, dataset_name, open_source, prompt_templates,
                                 zero_shot_name, zero_shot_source)
from common.data.tokenizer import Tokenizer
from common.data.transforms import eval_transform
from common.errors import UserError
from common.distributed import is_main_process
from common.evaluation import ImageTextModel, retrieval_metrics, zero_shot_metrics
from common.paths import results_dir, runs_dir
from common.results import append_rows

log = logging.getLogger(__name__)

RETRIEVAL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


# Top-level config sections a continued run may change: how it goes on training (``fit``
# warns about changed train settings), how it is evaluated, and bookkeeping. Any other change
# (model, teacher, data, objective) would resume a checkpoint of a different experiment. A
# chapter adds its own evaluation sections as ``RESUMABLE_SECTIONS`` of its config class.
RESUMABLE_SECTIONS = frozenset({"run", "train", "eval", "variants", "only", "seeds", "overrides"})


def _flat(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"model.image.dim": 128, ...}`` of a nested config container."""
    if isinstance(tree, dict):
        out: Dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(saved: Any, current: Any, resumable: Iterable[str] = ()) -> List[str]:
    """``["model.image.dim: 128 -> 256", ...]``: settings outside :data:`RESUMABLE_SECTIONS`
    and ``resumable`` that differ between two configs (OmegaConf objects or dicts)."""
    old, new = (_flat(OmegaConf.to_container(OmegaConf.create(c), resolve=True))
                for c in (saved, current))
    free = RESUMABLE_SECTIONS | set(resumable)
    keys = sorted(k for k in set(old) | set(new) if k.split(".")[0] not in free)
    return [f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}"
            for k in keys if old.get(k, "<unset>") != new.get(k, "<unset>")]


def run_folder(cfg: Any, name: Optional[str] = None) -> Path:
    """``runs/<chapter>/<run>/`` (or ``<name>/``, e.g. one seed of a variant) with the resolved
    config saved as ``config.yaml`` (what the eval CLIs read to rebuild the model from a checkpoint).

    A folder that already holds checkpoints is continued by ``train.resume=auto``; that is
    refused (one line, the folder and its ``config.yaml`` untouched) when the saved run was
    trained with other model, teacher, data or objective settings (:func:`config_changes`)."""
    folder = runs_dir(cfg.chapter, name or cfg.run)
    saved = folder / "config.yaml"
    if saved.is_file() and list_checkpoints(folder):
        chapter_sections = getattr(OmegaConf.get_type(cfg), "RESUMABLE_SECTIONS", ())
        changes = config_changes(_in_schema(OmegaConf.load(saved), cfg), cfg, chapter_sections)
        if changes:
            more = f" (+{len(changes) - 3} more)" if len(changes) > 3 else ""
            raise UserError(f"{folder} holds a run trained with other settings "
                            f"({'; '.join(changes[:3])}{more}): rerun with its settings to "
                            f"continue it, delete the folder to start over, or set MMKD_RUNS to "
                            f"another folder to keep both")
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg))
    os.replace(tmp, saved)
    return folder


def _in_schema(saved: Any, cfg: Any) -> Any:
    """``saved`` merged into the schema of ``cfg``: settings added to the schema after the run
    was saved take their defaults, which by convention are the behaviour before they existed
    (so they are no change). A saved config the schema cannot hold is compared as it is."""
    schema = OmegaConf.get_type(cfg)
    if schema is None or schema is dict:
        return saved
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), saved)
    except OmegaConfBaseException:
        return saved


class EvalSets:
    """The retrieval and zero-shot sets named by ``cfg.eval``, opened once (fail fast: a
    missing dataset, a test image without a caption, or a test image file that does not
    decode stops the run before any training)."""

    def __init__(self, data: DataConfig, evals: EvalConfig):
        transform = eval_transform(data.image_size)
        self.data, self.evals = data, evals
        self.retrieval = {role: RetrievalSet(open_source(data, role), transform)
                          for role in evals.retrieval}
        self.zero_shot = (ImageLabelSet(zero_shot_source(data, evals.zero_shot), transform)
                          if evals.zero_shot else None)
        self.templates = prompt_templates(data) if evals.zero_shot else []
        for dataset in [*self.retrieval.values(), *filter(None, [self.zero_shot])]:
            check_image_files(dataset.source)

    def zero_shot_metrics(self, model: ImageTextModel, tokenizer: Tokenizer) -> Dict[str, float]:
        if self.zero_shot is None:
            return {}
        return zero_shot_metrics(model, self.zero_shot, self.zero_shot.source.classnames,
                                 self.templates, tokenizer, self.data.max_text_len,
                                 self.evals.batch_size, self.data.num_workers)

    def retrieval_metrics(self, model: ImageTextModel, tokenizer: Tokenizer) -> Dict[str, Dict[str, float]]:
        """``{role: {"i2t_r1": .., ...}}`` for every retrieval set."""
        out = {}
        for role, rset in self.retrieval.items():
            out[role] = retrieval_metrics(model, rset, tokenizer, self.data.max_text_len,
                                          self.evals.batch_size, self.data.num_workers)
            log.info("%s: %s", dataset_name(self.data, role),
                     " ".join(f"{k}={v:.2f}" for k, v in out[role].items()))
        return out

    def result_rows(self, model: ImageTextModel, tokenizer: Tokenizer, meta: Dict[str, Any],
                    zero_shot: Optional[Dict[str, float]] = None) -> List[Dict[str, Any]]:
        """One row per retrieval set, plus one zero-shot row (``zero_shot`` given, or computed)."""
        rows = [{**meta, "dataset": dataset_name(self.data, role), **metrics}
                for role, metrics in self.retrieval_metrics(model, tokenizer).items()]
        if self.zero_shot is not None:
            zs = zero_shot if zero_shot is not None else self.zero_shot_metrics(model, tokenizer)
            rows.append({**meta, "dataset": zero_shot_name(self.data, self.evals.zero_shot),
                         "zs_top1": zs["zs_top1"], "zs_top5": zs["zs_top5"]})
        return rows

def run_meta(cfg: Any, model: nn.Module, *, model_name: str, teacher: str, steps: int,
             train_minutes: float) -> Dict[str, Any]:
    """The identifying columns of a run's result rows. ``params_m`` counts the model that is
    evaluated, not a training-only momentum copy (:attr:`MultimodalEncoder.momentum`)."""
    momentum = getattr(model, "momentum", None)
    params = sum(p.numel() for p in model.parameters())
    params -= sum(p.numel() for p in momentum.parameters()) if momentum is not None else 0
    return {"chapter": cfg.chapter, "run": cfg.run, "model": model_name, "teacher": teacher,
            "preset": cfg.preset, "params_m": round(params / 1e6, 2),
            "train_minutes": round(train_minutes, 2), "steps": steps, "seed": cfg.train.seed,
            "overrides": " ".join(getattr(cfg, "overrides", None) or [])}


def write_rows(chapter: str, run: str, rows: Sequence[Dict[str, Any]]) -> Path:
    """Append ``rows`` atomically to ``results/<chapter>/<run>.csv``; under a multi-process
    launch only the main process writes (every rank evaluates the same model)."""
    path = results_dir(chapter) / f"{run}.csv"
    if not is_main_process():
        return path
    append_rows(path, list(rows))
    log.info("wrote %d result rows to %s", len(rows), path)
    return path


def markdown_table(rows: Iterable[Dict[str, Any]], columns: Sequence[str]) -> str:
    """A small markdown table of ``columns`` (missing / NaN cells left blank)."""
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
