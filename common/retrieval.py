"""Retrieval metrics: image-text recall@k (COCO 5k, Flickr30K 1k) and kNN accuracy (CIFAR).

All metrics reduce to one question per query: how many *non-matching* keys score at least as
high (cosine similarity) as the query's best *matching* key? A query is a hit at k when
that number is below k. :func:`matching_ranks` answers it chunk by chunk, so a 5k x 25k
COCO evaluation never holds more than ``chunk_size`` rows of scores (about
``chunk_size * keys * 10`` bytes with the temporaries: 64 MB for 256 x 25k), and no sort or
top-k is needed. :func:`retrieval_recall` gets both directions from one such pass
(:func:`image_text_ranks`), with the same ranks.

Ties are counted *against* the query: a non-matching key with exactly the same score as the
best matching key ranks ahead of it. The result is then independent of key order and of
chunking, and degenerate embeddings cannot score well: if all embeddings collapse to one
vector, every score ties and R@1 is 0 (top-k implementations would report whatever their
tie order happens to favour). A caption duplicated verbatim for two images therefore costs
both images one rank in image->text retrieval.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

from common.errors import DataError

NO_MATCH = torch.iinfo(torch.long).max  # rank of a query without any matching key: a miss at every k


def _unit_rows(name: str, x: Tensor, dtype: torch.dtype) -> Tensor:
    """L2-normalise the rows of ``x`` (as ``F.normalize``); a NaN or inf anywhere shows in the norms."""
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] tensor, got shape {list(x.shape)}")
    x = x.to(dtype)
    norms = x.norm(dim=-1, keepdim=True)  # N x 1
    if not torch.isfinite(norms).all():
        raise ValueError(f"{name} contain NaN or inf: the model diverged or the input is corrupt")
    return x / norms.clamp_min(1e-12)  # N x D


def matching_ranks(queries: Tensor, query_ids: Tensor, keys: Tensor, key_ids: Tensor,
                   chunk_size: int = 256) -> Tensor:
    """Per query, the number of non-matching keys with cosine similarity >= its best match.

    ``queries [Q, D]`` match the ``keys [K, D]`` whose id equals theirs (``query_ids [Q]``,
    ``key_ids [K]``: caption->image index, class labels, ...). Inputs need not be
    normalised. Returns a long tensor ``[Q]``; a query is a hit at k iff its rank is < k.
    Queries without any matching key get :data:`NO_MATCH`.
    """
    if query_ids.shape != (queries.shape[0],) or key_ids.shape != (keys.shape[0],):
        raise ValueError(f"need one id per row: {list(query_ids.shape)} ids for {queries.shape[0]} "
                         f"queries, {list(key_ids.shape)} ids for {keys.shape[0]} keys")
    dtype = torch.promote_types(torch.promote_types(queries.dtype, keys.dtype), torch.float32)
    q, k = _unit_rows("queries", queries, dtype), _unit_rows("keys", keys, dtype)  # >= fp32: fp16 ties
    query_ids, key_ids = query_ids.to(q.device), key_ids.to(q.device)
    has_match = torch.isin(query_ids, key_ids)  # Q
    ranks = []
    for start in range(0, q.shape[0], chunk_size):
        scores = q[start:start + chunk_size] @ k.T  # c x K
        match = query_ids[start:start + chunk_size, None] == key_ids[None, :]  # c x K
        best = torch.where(match, scores, float("-inf")).amax(dim=1, keepdim=True)  # c x 1
        scores.masked_fill_(match, float("-inf"))  # matching keys never rank ahead
        ranks.append((scores >= best).sum(dim=1, dtype=torch.int32))  # c (int32 sum: 2x faster)
    return torch.cat(ranks).long().masked_fill_(~has_match, NO_MATCH)  # Q


def percent_hits(ranks: Tensor, k: int) -> float:
    """Percentage of queries whose rank (from :func:`matching_ranks`) is below k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return 100.0 * (ranks < k).double().mean().item()


def _caption_table(ids: Tensor, n_images: int) -> Tensor:
    """``[N, C]`` caption indices per image (C = most captions of one image), padded by
    repeating the image's first caption: a max over a row, or writing to its positions, then
    sees exactly the image's own captions. Every image has at least one (checked by the caller)."""
    order = torch.argsort(ids, stable=True)  # M, captions grouped by image
    counts = torch.bincount(ids, minlength=n_images)  # N
    first = torch.cumsum(counts, 0) - counts  # N, offset of each image's group in order
    slot = torch.arange(int(counts.max()), device=ids.device)  # C
    within = torch.where(slot[None, :] < counts[:, None], slot[None, :], 0)  # N x C, padding -> 0
    return order[first[:, None] + within]  # N x C


