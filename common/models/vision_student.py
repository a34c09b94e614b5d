"""A student made of transformer blocks on a *shared*, frozen teacher embedding (chapter 1).

The student has no patch embedding of its own: it uses the teacher's, computed once per
batch for both (:meth:`~common.models.encoder.Encoder.forward_tokens`), which saves its
parameters, memory and a forward pass per step. What the eval CLIs need to rebuild such a
student from a config alone (:class:`SharedEmbedConfig`), how one vector per image is
pooled from its tokens, and the later draft's start from the teacher's first blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from common.config import ConfigError
from common.models.embed import ImageEmbed
from common.models.encoder import Encoder, EncoderOutput

POOLS = ("mean", "cls")


@dataclass
class SharedEmbedConfig:
    """The shape of the teacher's patch embedding, which the student shares. Filled from the
    teacher before the run folder is written, so the eval CLIs can rebuild the student
    from ``config.yaml`` alone (the weights come with the checkpoint)."""

    norm: bool = True  # a LayerNorm after the patches (data2vec 2.0); BEiT v2: none
    norm_eps: float = 1e-6
    abs_pos: bool = True  # fixed sin-cos positions (data2vec 2.0); BEiT v2: none


def pool_tokens(x: Tensor, pool: str, num_extra: int = 1) -> Tensor:
    """One vector per image from ``[B, T, D]`` tokens: the mean of the patch tokens (the
    thesis' fine-tuning input) or the CLS token. Returns ``[B, D]``."""
    if pool == "cls":
        return x[:, 0]
    if pool == "mean":
        return x[:, num_extra:].mean(dim=1)
    raise ConfigError(f"config error: knn.pool={pool} is not one of {'|'.join(POOLS)}")


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
    """What :func:`build_model` needs to rebuild ``embed``'s architecture."""
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
