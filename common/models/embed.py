"""Modality embeddings: data2vec 2.0's "modality encoders" that turn raw inputs into tokens.

Each embedding also owns the geometry of its tokens (:meth:`ModalityEmbed.distances`), so
the transformer blocks stay modality-agnostic: the same blocks can run on image tokens
with 2-D ALiBi distances and on text tokens with 1-D ones. Every embedding initialises its
own parameters, because an embedding may be shared (frozen) between a teacher and a
student and must not be re-initialised by the encoder that receives it.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from timm.layers import PatchEmbed, build_sincos2d_pos_embed, trunc_normal_
from torch import Tensor, nn

from common.models.attention import grid_distances, line_distances, pad_distances


class ModalityEmbed(nn.Module):
    """Interface of a modality embedding: ``forward(inputs) -> [B, T, D]`` plus token geometry.

    Subclasses set ``dim`` and ``num_extra_tokens`` and implement :meth:`_distances`; the
    ``[T, T]`` distance matrix is cached per ``(T, device)`` because it is rebuilt from
    nothing but ``T`` at every step otherwise.
    """

    dim: int
    num_extra_tokens: int = 0

    def __init__(self) -> None:
        super().__init__()
        self._distance_cache: Dict[Tuple[int, torch.device], Tensor] = {}

    def distances(self, num_tokens: int, device: torch.device) -> Tensor:
        """Distance between every pair of the ``num_tokens`` tokens: ``[T, T]`` float32."""
        key = (num_tokens, torch.device(device))
        cached = self._distance_cache.get(key)
        if cached is not None:
            return cached
        dist = self._distances(num_tokens, torch.device(device))
        if not torch.is_inference_mode_enabled():  # inference tensors cannot be reused in training
            self._distance_cache[key] = dist
        return dist

    def _distances(self, num_tokens: int, device: torch.device) -> Tensor:
        raise NotImplementedError

    def padding_mask(self, inputs: Tensor) -> Optional[Tensor]:
        """``[B, T]`` True at padded tokens, derived from the inputs; None if it cannot pad."""
        return None


def _mae_sincos_2d(grid_size: Tuple[int, int], dim: int) -> Tensor:
    """Fixed 2-D sin-cos positions, channels ordered as MAE's ``get_2d_sincos_pos_embed``.

    timm orders the channels ``[sin h, sin w, cos h, cos w]``; MAE/data2vec 2.0 order them
    ``[sin w, cos w, sin h, cos h]``. Matching the latter keeps data2vec checkpoints exact.
    """
    pos = build_sincos2d_pos_embed(list(grid_size), dim)  # N x D
    return pos.unflatten(1, (2, 2, -1)).transpose(1, 2).flip(1).flatten(1)  # N x D


class ImageEmbed(ModalityEmbed):
    """Patch embedding + fixed 2-D sin-cos positions + a learnable CLS token: ``[B, 1+N, D]``.

    As in data2vec 2.0, the positions are added to the patches only; the CLS token has no
    position and zero ALiBi distance to every patch. With ``norm=True`` a LayerNorm follows
    (data2vec's ``context_encoder.norm``, present when the blocks are post-norm).
    ``abs_pos=False`` leaves positions out entirely (BEiT v2, whose blocks carry a relative
    position bias instead).
    """

    num_extra_tokens = 1

    def __init__(self, image_size: int, patch_size: int, in_chans: int, dim: int, *,
                 norm: bool = False, norm_eps: float = 1e-6, abs_pos: bool = True):
        super().__init__()
        self.dim = dim
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, dim)
        self.grid_size: Tuple[int, int] = tuple(self.patch_embed.grid_size)  # type: ignore[assignment]
        # a buffer, not a parameter: fixed, yet saved so converted checkpoints can carry theirs
        self.pos_embed: Optional[Tensor]
        if abs_pos:
            self.register_buffer("pos_embed", _mae_sincos_2d(self.grid_size, dim)[None])  # 1 x N x D
        else:
            self.pos_embed = None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm else nn.Identity()
        # MAE/data2vec: xavier on the flattened conv kernel, like a linear layer
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        trunc_normal_(self.cls_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def forward(self, images: Tensor) -> Tensor:
        """``images``: ``[B, C, H, W]`` -> tokens ``[B, 1 + N, D]`` (CLS first)."""
        x = self.patch_embed(images)  # B x N x D
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(x.dtype)
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)  # B x 1 x D
        return self.norm(torch.cat([cls, x], dim=1))

    def _distances(self, num_tokens: int, device: torch.device) -> Tensor:
        if num_tokens != self.num_extra_tokens + self.num_patches:
            raise ValueError(f"image embedding has {self.num_extra_tokens} + {self.num_patches} "
                             f"tokens, got {num_tokens}")
        return pad_distances(grid_distances(*self.grid_size, device=device), self.num_extra_tokens)


def _sincos_1d(num_positions: int, dim: int) -> Tensor:
    """Fixed 1-D sin-cos positions ``[sin(p w), cos(p w)]`` (Transformer/MAE frequencies): ``[L, D]``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))  # D/2
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * omega[None]  # L x D/2
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TextEmbed(ModalityEmbed):
    """Token embedding + positional embedding + LayerNorm (data2vec 2.0 text): ``[B, L, D]``.

    Position 0 holds BOS, which plays the role of the text CLS, so there are no extra tokens.
    ``learned_pos=False`` uses fixed sin-cos positions instead (fairseq's meaning of the flag).
    Positions count from 0 (fairseq's learned table starts at ``pad_id + 1``; a converter
    slices that offset away).
    """

    num_extra_tokens = 0

    def __init__(self, vocab_size: int, max_len: int, dim: int, pad_id: int, *,
                 learned_pos: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.max_len = max_len
        self.pad_id = pad_id
        self.token_embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        if learned_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, max_len, dim))
            trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_buffer("pos_embed", _sincos_1d(max_len, dim)[None], persistent=False)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        trunc_normal_(self.token_embed.weight, std=0.02)
        with torch.no_grad():
            self.token_embed.weight[pad_id].zero_()

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens``: ``[B, L]`` ids (BOS first) -> ``[B, L, D]``."""
        L = tokens.shape[1]
        if L > self.max_len:
            raise ValueError(f"text of {L} tokens is longer than max_len={self.max_len}; "
                             f"truncate it in the tokenizer or raise model max_len")
        return self.norm(self.token_embed(tokens) + self.pos_embed[:, :L])

    def padding_mask(self, tokens: Tensor) -> Optional[Tensor]:
        return tokens.eq(self.pad_id)

    def _distances(self, num_tokens: int, device: torch.device) -> Tensor:
        return line_distances(num_tokens, device=device)

