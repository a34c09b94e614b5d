"""Recall@k and kNN accuracy against hand-built cases, a brute-force reference and ties."""
import math

import pytest
import torch

from common.errors import DataError
from common.retrieval import (embedding_spread, image_text_ranks, knn_accuracy, knn_topk_accuracies, matching_ranks,
                              percent_hits, retrieval_recall)


def at(degrees, norm=1.0):
    """A 2-d vector at an angle: cosine similarity is then cos(angle difference)."""
    return [norm * math.cos(math.radians(degrees)), norm * math.sin(math.radians(degrees))]


# images at 0, 90, 180 degrees; two captions each (norms vary: inputs are not normalised)
IMAGES = torch.tensor([at(0, 2.0), at(90, 0.5), at(180, 3.0)])
CAPTIONS = torch.tensor([at(15), at(100, 4.0), at(20), at(95, 0.3), at(350), at(5, 7.0)])
CAPTION_IMAGE = torch.tensor([0, 0, 1, 1, 2, 2])


def test_hand_built_three_images_six_captions():
    # image -> text, angular distance to each caption (* = own caption):
    #   image 0:  c0 15*  c1 100*  c2 20  c3 95  c4 10  c5 5    -> c5, c4 ahead of c0: rank 2
    #   image 1:  c0 75   c1 10    c2 70* c3 5*  c4 100 c5 85   -> c3 first: rank 0
    #   image 2:  c0 165  c1 80    c2 160 c3 85  c4 170* c5 175* -> all 4 others ahead: rank 4
    images = torch.arange(3)
    assert matching_ranks(IMAGES, images, CAPTIONS, CAPTION_IMAGE).tolist() == [2, 0, 4]
    # text -> image, distance to images 0 / 90 / 180:
    #   c0 15/75/165 -> 0   c1 100/10/80 -> 2   c2 20/70/160 -> 1
    #   c3 95/5/85   -> 0   c4 10/100/170 -> 2  c5 5/85/175 -> 2
    assert matching_ranks(CAPTIONS, CAPTION_IMAGE, IMAGES, images).tolist() == [0, 2, 1, 0, 2, 2]
    recall = retrieval_recall(IMAGES, CAPTIONS, CAPTION_IMAGE, ks=(1, 2, 3, 5))
    expected = {"i2t_r1": 100 / 3, "i2t_r2": 100 / 3, "i2t_r3": 200 / 3, "i2t_r5": 100.0,
                "t2i_r1": 100 / 3, "t2i_r2": 50.0, "t2i_r3": 100.0, "t2i_r5": 100.0}
    assert recall == pytest.approx(expected)
    assert list(retrieval_recall(IMAGES, CAPTIONS, CAPTION_IMAGE)) == [
        "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]


def brute_force_recall(image, text, ids, ks):
    """Reference with the full score matrix and top-k (fine for random data: no ties)."""
    image = torch.nn.functional.normalize(image, dim=-1)
    text = torch.nn.functional.normalize(text, dim=-1)
    scores = image @ text.T  # N x M
    out = {}
    for k in ks:
        top_texts = scores.topk(k, dim=1).indices  # N x k
        out[f"i2t_r{k}"] = 100 * (ids[top_texts] == torch.arange(len(image))[:, None]).any(1).double().mean().item()
    for k in ks:
        top_images = scores.T.topk(k, dim=1).indices  # M x k
        out[f"t2i_r{k}"] = 100 * (top_images == ids[:, None]).any(1).double().mean().item()
    return out


def test_chunked_equals_unchunked_and_brute_force():
    n, per_image, dim = 40, 5, 16
    image = torch.randn(n, dim)
    ids = torch.arange(n).repeat_interleave(per_image)[torch.randperm(n * per_image)]
    text = torch.randn(n * per_image, dim) + 0.7 * image[ids]  # related, but far from perfect
    ks = (1, 5, 10)
    whole = retrieval_recall(image, text, ids, ks, chunk_size=10_000)
    assert 0 < whole["i2t_r1"] < 100 and 0 < whole["t2i_r1"] < 100
    for chunk in (1, 7, 64):
        assert retrieval_recall(image, text, ids, ks, chunk_size=chunk) == whole
    assert whole == pytest.approx(brute_force_recall(image, text, ids, ks))


def test_duplicate_captions_tie_against_the_query():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    captions = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])  # c0 (image 0) == c1 (image 1)
    ids = torch.tensor([0, 1, 1])
    recall = retrieval_recall(images, captions, ids, ks=(1, 2))
    # image 0: its caption c0 ties with c1 -> rank 1; image 1: c2 is exact -> rank 0
    # c0 and c1 score both images equally -> rank 1; c2 -> rank 0
    assert recall == pytest.approx({"i2t_r1": 50.0, "i2t_r2": 100.0, "t2i_r1": 100 / 3, "t2i_r2": 100.0})
    # the result does not depend on caption order (top-k tie order would)
    perm = torch.tensor([2, 1, 0])
    assert retrieval_recall(images, captions[perm], ids[perm], ks=(1, 2)) == recall


