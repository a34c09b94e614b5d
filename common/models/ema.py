"""Exponential moving average of a network's weights: the teacher of self-distillation
(data2vec, DINO) and the momentum key encoder of a memory bank (MoCo, ALBEF)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student`` for every parameter; buffers copied.

    Parameters and buffers are matched by name: every name of ``teacher`` must exist in
    ``student`` with the same shape (``student`` may have more, e.g. when the teacher is a
    copy of part of it).
    """
    student_params = dict(student.named_parameters())
    for name, param in teacher.named_parameters():
        param.lerp_(student_params[name].detach().to(param.dtype), 1.0 - decay)
    student_buffers = dict(student.named_buffers())
    for name, buf in teacher.named_buffers():
        buf.copy_(student_buffers[name])
