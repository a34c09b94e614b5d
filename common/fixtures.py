"""Small datasets and random checkpoints in the real on-disk formats, written from scratch.

The `full` presets read files nobody can download on an offline machine, so the tests and
``make smoke-full`` (:mod:`common.smoke_full`) write them: each writer leaves exactly what
the original distribution (or ``python -m common.data.prepare``'s input) looks like, only
with a handful of items, and a few of the flaws real copies have (a missing image, a blank
caption, a dead link) that the preparation must count and skip.

Checkpoints have the published key names, nesting and model configs (fairseq's trainer
dict for data2vec 2.0, unilm's ``{"model": ...}`` for BEiT v2, timm/HF ``.safetensors`` for
ResNet-50 and DINO) with random values of the real architecture; ``dim`` / ``depth`` can be
shrunk for fast unit tests, and are left at ViT-B for the smoke run.
"""
from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import PIL.Image
import tokenizers
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file


# ---------------------------------------------------------------------------- images
def write_jpeg(path: Path, colour: Tuple[int, int, int], size: Tuple[int, int] = (20, 16)) -> None:
    """A one-colour JPEG of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("RGB", size, colour).save(path, "JPEG")


def karpathy_entry(split: str, filename: str, captions: Sequence[str],
                   filepath: Optional[str] = None) -> Dict:
    """One image of Karpathy's ``dataset_*.json`` (COCO entries also name their folder)."""
    entry = {"split": split, "filename": filename, "imgid": 0, "sentids": [],
             "sentences": [{"raw": c, "tokens": c.split()} for c in captions]}
    if filepath:
        entry["filepath"] = filepath
    return entry


COCO_SPLITS = ("train", "train", "restval", "val", "test", "test", "test")


def write_coco(root: Path, splits: Sequence[str] = COCO_SPLITS, size: Tuple[int, int] = (20, 16)) -> None:
    """COCO 2014 folders + ``dataset_coco.json``. The last image is missing on disk and image 4
    has a blank caption (both skipped and counted by the preparation)."""
    folder = root / "coco"
    images = []
    for i, split in enumerate(splits):
        sub = "train2014" if split == "train" else "val2014"
        name = f"COCO_{sub}_{i:012d}.jpg"
        if i != len(splits) - 1:
            write_jpeg(folder / sub / name, ((30 * i) % 256, 100, 200), size)
        caps = [f"coco image {i} caption {k}" for k in range(5)]
        if i == 4:
            caps[2] = "   "
        images.append(karpathy_entry(split, name, caps, filepath=sub))
    (folder / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))


def write_flickr(root: Path, splits: Sequence[str] = ("train", "val", "test", "test"),
                 size: Tuple[int, int] = (20, 16)) -> None:
    """Flickr30K images + ``dataset_flickr30k.json`` (captions with stray newlines)."""
    folder = root / "flickr30k"
    images = []
    for i, split in enumerate(splits):
        write_jpeg(folder / "flickr30k-images" / f"{1000 + i}.jpg", (0, (20 * i) % 256, 50), size)
        images.append(karpathy_entry(split, f"{1000 + i}.jpg",
                                     [f"flickr {i} line\n{k}" for k in range(5)]))
    (folder / "dataset_flickr30k.json").write_text(json.dumps({"images": images}))


IMAGENET_FOLDERS = ("n01440764", "n01443537", "n15075141")  # classes 0, 1 and 999


def write_imagenet(root: Path, splits: Sequence[str] = ("val",), per_class: int = 2,
                   folders: Sequence[str] = IMAGENET_FOLDERS, size: Tuple[int, int] = (20, 16)) -> None:
    """ImageNet-1k class folders (``<split>/<wnid>/*.JPEG``)."""
    for split in splits:
        for c, wnid in enumerate(folders):
            for k in range(per_class):
                write_jpeg(root / "imagenet" / split / wnid / f"ILSVRC2012_{split}_{wnid}_{k}.JPEG",
                           (k * 90 % 256, 40 + 60 * c, 40), size)