def test_collapsed_embeddings_do_not_score():
    image, text = torch.ones(4, 3), torch.ones(8, 3)
    ids = torch.arange(4).repeat_interleave(2)
    recall = retrieval_recall(image, text, ids, ks=(1,))
    assert recall == {"i2t_r1": 0.0, "t2i_r1": 0.0}


def test_rejects_inconsistent_caption_ids_and_nan():
    image, text = torch.randn(3, 4), torch.randn(4, 4)
    with pytest.raises(DataError):
        retrieval_recall(image, text, torch.tensor([0, 1, 2]))  # one id per caption
    with pytest.raises(DataError):
        retrieval_recall(image, text, torch.tensor([0, 1, 2, 3]))  # no image 3
    with pytest.raises(DataError):
        retrieval_recall(image, text, torch.tensor([0, 0, 1, 1]))  # image 2 has no caption
    text[0, 0] = float("nan")
    with pytest.raises(ValueError):
        retrieval_recall(image, text, torch.tensor([0, 1, 2, 2]))


# bank at 0 (A), 10 (B), 20 (B), 90 (A), 180 (C) degrees
BANK = torch.tensor([at(0), at(10, 2.0), at(20), at(90, 0.1), at(180)])
BANK_LABELS = torch.tensor([0, 1, 1, 0, 2])


