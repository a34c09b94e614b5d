"""Chapter 4: image-text contrastive learning (ITC), the memory bank, and the ITC ablation.

The student is the MM-D2V2 model of chapter 3 (:class:`common.models.multimodal.MultimodalEncoder`:
modality-specific blocks, then shared blocks), trained label-free by feature distillation:
the shared CLS of an image and of its caption both regress the frozen image teacher's CLS
vector of the image (MSE). This chapter (Sx3HRe in thesis draft 004) asks what one extra
*alignment* term adds on top (``align``):

- ``itc``: CLIP's symmetric contrastive loss on projected CLS vectors with a learnable
  temperature; ``head.proj`` puts the projections on the encoder CLS (one per modality,
  CLIP/FLAVA) or one on the shared CLS; retrieval uses the projected vectors. With
  ``head.bank_size > 0`` every image is also contrasted with the texts of a FIFO memory bank
  of past batches and every caption with the bank's images (:func:`common.memory_bank.banked_itc_loss`);
  across processes the batch part is gathered, so negatives span the global batch;
- ``none`` (-ITC): distillation alone; retrieval on the shared CLS;
- ``cos``: SHRe's cosine-embedding alignment of the shared CLS, one random negative caption
  per image (:func:`common.losses.cosine_alignment_loss`), independent of the batch size.

    loss = MSE(kd_map(CLS(image)), teacher(image)) + MSE(kd_map(CLS(text)), teacher(image))
         + align_weight * {ITC | 0 | cos}

Each ``variants`` entry of the preset is one row of the thesis table; result rows go to
``results/itc_ablation/<run>.csv``.

    python experiments/itc_ablation/run.py                       # tiny preset, all variants
    python experiments/itc_ablation/run.py preset=full           # the thesis setting (GPU)
    python experiments/itc_ablation/run.py only=[sx3hre-itc] head.proj=shared
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

import torch

from common.chapters import Declaration
from common.cli import main
from common.config import parse_cli
from common.mm_d2v2 import (AlignedChapterConfig, alignment_bench, alignment_losses,
                            build_aligned_student, prepare_distillation, run_variants,
                            train_multimodal)
from common.sweep import Variant

HERE = Path(__file__).resolve().parent
TABLE = ["run", "model", "dataset", "seed", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
         "t2i_r10", "i2t_mean_recall", "t2i_mean_recall", "params_m", "train_minutes"]


@dataclass
class ItcConfig(AlignedChapterConfig):
    chapter: str = "itc_ablation"
    run: str = "itc"  # the results file: results/itc_ablation/<run>.csv


build_model = build_aligned_student


def run_variant(variant: Variant, cfg: ItcConfig, results_file: str) -> List[dict]:
    """Train and evaluate one variant; its rows are written as soon as it is done."""
    torch.manual_seed(cfg.train.seed)
    evals, tokenizer, teacher = prepare_distillation(cfg)  # fills vocab size and teacher width
    model = build_model(cfg, tokenizer.pad_id)
    return train_multimodal(
        cfg, model, lambda m, batch: alignment_losses(m, teacher, batch, cfg.align, cfg.align_weight,
                                                      cfg.cos_margin),
        teacher, evals, tokenizer, model_name=variant.model, results_file=results_file)


def run(cfg: ItcConfig) -> List[dict]:
    return run_variants(cfg, run_variant, TABLE)


# what eval/ rebuilds from a run's config.yaml and make bench runs (common.chapters)
CHAPTER = Declaration(config=ItcConfig,
                      build_model=lambda cfg, tokenizer: build_model(cfg, tokenizer.pad_id),
                      bench=alignment_bench(build_model))


if __name__ == "__main__":
    main(lambda: run(parse_cli(ItcConfig, HERE)))
