"""Label-free tiny ViT teachers: data2vec 2.0-style self-distillation on the synthetic world.

The chapters distil from *self-supervised* teachers (data2vec 2.0, BEiT v2, DINO); their
``tiny`` presets need a small stand-in that learned without labels. ``tiny-d2v`` follows
data2vec 2.0 (Baevski et al., "Efficient Self-supervised Learning with Contextualized Target
Representations for Vision, Speech and Language", 2022):

- the *student* is an ALiBi ViT :class:`~common.models.encoder.Encoder` that sees only the
  visible patches of an image whose patches are masked in blocks (``mask_ratio``), several
  masked views per image (``num_masks``, data2vec 2.0's ``clone_batch``); a light conv
  decoder fills the masked positions with a mask token and predicts their targets;
- the *teacher* is the exponential moving average of the student (decay ramped linearly
  from ``ema_start`` to ``ema_end``), run on the unmasked image; its targets are
  :func:`~common.targets.layer_averaged_targets` of its top ``top_k`` block outputs at the
  patch positions;
- the loss is the MSE at the masked positions plus a CLS objective chosen by name
  (:data:`CLS_OBJECTIVES`). data2vec 2.0's ``mean_patches`` makes the student's CLS output
  regress the mean of the patch targets: the property the thesis blames for data2vec's weak
  CLS token (chapter 5 compares it with teachers whose CLS is trained otherwise).

The cached teacher is the EMA encoder: ``teacher(images, return_layers=True)`` returns an
:class:`~common.models.encoder.EncoderOutput` (``.cls``, ``.layers``) like any student encoder.
Its ``report.json`` holds kNN accuracies (CLS and mean-pooled patches, fine and coarse
labels) next to chance and next to the same architecture untrained.

**What it learns at this scale** (patch 8, dim 128, depth 4, a few hundred steps on one
core). Training does not collapse (target std stays ~1, and ~0.9 across images at a
position), but the kNN accuracies end *below* the untrained network's, which itself is as
good as raw pixels (fine/coarse top-1 23/29). Probing the features with other scene
attributes shows why: masked prediction of instance-normed targets is dominated by the
background texture (periodic, with a random phase: the most predictable structure of the
synthetic world), and texture kNN rises from ~45% to ~80-95% while object colour and
shape fall. The CLS, which regresses the mean of instance-normed targets (close to a
constant vector), ends near chance with the data2vec 2.0 post-norm blocks, i.e. the
weakness the thesis attributes to data2vec's CLS shows up in its extreme form; with
pre-norm blocks (``encoder.layer_norm_first``) it stays at the untrained level.
Mask ratio 0.5/0.6/0.75/0.8 with random or block masks, top-K 1/3/4, EMA 0.99->0.999,
0.98->0.995, 0.98->0.998 and a frozen teacher, lr 3e-4/1e-3/2e-3, batch-norm or no
per-layer target norm, no CLS loss, a 4-layer decoder, a mask-token (data2vec 1) student,
patch 4, crop scale 0.08-1 and 2000 steps did not change that. For scale: a *supervised*
ViT of the same size is still at the untrained level on this kNN protocol after 600 steps
(38k labelled images), so the budget, not only the objective, limits what a tiny ViT shows.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config import ConfigError, DataConfig, TeacherConfig
from common.data.datasets import ImageLabelSet, TrainStream
from common.data.synthetic import SyntheticWorld
from common.data.transforms import train_transform
from common.losses import kd_mse_loss
from common.models.ema import ema_update
from common.models.encoder import Encoder
from common.targets import layer_averaged_targets
from common.tiny_teachers.report import knn_report, knn_sets, ssl_report
from common.tiny_teachers.settings import D2VSettings
from common.train import fit

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- masking
def block_mask(batch: int, grid: Tuple[int, int], ratio: float, block: int = 1,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """``[batch, H*W]`` bool, True = masked: exactly ``round(ratio * H*W)`` patches per row.

    Uniform noise on the patch grid is smoothed with a ``block x block`` box filter and the
    patches with the highest scores are masked, so masked patches form blobs (data2vec 2.0
    and BEiT mask blocks; a masked blob cannot be filled in from its immediate neighbours)
    while every row keeps the same number of visible tokens, which lets the student drop
    them without padding. ``block=1`` is uniform random masking (MAE).
    """
    h, w = grid
    num_masked = int(round(ratio * h * w))
    if not 0 <= num_masked < h * w:
        raise ValueError(f"mask ratio {ratio} leaves no visible patch of {h * w}")
    noise = torch.rand(batch, 1, h, w, generator=generator, device=device)  # B x 1 x H x W
    if block > 1:
        noise = F.avg_pool2d(noise, block, stride=1, padding=block // 2,
                             count_include_pad=False)[..., :h, :w]
    scores = noise.flatten(1)  # B x N
    masked = torch.zeros_like(scores, dtype=torch.bool)
    masked.scatter_(1, scores.topk(num_masked, dim=1).indices, True)
    return masked


# ---------------------------------------------------------------------------- EMA teacher
def ema_decay(step: int, total_steps: int, start: float, end: float, ramp: float) -> float:
    """Linear ramp from ``start`` to ``end`` over the first ``ramp * total_steps`` steps
    (data2vec's ``ema_anneal_end_step``), then ``end``."""
    ramp_steps = max(1, int(ramp * total_steps))
    if step >= ramp_steps:
        return end
    return start + (end - start) * step / ramp_steps


# ---------------------------------------------------------------------------- targets
def patch_targets(layers: list[Tensor], top_k: int, num_extra: int = 1) -> Tensor:
    """data2vec targets at the patch positions: the top ``top_k`` block outputs without the
    extra (CLS) tokens, instance-normed over the patches, averaged, layer-normed: ``[B, N, D]``."""
    return layer_averaged_targets([h[:, num_extra:] for h in layers[-top_k:]])


def mean_patches_cls_target(targets: Tensor) -> Tensor:
    """data2vec 2.0's CLS target: the mean over the patch positions of the targets ``[B, N, D]`` -> ``[B, D]``."""
    return targets.mean(dim=1)


def mean_patches_cls_loss(cls_pred: Tensor, targets: Tensor) -> Tensor:
    """MSE between the student's CLS output ``[B, D]`` and :func:`mean_patches_cls_target`."""
    return F.mse_loss(cls_pred.float(), mean_patches_cls_target(targets))


CLS_OBJECTIVES: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mean_patches": mean_patches_cls_loss,
}
"""How a recipe trains the CLS token: ``loss(student_cls [B, D], patch_targets [B, N, D])``."""


