"""A dual encoder (one encoder per modality) with an optional head shared by both modalities.

SHRe (Aytar et al., 2017) and CLIP share this skeleton: image and text are encoded
separately, their CLS outputs pass through a head (SHRe: one *shared* network into the
teacher's class space; CLIP: a projection per modality) and the results are compared by
cosine similarity. :meth:`encode_image` / :meth:`encode_text` are what retrieval and
zero-shot evaluation use (:mod:`common.evaluation`).
"""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, nn

from common.models.encoder import Encoder
from common.models.heads import LogitScale


class DualEncoder(nn.Module):
    """``image``/``text`` encoders, then ``image_head``/``text_head`` on their CLS outputs.

    Passing the same module as both heads shares it (SHRe); ``None`` uses the CLS itself.
    ``logit_scale`` is the learnable ITC temperature.
    """

    def __init__(self, image: Encoder, text: Encoder, image_head: Optional[nn.Module] = None,
                 text_head: Optional[nn.Module] = None, logit_scale: Optional[LogitScale] = None):
        super().__init__()
        self.image, self.text = image, text
        self.image_head = image_head if image_head is not None else nn.Identity()
        # a shared head is registered once (its weights live under ``image_head``)
        self.shared_head = text_head is not None and text_head is image_head
        self.text_head = None if self.shared_head else (
            text_head if text_head is not None else nn.Identity())
        self.logit_scale = logit_scale if logit_scale is not None else LogitScale()

    def _text_head(self) -> nn.Module:
        return self.image_head if self.shared_head else self.text_head

    def encode_image(self, images: Tensor) -> Tensor:
        """B x 3 x H x W -> B x C (head output on the image CLS)."""
        return self.image_head(self.image(images).cls)

    def encode_text(self, text_ids: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """B x L token ids (BOS first) -> B x C (head output on the text CLS = BOS)."""
        return self._text_head()(self.text(text_ids, padding_mask).cls)

    def forward(self, images: Tensor, text_ids: Tensor,
                padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """(image embeddings B x C, text embeddings B x C, ITC logit scale). The scale is
        returned rather than read off the module so DDP/DeepSpeed wrappers need no unwrapping."""
        return self.encode_image(images), self.encode_text(text_ids, padding_mask), self.logit_scale()
