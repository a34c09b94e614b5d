"""Chapter 2: reproducing SHRe ("See, Hear, and Read: Deep Aligned Representations",
Aytar, Vondrick, Torralba 2017) with transformer encoders.

An image encoder and a text encoder (full: the first 7 blocks of data2vec 2.0 image / text;
tiny: small ALiBi encoders) feed their CLS outputs into one *shared* network
(Linear -> GELU -> LayerNorm -> Linear to the teacher's classes). A frozen supervised
image classifier (full: ImageNet ResNet-50; tiny: the bootstrapped CNN) is the teacher:

    loss = KL(teacher(image) || shared(image)) + KL(teacher(image) || shared(text))
         + ITC(normalised shared(image), normalised shared(text))   # CLIP/VLMo style

The caption never reaches the teacher: the text side learns the teacher's class
distribution of the *image* it describes. Validation: CLIP-style zero-shot classification
every ``train.eval_every`` steps; at the end, zero-shot retrieval on the COCO-like and
Flickr-like test sets. Result rows go to ``results/shre/<run>.csv``.

    python experiments/shre/run.py                      # tiny preset (CPU, minutes)
    python experiments/shre/run.py preset=full          # the thesis setting (GPU)
    python experiments/shre/run.py train.steps=200 image.depth=2
    SEEDS=3 python experiments/shre/run.py              # seeds 0, 1, 2 (runs/shre/shre, shre-seed1, ...)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import timm
import torch
from torch import Tensor, nn

from common.bench import BenchCase, synthetic_image_text_batch
from common.chapters import Declaration
from common.cli import main
from common.config import (ConfigError, DataConfig, EvalConfig, ImageEncoderConfig, TeacherConfig,
                           TextEncoderConfig, TrainConfig, parse_cli)
from common.data.datasets import collate_image_text
from common.data.multi import image_text_stream
from common.data.sources import open_source
from common.data.tokenizer import build_tokenizer
from common.data.transforms import train_transform
from common.experiment import EvalSets, markdown_table, run_folder, run_meta, write_rows
from common.losses import itc_loss, kd_kl_loss
from common.models import SharedHead, build_image_encoder, build_text_encoder
from common.models.dual import DualEncoder
from common.models.registry import init_encoder
from common.models.teachers import build_teacher, teacher_report
from common.sweep import seed_count, seed_runs
from common.train import fit

HERE = Path(__file__).resolve().parent


@dataclass
class ShreConfig:
    chapter: str = "shre"
    run: str = "shre"
    preset: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    head_hidden: float = 4.0  # shared network: Linear(D, 4D) -> GELU -> LN -> Linear(4D, C)
    # C: the teacher's classes, filled from the teacher before the run folder is written (so
    # config.yaml rebuilds the model without it); 0 = not known yet
    head_classes: int = 0
    kd_weight: float = 1.0
    itc_weight: float = 1.0
    seeds: int = 1  # runs with seeds train.seed, +1, ...; the SEEDS environment variable overrides it
    # the key=value overrides it was started with (recorded in the result rows)
    overrides: List[str] = field(default_factory=list)


def build_model(cfg: ShreConfig, pad_id: int) -> DualEncoder:
    """Two encoders (optionally initialised from pretrained checkpoints) and one shared head
    with one output per teacher class (``cfg.head_classes``)."""
    if cfg.head_classes <= 0:
        raise ConfigError(f"config error: head_classes={cfg.head_classes}; it is the teacher's "
                          f"number of classes, set from the teacher by run()")
    image = init_encoder(build_image_encoder(cfg.image), cfg.image, "image")
    text = init_encoder(build_text_encoder(cfg.text, pad_id), cfg.text, "text")
    head = SharedHead(cfg.image.dim, cfg.head_classes, hidden=cfg.head_hidden)
    return DualEncoder(image, text, image_head=head, text_head=head)


@torch.no_grad()
def teacher_classes(teacher: nn.Module, image_size: int) -> int:
    """The number of classes the teacher's logits have (the shared head's output size), from
    one blank image: whatever the zero-shot set is, the student regresses the teacher."""
    device = next(teacher.parameters()).device
    logits = teacher(torch.zeros(1, 3, image_size, image_size, device=device))
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ConfigError(f"config error: SHRe needs a classifier teacher (logits per image), but "
                          f"teacher.name gives {type(logits).__name__} outputs; use tiny-cnn or a "
                          f"timm: classifier such as timm:resnet50.a1_in1k")
    return logits.shape[-1]


def shre_losses(model: nn.Module, teacher: nn.Module, batch: Dict[str, Tensor],
                kd_weight: float = 1.0, itc_weight: float = 1.0) -> Dict[str, Tensor]:
    """SHRe's objective on one batch; every term is returned for logging."""
    with torch.no_grad():
        target = teacher(batch["image"]).float()  # B x C teacher logits
    image, text, scale = model(batch["image"], batch["text_ids"], batch["text_padding_mask"])
    kd_image = kd_kl_loss(image.float(), target)
    kd_text = kd_kl_loss(text.float(), target)
    itc = itc_loss(image.float(), text.float(), scale)
    loss = kd_weight * (kd_image + kd_text) + itc_weight * itc
    return {"loss": loss, "kd_image": kd_image, "kd_text": kd_text, "itc": itc,
            "logit_scale": scale.detach()}


