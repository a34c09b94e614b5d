"""MM-D2V2 / Sx3HRe, the recipe of chapters 3-5, in one place.

A student of modality-specific blocks (the first blocks of data2vec 2.0 image and text) and
shared blocks (:class:`~common.models.multimodal.MultimodalEncoder`) learns without labels
from a frozen *unimodal* image teacher:

    loss = [MSE(kd_map(CLS(image)), t) + MSE(kd_map(CLS(text)), t)]     (t: teacher vector of the image)
         + align_weight * {ITC | 0 | cos}

- :func:`cls_distillation`: both CLS outputs regress the teacher's vector of the paired
  image (:func:`common.models.teachers.teacher_embedding`), as it is or standardised over the
  batch (``head.kd_target``);
- the alignment term (``align``): ``itc``, CLIP's contrastive loss on the retrieval
  embeddings, optionally over memory banks with momentum keys
  (:func:`common.memory_bank.banked_itc_loss`); ``none``, distillation alone (chapter 3,
  chapter 4's -ITC); ``cos``, SHRe's cosine-embedding alignment, one random negative per pair.
  Without a teacher (chapter 5's "no distillation" run) only the alignment term is left;
- :func:`train_multimodal`: one seed of one variant, trained by ``fit`` on the image-text
  pairs, evaluated by :func:`alignment_rows` (recall at every level of the model, pair
  cosines) and written as result rows.

Chapter 3 (``separate_self_attention``) varies the architecture, chapter 4 (``itc_ablation``)
the alignment term, chapter 5 (``teacher_comparison``) the teacher; each ``run.py`` only
declares its variants.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from common.bench import BenchCase, synthetic_image_text_batch
from common.config import (ConfigError, DataConfig, EncoderConfig, EvalConfig, ImageEncoderConfig,
                           TeacherConfig, TextEncoderConfig, TrainConfig)
from common.data.datasets import collate_image_text
from common.data.multi import image_text_stream
from common.data.sources import dataset_name, open_source, zero_shot_name
from common.data.tokenizer import Tokenizer, build_tokenizer
from common.data.transforms import train_transform
from common.evaluation import embed_images, embed_texts
from common.experiment import EvalSets, markdown_table, run_folder, run_meta, write_rows
from common.losses import cosine_alignment_loss, kd_mse_loss
from common.memory_bank import banked_itc_loss
from common.models.encoder import build_image_encoder
from common.models.multimodal import (LEVELS, HeadConfig, MultimodalEncoder, MultimodalOutput,
                                      build_multimodal, teacher_width)
from common.models.teachers import build_teacher, teacher_embedding
from common.retrieval import mean_recall, pair_cosines, retrieval_recall
from common.sweep import Variant, chapter_runs
from common.targets import batch_standardized
from common.train import fit

log = logging.getLogger(__name__)

NO_TEACHER = "none"  # teacher.name of a run without distillation
LossFn = Callable[[nn.Module, Dict[str, Tensor]], Dict[str, Tensor]]


# ---------------------------------------------------------------------------- configuration
ALIGNMENTS = ("itc", "none", "cos")


@dataclass
class MultimodalChapterConfig:
    """The settings of a chapter that trains :class:`~common.models.multimodal.MultimodalEncoder`
    students (chapters 3-5): each chapter's ``run.py`` subclasses it with its name and
    defaults, and its ``tiny.yaml`` / ``full.yaml`` set the values."""

    chapter: str = ""
    run: str = ""  # the results file: results/<chapter>/<run>.csv
    preset: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)  # modality-specific blocks
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    shared: EncoderConfig = field(default_factory=lambda: EncoderConfig(depth=1))
    head: HeadConfig = field(default_factory=HeadConfig)  # projections, temperature, bank size
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    variants: List[Variant] = field(default_factory=list)
    only: List[str] = field(default_factory=list)  # run only these variants (by name)
    seeds: int = 1  # seeds per trained variant; the SEEDS environment variable overrides it
    # the key=value overrides it was started with (recorded in the result rows)
    overrides: List[str] = field(default_factory=list)


@dataclass
class AlignedChapterConfig(MultimodalChapterConfig):
    """A multimodal chapter trained by :func:`alignment_losses` (chapters 4 and 5)."""

    align: str = "itc"  # the alignment term on top of distillation: itc | none | cos
    align_weight: float = 1.0
    cos_margin: float = 0.0  # CosineEmbeddingLoss margin of the `cos` term


# ---------------------------------------------------------------------------- the student and its loss
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


def cls_distillation(model: nn.Module, teacher: nn.Module, batch: Dict[str, Tensor]
                     ) -> Tuple[MultimodalOutput, MultimodalOutput, Optional[Tensor], Dict[str, Tensor]]:
    """Label-free feature KD: image CLS and text CLS both regress the teacher's vector of the
    paired image (:func:`common.models.teachers.teacher_embedding`, MSE), as it is or
    standardised over the batch (``head.kd_target``, :func:`common.targets.batch_standardized`).

    Returns (image levels, text levels, logit scale (None unless the model is contrastive),
    ``{"kd_image", "kd_text"}``) so that a chapter can add an alignment term on the same
    forward pass.
    """
    target = teacher_embedding(teacher, batch["image"]).float()  # B x D_teacher, no grad
    if getattr(model, "module", model).kd_target == "batch":  # DDP/DeepSpeed wrap the model
        target = batch_standardized(target)
    image, text, scale = model(batch["image"], batch["text_ids"], batch["text_padding_mask"])
    terms = {"kd_image": kd_mse_loss(image.kd.float(), target),
             "kd_text": kd_mse_loss(text.kd.float(), target)}
    return image, text, scale, terms


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


def alignment_bench(build_model: Callable[[Any, int], nn.Module]) -> Callable[[Any], BenchCase]:
    """A chapter's ``bench`` (``make bench PRESET=full``) for a chapter trained by
    :func:`alignment_losses` with its config's ``align`` / ``align_weight`` / ``cos_margin``
    (distillation alone where the config has none): the training step at the preset's size
    with random weights (nothing to download) and a teacher of ``teacher.encoder``'s
    architecture (ViT-B/16)."""

    def bench(cfg: Any) -> BenchCase:
        cfg.image.init = cfg.text.init = ""
        teacher = build_image_encoder(cfg.teacher.encoder)
        cfg.head.target_dim = teacher.dim
        batch = synthetic_image_text_batch(cfg.train.batch_size, cfg.data.image_size,
                                           cfg.data.max_text_len, cfg.text.vocab_size)
        align = getattr(cfg, "align", "none")
        weight, margin = getattr(cfg, "align_weight", 1.0), getattr(cfg, "cos_margin", 0.0)

        def loss(model: nn.Module, b: Dict[str, Tensor]) -> Tensor:
            return alignment_losses(model, teacher, b, align, weight, margin)["loss"]

        return BenchCase(build_model(cfg, 1), loss, batch, frozen=[teacher])

    return bench


# ---------------------------------------------------------------------------- a chapter's runs
RunVariant = Callable[[Variant, Any, str], List[Dict[str, Any]]]


def run_variants(cfg: Any, run_variant: RunVariant, table: Sequence[str]) -> List[Dict[str, Any]]:
    """Every (variant, seed) run of a chapter config (``variants``, ``only``, ``seeds`` /
    ``SEEDS``), one after another through ``run_variant(variant, cfg of the run, results
    file)``; the rows are logged as a markdown table of ``table``'s columns. Bad overrides and
    settings that would train nothing useful (:func:`check_alignment`) fail before anything
    trains."""
    runs = chapter_runs(cfg)
    for variant, vcfg in runs:
        if variant.kind != "unimodal_pair":
            check_alignment(variant.name, getattr(vcfg, "align", "none"), vcfg.head.proj,
                            has_teacher=vcfg.teacher.name != NO_TEACHER)
    rows = [row for variant, vcfg in runs for row in run_variant(variant, vcfg, cfg.run)]
    log.info("results:\n%s", markdown_table(rows, table))
    return rows


# ---------------------------------------------------------------------------- one run: train, evaluate, write rows
def prepare_distillation(cfg: Any) -> Tuple[EvalSets, Tokenizer, Optional[nn.Module]]:
    """Evaluation sets (opened first: a missing dataset stops before any training), tokenizer
    and frozen teacher of a :class:`~common.models.multimodal.MultimodalEncoder` run
    (``None`` for ``teacher.name=none``: a run without distillation).

    Fills ``cfg.text.vocab_size`` (tokenizer) and ``cfg.head.target_dim`` (teacher width)
    before the run folder is written, so its ``config.yaml`` rebuilds the same model.
    """
    evals = EvalSets(cfg.data, cfg.eval)
    tokenizer = build_tokenizer(cfg.data)
    cfg.text.vocab_size = tokenizer.vocab_size
    if cfg.teacher.name == NO_TEACHER:
        cfg.head.target_dim = 0
        return evals, tokenizer, None
    teacher = build_teacher(cfg.teacher, cfg.data)
    cfg.head.target_dim = teacher_width(teacher, cfg.data.image_size)
    return evals, tokenizer, teacher


def train_multimodal(cfg: Any, model: MultimodalEncoder, losses: LossFn, teacher: Optional[nn.Module],
                     evals: EvalSets, tokenizer: Tokenizer, *, model_name: str,
                     results_file: str, reference_rows: Sequence[Dict[str, Any]] = ()
                     ) -> List[Dict[str, Any]]:
    """Train a :class:`~common.models.multimodal.MultimodalEncoder` on the image-text pairs
    of ``cfg.data`` with ``losses`` (``fit``'s loss function), then evaluate it
    (:meth:`EvalSets.alignment_rows`, plus a zero-shot row when ``cfg.eval.zero_shot`` is set)
    and append the rows to ``results/<chapter>/<results_file>.csv`` at once, so a later
    failure keeps them. ``reference_rows`` (e.g. the teacher's own kNN, measured before
    training) are written in the same append, ahead of the student's, so a run that fails
    leaves no rows without their student. One seed of one variant: ``runs/<chapter>/<run>-seed<k>/``."""
    out_dir = run_folder(cfg, f"{cfg.run}-seed{cfg.train.seed}")
    stream = image_text_stream(open_source(cfg.data, "train"),
                               train_transform(cfg.data.image_size, cfg.data.crop_scale, cfg.data.hflip),
                               cfg.train.seed, cfg.train.batch_size)
    result = fit(model, losses, stream, cfg.train, out_dir,
                 collate_fn=collate_image_text(tokenizer, cfg.data.max_text_len),
                 num_workers=cfg.data.num_workers, frozen=[teacher] if teacher is not None else [])
    model.eval()
    meta = run_meta(cfg, model, model_name=model_name, teacher=cfg.teacher.name,
                    steps=result.step, train_minutes=result.train_minutes)
    rows = alignment_rows(evals, model, tokenizer, meta)
    if evals.zero_shot is not None:
        zs = evals.zero_shot_metrics(model, tokenizer)
        rows.append({**meta, "dataset": zero_shot_name(cfg.data, cfg.eval.zero_shot), **zs})
    write_rows(cfg.chapter, results_file, [*reference_rows, *rows])
    return rows


def alignment_rows(evals: EvalSets, model: MultimodalEncoder, tokenizer: Tokenizer,
                   meta: Dict[str, Any], retrieve: str = "embedding") -> List[Dict[str, Any]]:
    """Rows of a :class:`~common.models.multimodal.MultimodalEncoder` (chapters 3-5), one
    per retrieval set: recall at the ``retrieve`` level (``embedding``: what the model
    retrieves with; ``encoder``: the modality encoders alone, the unimodal pair), mean
    recall, and the mean cosine of matching / non-matching pairs after the encoders and
    after the shared blocks. R@1 at every level goes to ``notes``. One forward pass per
    input yields all levels."""
    device, d = next(model.parameters()).device, model.image.dim

    def levels(out: MultimodalOutput) -> Tensor:  # B x (D + D + E)
        return torch.cat([out.encoder_cls, out.cls, out.embedding], dim=-1)

    def split(emb: Tensor) -> Dict[str, Tensor]:
        return {"encoder": emb[:, :d], "shared": emb[:, d:2 * d], "embedding": emb[:, 2 * d:]}

    rows = []
    for role, rset in evals.retrieval.items():
        images, _ = embed_images(lambda x: levels(model.forward_image(x)), rset, device,
                                 evals.evals.batch_size, evals.data.num_workers)
        texts = embed_texts(lambda ids, pad: levels(model.forward_text(ids, pad)), rset.captions,
                            tokenizer, evals.data.max_text_len, device, 2 * evals.evals.batch_size)
        images, texts = split(images), split(texts)
        recall = {level: retrieval_recall(images[level], texts[level], rset.text_image_ids)
                  for level in LEVELS if level != "embedding" or model.proj != "none"}
        recall.setdefault("embedding", recall["shared"])  # no projection: the same vectors
        cosines = {level: pair_cosines(images[level], texts[level], rset.text_image_ids)
                   for level in ("encoder", "shared")}
        name = dataset_name(evals.data, role)
        notes = "R@1 i2t/t2i by level: " + ", ".join(
            f"{level} {recall[level]['i2t_r1']:.2f}/{recall[level]['t2i_r1']:.2f}" for level in LEVELS)
        log.info("%s: %s; %s", name, " ".join(f"{k}={v:.2f}" for k, v in recall[retrieve].items()),
                 notes)
        rows.append({**meta, "dataset": name, **recall[retrieve], **mean_recall(recall[retrieve]),
                     **{f"cos_{kind}_{level}": round(c[kind], 4)
                        for level, c in cosines.items() for kind in ("pos", "neg")},
                     "notes": notes})
    return rows
