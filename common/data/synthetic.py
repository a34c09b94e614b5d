"""The synthetic image-caption world: the embedded default data of every ``tiny`` preset.

Real COCO/ImageNet/CIFAR cannot be downloaded on a fresh CPU machine, so each chapter's
default run trains and evaluates on this world instead. It is generated on the fly
(no files) and is a pure function of ``(seed, split, index)``.

**Scenes.** 1-3 flat objects on a textured, tinted background. An object is one of 10
shapes x 10 colours, in one of 3 sizes, centred (with a small jitter) in one cell of a 3x3
grid. Object 0 is the *main* object: always strictly larger than every other object, so
"the" object of an image is unambiguous. Backgrounds are 5 textures x 4 tints.

**Labels.** ``label`` (fine, 100 classes) = main object's colour + shape, named like
``"red circle"`` (:data:`CLASSNAMES`, index ``shape * 10 + colour``); ``coarse_label``
(10 classes) = main object's shape (:data:`COARSE_CLASSNAMES`). Colour is easy to read off
pixel statistics, shape is not, so the coarse task measures shape recognition and the fine
task needs both. Labels are exactly balanced: ``label == index % 100``. These drive the
supervised tiny teacher, the "ImageNet" zero-shot task (:data:`CLASSNAMES` with the prompt
:data:`TEMPLATES`) and the "CIFAR" kNN tasks (fine = CIFAR-100-like, coarse = CIFAR-10-like).

**Captions.** 5 per image, COCO-like, from sentence frames with optional parts, filled
with paraphrases ("circle" / "disc", "checkered" / "checked", "in the top left corner" /
"in the upper left"). Every caption names the main object's colour and shape; each caption
also mentions a random subset of: its position, the background texture and/or tint, the
other objects (as a count, without positions, or in full). The 5 captions *jointly* state
every caption-relevant attribute (the signature below) at least once, so the exact image
can be retrieved from its captions, while single captions are often vague (many images
fit "a red circle."), as in COCO. :meth:`SyntheticWorld.regions` gives short
Visual-Genome-like phrases ("small blue square", "striped background", "red circle above
blue square").

**Splits** (disjoint seeds): ``train`` (``train_size`` images); ``coco_test`` (COCO-5k-like);
``flickr_test`` (Flickr-1k-like *shift*: held-out sentence frames, never used for
``train``/``coco_test``, and more cluttered images, 1/2/3 objects with probabilities
0.1/0.3/0.6 instead of 0.3/0.4/0.3); ``knn_train`` / ``knn_test`` (kNN bank / queries,
CIFAR-like); ``imagenet_val`` (zero-shot classification images). In ``coco_test`` and
``flickr_test`` every image has a unique *signature* (background texture and tint, and the
colour, shape and grid cell of every object; sizes and jitter excluded): no two test images
are described by the same facts, so retrieval is never capped by duplicates.

**Flips.** Captions use "left"/"right". A horizontal flip mirrors the scene; the
transforms report the flip and :class:`common.data.datasets.ImageTextPairs` swaps the
words with :func:`mirror_caption`, so flipped pairs stay true (ALBEF does the same).
Textures and shapes are mirror-symmetric except the crescent, whose name does not say
which way it opens.

**Chance levels** (random embeddings, in percent):

=================================  =========  =========  =========
task                               R@1/top1   R@5/top5   R@10/top3
=================================  =========  =========  =========
coco_test 5k img x 25k capt, i2t   0.02       0.10       0.20
coco_test 5k img x 25k capt, t2i   0.02       0.10       0.20
flickr_test 1k x 5k, i2t           0.10       0.50       1.00
flickr_test 1k x 5k, t2i           0.10       0.50       1.00
zero-shot 100 classes              1.0        5.0        --
kNN 10 classes (top1 / top3)       10.0       --         27.1
kNN 100 classes (top1 / top3)      1.0        --         2.97
=================================  =========  =========  =========

(i2t: an image hits if any of its 5 captions is in the top K of 5N texts, ~ K/N; kNN: any of
the k nearest neighbours has the label, ``1 - (1 - 1/C)^k`` with balanced labels.)
A model that recognises only the main object's class and nothing else of the scene gets
t2i R@1/5/10 of about 2/10/20 on ``coco_test`` (50 images per class) and 10/50/100 on
``flickr_test`` (10 per class): the retrieval numbers above those levels measure whole-scene
understanding.

Throughput: ``python -m common.data.show_synthetic --bench`` (rendered + transformed samples/s);
a picture of samples with their captions: ``python -m common.data.show_synthetic --show FILE``.
"""
from __future__ import annotations

