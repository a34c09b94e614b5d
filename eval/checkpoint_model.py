"""Rebuild a trained model from a run folder: the chapter's own ``build_model`` plus its weights.

A run folder (``runs/<chapter>/<run>/``, written by :func:`common.experiment.run_folder`)
holds the resolved ``config.yaml`` and ``checkpoints/step_*/model.safetensors``. The
evaluation CLIs never re-implement a chapter's architecture: they import
``experiments/<chapter>/run.py`` (:mod:`common.chapters`), merge ``config.yaml`` into the
config class its ``CHAPTER`` declaration names and call the declared
``build_model(cfg, tokenizer)``. What a chapter guarantees so that this works:

- the declared ``build_model`` builds the untrained model from the config alone (sizes that
  depend on the teacher, such as SHRe's head, are saved in the config);
- the model has ``encode_image`` / ``encode_text`` (:class:`common.evaluation.ImageTextModel`)
  and, for fine-tuning, its encoders as ``.image`` / ``.text``;
- the chapter sets ``cfg.text.vocab_size`` from the tokenizer before building (the loader
  does the same).

Eval rows take the ``model`` label the chapter gave the run in its own result rows, so both
line up in ``eval.compare`` (the chapter's name when the chapter has written none yet).

Pretrained initialisation (``*.init`` paths) is switched off: the checkpoint replaces
those weights anyway, and evaluating must not need the original pretrained files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from common.chapters import Declaration, chapter
from common.checkpoint import MODEL_FILE, list_checkpoints, load_weights
from common.config import load_config
from common.data.tokenizer import Tokenizer, build_tokenizer
from common.errors import DataError
from common.paths import results_dir
from common.results import load_results

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"


@dataclass
class LoadedRun:
    """A chapter's model with a checkpoint's weights, in eval mode, and what produced it."""

    cfg: Any  # the run's config (chapter schema) with the evaluation overrides applied
    model: nn.Module
    tokenizer: Tokenizer
    weights: Path  # the model.safetensors that was loaded
    step: int  # optimizer steps of that checkpoint
    model_name: str
    run_dir: Path

    def meta(self, tool: str) -> Dict[str, Any]:
        """Identifying columns of result rows produced by the eval CLI ``tool``."""
        cfg = self.cfg
        return {"chapter": cfg.chapter, "run": cfg.run, "model": self.model_name,
                "teacher": cfg.teacher.name if "teacher" in cfg else "",
                "preset": cfg.preset, "seed": cfg.train.seed if "train" in cfg else "",
                "steps": self.step,
                "params_m": round(sum(p.numel() for p in self.model.parameters()) / 1e6, 2),
                "notes": f"eval.{tool} on {self.weights.parent.name}"}


def find_run_dir(path: str | Path) -> Path:
    """The run folder of ``path`` (itself, or the nearest parent holding ``config.yaml``)."""
    path = Path(path).resolve()
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a run folder (runs/<chapter>/<run>), one "
                        f"of its checkpoints/step_* folders or a {MODEL_FILE}")
    for folder in [path, *path.parents][:5]:
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise DataError(f"no {CONFIG_FILE} in {path} or its parents; pass a run folder written by a "
                    f"chapter (runs/<chapter>/<run>) or a checkpoint inside one")


def chapter_declaration(name: str) -> Declaration:
    """The ``CHAPTER`` declaration of ``experiments/<name>/run.py``, as one-line errors."""
    try:
        return chapter(name).declaration
    except KeyError as err:
        raise DataError(f"the run's chapter is unknown: {err.args[0]}") from None
    except TypeError as err:
        raise DataError(f"{err}; eval CLIs need it to rebuild the chapter's model") from None


def load_run_config(run_dir: Path, name: str, overrides: Sequence[str]) -> Any:
    """The saved config, typed by the chapter's schema, with ``overrides`` applied."""
    cfg = load_config(chapter(name).schema, run_dir / CONFIG_FILE, overrides)
    _disable_init(cfg)
    return cfg


def _disable_init(node: Any) -> None:
    """Blank every ``init`` (pretrained weights path) in the config tree."""
    if isinstance(node, DictConfig):
        for key in node:
            if key == "init" and isinstance(node[key], str):
                node[key] = ""
            else:
                _disable_init(node[key])


def _build(declared: Declaration, cfg: Any, tokenizer: Tokenizer) -> nn.Module:
    """The declared ``build_model`` with the vocabulary size taken from ``tokenizer``."""
    if "text" in cfg and "vocab_size" in cfg.text:
        cfg.text.vocab_size = tokenizer.vocab_size
    return declared.build_model(cfg, tokenizer)


def model_label(cfg: Any) -> str:
    """The ``model`` of the chapter's newest own row for this run and seed, else the chapter."""
    rows = load_results(str(results_dir(cfg.chapter) / "*.csv"))
    seed = cfg.train.seed if "train" in cfg else None
    mine = rows[(rows["run"] == cfg.run) & ~rows["reference"] & (rows["seed"] == seed)
                & ~rows["model"].fillna("").str.startswith("teacher:")]
    if mine.empty:
        return str(cfg.chapter)
    return str(mine.sort_values("timestamp", kind="stable")["model"].iloc[-1])


def _step(weights: Path) -> int:
    name = weights.parent.name
    return int(name.split("_")[-1]) if name.startswith("step_") else -1


def load_run(path: str | Path, overrides: Sequence[str] = (), device: str | None = None) -> LoadedRun:
    """Rebuild the model of the run at ``path`` and load its weights.

    ``path``: a run folder (newest checkpoint), a ``checkpoints/step_*`` folder or a
    ``model.safetensors`` inside a run folder. ``overrides`` (``key=value``) change the
    evaluation setting, typically ``data.*`` (``data.source=real data.root=/datasets``) or
    ``eval.batch_size``; keys that shape the model must stay as trained.
    """
    run_dir = find_run_dir(path)
    if Path(path).resolve() == run_dir and not list_checkpoints(run_dir):
        raise DataError(f"{run_dir} has no checkpoints/step_* folder yet; let the run finish or "
                        f"pass a checkpoint")
    name = OmegaConf.load(run_dir / CONFIG_FILE).get("chapter")
    if not name:
        raise DataError(f"{run_dir / CONFIG_FILE} names no chapter; was it written by a chapter?")
    declared = chapter_declaration(str(name))
    cfg = load_run_config(run_dir, str(name), overrides)
    tokenizer = build_tokenizer(cfg.data)
    model = _build(declared, cfg, tokenizer)
    weights = load_weights(model, path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    log.info("loaded %s (chapter %s, run %s) on %s", weights, cfg.chapter, cfg.run, device)
    return LoadedRun(cfg=cfg, model=model, tokenizer=tokenizer, weights=weights,
                     step=_step(weights), model_name=model_label(cfg), run_dir=run_dir)
