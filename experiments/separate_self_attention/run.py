"""Chapter 3: separate self-attention (MM-D2V2), modality-specific blocks then shared blocks.

Images and captions run through their own encoder blocks (full: the first blocks of
data2vec 2.0 image / text; tiny: small ALiBi encoders), then through the same shared
blocks (:class:`common.models.multimodal.MultimodalEncoder`). There are no labels and no
contrastive term: the CLS output of the last shared block regresses the frozen
self-supervised image teacher's final CLS vector of the paired image, for the image *and*
for its caption (MSE; a linear map where the widths differ):

    loss = MSE(kd_map(CLS_shared(image)), teacher(image)) + MSE(kd_map(CLS_shared(text)), teacher(image))

Retrieval compares the shared CLS outputs by cosine similarity. The variants of the
thesis's Table 6 are rows of ``variants`` in the preset: the baseline (full: 5 specific + 1
shared block), "7" (one more specific block), "7_2" (one more shared block) and the
unimodal pair (the image encoder for images, the text encoder for captions, never aligned).
Result rows (recall, mean recall, cosine diagnostics, parameters, minutes) go to
``results/separate_self_attention/<run>.csv``.

    python experiments/separate_self_attention/run.py                   # tiny preset, all variants
    python experiments/separate_self_attention/run.py preset=full       # the thesis setting (GPU)
    python experiments/separate_self_attention/run.py only=[mm-d2v2] train.steps=200
    SEEDS=3 python experiments/separate_self_attention/run.py           # three seeds per variant
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import torch
from torch import Tensor, nn

from common.chapters import Declaration
from common.cli import main
from common.config import parse_cli
from common.experiment import run_meta, write_rows
from common.mm_d2v2 import (MultimodalChapterConfig, alignment_bench, alignment_losses,
                            alignment_rows, prepare_distillation, run_variants, train_multimodal)
from common.models.multimodal import MultimodalEncoder, build_multimodal
from common.sweep import Variant

HERE = Path(__file__).resolve().parent
TABLE = ["run", "model", "dataset", "seed", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
         "t2i_r10", "i2t_mean_recall", "t2i_mean_recall", "cos_pos_shared", "cos_neg_shared",
         "params_m", "train_minutes"]


@dataclass
class SsaConfig(MultimodalChapterConfig):
    chapter: str = "separate_self_attention"
    run: str = "ssa"  # the results file: results/separate_self_attention/<run>.csv


def build_model(cfg: SsaConfig, pad_id: int) -> MultimodalEncoder:
    """The student described by ``cfg`` (what the eval CLIs rebuild from a run's config.yaml)."""
    return build_multimodal(cfg.image, cfg.text, cfg.shared, cfg.head, pad_id)


def ssa_losses(model: nn.Module, teacher: nn.Module, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The chapter's objective: CLS regression of the teacher for both modalities, nothing else."""
    return alignment_losses(model, teacher, batch, align="none")


def run_variant(variant: Variant, cfg: SsaConfig, results_file: str) -> List[dict]:
    """Train (unless it is the unimodal pair) and evaluate one variant; its rows are written
    as soon as it is done, so a later failure keeps them."""
    torch.manual_seed(cfg.train.seed)
    evals, tokenizer, teacher = prepare_distillation(cfg)  # fills vocab size and teacher width
    model = build_model(cfg, tokenizer.pad_id)
    if variant.kind != "unimodal_pair":
        return train_multimodal(cfg, model, lambda m, batch: ssa_losses(m, teacher, batch), teacher,
                                evals, tokenizer, model_name=variant.model, results_file=results_file)
    model.eval()  # the unimodal pair is evaluated as built: no alignment training at all
    encoders = nn.ModuleList([model.image, model.text])
    meta = run_meta(cfg, encoders, model_name=variant.model, teacher="none", steps=0, train_minutes=0.0)
    rows = alignment_rows(evals, model, tokenizer, meta, retrieve="encoder")
    write_rows(cfg.chapter, results_file, rows)
    return rows


def run(cfg: SsaConfig) -> List[dict]:
    return run_variants(cfg, run_variant, TABLE)


# what eval/ rebuilds from a run's config.yaml and make bench runs (common.chapters)
CHAPTER = Declaration(config=SsaConfig,
                      build_model=lambda cfg, tokenizer: build_model(cfg, tokenizer.pad_id),
                      bench=alignment_bench(build_model))


if __name__ == "__main__":
    main(lambda: run(parse_cli(SsaConfig, HERE)))
