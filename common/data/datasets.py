"""Torch datasets over a :class:`DataSource`, and the endless, resumable training stream.

A *source* is one split of one dataset: the synthetic world (``world.source(split)``) or a
real loader (COCO Karpathy, CIFAR, ...), all with the same four members (see
:class:`DataSource`). The datasets turn sources into the item dicts every chapter consumes:

- :class:`ImageTextPairs`: ``{"image", "caption", "image_id", "label"}`` (one caption drawn
  per item); batch with :func:`collate_image_text` (adds ``text_ids``, ``text_padding_mask``).
- :class:`ImageLabelSet`: ``{"image", "label", "image_id"}`` for kNN and classification.
- :class:`RetrievalSet`: all images plus all captions with ``text_image_ids``, in batches.
- :class:`TrainStream`: item ``k`` of an endless shuffled stream, a pure function of
  ``(seed, k)``; the training loop reads items ``[step*B, (step+1)*B)`` (:meth:`TrainStream.loader`)
  and resuming at any step reproduces the exact batches, with any number of workers.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data import default_collate

from common.data.synthetic import mirror_caption
from common.data.tokenizer import Tokenizer
from common.data.transforms import ImageLike, ImageTransform, to_model_input
from common.errors import DataError


class DataSource(Protocol):
    """One split of a dataset. ``classnames`` is empty and ``label`` returns -1 when the
    split is unlabelled; ``captions`` is empty when it has no text (any sequence: the
    synthetic one realises a caption only when it is read)."""

    classnames: Sequence[str]

    def __len__(self) -> int: ...

    def image(self, index: int) -> ImageLike: ...

    def captions(self, index: int) -> Sequence[str]: ...

    def label(self, index: int) -> int: ...


class ImageTextPairs(Dataset):
    """One (image, caption) pair per image: the caption is drawn uniformly from the image's
    captions and the flip by the transform, both from the torch global RNG (seeded per item
    by :class:`TrainStream`). A flipped image gets its caption's left/right swapped."""

    def __init__(self, source: DataSource, transform: ImageTransform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        captions = self.source.captions(index)
        if not captions:
            raise DataError(f"image {index} of {self.source!r} has no caption; drop it from the "
                            f"split or fix its annotations")
        caption = captions[int(torch.randint(len(captions), ()))]
        image, flipped = self.transform.apply(self.source.image(index))
        return {"image": image, "caption": mirror_caption(caption) if flipped else caption,
                "image_id": index, "label": self.source.label(index)}


def collate_image_text(tokenizer: Tokenizer, max_len: int) -> Callable[[List[dict]], dict]:
    """Batch ImageTextPairs items: images stacked, captions tokenised into ``text_ids`` [B, L]
    and ``text_padding_mask`` [B, L] (True at pads); ``caption`` stays a list of str."""

    def collate(items: List[dict]) -> dict:
        captions = [item["caption"] for item in items]
        for item in items:
            if not item["caption"].strip():
                raise DataError(f"image_id {item['image_id']} has an empty caption "
                                f"({item['caption']!r}); fix or drop it in the annotations")
        batch = default_collate([{k: v for k, v in item.items() if k != "caption"}
                                 for item in items])
        batch["caption"] = captions
        batch["text_ids"], batch["text_padding_mask"] = tokenizer.encode_batch(captions, max_len)
        return batch

    return collate


class ImageLabelSet(Dataset):
    """``{"image", "label", "image_id"}`` for kNN banks/queries, zero-shot and supervised
    training; ``num_classes``/``classnames`` come from the source."""

    def __init__(self, source: DataSource, transform: ImageTransform) -> None:
        self.source, self.transform = source, transform
        self.classnames = list(source.classnames)
        self.num_classes = len(self.classnames)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return {"image": self.transform(self.source.image(index)),
                "label": self.source.label(index), "image_id": index}


class RetrievalSet(Dataset):
    """A retrieval test set: N images (items ``{"image", "image_id"}``) and all their
    captions, flattened in image order: ``captions[m]`` describes image ``text_image_ids[m]``
    (5N for COCO/Flickr), the layout :func:`common.retrieval.retrieval_recall` takes."""

    def __init__(self, source: DataSource, transform: ImageTransform) -> None:
        self.source, self.transform = source, transform
        self.captions: List[str] = []
        ids: List[int] = []
        for index in range(len(source)):
            caps = source.captions(index)
            if not caps:
                raise DataError(f"retrieval image {index} of {source!r} has no caption; every "
                                f"test image needs at least one")
            self.captions.extend(caps)
            ids.extend([index] * len(caps))
        self.text_image_ids = torch.tensor(ids, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return {"image": self.transform(self.source.image(index)), "image_id": index}

    def image_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Images in index order, as model inputs: float [b, 3, H, W] batches."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield to_model_input(torch.stack([self[i]["image"] for i in range(start, stop)]))

    def text_batches(self, tokenizer: Tokenizer, max_len: int,
                     batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Captions in order, as (text_ids [b, L], text_padding_mask [b, L]) batches."""
        for start in range(0, len(self.captions), batch_size):
            yield tokenizer.encode_batch(self.captions[start:start + batch_size], max_len)


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser: a cheap, well-mixed 64-bit hash (Steele et al., 2014)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_seed(seed: int, k: int) -> int:
    """The torch seed of stream item ``k`` (1 us; numpy's SeedSequence costs 10)."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ k)


class TrainStream(Dataset):
    """Item ``k`` of an endless stream over ``dataset``: epoch ``e = k // N`` visits every
    index once in the order of a permutation seeded by ``(seed, e)``, and all augmentation
    randomness of item ``k`` comes from the torch CPU generator seeded by ``(seed, k)`` inside
    ``fork_rng``, so the caller's RNG state is untouched. Hence item k is the same in every
    process, worker and restart: the step-s batch is items ``[s*B, (s+1)*B)``."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed
        self.epoch_size = len(dataset)  # type: ignore[arg-type]
        if self.epoch_size == 0:
            raise DataError("the training split is empty; check the dataset size settings")
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def index(self, k: int) -> int:
        """The dataset index that stream item ``k`` reads."""
        epoch, position = divmod(k, self.epoch_size)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.epoch_size)
            self._epoch = epoch
        return int(self._perm[position])

    def __getitem__(self, k: int) -> Any:
        index = self.index(k)
        with torch.random.fork_rng(devices=[]):
            # only the CPU generator: torch.manual_seed would also reseed CUDA outside the fork
            torch.default_generator.manual_seed(item_seed(self.seed, k))
            return self.dataset[index]

    def loader(self, batch_size: int, collate_fn: Optional[Callable] = None, start_step: int = 0,
               steps: Optional[int] = None, num_workers: int = 0) -> DataLoader:
        """Batches of steps ``start_step, start_step + 1, ...`` (``steps`` of them, or endless)."""
        start = start_step * batch_size
        indices = (itertools.count(start) if steps is None
                   else range(start, start + steps * batch_size))
        return DataLoader(self, batch_size=batch_size, sampler=indices, collate_fn=collate_fn,
                          num_workers=num_workers, persistent_workers=num_workers > 0)
