"""CLIP-style zero-shot classification (chapter 2: ImageNet top-1 21.8 for the SHRe reproduction).

Radford et al., "Learning transferable visual models from natural language supervision"
(CLIP, 2021), sec. 3.1.4: every class name is written into a set of prompt templates
("a photo of a {}."), the text encoder embeds the prompts, and the normalised mean of the
normalised embeddings is that class's classifier row. Ensembling templates in embedding
space costs one matmul at test time. Class names and templates are data (as in open_clip's
``zero_shot_metadata``); the classifier is one function.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import UserError
from common.retrieval import percent_hits, matching_ranks

Template = Union[str, Callable[[str], str]]


def _fill(template: Template, classname: str) -> str:
    return template(classname) if callable(template) else template.format(classname)


@torch.no_grad()
def zero_shot_classifier(encode_text: Callable[[List[str]], Tensor], classnames: Sequence[str],
                         templates: Sequence[Template]) -> Tensor:
    """Class embeddings ``[C, D]``: per class, the renormalised mean of its normalised prompts.

    ``encode_text`` maps a list of strings to ``[N, D]`` embeddings (one call per class, with
    all its templates). Templates are strings with one ``{}`` or callables ``name -> prompt``
    (open_clip's style). Normalising each prompt before the mean lets every template vote
    equally, whatever the norm of its embedding. Runs under ``torch.no_grad()``.
    """
    if not classnames or not templates:
        raise UserError(f"zero-shot classification needs class names and templates, got "
                        f"{len(classnames)} classes and {len(templates)} templates")
    for template in templates:
        if not callable(template) and "{}" not in template:
            raise UserError(f"zero-shot template {template!r} has no '{{}}' for the class name")
    rows = []
    for name in classnames:
        prompts = F.normalize(encode_text([_fill(t, name) for t in templates]), dim=-1)  # T x D
        rows.append(F.normalize(prompts.mean(dim=0), dim=-1))  # D
    return torch.stack(rows)  # C x D


def zero_shot_accuracy(image_emb: Tensor, labels: Tensor, classifier: Tensor,
                       ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-k accuracy in percent, ``{"top1": .., "top5": ..}``, of cosine scores against ``classifier``.

    An image is correct at k if fewer than k other classes score at least as high as its
    true class: ties count against it, as in :mod:`common.retrieval`. ``image_emb [N, D]``
    need not be normalised; ``labels [N]`` index the rows of ``classifier [C, D]``.
    """
    labels = torch.as_tensor(labels).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= classifier.shape[0]):
        raise UserError(f"zero-shot labels must lie in [0, {classifier.shape[0]}) (one class "
                        f"per classifier row), got values in [{int(labels.min())}, {int(labels.max())}]")
    classes = torch.arange(classifier.shape[0])
    ranks = matching_ranks(image_emb, labels, classifier, classes)  # N
    return {f"top{k}": percent_hits(ranks, k) for k in ks}