def run(cfg: ShreConfig) -> List[dict]:
    """Every seed's run (``seeds`` / ``SEEDS``); see :func:`common.sweep.seed_runs`."""
    return [row for name, seeded in seed_runs(cfg, seed_count(cfg.seeds)) for row in run_seed(seeded, name)]


def run_seed(cfg: ShreConfig, name: str) -> List[dict]:
    """Train SHRe with ``cfg.train.seed`` in ``runs/shre/<name>/``, evaluate, write the rows."""
    torch.manual_seed(cfg.train.seed)
    evals = EvalSets(cfg.data, cfg.eval)  # a missing dataset stops here, before any training
    train_source = open_source(cfg.data, "train")
    tokenizer = build_tokenizer(cfg.data)
    cfg.text.vocab_size = tokenizer.vocab_size
    teacher = build_teacher(cfg.teacher, cfg.data)
    cfg.head_classes = teacher_classes(teacher, cfg.data.image_size)
    out_dir = run_folder(cfg, name)
    model = build_model(cfg, tokenizer.pad_id)

    stream = image_text_stream(train_source, train_transform(cfg.data.image_size, cfg.data.crop_scale,
                                                             cfg.data.hflip),
                               cfg.train.seed, cfg.train.batch_size)
    result = fit(
        model,
        lambda m, batch: shre_losses(m, teacher, batch, cfg.kd_weight, cfg.itc_weight),
        stream, cfg.train, out_dir,
        collate_fn=collate_image_text(tokenizer, cfg.data.max_text_len),
        num_workers=cfg.data.num_workers,
        evaluate=lambda m, step: evals.zero_shot_metrics(m, tokenizer),
        frozen=[teacher],
    )

    model.eval()
    last = result.history[-1] if result.history else None
    meta = run_meta(cfg, model, model_name="SHRe", teacher=cfg.teacher.name, steps=result.step,
                    train_minutes=result.train_minutes)
    rows = evals.result_rows(model, tokenizer, meta, zero_shot=last)
    report = teacher_report(cfg.teacher, cfg.data)
    if report:  # the tiny teacher's own (supervised, not zero-shot) accuracy, for comparison
        rows.append({**meta, "model": f"teacher:{cfg.teacher.name}", "dataset": rows[-1]["dataset"],
                     "ft_top1": report["val_top1"], "ft_top5": report["val_top5"],
                     "train_minutes": report["train_minutes"], "steps": report["steps"],
                     "params_m": round(sum(p.numel() for p in teacher.parameters()) / 1e6, 2),
                     "notes": "supervised teacher accuracy on held-out images (not zero-shot)"})
    write_rows(cfg.chapter, cfg.run, rows)
    print(markdown_table(rows, ["model", "dataset", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1",
                                "t2i_r5", "t2i_r10", "zs_top1", "zs_top5", "ft_top1"]))
    return rows


def bench_case(cfg: ShreConfig) -> BenchCase:
    """``make bench PRESET=full``: this chapter's training step at the preset's size, with
    random weights (nothing to download) and a teacher of the preset's timm architecture."""
    cfg.image.init = cfg.text.init = ""
    cfg.head_classes = 1000  # the ImageNet-1k teacher's classes
    teacher = timm.create_model(cfg.teacher.name.removeprefix("timm:"), pretrained=False,
                                num_classes=cfg.head_classes)
    batch = synthetic_image_text_batch(cfg.train.batch_size, cfg.data.image_size,
                                       cfg.data.max_text_len, cfg.text.vocab_size)
    return BenchCase(build_model(cfg, pad_id=1),
                     lambda m, b: shre_losses(m, teacher, b, cfg.kd_weight, cfg.itc_weight)["loss"],
                     batch, frozen=[teacher])


# what eval/ rebuilds from a run's config.yaml and make bench runs (common.chapters)
CHAPTER = Declaration(config=ShreConfig,
                      build_model=lambda cfg, tokenizer: build_model(cfg, tokenizer.pad_id),
                      bench=bench_case)


if __name__ == "__main__":
    main(lambda: run(parse_cli(ShreConfig, HERE)))