def _count_at_least(scores: Tensor, threshold: Tensor, dim: int, buffer: Tensor) -> Tensor:
    """``(scores >= threshold).sum(dim)`` as float, through ``buffer``: 2-4x faster on CPU than
    summing a bool tensor. Exact: ``x - y >= 0`` iff ``x >= y`` in IEEE arithmetic (subnormals
    keep the difference of unequal numbers non-zero), and counts stay far below 2**24."""
    return torch.sub(scores, threshold, out=buffer).ge_(0).sum(dim)


def image_text_ranks(image_emb: Tensor, text_emb: Tensor, text_image_ids: Tensor,
                     chunk_size: int = 256) -> Tuple[Tensor, Tensor]:
    """Both directions' :func:`matching_ranks` (``(i2t [N], t2i [M])``) from one pass over the scores.

    Image chunks are scored against all captions once (``chunk_size x M`` scores at a time).
    Image->text ranks come out of that chunk as :func:`matching_ranks` would compute them
    (the same product, the same chunks). Text->image needs, per caption, how many other
    images score at least its own image's score, which only the caption's own image chunk
    holds; instead, each caption counts the images of every chunk that score at or above
    ``lo`` and at or above ``hi``, a band around its positive score (computed beforehand in
    float64) wider than three times the rounding error bound of a ``D``-term dot product of
    unit vectors (``D * eps / 2``; one image's score in this orientation, and that image's
    and the positive score in :func:`matching_ranks`'s). When no image falls inside the
    band, every image is on the same side of the positive score in either orientation, so
    the count is exact and equals :func:`matching_ranks`'s. Captions with an image inside
    the band (exact ties such as duplicated images, or differences within rounding) are
    ranked again by :func:`matching_ranks` itself on just those captions, so ties follow
    the documented rule. That second pass is what the band costs: 2% of the captions of a
    synthetic 5k x 25k case at D=128, 20% at D=768 (a wider band, as many near the positive).
    """
    n_images = image_emb.shape[0]
    dtype = torch.promote_types(torch.promote_types(image_emb.dtype, text_emb.dtype), torch.float32)
    image = _unit_rows("image embeddings", image_emb, dtype)  # N x D
    text = _unit_rows("text embeddings", text_emb, dtype)  # M x D
    ids = text_image_ids.to(image.device)  # M
    captions = _caption_table(ids, n_images)  # N x C
    positive = torch.cat([(text[s:s + chunk_size].double() * image[ids[s:s + chunk_size]].double()).sum(-1)
                          for s in range(0, text.shape[0], chunk_size)])  # M, float64
    unit = torch.finfo(dtype).eps / 2  # unit roundoff; reduced-precision matmuls round far more
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        unit = 2.0 ** -9  # bfloat16 ("medium"); covers TF32 ("high") as well
    margin = (3 * image.shape[1] + 2) * unit * 1.01  # > 3 score error bounds + rounding lo, hi
    lo, hi = (positive - margin).to(dtype), (positive + margin).to(dtype)  # M
    i2t, at_lo, at_hi = [], torch.zeros_like(lo), torch.zeros_like(hi)  # counts as floats: exact
    for start in range(0, n_images, chunk_size):
        scores = image[start:start + chunk_size] @ text.T  # c x M
        buffer = torch.empty_like(scores)  # c x M
        own = captions[start:start + chunk_size]  # c x C
        best = scores.gather(1, own).amax(dim=1, keepdim=True)  # c x 1
        scores.scatter_(1, own, float("-inf"))  # matching captions never rank ahead
        i2t.append(_count_at_least(scores, best, 1, buffer))  # c
        at_lo += _count_at_least(scores, lo, 0, buffer)  # M
        at_hi += _count_at_least(scores, hi, 0, buffer)  # M
    t2i = at_hi.long()  # M
    unsure = (at_lo != at_hi).nonzero().flatten()  # an image inside the band
    if len(unsure):
        images = torch.arange(n_images, device=ids.device)
        t2i[unsure] = matching_ranks(text_emb[unsure], ids[unsure], image_emb, images, chunk_size)
    return torch.cat(i2t).long(), t2i


