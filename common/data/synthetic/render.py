"""Pixels: anti-aliased shapes on textured, tinted backgrounds (``render``), and the
background swap of the label-free teachers' views (``with_new_background``)."""
from __future__ import annotations

import dataclasses
import functools
from typing import List, Tuple

import numpy as np
import torch

from common.data.synthetic.scenes import Scene
from common.data.synthetic.vocabulary import SHAPES, SIZE_FRAC, TEXTURE_AMPLITUDE, TEXTURES, TINT_RGB, TINTS

def _in_polygon(x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over points."""
    inside = np.zeros(x.shape, dtype=bool)
    for i in range(len(vx)):
        x0, y0, x1, y1 = vx[i - 1], vy[i - 1], vx[i], vy[i]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < xi)
    return inside


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside-test of each shape on coordinates in [-1, 1] (y pointing down)."""
    r2 = x * x + y * y
    if shape == "circle":
        return r2 <= 0.92 ** 2
    if shape == "square":
        return np.maximum(abs(x), abs(y)) <= 0.78
    if shape == "triangle":  # apex up
        return (y <= 0.75) & (abs(x) <= (y + 0.95) * 0.97 / 1.7)
    if shape == "diamond":
        return abs(x) + abs(y) <= 0.97
    if shape == "cross":
        return ((abs(x) <= 0.3) & (abs(y) <= 0.95)) | ((abs(y) <= 0.3) & (abs(x) <= 0.95))
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return _in_polygon(x, y + 0.08, radii * np.cos(angles), radii * np.sin(angles))
    if shape == "ring":
        return (r2 <= 0.95 ** 2) & (r2 >= 0.52 ** 2)
    if shape == "heart":
        hx, hy = x * 1.2, -y * 1.2 + 0.25
        return (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy ** 3 <= 0
    if shape == "crescent":
        return (r2 <= 0.95 ** 2) & ((x - 0.45) ** 2 + (y + 0.12) ** 2 >= 0.72 ** 2)
    if shape == "bar":
        return (abs(x) <= 0.97) & (abs(y) <= 0.4)
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=8)
def _assets(size: int) -> Tuple[List[List[np.ndarray]], np.ndarray]:
    """Per render size: anti-aliased alpha masks [shape][size] of shape (d, d, 1), and the
    background patterns [texture, 2*size, 2*size] in [-1, 1] that scenes crop from."""
    masks = []
    for shape in SHAPES:
        per_size = []
        for frac in SIZE_FRAC:
            d = max(3, round(frac * size))
            t = (np.arange(4 * d) + 0.5) / (2 * d) - 1.0  # 4x4 supersampling
            x, y = np.meshgrid(t, t)
            alpha = _shape_mask(shape, x, y).reshape(d, 4, d, 4).mean(axis=(1, 3))
            per_size.append(alpha.astype(np.float32)[:, :, None])
        masks.append(per_size)
    yy, xx = (np.mgrid[0:2 * size, 0:2 * size] + 0.5) / size  # units of the image side
    fx, fy = (xx * 5) % 1 - 0.5, (yy * 5) % 1 - 0.5
    dots = np.clip((0.23 - np.hypot(fx, fy)) * size / 5 * 2 + 0.5, 0, 1)
    patterns = np.stack([
        np.zeros_like(xx),
        np.clip(3 * np.sin(2 * np.pi * 5 * yy), -1, 1),
        np.clip(4 * np.sin(2 * np.pi * 2 * xx) * np.sin(2 * np.pi * 2 * yy), -1, 1),
        dots * 2 - 1,
        np.random.default_rng(size).uniform(-1, 1, xx.shape),
    ]).astype(np.float32)
    return masks, patterns


def render(scene: Scene, size: int) -> np.ndarray:
    """The scene as a uint8 ``[size, size, 3]`` array (others drawn first, main on top)."""
    masks, patterns = _assets(size)
    oy, ox = int(scene.offset[0] * size), int(scene.offset[1] * size)
    image = patterns[scene.texture, oy:oy + size, ox:ox + size, None] * TEXTURE_AMPLITUDE
    image = image + TINT_RGB[scene.tint]
    for obj in reversed(scene.objects):
        alpha = masks[obj.shape][obj.size]
        d = alpha.shape[0]
        y0, x0 = round(obj.cy * size - d / 2), round(obj.cx * size - d / 2)
        ys, xs = max(0, -y0), max(0, -x0)
        ye, xe = min(d, size - y0), min(d, size - x0)
        region = image[y0 + ys:y0 + ye, x0 + xs:x0 + xe]
        region += alpha[ys:ye, xs:xe] * (np.array(obj.rgb, np.float32) - region)
    return (image + 0.5).astype(np.uint8)


def with_new_background(scene: Scene, generator: torch.Generator | None = None) -> Scene:
    """``scene`` with a background (texture, tint, texture phase) drawn from ``generator``:
    the background-swap augmentation of label-free teachers.

    Ryali et al. (2021, "Characterizing and Improving the Robustness of Self-Supervised
    Learning through Background Augmentations") swap backgrounds behind a saliency mask;
    the generator knows the foreground exactly. Two views of one image then share only
    their objects, so a view-invariant objective cannot settle for the background, the
    most predictable (and class-independent) structure of this world."""
    u = torch.rand(4, generator=generator).tolist()
    return dataclasses.replace(scene, texture=int(u[0] * len(TEXTURES)), tint=int(u[1] * len(TINTS)),
                               offset=(u[2], u[3]))