import collections.abc
import functools
import logging
import math
import random
import re
import dataclasses
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from common.config import DataConfig

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- vocabulary
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

# Sentence frames. "{slot}" is filled, "[...]" is dropped when a slot inside it is empty.
# Every frame can express every fact (position, background, other objects), so a caption's
# plan of facts never has to be cut to fit a frame; frames that *require* a fact (a slot
# outside brackets) are only drawn when the plan has it.
TRAIN_FRAMES = (
    "{main}[ {pos}][ {bg}][, with {others}].",
    "there is {main}[ {pos}][ {bg}][ and {others}].",
    "a photo of {main}[ {pos}][ next to {others}][ {bg}].",
    "an image of {main}[ {pos}][ {bg}][ beside {others}].",
    "{bgnp} with {main}[ {pos}][ and {others}].",
    "{others} and {main}[ {pos}][ {bg}].",
    "{main} is {pos}[ {bg}][, together with {others}].",
    "a picture showing {main}[ {pos}][ near {others}][ {bg}].",
)
# Held out: only the flickr_test split (and the tokenizer corpus) uses these.
HELDOUT_FRAMES = (
    "in this picture, {main} can be seen[ {pos}][ {bg}][ along with {others}].",
    "{pos}, there is {main}[ {bg}][; also visible: {others}].",
    "close-up of {main}[ {pos}][ {bg}][ and {others}].",
    "{bgnp} featuring {main}[ {pos}][ and {others}].",
    "someone drew {main}[ {pos}][ {bg}][ plus {others}].",
)
_SLOT_RE = re.compile(r"\{(\w+)\}")
_OPTIONAL_RE = re.compile(r"\[([^\[\]]*)\]")
_FACT_SLOTS = {"pos": ("pos",), "bg": ("bg", "bgnp"), "others": ("others",)}

SPLITS = ("train", "coco_test", "flickr_test", "knn_train", "knn_test", "imagenet_val")
UNIQUE_SPLITS = ("coco_test", "flickr_test")
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
_CORPUS_SPLIT_ID = len(SPLITS)  # scenes only used to show the tokenizer held-out frames
# cumulative weights (random.choices is 3x faster with them) of 1/2/3 objects per image
_COUNT_CUM_WEIGHTS = {"flickr_test": (0.1, 0.4, 1.0)}
_DEFAULT_COUNT_CUM_WEIGHTS = (0.3, 0.7, 1.0)
# cumulative weights of the facts a caption states: background, other objects
_BG_CHOICES, _BG_CUM_WEIGHTS = ("", "texture", "tint", "both"), (0.4, 0.6, 0.75, 1.0)
_OTHERS_CHOICES, _OTHERS_CUM_WEIGHTS = ("", "count", "plain", "full"), (0.3, 0.45, 0.65, 1.0)
_SCENE, _CAPTIONS, _REGIONS = 0, 1, 2
NUM_CAPTIONS = 5
_MAX_ATTEMPTS = 64
GRAMMAR_VERSION = 1  # bump when scenes/captions change: invalidates cached tokenizers