def retrieval_recall(image_emb: Tensor, text_emb: Tensor, text_image_ids: Tensor,
                     ks: Sequence[int] = (1, 5, 10), chunk_size: int = 256) -> Dict[str, float]:
    """Zero-shot image->text and text->image recall@k in percent, as reported for COCO/Flickr.

    ``image_emb [N, D]``, ``text_emb [M, D]``; ``text_image_ids[m]`` is the index of caption
    m's image (COCO: 5 captions per image). Image->text: an image is a hit at k if any of
    its captions is among its k most similar texts (rank of its best caption < k).
    Text->image: a caption is a hit if its image is among its k most similar images. This is
    the protocol of CLIP/ALBEF/VLMo. Ties count against the query (module docstring); both
    directions come from one pass over the scores (:func:`image_text_ranks`).
    Returns ``{"i2t_r1": .., "i2t_r5": .., "i2t_r10": .., "t2i_r1": .., ...}``.
    """
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    ids = torch.as_tensor(text_image_ids, device=image_emb.device).long()
    if ids.shape != (n_texts,):
        raise DataError(f"text_image_ids has shape {list(ids.shape)} but there are {n_texts} "
                        f"captions: give one image index per caption")
    if n_texts and (ids.min() < 0 or ids.max() >= n_images):
        raise DataError(f"text_image_ids must lie in [0, {n_images}) (one per image), "
                        f"got values in [{int(ids.min())}, {int(ids.max())}]")
    without_caption = (torch.bincount(ids, minlength=n_images) == 0).nonzero().flatten()
    if len(without_caption):
        raise DataError(f"{len(without_caption)} images have no caption (first: index "
                        f"{int(without_caption[0])}); drop them or fix the caption file")
    i2t, t2i = image_text_ranks(image_emb, text_emb, ids, chunk_size)  # N, M
    recall = {f"i2t_r{k}": percent_hits(i2t, k) for k in ks}
    recall.update({f"t2i_r{k}": percent_hits(t2i, k) for k in ks})
    return recall


def mean_recall(recall: Dict[str, float]) -> Dict[str, float]:
    """Mean of R@1, R@5 and R@10 per direction (the thesis's Table 8 "average recall"):
    ``{"i2t_mean_recall": .., "t2i_mean_recall": ..}`` from :func:`retrieval_recall`'s dict."""
    return {f"{d}_mean_recall": sum(recall[f"{d}_r{k}"] for k in (1, 5, 10)) / 3 for d in ("i2t", "t2i")}


def pair_cosines(image_emb: Tensor, text_emb: Tensor, text_image_ids: Tensor) -> Dict[str, float]:
    """Mean cosine similarity of matching and of non-matching (image, caption) pairs.

    A diagnostic of alignment that recall hides: two spaces can rank well while both means
    are high (a shared offset), or rank badly with a positive mean far above the negative
    one. ``pos`` averages ``cos(text_m, image_{ids[m]})`` over the M captions; ``neg``
    averages ``cos(text_m, image_n)`` over the ``M * (N - 1)`` pairs with ``n != ids[m]``,
    computed from column sums (O((M + N) D), no M x N matrix).
    """
    image = _unit_rows("image embeddings", image_emb, torch.float64)  # N x D
    text = _unit_rows("text embeddings", text_emb, torch.float64)  # M x D
    ids = torch.as_tensor(text_image_ids, device=image.device).long()  # M
    positive = (text * image[ids]).sum(-1)  # M
    total = text.sum(0) @ image.sum(0)  # sum of all M x N cosines
    n_neg = text.shape[0] * (image.shape[0] - 1)
    return {"pos": positive.mean().item(), "neg": ((total - positive.sum()) / max(1, n_neg)).item()}


def knn_topk_accuracies(query_emb: Tensor, query_labels: Tensor, bank_emb: Tensor,
                        bank_labels: Tensor, ks: Sequence[int] = (1, 3),
                        chunk_size: int = 256) -> Dict[str, float]:
    """kNN top-k accuracies ``{"top1": .., "top3": ..}`` in percent, from one pass over the bank.

    Thesis draft 002 (listing 1): a query is correct at k if any of its k most
    cosine-similar bank items has its label. Chapter 1 validates on CIFAR with the train
    split as bank and the test split as queries (and the reverse), reporting top-1/top-3.
    """
    ranks = matching_ranks(query_emb, torch.as_tensor(query_labels), bank_emb,
                           torch.as_tensor(bank_labels), chunk_size)
    return {f"top{k}": percent_hits(ranks, k) for k in ks}


def knn_accuracy(query_emb: Tensor, query_labels: Tensor, bank_emb: Tensor, bank_labels: Tensor,
                 k: int, chunk_size: int = 256) -> float:
    """kNN top-k accuracy in percent (see :func:`knn_topk_accuracies`)."""
    return knn_topk_accuracies(query_emb, query_labels, bank_emb, bank_labels, (k,),
                               chunk_size)[f"top{k}"]
