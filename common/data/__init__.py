"""Data: the synthetic image-caption world, transforms, tokenizer and datasets.

Typical use in a chapter (tiny preset)::

    world = SyntheticWorld.from_config(cfg.data)
    tok = build_tokenizer(cfg.data)
    pairs = ImageTextPairs(world.source("train"),
                           train_transform(cfg.data.image_size, cfg.data.crop_scale, cfg.data.hflip))
    batches = TrainStream(pairs, seed=cfg.train.seed).loader(
        cfg.train.batch_size, collate_image_text(tok, cfg.data.max_text_len), start_step=step)
    coco = RetrievalSet(world.source("coco_test"), eval_transform(cfg.data.image_size))

The modules import each other in one direction only: ``synthetic`` (the world) <-
``tokenizer`` (its BPE is trained on the world's captions) <- ``datasets``; the world's
picture and timing CLI is :mod:`common.data.show_synthetic`.
"""
from common.data.datasets import (DataSource, ImageLabelSet, ImageTextPairs, RetrievalSet,
                                  TrainStream, collate_image_text)
from common.data.synthetic import (CLASSNAMES, COARSE_CLASSNAMES, TEMPLATES, Scene,
                                   SyntheticSource, SyntheticWorld, mirror_caption, render)
from common.data.tokenizer import Tokenizer, build_tokenizer
from common.data.transforms import ImageTransform, eval_transform, load_image, train_transform

__all__ = ["CLASSNAMES", "COARSE_CLASSNAMES", "DataSource", "ImageLabelSet", "ImageTextPairs",
           "ImageTransform", "RetrievalSet", "Scene", "SyntheticSource", "SyntheticWorld",
           "TEMPLATES", "Tokenizer", "TrainStream", "build_tokenizer", "collate_image_text",
           "eval_transform", "load_image", "mirror_caption", "render", "train_transform"]