def write_cc3m(tmp: Path, rows: int = 7, size: Tuple[int, int] = (20, 16)) -> Path:
    """CC3M's ``Train_GCC-training.tsv`` (caption<TAB>url) over ``file://`` urls: row 1 is a
    dead link, row 3 a text file posing as an image, the last row's caption is blank."""
    urls = []
    for i in range(rows):
        path = tmp / "web" / f"img{i}.jpg"
        if i == 3:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("<html>this image is no longer available</html>")
        elif i != 1:
            write_jpeg(path, (200, (10 * i) % 256, 0), size)
        urls.append(path.as_uri())
    index = tmp / "Train_GCC-training.tsv"
    captions = [f"cc3m caption {i}" for i in range(rows - 1)] + ["  "]
    index.write_text("".join(f"{c}\t{u}\n" for c, u in zip(captions, urls)))
    return index


def write_visual_genome(root: Path, size: Tuple[int, int] = (20, 16)) -> None:
    """``VG_100K`` / ``VG_100K_2`` images + ``region_descriptions.json`` (one blank phrase, one
    region of an image that is not there)."""
    folder = root / "visual_genome"
    write_jpeg(folder / "VG_100K" / "1.jpg", (10, 10, 10), size)
    write_jpeg(folder / "VG_100K_2" / "2.jpg", (90, 90, 90), size)

    def region(rid: int, image: int, phrase: str, box: int) -> Dict:
        return {"region_id": rid, "image_id": image, "phrase": phrase, "x": 0, "y": 0,
                "width": box, "height": box}

    regions = [{"id": 1, "regions": [region(1, 1, "a red hat", 5), region(2, 1, " ", 3)]},
               {"id": 2, "regions": [region(3, 2, "man on a bench", 8), region(4, 2, "green tree", 4)]},
               {"id": 3, "regions": [region(5, 3, "no image here", 1)]}]
    (folder / "region_descriptions.json").write_text(json.dumps(regions))