# ---------------------------------------------------------------------------- student
class ConvDecoder(nn.Module):
    """data2vec 2.0's light image decoder: conv blocks on the patch grid + a linear projection.

    Masked positions hold a learned mask token plus the fixed patch position; each block is
    ``GELU(LayerNorm(Conv2d(x)))`` with a residual from the second block on.
    """

    def __init__(self, dim: int, grid: Tuple[int, int], layers: int = 2, kernel: int = 3):
        super().__init__()
        self.grid = grid
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, kernel, padding=kernel // 2)
                                   for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, visible: Tensor, ids_keep: Tensor, pos_embed: Tensor) -> Tensor:
        """``visible`` ``[B, K, D]`` encoder outputs at patches ``ids_keep`` ``[B, K]`` ->
        predictions for every patch ``[B, N, D]``."""
        B, _, D = visible.shape
        h, w = self.grid
        x = (self.mask_token.to(visible.dtype) + pos_embed.to(visible.dtype)).expand(B, -1, -1)
        x = x.scatter(1, ids_keep[..., None].expand(-1, -1, D), visible)  # B x N x D
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            y = conv(x.transpose(1, 2).reshape(B, D, h, w)).flatten(2).transpose(1, 2)  # B x N x D
            y = F.gelu(norm(y))
            x = y if i == 0 else x + y
        return self.proj(x)


