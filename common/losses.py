"""Distillation and alignment losses shared by the chapters.

- :func:`kd_mse_loss`: feature regression of (layer-averaged) teacher states (chapters 1, 3, 5).
- :func:`kd_kl_loss`: response distillation from a classifier teacher (chapter 2, SHRe).
- :func:`itc_loss`: CLIP / VLMo image-text contrastive loss, optionally over a memory bank
  and across processes (chapters 2-4).
- :func:`cosine_alignment_loss`: SHRe's pairwise cosine alignment (chapter 4, Sx3HRe_cos).
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def kd_mse_loss(pred: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Mean squared error between student predictions and teacher targets ``[B, T, D]``.

    Thesis draft 003, eq. (6): the error is averaged over all time steps *including* CLS
    and over D. ``mask`` (``pred.shape[:-1]``, True = the step counts, e.g. ``~padding_mask``)
    restricts the mean to the selected steps: every selected step weighs the same, so a
    long caption counts more than a short one (as data2vec's token-level mean). The target
    is not detached here: compute it under ``torch.no_grad()``.
    """
    if mask is None:
        return F.mse_loss(pred, target)
    return F.mse_loss(pred[mask], target[mask])  # (selected steps) x D


def kd_kl_loss(student_logits: Tensor, teacher_logits: Tensor,
               temperature: float = 1.0) -> Tensor:
    """``KL(teacher || student)`` of the softened class distributions, averaged over the batch.

    Hinton et al., "Distilling the knowledge in a neural network" (2015); chapter 2 distils
    the ResNet-50's ImageNet distribution into both the image and the text student this way.
    Logits are ``[B, C]``; both sides go through ``log_softmax(logits / temperature)`` and
    the KL is summed over classes and divided by B (PyTorch's ``batchmean``, the true KL;
    ``mean`` would also divide by C). The loss is multiplied by ``temperature**2`` (Hinton,
    sec. 2) so gradient magnitudes do not shrink with the temperature; at the default 1 this
    is the plain KL.
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # B x C
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # B x C
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature ** 2


def _rank_and_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(x: Tensor, with_grad: bool = True) -> Tensor:
    """Concatenate ``x`` (``[B, D]``) from all processes in rank order -> ``[world * B, D]``.

    As open_clip's ``gather_features``: with ``with_grad`` the gather is differentiable
    (``torch.distributed.nn.functional.all_gather``; its backward sums the gradients that
    every rank's loss sends to this rank's features), so negatives from other GPUs also train
    this GPU's encoder. Without it, other ranks' rows are constants and only the local slice
    keeps its gradient. Every rank must pass the same B. Returns ``x`` unchanged when
    torch.distributed is not initialised or has one process.
    """
    rank, world = _rank_and_world()
    if world == 1:
        return x
    if with_grad:
        from torch.distributed.nn.functional import all_gather  # differentiable all_gather
        with warnings.catch_warnings():  # torch 2.15 marks it deprecated in favour of a private
            warnings.simplefilter("ignore", FutureWarning)  # module; the test catches removal
            return torch.cat(all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def _batch_logits(image: Tensor, text: Tensor, logit_scale: Union[Tensor, float], gather: bool,
                  image_keys: Optional[Tensor], text_keys: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """The batch part of :func:`contrastive_logits` for unit ``image``/``text`` rows ``[B, D]``:
    ``(logits_per_image [B, N], logits_per_text [B, N], labels [B])``, N = world * B."""
    rank = _rank_and_world()[0] if gather else 0

    def columns(queries: Tensor, keys: Optional[Tensor]) -> Tensor:  # N x D, N = world * B
        if keys is not None:
            keys = F.normalize(keys.detach().to(queries.dtype), dim=-1)
            return gather_features(keys, with_grad=False) if gather else keys
        return gather_features(queries) if gather else queries

    all_image, all_text = columns(image, image_keys), columns(text, text_keys)
    logits_per_image = logit_scale * image @ all_text.T  # B x N
    logits_per_text = logit_scale * text @ all_image.T  # B x N
    labels = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]  # B
    return logits_per_image, logits_per_text, labels


def _bank_rows(bank: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    """Detached bank rows ``[K, D]`` in ``like``'s dtype; None when absent or empty."""
    if bank is None or bank.shape[0] == 0:
        return None
    return bank.detach().to(like.dtype)


