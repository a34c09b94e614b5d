"""``make bench``: the numbers that decide whether a run fits a machine.

- retrieval: recall@1/5/10 both ways for 5,000 images x 25,000 captions at dim 768
  (the COCO-5k evaluation of every chapter): seconds and memory;
- ITC with a 16,384-entry memory bank per modality (the ITC chapter's full setting):
  forward + backward ms per step at batch 256, dim 768;
- training: steps/s, samples/s and peak memory of the SHRe chapter's training step
  (tiny preset on CPU; ``--preset full`` on a GPU: the ViT-B sized model at batch 256 on
  synthetic inputs of the real shapes, with bf16 autocast).

Each benchmark runs in its own process so its peak RSS is its own.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch

from common.paths import REPO_ROOT

log = logging.getLogger("bench")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Best wall seconds of ``repeats`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_retrieval() -> Dict[str, float]:
    from common.retrieval import retrieval_recall

    g = torch.Generator().manual_seed(0)
    images = torch.randn(5000, 768, generator=g)
    texts = torch.randn(25000, 768, generator=g)
    ids = torch.arange(5000).repeat_interleave(5)
    before = _peak_rss_mb()
    seconds = _timed(lambda: retrieval_recall(images, texts, ids), repeats=2)
    return {"retrieval_5k_x_25k_s": seconds, "peak_rss_mb": _peak_rss_mb(),
            "added_rss_mb": _peak_rss_mb() - before}


def bench_itc_bank(device: str) -> Dict[str, float]:
    from common.losses import itc_loss
    from common.memory_bank import MemoryBank

    g = torch.Generator().manual_seed(0)
    image_bank, text_bank = MemoryBank(16384, 768).to(device), MemoryBank(16384, 768).to(device)
    image_bank.add(torch.randn(16384, 768, generator=g).to(device))
    text_bank.add(torch.randn(16384, 768, generator=g).to(device))
    image = torch.randn(256, 768, generator=g).to(device).requires_grad_()
    text = torch.randn(256, 768, generator=g).to(device).requires_grad_()

    def step() -> None:
        loss = itc_loss(image, text, torch.tensor(100.0, device=device),
                        image_bank.get(), text_bank.get())
        loss.backward()
        image_bank.add(image.detach())
        text_bank.add(text.detach())

    return {"itc_bank16k_ms": 1000 * _timed(step, repeats=5), "peak_rss_mb": _peak_rss_mb()}


def _shre_chapter():
    spec = importlib.util.spec_from_file_location("shre_run", REPO_ROOT / "experiments/shre/run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["shre_run"] = module
    spec.loader.exec_module(module)
    return module


def bench_train(preset: str, steps: int) -> Dict[str, float]:
    """SHRe training steps on synthetic inputs of the preset's shapes (random-init teacher of
    the preset's architecture: the step costs the same, and nothing is downloaded/bootstrapped)."""
    from common.config import parse_cli
    from common.models.teachers import TINY_RECIPES

    shre = _shre_chapter()
    cfg = parse_cli(shre.ShreConfig, REPO_ROOT / "experiments/shre", [f"preset={preset}"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    num_classes = 100 if preset == "tiny" else 1000
    cfg.text.vocab_size = 1024 if preset == "tiny" else 50265
    cfg.image.init = cfg.text.init = ""
    model = shre.build_model(cfg, num_classes, pad_id=1).to(device)
    if preset == "tiny":
        teacher = TINY_RECIPES["tiny-cnn"].build(cfg.teacher)
    else:
        import timm
        teacher = timm.create_model("resnet50", num_classes=num_classes)
    teacher = teacher.to(device).eval().requires_grad_(False)
    B, L, S = cfg.train.batch_size, cfg.data.max_text_len, cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(B, 3, S, S, generator=g).to(device),
             "text_ids": torch.randint(3, cfg.text.vocab_size, (B, L), generator=g).to(device),
             "text_padding_mask": torch.zeros(B, L, dtype=torch.bool).to(device)}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
           else torch.autocast("cpu", enabled=False))

    def step() -> None:
        with amp:
            loss = shre.shre_losses(model, teacher, batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    params = sum(p.numel() for p in model.parameters())
    out = {"preset": preset, "device": device, "batch": B, "params_m": params / 1e6,
           "steps_per_s": 1 / seconds, "samples_per_s": B / seconds, "peak_rss_mb": _peak_rss_mb()}
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _run_child(name: str, args: argparse.Namespace) -> Dict[str, float]:
    cmd = [sys.executable, "-m", "common.bench", "--only", name, "--preset", args.preset,
           "--steps", str(args.steps)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--only", choices=["retrieval", "itc", "train"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.only:  # child process: one benchmark, one JSON line
        result = {"retrieval": bench_retrieval, "itc": lambda: bench_itc_bank(device),
                  "train": lambda: bench_train(args.preset, args.steps)}[args.only]()
        print(json.dumps(result))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.preset == "full" and device != "cuda":
        log.info("bench --preset full measures the ViT-B sized models and needs a GPU; "
                 "this machine has none, so only the CPU benchmarks run")
        args.preset = "tiny"
    log.info("machine: %d CPU threads, device %s, torch %s", torch.get_num_threads(), device,
             torch.__version__)
    r = _run_child("retrieval", args)
    log.info("retrieval 5,000 images x 25,000 captions, dim 768: %.2f s, peak RSS %.0f MB "
             "(+%.0f MB for the call)", r["retrieval_5k_x_25k_s"], r["peak_rss_mb"], r["added_rss_mb"])
    r = _run_child("itc", args)
    log.info("ITC batch 256 + 16,384-entry banks, dim 768: %.1f ms/step (fwd+bwd+enqueue), "
             "peak RSS %.0f MB", r["itc_bank16k_ms"], r["peak_rss_mb"])
    r = _run_child("train", args)
    log.info("SHRe %s training step (batch %d, %.1fM params, %s): %.2f steps/s, %.0f samples/s, "
             "peak RSS %.0f MB%s", r["preset"], r["batch"], r["params_m"], r["device"],
             r["steps_per_s"], r["samples_per_s"], r["peak_rss_mb"],
             f", peak GPU {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else "")


if __name__ == "__main__":
    main()
