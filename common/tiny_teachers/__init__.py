"""Training recipes of the tiny teachers the ``tiny`` presets distil from (CPU, minutes).

- ``tiny-cnn`` (:mod:`.cnn`): a supervised ResNet on the fine labels;
- ``tiny-d2v`` (:mod:`.d2v`): data2vec 2.0-style masked self-distillation of an ALiBi ViT;
- ``tiny-dino`` (:mod:`.dino`): DINO self-distillation across background-swapped views;
- ``tiny-clr`` (:mod:`.clr`): MoCo v3-style InfoNCE between views sharing their main object.

:mod:`.settings` holds each label-free recipe's settings, the ``teacher.d2v`` /
``teacher.dino`` / ``teacher.clr`` config sections; :mod:`.bootstrap` trains a recipe once
and caches it. These are training recipes with their own augmentations, kept apart from
:mod:`common.models`, which holds architectures only.
"""
