"""The words of the synthetic world and what they look like: shapes, colours, sizes,
textures, tints, grid positions, the class names and the zero-shot prompts."""
from __future__ import annotations

import re
from typing import List

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "ring", "heart",
          "crescent", "bar")
SHAPE_WORDS = (("circle", "disc", "round disc"), ("square", "box", "block"),
               ("triangle", "triangular shape"), ("diamond", "rhombus"),
               ("cross", "plus sign"), ("star", "five-pointed star"), ("ring", "donut", "hoop"),
               ("heart", "heart shape"), ("crescent", "crescent moon", "half moon"),
               ("bar", "rectangle", "brick"))
# All colour names start with a consonant so "a {colour} {shape}" is always grammatical.
COLOURS = ("red", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "black", "brown")
COLOUR_WORDS = (("red", "scarlet"), ("yellow",), ("green",), ("cyan", "turquoise"), ("blue",),
                ("purple", "violet"), ("pink",), ("white",), ("black",), ("brown",))
COLOUR_RGB = np.array([(225, 35, 35), (245, 215, 35), (35, 170, 60), (40, 215, 225),
                       (35, 75, 230), (140, 50, 200), (250, 135, 200), (248, 248, 248),
                       (22, 22, 22), (135, 80, 30)], dtype=np.float32)
SIZES = ("small", "medium", "large")
SIZE_WORDS = (("small", "tiny", "little"), ("medium-sized", "mid-sized"), ("large", "big"))
SIZE_FRAC = (0.24, 0.33, 0.46)  # object diameter / image side
TEXTURES = ("plain", "striped", "checkered", "dotted", "speckled")
TEXTURE_WORDS = (("plain", "solid", "flat"), ("striped", "stripy", "lined"),
                 ("checkered", "checked", "chequered"), ("dotted", "polka-dot", "spotted"),
                 ("speckled", "noisy", "grainy"))
TINTS = ("gray", "beige", "lavender", "mint")
TINT_WORDS = (("gray", "grey"), ("beige", "sand-colored"), ("lavender", "lilac"), ("mint",))
TINT_RGB = np.array([(128, 128, 128), (172, 156, 118), (150, 134, 178), (122, 166, 140)],
                    dtype=np.float32)
TEXTURE_AMPLITUDE = 26.0
COLOUR_JITTER = 14.0  # per-channel uniform jitter of object colours

# 3x3 grid, row-major: cell = 3 * row + col. Right-hand phrases are mirrored left ones.
CELL_CENTRES = (0.22, 0.5, 0.78)
POSITION_JITTER = 0.025
_LEFT_POSITIONS = {
    0: ("in the top left corner", "at the top left", "in the upper left"),
    1: ("at the top", "near the top edge", "in the upper middle"),
    3: ("on the left", "on the left side", "at the left edge"),
    4: ("in the center", "in the middle", "at the center"),
    6: ("in the bottom left corner", "at the bottom left", "in the lower left"),
    7: ("at the bottom", "near the bottom edge", "in the lower middle"),
}

_MIRROR = {"left": "right", "right": "left"}
_MIRROR_RE = re.compile(r"\b(left|right)\b")


def mirror_caption(text: str) -> str:
    """Swap the words "left" and "right": the caption of the horizontally flipped image."""
    return _MIRROR_RE.sub(lambda m: _MIRROR[m.group(1)], text)


# right column (col 2) = mirrored left column (col 0)
POSITION_WORDS = dict(_LEFT_POSITIONS)
POSITION_WORDS.update({cell + 2: tuple(mirror_caption(w) for w in words)
                       for cell, words in _LEFT_POSITIONS.items() if cell % 3 == 0})

CLASSNAMES: List[str] = [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]
COARSE_CLASSNAMES: List[str] = list(SHAPES)
# CLIP-style zero-shot prompts (data, as open_clip's zero_shot_metadata).
TEMPLATES: List[str] = ["a photo of a {}.", "a picture of a {}.", "an image of a {}.",
                        "there is a {}.", "a {}.", "a large {}.", "a {} on a background."]
