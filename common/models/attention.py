"""Multi-head self-attention with ALiBi, as in data2vec 2.0.

ALiBi (Press et al., 2022) adds ``-slope_h * distance(i, j)`` to the attention logits of
head ``h``: each head attends to a different neighbourhood size, and no position needs to
be learned. data2vec 2.0 (fairseq ``examples/data2vec/models/modalities/base.py``,
``get_alibi``) uses 1-D distances for text and 2-D Manhattan distances on the patch grid
for images, with a zero bias for extra tokens such as the image CLS.

The split of responsibilities here lets one stack of blocks serve several modalities:

* the modality embedding says how far apart its tokens are (``distances(T, device)``,
  built from :func:`line_distances`, :func:`grid_distances`, :func:`pad_distances`);
* :class:`ALiBi` turns any ``[T, T]`` distance matrix into a per-head bias;
* :func:`attention_mask` adds the key padding mask, and :class:`Attention` consumes the
  result as an additive float mask of ``F.scaled_dot_product_attention``.

BEiT v2 has no ALiBi but a learned relative position bias per block over the patch grid
(plus three entries for the CLS token); :class:`Attention` owns one when given a
``window_size``, using timm's ``RelativePositionBias`` so BEiT checkpoints map one to one.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.models.beit import RelativePositionBias
from torch import Tensor, nn


def _slopes(num_heads: int) -> List[float]:
    if math.log2(num_heads).is_integer():
        start = 2.0 ** (-(2.0 ** -(math.log2(num_heads) - 3)))
        return [start * start**i for i in range(num_heads)]
    # data2vec/ALiBi rule for a head count that is not a power of two: the slopes of the
    # closest smaller power of two, then every other slope of the next power of two.
    closest = 2 ** math.floor(math.log2(num_heads))
    return _slopes(closest) + _slopes(2 * closest)[0::2][: num_heads - closest]


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head geometric slopes exactly as data2vec 2.0's ``get_alibi`` (8 heads: 1/2 ... 1/256)."""
    return torch.tensor(_slopes(num_heads), dtype=torch.float32)


def line_distances(n: int, device: Optional[torch.device] = None) -> Tensor:
    """``|i - j|`` between the positions of a sequence of ``n`` tokens: ``[n, n]`` float."""
    pos = torch.arange(n, device=device, dtype=torch.float32)
    return (pos[:, None] - pos[None, :]).abs()


def grid_distances(height: int, width: int, device: Optional[torch.device] = None) -> Tensor:
    """Manhattan distance between the cells of a row-major ``height x width`` patch grid.

    Row-major is the order in which ``PatchEmbed`` flattens patches. Returns ``[N, N]``
    float with ``N = height * width``.
    """
    rows = torch.arange(height, device=device, dtype=torch.float32).repeat_interleave(width)  # N
    cols = torch.arange(width, device=device, dtype=torch.float32).repeat(height)  # N
    return (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()


def pad_distances(distances: Tensor, num_extra: int) -> Tensor:
    """Prepend ``num_extra`` tokens (e.g. CLS) at distance 0 from everything, as data2vec does."""
    return F.pad(distances, (num_extra, 0, num_extra, 0))


class ALiBi(nn.Module):
    """Turns a ``[T, T]`` distance matrix into the additive bias ``[1, H, T, T] = -slope_h * d``.

    The slopes are a non-persistent buffer: they follow ``.to(device)`` but are not part of
    checkpoints, since they are a function of the head count alone.
    """

    def __init__(self, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)

    def forward(self, distances: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
        slopes = self.slopes.to(distances.device)
        bias = -slopes[:, None, None] * distances[None]  # H x T x T
        return bias.unsqueeze(0).to(dtype or distances.dtype)  # 1 x H x T x T


def attention_mask(alibi_bias: Optional[Tensor], padding_mask: Optional[Tensor],
                   dtype: torch.dtype) -> Optional[Tensor]:
    """Additive float mask for :class:`Attention`: ALiBi bias plus ``-inf`` on padded keys.

    ``alibi_bias`` is ``[1 or B, H, T, T]``, ``padding_mask`` is ``[B, T]`` with True at
    padding. Returns ``[B or 1, H or 1, T, T]``, or None when there is nothing to add (which
    lets SDPA pick its fastest kernel).
    """
    if padding_mask is None:
        return alibi_bias
    pad = torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device)
    pad = pad.masked_fill(padding_mask, float("-inf"))[:, None, None, :]  # B x 1 x 1 x T
    return pad if alibi_bias is None else alibi_bias + pad


class Attention(nn.Module):
    """Multi-head self-attention whose logits take an additive mask (ALiBi + padding).

    Parameter names (``qkv``, ``proj``) match data2vec 2.0's ``AltAttention`` and timm's
    ``Attention`` so that checkpoints convert by renaming prefixes only. With a
    ``window_size`` (patch grid), a BEiT relative position bias (``rel_pos``) is added to the
    logits; the tokens must then be CLS + the grid's patches.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0,
                 window_size: Optional[Tuple[int, int]] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rel_pos = RelativePositionBias(tuple(window_size), num_heads) if window_size else None

    def forward(self, x: Tensor, attn_bias: Optional[Tensor] = None) -> Tensor:
        """``x``: ``[B, T, D]``; ``attn_bias``: additive ``[B or 1, H or 1, T, T]`` or None."""
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B x H x T x Dh
        if self.rel_pos is not None:
            rel = self.rel_pos().unsqueeze(0)  # 1 x H x T x T
            attn_bias = rel if attn_bias is None else attn_bias + rel
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        # softmax(q k^T / sqrt(Dh) + bias) v: B x H x T x Dh
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, T, D)
        return self.proj_drop(self.proj(x))
