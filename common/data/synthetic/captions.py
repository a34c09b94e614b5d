"""The caption grammar: sentence frames with optional parts, filled with paraphrases, five
captions per scene that jointly state every fact, and Visual-Genome-like region phrases."""
from __future__ import annotations

import collections.abc
import functools
import random
import re
from typing import List, Sequence, Tuple

from common.data.synthetic.scenes import CAPTION_PURPOSE, Obj, Scene, rng
from common.data.synthetic.vocabulary import (COLOUR_WORDS, POSITION_WORDS, SHAPE_WORDS, SIZE_WORDS,
                                              TEXTURE_WORDS, TINT_WORDS)

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
# cumulative weights of the facts a caption states: background, other objects
_BG_CHOICES, _BG_CUM_WEIGHTS = ("", "texture", "tint", "both"), (0.4, 0.6, 0.75, 1.0)
_OTHERS_CHOICES, _OTHERS_CUM_WEIGHTS = ("", "count", "plain", "full"), (0.3, 0.45, 0.65, 1.0)
NUM_CAPTIONS = 5
GRAMMAR_VERSION = 1  # bump when scenes/captions change: invalidates cached tokenizers


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
        self._plans = _plan(rng(seed, split_id, scene.index, CAPTION_PURPOSE), scene)

    def __len__(self) -> int:
        return len(self._plans)

    def __getitem__(self, j):  # type: ignore[override]
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        j = range(len(self))[j]  # bounds check, negative indices
        r = rng(self._seed, self._split_id, self._scene.index, CAPTION_PURPOSE, attempt=1 + j)
        return _realise(r, self._scene, self._plans[j], self._frames)


def _relation(a: Obj, b: Obj) -> str:
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def region_phrases(scene: Scene, r: random.Random) -> List[str]:
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
