"""``make bench``: the numbers that decide whether a run fits a machine.

- retrieval: recall@1/5/10 both ways for 5,000 images x 25,000 captions at dim 768
  (the COCO-5k evaluation of every chapter): seconds, memory, and the ratio to a plain
  matmul + top-10 ranking of the same embeddings;
- ITC with a 16,384-entry memory bank per modality (the ITC chapter's full setting):
  forward + backward ms per step at batch 256, dim 768, and the ratio to plain ITC;
- real-image loader: samples per CPU-second on one core of the ``full`` presets' image path
  (decode a COCO-sized 640x480 JPEG + the 224-px train transform) as it was (PIL decode,
  ``convert("RGB")``, float32 normalised in the worker) and as it is (``torchvision.io``
  decode, uint8 out, normalised on the device), and their ratio, on JPEGs it writes;
- training, ``--preset tiny`` (CPU): steps/s, samples/s and peak memory of the SHRe
  chapter's tiny training step;
- training, ``--preset full`` (needs a CUDA GPU): for every chapter that declares a ``bench``
  (``CHAPTER = Declaration(..., bench=cfg -> BenchCase)``), its ``full.yaml`` model at the preset's batch
  size on synthetic inputs of the real shapes: steps/s, samples/s, peak GPU memory and
  model-FLOPs utilisation (FLOPs of one step counted by ``FlopCounterMode``, against the
  GPU's dense bf16 peak from :data:`PEAK_TFLOPS` or ``$MMKD_PEAK_TFLOPS``). Plain AdamW
  under autocast in ``train.precision``, without DeepSpeed (ZeRO-2 has nothing to shard
  across a single GPU).

Each benchmark runs in its own process so its peak memory is its own. Retrieval and ITC
are timed in CPU time of the process on the CPU, next to an in-process baseline: the ratios
survive a busy machine, where wall time swings 2x.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from common.chapters import chapter, chapters
from common.paths import REPO_ROOT

log = logging.getLogger("bench")

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' datasheets, TFLOP/s.
# First match of a substring of torch.cuda.get_device_name() wins, so variants come first.
PEAK_TFLOPS = (("H200 NVL", 835.0), ("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
               ("H100", 989.4), ("A100", 312.0), ("RTX 4090", 165.2))
AMP_DTYPES = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class BenchCase:
    """One chapter's training step, as a chapter's declared ``bench(cfg)`` returns it."""

    model: nn.Module  # what trains (AdamW over its trainable parameters)
    loss: Callable[[nn.Module, Dict[str, Tensor]], Tensor]  # (model, batch) -> scalar loss
    batch: Dict[str, Tensor]  # synthetic inputs of the preset's shapes, on the CPU
    frozen: Sequence[nn.Module] = ()  # teachers: moved along, eval mode, no gradients


def synthetic_image_text_batch(batch_size: int, image_size: int, text_len: int,
                               vocab_size: int, seed: int = 0) -> Dict[str, Tensor]:
    """Random images ``[B, 3, S, S]`` and full-length token ids ``[B, L]`` (no padding)."""
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(batch_size, 3, image_size, image_size, generator=g),
            "text_ids": torch.randint(4, vocab_size, (batch_size, text_len), generator=g),
            "text_padding_mask": torch.zeros(batch_size, text_len, dtype=torch.bool)}


def peak_tflops(device_name: str, env: Mapping[str, str] = os.environ) -> Optional[float]:
    """The GPU's dense bf16 peak: ``$MMKD_PEAK_TFLOPS`` if set, else :data:`PEAK_TFLOPS`."""
    if env.get("MMKD_PEAK_TFLOPS"):
        return float(env["MMKD_PEAK_TFLOPS"])
    return next((peak for key, peak in PEAK_TFLOPS if key in device_name), None)


