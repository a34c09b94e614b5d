"""Chapter 5: the importance of the teacher.

The thesis found that the same MM-D2V2 student aligns images and captions far better when
distilled from BEiT v2 than from data2vec 2.0 (Table 6), and blamed the way each teacher
trains the CLS token the student regresses (BEiT v2: a bottleneck that forces global
information into it; data2vec 2.0: the CLS regresses the mean of the patch targets). This
chapter asks the question directly: one student, one recipe, several teachers, and for
each teacher its *own* quality next to the student it produces.

- student and recipe: the Sx3HRe student of chapter 4 (:class:`common.models.multimodal.MultimodalEncoder`)
  trained by :func:`common.mm_d2v2.alignment_losses`: both CLS outputs regress the
  teacher's vector of the image (MSE) plus ITC on one projection of the shared CLS, so the
  embedding that retrieval uses is the one distillation shapes;
- teachers (``variants``): full: BEiT v2, data2vec 2.0 image and DINO (ViT-B/16); tiny: the
  label-free ``tiny-d2v`` (mean-of-patches CLS) and ``tiny-dino`` (DINO-trained CLS), the
  supervised ``tiny-cnn``, and ``teacher.name=none``: ITC alone, no distillation;
- teacher quality: kNN top-1/top-3 of the regressed vector (:func:`common.models.teachers.teacher_embedding`)
  with the ``knn_train`` split as bank and ``knn_test`` as queries (CIFAR-100/10 in full,
  the synthetic 100/10 classes in tiny), rows with ``model = teacher:<name>``;
- student quality: retrieval on both test sets and zero-shot classification.

``make figures`` plots teacher kNN against student mean recall (one point per teacher,
error bars over seeds): ``results/figures/teacher_comparison.png``.

    python experiments/teacher_comparison/run.py                       # tiny preset, all teachers
    python experiments/teacher_comparison/run.py only=[tiny-cnn,none]  # some of them
    SEEDS=3 python experiments/teacher_comparison/run.py               # three seeds per teacher
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import torch
from torch import nn

from common.chapters import Declaration
from common.cli import main
from common.config import parse_cli
from common.mm_d2v2 import (AlignedChapterConfig, alignment_bench, alignment_losses,
                            build_aligned_student, prepare_distillation, run_variants,
                            train_multimodal)
from common.knn import KnnConfig, KnnSets
from common.models.multimodal import HeadConfig
from common.models.teachers import teacher_embedding
from common.sweep import Variant

log = logging.getLogger("teachers")
HERE = Path(__file__).resolve().parent
TABLE = ["run", "model", "teacher", "dataset", "seed", "knn_top1", "knn_top3", "i2t_r1", "t2i_r1",
         "i2t_mean_recall", "t2i_mean_recall", "zs_top1", "train_minutes"]


@dataclass
class TeacherComparisonConfig(AlignedChapterConfig):  # each variant sets teacher.name
    chapter: str = "teacher_comparison"
    run: str = "teachers"  # the results file: results/teacher_comparison/<run>.csv
    head: HeadConfig = field(default_factory=lambda: HeadConfig(proj="shared"))
    knn: KnnConfig = field(default_factory=KnnConfig)  # how the teachers themselves are judged


build_model = build_aligned_student


def teacher_rows(cfg: TeacherComparisonConfig, teacher: nn.Module) -> List[dict]:
    """kNN rows of the teacher's own regressed vector, ``model = teacher:<name>``."""
    knn = KnnSets(cfg.data, cfg.knn, cfg.eval.batch_size)
    device = next(teacher.parameters()).device
    metrics = knn.metrics(lambda images: teacher_embedding(teacher, images), device)
    meta = {"chapter": cfg.chapter, "run": cfg.run, "model": f"teacher:{cfg.teacher.name}",
            "teacher": cfg.teacher.name, "preset": cfg.preset, "seed": cfg.train.seed,
            "params_m": round(sum(p.numel() for p in teacher.parameters()) / 1e6, 2)}
    log.info("teacher %s kNN: %s", cfg.teacher.name, metrics)
    return knn.rows(metrics, meta)


def run_variant(variant: Variant, cfg: TeacherComparisonConfig, results_file: str) -> List[dict]:
    """Judge the variant's teacher (a few seconds; every seed's run has its teacher rows, so
    one seed run on its own, as ``make exp-all`` runs them, writes what the chapter's loop
    writes), then train and evaluate the student; both sets of rows are written together
    once the student is evaluated."""
    torch.manual_seed(cfg.train.seed)
    evals, tokenizer, teacher = prepare_distillation(cfg)  # fills vocab size and teacher width
    judged = teacher_rows(cfg, teacher) if teacher is not None else []
    model = build_model(cfg, tokenizer.pad_id)
    return train_multimodal(
        cfg, model, lambda m, batch: alignment_losses(m, teacher, batch, cfg.align, cfg.align_weight,
                                                      cfg.cos_margin),
        teacher, evals, tokenizer, model_name=variant.model, results_file=results_file,
        reference_rows=judged)


def run(cfg: TeacherComparisonConfig) -> List[dict]:
    return run_variants(cfg, run_variant, TABLE)


# what eval/ rebuilds from a run's config.yaml and make bench runs (common.chapters)
CHAPTER = Declaration(config=TeacherComparisonConfig,
                      build_model=lambda cfg, tokenizer: build_model(cfg, tokenizer.pad_id),
                      bench=alignment_bench(build_model))


if __name__ == "__main__":
    main(lambda: run(parse_cli(TeacherComparisonConfig, HERE)))