def _unit_bank(bank: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    """:func:`_bank_rows`, L2-normalised."""
    rows = _bank_rows(bank, like)
    return None if rows is None else F.normalize(rows, dim=-1)


def contrastive_logits(image_emb: Tensor, text_emb: Tensor, logit_scale: Union[Tensor, float],
                       image_bank: Optional[Tensor] = None, text_bank: Optional[Tensor] = None,
                       gather: bool = True, image_keys: Optional[Tensor] = None,
                       text_keys: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Logits and labels of the image->text and text->image classification problems.

    Rows are the local batch (``B``); columns are the batch of all ranks (``world * B``,
    gathered with gradients when ``gather`` and torch.distributed runs more than one process)
    followed by the detached memory-bank entries of the other modality (``K``). The label of
    local row i is its partner's column, ``rank * B + i`` (open_clip's ``local_loss``).
    With ``image_keys`` / ``text_keys`` (``[B, D]``, a momentum encoder's embeddings of the
    same batch, MoCo / ALBEF) the batch columns are those keys instead, gathered without
    gradient: only the rows (queries) are trained. Returns ``(logits_per_image
    [B, world*B + K_text], logits_per_text [B, world*B + K_image], labels [B])``.
    :func:`itc_loss` computes the same loss without concatenating the bank columns.
    """
    image = F.normalize(image_emb, dim=-1)  # B x D
    text = F.normalize(text_emb, dim=-1)  # B x D
    logits_per_image, logits_per_text, labels = _batch_logits(
        image, text, logit_scale, gather, image_keys, text_keys)
    text_rows, image_rows = _unit_bank(text_bank, text), _unit_bank(image_bank, image)
    if text_rows is not None:  # bank rows are negatives only: no gradient flows into them
        logits_per_image = torch.cat([logits_per_image, logit_scale * image @ text_rows.T], dim=1)
    if image_rows is not None:
        logits_per_text = torch.cat([logits_per_text, logit_scale * text @ image_rows.T], dim=1)
    return logits_per_image, logits_per_text, labels


class _BankLogSumExp(torch.autograd.Function):
    """``logsumexp(queries @ unit(bank).T, dim=1)`` ``[B]`` for a constant ``bank [K, D]``.

    ``unit`` is :func:`F.normalize` of the rows, applied to the logits' columns instead
    (no normalised copy of the bank). The bank is taken in blocks of rows whose ``[B, k]``
    logits (about 1 MB) stay in cache from the product through ``exp`` and the row sum, and
    the blocks' log-sum-exps are combined as in online softmax. Forward keeps each block's
    ``exp(logit - block max)``, which is all the backward needs: ``d/d queries`` is the
    softmax times the unit bank, with the row factors applied to the ``[B, D]`` products.
    Autograd through concatenated logits and ``F.cross_entropy`` instead runs several more
    full ``[B, K]`` passes and fresh allocations, and a ``[K, D]`` gradient nobody uses.
    """

    @staticmethod
    def forward(ctx, queries: Tensor, bank: Tensor) -> Tensor:  # type: ignore[override]
        inv_norms = bank.norm(dim=1).clamp_min(1e-12).reciprocal()  # K, as F.normalize
        rows = max(1, (1 << 18) // queries.shape[0])  # [B, rows] float32 logits: 1 MB
        weights, tops, sums = [], [], []
        for start in range(0, bank.shape[0], rows):
            logits = (queries @ bank[start:start + rows].T).float()  # B x k
            logits.mul_(inv_norms[start:start + rows])  # against unit rows
            top = logits.amax(dim=1, keepdim=True)  # B x 1
            weights.append(logits.sub_(top).exp_())  # B x k, exp(logit - block max)
            tops.append(top)
            sums.append(weights[-1].sum(dim=1, keepdim=True))  # B x 1
        tops_, sums_ = torch.cat(tops, dim=1), torch.cat(sums, dim=1)  # B x blocks
        top = tops_.amax(dim=1, keepdim=True)  # B x 1
        block_scale = (tops_ - top).exp_()  # B x blocks
        total = (sums_ * block_scale).sum(dim=1, keepdim=True)  # B x 1
        ctx.rows = rows
        ctx.save_for_backward(block_scale / total, bank, inv_norms, *weights)
        return (total.log() + top).squeeze(1)  # B

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None]:  # type: ignore[override]
        block_factor, bank, inv_norms, *weights = ctx.saved_tensors
        factor = block_factor * grad[:, None].float()  # B x blocks: softmax = weights * factor
        out = torch.zeros(factor.shape[0], bank.shape[1], device=bank.device)  # B x D
        for i, w in enumerate(weights):
            start = i * ctx.rows
            unit = bank[start:start + ctx.rows].float() * inv_norms[start:start + ctx.rows, None]  # k x D
            out.add_((w @ unit) * factor[:, i:i + 1])
        return out.to(bank.dtype), None  # B x D


def _banked_cross_entropy(logits: Tensor, labels: Tensor, queries: Tensor,
                          logit_scale: Union[Tensor, float], bank: Optional[Tensor]) -> Tensor:
    """``F.cross_entropy`` over ``[logits | logit_scale * queries @ unit(bank).T]`` without
    building it (``unit``: rows L2-normalised).

    The bank columns only enter the normaliser, ``logsumexp`` over all columns, which is the
    ``logaddexp`` of the batch part's and the bank part's; the label is always a batch
    column. The bank is a constant, so its part is one ``[B, K]`` product forward and one
    backward, into the queries (:class:`_BankLogSumExp`), and ``logit_scale`` multiplies
    the ``[B, D]`` queries rather than the ``[B, K]`` logits.
    """
    if bank is None:
        return F.cross_entropy(logits, labels)
    bank_part = _BankLogSumExp.apply(logit_scale * queries, bank)  # B
    normaliser = torch.logaddexp(logits.float().logsumexp(dim=1), bank_part)  # B
    return (normaliser - logits.gather(1, labels[:, None]).squeeze(1)).mean()


def itc_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Union[Tensor, float],
             image_bank: Optional[Tensor] = None, text_bank: Optional[Tensor] = None,
             gather: bool = True, image_keys: Optional[Tensor] = None,
             text_keys: Optional[Tensor] = None) -> Tensor:
    """Image-text contrastive loss: CLIP's symmetric cross-entropy over cosine similarities.

    Radford et al., "Learning transferable visual models from natural language supervision"
    (CLIP, 2021), as used by VLMo: each image must pick its own caption among all texts and
    each caption its own image; the loss is the mean of the two cross-entropies.
    ``logit_scale`` is the *exponentiated* temperature (``model.logit_scale.exp()``, thesis:
    learnable in log space, clamped at ln 100). With memory banks (chapter 4, Wu et al.
    2018 / MoCo's queue) each image is also contrasted with every ``text_bank`` row and each
    text with every ``image_bank`` row; bank rows are extra negatives and get no gradient,
    and their logits only enter the softmax normaliser (:func:`_banked_cross_entropy`), so a
    bank costs little more than its two ``[B, K]`` products, forward and backward into the
    batch (at batch 256, dim 768 and 16k rows per bank: 4 x 6.4 GFLOP).
    Across processes the columns span the global batch; with momentum ``*_keys`` the batch
    columns are those keys (see :func:`contrastive_logits`).
    """
    image = F.normalize(image_emb, dim=-1)  # B x D
    text = F.normalize(text_emb, dim=-1)  # B x D
    logits_per_image, logits_per_text, labels = _batch_logits(
        image, text, logit_scale, gather, image_keys, text_keys)
    return (_banked_cross_entropy(logits_per_image, labels, image, logit_scale, _bank_rows(text_bank, text))
            + _banked_cross_entropy(logits_per_text, labels, text, logit_scale, _bank_rows(image_bank, image))) / 2


def random_negatives(n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """For every row i one index ``j`` drawn uniformly from ``{0..n-1} \\ {i}`` -> ``[n]``.

    Adding a uniform offset in ``1..n-1`` modulo n never returns i and hits every other
    index with probability ``1/(n-1)``: SHRe's "one random negative per pair". The indices
    live on the generator's device (CPU without a generator, drawn from the global RNG).
    """
    if n < 2:
        raise ValueError(f"a random negative needs a batch of at least 2, got {n}")
    device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(1, n, (n,), generator=generator, device=device)  # n
    return (torch.arange(n, device=device) + offsets) % n  # n


def cosine_alignment_loss(image_emb: Tensor, text_emb: Tensor, margin: float = 0.0,
                          generator: Optional[torch.Generator] = None) -> Tensor:
    """SHRe / Sx3HRe_cos alignment: pull matching pairs together, push one random pair apart.

    Aytar et al., "See, Hear, and Read: Deep Aligned Representations" (2017); thesis draft
    004, eq. (2). With ``c_ij = cos(image_i, text_j)`` and ``j(i)`` from
    :func:`random_negatives` (uniform over ``j != i``), the loss is

        1/2 * [ 1/B * sum_i (1 - c_ii)  +  1/B * sum_i max(0, c_ij(i) - margin) ],

    i.e. half the sum of two ``torch.nn.CosineEmbeddingLoss(margin)`` terms with mean
    reduction: the B positive pairs with target +1 and the B negative pairs with target -1,
    which equals the mean over all 2B pair terms. Unlike ITC the score is never normalised
    over other candidates, so the loss does not depend on how many negatives there are.
    """
    negatives = random_negatives(image_emb.shape[0], generator).to(text_emb.device)  # B
    positive = 1 - F.cosine_similarity(image_emb, text_emb, dim=-1)  # B
    negative = (F.cosine_similarity(image_emb, text_emb[negatives], dim=-1) - margin).clamp(min=0)  # B
    return (positive.mean() + negative.mean()) / 2
