"""Prepare the full preset's datasets: ``python -m common.data.prepare NAME --root DIR [...]``.

Each subcommand turns one dataset, as distributed, into the folder ``DIR/<name>/`` that
:func:`common.data.sources.open_source` reads with ``data.root=DIR``: indexes beside the
images, converted arrays or token shards, and a ``manifest.json`` with counts per split
(and what was skipped). Every step is resumable: a finished dataset is skipped (``--force``
redoes it), CC3M downloads and OpenWebText shards continue where they stopped.

    python -m common.data.prepare --help            # the datasets
    python -m common.data.prepare coco --help       # the inputs one of them expects
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

from common.cli import main as run_main
from common.data.cc3m import prepare_cc3m
from common.data.cc3m_img2dataset import (find_img2dataset, index_cc3m_shards,
                                          prepare_cc3m_img2dataset)
from common.data.cifar import prepare_cifar
from common.data.coco import prepare_karpathy
from common.data.imagenet import prepare_imagenet
from common.data.openwebtext import prepare_openwebtext
from common.data.visual_genome import prepare_visual_genome

log = logging.getLogger("mmkd")


def _glue(args: argparse.Namespace) -> None:
    from common.data.glue import prepare_glue  # the GLUE export lives with the GLUE loaders

    log.info("glue: prepared in %s", prepare_glue(args.root))


Handler = Callable[[argparse.Namespace], Optional[Dict]]

# name -> (one-line help, handler)
COMMANDS: Dict[str, Tuple[str, Handler]] = {
    "imagenet": ("ImageNet-1k: index class folders (or export a Hugging Face copy with --hf)",
                 lambda a: prepare_imagenet(a.root, hf=a.hf, force=a.force)),
    "cifar": ("CIFAR-10 and CIFAR-100: check and extract the python archives, convert to arrays",
              lambda a: prepare_cifar(a.root, a.archive, verify=a.verify, force=a.force)),
    "coco": ("COCO 2014 with Karpathy's splits (train+restval, val, 5k test)",
             lambda a: prepare_karpathy("coco", a.root, a.json, force=a.force)),
    "flickr30k": ("Flickr30K with Karpathy's splits (1k test)",
                  lambda a: prepare_karpathy("flickr30k", a.root, a.json, force=a.force)),
    "cc3m": ("Conceptual Captions: download the first --limit available images of the index",
             lambda a: _cc3m(a)),
    "visual_genome": ("Visual Genome region descriptions as (image, phrase) pairs",
                      lambda a: prepare_visual_genome(a.root, a.regions, force=a.force)),
    "openwebtext": ("OpenWebText subsets 0-4 (train) and 5 (val) as GPT-2 BPE uint16 shards",
                    lambda a: prepare_openwebtext(a.root, a.raw, a.train_subsets, a.val_subsets,
                                                  a.tokenizer, force=a.force)),
    "glue": ("GLUE tasks (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE)", _glue),
}


def _cc3m(args: argparse.Namespace) -> Dict:
    """CC3M by img2dataset (webdataset shards) when it is installed, else by the built-in
    downloader (one file per image); or an existing shard copy indexed in place."""
    if args.shards:
        return index_cc3m_shards(args.root, args.shards, force=args.force)
    downloader = args.downloader
    if downloader == "auto":
        downloader = "img2dataset" if find_img2dataset(args.img2dataset) else "urllib"
        log.info("cc3m: downloading with %s%s", downloader, "" if downloader == "img2dataset" else
                 " (make img2dataset installs img2dataset: resized webdataset shards)")
    if downloader == "img2dataset":
        return prepare_cc3m_img2dataset(args.root, args.index, limit=args.limit,
                                        image_size=args.image_size, threads=args.workers,
                                        retries=args.retries, timeout=args.timeout,
                                        img2dataset=args.img2dataset, force=args.force)
    return prepare_cc3m(args.root, args.index, limit=args.limit, workers=args.workers,
                        retries=args.retries, timeout=args.timeout, force=args.force)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m common.data.prepare",
        description="Prepare one dataset of the full preset under --root (the preset's "
                    "data.root); resumable, writes ROOT/<name>/manifest.json.")
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME",
                                title="datasets (NAME --help: the inputs it expects)")
    root = argparse.ArgumentParser(add_help=False)
    root.add_argument("--root", type=Path, default=Path("data"),
                      help="datasets folder, the full preset's data.root (default: data)")
    common = argparse.ArgumentParser(add_help=False, parents=[root])
    common.add_argument("--force", action="store_true", help="redo a finished preparation")
    cmd = {name: sub.add_parser(name, help=text, description=text,
                                parents=[root] if name == "glue" else [common])
           for name, (text, _) in COMMANDS.items()}
    cmd["imagenet"].add_argument("--hf", type=Path, help="a Hugging Face imagenet-1k copy "
                                 "(save_to_disk folder or parquet files) to export first")
    cmd["cifar"].add_argument("--archive", type=Path, action="append", default=[],
                              help="a cifar-10/100-python.tar.gz elsewhere than ROOT/cifar")
    cmd["cifar"].add_argument("--no-verify", dest="verify", action="store_false",
                              help="skip the MD5 check of the official archives")
    for name in ("coco", "flickr30k"):
        cmd[name].add_argument("--json", type=Path,
                               help=f"Karpathy's dataset_{name}.json (default: ROOT/{name}/)")
    cmd["cc3m"].add_argument("--index", type=Path, help="caption<TAB>url file (default: "
                             "ROOT/cc3m/Train_GCC-training.tsv)")
    cmd["cc3m"].add_argument("--limit", type=int, default=500_000,
                             help="images to keep, the first available ones (default: 500000)")
    cmd["cc3m"].add_argument("--workers", type=int, default=16, help="parallel downloads")
    cmd["cc3m"].add_argument("--retries", type=int, default=3,
                             help="retries of a transient failure (timeout, HTTP 5xx/429)")
    cmd["cc3m"].add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    cmd["cc3m"].add_argument("--downloader", choices=["auto", "img2dataset", "urllib"],
                             default="auto", help="img2dataset (resized webdataset shards; "
                             "make img2dataset), urllib (built in, full-size files), or auto: "
                             "img2dataset when installed (default)")
    cmd["cc3m"].add_argument("--img2dataset", default="", metavar="PATH",
                             help="the img2dataset executable (default: .venv-img2dataset or PATH)")
    cmd["cc3m"].add_argument("--image-size", type=int, default=256,
                             help="img2dataset: shorter side after resizing (default: 256)")
    cmd["cc3m"].add_argument("--shards", type=Path, default=None, metavar="DIR",
                             help="index an existing img2dataset/webdataset copy (*.tar under "
                                  "DIR) in place instead of downloading")
    cmd["visual_genome"].add_argument("--regions", type=Path, help="region_descriptions.json "
                                      "(default: ROOT/visual_genome/)")
    owt = cmd["openwebtext"]
    owt.add_argument("--raw", type=Path, help="folder with the urlsf_subsetNN-K_data.xz archives "
                     "(default: ROOT/openwebtext/raw)")
    owt.add_argument("--train-subsets", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    owt.add_argument("--val-subsets", type=int, nargs="+", default=[5])
    owt.add_argument("--tokenizer", default="gpt2", help="gpt2 (BPE files in ROOT/gpt2) or a "
                     "path to a tokenizer.json / folder (default: gpt2)")
    return parser


def prepare(argv: Optional[Sequence[str]] = None) -> Optional[Dict]:
    """Run one subcommand; returns the manifest it wrote (or found)."""
    args = build_parser().parse_args(argv)
    manifest = COMMANDS[args.name][1](args)
    if manifest:
        log.info("%s: %s", args.name, json.dumps(manifest.get("splits", manifest)))
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> None:
    run_main(lambda: prepare(argv))


if __name__ == "__main__":
    main()
