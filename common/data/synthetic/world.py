"""The world: every split's scenes, captions and region phrases as pure functions of the
index (:class:`SyntheticWorld`), and one split rendered at one size as a data source
(:class:`SyntheticSource`)."""
from __future__ import annotations

from typing import Iterator, List, Optional

import numpy as np
import torch

from common.config import DataConfig
from common.data.synthetic.captions import HELDOUT_FRAMES, TRAIN_FRAMES, Captions, region_phrases
from common.data.synthetic.render import render, with_new_background
from common.data.synthetic.scenes import (CORPUS_SPLIT_ID, MAX_ATTEMPTS, REGION_PURPOSE, SPLIT_IDS, SPLITS,
                                          UNIQUE_SPLITS, Scene, rng, sample_scene)
from common.data.synthetic.vocabulary import CLASSNAMES, COARSE_CLASSNAMES, TEMPLATES


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
        return self._sample_scene(split, SPLIT_IDS[split], index, 0)

    def captions(self, scene: Scene) -> List[str]:
        """The 5 fixed captions of ``scene`` (held-out frames for ``flickr_test``)."""
        return list(self.lazy_captions(scene))

    def lazy_captions(self, scene: Scene) -> "Captions":
        """The same captions as a sequence that realises only the ones read."""
        frames = HELDOUT_FRAMES if scene.split == "flickr_test" else TRAIN_FRAMES
        return Captions(scene, self.seed, SPLIT_IDS[scene.split], frames)

    def regions(self, scene: Scene) -> List[str]:
        """Short Visual-Genome-like phrases: objects, background, main-vs-other relations."""
        return region_phrases(scene, rng(self.seed, SPLIT_IDS[scene.split], scene.index, REGION_PURPOSE))

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
            scene = self._sample_scene("train", CORPUS_SPLIT_ID, index, 0)
            yield from Captions(scene, self.seed, CORPUS_SPLIT_ID, HELDOUT_FRAMES)
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
                for attempt in range(MAX_ATTEMPTS):
                    scene = self._sample_scene(split, SPLIT_IDS[split], index, attempt)
                    if scene.signature not in seen:
                        break
                else:
                    raise RuntimeError(f"could not draw a unique {split} scene {index}")
                seen.add(scene.signature)
                scenes.append(scene)
            self._unique[split] = scenes
        return scenes

    def _sample_scene(self, split: str, split_id: int, index: int, attempt: int) -> Scene:
        return sample_scene(self.seed, split, split_id, index, attempt)


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
