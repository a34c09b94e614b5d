"""Fine-tune or linearly probe a checkpoint's encoder: image classification and GLUE text tasks.

Images (``--task imagenet|cifar100|cifar10``): mean-pooled patch tokens -> LayerNorm ->
linear, full fine-tuning with layer decay 0.81 and timm's RandAugment/mixup/cutmix/erasing,
or a linear probe on the frozen encoder (:mod:`common.finetune`). Text (``--task`` a GLUE
task, ``glue`` for all eight, or the synthetic stand-ins ``syn-shape``/``syn-pair`` of
tiny checkpoints): a head on the BOS output, sentence pairs joined by EOS, the official
GLUE metrics (:mod:`common.data.glue`).

Recipes: ``eval/configs/finetune_{image,text}_{tiny,full}.yaml`` by the run's preset;
change them with ``ft.<key>=<value>`` (e.g. ``ft.train.steps=50``). Fine-tuning runs live in
the run folder, ``<run folder>/finetune/<task>-<mode>-<recipe hash>/`` (curves,
checkpoints; the same command again resumes, or only reports when it is finished).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from common.config import load_config
from common.data.glue import GLUE_TASKS, SYNTHETIC_TASKS, load_task
from common.data.sources import dataset_name, open_source
from common.errors import DataError
from common.finetune import PROTOCOL, FinetuneConfig, finetune_classifier, finetune_text_classifier
from eval import cli
from eval.checkpoint_model import LoadedRun

CONFIGS = Path(__file__).resolve().parent / "configs"
# image task -> (train role, validation role, label set)
IMAGE_TASKS: Dict[str, Tuple[str, str, str]] = {
    "imagenet": ("imagenet_train", "imagenet_val", "fine"),
    "cifar100": ("knn_train", "knn_test", "fine"),
    "cifar10": ("knn_train", "knn_test", "coarse"),
}
TEXT_TASKS = (*GLUE_TASKS, "glue", *SYNTHETIC_TASKS)


def finetune_config(run: LoadedRun, modality: str, mode: str,
                    overrides: Sequence[str]) -> FinetuneConfig:
    """The preset recipe for the run's preset and ``modality``, with ``ft.*`` overrides."""
    preset = "full" if run.cfg.preset == "full" else "tiny"
    cfg = load_config(FinetuneConfig, CONFIGS / f"finetune_{modality}_{preset}.yaml",
                      [f"mode={mode}", *overrides])
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _tower(run: LoadedRun, modality: str) -> Any:
    encoder = getattr(run.model, modality, None)
    if encoder is None or not hasattr(encoder, "blocks"):
        raise DataError(f"the model of chapter '{run.cfg.chapter}' has no .{modality} encoder "
                        f"to fine-tune (eval.finetune needs model.image / model.text encoders)")
    return encoder


def _out_dir(run: LoadedRun, task: str, cfg: FinetuneConfig) -> Path:
    """``<run folder>/finetune/<task>-<mode>-<recipe hash>``: beside the checkpoint it starts
    from; the same recipe resumes there, a changed one gets its own folder."""
    recipe = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:8]
    return run.run_dir / "finetune" / f"{task}-{cfg.mode}-{digest}"


def image_rows(run: LoadedRun, task: str, cfg: FinetuneConfig) -> List[Dict[str, Any]]:
    data = run.cfg.data
    train_role, val_role, label = IMAGE_TASKS[task]
    if data.source == "synthetic" and train_role == "imagenet_train":
        train_role = "train"  # the synthetic world's labelled training split plays ImageNet train
    train, val = open_source(data, train_role, label), open_source(data, val_role, label)
    result = finetune_classifier(_tower(run, "image"), train, val, cfg, _out_dir(run, task, cfg),
                                 image_size=data.image_size)
    base = (dataset_name(data, val_role) if task == "imagenet"
            else f"{dataset_name(data, val_role)}{len(val.classnames)}")
    meta = run.meta("finetune")
    return [{**meta, "dataset": f"{base} ({PROTOCOL[cfg.mode]})", "ft_top1": result["ft_top1"],
             "ft_top5": result["ft_top5"], "train_minutes": round(result["train_minutes"], 2),
             "notes": f"{meta['notes']}; {PROTOCOL[cfg.mode]}, {result['steps']} steps"}]


def text_rows(run: LoadedRun, task_name: str, cfg: FinetuneConfig) -> List[Dict[str, Any]]:
    task, train, dev = load_task(task_name, run.cfg.data)
    tower = _tower(run, "text")
    result = finetune_text_classifier(tower, run.tokenizer, task, train, dev, cfg,
                                      _out_dir(run, task_name, cfg),
                                      max_len=min(run.cfg.data.max_text_len, tower.embed.max_len))
    meta = run.meta("finetune")
    notes = f"{meta['notes']}; {PROTOCOL[cfg.mode]}, {result['steps']} steps"
    if task_name in SYNTHETIC_TASKS:
        notes += "; synthetic stand-in task, not GLUE"
    return [{**meta, "dataset": name, "glue_score": value,
             "train_minutes": round(result["train_minutes"], 2), "notes": notes}
            for name, value in result.items() if "/" in name]


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    p = cli.parser("finetune", __doc__.splitlines()[0],
                   "--task cifar100 --mode linear ft.train.steps=50")
    p.add_argument("--task", default=None, choices=[*IMAGE_TASKS, *TEXT_TASKS],
                   help="image: imagenet (default) | cifar100 | cifar10; text: a GLUE task, "
                        "glue (all eight) or the synthetic stand-ins syn-shape | syn-pair")
    p.add_argument("--mode", default="full", choices=["full", "linear"],
                   help="full fine-tuning with layer decay, or a linear probe of the frozen encoder")
    args = p.parse_intermixed_args(argv)
    ft_overrides = [o[len("ft."):] for o in args.overrides if o.startswith("ft.")]
    args.overrides = [o for o in args.overrides if not o.startswith("ft.")]
    run = cli.load(args, needs=())  # the tower the task needs is checked by _tower
    task = args.task or "imagenet"
    if task in IMAGE_TASKS:
        rows = image_rows(run, task, finetune_config(run, "image", args.mode, ft_overrides))
        return cli.finish(run, rows, ["ft_top1", "ft_top5"])
    cfg = finetune_config(run, "text", args.mode, ft_overrides)
    rows = [row for name in (GLUE_TASKS if task == "glue" else [task])
            for row in text_rows(run, name, cfg)]
    return cli.finish(run, rows, ["glue_score"])


if __name__ == "__main__":
    cli.entry(main)