def write_webdataset_shards(folder: Path, captions: Sequence[str], per_shard: int = 3,
                            size: Tuple[int, int] = (20, 16)) -> List[Path]:
    """img2dataset's webdataset output: ``00000.tar``, ... with ``<key>.jpg``, ``<key>.txt``
    and ``<key>.json`` per sample (keys: shard number + index, json with the input row and
    status), and ``<shard>_stats.json`` beside each shard."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for first in range(0, len(captions), per_shard):
        number = first // per_shard
        path = folder / f"{number:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for row in range(first, min(first + per_shard, len(captions))):
                key = f"{number:05d}{row - first:04d}"
                image = io.BytesIO()
                PIL.Image.new("RGB", size, ((37 * row) % 256, 90, 160)).save(image, "JPEG")
                meta = {"row": row, "url": f"https://example.com/{row}.jpg", "key": key,
                        "status": "success", "width": size[0], "height": size[1]}
                for ext, data in (("jpg", image.getvalue()), ("txt", captions[row].encode()),
                                  ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        count = min(per_shard, len(captions) - first)
        (folder / f"{number:05d}_stats.json").write_text(json.dumps(
            {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0,
             "status_dict": {"success": count}}))
        shards.append(path)
    return shards


# ---------------------------------------------------------------------------- CIFAR
def cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def cifar_expected() -> Dict[str, Tuple[np.ndarray, List[int]]]:
    """{variant_split: (HxWx3 images, labels)} of the CIFAR fixture, 2-4 images per batch."""
    expected = {}
    batches = [cifar_images(2, b) for b in range(1, 6)]
    expected["cifar10_train"] = (np.concatenate(batches),
                                 [x for b in range(1, 6) for x in (b % 10, (b + 3) % 10)])
    expected["cifar10_test"] = (cifar_images(3, 9), [7, 8, 9])
    for split, n, seed in (("train", 4, 20), ("test", 2, 21)):
        expected[f"cifar100_{split}"] = (cifar_images(n, seed),
                                         [(seed * 7 + 13 * k) % 100 for k in range(n)])
    return expected


def write_cifar_archives(root: Path) -> None:
    """``cifar-10-python.tar.gz`` and ``cifar-100-python.tar.gz`` under ``root/cifar``, pickled
    as the originals (byte-string keys, 3072-byte rows)."""
    def rows(images: np.ndarray) -> np.ndarray:
        return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)

    expected = cifar_expected()
    folder, build = root / "cifar", root / "cifar_build"
    c10, c100 = build / "cifar-10-batches-py", build / "cifar-100-python"
    c10.mkdir(parents=True)
    c100.mkdir()
    images, labels = expected["cifar10_train"]
    for b in range(5):
        (c10 / f"data_batch_{b + 1}").write_bytes(pickle.dumps(
            {b"batch_label": b"training batch", b"data": rows(images[2 * b:2 * b + 2]),
             b"labels": labels[2 * b:2 * b + 2], b"filenames": [b"x.png"] * 2}))
    images, labels = expected["cifar10_test"]
    (c10 / "test_batch").write_bytes(pickle.dumps({b"data": rows(images), b"labels": labels}))
    (c10 / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [f"c10_{k}".encode() for k in range(10)], b"num_vis": 3072}))
    for split in ("train", "test"):
        images, fine = expected[f"cifar100_{split}"]
        (c100 / split).write_bytes(pickle.dumps(
            {b"data": rows(images), b"fine_labels": fine,
             b"coarse_labels": [f % 20 for f in fine]}))
    (c100 / "meta").write_bytes(pickle.dumps(
        {b"fine_label_names": [f"c100_{k}".encode() for k in range(100)],
         b"coarse_label_names": [f"super_{k}".encode() for k in range(20)]}))
    folder.mkdir(exist_ok=True)
    for archive, sub in (("cifar-10-python.tar.gz", c10), ("cifar-100-python.tar.gz", c100)):
        with tarfile.open(folder / archive, "w:gz") as tar:
            tar.add(sub, arcname=sub.name)


# ---------------------------------------------------------------------------- text
OWT_DOCS = {
    "urlsf_subset00-1_data.xz": {"0001-a.txt": "First line of a web page.\n\n\nSecond\x00 line.\n",
                                 "0002-b.txt": "\n  \nOnly one line here, caf\u00e9.\n"},
    "urlsf_subset00-2_data.xz": {"0003-c.txt": "Another page with text.\nAnd more."},
    "urlsf_subset05-1_data.xz": {"0004-d.txt": "A validation page.\n\nWith two lines."},
    "urlsf_subset07-1_data.xz": {"0005-e.txt": "Not in subsets 0-5."},
}


def write_openwebtext(root: Path) -> None:
    """OpenWebText's ``urlsf_subset*_data.xz`` archives of ``.txt`` documents."""
    raw = root / "openwebtext" / "raw" / "openwebtext"
    raw.mkdir(parents=True)
    for archive, docs in OWT_DOCS.items():
        with tarfile.open(raw / archive, "w:xz") as tar:
            for name, text in docs.items():
                data = text.encode("utf-8")
                info = tarfile.TarInfo(f"{archive[:-3]}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_gpt2_files(folder: Path, corpus: Sequence[str] = (), vocab_size: int = 400,
                     fairseq_dict: bool = False) -> None:
    """A small byte-level BPE in GPT-2's file format (``vocab.json`` + ``merges.txt``), and with
    ``fairseq_dict`` fairseq's ``dict.txt`` ("<gpt2 id> <count>" per line) as data2vec ships it."""
    texts = list(corpus) or [t for docs in OWT_DOCS.values() for t in docs.values()]
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts * 5, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    bpe.model.save(str(folder))
    if fairseq_dict:
        size = bpe.get_vocab_size()
        (folder / "dict.txt").write_text("".join(f"{i} {size - i}\n" for i in range(size)))


