"""``tiny-dino``: a label-free tiny ViT teacher whose CLS token is trained by DINO.

Chapter 5 asks whether the way a teacher trains its CLS token matters to the aligned student.
``tiny-d2v`` (:mod:`common.tiny_teachers.d2v`) makes the CLS regress the mean of its
patch targets, as data2vec 2.0 does; this recipe trains the CLS directly, as DINO does
(Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", 2021):

- two augmented views per image; a student network (encoder + :class:`DinoHead`) and its
  EMA teacher map each view's CLS output to ``num_prototypes`` logits;
- the teacher's distribution is centred (a running mean of its logits, against collapse to
  one prototype) and sharpened (low temperature); the student's distribution of the *other*
  view is pulled towards it by cross-entropy (:func:`dino_loss`);
- the EMA decay follows DINO's cosine schedule from ``ema_start`` to 1.

Views are random resized crops and flips; with ``background_swap`` each view also redraws
the image's background (:meth:`~common.data.synthetic.SyntheticSource.image_on_new_background`),
so that the only thing the views share is their objects. Without it the objective clusters
images by background texture and tint, which carry no class information here.

**What it learns at this scale** (dim 128, depth 4, patch 8, batch 128, one core). With the
background swap the kNN accuracies rise above the untrained network's while the teacher's
distribution is still soft (cosine schedule over 2000 steps, step 250: CLS kNN fine/coarse
top-1 25.4/28.0 vs 18.6/23.2 untrained, about what a *supervised* ViT of this size reaches
in 300 steps) and fall back as it sharpens (step 750: 17.5/19.4): the prototypes then split
the images by attributes other than the main object's colour and shape (positions, sizes,
the other objects). The default 300-step bootstrap ends at 20.7/24.7 (+2.1/+1.5 over
untrained). Without the swap the CLS falls below the untrained level within 100 steps.
With the chapters' teacher training settings (lr 2e-3, weight decay 0.05, no clipping, 400
steps) it collapses instead: the teacher's centred distribution is uniform (loss = log K)
from step ~100 and the CLS ends at 17.6/21.8 (untrained 19.4/24.4). 256 prototypes,
temperatures 0.04/0.1, EMA 0.996 and lr 5e-4 collapse the same way (loss log 256 from step
50; 20.0/23.9 at step 300); BatchNorm in the head (DINO's ``use_bn_in_head``) sharpens the
first targets (entropy 4.7 of 5.5 at step 50) but collapses by step 100 (10.3/15.5), and
DINOv2's Sinkhorn-Knopp centring with ``relayout`` views on top of that did too (15.5/19.5
at step 100; head and centring variants tried in throwaway code, not kept).
:mod:`common.tiny_teachers.clr`, whose in-batch negatives rule a constant output out, is the
label-free tiny teacher whose trained CLS keeps a gain at the end of its bootstrap.

The cached teacher is the EMA *encoder* (the DINO head is dropped), an
:class:`~common.models.encoder.Encoder` with the same interface as ``tiny-d2v``; its
``report.json`` holds the same kNN accuracies next to chance and next to the untrained network.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config import ConfigError, DataConfig, TeacherConfig
from common.data.datasets import TrainStream
from common.data.synthetic import SyntheticWorld
from common.data.transforms import train_transform
from common.data.views import TwoViews
from common.models.encoder import Encoder
from common.models.ema import ema_update
from common.tiny_teachers.report import knn_report, knn_sets, ssl_report
from common.tiny_teachers.settings import DinoSettings
from common.train import fit


class DinoHead(nn.Module):
    """DINO's projection head: 3-layer MLP -> L2-normalised bottleneck -> weight-normalised
    linear layer onto the prototypes (its norm fixed to 1, DINO's ``norm_last_layer``)."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, num_prototypes: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, bottleneck) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, dim]`` -> logits ``[B, num_prototypes]``: cosines in [-1, 1]."""
        return F.normalize(self.mlp(x), dim=-1) @ F.normalize(self.prototypes, dim=-1).T


def dino_loss(student_logits: Tensor, teacher_logits: Tensor, center: Tensor,
              student_temp: float, teacher_temp: float) -> Tensor:
    """DINO's cross-view cross-entropy. ``*_logits``: ``[V, B, K]`` (V views of B images),
    ``center``: ``[K]``. Each teacher view ``i`` is a target for every student view ``j != i``:
    mean over pairs and images of ``-sum_k softmax((t_i - c) / T_t) * log_softmax(s_j / T_s)``."""
    targets = F.softmax((teacher_logits - center) / teacher_temp, dim=-1).detach()  # V x B x K
    log_probs = F.log_softmax(student_logits / student_temp, dim=-1)  # V x B x K
    views = student_logits.shape[0]
    pairs = [-(targets[i] * log_probs[j]).sum(-1).mean()
             for i in range(views) for j in range(views) if i != j]
    return torch.stack(pairs).mean()


def cosine_ema(step: int, total_steps: int, start: float) -> float:
    """DINO's teacher momentum: ``1 - (1 - start) * (cos(pi * step / total) + 1) / 2``."""
    return 1.0 - (1.0 - start) * (math.cos(math.pi * min(step, total_steps) / total_steps) + 1) / 2


class SelfDistillation(nn.Module):
    """Student (encoder + head), EMA teacher (encoder + head) and the teacher's logit centre,
    in one module so that a checkpoint holds everything a resumed run needs."""

    def __init__(self, teacher: Encoder, s: DinoSettings, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = DinoHead(teacher.dim, s.head_hidden, s.head_bottleneck, s.num_prototypes)
        self.student = copy.deepcopy(teacher).requires_grad_(True)
        self.student_head = head
        self.teacher, self.teacher_head = teacher, copy.deepcopy(head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(s.num_prototypes))

    def forward(self, views: Tensor, s: DinoSettings) -> Dict[str, Tensor]:
        """``views`` ``[B, V, C, H, W]`` -> the loss and its monitors; updates the centre."""
        V = views.shape[1]
        flat = views.transpose(0, 1).flatten(0, 1)  # V*B x C x H x W, view-major
        with torch.no_grad():
            t = self.teacher_head(self.teacher(flat).cls).unflatten(0, (V, -1))  # V x B x K
        s_logits = self.student_head(self.student(flat).cls).unflatten(0, (V, -1))
        loss = dino_loss(s_logits.float(), t.float(), self.center, s.student_temp, s.teacher_temp)
        with torch.no_grad():
            probs = F.softmax((t.float() - self.center) / s.teacher_temp, dim=-1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
            self.center.lerp_(t.float().mean((0, 1)), 1 - s.center_momentum)
        return {"loss": loss, "teacher_entropy": entropy}

    @property
    def frozen(self) -> List[nn.Module]:
        return [self.teacher, self.teacher_head]

    @torch.no_grad()
    def update_teacher(self, decay: float) -> None:
        ema_update(self.teacher, self.student, decay)
        ema_update(self.teacher_head, self.student_head, decay)


def train_two_views(model: Encoder, cfg: TeacherConfig, data: DataConfig, out_dir: Path,
                    settings: Any, make_net: Callable[[Encoder], nn.Module],
                    relayout: bool = False, drop_others: float = 0.0) -> Dict[str, Any]:
    """The bootstrap both two-view recipes share (DINO here, MoCo v3 in :mod:`common.tiny_teachers.clr`):
    train ``make_net(model)`` on :class:`TwoViews` of unlabelled synthetic images, moving its
    EMA teacher (``model`` itself) on DINO's cosine schedule after every step, and return
    ``model``'s kNN report next to the untrained network's (same keys as ``tiny-d2v``'s).

    ``settings`` needs ``crop_scale_min``, ``background_swap`` and ``ema_start``; the network,
    ``net(views, settings)`` -> loss dict, ``net.frozen`` (modules without gradients) and
    ``net.update_teacher(decay)``.
    """

    if cfg.encoder.image_size != data.image_size:
        raise ConfigError(f"config error: teacher.encoder.image_size={cfg.encoder.image_size} "
                          f"differs from data.image_size={data.image_size}; set them equal")
    world = SyntheticWorld.from_config(data)
    knn = knn_sets(data)
    untrained = knn_report(model, knn)
    views = TwoViews(world.source("train"), train_transform(
        data.image_size, (settings.crop_scale_min, 1.0), data.hflip), settings.background_swap,
        relayout, drop_others)
    net = make_net(model)
    steps = cfg.train.steps

    def step_fn(module: nn.Module, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return module(batch["views"], settings)

    def on_step_end(module: nn.Module, step: int) -> None:
        module.update_teacher(cosine_ema(step - 1, steps, settings.ema_start))

    result = fit(net, step_fn, TrainStream(views, seed=cfg.train.seed), cfg.train, out_dir,
                 num_workers=data.num_workers, frozen=net.frozen, on_step_end=on_step_end)
    model.eval()  # net.teacher is model: the EMA updates trained it in place
    trained = knn_report(model, knn)
    return ssl_report(cfg.name, result, asdict(settings), trained, untrained)


def train_dino(model: Encoder, cfg: TeacherConfig, data: DataConfig, out_dir: Path,
               settings: DinoSettings = DinoSettings()) -> Dict[str, Any]:
    """DINO-train ``model`` (it becomes the EMA teacher) on unlabelled synthetic images and
    return its kNN report."""
    return train_two_views(model, cfg, data, out_dir, settings,
                           lambda m: SelfDistillation(m, settings, cfg.train.seed + 1))
