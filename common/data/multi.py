"""Several image-text datasets as one training stream: round-robin, as the thesis trains on
COCO + CC3M (and, in preliminary runs, Visual Genome).

Round-robin means every dataset gets the same share of the steps whatever its size (COCO's
113k images weigh as much as CC3M's 500k), and one batch holds one dataset (VLMo/BEiT-3 style,
so in-batch ITC negatives come from one distribution). Two forms:

- :class:`RoundRobinStream`: batch ``s`` is wholly from dataset ``s % n``; dataset ``j``'s own
  items follow a :class:`common.data.datasets.TrainStream` with a seed derived from
  ``(seed, j)``. Item ``k`` is a pure function of ``(seed, k)``, so resuming at a step
  reproduces the batches, exactly as with a single ``TrainStream``.
- :class:`RoundRobinSource`: the datasets as one :class:`common.data.datasets.DataSource`
  (index ``i`` is an item of source ``i % n``): what ``open_source(cfg, "train")`` returns
  for several ``data.train_sets``.

Every chapter trains through :func:`image_text_stream`, which turns a
:class:`RoundRobinSource` into a :class:`RoundRobinStream` (one dataset per batch: the
thesis's "COCO and Conceptual Captions in a round-robin fashion", read as VLMo/BEiT-3 do)
and anything else (the tiny presets' synthetic world) into a plain ``TrainStream``.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from torch.utils.data import Dataset

from common.data.datasets import DataSource, ImageTextPairs, TrainStream, item_seed
from common.data.transforms import ImageLike, ImageTransform
from common.errors import DataError


class RoundRobinSource:
    """``sources`` interleaved: index ``i`` is item ``(i // n) % len(s_j)`` of source
    ``j = i % n``; length ``n * max(len)``, so one pass covers the largest source once and
    repeats the smaller ones. Unlabelled (the sources do not share classes)."""

    classnames: Sequence[str] = ()

    def __init__(self, sources: Sequence[DataSource], names: Sequence[str]) -> None:
        if not sources or len(sources) != len(names):
            raise ValueError("RoundRobinSource needs one name per source, and at least one")
        for source, name in zip(sources, names):
            if len(source) == 0:
                raise DataError(f"training set '{name}' ({source!r}) is empty; prepare it again "
                                f"or drop it from data.train_sets")
        self.sources, self.names = list(sources), list(names)
        self._longest = max(len(s) for s in self.sources)

    def __len__(self) -> int:
        return len(self.sources) * self._longest

    def __repr__(self) -> str:
        return f"RoundRobinSource({'+'.join(self.names)})"

    def locate(self, index: int) -> Tuple[int, int]:
        """(source number, index within it) of ``index``."""
        rank, j = divmod(index, len(self.sources))
        return j, rank % len(self.sources[j])

    def image(self, index: int) -> ImageLike:
        j, i = self.locate(index)
        return self.sources[j].image(i)

    def captions(self, index: int) -> Sequence[str]:
        j, i = self.locate(index)
        return self.sources[j].captions(i)

    def label(self, index: int) -> int:
        return -1


class RoundRobinStream(Dataset):
    """Item ``k`` of an endless stream whose step-``s`` batch (items ``[s*B, (s+1)*B)``,
    ``B = batch_size``, the global batch of ``common.train.fit``) comes from dataset ``s % n``."""

    def __init__(self, datasets: Sequence[Dataset], batch_size: int, seed: int) -> None:
        if batch_size < 1 or not datasets:
            raise ValueError("RoundRobinStream needs datasets and a positive batch size")
        self.batch_size = batch_size
        self.streams: List[TrainStream] = [TrainStream(d, seed=item_seed(seed, j))
                                           for j, d in enumerate(datasets)]

    def locate(self, k: int) -> Tuple[int, int]:
        """(dataset number, item number in that dataset's own stream) of stream item ``k``."""
        step, offset = divmod(k, self.batch_size)
        rounds, j = divmod(step, len(self.streams))
        return j, rounds * self.batch_size + offset

    def __getitem__(self, k: int) -> Any:
        j, item = self.locate(k)
        return self.streams[j][item]


def image_text_stream(source: DataSource, transform: ImageTransform, seed: int,
                      batch_size: int) -> Dataset:
    """The training stream of ``source`` (what ``open_source(cfg, "train")`` returns): a
    :class:`RoundRobinStream` over the parts of a :class:`RoundRobinSource`, else a plain
    :class:`TrainStream` of :class:`ImageTextPairs` (the tiny presets' stream, unchanged)."""
    if isinstance(source, RoundRobinSource):
        return RoundRobinStream([ImageTextPairs(s, transform) for s in source.sources],
                                batch_size, seed)
    return TrainStream(ImageTextPairs(source, transform), seed=seed)
