"""Chapter 1: unimodal vision knowledge distillation (thesis drafts 002 and 003).

A frozen self-supervised ViT teacher (full: data2vec 2.0 image or BEiT v2, ViT-B/16; tiny:
a label-free ViT bootstrapped on the synthetic world) is distilled into a shallow ALiBi
ViT student (full: 5 blocks, MLP ratio 3; or the teacher's first blocks). The student has
no patch embedding of its own: it *shares the teacher's frozen one*, computed once per
batch and fed to the teacher's blocks and to the student's blocks
(:meth:`~common.models.encoder.Encoder.forward_tokens`), which saves its parameters,
memory and one forward pass per step. The objective is data2vec's target on every time
step including CLS, for teacher and student alike:

    Y     = LayerNorm(mean_l InstanceNorm(teacher layer l))     # l over target.teacher_layers
    Y_hat = LayerNorm(mean_l InstanceNorm(student layer l))     # l over target.student_layers
    loss  = MSE(Y_hat, Y)                                       # draft 003, eq. (1)-(6)

No labels are read during training. Validation every ``train.eval_every`` steps is kNN
retrieval (draft 002, listing 1): the ``knn_train`` split is the bank and ``knn_test`` the
queries, and the reverse, top-1 and top-3, on a 100-class and a 10-class label set
(CIFAR-100 / CIFAR-10 in ``full``). At the end the student is linearly probed and fully
fine-tuned with layer decay (:mod:`common.finetune`), and the same kNN protocol scores the
teacher and the untrained student (same code and seed, teacher embedding, no training) as
reference rows. Rows go to ``results/unimodal_vision_kd/<run>.csv``.

    python experiments/unimodal_vision_kd/run.py                  # tiny preset (CPU, minutes)
    python experiments/unimodal_vision_kd/run.py preset=full      # the thesis setting (GPU)
    python experiments/unimodal_vision_kd/run.py train.steps=200 student.depth=1
    SEEDS=3 python experiments/unimodal_vision_kd/run.py          # seeds 0, 1, 2 (vision_kd, vision_kd-seed1, ...)
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Dict, FrozenSet, List, Optional, Sequence

import torch
from torch import Tensor, nn

from common.bench import BenchCase
from common.chapters import Declaration
from common.cli import main
from common.config import (DataConfig, EvalConfig, ImageEncoderConfig, TeacherConfig, TrainConfig,
                           parse_cli)
from common.data.datasets import ImageLabelSet, TrainStream
from common.data.sources import open_source
from common.data.transforms import train_transform
from common.experiment import markdown_table, run_folder, run_meta, write_rows
from common.finetune import FinetuneConfig, cifar_finetune_rows
from common.knn import KnnConfig, KnnSets
from common.losses import kd_mse_loss
from common.models.embed import ImageEmbed
from common.models.encoder import Encoder, build_image_encoder, pool_tokens
from common.models.vision_student import (SharedEmbedConfig, VisionStudent, build_student,
                                          build_vit_teacher, init_student, shared_embed_settings)
from common.models.teachers import teacher_report
from common.paths import runs_dir
from common.sweep import seed_count, seed_runs
from common.targets import layer_averaged_targets
from common.train import fit

log = logging.getLogger("vision_kd")
HERE = Path(__file__).resolve().parent
TABLE = ["model", "dataset", "knn_top1", "knn_top3", "ft_top1", "ft_top5", "params_m",
         "train_minutes", "steps"]


@dataclass
class TargetConfig:
    """Which layers enter the layer-averaged targets (0 = all, the thesis; k = the top k,
    data2vec's top-K) and which of data2vec's normalisations are applied."""

    teacher_layers: int = 0
    student_layers: int = 0
    instance_norm: bool = True
    layer_norm: bool = True


@dataclass
class VisionKdConfig:
    """The chapter's settings; ``tiny.yaml`` / ``full.yaml`` set their values."""

    chapter: str = "unimodal_vision_kd"
    run: str = "vision_kd"  # the results file: results/unimodal_vision_kd/<run>.csv
    preset: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    train_role: str = "train"  # the unlabelled training images (full: imagenet_train)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    # the student's blocks; its embedding is the teacher's (freeze_embed must stay true)
    student: ImageEncoderConfig = field(default_factory=lambda: ImageEncoderConfig(
        depth=5, mlp_ratio=3.0, freeze_embed=True))
    student_init: str = "random"  # random | teacher (the teacher's first student.depth blocks)
    shared_embed: SharedEmbedConfig = field(default_factory=SharedEmbedConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(retrieval=[], zero_shot=""))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # full fine-tuning recipe
    # the linear probe's recipe (always mode linear: frozen encoder, no RandAugment/mixup/erasing)
    linear_probe: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(mode="linear"))
    finetune_modes: List[str] = field(default_factory=lambda: ["linear", "full"])  # [] = skip
    # label sets to fine-tune on: fine (CIFAR-100 / 100 synthetic classes), coarse (CIFAR-10 / 10)
    finetune_labels: List[str] = field(default_factory=lambda: ["fine"])
    finetune_untrained: bool = True  # also fine-tune the untrained student (a reference row)
    seeds: int = 1  # runs with seeds train.seed, +1, ...; the SEEDS environment variable overrides it
    # the key=value overrides it was started with (recorded in the result rows)
    overrides: List[str] = field(default_factory=list)
    # how the student is validated and fine-tuned: a continued run may change these
    RESUMABLE_SECTIONS: ClassVar[FrozenSet[str]] = frozenset({
        "knn", "finetune", "linear_probe", "finetune_modes", "finetune_labels", "finetune_untrained"})


