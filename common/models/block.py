"""One transformer block with data2vec 2.0 ``AltBlock`` semantics (post-norm by default)."""
from __future__ import annotations

from typing import Optional

from timm.layers import DropPath, Mlp
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
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *,
                 layer_norm_first: bool = False, norm_eps: float = 1e-6,
                 drop_path: float = 0.0, dropout: float = 0.0, qkv_bias: bool = True):
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=dropout, proj_drop=dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=dropout)

    def forward(self, x: Tensor, attn_bias: Optional[Tensor] = None) -> Tensor:
        """``x``: ``[B, T, D]``; ``attn_bias``: additive ``[B or 1, H, T, T]`` (ALiBi + padding)."""
        if self.layer_norm_first:
            x = x + self.drop_path(self.attn(self.norm1(x), attn_bias))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop_path(self.attn(x, attn_bias)))
        return self.norm2(x + self.drop_path(self.mlp(x)))
