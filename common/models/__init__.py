"""Transformer building blocks shared by all chapters: ALiBi attention, blocks, encoders, heads."""
from common.models.attention import (
    ALiBi,
    Attention,
    alibi_slopes,
    attention_mask,
    grid_distances,
    line_distances,
    pad_distances,
)
from common.models.block import Block
from common.models.embed import ImageEmbed, ModalityEmbed, TextEmbed
from common.models.encoder import (
    Encoder,
    EncoderOutput,
    build_image_encoder,
    build_text_encoder,
    param_count,
)
from common.models.heads import LogitScale, Projection, SharedHead

__all__ = [
    "ALiBi", "Attention", "alibi_slopes", "attention_mask", "grid_distances", "line_distances",
    "pad_distances", "Block", "ImageEmbed", "ModalityEmbed", "TextEmbed", "Encoder",
    "EncoderOutput", "build_image_encoder", "build_text_encoder", "param_count",
    "LogitScale", "Projection", "SharedHead",
]
