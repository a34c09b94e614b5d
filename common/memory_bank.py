"""FIFO memory bank of past embeddings: extra ITC negatives without a larger batch (chapter 4).

The thesis (draft 001, "Contrastive Learning with Memory Bank") keeps one queue per modality
of the last 16k-32k embeddings to "simulate" the batch sizes of VLMo/CLIP on one GPU. It is
MoCo's queue (He et al., "Momentum Contrast for Unsupervised Visual Representation
Learning", 2020) rather than Wu et al.'s (2018) whole-dataset bank: filled progressively at
the start of training, then every new batch replaces the oldest entries.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.losses import gather_features, itc_loss


class MemoryBank(nn.Module):
    """Ring buffer of the ``size`` most recent ``dim``-dimensional rows.

    The rows, the write pointer and the fill count are registered buffers, as MoCo's queue:
    they move with ``.to(device/dtype)`` and are saved in and restored from every
    ``state_dict``, so a resumed run continues with the same negatives. Under DDP, add the
    batch gathered from all ranks (``gather_features(x, with_grad=False)``) so that every
    rank holds the same bank, as MoCo enqueues ``concat_all_gather(keys)``.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"MemoryBank needs size >= 1 and dim >= 1, got size={size}, dim={dim}")
        self.register_buffer("rows", torch.zeros(size, dim))  # size x dim
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next row to overwrite
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # filled rows

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def add(self, batch: Tensor) -> None:
        """Write ``batch`` (``[n, dim]``, detached) over the oldest rows.

        A batch that runs past the end wraps to the start; of a batch larger than the bank
        only its last ``size`` rows are kept (the earlier ones would be overwritten anyway).
        """
        if batch.dim() != 2 or batch.shape[1] != self.rows.shape[1]:
            raise ValueError(f"MemoryBank.add expects [n, {self.rows.shape[1]}], got {list(batch.shape)}")
        batch = batch.detach().to(self.rows.dtype)[-self.size:]  # n x dim, n <= size
        n, ptr = batch.shape[0], int(self.ptr)
        index = (ptr + torch.arange(n, device=self.rows.device)) % self.size  # n
        self.rows.index_copy_(0, index, batch.to(self.rows.device))
        self.ptr.fill_((ptr + n) % self.size)
        self.count.fill_(min(int(self.count) + n, self.size))

    def get(self) -> Tensor:
        """A copy of the filled rows ``[len(self), dim]``, in storage order, not age order.

        Until the bank is full these are the rows added so far, oldest first; afterwards
        all rows, with the oldest at ``ptr``. Order is irrelevant for negatives. The copy (as
        MoCo's ``queue.clone().detach()``) keeps a later :meth:`add` from changing a tensor
        that autograd saved for the backward pass.
        """
        return self.rows[: len(self)].clone()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.rows.shape[1]}, filled={len(self)}"


def banked_itc_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Union[Tensor, float],
                    image_bank: Optional[MemoryBank], text_bank: Optional[MemoryBank],
                    image_keys: Optional[Tensor] = None, text_keys: Optional[Tensor] = None) -> Tensor:
    """:func:`~common.losses.itc_loss` over the (gathered) batch plus the banks' rows, then
    enqueue this batch: contrast first, add afterwards (thesis draft 001), so a pair is never
    its own bank negative. Each image also meets every text of ``text_bank`` and each text
    every image of ``image_bank``; the bank rows carry no gradient. Rows are stored
    L2-normalised and gathered from all processes (MoCo's ``concat_all_gather``), so every
    rank holds the same banks. A bank of ``None`` (or an empty one) adds no columns.

    With momentum keys (``image_keys`` / ``text_keys``: a slowly updated copy's embeddings
    of the same batch, :meth:`common.models.multimodal.MultimodalEncoder.momentum_keys`) the
    batch columns *and* what is enqueued are the keys, as in MoCo and ALBEF: every column
    then comes from nearly the same encoder, so the student cannot lower the loss by moving
    all its embeddings away from stale bank rows (which is what it does without them).
    """
    loss = itc_loss(image_emb, text_emb, logit_scale,
                    image_bank.get() if image_bank is not None else None,
                    text_bank.get() if text_bank is not None else None,
                    image_keys=image_keys, text_keys=text_keys)
    for bank, emb in ((image_bank, image_emb if image_keys is None else image_keys),
                      (text_bank, text_emb if text_keys is None else text_keys)):
        if bank is not None:
            bank.add(gather_features(F.normalize(emb.detach().float(), dim=-1), with_grad=False))
    return loss
