"""Regression targets for feature distillation (chapters 1, 3 and 5).

Chapter 1 regresses the teacher's *layer-averaged* representation of every time step, as
data2vec does (Baevski et al., "data2vec: A general framework for self-supervised learning
in speech, vision and language", 2022, sec. 3.3; thesis draft 003, eq. (1)-(5)): each
layer is instance-normalised over time, the layers are averaged, and the average is
layer-normalised without parameters. Averaging over layers makes the target independent of
depth, which is why a 6-block student can regress a 12-block teacher; the student's own
layer outputs go through the same function. Chapters 3-5 regress one vector per image, the
teacher's CLS (:func:`common.models.teachers.teacher_embedding`), optionally standardised over
the batch (:func:`batch_standardized`).

No function here detaches: call them on the teacher under ``torch.no_grad()`` and on the
student with gradients.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

INSTANCE_NORM_EPS = 1e-5  # F.instance_norm's default, as in data2vec


def instance_norm_over_time(x: Tensor, padding_mask: Optional[Tensor] = None,
                            eps: float = INSTANCE_NORM_EPS) -> Tensor:
    """Normalise every channel of every sample to zero mean, unit variance over time steps.

    Equivalent to ``F.instance_norm`` on ``[B, D, T]`` (biased variance, no affine), which
    is what data2vec applies to each teacher layer. Normalising per layer before averaging
    keeps layers with large activations from dominating the average.

    ``padding_mask`` (``[B, T]``, True at padded steps, as fairseq's ``padding_mask`` and
    ``nn.MultiheadAttention``'s ``key_padding_mask``) excludes padded text steps from the
    statistics so a caption's target does not depend on how much padding its batch has;
    padded steps come out as 0.
    """
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in >= fp32 (mixed precision)
    if padding_mask is None:
        return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)  # B x T x D
    valid = (~padding_mask).unsqueeze(-1).to(x.dtype)  # B x T x 1
    steps = valid.sum(dim=1, keepdim=True).clamp(min=1)  # B x 1 x 1
    mean = (x * valid).sum(dim=1, keepdim=True) / steps  # B x 1 x D
    var = ((x - mean).pow(2) * valid).sum(dim=1, keepdim=True) / steps  # B x 1 x D, biased
    return (x - mean) / torch.sqrt(var + eps) * valid  # B x T x D


def layer_averaged_targets(layers: Sequence[Tensor], instance_norm: bool = True,
                           layer_norm: bool = True,
                           padding_mask: Optional[Tensor] = None) -> Tensor:
    """data2vec target: mean over layers of instance-normed ``[B, T, D]`` states, then layer norm.

    Thesis draft 003, eq. (3)-(5): ``Y = LayerNorm(1/L * sum_l InstanceNorm(H_l))``, with a
    parameter-free layer norm over D (eps 1e-5). ``instance_norm=False`` / ``layer_norm=False``
    skip the respective step (data2vec's ablations). ``padding_mask`` is passed to
    :func:`instance_norm_over_time` (True = padded step). The result is in float32 (or
    float64 for float64 input) regardless of the layers' dtype, as data2vec computes its
    targets in full precision.
    """
    if len(layers) == 0:
        raise ValueError("layer_averaged_targets needs at least one layer")
    if len({tuple(h.shape) for h in layers}) != 1:
        raise ValueError(f"all layers must have the same [B, T, D] shape, got "
                         f"{sorted({tuple(h.shape) for h in layers})}")
    total = None
    for h in layers:  # accumulate instead of stacking: L x B x T x D would not fit for ViT-B
        h = h.to(torch.promote_types(h.dtype, torch.float32))
        if instance_norm:
            h = instance_norm_over_time(h, padding_mask)
        total = h if total is None else total + h
    mean = total / len(layers)  # B x T x D
    return F.layer_norm(mean, mean.shape[-1:]) if layer_norm else mean


def batch_standardized(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Standardise each channel of ``[B, D]`` teacher vectors over the batch (zero mean, unit
    variance; biased variance, ``eps`` as :func:`F.batch_norm`), without parameters.

    A single CLS vector per image has no time axis to instance-norm over, so this is the
    analogue of data2vec's target normalisation for CLS regression: it removes the component
    that every image shares. Self-supervised ViT CLS outputs can be dominated by it (the tiny
    label-free teachers' CLS vectors have a mean cosine of 0.86-0.996 between different
    images), and an MSE on the raw vectors then mostly teaches the student that constant.
    Statistics are per process under data parallelism.
    """
    x = x.float()
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)
