"""Transformer encoders: a modality embedding followed by a stack of ALiBi blocks.

The embedding and the blocks are separable on purpose. Chapter 1 computes the frozen patch
embedding once per batch and feeds the same tokens to teacher and student
(:meth:`Encoder.forward_tokens`); chapter 3 runs modality-specific blocks and then shared
blocks, which is an :class:`Encoder` without embedding fed with the tokens' own distances.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from common.config import ConfigError, EncoderConfig, ImageEncoderConfig, TextEncoderConfig
from common.models.attention import ALiBi, attention_mask
from common.models.block import Block
from common.models.embed import ImageEmbed, ModalityEmbed, TextEmbed

BlockSelection = Union[slice, range, Sequence[int]]


@dataclass
class EncoderOutput:
    """What an encoder returns; ``layers`` (each block's output) feeds data2vec-style targets."""

    x: Tensor  # B x T x D, after the final norm when there is one
    layers: Optional[List[Tensor]] = None  # one B x T x D per block run, when return_layers
    padding_mask: Optional[Tensor] = None  # B x T, True at padding

    @property
    def cls(self) -> Tensor:
        """The first token (image CLS, text BOS): ``[B, D]``."""
        return self.x[:, 0]


POOLS = ("mean", "cls")


def pool_tokens(x: Tensor, pool: str, num_extra: int = 1) -> Tensor:
    """One vector per image from ``[B, T, D]`` tokens: the mean of the patch tokens (the
    thesis' fine-tuning input) or the CLS token. Returns ``[B, D]``."""
    if pool == "cls":
        return x[:, 0]
    if pool == "mean":
        return x[:, num_extra:].mean(dim=1)
    raise ConfigError(f"config error: knn.pool={pool} is not one of {'|'.join(POOLS)}")


def _init_weights(module: nn.Module) -> None:
    """timm ViT / data2vec init: trunc-normal(0.02) linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Encoder(nn.Module):
    """``embed`` + ``cfg.depth`` blocks (+ a final LayerNorm only when pre-norm, as data2vec 2.0).

    ``embed`` may be None for blocks that only ever see tokens of other encoders (shared
    blocks); they are then called through :meth:`forward_tokens` with ``distances``. The
    embedding is not re-initialised here, so a pretrained or shared one can be passed in.
    With ``cfg.freeze_embed`` its parameters stop requiring grad and it always runs in eval
    mode, under ``torch.no_grad()`` unless ``cfg.embed_trainable`` names parameters of it that
    keep training (e.g. ``cls_token``; autograd then skips the frozen patch projection).
    """

    def __init__(self, embed: Optional[ModalityEmbed], cfg: EncoderConfig):
        super().__init__()
        if embed is not None and embed.dim != cfg.dim:
            raise ValueError(f"embedding dim {embed.dim} != encoder dim {cfg.dim}")
        self.dim = cfg.dim
        self.num_heads = cfg.heads
        self.freeze_embed = bool(cfg.freeze_embed) and embed is not None
        self.embed = embed
        drop_path = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()  # stochastic depth grows with depth
        window = None
        if cfg.rel_pos_bias:  # BEiT: a relative position bias over the embedding's patch grid
            window = getattr(embed, "grid_size", None)
            if window is None:
                raise ValueError("rel_pos_bias needs an image embedding (a patch grid)")
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, layer_norm_first=cfg.layer_norm_first,
                  norm_eps=cfg.norm_eps, drop_path=dp, dropout=cfg.dropout,
                  layer_scale=cfg.layer_scale, window_size=window,
                  alibi_scale=cfg.alibi and cfg.alibi_scale)
            for dp in drop_path)
        final_norm = cfg.layer_norm_first and cfg.final_norm
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if final_norm else None
        self.alibi = ALiBi(cfg.heads) if cfg.alibi else None
        self._bias_cache: Dict[Tuple[int, torch.device, torch.dtype], Tensor] = {}
        self.blocks.apply(_init_weights)
        if self.norm is not None:
            self.norm.apply(_init_weights)
        if self.freeze_embed:
            self.embed.requires_grad_(False)
            self.embed.eval()
            names = dict(self.embed.named_parameters())

            def named(key: str, n: str) -> bool:  # the parameter itself or one of its module's
                return key == n or key.startswith(n + ".")

            unknown = [n for n in cfg.embed_trainable if not any(named(k, n) for k in names)]
            if unknown:
                raise ConfigError(f"config error: embed_trainable={unknown}: the embedding has no "
                                  f"such parameters (it has {sorted(names)})")
            for key, param in names.items():
                param.requires_grad_(any(named(key, n) for n in cfg.embed_trainable))

    def train(self, mode: bool = True) -> "Encoder":
        super().train(mode)
        if self.freeze_embed:
            self.embed.eval()  # a frozen embedding never trains (no dropout, fixed statistics)
        return self

    def embed_inputs(self, inputs: Tensor) -> Tensor:
        """Raw inputs -> tokens ``[B, T, D]``, honouring ``freeze_embed``."""
        if self.embed is None:
            raise ValueError("this encoder has no embedding; call forward_tokens with tokens")
        if self.freeze_embed and not any(p.requires_grad for p in self.embed.parameters()):
            with torch.no_grad():
                return self.embed(inputs)
        return self.embed(inputs)

    def forward(self, inputs: Tensor, padding_mask: Optional[Tensor] = None, *,
                return_layers: bool = False) -> EncoderOutput:
        """Images ``[B, C, H, W]`` or token ids ``[B, L]`` -> :class:`EncoderOutput`.

        Without ``padding_mask`` the embedding derives it from the inputs (text: ``pad_id``).
        """
        tokens = self.embed_inputs(inputs)
        if padding_mask is None:
            padding_mask = self.embed.padding_mask(inputs)
        return self.forward_tokens(tokens, padding_mask, return_layers=return_layers)

    def forward_tokens(self, tokens: Tensor, padding_mask: Optional[Tensor] = None, *,
                       distances: Optional[Tensor] = None, return_layers: bool = False,
                       blocks: Optional[BlockSelection] = None) -> EncoderOutput:
        """Run blocks on already embedded ``tokens`` ``[B, T, D]``.

        ``distances`` (``[T, T]``) overrides this encoder's embedding geometry, e.g. for
        shared blocks fed with another modality's tokens. ``blocks`` selects block indices
        (a slice, range or list) to run part of the stack; the final norm (pre-norm only)
        is applied when the last block of the stack has run.
        """
        indices = self._block_indices(blocks)
        alibi = self._alibi_bias(tokens, distances)
        mask = attention_mask(alibi, padding_mask, tokens.dtype)
        layers: Optional[List[Tensor]] = [] if return_layers else None
        x = tokens
        for i in indices:
            block = self.blocks[i]
            block_mask = mask
            if alibi is not None and block.alibi_scale is not None:
                # data2vec 2.0 clamps its learned ALiBi scale at 0; scaled before padding is added
                scale = block.alibi_scale.clamp(min=0).to(alibi.dtype)[None, :, None, None]  # 1 x H x 1 x 1
                block_mask = attention_mask(alibi * scale, padding_mask, tokens.dtype)
            x = block(x, block_mask)
            if layers is not None:
                layers.append(x)
        if self.norm is not None and len(indices) and indices[-1] == len(self.blocks) - 1:
            x = self.norm(x)
        return EncoderOutput(x=x, layers=layers, padding_mask=padding_mask)

    def _block_indices(self, blocks: Optional[BlockSelection]) -> Sequence[int]:
        if blocks is None:
            return range(len(self.blocks))
        if isinstance(blocks, slice):
            return range(len(self.blocks))[blocks]
        return list(blocks)

    def _alibi_bias(self, tokens: Tensor, distances: Optional[Tensor]) -> Optional[Tensor]:
        """``[1, H, T, T]`` ALiBi bias, cached per (T, device, dtype) for the own embedding."""
        if self.alibi is None:
            return None
        if distances is not None:
            return self.alibi(distances.to(tokens.device), tokens.dtype)
        if self.embed is None:
            raise ValueError("an encoder without embedding needs `distances` "
                             "(the tokens' embed.distances(T, device)) when ALiBi is on")
        key = (tokens.shape[1], tokens.device, tokens.dtype)
        bias = self._bias_cache.get(key)
        if bias is None:
            bias = self.alibi(self.embed.distances(tokens.shape[1], tokens.device), tokens.dtype)
            if not torch.is_inference_mode_enabled():  # inference tensors cannot be reused in training
                self._bias_cache[key] = bias
        return bias


def build_image_encoder(cfg: ImageEncoderConfig) -> Encoder:
    """A randomly initialised image encoder; post-norm gets data2vec's LayerNorm after the embedding."""
    embed = ImageEmbed(cfg.image_size, cfg.patch_size, cfg.in_chans, cfg.dim,
                       norm=not cfg.layer_norm_first, norm_eps=cfg.norm_eps, abs_pos=cfg.abs_pos)
    return Encoder(embed, cfg)


def build_text_encoder(cfg: TextEncoderConfig, pad_id: int) -> Encoder:
    """A randomly initialised text encoder; ``pad_id`` comes from the tokenizer."""
    embed = TextEmbed(cfg.vocab_size, cfg.max_len, cfg.dim, pad_id,
                      learned_pos=cfg.learned_pos, norm_eps=cfg.norm_eps)
    return Encoder(embed, cfg)


def param_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones once), optionally only those that require grad."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
