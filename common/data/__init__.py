"""Data: the synthetic image-caption world, transforms, tokenizer and datasets.

Typical use in a chapter (tiny preset)::

    world = SyntheticWorld.from_config(cfg.data)
    tok = build_tokenizer(cfg.data)
    pairs = ImageTextPairs(world.source("train"),
                           train_transform(cfg.data.image_size, cfg.data.crop_scale, cfg.data.hflip))
    batches = TrainStream(pairs, seed=cfg.train.seed).loader(
        cfg.train.batch_size, collate_image_text(tok, cfg.data.max_text_len), start_step=step)
    coco = RetrievalSet(world.source("coco_test"), eval_transform(cfg.data.image_size))

Names are imported lazily (PEP 562) so that ``python -m common.data.synthetic`` does not
import its own module twice.
"""
import importlib
from typing import Any

_EXPORTS = {
    "common.data.datasets": ("DataSource", "ImageLabelSet", "ImageTextPairs", "RetrievalSet",
                             "TrainStream", "collate_image_text"),
    "common.data.synthetic": ("CLASSNAMES", "COARSE_CLASSNAMES", "TEMPLATES", "Scene",
                              "SyntheticSource", "SyntheticWorld", "mirror_caption", "render"),
    "common.data.tokenizer": ("Tokenizer", "build_tokenizer"),
    "common.data.transforms": ("ImageTransform", "eval_transform", "load_image",
                               "train_transform"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'common.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
