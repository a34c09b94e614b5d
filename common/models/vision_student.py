"""A student made of transformer blocks on a *shared*, frozen teacher embedding (chapter 1).

The student has no patch embedding of its own: it uses the teacher's, computed once per
batch for both (:meth:`~common.models.encoder.Encoder.forward_tokens`), which saves its
parameters, memory and a forward pass per step. What the eval CLIs need to rebuild such a
student from a config alone (:class:`SharedEmbedConfig`), how one vector per image is
pooled from its tokens, its starting blocks (random, the teacher's first blocks as in the
later draft, or a checkpoint's), and the check that the teacher is a ViT whose embedding can
be shared.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from common.config import ConfigError, DataConfig, ImageEncoderConfig, TeacherConfig
from common.models.embed import ImageEmbed
from common.models.encoder import Encoder, EncoderOutput, pool_tokens
from common.models.registry import init_blocks
from common.models.teachers import build_teacher

@dataclass
class SharedEmbedConfig:
    """The shape of the teacher's patch embedding, which the student shares. Filled from the
    teacher before the run folder is written, so the eval CLIs can rebuild the student
    from ``config.yaml`` alone (the weights come with the checkpoint)."""

    norm: bool = True  # a LayerNorm after the patches (data2vec 2.0); BEiT v2: none
    norm_eps: float = 1e-6
    abs_pos: bool = True  # fixed sin-cos positions (data2vec 2.0); BEiT v2: none


class VisionStudent(nn.Module):
    """The student's blocks on top of a (shared, frozen) image embedding.

    ``forward`` takes already embedded tokens, because during distillation the embedding
    runs once per batch for teacher and student together; ``encode_image`` embeds images
    itself (the eval CLIs' :class:`~common.evaluation.ImageTextModel` half), and ``image``
    is the encoder that :mod:`common.finetune` and ``eval.finetune`` fine-tune.
    """

    def __init__(self, image: Encoder, pool: str = "mean"):
        super().__init__()
        self.image, self.pool = image, pool

    def forward(self, tokens: Tensor) -> EncoderOutput:
        """``tokens`` ``[B, T, D]`` -> the student's output with every block's ``layers``."""
        return self.image.forward_tokens(tokens, return_layers=True)

    def encode_image(self, images: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` -> pooled embeddings ``[B, D]`` (kNN retrieval)."""
        return pool_tokens(self.image(images).x, self.pool, self.image.embed.num_extra_tokens)


def shared_embed_settings(embed: nn.Module) -> SharedEmbedConfig:
    """What :func:`build_student` needs to rebuild ``embed``'s architecture."""
    if not isinstance(embed, ImageEmbed):
        raise ConfigError(f"config error: the teacher's embedding is a {type(embed).__name__}; "
                          f"this chapter shares an ImageEmbed (a ViT teacher's patch embedding)")
    norm = isinstance(embed.norm, nn.LayerNorm)
    return SharedEmbedConfig(norm=norm, norm_eps=embed.norm.eps if norm else 1e-6,
                             abs_pos=embed.pos_embed is not None)


def init_from_teacher(student: Encoder, teacher: Encoder) -> None:
    """The later draft's student: the teacher's first ``len(student.blocks)`` blocks (and its
    final norm, for pre-norm blocks), copied; the shapes must match the teacher's."""
    if len(student.blocks) > len(teacher.blocks):
        raise ConfigError(f"config error: student_init=teacher with student.depth="
                          f"{len(student.blocks)}, but the teacher has {len(teacher.blocks)} blocks")
    for i, block in enumerate(student.blocks):
        try:
            block.load_state_dict(teacher.blocks[i].state_dict())
        except RuntimeError:
            raise ConfigError("config error: student_init=teacher needs student blocks shaped like "
                              "the teacher's; set student.heads/mlp_ratio/layer_norm_first/"
                              "layer_scale/rel_pos_bias/alibi_scale as in the teacher") from None
    if student.norm is not None and teacher.norm is not None:
        student.norm.load_state_dict(teacher.norm.state_dict())


def build_student(student: ImageEncoderConfig, shared: SharedEmbedConfig, pool: str, seed: int,
                  embed: Optional[ImageEmbed] = None) -> VisionStudent:
    """``student``'s blocks (random init, seeded by ``seed``) on ``embed`` (the teacher's,
    shared) or, for the eval CLIs, on a fresh embedding shaped like the teacher's
    (``shared``) whose weights the checkpoint then provides."""
    if not student.freeze_embed or student.embed_trainable:
        raise ConfigError("config error: student.freeze_embed=false or student.embed_trainable "
                          "would train the teacher's shared patch embedding; keep freeze_embed=true "
                          "and embed_trainable=[] in this chapter")
    if embed is None:
        embed = ImageEmbed(student.image_size, student.patch_size, student.in_chans, student.dim,
                           norm=shared.norm, norm_eps=shared.norm_eps, abs_pos=shared.abs_pos)
    grid = (embed.dim, embed.patch_embed.img_size[0], embed.patch_embed.patch_size[0])
    if grid != (student.dim, student.image_size, student.patch_size):
        raise ConfigError(f"config error: the teacher's embedding has width {grid[0]}, image size "
                          f"{grid[1]} and patch size {grid[2]}; set student.dim={grid[0]} "
                          f"student.image_size={grid[1]} student.patch_size={grid[2]}")
    with torch.random.fork_rng(devices=[]):  # the same student whatever ran before
        torch.manual_seed(seed)
        return VisionStudent(Encoder(embed, student), pool)


def init_student(student_cfg: ImageEncoderConfig, student_init: str, student: Encoder,
                 teacher: Encoder) -> None:
    """The student's starting blocks: random, the teacher's first blocks (``student_init=
    teacher``) or those of a pretrained checkpoint (``student.init``, e.g. data2vec 2.0 blocks
    under a BEiT v2 teacher, draft 003); the embedding is always the teacher's."""
    if student_init not in ("random", "teacher"):
        raise ConfigError(f"config error: student_init={student_init}; use random or teacher")
    if student_cfg.init and student_init == "teacher":
        raise ConfigError(f"config error: student.init={student_cfg.init} and student_init=teacher "
                          f"both name the student's starting blocks; keep one")
    if student_cfg.init:
        init_blocks(student, student_cfg, "image", key="student")
    elif student_init == "teacher":
        init_from_teacher(student, teacher)


def build_vit_teacher(teacher_cfg: TeacherConfig, data: DataConfig) -> Encoder:
    """The frozen teacher; it must be a ViT :class:`Encoder` (its embedding is shared)."""
    teacher = build_teacher(teacher_cfg, data)
    if not isinstance(teacher, Encoder) or not isinstance(teacher.embed, ImageEmbed):
        raise ConfigError(f"config error: teacher.name={teacher_cfg.name} is not a ViT encoder; "
                          f"this chapter shares the teacher's patch embedding, so use a tiny "
                          f"label-free ViT recipe (tiny preset) or a data2vec 2.0 / BEiT v2 "
                          f"checkpoint (full preset)")
    return teacher