def _rng(seed: int, split_id: int, index: int, purpose: int, attempt: int = 0) -> random.Random:
    """One independent Mersenne-Twister stream per (seed, split, index, purpose, attempt).

    ``random.Random`` seeded from an int is stable across platforms and Python versions and
    ~10x cheaper to create than a numpy Generator, which matters at thousands of scenes/s.
    """
    if seed < 0 or not 0 <= index < 2 ** 40:
        raise ValueError(f"seed must be >= 0 and index in [0, 2**40), got {seed}, {index}")
    return random.Random(((((seed * 16 + split_id) * 4 + purpose) * _MAX_ATTEMPTS + attempt) << 40)
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


# ---------------------------------------------------------------------------- the world
class SyntheticWorld:
    """Scenes, captions and region phrases of every split, as pure functions of the index.

    ``render_size`` is only the default pixel size of :meth:`source`; scenes are resolution-free.
    """

    def __init__(self, seed: int = 0, train_size: int = 100_000, coco_test_size: int = 5000,
                 flickr_test_size: int = 1000, knn_train_size: int = 5000,
                 knn_test_size: int = 1000, imagenet_val_size: int = 2000,
                 render_size: int = 32) -> None:
        self.seed = seed
        self.render_size = render_size
        self._sizes = {"train": train_size, "coco_test": coco_test_size,
                       "flickr_test": flickr_test_size, "knn_train": knn_train_size,
                       "knn_test": knn_test_size, "imagenet_val": imagenet_val_size}
        self._unique: dict[str, List[Scene]] = {}

    @classmethod
    def from_config(cls, cfg: DataConfig, seed: int = 0) -> "SyntheticWorld":
        """The world of a chapter's ``data`` config. The seed is fixed (0) by default so that
        every run is evaluated on the same test images, as with a real dataset."""
        return cls(seed=seed, train_size=cfg.train_size, coco_test_size=cfg.coco_test_size,
                   flickr_test_size=cfg.flickr_test_size,
                   render_size=cfg.render_size or cfg.image_size)

    def len_split(self, split: str) -> int:
        self._check_split(split)
        return self._sizes[split]

    def scene(self, split: str, index: int) -> Scene:
        if not 0 <= index < self.len_split(split):
            raise IndexError(f"{split} has {self._sizes[split]} images, index {index} is out "
                             f"of range")
        if split in UNIQUE_SPLITS:
            return self._unique_scenes(split)[index]
        return self._sample_scene(split, _SPLIT_IDS[split], index, 0)

    def captions(self, scene: Scene) -> List[str]:
        """The 5 fixed captions of ``scene`` (held-out frames for ``flickr_test``)."""
        return list(self.lazy_captions(scene))

    def lazy_captions(self, scene: Scene) -> "Captions":
        """The same captions as a sequence that realises only the ones read."""
        frames = HELDOUT_FRAMES if scene.split == "flickr_test" else TRAIN_FRAMES
        return Captions(scene, self.seed, _SPLIT_IDS[scene.split], frames)

    def regions(self, scene: Scene) -> List[str]:
        """Short Visual-Genome-like phrases: objects, background, main-vs-other relations."""
        return _regions(scene, _rng(self.seed, _SPLIT_IDS[scene.split], scene.index, _REGIONS))

    def caption_corpus(self, num_scenes: int = 4000) -> Iterator[str]:
        """Text to train the tokenizer on: captions and regions of the first ``num_scenes``
        training scenes, held-out-frame captions of as many extra (non-test) scenes, and the
        zero-shot prompts. Like GPT-2's BPE, the tokenizer thus knows every word; the shift
        of ``flickr_test`` is in what the text *encoder* saw during training."""
        for index in range(min(num_scenes, self._sizes["train"])):
            scene = self.scene("train", index)
            yield from self.captions(scene)
            yield from self.regions(scene)
        for index in range(num_scenes):
            scene = self._sample_scene("train", _CORPUS_SPLIT_ID, index, 0)
            yield from Captions(scene, self.seed, _CORPUS_SPLIT_ID, HELDOUT_FRAMES)
        for name in CLASSNAMES + COARSE_CLASSNAMES:
            for template in TEMPLATES:
                yield template.format(name)

    def source(self, split: str, render_size: Optional[int] = None,
               label: str = "fine") -> "SyntheticSource":
        """One split as a :class:`common.data.datasets.DataSource` (rendered at
        ``render_size``, default the world's; ``label`` "fine" (100) or "coarse" (10))."""
        return SyntheticSource(self, split, render_size or self.render_size, label)

    # -- internals
    def _check_split(self, split: str) -> None:
        if split not in self._sizes:
            raise ValueError(f"unknown synthetic split {split!r}; choose one of {SPLITS}")

    def _unique_scenes(self, split: str) -> List[Scene]:
        """Test scenes, resampling (with the next attempt's stream) any whose signature is
        already taken by an earlier index, so index i's scene depends only on indices <= i."""
        scenes = self._unique.get(split)
        if scenes is None:
            scenes, seen = [], set()
            for index in range(self._sizes[split]):
                for attempt in range(_MAX_ATTEMPTS):
                    scene = self._sample_scene(split, _SPLIT_IDS[split], index, attempt)
                    if scene.signature not in seen:
                        break
                else:
                    raise RuntimeError(f"could not draw a unique {split} scene {index}")
                seen.add(scene.signature)
                scenes.append(scene)
            self._unique[split] = scenes
        return scenes

    def _sample_scene(self, split: str, split_id: int, index: int, attempt: int) -> Scene:
        r = _rng(self.seed, split_id, index, _SCENE, attempt)
        shape, colour = divmod(index % len(CLASSNAMES), len(COLOURS))
        count = r.choices((1, 2, 3), cum_weights=_COUNT_CUM_WEIGHTS.get(
            split, _DEFAULT_COUNT_CUM_WEIGHTS))[0]
        main_size = 2 if r.random() < 0.7 else 1
        objects = [_place(r, shape, colour, main_size, range(9), [])]
        for _ in range(count - 1):
            cells = [c for c in range(9) if all(c != o.cell for o in objects)]
            r.shuffle(cells)
            obj = _place(r, r.randrange(len(SHAPES)), r.randrange(len(COLOURS)),
                         r.randrange(main_size), cells, objects)
            if obj is not None:
                objects.append(obj)
        return Scene(split, index, tuple(objects), r.randrange(len(TEXTURES)),
                     r.randrange(len(TINTS)), (r.random(), r.random()))


def keeps_clear(cx: float, cy: float, size: int, other: Obj) -> bool:
    """Whether an object of ``size`` centred at ``(cx, cy)`` keeps clear of ``other``: centre
    distance >= 0.8 x the sum of their radii (the world's placement rule)."""
    return math.hypot(cx - other.cx, cy - other.cy) >= 0.4 * (SIZE_FRAC[size] + SIZE_FRAC[other.size])


def _place(r: random.Random, shape: int, colour: int, size: int, cells: Sequence[int],
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


# ---------------------------------------------------------------------------- captions
def _object_phrase(r: random.Random, obj: Obj, size_p: float, with_pos: bool,
                   article: str = "a ") -> str:
    words = [r.choice(SIZE_WORDS[obj.size])] if r.random() < size_p else []
    words += [r.choice(COLOUR_WORDS[obj.colour]), r.choice(SHAPE_WORDS[obj.shape])]
    if with_pos:
        words.append(r.choice(POSITION_WORDS[obj.cell]))
    return article + " ".join(words)


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _plan(r: random.Random, scene: Scene, n: int = NUM_CAPTIONS) -> List[dict]:
    """Which facts each of the n captions states; every fact is stated at least once."""
    has_others = len(scene.objects) > 1
    plans = [{"pos": r.random() < 0.45,
              "bg": r.choices(_BG_CHOICES, cum_weights=_BG_CUM_WEIGHTS)[0],
              "others": r.choices(_OTHERS_CHOICES, cum_weights=_OTHERS_CUM_WEIGHTS)[0]
              if has_others else ""} for _ in range(n)]
    if not any(p["pos"] for p in plans):
        plans[r.randrange(n)]["pos"] = True
    for part in ("texture", "tint"):
        if not any(p["bg"] in (part, "both") for p in plans):
            p = plans[r.randrange(n)]
            p["bg"] = part if p["bg"] == "" else "both"
    if has_others and not any(p["others"] == "full" for p in plans):
        plans[r.randrange(n)]["others"] = "full"
    return plans


def _realise(r: random.Random, scene: Scene, plan: dict, frames: Sequence[str]) -> str:
    main, *others = scene.objects
    slots = {"main": _object_phrase(r, main, 0.25, False), "pos": "", "bg": "", "bgnp": "",
             "others": ""}
    if plan["pos"]:
        slots["pos"] = r.choice(POSITION_WORDS[main.cell])
    if plan["bg"]:
        texture, tint = r.choice(TEXTURE_WORDS[scene.texture]), r.choice(TINT_WORDS[scene.tint])
        both = f"{tint} {texture}" if r.random() < 0.7 else f"{texture} {tint}"
        desc = {"texture": texture, "tint": tint, "both": both}[plan["bg"]]
        noun = r.choice(("background", "background", "backdrop"))
        slots["bg"] = f"{r.choice(('on a', 'on a', 'against a', 'over a'))} {desc} {noun}"
        slots["bgnp"] = f"a {desc} {noun}"
    if plan["others"] == "count":
        slots["others"] = (r.choice(("another shape", "a second object", "one more shape"))
                           if len(others) == 1 else
                           r.choice(("two other shapes", "two more objects", "two smaller shapes")))
    elif plan["others"]:
        slots["others"] = _join([_object_phrase(r, o, 0.6, plan["others"] == "full")
                                 for o in others])
    available = {name for name, value in slots.items() if value}
    frame = r.choice([f for f in frames if _required_slots(f) <= available])
    return _fill(frame, slots)


@functools.lru_cache(maxsize=None)
def _compile(frame: str) -> Tuple[Tuple[str, Tuple[str, ...], bool], ...]:
    """A frame as (format string, slot names, optional) segments."""
    segments, pos = [], 0
    for match in _OPTIONAL_RE.finditer(frame):
        segments += [(frame[pos:match.start()], False), (match.group(1), True)]
        pos = match.end()
    segments.append((frame[pos:], False))
    return tuple((text, tuple(_SLOT_RE.findall(text)), optional)
                 for text, optional in segments if text)


@functools.lru_cache(maxsize=None)
def _required_slots(frame: str) -> frozenset:
    return frozenset(name for _, names, optional in _compile(frame) if not optional
                     for name in names)


def _fill(frame: str, slots: dict) -> str:
    return "".join(text.format(**slots) for text, names, optional in _compile(frame)
                   if not optional or all(slots[name] for name in names))


class Captions(collections.abc.Sequence):
    """The fixed captions of one scene, each realised only when read (a training pair reads
    one of five: this saves most of the caption cost). Which facts each caption states is
    planned jointly (:func:`_plan`); caption j's wording depends only on (seed, split, index, j).
    Two captions of a scene can coincide (about 1 image in 100, when both are short)."""

    def __init__(self, scene: Scene, seed: int, split_id: int, frames: Sequence[str]) -> None:
        self._scene, self._seed, self._split_id, self._frames = scene, seed, split_id, frames
        self._plans = _plan(_rng(seed, split_id, scene.index, _CAPTIONS), scene)

    def __len__(self) -> int:
        return len(self._plans)

    def __getitem__(self, j):  # type: ignore[override]
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        j = range(len(self))[j]  # bounds check, negative indices
        r = _rng(self._seed, self._split_id, self._scene.index, _CAPTIONS, attempt=1 + j)
        return _realise(r, self._scene, self._plans[j], self._frames)


def _relation(a: Obj, b: Obj) -> str:
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _regions(scene: Scene, r: random.Random) -> List[str]:
    main, *others = scene.objects
    phrases = []
    for obj in scene.objects:
        phrases.append(_object_phrase(r, obj, 0.7, False, article=""))
        phrases.append(_object_phrase(r, obj, 0.0, True, article=""))
    phrases.append(f"{r.choice(TEXTURE_WORDS[scene.texture])} background")
    phrases.append(f"{r.choice(TINT_WORDS[scene.tint])} background")
    for obj in others:
        phrases.append(f"{_object_phrase(r, main, 0.0, False, article='')} {_relation(main, obj)} "
                       f"{_object_phrase(r, obj, 0.0, False, article='')}")
    return phrases


# ---------------------------------------------------------------------------- rendering
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


# ---------------------------------------------------------------------------- as a data source
class SyntheticSource:
    """One split rendered at one size: the :class:`common.data.datasets.DataSource` that the
    datasets read (real datasets implement the same four members)."""

    def __init__(self, world: SyntheticWorld, split: str, render_size: int,
                 label: str = "fine") -> None:
        if label not in ("fine", "coarse"):
            raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
        world.len_split(split)  # validates the split name
        self.world, self.split, self.render_size, self.label_kind = world, split, render_size, label
        self.classnames = CLASSNAMES if label == "fine" else COARSE_CLASSNAMES
        # fine and coarse are the same scenes with other labels: one embedding serves both
        self.images_key = (id(world), split, render_size)
        self._last: Optional[Scene] = None  # a dataset item asks image, captions and label

    def scene(self, index: int) -> Scene:
        if self._last is None or self._last.index != index:
            self._last = self.world.scene(self.split, index)
        return self._last

    def __len__(self) -> int:
        return self.world.len_split(self.split)

    def __repr__(self) -> str:
        return f"SyntheticSource({self.split!r}, {self.render_size}px, label={self.label_kind!r})"

    def image(self, index: int) -> np.ndarray:
        return render(self.scene(index), self.render_size)

    def image_on_new_background(self, index: int, generator: torch.Generator | None = None
                                ) -> np.ndarray:
        """The objects of image ``index`` on a background drawn from ``generator``
        (:func:`with_new_background`)."""
        return render(with_new_background(self.scene(index), generator), self.render_size)

    def captions(self, index: int) -> Captions:
        return self.world.lazy_captions(self.scene(index))

    def label(self, index: int) -> int:
        scene = self.scene(index)
        return scene.label if self.label_kind == "fine" else scene.coarse_label
