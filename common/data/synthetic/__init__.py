"""The synthetic image-caption world: the embedded default data of every ``tiny`` preset.

Real COCO/ImageNet/CIFAR cannot be downloaded on a fresh CPU machine, so each chapter's
default run trains and evaluates on this world instead. It is generated on the fly
(no files) and is a pure function of ``(seed, split, index)``.

**Scenes.** 1-3 flat objects on a textured, tinted background. An object is one of 10
shapes x 10 colours, in one of 3 sizes, centred (with a small jitter) in one cell of a 3x3
grid. Object 0 is the *main* object: always strictly larger than every other object, so
"the" object of an image is unambiguous. Backgrounds are 5 textures x 4 tints.

**Labels.** ``label`` (fine, 100 classes) = main object's colour + shape, named like
``"red circle"`` (:data:`CLASSNAMES`, index ``shape * 10 + colour``); ``coarse_label``
(10 classes) = main object's shape (:data:`COARSE_CLASSNAMES`). Colour is easy to read off
pixel statistics, shape is not, so the coarse task measures shape recognition and the fine
task needs both. Labels are exactly balanced: ``label == index % 100``. These drive the
supervised tiny teacher, the "ImageNet" zero-shot task (:data:`CLASSNAMES` with the prompt
:data:`TEMPLATES`) and the "CIFAR" kNN tasks (fine = CIFAR-100-like, coarse = CIFAR-10-like).

**Captions.** 5 per image, COCO-like, from sentence frames with optional parts, filled
with paraphrases ("circle" / "disc", "checkered" / "checked", "in the top left corner" /
"in the upper left"). Every caption names the main object's colour and shape; each caption
also mentions a random subset of: its position, the background texture and/or tint, the
other objects (as a count, without positions, or in full). The 5 captions *jointly* state
every caption-relevant attribute (the signature below) at least once, so the exact image
can be retrieved from its captions, while single captions are often vague (many images
fit "a red circle."), as in COCO. :meth:`SyntheticWorld.regions` gives short
Visual-Genome-like phrases ("small blue square", "striped background", "red circle above
blue square").

**Splits** (disjoint seeds): ``train`` (``train_size`` images); ``coco_test`` (COCO-5k-like);
``flickr_test`` (Flickr-1k-like *shift*: held-out sentence frames, never used for
``train``/``coco_test``, and more cluttered images, 1/2/3 objects with probabilities
0.1/0.3/0.6 instead of 0.3/0.4/0.3); ``knn_train`` / ``knn_test`` (kNN bank / queries,
CIFAR-like); ``imagenet_val`` (zero-shot classification images). In ``coco_test`` and
``flickr_test`` every image has a unique *signature* (background texture and tint, and the
colour, shape and grid cell of every object; sizes and jitter excluded): no two test images
are described by the same facts, so retrieval is never capped by duplicates.

**Flips.** Captions use "left"/"right". A horizontal flip mirrors the scene; the
transforms report the flip and :class:`common.data.datasets.ImageTextPairs` swaps the
words with :func:`mirror_caption`, so flipped pairs stay true (ALBEF does the same).
Textures and shapes are mirror-symmetric except the crescent, whose name does not say
which way it opens.

**Chance levels** (random embeddings, in percent):

=================================  =========  =========  =========
task                               R@1/top1   R@5/top5   R@10/top3
=================================  =========  =========  =========
coco_test 5k img x 25k capt, i2t   0.02       0.10       0.20
coco_test 5k img x 25k capt, t2i   0.02       0.10       0.20
flickr_test 1k x 5k, i2t           0.10       0.50       1.00
flickr_test 1k x 5k, t2i           0.10       0.50       1.00
zero-shot 100 classes              1.0        5.0        --
kNN 10 classes (top1 / top3)       10.0       --         27.1
kNN 100 classes (top1 / top3)      1.0        --         2.97
=================================  =========  =========  =========

(i2t: an image hits if any of its 5 captions is in the top K of 5N texts, ~ K/N; kNN: any of
the k nearest neighbours has the label, ``1 - (1 - 1/C)^k`` with balanced labels.)
A model that recognises only the main object's class and nothing else of the scene gets
t2i R@1/5/10 of about 2/10/20 on ``coco_test`` (50 images per class) and 10/50/100 on
``flickr_test`` (10 per class): the retrieval numbers above those levels measure whole-scene
understanding.

Throughput: ``python -m common.data.show_synthetic --bench`` (rendered + transformed samples/s);
a picture of samples with their captions: ``python -m common.data.show_synthetic --show FILE``.
"""
from __future__ import annotations

from common.data.synthetic.captions import GRAMMAR_VERSION, HELDOUT_FRAMES, NUM_CAPTIONS, TRAIN_FRAMES, Captions
from common.data.synthetic.render import render, with_new_background
from common.data.synthetic.scenes import SPLITS, UNIQUE_SPLITS, Obj, Scene, keeps_clear
from common.data.synthetic.vocabulary import (CELL_CENTRES, CLASSNAMES, COARSE_CLASSNAMES, COLOUR_JITTER, COLOUR_RGB,
                                              COLOUR_WORDS, COLOURS, POSITION_JITTER, POSITION_WORDS, SHAPE_WORDS,
                                              SHAPES, SIZE_FRAC, SIZES, TEMPLATES, TEXTURE_WORDS, TEXTURES, TINT_WORDS,
                                              TINTS, mirror_caption)
from common.data.synthetic.world import SyntheticSource, SyntheticWorld

__all__ = ["CELL_CENTRES", "CLASSNAMES", "COARSE_CLASSNAMES", "COLOUR_JITTER", "COLOUR_RGB", "COLOUR_WORDS",
           "COLOURS", "Captions", "GRAMMAR_VERSION", "HELDOUT_FRAMES", "NUM_CAPTIONS", "Obj", "POSITION_JITTER",
           "POSITION_WORDS", "SHAPE_WORDS", "SHAPES", "SIZE_FRAC", "SIZES", "SPLITS", "Scene", "SyntheticSource",
           "SyntheticWorld", "TEMPLATES", "TEXTURE_WORDS", "TEXTURES", "TINT_WORDS", "TINTS", "TRAIN_FRAMES",
           "UNIQUE_SPLITS", "keeps_clear", "mirror_caption", "render", "with_new_background"]
