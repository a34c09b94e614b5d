"""Evaluate an aligned image/text model: zero-shot retrieval and classification (kNN: :mod:`common.knn`).

Chapters call these during training (``fit``'s ``evaluate`` callback) and at the end, and
the ``eval/`` CLIs call them on saved checkpoints, so every number in every CSV comes from
the same code. A model only needs two methods (:class:`ImageTextModel`): ``encode_image``
and ``encode_text``, each returning one embedding per input (normalisation happens in the
metric functions of :mod:`common.retrieval` and :mod:`common.zero_shot`).

Images come out of the loaders as uint8 and become model inputs on the model's device
(:func:`common.data.transforms.to_model_input`). With workers, each evaluation set keeps one
loader whose workers persist (:func:`eval_loader`): an evaluation every ``eval_every`` steps
then pays the worker start-up (a fork and a dataset copy per worker) once per run, not once
per set and evaluation.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Protocol, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from common.data.datasets import RetrievalSet
from common.data.transforms import to_model_input
from common.data.tokenizer import Tokenizer
from common.retrieval import retrieval_recall
from common.zero_shot import zero_shot_accuracy, zero_shot_classifier


class ImageTextModel(Protocol):
    def encode_image(self, images: Tensor) -> Tensor: ...  # B x 3 x H x W -> B x D

    def encode_text(self, text_ids: Tensor, padding_mask: Tensor) -> Tensor: ...  # B x L -> B x D


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class _Borrowed(Dataset):
    """``dataset`` through a weak reference, so that the loader cached for it in
    :data:`_LOADERS` does not keep it (and the loader's workers) alive; forked workers see
    the parent's object, a spawned one gets a pickled copy of the dataset itself."""

    def __init__(self, dataset: Dataset) -> None:
        self._ref = weakref.ref(dataset)

    def __len__(self) -> int:
        return len(self._ref())  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self._ref()[index]  # type: ignore[index]

    def __getstate__(self) -> Dict[str, Any]:
        return {"dataset": self._ref()}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._strong = state["dataset"]
        self._ref = weakref.ref(self._strong)


# dataset -> {(batch_size, num_workers): its persistent loader}; an entry goes with its dataset
_LOADERS: "weakref.WeakKeyDictionary[Dataset, Dict[Tuple[int, int], DataLoader]]" = (
    weakref.WeakKeyDictionary())


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Batches of ``dataset`` in order. With ``num_workers > 0`` the same loader, with
    ``persistent_workers``, every time it is asked for the same dataset and sizes, so repeated
    evaluations reuse its workers (evaluation transforms are deterministic: nothing a worker
    holds changes the batches)."""
    if num_workers == 0:
        return DataLoader(dataset, batch_size=batch_size)
    loaders = _LOADERS.setdefault(dataset, {})
    key = (batch_size, num_workers)
    if key not in loaders:
        loaders[key] = DataLoader(_Borrowed(dataset), batch_size=batch_size,
                                  num_workers=num_workers, persistent_workers=True)
    return loaders[key]


@torch.no_grad()
def embed_images(encode_image: Callable[[Tensor], Tensor], dataset: Dataset, device: torch.device,
                 batch_size: int = 256, num_workers: int = 0) -> tuple[Tensor, Tensor]:
    """(embeddings [N, D] float32 on CPU, labels [N] or -1) of every image of ``dataset``."""
    embs, labels = [], []
    for batch in eval_loader(dataset, batch_size, num_workers):
        embs.append(encode_image(to_model_input(batch["image"].to(device))).float().cpu())
        labels.append(batch.get("label", torch.full((len(batch["image"]),), -1)))
    return torch.cat(embs), torch.cat(labels)


@torch.no_grad()
def embed_texts(encode_text: Callable[[Tensor, Tensor], Tensor], texts: Sequence[str],
                tokenizer: Tokenizer, max_len: int, device: torch.device,
                batch_size: int = 512) -> Tensor:
    """Embeddings [M, D] (float32, CPU) of ``texts``, tokenised as in training, in their order.

    Captions are encoded in order of token length, each batch cut to its own longest
    caption: a batch of mixed lengths pads all of them to nearly ``max_len`` (COCO: most
    compute on padding). The padding mask keeps pads out of every real token's attention,
    so only the batch composition changes, and embeddings agree to float rounding.
    """
    ids, pad = tokenizer.encode_batch(list(texts), max_len)  # M x L
    lengths = (~pad).sum(dim=1)  # M
    order = torch.argsort(lengths, stable=True)  # M, shortest first
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]  # b
        width = int(lengths[rows].max())
        out.append(encode_text(ids[rows, :width].to(device), pad[rows, :width].to(device)).float().cpu())
    by_length = torch.cat(out)  # M x D
    embeddings = torch.empty_like(by_length)
    embeddings[order] = by_length  # back to the order of ``texts``
    return embeddings


def retrieval_metrics(model: ImageTextModel, rset: RetrievalSet, tokenizer: Tokenizer,
                      max_len: int, batch_size: int = 256, num_workers: int = 0) -> Dict[str, float]:
    """Zero-shot image->text and text->image recall@1/5/10 (percent) on a retrieval set."""
    device = _device(model)  # type: ignore[arg-type]
    images, _ = embed_images(model.encode_image, rset, device, batch_size, num_workers)
    texts = embed_texts(model.encode_text, rset.captions, tokenizer, max_len, device, 2 * batch_size)
    return retrieval_recall(images, texts, rset.text_image_ids)


def zero_shot_metrics(model: ImageTextModel, dataset: Dataset, classnames: Sequence[str],
                      templates: Sequence, tokenizer: Tokenizer, max_len: int,
                      batch_size: int = 256, num_workers: int = 0) -> Dict[str, float]:
    """CLIP-style zero-shot classification: ``{"zs_top1", "zs_top5"}`` in percent."""
    device = _device(model)  # type: ignore[arg-type]

    def encode(texts: list) -> Tensor:
        return embed_texts(model.encode_text, texts, tokenizer, max_len, device)

    classifier = zero_shot_classifier(encode, classnames, templates)  # C x D
    images, labels = embed_images(model.encode_image, dataset, device, batch_size, num_workers)
    acc = zero_shot_accuracy(images, labels, classifier, ks=(1, 5))
    return {"zs_top1": acc["top1"], "zs_top5": acc["top5"]}