class MaskedStudent(nn.Module):
    """An image :class:`Encoder` run on the visible patches only (+ CLS), and a :class:`ConvDecoder`."""

    def __init__(self, encoder: Encoder, decoder_layers: int = 2, decoder_kernel: int = 3):
        super().__init__()
        self.encoder = encoder
        self.decoder = ConvDecoder(encoder.dim, encoder.embed.grid_size, decoder_layers, decoder_kernel)

    def forward(self, images: Tensor, masked: Tensor, num_masks: int = 1) -> Tuple[Tensor, Tensor]:
        """``images`` ``[B, C, H, W]``, ``masked`` ``[B*M, N]`` (M = ``num_masks`` views per
        image, rows ``b*M .. b*M+M-1`` belong to image b) -> (CLS ``[B*M, D]``, patch
        predictions ``[B*M, N, D]``)."""
        enc = self.encoder
        tokens = enc.embed_inputs(images).repeat_interleave(num_masks, 0)  # BM x (1+N) x D
        BM, T, D = tokens.shape
        num_visible = T - 1 - int(masked[0].sum())
        # visible patches in index order (stable sort puts False first), then CLS in front
        ids_keep = masked.int().argsort(dim=1, stable=True)[:, :num_visible]  # BM x K
        idx = torch.cat([ids_keep.new_zeros(BM, 1), ids_keep + 1], dim=1)  # BM x (1+K)
        x = tokens.gather(1, idx[..., None].expand(-1, -1, D))  # BM x (1+K) x D
        bias = None
        if enc.alibi is not None:  # the ALiBi bias of the kept tokens, per row
            dist = enc.embed.distances(T, tokens.device)  # T x T
            dist = dist[idx[:, :, None], idx[:, None, :]]  # BM x (1+K) x (1+K)
            bias = -enc.alibi.slopes.to(x.dtype)[None, :, None, None] * dist[:, None].to(x.dtype)
        for blk in enc.blocks:
            x = blk(x, bias)  # BM x (1+K) x D
        if enc.norm is not None:
            x = enc.norm(x)
        pred = self.decoder(x[:, 1:], ids_keep, enc.embed.pos_embed)  # BM x N x D
        return x[:, 0], pred


# ---------------------------------------------------------------------------- the recipe
def d2v_step(student: nn.Module, teacher: Encoder, images: Tensor,
             s: D2VSettings) -> Dict[str, Tensor]:
    """One data2vec 2.0 loss evaluation: teacher targets on the full image, student on
    ``s.num_masks`` masked views; returns ``loss`` and its logged parts."""
    with torch.no_grad():
        targets = patch_targets(teacher(images, return_layers=True).layers, s.top_k)  # B x N x D
    B, N, _ = targets.shape
    grid = teacher.embed.grid_size
    masked = block_mask(B * s.num_masks, grid, s.mask_ratio, s.mask_block, device=images.device)
    cls_pred, pred = student(images, masked, s.num_masks)  # BM x D, BM x N x D
    targets_rep = targets.repeat_interleave(s.num_masks, 0)  # BM x N x D
    reg = kd_mse_loss(pred.float(), targets_rep, masked)
    cls = CLS_OBJECTIVES[s.cls_objective](cls_pred, targets_rep)
    with torch.no_grad():
        target_std = targets.flatten(0, 1).std(0).mean()  # collapse monitor (data2vec's target_var)
        image_std = targets.std(0).mean()  # across images at the same position: 0 = positional collapse
    return {"loss": reg + s.cls_weight * cls, "reg": reg, "cls": cls,
            "target_std": target_std, "image_std": image_std}


def train_d2v(model: Encoder, cfg: TeacherConfig, data: DataConfig, out_dir: Path,
              settings: D2VSettings = D2VSettings()) -> Dict[str, Any]:
    """Self-distil ``model`` (becomes the EMA teacher) on unlabelled synthetic training images."""
    if cfg.encoder.image_size != data.image_size:
        raise ConfigError(f"config error: teacher.encoder.image_size={cfg.encoder.image_size} "
                          f"differs from data.image_size={data.image_size}; set them equal")
    if settings.cls_objective not in CLS_OBJECTIVES:
        raise ConfigError(f"config error: unknown CLS objective '{settings.cls_objective}'; "
                          f"use one of {sorted(CLS_OBJECTIVES)}")
    world = SyntheticWorld.from_config(data)
    knn = knn_sets(data)
    untrained = knn_report(model, knn)
    train = TrainStream(ImageLabelSet(world.source("train"), train_transform(
        data.image_size, data.crop_scale, data.hflip)), seed=cfg.train.seed)
    with torch.random.fork_rng(devices=[]):  # the student starts as the teacher's copy
        torch.manual_seed(cfg.train.seed + 1)
        student = MaskedStudent(copy.deepcopy(model).requires_grad_(True).train(),
                                settings.decoder_layers, settings.decoder_kernel)
    model.requires_grad_(False)
    steps = cfg.train.steps

    def step_fn(net: nn.Module, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return d2v_step(net, model, batch["image"], settings)  # batch["label"] is never read

    def on_step_end(net: nn.Module, step: int) -> None:
        decay = ema_decay(step - 1, steps, settings.ema_start, settings.ema_end, settings.ema_ramp)
        ema_update(model, net.encoder, decay)

    result = fit(student, step_fn, train, cfg.train, out_dir, num_workers=data.num_workers,
                 frozen=[model], on_step_end=on_step_end)
    model.eval()
    trained = knn_report(model, knn)
    return ssl_report(cfg.name, result, asdict(settings), trained, untrained)
