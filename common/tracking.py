"""Experiment trackers (``train.log_with``) through Accelerate's tracker API.

``metrics.jsonl`` in the run folder stays the source of truth (figures, resume); a tracker
receives the same records as it grows: loss terms, lr, throughput and every evaluation
metric, plus the run's resolved ``config.yaml`` as hyperparameters. Choices: ``none``
(default), ``tensorboard``, ``wandb``, ``aim``, ``mlflow``, a comma-separated list, or
``all`` (every one of them that is installed). Each works without a network:

- TensorBoard writes event files to ``<run folder>/trackers/mmkd/`` (``tensorboard
  --logdir runs`` compares every run);
- W&B runs in offline mode unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads
  later); its files go to ``<run folder>/trackers/wandb/``;
- Aim keeps its repository in ``<run folder>/trackers/``;
- MLflow logs to ``MLFLOW_TRACKING_URI`` (default: its local store in the working directory).

Only the TensorBoard package ships with the project (requirements.txt); the others are one
``pip install`` away, and asking for one that is missing is a one-line config error.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, List

from accelerate import Accelerator
from omegaconf import OmegaConf

from common.config import ConfigError

# train.log_with name -> the package it needs
TRACKERS: Dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb", "aim": "aim",
                            "mlflow": "mlflow"}
PROJECT = "mmkd"


def tracker_names(log_with: str) -> List[str]:
    """The trackers ``train.log_with`` asks for (installed ones only for ``all``)."""
    names = [n.strip() for n in log_with.split(",") if n.strip() and n.strip() != "none"]
    if names == ["all"]:
        found = [n for n, pkg in TRACKERS.items() if importlib.util.find_spec(pkg) is not None]
        if not found:
            raise ConfigError("config error: train.log_with=all but no tracker package is "
                              f"installed; pip install one of {', '.join(TRACKERS.values())}")
        return found
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"config error: train.log_with={log_with}: unknown {unknown}; use none, "
                          f"all or a comma-separated list of {', '.join(TRACKERS)}")
    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"config error: train.log_with={log_with} needs the '{TRACKERS[name]}' "
                              f"package; pip install {TRACKERS[name]}, or set train.log_with=none")
    return names


def hyperparameters(out_dir: Path, fallback: Dict[str, Any]) -> Dict[str, Any]:
    """The run's resolved config (``config.yaml`` of the run folder, else ``fallback``) as flat
    ``section.key`` scalars, which every tracker accepts (lists become their text)."""
    path = out_dir / "config.yaml"
    tree = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else fallback

    def flat(node: Any, prefix: str = "") -> Dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        value = node if isinstance(node, (bool, int, float, str)) or node is None else str(node)
        return {prefix[:-1]: "" if value is None else value}

    return flat(tree)


def start_trackers(accelerator: Accelerator, names: List[str], out_dir: Path,
                   config: Dict[str, Any]) -> None:
    """Open the trackers of ``accelerator`` (built with ``log_with=names``) for the run in
    ``out_dir``; the run is named by its last two folders (``<chapter>/<run>``)."""
    if not names:
        return
    run_name = "/".join(out_dir.parts[-2:])
    trackers = out_dir / "trackers"
    init_kwargs = {"wandb": {"name": run_name, "dir": str(trackers),
                             "mode": os.environ.get("WANDB_MODE", "offline")},
                   "mlflow": {"run_name": run_name}}
    if "wandb" in names:
        trackers.mkdir(parents=True, exist_ok=True)  # wandb writes <dir>/wandb/ but needs <dir>
    accelerator.init_trackers(PROJECT, config=config,
                              init_kwargs={k: v for k, v in init_kwargs.items() if k in names})
