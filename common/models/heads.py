"""Small heads put on top of encoder outputs: the SHRe shared network, ITC projections, temperature."""
from __future__ import annotations

import math

import torch
from timm.layers import Mlp, trunc_normal_
from torch import Tensor, nn


class SharedHead(Mlp):
    """SHRe's shared network on the CLS outputs of both modalities (Aytar et al., 2017).

    ``Linear(D, hidden*D) -> GELU -> LayerNorm -> Linear(hidden*D, C)``; one instance is
    applied to image and text CLS so both land in the same (teacher's class) space. This is
    timm's ``Mlp`` with a norm after the activation, which is exactly that order.
    """

    def __init__(self, dim: int, num_classes: int, hidden: float = 4.0):
        super().__init__(dim, int(dim * hidden), num_classes, act_layer=nn.GELU, norm_layer=nn.LayerNorm)
        for fc in (self.fc1, self.fc2):
            trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)


class Projection(nn.Linear):
    """Bias-free linear map into the contrastive (ITC) space, as CLIP's ``proj`` matrices.

    No bias because the output is L2-normalised: a bias would only shift every embedding by
    the same vector. Initialised with CLIP's ``std = dim ** -0.5``.
    """

    def __init__(self, dim: int, out_dim: int):
        super().__init__(dim, out_dim, bias=False)
        trunc_normal_(self.weight, std=dim**-0.5)


class LogitScale(nn.Module):
    """CLIP's learnable inverse temperature, kept in log space and clamped at ``max``.

    Learning ``log(scale)`` keeps the scale positive and its updates relative; the clamp
    (CLIP: 100) stops the logits from growing until training becomes unstable.
    """

    def __init__(self, init: float = 1 / 0.07, max: float = 100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init)))
        self.log_max = math.log(max)

    def forward(self) -> Tensor:
        """The current scale ``exp(min(log_scale, ln max))``: a 0-d tensor."""
        return self.log_scale.clamp(max=self.log_max).exp()