def build_model(cfg: VisionKdConfig, embed: Optional[ImageEmbed] = None) -> VisionStudent:
    """The student of ``cfg`` (see :func:`common.models.vision_student.build_student`)."""
    return build_student(cfg.student, cfg.shared_embed, cfg.knn.pool, cfg.train.seed, embed)


# ---------------------------------------------------------------------------- the student and its objective
def _top(layers: Sequence[Tensor], k: int) -> Sequence[Tensor]:
    return layers if k <= 0 else layers[-k:]


def kd_losses(model: nn.Module, teacher: Encoder, images: Tensor,
              target: TargetConfig) -> Dict[str, Tensor]:
    """The chapter's loss on one batch, plus its CLS and patch parts (logged only).

    The shared embedding runs once; its tokens feed the teacher's and the student's blocks.
    """
    with torch.no_grad():
        tokens = teacher.embed_inputs(images)  # B x T x D, shared by teacher and student
        layers = teacher.forward_tokens(tokens, return_layers=True).layers
        y = layer_averaged_targets(_top(layers, target.teacher_layers), target.instance_norm,
                                   target.layer_norm)  # B x T x D, fp32
    student_layers = model(tokens).layers
    y_hat = layer_averaged_targets(_top(student_layers, target.student_layers),
                                   target.instance_norm, target.layer_norm)  # B x T x D
    loss = kd_mse_loss(y_hat, y)
    with torch.no_grad():
        n = teacher.embed.num_extra_tokens  # CLS
        cls = kd_mse_loss(y_hat[:, :n], y[:, :n])
        patches = kd_mse_loss(y_hat[:, n:], y[:, n:])
    return {"loss": loss, "kd_cls": cls, "kd_patches": patches}


# ---------------------------------------------------------------------------- the chapter
def run(cfg: VisionKdConfig) -> List[dict]:
    """Every seed's run (``seeds`` / ``SEEDS``); see :func:`common.sweep.seed_runs`."""
    return [row for name, seeded in seed_runs(cfg, seed_count(cfg.seeds)) for row in run_seed(seeded, name)]


