"""Two views of one synthetic image for the label-free tiny teachers (``tiny-dino``,
``tiny-clr``): what a crop pipeline does to a photo, done on the scene before rendering.

A 32-pixel scene cannot be cropped like a photo without cutting its main object, so a view
redraws the scene instead: a new background (:func:`~common.data.synthetic.with_new_background`),
objects moved and re-shaded within their named colour (:func:`relaid_scene`), and other
objects than the main one left out (:func:`without_some_others`). Labels are never read.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from common.config import ConfigError
from common.data.datasets import DataSource
from common.data.synthetic import (CELL_CENTRES, COLOUR_JITTER, COLOUR_RGB, POSITION_JITTER, Scene,
                                   keeps_clear, render, with_new_background)
from common.data.transforms import ImageTransform


def relaid_scene(scene: Scene, generator: torch.Generator | None = None, tries: int = 20) -> Scene:
    """``scene`` with its objects moved to random distinct cells of the 3x3 grid (with the
    world's position jitter and clearance rule, centre distance >= 0.4 x the sum of the
    diameters; the old layout if ``tries`` draws found none clear) and their colours
    re-jittered around their named colours (the world's per-channel jitter).

    Neither the layout nor the exact shade carries class information here, but both are
    consistent across two views of one image and tell images apart: an instance-discriminating
    objective learns them first. Redrawn per view, they leave it the objects' named colours,
    shapes and sizes (crops only shift and scale the whole layout)."""
    n = len(scene.objects)
    rgb = ((torch.rand(n, 3, generator=generator) * 2 - 1) * COLOUR_JITTER).tolist()
    objects = tuple(dataclasses.replace(o, rgb=tuple(float(np.clip(c + j, 0, 255)) for c, j in
                                                   zip(COLOUR_RGB[o.colour], jit)))
                    for o, jit in zip(scene.objects, rgb))
    for _ in range(tries):
        cells = torch.randperm(9, generator=generator)[:n].tolist()
        jitter = ((torch.rand(n, 2, generator=generator) * 2 - 1) * POSITION_JITTER).tolist()
        moved = tuple(dataclasses.replace(o, cell=c, cx=CELL_CENTRES[c % 3] + jx,
                                          cy=CELL_CENTRES[c // 3] + jy)
                      for o, c, (jx, jy) in zip(objects, cells, jitter))
        if all(keeps_clear(a.cx, a.cy, a.size, b) for i, a in enumerate(moved) for b in moved[i + 1:]):
            return dataclasses.replace(scene, objects=moved)
    return dataclasses.replace(scene, objects=objects)


def without_some_others(scene: Scene, drop: float, generator: torch.Generator | None = None) -> Scene:
    """``scene`` with each object but the main one left out with probability ``drop``.

    The views of a real photo are crops: both usually hold its subject (the object that
    fills the frame) and each loses some of what is around it. A 32-px scene cannot be
    cropped that way without cutting its main object, so a view drops other objects instead.
    The main object is the largest one, which a view-maker can see without any label; what
    it is (colour, shape) is never read."""
    keep = (torch.rand(len(scene.objects) - 1, generator=generator) >= drop).tolist()
    return dataclasses.replace(scene, objects=(scene.objects[0],) + tuple(
        o for o, k in zip(scene.objects[1:], keep) if k))


class TwoViews(Dataset):
    """``{"views": [2, C, H, W]}``: two augmentations of one image (labels are never read).

    ``background_swap`` redraws each view's background, ``relayout`` (with it) also moves
    each view's objects (:func:`relaid_scene`), ``drop_others`` (with relayout) leaves each
    object but the main one out of a view with that probability (:func:`without_some_others`)."""

    def __init__(self, source: DataSource, transform: ImageTransform, background_swap: bool,
                 relayout: bool = False, drop_others: float = 0.0):
        if (background_swap or relayout) and not hasattr(source, "image_on_new_background"):
            raise ConfigError("config error: background_swap and relayout need the synthetic "
                              "world (data.source=synthetic)")
        if relayout and not background_swap:
            raise ConfigError("config error: relayout needs background_swap "
                              "(both redraw the scene)")
        if drop_others and not relayout:
            raise ConfigError("config error: drop_others needs relayout (both redraw the objects)")
        if not 0.0 <= drop_others <= 1.0:
            raise ConfigError(f"config error: drop_others={drop_others} is a probability; "
                              f"use a value in [0, 1]")
        self.source, self.transform = source, transform
        self.background_swap, self.relayout, self.drop_others = background_swap, relayout, drop_others

    def __len__(self) -> int:
        return len(self.source)

    def _relaid_image(self, index: int) -> np.ndarray:
        """The objects of image ``index`` on a new background
        (:func:`~common.data.synthetic.with_new_background`), moved (:func:`relaid_scene`) and
        some left out (``drop_others``)."""
        scene = relaid_scene(with_new_background(self.source.scene(index)))
        if self.drop_others:
            scene = without_some_others(scene, self.drop_others)
        return render(scene, self.source.render_size)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        if self.relayout:
            images = [self._relaid_image(index) for _ in range(2)]
        elif self.background_swap:
            images = [self.source.image_on_new_background(index) for _ in range(2)]
        else:
            images = [self.source.image(index)] * 2
        return {"views": torch.stack([self.transform(image) for image in images])}