def mfu(flops_per_step: float, steps_per_s: float, peak: Optional[float]) -> Optional[float]:
    """Model-FLOPs utilisation: achieved FLOP/s over the peak (``peak`` in TFLOP/s)."""
    return flops_per_step * steps_per_s / (peak * 1e12) if peak else None


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products and convolutions that ``fn()`` runs (forward + backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def measure(case: BenchCase, steps: int, device: str, amp_dtype: Optional[torch.dtype]) -> Dict[str, float]:
    """Time ``steps`` optimizer steps of ``case`` after a FLOP-counting one and a warm-up one."""
    model = case.model.to(device).train()
    for module in case.frozen:
        module.to(device).eval().requires_grad_(False)
    batch = {k: v.to(device) for k, v in case.batch.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with torch.autocast(device, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = case.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = count_flops(step)
    step()  # warm-up outside the counter (kernels picked, allocator settled)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    batch_size = len(next(iter(batch.values())))
    out = {"batch": batch_size, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "flops_per_step": flops, "steps_per_s": 1 / seconds, "samples_per_s": batch_size / seconds}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = peak_tflops(name)
        out.update(gpu=name, peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20,
                   peak_tflops=peak, mfu=mfu(flops, out["steps_per_s"], peak))
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _compare(fn: Callable[[], object], baseline: Callable[[], object], repeats: int) -> Dict[str, float]:
    """Seconds of ``fn`` and of ``baseline`` (best of ``repeats``, alternating, after one
    warm-up each) and their ratio. CPU time of this process on the CPU (wall time on a busy
    machine swings 2x, a ratio within one process much less); wall time on a GPU."""
    cuda = torch.cuda.is_available()
    clock = time.perf_counter if cuda else time.process_time
    best = {"s": float("inf"), "baseline_s": float("inf")}
    fn(), baseline()
    for _ in range(repeats):
        for key, f in (("s", fn), ("baseline_s", baseline)):
            t0 = clock()
            f()
            if cuda:
                torch.cuda.synchronize()
            best[key] = min(best[key], clock() - t0)
    return {**best, "ratio": best["s"] / best["baseline_s"]}


def _topk_ranking(images: Tensor, texts: Tensor, k: int = 10, chunk_size: int = 256) -> None:
    """The usual ranking: unit rows, a score chunk per direction and its top-k indices."""
    images, texts = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    for queries, keys in ((images, texts), (texts, images)):
        for start in range(0, len(queries), chunk_size):
            (queries[start:start + chunk_size] @ keys.T).topk(k, dim=1)  # c x K -> c x k


def bench_retrieval(n_images: int = 5000, dim: int = 768, repeats: int = 2) -> Dict[str, float]:
    """``retrieval_recall`` on 5 captions per image (each its image's embedding plus noise:
    recall of a half-trained model, so many images score near a caption's own) against
    :func:`_topk_ranking` (a plain matmul + top-10 per direction) on the same embeddings."""
    from common.retrieval import retrieval_recall

    g = torch.Generator().manual_seed(0)
    images = torch.randn(n_images, dim, generator=g)
    ids = torch.arange(n_images).repeat_interleave(5)
    texts = images[ids] + 8.0 * (dim / 768) ** 0.5 * torch.randn(len(ids), dim, generator=g)
    before = _peak_rss_mb()
    timing = _compare(lambda: retrieval_recall(images, texts, ids), lambda: _topk_ranking(images, texts), repeats)
    return {"retrieval_s": timing["s"], "matmul_topk_s": timing["baseline_s"],
            "retrieval_vs_topk": timing["ratio"], "peak_rss_mb": _peak_rss_mb(),
            "added_rss_mb": _peak_rss_mb() - before}


def bench_itc_bank(device: str, batch: int = 256, dim: int = 768, bank_size: int = 16384,
                   repeats: int = 5) -> Dict[str, float]:
    """ITC forward + backward with ``bank_size``-row banks per modality (contrast, then enqueue,
    as :func:`~common.memory_bank.banked_itc_loss`) against plain in-batch ITC."""
    from common.losses import itc_loss
    from common.memory_bank import MemoryBank, banked_itc_loss

    g = torch.Generator().manual_seed(0)
    image_bank, text_bank = MemoryBank(bank_size, dim).to(device), MemoryBank(bank_size, dim).to(device)
    image_bank.add(torch.randn(bank_size, dim, generator=g).to(device))
    text_bank.add(torch.randn(bank_size, dim, generator=g).to(device))
    image = torch.randn(batch, dim, generator=g).to(device).requires_grad_()
    text = torch.randn(batch, dim, generator=g).to(device).requires_grad_()
    scale = torch.tensor(100.0, device=device)
    timing = _compare(lambda: banked_itc_loss(image, text, scale, image_bank, text_bank).backward(),
                      lambda: itc_loss(image, text, scale).backward(), repeats)
    return {"itc_bank_ms": 1000 * timing["s"], "itc_plain_ms": 1000 * timing["baseline_s"],
            "bank_vs_plain": timing["ratio"], "peak_rss_mb": _peak_rss_mb()}


def _coco_like_jpeg(path: Path, seed: int, size: Tuple[int, int] = (640, 480)) -> None:
    """A photo-like JPEG: smooth gradients and waves plus grain, at COCO's typical size and
    quality, so that its bytes (~100 KB) and entropy-decoding cost resemble a COCO image's."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.3, 3)
    waves = np.stack([np.sin(xx / (9 + 4 * c) + phase[c]) * np.cos(yy / (7 + 3 * c)) for c in range(3)], -1)
    pixels = 128 + 60 * waves + 40 * (xx / width)[..., None] + rng.normal(0, 12, (height, width, 3))
    PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


class _LoaderPath(Dataset):
    """Training samples from ``files`` as one of the two image paths :func:`bench_image_loader`
    compares: ``"pil"``, the loader as it was (PIL decode, ``convert("RGB")`` twice, the train
    transform, float32 normalised per image), or ``"torchvision_uint8"``, as it is
    (:func:`~common.data.transforms.load_image`'s torchvision decode, the train transform,
    uint8 out; normalising is the device's, once per batch)."""

    def __init__(self, path: str, files: Sequence[Path], samples: int, image_size: int) -> None:
        from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform

        self.path, self.files, self.samples = path, list(files), samples
        self.transform = train_transform(image_size)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, k: int) -> Tensor:
        from common.data.transforms import load_image, to_uint8_chw

        file = self.files[k % len(self.files)]
        if self.path == "torchvision_uint8":
            return self.transform(load_image(file))
        with PIL.Image.open(file) as image:
            rgb = image.convert("RGB")
        return self.transform(to_uint8_chw(rgb)).float().sub_(self.mean).div_(self.std)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_image_loader(num_images: int = 8, samples: int = 512, rounds: int = 2,
                       image_size: int = 224, jpeg_size: Tuple[int, int] = (640, 480),
                       batch_size: int = 32) -> Dict[str, float]:
    """Samples per CPU-second on one core of the real-image training loader, the PIL path it
    had against the current one (:class:`_LoaderPath`), on JPEGs written here: ``worker``,
    a worker's work per sample in this process on one thread; ``loader``, batches through a
    one-worker ``DataLoader``, counting the CPU time of both processes (so the float32 vs
    uint8 traffic through the worker queue counts too; so does a worker's start, once per
    round, a few tens of ms over ``samples``). CPU time, with the paths interleaved
    over ``rounds``, so load on the machine scales both alike and the ratios survive it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    names = ("pil", "torchvision_uint8")
    seconds = {(how, name): 0.0 for how in ("worker", "loader") for name in names}
    with tempfile.TemporaryDirectory() as folder:
        files = [Path(folder) / f"{i:012d}.jpg" for i in range(num_images)]
        for i, path in enumerate(files):
            _coco_like_jpeg(path, i, jpeg_size)
        jpeg_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
        data = {name: _LoaderPath(name, files, samples, image_size) for name in names}
        sample_kb = {name: data[name][0].nbytes / 1024 for name in names}  # also the warm-up
        for _ in range(rounds):
            for name in names:
                t0 = time.process_time()
                for k in range(samples):
                    data[name][k]
                seconds["worker", name] += time.process_time() - t0
                t0 = _cpu_seconds()
                for _ in DataLoader(data[name], batch_size=batch_size, num_workers=1):
                    pass
                seconds["loader", name] += _cpu_seconds() - t0  # the worker has exited: counted
    torch.set_num_threads(threads)
    out: Dict[str, float] = {"jpeg_kb": jpeg_kb, "image_size": image_size,
                             **{f"{name}_sample_kb": sample_kb[name] for name in names}}
    for how in ("worker", "loader"):
        rate = {name: rounds * samples / seconds[how, name] for name in names}
        out.update({f"{how}_{name}_per_cpu_s": rate[name] for name in names})
        out[f"{how}_ratio"] = rate["torchvision_uint8"] / rate["pil"]
    return out


def bench_train_tiny(steps: int, device: str) -> Dict[str, float]:
    """SHRe tiny training steps on synthetic inputs (random-init tiny CNN teacher: the step
    costs the same, and nothing is bootstrapped)."""
    from common.tiny_teachers.bootstrap import TINY_RECIPES

    shre = chapter("shre")
    cfg = shre.load_config("tiny")
    cfg.text.vocab_size = 1024
    teacher = TINY_RECIPES["tiny-cnn"].build(cfg.teacher).eval()  # as measure() runs it
    cfg.head_classes = shre.module.teacher_classes(teacher, cfg.data.image_size)
    case = BenchCase(shre.module.build_model(cfg, pad_id=1),
                     lambda m, b: shre.module.shre_losses(m, teacher, b)["loss"],
                     synthetic_image_text_batch(cfg.train.batch_size, cfg.data.image_size,
                                                cfg.data.max_text_len, cfg.text.vocab_size),
                     frozen=[teacher])
    amp = torch.bfloat16 if device == "cuda" else None
    return {"preset": "tiny", "device": device, **measure(case, steps, device, amp),
            "peak_rss_mb": _peak_rss_mb()}


def bench_chapter(name: str, steps: int, overrides: Sequence[str] = (), device: str = "cuda") -> Dict[str, float]:
    """The ``full.yaml`` training step of chapter ``name`` (its declaration's ``bench``)."""
    ch = chapter(name)
    cfg = ch.load_config("full", overrides)
    case = ch.declaration.bench(cfg)
    return {"chapter": name, **measure(case, steps, device, AMP_DTYPES[cfg.train.precision])}


def benchable_chapters() -> List[str]:
    """Chapters with a ``full.yaml`` whose declaration has a ``bench``."""
    names = []
    for ch in chapters("full"):
        if ch.declaration.bench is None:
            log.info("chapter %s declares no bench (CHAPTER = Declaration(bench=...)): not benchmarked",
                     ch.name)
        else:
            names.append(ch.name)
    return names


def _run_child(args: Sequence[str]) -> Dict[str, float]:
    cmd = [sys.executable, "-m", "common.bench", *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _log_chapter(r: Dict[str, float]) -> None:
    util = f"MFU {100 * r['mfu']:.1f}% of {r['peak_tflops']:.0f} TFLOP/s" if r.get("mfu") else \
        "MFU n/a (unknown GPU: set MMKD_PEAK_TFLOPS)"
    log.info("%s full training step (batch %d, %.1fM params) on %s: %.2f steps/s, %.0f samples/s, "
             "peak GPU %.0f MB, %.1f TFLOP/step, %s", r["chapter"], r["batch"], r["params_m"],
             r["gpu"], r["steps_per_s"], r["samples_per_s"], r["peak_gpu_mb"],
             r["flops_per_step"] / 1e12, util)


def _log_loader(r: Dict[str, float]) -> None:
    log.info("real-image loader, %.0f-KB 640x480 JPEGs -> %d-px train crops, samples per "
             "CPU-second on one core: PIL decode + float32 in the worker (%.0f KB a sample) "
             "%.0f (worker) / %.0f (through a DataLoader worker); torchvision.io + uint8 "
             "(%.0f KB) %.0f / %.0f: %.2fx / %.2fx", r["jpeg_kb"], r["image_size"],
             r["pil_sample_kb"], r["worker_pil_per_cpu_s"], r["loader_pil_per_cpu_s"],
             r["torchvision_uint8_sample_kb"], r["worker_torchvision_uint8_per_cpu_s"],
             r["loader_torchvision_uint8_per_cpu_s"], r["worker_ratio"], r["loader_ratio"])


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--only", choices=["retrieval", "itc", "loader", "train", "chapter"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--chapter", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.only:  # child process: one benchmark, one JSON line
        result = {"retrieval": bench_retrieval, "itc": lambda: bench_itc_bank(device),
                  "loader": bench_image_loader,
                  "train": lambda: bench_train_tiny(args.steps, device),
                  "chapter": lambda: bench_chapter(args.chapter, args.steps)}[args.only]()
        print(json.dumps(result))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.preset == "full" and device != "cuda":
        log.error("error: bench --preset full times the ViT-B sized chapter models and needs a CUDA "
                  "GPU; this machine has none (make bench runs the CPU benchmarks)")
        sys.exit(2)
    log.info("machine: %d CPU threads, device %s, torch %s", torch.get_num_threads(), device,
             torch.__version__)
    r = _run_child(["--only", "retrieval"])
    log.info("retrieval 5,000 images x 25,000 captions, dim 768: %.2f s, %.2fx a plain matmul + "
             "top-10 per direction (%.2f s), peak RSS %.0f MB (+%.0f MB for the call)",
             r["retrieval_s"], r["retrieval_vs_topk"], r["matmul_topk_s"], r["peak_rss_mb"],
             r["added_rss_mb"])
    r = _run_child(["--only", "itc"])
    log.info("ITC batch 256 + 16,384-entry banks, dim 768: %.1f ms/step (fwd+bwd+enqueue), "
             "%.1fx plain ITC (%.1f ms), peak RSS %.0f MB", r["itc_bank_ms"], r["bank_vs_plain"],
             r["itc_plain_ms"], r["peak_rss_mb"])
    _log_loader(_run_child(["--only", "loader"]))
    if args.preset == "full":
        for name in benchable_chapters():
            _log_chapter(_run_child(["--only", "chapter", "--chapter", name, "--steps", str(args.steps)]))
        return
    r = _run_child(["--only", "train", "--steps", str(args.steps)])
    log.info("SHRe %s training step (batch %d, %.1fM params, %s): %.2f steps/s, %.0f samples/s, "
             "peak RSS %.0f MB%s", r["preset"], r["batch"], r["params_m"], r["device"],
             r["steps_per_s"], r["samples_per_s"], r["peak_rss_mb"],
             f", peak GPU {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else "")


if __name__ == "__main__":
    main()
