"""The settings of the tiny teacher recipes, as config sections of ``teacher``.

Each label-free recipe reads its own section (``teacher.d2v``, ``teacher.dino``,
``teacher.clr``), so a variant is one override away (``teacher.clr.temperature=0.1``); the
section enters the teacher's cache key, so a changed setting trains (and caches) its own
teacher while the defaults keep finding the teachers cached before. Plain dataclasses, no
torch: :mod:`common.config` imports them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class D2VSettings:
    """Self-distillation settings of a data2vec-style recipe (part of the teacher's cache key).

    data2vec 2.0's image values where they carry over (mask ratio 0.8 in blocks, several
    masked views per image, most layers averaged, a conv decoder); the EMA schedule is
    scaled to a few hundred steps (data2vec 2.0: 0.9998 -> 0.99999 over 100k+ steps; a
    0.999 end would leave a third of the random init in a 400-step teacher).
    """

    mask_ratio: float = 0.8  # data2vec 2.0 image: 0.8
    mask_block: int = 3  # side of the box filter that clusters masked patches; 1 = uniform random
    num_masks: int = 4  # masked views per image, sharing one teacher pass (clone_batch)
    top_k: int = 3  # teacher blocks averaged into the targets
    ema_start: float = 0.98
    ema_end: float = 0.995
    ema_ramp: float = 0.5  # fraction of the steps over which the decay ramps up linearly
    decoder_layers: int = 2  # conv decoder blocks on the patch grid
    decoder_kernel: int = 3
    cls_objective: str = "mean_patches"  # a key of common.tiny_teachers.d2v.CLS_OBJECTIVES
    cls_weight: float = 1.0


@dataclass
class DinoSettings:
    """DINO settings (part of the teacher's cache key); DINO's ViT-S values where they carry
    over, the prototype count and head width scaled to a 128-dim encoder."""

    num_prototypes: int = 1024  # DINO: 65536
    head_hidden: int = 256  # DINO: 2048
    head_bottleneck: int = 64  # DINO: 256
    teacher_temp: float = 0.07  # DINO: 0.04 -> 0.07; on cosine logits, as DINO's normed last layer
    student_temp: float = 0.17  # DINO: 0.1; softer here, where the head sees 128-dim features
    center_momentum: float = 0.9
    ema_start: float = 0.99  # DINO: 0.996 over 100+ epochs; cosine to 1.0
    crop_scale_min: float = 0.3  # global crops only (no local crops at 32 px)
    background_swap: bool = True


@dataclass
class ClrSettings:
    """Contrastive settings (part of the teacher's cache key); MoCo v3's ViT values where they
    carry over, the head widths scaled to a 128-dim encoder."""

    proj_hidden: int = 512  # MoCo v3: 4096
    proj_dim: int = 128  # MoCo v3: 256
    temperature: float = 0.2  # MoCo v3 ViT: 0.2
    ema_start: float = 0.99  # MoCo v3: 0.99, cosine to 1
    crop_scale_min: float = 0.3  # as tiny-dino: a 32-px crop below that often loses the object
    background_swap: bool = True
    relayout: bool = True  # also move and reshade the objects per view (common.data.views.relaid_scene)
    drop_others: float = 0.8  # leave each non-main object out of a view with this probability
