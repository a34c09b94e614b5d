"""One transformer block with data2vec 2.0 ``AltBlock`` semantics (post-norm by default)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from timm.layers import DropPath, LayerScale, Mlp
from torch import Tensor, nn

from common.models.attention import Attention


class Block(nn.Module):
    """Attention + MLP with residuals, pre-norm or post-norm.

    data2vec 2.0 blocks are post-norm (``layer_norm_first=False``)::

        x = norm1(x + drop_path(attn(x)))
        x = norm2(x + drop_path(mlp(x)))

    and pre-norm is the usual ViT block::

        x = x + drop_path(attn(norm1(x)))
        x = x + drop_path(mlp(norm2(x)))

    (fairseq's pre-norm ``AltBlock`` adds the MLP output to itself instead of to ``x``;
    data2vec 2.0 never trains pre-norm, so the standard residual is used here.)
    ``dropout`` applies to the attention probabilities, the attention output and the MLP.
    Parameter names match ``AltBlock`` (``norm1``, ``attn.qkv``, ``mlp.fc1`` ...).

    Options that pretrained checkpoints need, all off by default:
    ``layer_scale`` > 0 multiplies each branch by a learned per-channel vector (``ls1``,
    ``ls2``; BEiT v2's ``gamma_1``/``gamma_2``); ``window_size`` gives the attention a BEiT
    relative position bias; ``alibi_scale`` adds a learned per-head factor on the ALiBi bias
    (data2vec 2.0's ``alibi_scale``). The encoder, which builds the ALiBi bias, applies that
    factor; it lives here so that taking the first N blocks takes their scales too.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *,
                 layer_norm_first: bool = False, norm_eps: float = 1e-6,
                 drop_path: float = 0.0, dropout: float = 0.0, qkv_bias: bool = True,
                 layer_scale: float = 0.0, window_size: Optional[Tuple[int, int]] = None,
                 alibi_scale: bool = False):
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=dropout, proj_drop=dropout,
                              window_size=window_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=dropout)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale > 0 else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale > 0 else nn.Identity()
        self.alibi_scale = nn.Parameter(torch.ones(num_heads)) if alibi_scale else None

    def forward(self, x: Tensor, attn_bias: Optional[Tensor] = None) -> Tensor:
        """``x``: ``[B, T, D]``; ``attn_bias``: additive ``[B or 1, H, T, T]`` (ALiBi + padding)."""
        if self.layer_norm_first:
            x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), attn_bias)))
            return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        x = self.norm1(x + self.drop_path(self.ls1(self.attn(x, attn_bias))))
        return self.norm2(x + self.drop_path(self.ls2(self.mlp(x))))
