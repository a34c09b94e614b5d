"""MM-D2V2: modality-specific blocks, then blocks that both modalities pass through.

The student of chapters 3-5 (thesis draft 001, "Separate Self-Attention"; Sx3HRe in draft
004). Images and captions first run through their own encoder (full: the first blocks of
data2vec 2.0 image / text; tiny: small ALiBi encoders); the full token sequence of either
modality then passes the *same* shared blocks, whose ALiBi geometry comes from the
modality's embedding (2-D grid or 1-D line). The CLS output of the last shared block is the
modality-invariant representation:

    image -> ImageEmbed -> image blocks -> shared blocks -> CLS ─┐
    text  -> TextEmbed  -> text blocks  -> shared blocks -> CLS ─┴─> kd_map -> teacher's CLS (MSE)

Label-free feature distillation makes both CLS outputs regress the teacher's CLS of the
*image* (:func:`common.mm_d2v2.cls_distillation`): if both errors reached zero, image and caption would
map to the same vector, so alignment follows from distillation alone. ``kd_map`` is a
linear map into the teacher's width when it differs from the student's (tiny CNN teachers).

Chapter 4 adds image-text contrast on projected CLS vectors; where the projection sits is
``HeadConfig.proj``: ``encoder`` (one projection per modality on the encoder CLS, as
CLIP/FLAVA), ``shared`` (one projection on the shared CLS) or ``none`` (retrieval on the
shared CLS itself). Every forward pass returns all :data:`LEVELS` (:class:`MultimodalOutput`),
so evaluation can measure alignment after the encoders, after the shared blocks and after
the projections in one pass (:func:`common.mm_d2v2.alignment_rows`), and the
unimodal-pair baseline is the encoder level of an untrained model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from common.config import ConfigError, EncoderConfig, ImageEncoderConfig, TextEncoderConfig
from common.memory_bank import MemoryBank
from common.models.ema import ema_update
from common.models.encoder import Encoder, build_image_encoder, build_text_encoder
from common.models.heads import LogitScale, Projection
from common.models.registry import init_encoder
from common.models.teachers import teacher_embedding

PROJECTIONS = ("none", "encoder", "shared")
KD_TARGETS = ("raw", "batch")
LEVELS = ("encoder", "shared", "embedding")


@dataclass
class HeadConfig:
    """What sits on top of the CLS outputs.

    ``target_dim``: width of the teacher vector the shared CLS regresses (0 = the student's
    width, no map; chapters fill it from the teacher before the run folder is written, so a
    saved ``config.yaml`` rebuilds the same model). ``proj``: where the ITC projections sit
    (see the module docstring). ``proj_dim``: their output width (0 = the student's width).
    """

    target_dim: int = 0
    proj: str = "none"
    proj_dim: int = 0
    logit_scale_init: float = 1 / 0.07  # CLIP's initial temperature 0.07
    logit_scale_max: float = 100.0  # clamp at ln 100, as CLIP and the thesis
    bank_size: int = 0  # > 0: a FIFO memory bank of past embeddings per modality (chapter 4)
    # what the kd head regresses: the teacher's vector as it is (raw, the thesis), or each
    # channel standardised over the batch (batch: removes what all images share)
    kd_target: str = "raw"
    # > 0 (with a bank): batch columns and bank rows come from an EMA copy of the student with
    # this decay (MoCo / ALBEF momentum keys); 0: the student's own embeddings (the thesis's plan)
    bank_momentum: float = 0.0


@dataclass
class MultimodalOutput:
    """Every level of one modality's forward pass (each ``[B, *]``)."""

    encoder_cls: Tensor  # CLS after the modality-specific blocks, B x D
    cls: Tensor  # CLS after the last shared block, B x D: the representation
    kd: Tensor  # cls mapped into the teacher's space, B x target_dim
    embedding: Tensor  # what retrieval compares: the projected CLS, or cls without projection


class MultimodalEncoder(nn.Module):
    """Image and text encoders followed by shared blocks; see the module docstring.

    ``shared`` is an :class:`Encoder` without embedding: it is fed each modality's tokens
    together with that modality's ALiBi distances and padding mask. Only a ``contrastive``
    model has a temperature and (``head.bank_size > 0``) memory banks: a parameter that no
    loss uses would stall DDP, which expects a gradient for every parameter.
    """

    def __init__(self, image: Encoder, text: Encoder, shared: Encoder, head: HeadConfig,
                 contrastive: bool = False):
        super().__init__()
        if head.proj not in PROJECTIONS:
            raise ValueError(f"head.proj must be one of {PROJECTIONS}, got '{head.proj}'")
        if head.kd_target not in KD_TARGETS:
            raise ConfigError(f"config error: head.kd_target={head.kd_target} is not one of {KD_TARGETS}")
        if not image.dim == text.dim == shared.dim:
            raise ValueError(f"image ({image.dim}), text ({text.dim}) and shared ({shared.dim}) "
                             f"widths must be equal: the shared blocks read both encoders' tokens")
        if shared.embed is not None:
            raise ValueError("the shared blocks take the encoders' tokens; build them without embedding")
        dim = image.dim
        self.image, self.text, self.shared = image, text, shared
        self.proj, self.kd_target = head.proj, head.kd_target
        target = head.target_dim or dim
        # a plain linear map (with bias) only where the teacher is wider/narrower than the student
        self.kd_map: nn.Module = nn.Linear(dim, target) if target != dim else nn.Identity()
        proj_dim = head.proj_dim or dim
        if head.proj == "encoder":  # CLIP / FLAVA: one projection per modality
            self.image_proj: Optional[nn.Module] = Projection(dim, proj_dim)
            self.text_proj: Optional[nn.Module] = Projection(dim, proj_dim)
        elif head.proj == "shared":  # one projection for the modality-invariant CLS
            self.image_proj = Projection(dim, proj_dim)
            self.text_proj = self.image_proj
        else:
            self.image_proj = self.text_proj = None
        self.logit_scale = (LogitScale(head.logit_scale_init, head.logit_scale_max)
                            if contrastive else None)
        # banks hold past *embeddings* (the ITC space); as buffers they are saved in checkpoints
        banked = contrastive and head.bank_size > 0
        self.image_bank = MemoryBank(head.bank_size, proj_dim) if banked else None
        self.text_bank = MemoryBank(head.bank_size, proj_dim) if banked else None
        if not 0.0 <= head.bank_momentum < 1.0:
            raise ConfigError(f"config error: head.bank_momentum={head.bank_momentum} must be in "
                              f"[0, 1) (0: no momentum keys; MoCo/ALBEF use 0.99-0.999)")
        self.bank_momentum = head.bank_momentum if banked else 0.0
        # the momentum key encoder: a frozen copy of the embedding path, moved towards the
        # student before every key computation; a submodule, so checkpoints hold it
        self.momentum: Optional[MultimodalEncoder] = None
        if self.bank_momentum > 0:
            with torch.random.fork_rng(devices=[]):  # its fresh layers are overwritten below
                keys = MultimodalEncoder(copy.deepcopy(image), copy.deepcopy(text), copy.deepcopy(shared),
                                         HeadConfig(proj=head.proj, proj_dim=head.proj_dim))
            ema_update(keys, self, 0.0)  # start as an exact copy
            self.momentum = keys.requires_grad_(False)

    def _shared(self, encoder: Encoder, out_x: Tensor, padding_mask: Optional[Tensor],
                project: Optional[nn.Module]) -> MultimodalOutput:
        distances = encoder.embed.distances(out_x.shape[1], out_x.device)  # T x T
        shared = self.shared.forward_tokens(out_x, padding_mask, distances=distances)
        encoder_cls, cls = out_x[:, 0], shared.cls  # B x D each
        if project is None:
            embedding = cls
        else:
            embedding = project(encoder_cls if self.proj == "encoder" else cls)  # B x E
        return MultimodalOutput(encoder_cls, cls, self.kd_map(cls), embedding)

    def forward_image(self, images: Tensor) -> MultimodalOutput:
        """``[B, 3, H, W]`` -> every level of the image pass."""
        out = self.image(images)
        return self._shared(self.image, out.x, out.padding_mask, self.image_proj)

    def forward_text(self, text_ids: Tensor, padding_mask: Optional[Tensor] = None) -> MultimodalOutput:
        """``[B, L]`` token ids (BOS first) -> every level of the text pass."""
        out = self.text(text_ids, padding_mask)
        return self._shared(self.text, out.x, out.padding_mask, self.text_proj)

    def encode_image(self, images: Tensor) -> Tensor:
        """The retrieval embedding of images, ``[B, E]``."""
        return self.forward_image(images).embedding

    def encode_text(self, text_ids: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """The retrieval embedding of captions, ``[B, E]``."""
        return self.forward_text(text_ids, padding_mask).embedding

    @torch.no_grad()
    def momentum_keys(self, images: Tensor, text_ids: Tensor, padding_mask: Optional[Tensor] = None
                      ) -> Tuple[Tensor, Tensor]:
        """Move the momentum copy towards the student (``m * copy + (1 - m) * student``, m =
        ``head.bank_momentum``), then return its (image, text) embeddings of the batch,
        ``[B, E]`` each: the keys of :func:`common.memory_bank.banked_itc_loss`."""
        if self.momentum is None:
            raise RuntimeError("momentum_keys needs head.bank_size > 0 and head.bank_momentum > 0")
        ema_update(self.momentum, self, self.bank_momentum)
        self.momentum.eval()  # keys without dropout / drop path
        return self.momentum.encode_image(images), self.momentum.encode_text(text_ids, padding_mask)

    def forward(self, images: Tensor, text_ids: Tensor, padding_mask: Optional[Tensor] = None
                ) -> Tuple[MultimodalOutput, MultimodalOutput, Optional[Tensor]]:
        """(image levels, text levels, ITC logit scale or None); the scale is returned rather
        than read off the module so DDP/DeepSpeed wrappers need no unwrapping."""
        scale = self.logit_scale() if self.logit_scale is not None else None
        return self.forward_image(images), self.forward_text(text_ids, padding_mask), scale


def build_multimodal(image: ImageEncoderConfig, text: TextEncoderConfig, shared: EncoderConfig,
                     head: HeadConfig, pad_id: int, contrastive: bool = False) -> MultimodalEncoder:
    """The student: encoders initialised from ``image.init`` / ``text.init`` (pretrained in
    ``full``, random in ``tiny``), randomly initialised shared blocks (the thesis found
    initialising them from the text model's last blocks did not help)."""
    return MultimodalEncoder(init_encoder(build_image_encoder(image), image, "image"),
                             init_encoder(build_text_encoder(text, pad_id), text, "text"),
                             Encoder(None, shared), head, contrastive)


@torch.no_grad()
def teacher_width(teacher: nn.Module, image_size: int) -> int:
    """Width of :func:`~common.models.teachers.teacher_embedding` (``HeadConfig.target_dim``),
    from one blank image."""
    device = next(teacher.parameters()).device
    return teacher_embedding(teacher, torch.zeros(1, 3, image_size, image_size, device=device)).shape[-1]