def test_embedding_spread_hand_case():
    # (1, 0), (0, 1), (1, 1): cosines 0, 1/sqrt2, 1/sqrt2 -> mean sqrt2/3; squared norms 1, 1, 2
    # (mean 4/3), mean (2/3, 2/3): deviations 1/9+4/9, 4/9+1/9, 1/9+1/9 -> mean 4/9; 4/9 / 4/3 = 1/3
    spread = embedding_spread(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert spread["mean_cos"] == pytest.approx(math.sqrt(2) / 3)
    assert spread["var_frac"] == pytest.approx(1 / 3)
    collapsed = embedding_spread(torch.tensor([[2.0, 1.0]] * 4))  # one vector for every item
    assert collapsed["mean_cos"] == pytest.approx(1.0) and collapsed["var_frac"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least 2"):
        embedding_spread(torch.ones(1, 3))


def test_knn_hand_case():
    queries = torch.tensor([at(12), at(85), at(170), at(200)])
    labels = torch.tensor([0, 0, 1, 1])
    # q0 (A) at 12: 10B, 20B, then 0A  -> rank 2
    # q1 (A) at 85: 90A first           -> rank 0
    # q2 (B) at 170: 180C, 90A, then 20B -> rank 2
    # q3 (B) at 200: 180C, 90A, 0A, then 10B -> rank 3
    assert matching_ranks(queries, labels, BANK, BANK_LABELS).tolist() == [2, 0, 2, 3]
    assert knn_topk_accuracies(queries, labels, BANK, BANK_LABELS) == pytest.approx(
        {"top1": 25.0, "top3": 75.0})
    assert knn_accuracy(queries, labels, BANK, BANK_LABELS, k=5) == pytest.approx(100.0)
    assert knn_accuracy(queries, labels, BANK, BANK_LABELS, k=3, chunk_size=1) == pytest.approx(75.0)


def test_knn_query_label_absent_from_bank_is_always_wrong():
    queries, labels = torch.tensor([at(0)]), torch.tensor([7])
    assert knn_accuracy(queries, labels, BANK, BANK_LABELS, k=100) == 0.0


def reference_ranks(queries, query_ids, keys, key_ids, chunk_size=256):
    """``matching_ranks`` as it was before retrieval scored each chunk once for both
    directions (one full pass per direction), kept here as the slow reference."""
    dtype = torch.promote_types(torch.promote_types(queries.dtype, keys.dtype), torch.float32)
    q = torch.nn.functional.normalize(queries.to(dtype), dim=-1)
    k = torch.nn.functional.normalize(keys.to(dtype), dim=-1)
    has_match = torch.isin(query_ids, key_ids)
    ranks = []
    for start in range(0, q.shape[0], chunk_size):
        scores = q[start:start + chunk_size] @ k.T
        match = query_ids[start:start + chunk_size, None] == key_ids[None, :]
        best = torch.where(match, scores, float("-inf")).amax(dim=1, keepdim=True)
        scores.masked_fill_(match, float("-inf"))
        ranks.append((scores >= best).sum(dim=1))
    return torch.cat(ranks).masked_fill_(~has_match, torch.iinfo(torch.long).max)


def random_case(seed, n, dim, noise, duplicate=0.0, dtype=torch.float32):
    """n images with 1-3 captions each in shuffled order; ``duplicate`` of the images and of
    the captions are exact copies of another row (exact score ties)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, dim, generator=g, dtype=dtype)
    ids = torch.arange(n).repeat_interleave(torch.randint(1, 4, (n,), generator=g))
    ids = ids[torch.randperm(len(ids), generator=g)]
    text = noise * torch.randn(len(ids), dim, generator=g, dtype=dtype) + image[ids]
    for rows in (image, text):
        copies = torch.rand(len(rows), generator=g) < duplicate
        sources = torch.randint(0, len(rows), (len(rows),), generator=g)
        rows[copies] = rows[sources[copies]]
    return image, text, ids


@pytest.mark.parametrize("seed, n, dim, noise, duplicate", [
    (0, 50, 16, 1.0, 0.0), (1, 97, 8, 2.0, 0.0), (2, 60, 32, 3.0, 0.0),
    (3, 50, 16, 1.0, 0.3), (4, 40, 4, 0.5, 0.5), (5, 30, 2, 0.2, 0.8)])
def test_one_pass_ranks_equal_two_pass_reference(seed, n, dim, noise, duplicate):
    image, text, ids = random_case(seed, n, dim, noise, duplicate)
    images = torch.arange(n)
    expected_i2t = reference_ranks(image, images, text, ids)
    expected_t2i = reference_ranks(text, ids, image, images)
    for chunk in (1, 7, 64, 10_000):
        i2t, t2i = image_text_ranks(image, text, ids, chunk_size=chunk)
        assert torch.equal(i2t, expected_i2t) and torch.equal(t2i, expected_t2i), chunk
    ks = (1, 5, 10)
    expected = {f"i2t_r{k}": percent_hits(expected_i2t, k) for k in ks}
    expected.update({f"t2i_r{k}": percent_hits(expected_t2i, k) for k in ks})
    assert retrieval_recall(image, text, ids, ks, chunk_size=13) == expected


def test_one_pass_ranks_with_duplicated_images_and_captions():
    # every image twice and every caption twice: each score has an exact twin, and the tie
    # rule must charge each twin
    image, text, ids = random_case(6, 20, 8, 1.0)
    image = torch.cat([image, image])  # image i + 20 == image i
    text, ids = torch.cat([text, text]), torch.cat([ids, ids + 20])  # copies belong to the copies
    images = torch.arange(40)
    for chunk in (1, 16):  # chunks of 1: the band outgrows its budget (matching_ranks takes over)
        i2t, t2i = image_text_ranks(image, text, ids, chunk_size=chunk)
        assert torch.equal(i2t, reference_ranks(image, images, text, ids))
        assert torch.equal(t2i, reference_ranks(text, ids, image, images))
    assert (t2i >= 1).all()  # the twin of a caption's image always ties with it


def test_one_pass_ranks_float64_and_collapsed():
    image, text, ids = random_case(7, 30, 16, 1.0, dtype=torch.float64)
    images = torch.arange(30)
    i2t, t2i = image_text_ranks(image, text, ids, chunk_size=8)
    assert torch.equal(i2t, reference_ranks(image, images, text, ids))
    assert torch.equal(t2i, reference_ranks(text, ids, image, images))
    for chunk in (1, 3, 256):  # every score ties: the band overflows at chunks of 1 and 3
        i2t, t2i = image_text_ranks(torch.ones(4, 3), torch.ones(8, 3), torch.arange(4).repeat(2), chunk)
        assert i2t.tolist() == [6] * 4 and t2i.tolist() == [3] * 8, chunk
