"""KD, ITC and cosine-alignment losses against hand-computed values."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.losses import (contrastive_logits, cosine_alignment_loss, gather_features, itc_loss,
                           kd_kl_loss, kd_mse_loss, random_negatives)


def lse(values):
    """log(sum(exp(v))) written out."""
    return math.log(sum(math.exp(v) for v in values))


# ---------------------------------------------------------------- feature / response KD

def test_kd_mse_over_all_steps_and_masked():
    pred = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 1.0], [3.0, 3.0]]])
    assert kd_mse_loss(pred, target).item() == pytest.approx((1 + 1 + 9 + 9) / 4)
    assert kd_mse_loss(pred, target, mask=torch.tensor([[True, False]])).item() == pytest.approx(1.0)
    assert kd_mse_loss(pred, target, mask=torch.tensor([[False, True]])).item() == pytest.approx(9.0)


def test_kd_kl_is_zero_for_equal_logits():
    logits = torch.randn(4, 7)
    assert kd_kl_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_kl_loss(logits, logits + 3.0).item() == pytest.approx(0.0, abs=1e-6)  # shift-invariant


def test_kd_kl_two_classes_by_hand():
    # row 0: teacher p = (3/4, 1/4), student q = (1/2, 1/2); row 1: identical -> KL 0
    teacher = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    kl_row0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_kl_loss(student, teacher).item() == pytest.approx(kl_row0 / 2, rel=1e-6)  # batchmean
    # KL(teacher || student), not the reverse
    kl_reverse = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert kd_kl_loss(student, teacher).item() != pytest.approx(kl_reverse / 2, rel=1e-3)
    # temperature 2 on doubled logits gives the same distributions, times T^2 = 4
    assert kd_kl_loss(2 * student, 2 * teacher, temperature=2.0).item() == pytest.approx(
        4 * kl_row0 / 2, rel=1e-6)


# ---------------------------------------------------------------- ITC

def test_itc_three_pairs_by_hand():
    # images are the unit axes, so S[i, j] = text_j[i]: texts are the columns of S
    # S = [[1, .6, 0], [0, .8, 0], [0, 0, 1]]; inputs are deliberately not normalised
    image = 2.0 * torch.eye(3)
    text = 3.0 * torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    scale = 2.0
    s = [[1.0, 0.6, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 1.0]]
    i2t = sum(lse([scale * s[i][j] for j in range(3)]) - scale * s[i][i] for i in range(3)) / 3
    t2i = sum(lse([scale * s[i][j] for i in range(3)]) - scale * s[j][j] for j in range(3)) / 3
    assert itc_loss(image, text, scale).item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_itc_with_banks_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # bank rows are normalised by the loss too: these are 2x / 3x the unit vectors below
    text_bank = torch.tensor([[-2.0, 0.0], [1.2, 1.6]], requires_grad=True)
    image_bank = torch.tensor([[2.4, 1.8], [0.0, -3.0]], requires_grad=True)
    # image rows: columns [text0, text1, text_bank0, text_bank1]
    i2t = (lse([1, 0, -1, 0.6]) - 1 + lse([0, 1, 0, 0.8]) - 1) / 2
    # text rows: columns [image0, image1, image_bank0, image_bank1]
    t2i = (lse([1, 0, 0.8, 0]) - 1 + lse([0, 1, 0.6, -1]) - 1) / 2
    loss = itc_loss(image, text, 1.0, image_bank=image_bank, text_bank=text_bank)
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_itc_bank_columns_and_no_bank_gradient():
    image = torch.randn(4, 8, requires_grad=True)
    text = torch.randn(4, 8, requires_grad=True)
    image_bank = torch.randn(6, 8, requires_grad=True)
    text_bank = torch.randn(5, 8, requires_grad=True)
    per_image, per_text, labels = contrastive_logits(image, text, 1.0, image_bank, text_bank)
    assert per_image.shape == (4, 4 + 5) and per_text.shape == (4, 4 + 6)
    assert torch.equal(labels, torch.arange(4))
    itc_loss(image, text, 10.0, image_bank, text_bank).backward()
    assert image.grad is not None and text.grad is not None
    assert image_bank.grad is None and text_bank.grad is None


def naive_banked_itc(image, text, scale, image_bank, text_bank, image_keys=None, text_keys=None):
    """The formula written out: concatenate batch and (detached) bank logits, cross-entropy."""
    norm = torch.nn.functional.normalize
    image, text = norm(image, dim=-1), norm(text, dim=-1)
    image_cols = norm(image_keys, dim=-1).detach() if image_keys is not None else image
    text_cols = norm(text_keys, dim=-1).detach() if text_keys is not None else text
    per_image = scale * image @ torch.cat([text_cols, norm(text_bank.detach(), dim=-1)]).T
    per_text = scale * text @ torch.cat([image_cols, norm(image_bank.detach(), dim=-1)]).T
    labels = torch.arange(len(image))
    ce = torch.nn.functional.cross_entropy
    return (ce(per_image, labels) + ce(per_text, labels)) / 2


def _loss_and_grads(loss_fn, image, text, log_scale, *rest):
    leaves = [x.detach().clone().requires_grad_() for x in (image, text, log_scale)]
    loss = loss_fn(leaves[0], leaves[1], leaves[2].exp(), *rest)
    loss.backward()
    return [loss.detach()] + [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("case", ["hand", "random", "keys", "blocks"])
def test_itc_bank_loss_and_gradients_equal_autograd_of_the_naive_formula(case):
    g = torch.Generator().manual_seed(3)
    if case == "hand":
        image, text = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
        image_bank, text_bank = torch.tensor([[2.4, 1.8], [0.0, -3.0]]), torch.tensor([[-2.0, 0.0]])
        log_scale, keys = torch.tensor(0.5), (None, None)
    else:  # a scale near CLIP's cap: large logits exercise the log-sum-exp combination
        batch, bank = (256, (2500, 1100)) if case == "blocks" else (16, (40, 33))  # blocks: 1024 rows
        image, text = torch.randn(batch, 12, generator=g), torch.randn(batch, 12, generator=g)
        image_bank, text_bank = (3 * torch.randn(k, 12, generator=g) for k in bank)
        log_scale = torch.tensor(4.5)
        keys = (torch.randn(batch, 12, generator=g), torch.randn(batch, 12, generator=g)) \
            if case == "keys" else (None, None)
    expected = _loss_and_grads(naive_banked_itc, image, text, log_scale, image_bank, text_bank, *keys)
    got = _loss_and_grads(lambda i, t, s, ib, tb, ik, tk: itc_loss(i, t, s, ib, tb, image_keys=ik, text_keys=tk),
                          image, text, log_scale, image_bank, text_bank, *keys)
    for name, want, have in zip(("loss", "image grad", "text grad", "scale grad"), expected, got):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-6, msg=name)


def test_itc_empty_bank_equals_no_bank():
    image, text = torch.randn(3, 5), torch.randn(3, 5)
    empty = torch.zeros(0, 5)
    assert itc_loss(image, text, 5.0, empty, empty).item() == pytest.approx(
        itc_loss(image, text, 5.0).item())


def test_gather_features_is_identity_without_distributed():
    x = torch.randn(3, 4)
    assert gather_features(x) is x and gather_features(x, with_grad=False) is x


def _itc_worker(rank, world, init_file, image, text, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    b = image.shape[0] // world
    local_image = image[rank * b:(rank + 1) * b].clone().requires_grad_()
    local_text = text[rank * b:(rank + 1) * b].clone().requires_grad_()
    loss = itc_loss(local_image, local_text, 3.0)
    loss.backward()
    local_only = itc_loss(local_image, local_text, 3.0, gather=False)
    leaf = local_image.detach().clone().requires_grad_()
    no_grad_gather = gather_features(leaf, with_grad=False)
    no_grad_gather.sum().backward()  # only the local slice carries a gradient
    torch.save({"loss": loss.detach(), "image_grad": local_image.grad, "text_grad": local_text.grad,
                "local_only": local_only.detach(), "no_grad_gather": no_grad_gather.detach(),
                "no_grad_gather_grad": leaf.grad}, f"{out_dir}/rank{rank}.pt")
    # both ranks must be done with every collective before either tears gloo down: a rank that
    # exits while its peer still holds the connection aborts in gloo's destructor (SIGABRT)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # two real gloo processes: ~3 s on an idle 2-core machine, mostly importing torch
def test_itc_gathers_the_global_batch_across_two_processes(tmp_path):
    """Two gloo ranks with half the batch each reproduce the one-process loss and gradients."""
    world, batch = 2, 6
    image, text = torch.randn(batch, 8), torch.randn(batch, 8)
    mp.spawn(_itc_worker, args=(world, str(tmp_path / "store"), image, text, str(tmp_path)),
             nprocs=world)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    full_image, full_text = image.clone().requires_grad_(), text.clone().requires_grad_()
    full = itc_loss(full_image, full_text, 3.0)
    full.backward()
    # every rank contrasts its rows with the global batch: the mean of the rank losses is the
    # global loss, and the summed gradient each rank receives is world x the global gradient
    assert torch.stack([r["loss"] for r in ranks]).mean().item() == pytest.approx(full.item(), rel=1e-5)
    assert torch.allclose(torch.cat([r["image_grad"] for r in ranks]) / world, full_image.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r["text_grad"] for r in ranks]) / world, full_text.grad, atol=1e-6)
    for r, out in enumerate(ranks):
        half = slice(r * batch // world, (r + 1) * batch // world)
        assert out["local_only"].item() == pytest.approx(itc_loss(image[half], text[half], 3.0).item(),
                                                         rel=1e-5)
        assert torch.equal(out["no_grad_gather"], image)
        assert torch.equal(out["no_grad_gather_grad"], torch.ones(batch // world, 8))


# ---------------------------------------------------------------- cosine alignment

def test_random_negatives_never_pick_the_positive_and_cover_the_rest():
    picks = torch.stack([random_negatives(4, torch.Generator().manual_seed(s)) for s in range(200)])
    assert not (picks == torch.arange(4)).any()
    for i in range(4):
        assert set(picks[:, i].tolist()) == set(range(4)) - {i}
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(random_negatives(9, g1), random_negatives(9, g2))
    with pytest.raises(ValueError):
        random_negatives(1)


def test_cosine_alignment_two_pairs_by_hand():
    # with two pairs the negative of row 0 is text 1 and of row 1 is text 0, whatever the seed
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    r = 1 / math.sqrt(2)
    positives = [1 - r, 1 - (-1)]  # 1 - cos(i0, t0), 1 - cos(i1, t1)
    negatives = [0.0, r]  # cos(i0, t1) = 0, cos(i1, t0) = 1/sqrt(2)
    for margin in (0.0, 0.5, -0.5):
        neg = [max(0.0, c - margin) for c in negatives]
        expected = 0.5 * (sum(positives) / 2 + sum(neg) / 2)
        got = cosine_alignment_loss(image, text, margin=margin, generator=torch.Generator().manual_seed(0))
        assert got.item() == pytest.approx(expected, rel=1e-6), margin
    assert cosine_alignment_loss(image, text).item() == pytest.approx(0.75, rel=1e-6)


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_cosine_alignment_with_a_fixed_generator_by_hand():
    image = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    text = [[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [-1.0, 0.0, 1.0]]
    negatives = random_negatives(3, torch.Generator().manual_seed(3)).tolist()
    margin = 0.1
    pos = [1 - cos(image[i], text[i]) for i in range(3)]
    neg = [max(0.0, cos(image[i], text[negatives[i]]) - margin) for i in range(3)]
    expected = 0.5 * (sum(pos) / 3 + sum(neg) / 3)
    got = cosine_alignment_loss(torch.tensor(image), torch.tensor(text), margin,
                                torch.Generator().manual_seed(3))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the thesis' definition: half the sum of two CosineEmbeddingLoss terms (targets +1 / -1)
    cel = torch.nn.CosineEmbeddingLoss(margin=margin)
    i, t = torch.tensor(image), torch.tensor(text)
    thesis = 0.5 * (cel(i, t, torch.ones(3)) + cel(i, t[torch.tensor(negatives)], -torch.ones(3)))
    assert got.item() == pytest.approx(thesis.item(), rel=1e-5)


def test_cosine_alignment_trains_both_sides():
    image = torch.randn(5, 4, requires_grad=True)
    text = torch.randn(5, 4, requires_grad=True)
    cosine_alignment_loss(image, text).backward()
    assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