def _glue_rows(task: str, n: int) -> Tuple[str, List[str]]:
    """(header, rows) of one GLUE tsv in the original distribution's columns."""
    sentence = [f"sentence number {k} is {'good' if k % 2 else 'bad'}" for k in range(n)]
    if task == "CoLA":  # no header: source, label, original mark, sentence
        return "", [f"src\t{k % 2}\t\t{s}" for k, s in enumerate(sentence)]
    if task == "SST-2":
        return "sentence\tlabel", [f"{s}\t{k % 2}" for k, s in enumerate(sentence)]
    if task == "MRPC":
        return ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                [f"{k % 2}\t{k}\t{k + 1}\t{s}\t{s[::-1]}" for k, s in enumerate(sentence)])
    if task == "STS-B":
        return ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                [f"{k}\tmain\tf\t2012\t{k}\tnone\tnone\t{s}\t{s}\t{k % 5}.000" for k, s in enumerate(sentence)])
    if task == "QQP":
        return ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                [f"{k}\t{k}\t{k + 1}\t{s}?\t{s}?\t{k % 2}" for k, s in enumerate(sentence)])
    if task == "MNLI":
        labels = ("entailment", "neutral", "contradiction")
        return ("index\tpromptID\tsentence1\tsentence2\tlabel1\tgold_label",
                [f"{k}\t{k}\t{s}\t{s}.\t{labels[k % 3]}\t{labels[k % 3]}" for k, s in enumerate(sentence)])
    labels = ("entailment", "not_entailment")
    first = "question\tsentence" if task == "QNLI" else "sentence1\tsentence2"
    return (f"index\t{first}\tlabel",
            [f"{k}\t{s}\t{s}.\t{labels[k % 2]}" for k, s in enumerate(sentence)])


def write_glue(root: Path, n: int = 6) -> None:
    """The eight GLUE tasks as the original distribution lays them out (``<root>/glue/<Task>/``
    ``train.tsv`` + ``dev.tsv``; MNLI ``dev_matched`` / ``dev_mismatched``), ``n`` rows each."""
    for task in ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE"):
        splits = ["train", "dev_matched", "dev_mismatched"] if task == "MNLI" else ["train", "dev"]
        for split in splits:
            header, rows = _glue_rows(task, n)
            path = root / "glue" / task / f"{split}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{line}\n" for line in ([header] if header else []) + rows))


# ---------------------------------------------------------------------------- checkpoints
def _random(shape: Sequence[int], g: torch.Generator, std: float = 0.02) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * std


def _d2v2_block(sd: Dict[str, torch.Tensor], prefix: str, dim: int, g: torch.Generator) -> None:
    """One fairseq ``AltBlock`` (timm-style names: norm1, attn.qkv, attn.proj, norm2, mlp)."""
    for norm in ("norm1", "norm2"):
        sd[f"{prefix}{norm}.weight"], sd[f"{prefix}{norm}.bias"] = torch.ones(dim), torch.zeros(dim)
    for name, (out, inp) in {"attn.qkv": (3 * dim, dim), "attn.proj": (dim, dim),
                             "mlp.fc1": (4 * dim, dim), "mlp.fc2": (dim, 4 * dim)}.items():
        sd[f"{prefix}{name}.weight"], sd[f"{prefix}{name}.bias"] = _random((out, inp), g), torch.zeros(out)


