"""The objective of the MM-D2V2 / Sx3HRe students (chapters 3-5): label-free feature
distillation of both modalities plus at most one explicit alignment term.

    loss = [MSE(kd_map(CLS(image)), t) + MSE(kd_map(CLS(text)), t)]     (t: teacher CLS of the image)
         + align_weight * {ITC | 0 | cos}

- ``itc``: CLIP's contrastive loss on the retrieval embeddings, optionally over memory banks
  with momentum keys (:func:`common.memory_bank.banked_itc_loss`);
- ``none``: distillation alone (chapter 3, and chapter 4's -ITC);
- ``cos``: SHRe's cosine-embedding alignment, one random negative per pair.

Without a teacher (chapter 5's "no distillation" run) only the alignment term is left.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from torch import Tensor, nn

from common.bench import BenchCase, synthetic_image_text_batch
from common.config import ConfigError
from common.losses import cosine_alignment_loss
from common.experiment import MultimodalChapterConfig
from common.memory_bank import banked_itc_loss
from common.models.encoder import build_image_encoder
from common.models.multimodal import MultimodalEncoder, build_multimodal, cls_distillation

ALIGNMENTS = ("itc", "none", "cos")


@dataclass
class AlignedChapterConfig(MultimodalChapterConfig):
    """A multimodal chapter trained by :func:`alignment_losses` (chapters 4 and 5)."""

    align: str = "itc"  # the alignment term on top of distillation: itc | none | cos
    align_weight: float = 1.0
    cos_margin: float = 0.0  # CosineEmbeddingLoss margin of the `cos` term


def build_aligned_student(cfg: AlignedChapterConfig, pad_id: int) -> MultimodalEncoder:
    """The student of ``cfg``, with a logit scale (and banks) only for ``align=itc`` (what the
    eval CLIs rebuild from a run's config.yaml)."""
    return build_multimodal(cfg.image, cfg.text, cfg.shared, cfg.head, pad_id,
                            contrastive=cfg.align == "itc")


def check_alignment(name: str, align: str, proj: str, has_teacher: bool = True) -> None:
    """Settings that would train nothing useful, refused before anything trains."""
    if align not in ALIGNMENTS:
        raise ConfigError(f"config error: align={align} (run '{name}') is not one of {ALIGNMENTS}")
    if align == "none" and proj != "none":
        raise ConfigError(f"config error: run '{name}' has align=none but head.proj={proj}: no "
                          f"loss would train the projection that retrieval uses; set head.proj=none")
    if align == "none" and not has_teacher:
        raise ConfigError(f"config error: run '{name}' has neither a teacher (teacher.name=none) "
                          f"nor an alignment term (align=none): nothing to train; set align=itc or cos")


def alignment_losses(model: nn.Module, teacher: Optional[nn.Module], batch: Dict[str, Tensor],
                     align: str, align_weight: float = 1.0, cos_margin: float = 0.0) -> Dict[str, Tensor]:
    """``{"loss", "kd_image", "kd_text", "itc" | "cos", "logit_scale"}`` of one batch (the
    ``kd_*`` terms only with a ``teacher``; see the module docstring)."""
    if teacher is not None:
        image, text, scale, terms = cls_distillation(model, teacher, batch)
        loss: Tensor = terms["kd_image"] + terms["kd_text"]
    else:
        image, text, scale = model(batch["image"], batch["text_ids"], batch["text_padding_mask"])
        terms, loss = {}, 0.0
    if align == "itc":
        core = getattr(model, "module", model)  # the banks live on the unwrapped model (DDP/DeepSpeed)
        keys = (core.momentum_keys(batch["image"], batch["text_ids"], batch["text_padding_mask"])
                if core.momentum is not None else (None, None))
        terms["itc"] = banked_itc_loss(image.embedding.float(), text.embedding.float(), scale,
                                       core.image_bank, core.text_bank, *keys)
        terms["logit_scale"] = scale.detach()
        loss = loss + align_weight * terms["itc"]
    elif align == "cos":
        terms["cos"] = cosine_alignment_loss(image.embedding.float(), text.embedding.float(), cos_margin)
        loss = loss + align_weight * terms["cos"]
    return {"loss": loss, **terms}


def alignment_bench_case(cfg: Any, build_model: Callable[[Any, int], nn.Module],
                         align: str = "none", align_weight: float = 1.0,
                         cos_margin: float = 0.0) -> BenchCase:
    """``make bench PRESET=full`` for a chapter trained by :func:`alignment_losses`: its
    training step at the preset's size with random weights (nothing to download) and a
    teacher of ``teacher.encoder``'s architecture (ViT-B/16)."""
    cfg.image.init = cfg.text.init = ""
    teacher = build_image_encoder(cfg.teacher.encoder)
    cfg.head.target_dim = teacher.dim
    batch = synthetic_image_text_batch(cfg.train.batch_size, cfg.data.image_size,
                                       cfg.data.max_text_len, cfg.text.vocab_size)

    def loss(model: nn.Module, b: Dict[str, Tensor]) -> Tensor:
        return alignment_losses(model, teacher, b, align, align_weight, cos_margin)["loss"]

    return BenchCase(build_model(cfg, 1), loss, batch, frozen=[teacher])