def run_seed(cfg: VisionKdConfig, name: str) -> List[dict]:
    """Distil, validate, fine-tune one seed in ``runs/unimodal_vision_kd/<name>/``; write and
    return its result rows."""
    torch.manual_seed(cfg.train.seed)
    knn = KnnSets(cfg.data, cfg.knn, cfg.eval.batch_size)  # a missing dataset stops here
    train_images = ImageLabelSet(open_source(cfg.data, cfg.train_role),  # labels never read
                                 train_transform(cfg.data.image_size, cfg.data.crop_scale,
                                                 cfg.data.hflip))
    teacher = build_vit_teacher(cfg.teacher, cfg.data)
    cfg.shared_embed = shared_embed_settings(teacher.embed)
    model = build_model(cfg, embed=teacher.embed)
    init_student(cfg.student, cfg.student_init, model.image, teacher)
    out_dir = run_folder(cfg, name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device)
    model.to(device).eval()
    num_extra = teacher.embed.num_extra_tokens

    with torch.no_grad():  # references, by the same kNN code: the teacher and the untrained student
        teacher_knn = knn.metrics(lambda x: pool_tokens(teacher(x).x, cfg.knn.pool, num_extra),
                                  device)
        untrained_knn = knn.metrics(model.encode_image, device)
    untrained = copy.deepcopy(model.image) if cfg.finetune_untrained else None
    log.info("teacher kNN: %s", teacher_knn)
    log.info("untrained student kNN: %s", untrained_knn)

    result = fit(model, lambda m, batch: kd_losses(m, teacher, batch["image"], cfg.target),
                 TrainStream(train_images, seed=cfg.train.seed), cfg.train, out_dir,
                 num_workers=cfg.data.num_workers, frozen=[teacher],
                 evaluate=lambda m, step: knn.metrics(m.encode_image, device))
    model.eval()
    distilled_knn = {k: v for k, v in result.history[-1].items() if k != "step"}

    label = f"student {cfg.student.depth} block{'s' if cfg.student.depth > 1 else ''}"
    meta = run_meta(cfg, model, model_name=f"{label} (distilled)", teacher=cfg.teacher.name,
                    steps=result.step, train_minutes=result.train_minutes)
    untrained_meta = {**meta, "model": f"{label} (untrained)", "steps": 0, "train_minutes": 0.0}
    report = teacher_report(cfg.teacher, cfg.data)  # a tiny teacher's bootstrap; {} for weights
    teacher_meta = {**meta, "model": f"teacher:{cfg.teacher.name}", "steps": report.get("steps", ""),
                    "train_minutes": report.get("train_minutes", ""),
                    "params_m": round(sum(p.numel() for p in teacher.parameters()) / 1e6, 2)}
    rows = (knn.rows(teacher_knn, teacher_meta) + knn.rows(untrained_knn, untrained_meta)
            + knn.rows(distilled_knn, meta))
    write_rows(cfg.chapter, cfg.run, rows)  # kept even if fine-tuning fails later
    # the distilled student's rows last: the eval CLIs label this run by its newest row
    def finetune_rows(encoder: Encoder, which: str, row_meta: dict) -> List[dict]:
        return cifar_finetune_rows(cfg.data, encoder, {"full": cfg.finetune, "linear": cfg.linear_probe},
                                   cfg.finetune_modes, cfg.finetune_labels,
                                   runs_dir(cfg.chapter, name, "finetune"), which, row_meta)

    tuned = finetune_rows(untrained, "untrained", untrained_meta) if untrained is not None else []
    tuned += finetune_rows(model.image, "distilled", meta)
    if tuned:
        write_rows(cfg.chapter, cfg.run, tuned)
    rows += tuned
    log.info("results:\n%s", markdown_table(rows, TABLE))
    return rows


def bench_case(cfg: VisionKdConfig) -> BenchCase:
    """``make bench PRESET=full``: this chapter's training step at the preset's size, with
    random weights (nothing to download) and a teacher of ``teacher.encoder``'s architecture."""
    teacher = build_image_encoder(cfg.teacher.encoder)
    cfg.shared_embed = shared_embed_settings(teacher.embed)
    batch = {"image": torch.randn(cfg.train.batch_size, 3, cfg.data.image_size, cfg.data.image_size,
                                  generator=torch.Generator().manual_seed(0))}
    return BenchCase(build_model(cfg, embed=teacher.embed),
                     lambda m, b: kd_losses(m, teacher, b["image"], cfg.target)["loss"],
                     batch, frozen=[teacher])


# what eval/ rebuilds from a run's config.yaml and make bench runs (common.chapters)
CHAPTER = Declaration(config=VisionKdConfig,
                      build_model=lambda cfg, tokenizer: build_model(cfg),
                      bench=bench_case)


if __name__ == "__main__":
    main(lambda: run(parse_cli(VisionKdConfig, HERE)))