def _fairseq_save(path: Path, model: Dict, cfg: Dict, task: str) -> Path:
    """As fairseq's ``checkpoint_utils.save_state`` leaves it: the hydra config as an
    OmegaConf object, the model state, optimizer history and extra state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"args": None, "cfg": OmegaConf.create({"model": cfg, "task": {"_name": task}}),
                "model": model, "criterion": None, "optimizer_history": [
                    {"criterion_name": "ModelCriterion", "optimizer_name": "CompositeOptimizer",
                     "num_updates": 375300}],
                "task_state": {}, "extra_state": {"epoch": 1}, "last_optimizer_state": None}, path)
    return path


def data2vec2_image_checkpoint(path: Path, dim: int = 768, prenet_depth: int = 2, depth: int = 10,
                               heads: int = 12, grid: int = 14, patch: int = 16, seed: int = 0) -> Path:
    """data2vec 2.0 base image (``base_imagenet.pt``): ``prenet_depth`` blocks in the image
    encoder's context encoder, ``depth`` shared blocks, the conv decoder (pretraining only),
    the model config of fairseq's ``base_images_only_task``."""
    g, p = torch.Generator().manual_seed(seed), "modality_encoders.IMAGE."
    sd = {p + "local_encoder.proj.weight": _random((dim, 3, patch, patch), g),
          p + "local_encoder.proj.bias": torch.zeros(dim),
          p + "fixed_positional_encoder.positions": _random((1, grid * grid, dim), g, 1.0),
          p + "extra_tokens": _random((1, 1, dim), g),
          p + "context_encoder.norm.weight": torch.ones(dim),
          p + "context_encoder.norm.bias": torch.zeros(dim),
          p + "decoder.blocks.0.0.weight": _random((dim, dim // 16, 3, 3), g),
          p + "decoder.proj.weight": _random((dim, dim), g)}
    for i in range(prenet_depth):
        _d2v2_block(sd, f"{p}context_encoder.blocks.{i}.", dim, g)
    for i in range(depth):
        _d2v2_block(sd, f"blocks.{i}.", dim, g)
    cfg = {"_name": "data2vec_multi", "depth": depth, "embed_dim": dim, "num_heads": heads,
           "norm_eps": 1e-6, "layer_norm_first": False, "supported_modality": "IMAGE",
           "modalities": {"image": {"prenet_depth": prenet_depth, "use_alibi_encoder": False,
                                    "num_extra_tokens": 1}}}
    return _fairseq_save(path, sd, cfg, "mae_image_pretraining")


def data2vec2_text_checkpoint(path: Path, vocab_size: int, dim: int = 768, depth: int = 12,
                              heads: int = 12, positions: int = 514, seed: int = 1) -> Path:
    """data2vec 2.0 base text (``nlp_base.pt``): token and learned position embeddings
    (fairseq's, offset by the pad id), ``depth`` shared blocks, no prenet, the config of
    ``base_text_only_task``. ``vocab_size`` rows as fairseq's GPT-2 dictionary gives them."""
    g, p = torch.Generator().manual_seed(seed), "modality_encoders.TEXT."
    sd = {p + "local_encoder.embed_tokens.weight": _random((vocab_size, dim), g),
          p + "local_encoder.embed_positions.weight": _random((positions, dim), g),
          p + "local_encoder.layernorm_embedding.weight": torch.ones(dim),
          p + "local_encoder.layernorm_embedding.bias": torch.zeros(dim),
          p + "decoder.blocks.0.0.weight": _random((dim, dim, 9), g),
          p + "decoder.proj.0.weight": _random((2 * dim, dim), g)}
    for i in range(depth):
        _d2v2_block(sd, f"blocks.{i}.", dim, g)
    cfg = {"_name": "data2vec_multi", "depth": depth, "embed_dim": dim, "num_heads": heads,
           "norm_eps": 1e-5, "layer_norm_first": False, "supported_modality": "TEXT",
           "modalities": {"text": {"prenet_depth": 0}}}
    return _fairseq_save(path, sd, cfg, "masked_lm")


def beitv2_checkpoint(path: Path, dim: int = 768, depth: int = 12, heads: int = 12,
                      image_size: int = 224, seed: int = 2) -> Path:
    """unilm's BEiT v2 pretraining release (``beitv2_base_patch16_224_pt1k.pth``):
    ``{"model": ...}`` with a relative position bias per block, layer scale, the final norm,
    and the pretraining-only modules (mask token, LM head, the CLS-pretraining layers)."""
    from timm.models.beit import Beit  # timm's Beit has unilm's parameter names

    torch.manual_seed(seed)
    model = Beit(img_size=image_size, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads,
                 init_values=0.1, use_abs_pos_emb=False, use_rel_pos_bias=True,
                 global_pool="token", num_classes=0)
    g = torch.Generator().manual_seed(seed)  # noise on every tensor: no zero or constant init left
    sd = {k: v + _random(v.shape, g) if v.is_floating_point() else v
          for k, v in model.state_dict().items()}
    grid = image_size // 16
    for i in range(depth):  # unilm stored the index buffers too
        sd[f"blocks.{i}.attn.relative_position_index"] = torch.zeros(
            grid * grid + 1, grid * grid + 1, dtype=torch.long)
    sd.update({"mask_token": torch.zeros(1, 1, dim), "lm_head.weight": torch.zeros(8192, dim),
               "lm_head.bias": torch.zeros(8192), "cls_pt_layers.0.norm1.weight": torch.ones(dim)})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd}, path)
    return path


def timm_weights(path: Path, arch: str, seed: int = 3, **kwargs) -> Path:
    """A timm model's ``model.safetensors`` as the Hugging Face hub serves it (e.g.
    ``resnet50.a1_in1k``, ``vit_base_patch16_224.dino``), random values."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
