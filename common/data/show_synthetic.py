"""Look at the synthetic world and time it: a grid of samples with their captions, samples/s.

    python -m common.data.show_synthetic --show results/figures/synthetic.png
    python -m common.data.show_synthetic --bench --image-size 32

Kept apart from :mod:`common.data.synthetic`, which :mod:`common.data.datasets` imports, so
that the world itself imports no dataset code.
"""
from __future__ import annotations

import argparse
import logging
import math
import textwrap
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from common.data.datasets import ImageTextPairs, TrainStream
from common.data.synthetic import CLASSNAMES, SPLITS, SyntheticWorld, render
from common.data.transforms import train_transform

log = logging.getLogger(__name__)


def benchmark(num: int = 2000, image_size: int = 32, render_size: int = 0) -> dict:
    """Samples per CPU-second (process time, so other jobs on the machine do not distort it;
    set torch to 1 thread for "one core"): rendering alone, rendering + train transform, and
    full training pairs (scene + render + caption + transform through :class:`TrainStream`)."""
    world = SyntheticWorld(render_size=render_size or image_size)
    source = world.source("train")
    transform = train_transform(image_size)
    stream = TrainStream(ImageTextPairs(source, transform), seed=0)
    scenes = [world.scene("train", i) for i in range(num)]
    out = {}
    size = source.render_size
    for name, fn in (("render", lambda i: render(scenes[i], size)),
                     ("render+transform", lambda i: transform(render(scenes[i], size))),
                     ("pairs", lambda i: stream[i])):
        fn(0)
        start = time.process_time()
        for i in range(num):
            fn(i)
        out[name] = num / (time.process_time() - start)
    log.info("synthetic samples/s at %dpx (render %dpx), torch threads %d: %s", image_size,
             source.render_size, torch.get_num_threads(),
             ", ".join(f"{k} {v:,.0f}" for k, v in out.items()))
    return out


def show(path: Path, num: int = 8, size: int = 48, split: str = "train") -> None:
    """A grid of ``num`` samples with their 5 captions, to check by eye that objects are
    recognisable and captions true."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # the plotting stack only when a picture is asked for

    world = SyntheticWorld()
    cols = 4
    rows = math.ceil(num / cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(4.4 * cols, 6.4 * rows),
                             gridspec_kw={"height_ratios": [3, 2] * rows})
    for ax in np.ravel(axes):
        ax.axis("off")
    for i in range(num):
        scene = world.scene(split, i * 37)
        image_ax, text_ax = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        image_ax.imshow(render(scene, size), interpolation="nearest")
        image_ax.set_title(f"{split}[{scene.index}]: {CLASSNAMES[scene.label]} ({size}px)",
                           fontsize=9)
        text = "\n".join(textwrap.fill(f"{k + 1}. {c}", 56)
                         for k, c in enumerate(world.captions(scene)))
        text_ax.text(0, 1, text, transform=text_ax.transAxes, va="top", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m common.data.show_synthetic",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--show", type=Path, help="write a grid of samples with captions here")
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--size", type=int, default=48, help="render size of --show")
    parser.add_argument("--bench", action="store_true", help="measure samples/s on one thread")
    parser.add_argument("--image-size", type=int, default=32, help="network input size of --bench")
    parser.add_argument("--render-size", type=int, default=0,
                        help="render size of --bench (0: the image size)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.show:
        show(args.show, size=args.size, split=args.split)
    if args.bench:
        torch.set_num_threads(1)
        benchmark(image_size=args.image_size, render_size=args.render_size)


if __name__ == "__main__":
    main()
