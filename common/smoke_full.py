"""``make smoke-full``: every chapter's `full` preset end to end on CPU, from real formats.

What a GPU user with the datasets and the published weights runs, shrunk only in size:

1. writes small datasets in their distributed formats under ``<dir>/data`` (COCO Karpathy
   json + JPEGs, Flickr30K, the CC3M index over ``file://`` urls, Visual Genome, ImageNet
   class folders, the CIFAR archives, OpenWebText ``.xz`` archives, GLUE tsv files, GPT-2 BPE
   files with fairseq's ``dict.txt``) and prepares them with ``python -m common.data.prepare``;
2. writes random ViT-B / ResNet-50 weights in the published file layouts under
   ``<dir>/data/weights`` (:mod:`common.fixtures`: fairseq's data2vec 2.0 image and text
   ``.pt``, unilm's BEiT v2 ``.pth``, timm's ResNet-50 and DINO ``.safetensors``), the names
   the presets use;
3. runs ``make exp-<chapter> PRESET=full`` (``accelerate launch`` with the DeepSpeed config,
   as on a GPU; on CPU ``fit`` falls back to fp32 without DeepSpeed) with size overrides only:
   steps, batch sizes, workers and the zero-shot quick-check cuts;
4. runs every evaluation CLI on each chapter's first run folder (retrieval, zero-shot,
   kNN, linear probe, fine-tuning, GLUE), in this process through their ``main(argv)``;
5. checks that every chapter wrote ``preset=full`` rows and every CLI appended its rows,
   and prints the time of each step.

Runs, results and caches go to ``<dir>`` (a temp folder unless ``--dir``), never to the
repository's ``runs/`` and ``results/``; checkpoints are deleted as soon as their evaluations
are done (peak disk use ~6 GB, 1.5 GB of it the fixtures). Exit status 1 names the first
step that failed.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from common import fixtures
from common.paths import REPO_ROOT

log = logging.getLogger("smoke_full")

# chapter folder -> (make target, the chapter's own size overrides)
CHAPTERS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "shre": ("exp-shre", ()),
    "unimodal_vision_kd": ("exp-vision-kd", tuple(
        f"{recipe}.{size}" for recipe in ("finetune", "linear_probe")
        for size in ("epochs=0", "train.steps=1", "train.batch_size=2", "eval_batch_size=8"))),
    "separate_self_attention": ("exp-ssa", ()),
    "itc_ablation": ("exp-itc", ()),
    "teacher_comparison": ("exp-teachers", ()),
}
# further runs of a chapter: draft 003's combination of chapter 1, set by overrides alone (a BEiT
# v2 teacher, the student built from data2vec 2.0 image blocks on the teacher's embedding)
EXTRA_RUNS: Dict[str, Tuple[str, ...]] = {
    "unimodal_vision_kd": ("run=draft003", "teacher.name=weights/beitv2_base_patch16_224_pt1k.pth",
                           "student.init=weights/data2vec2_base_imagenet.pt", "student.depth=6",
                           "student.mlp_ratio=4.0", "student.alibi=false", "finetune_modes=[]"),
}
# sizes only: every architecture, loss and data switch stays the preset's
SIZES = ("train.steps=2", "train.batch_size=2", "train.log_every=1", "eval.batch_size=8",
         "data.num_workers=1", "data.zero_shot_classes=3", "data.zero_shot_templates=2")
EVAL_SIZES = ("eval.batch_size=8", "data.num_workers=0", "data.zero_shot_classes=3",
              "data.zero_shot_templates=2")
FT_SIZES = ("ft.epochs=0", "ft.train.steps=1", "ft.train.batch_size=2", "ft.eval_batch_size=8")
IMAGE_ONLY = {"unimodal_vision_kd"}  # chapters without a text tower


# ---------------------------------------------------------------------------- fixtures
def write_datasets(root: Path, work: Path) -> None:
    """Every dataset of the full presets in its distributed format, then prepared by the CLI."""
    size = (64, 48)  # landscape like COCO's 640x480, small enough to decode in microseconds
    fixtures.write_coco(root, ("train", "train", "restval", "train", "val", "test", "test",
                               "test", "test", "test"), size)
    fixtures.write_flickr(root, ("train", "val", "test", "test", "test"), size)
    fixtures.write_visual_genome(root, size)
    fixtures.write_imagenet(root, ("train", "val"), per_class=2, size=size)
    fixtures.write_cifar_archives(root)
    fixtures.write_openwebtext(root)
    fixtures.write_glue(root)
    captions = [f"coco image {i} caption {k}" for i in range(10) for k in range(5)]
    fixtures.write_gpt2_files(root / "gpt2", corpus=captions + ["a photo of a tench."],
                              fairseq_dict=True)
    index = fixtures.write_cc3m(work / "cc3m_web", rows=8, size=size)
    prepare = [["coco"], ["flickr30k"], ["visual_genome"], ["imagenet"], ["cifar", "--no-verify"],
               ["openwebtext"], ["cc3m", "--index", str(index), "--workers", "2"]]
    for args in prepare:
        _run([sys.executable, "-m", "common.data.prepare", *args, "--root", str(root)],
             f"prepare {args[0]}")


def write_weights(folder: Path, vocab_size: int) -> None:
    """Random ViT-B/16 and ResNet-50 weights in the published layouts, named as the presets."""
    fixtures.data2vec2_image_checkpoint(folder / "data2vec2_base_imagenet.pt")
    fixtures.data2vec2_text_checkpoint(folder / "data2vec2_base_text.pt", vocab_size)
    fixtures.beitv2_checkpoint(folder / "beitv2_base_patch16_224_pt1k.pth")
    fixtures.timm_weights(folder / "resnet50.a1_in1k.safetensors", "resnet50")
    fixtures.timm_weights(folder / "vit_base_patch16_224.dino.safetensors",
                          "vit_base_patch16_224", num_classes=0)


# ---------------------------------------------------------------------------- steps
def _run(cmd: Sequence[str], what: str, env: Optional[Dict[str, str]] = None) -> None:
    """Run ``cmd``; on failure raise with the last lines of its output."""
    proc = subprocess.run(list(cmd), cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        errors = [line for line in lines if " error: " in line or line.startswith("error: ")]
        tail = "\n".join(errors[-3:] + lines[-25:])  # the chapter's one-line error, then the end
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def run_chapter(name: str, root: Path, env: Dict[str, str], extra: Sequence[str] = ()) -> None:
    target, own = CHAPTERS[name]
    args = " ".join([f"data.root={root}", *SIZES, *own, *extra])
    _run(["make", "--no-print-directory", target, "PRESET=full", f"ARGS={args}"],
         f"make {target} PRESET=full", env)


def eval_calls(name: str, run: Path) -> List[Tuple[str, Callable[[], object]]]:
    """(label, call) of every evaluation CLI that applies to the chapter's model (all eight
    GLUE tasks on the first chapter, RTE on the others: the same code path)."""
    from eval import finetune, knn_cifar, retrieval, zero_shot_imagenet

    r, sizes = str(run), list(EVAL_SIZES)
    glue = "glue" if name == next(iter(CHAPTERS)) else "rte"
    calls = [("knn_cifar", lambda: knn_cifar.main([r, *sizes])),
             ("finetune cifar10 linear", lambda: finetune.main(
                 [r, *sizes, *FT_SIZES, "--task", "cifar10", "--mode", "linear"])),
             ("finetune imagenet full", lambda: finetune.main([r, *sizes, *FT_SIZES]))]
    if name not in IMAGE_ONLY:
        calls = [("retrieval", lambda: retrieval.main([r, *sizes])),
                 ("zero_shot_imagenet", lambda: zero_shot_imagenet.main([r, *sizes])),
                 *calls,
                 (f"finetune {glue}", lambda: finetune.main([r, *sizes, *FT_SIZES, "--task", glue]))]
    return calls


def first_run(runs: Path, name: str) -> Path:
    """The first run folder the chapter's preset wrote (the extra runs' folders left out)."""
    extra = {o.split("=", 1)[1] for o in EXTRA_RUNS.get(name, ()) if o.startswith("run=")}
    folders = sorted(p.parent for p in (runs / name).glob("*/config.yaml")
                     if p.parent.name not in extra)
    if not folders:
        raise RuntimeError(f"chapter {name} left no run folder under {runs / name}")
    return folders[0]


def check_rows(results: Path, name: str) -> int:
    """Rows the chapter wrote; every one must say ``preset=full``."""
    files = list((results / name).glob("*.csv"))
    rows = pd.concat([pd.read_csv(f) for f in files]) if files else pd.DataFrame()
    if rows.empty:
        raise RuntimeError(f"chapter {name} wrote no result rows under {results / name}")
    if set(rows["preset"]) != {"full"}:
        raise RuntimeError(f"chapter {name} wrote rows with preset {sorted(set(rows['preset']))}")
    return len(rows)


def smoke(work: Path, chapters: Sequence[str]) -> List[Tuple[str, float, str]]:
    """Everything above in ``work``; returns (step, seconds, outcome) per step."""
    root = work / "data"
    env = {**os.environ, "MMKD_RUNS": str(work / "runs"), "MMKD_RESULTS": str(work / "results"),
           "MMKD_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    os.environ.update({k: env[k] for k in ("MMKD_RUNS", "MMKD_RESULTS", "MMKD_CACHE",
                                           "HF_HUB_OFFLINE")})
    timings: List[Tuple[str, float, str]] = []

    def step(label: str, call: Callable[[], object]) -> None:
        start = time.perf_counter()
        log.info("smoke-full: %s ...", label)
        try:
            call()
        except RuntimeError:
            raise
        except Exception as err:  # an eval CLI's own error: the step that failed, and why
            raise RuntimeError(f"{label}: {type(err).__name__}: {err}") from err
        timings.append((label, time.perf_counter() - start, "ok"))
        log.info("smoke-full: %s ok (%.0f s)", label, timings[-1][1])

    def weights() -> None:
        from common.config import DataConfig
        from common.data.tokenizer import build_tokenizer

        vocab = build_tokenizer(DataConfig(source="real", root=str(root), tokenizer="gpt2")).vocab_size
        write_weights(root / "weights", vocab)

    step("datasets (write + prepare)", lambda: write_datasets(root, work))
    step("weights (ViT-B/16, ResNet-50)", weights)
    for name in chapters:
        step(f"{name}: make {CHAPTERS[name][0]} PRESET=full", lambda: run_chapter(name, root, env))
        if name in EXTRA_RUNS:
            extra = EXTRA_RUNS[name]
            step(f"{name}: make {CHAPTERS[name][0]} PRESET=full {' '.join(extra)}",
                 lambda: run_chapter(name, root, env, extra))
        rows = check_rows(work / "results", name)
        timings[-1] = (*timings[-1][:2], f"{rows} rows, preset=full")
        run = first_run(work / "runs", name)
        for label, call in eval_calls(name, run):
            before = _eval_rows(work / "results")
            step(f"{name}: eval.{label}", call)
            added = _eval_rows(work / "results") - before
            if added <= 0:
                raise RuntimeError(f"eval.{label} on {run} appended no rows")
            timings[-1] = (*timings[-1][:2], f"+{added} rows")
            drop_checkpoints(run / "finetune")
        drop_checkpoints(work / "runs" / name)
    return timings


def drop_checkpoints(folder: Path) -> None:
    """Remove the checkpoints under ``folder`` once nothing reads them any more: a ViT-B run
    leaves ~0.9 GB (weights + AdamW state), and a smoke run makes about thirty of them."""
    for ckpt in sorted(folder.rglob("checkpoints")):
        shutil.rmtree(ckpt, ignore_errors=True)


def _eval_rows(results: Path) -> int:
    return sum(len(pd.read_csv(f)) for f in (results / "eval").glob("*.csv"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.smoke_full", description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None,
                   help="work folder (kept); default: a temp folder, removed afterwards")
    p.add_argument("--chapters", default=",".join(CHAPTERS),
                   help=f"comma-separated chapters (default: all: {','.join(CHAPTERS)})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    chapters = args.chapters.split(",")
    unknown = sorted(set(chapters) - set(CHAPTERS))
    if unknown:
        p.error(f"unknown chapters {unknown}; choose from {','.join(CHAPTERS)}")
    if args.dir is not None and args.dir.exists() and any(args.dir.iterdir()):
        p.error(f"--dir {args.dir} is not empty; pass a new folder (or remove it)")
    work = args.dir or Path(tempfile.mkdtemp(prefix="mmkd-smoke-full-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        timings = smoke(work.resolve(), chapters)
    except RuntimeError as err:
        log.error("smoke-full FAILED: %s", err)
        log.error("work folder kept for inspection: %s", work)
        return 1
    print("\n| step | seconds | outcome |\n|---|---:|---|")
    for label, seconds, outcome in timings:
        print(f"| {label} | {seconds:.0f} | {outcome} |")
    print(f"| total | {time.perf_counter() - start:.0f} | smoke-full passed |")
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
