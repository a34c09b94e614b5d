"""What a synthetic scene is (:class:`Scene`, :class:`Obj`), the splits, and how a scene is
drawn from its own random stream (:func:`rng`, :func:`sample_scene`)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from common.data.synthetic.vocabulary import (CELL_CENTRES, CLASSNAMES, COLOUR_JITTER, COLOUR_RGB, COLOURS,
                                              POSITION_JITTER, SHAPES, SIZE_FRAC, TEXTURES, TINTS)

SPLITS = ("train", "coco_test", "flickr_test", "knn_train", "knn_test", "imagenet_val")
UNIQUE_SPLITS = ("coco_test", "flickr_test")
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
CORPUS_SPLIT_ID = len(SPLITS)  # scenes only used to show the tokenizer held-out frames
# cumulative weights (random.choices is 3x faster with them) of 1/2/3 objects per image
_COUNT_CUM_WEIGHTS = {"flickr_test": (0.1, 0.4, 1.0)}
_DEFAULT_COUNT_CUM_WEIGHTS = (0.3, 0.7, 1.0)
# what a random stream is for (one independent stream per scene and purpose, see rng)
SCENE_PURPOSE, CAPTION_PURPOSE, REGION_PURPOSE = 0, 1, 2
MAX_ATTEMPTS = 64


def rng(seed: int, split_id: int, index: int, purpose: int, attempt: int = 0) -> random.Random:
    """One independent Mersenne-Twister stream per (seed, split, index, purpose, attempt).

    ``random.Random`` seeded from an int is stable across platforms and Python versions and
    ~10x cheaper to create than a numpy Generator, which matters at thousands of scenes/s.
    """
    if seed < 0 or not 0 <= index < 2 ** 40:
        raise ValueError(f"seed must be >= 0 and index in [0, 2**40), got {seed}, {index}")
    return random.Random(((((seed * 16 + split_id) * 4 + purpose) * MAX_ATTEMPTS + attempt) << 40)
                         + index)


@dataclass(frozen=True)
class Obj:
    """One object: indices into SHAPES/COLOURS/SIZES, grid cell, centre (fractions of the
    image side, y down) and its actual colour (the named one, jittered per channel)."""

    shape: int
    colour: int
    size: int
    cell: int
    cx: float
    cy: float
    rgb: Tuple[float, float, float]


@dataclass(frozen=True)
class Scene:
    """Everything needed to render and describe one image; ``objects[0]`` is the main one."""

    split: str
    index: int
    objects: Tuple[Obj, ...]
    texture: int
    tint: int
    offset: Tuple[float, float]  # texture crop offset, fractions of the image side

    @property
    def label(self) -> int:
        """Fine class (100): main object's shape * 10 + colour, named by CLASSNAMES."""
        return self.objects[0].shape * len(COLOURS) + self.objects[0].colour

    @property
    def coarse_label(self) -> int:
        """Coarse class (10): main object's shape."""
        return self.objects[0].shape

    @property
    def signature(self) -> tuple:
        """The caption-relevant facts; unique within each test split."""
        main, *others = self.objects
        return (self.texture, self.tint, (main.shape, main.colour, main.cell),
                tuple(sorted((o.shape, o.colour, o.cell) for o in others)))


def keeps_clear(cx: float, cy: float, size: int, other: Obj) -> bool:
    """Whether an object of ``size`` centred at ``(cx, cy)`` keeps clear of ``other``: centre
    distance >= 0.8 x the sum of their radii (the world's placement rule)."""
    return math.hypot(cx - other.cx, cy - other.cy) >= 0.4 * (SIZE_FRAC[size] + SIZE_FRAC[other.size])


def place(r: random.Random, shape: int, colour: int, size: int, cells: Sequence[int],
          placed: Sequence[Obj]) -> Optional[Obj]:
    """The object in the first of ``cells`` (tried in order; one is drawn when nothing is
    placed yet) that keeps clear of ``placed`` (:func:`keeps_clear`)."""
    candidates = cells if placed else [r.choice(cells)]
    for cell in candidates:
        cx = CELL_CENTRES[cell % 3] + r.uniform(-POSITION_JITTER, POSITION_JITTER)
        cy = CELL_CENTRES[cell // 3] + r.uniform(-POSITION_JITTER, POSITION_JITTER)
        if all(keeps_clear(cx, cy, size, o) for o in placed):
            rgb = tuple(min(255.0, max(0.0, float(c) + r.uniform(-COLOUR_JITTER, COLOUR_JITTER)))
                        for c in COLOUR_RGB[colour])
            return Obj(shape, colour, size, cell, cx, cy, rgb)
    return None


def sample_scene(seed: int, split: str, split_id: int, index: int, attempt: int) -> Scene:
    """Scene ``index`` of ``split`` (``attempt`` > 0: a redraw; see the test splits' uniqueness).

    The main object's class is ``index % 100``: labels are exactly balanced."""
    r = rng(seed, split_id, index, SCENE_PURPOSE, attempt)
    shape, colour = divmod(index % len(CLASSNAMES), len(COLOURS))
    count = r.choices((1, 2, 3), cum_weights=_COUNT_CUM_WEIGHTS.get(
        split, _DEFAULT_COUNT_CUM_WEIGHTS))[0]
    main_size = 2 if r.random() < 0.7 else 1
    objects = [place(r, shape, colour, main_size, range(9), [])]
    for _ in range(count - 1):
        cells = [c for c in range(9) if all(c != o.cell for o in objects)]
        r.shuffle(cells)
        obj = place(r, r.randrange(len(SHAPES)), r.randrange(len(COLOURS)),
                    r.randrange(main_size), cells, objects)
        if obj is not None:
            objects.append(obj)
    return Scene(split, index, tuple(objects), r.randrange(len(TEXTURES)),
                 r.randrange(len(TINTS)), (r.random(), r.random()))
