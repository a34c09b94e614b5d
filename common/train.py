"""The one training loop of every chapter: ``fit(model, step_fn, train_data, cfg, out_dir)``.

A chapter supplies the model, a ``step_fn`` that turns a batch into named losses, and a
training stream; ``fit`` does the rest, the same way for the CPU ``tiny`` preset and the
GPU ``full`` preset: Accelerate (DDP under ``accelerate launch``), fp16/bf16 and DeepSpeed
ZeRO-2 when CUDA is there, AdamW + warmup/cosine, gradient clipping, tqdm progress,
``metrics.jsonl``, periodic evaluation, atomic checkpoints and exact resume.

Data: ``train_data[k]`` is the k-th sample of an endless deterministic stream, so step
``s`` always trains on items ``[s*B, (s+1)*B)`` (``B`` = ``train.batch_size``, the global
batch; under N processes each takes a contiguous B/N slice). Resuming at step ``s`` starts
the sampler there: the same batches, nothing to skip. Images arrive as uint8 (a quarter of
the bytes through the worker queues) and are normalised on the device before ``step_fn``
sees them (:func:`common.data.transforms.to_model_input`). With the RNG states restored from
the checkpoint, a resumed CPU run ends with bit-identical weights (dropout included).

Outputs in ``out_dir``: ``metrics.jsonl`` (one JSON object per logged step: ``step``, each
loss term, ``lr``, ``samples_per_sec``, plus eval metrics on eval steps) and
``checkpoints/step_<n>/`` (see :mod:`common.checkpoint`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, send_to_device, set_seed
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from common.checkpoint import (list_checkpoints, load_checkpoint, load_weights, resolve_resume,
                               rng_state, save_checkpoint, set_rng_state, unwrap)
from common.config import ConfigError, TrainConfig
from common.data.transforms import IMAGE_KEYS, to_model_input
from common.errors import TrainingDiverged, UserError
from common.optim import build_optimizer, build_scheduler, lr_factor
from common.paths import REPO_ROOT
from common.tracking import hyperparameters, start_trackers, tracker_names

__all__ = ["FitResult", "fit", "load_weights"]

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
EvalFn = Callable[[nn.Module, int], Mapping[str, float]]


@dataclass
class FitResult:
    """What a chapter needs after training: where things are and how long it took."""

    step: int  # optimizer steps done (== cfg.steps after a complete run)
    history: list[dict[str, float]] = field(default_factory=list)  # eval metrics + "step"
    # wall minutes of training (evaluation excluded) summed over sessions (a resumed one counts
    # to its checkpoint)
    train_minutes: float = 0.0
    samples_per_sec: float = 0.0  # training throughput of this session
    out_dir: Path = Path(".")
    checkpoint: Path | None = None  # the last checkpoint folder
    trainable_params: int = 0


def fit(model: nn.Module, step_fn: StepFn, train_data: Dataset, cfg: TrainConfig,
        out_dir: str | os.PathLike, *, collate_fn: Callable | None = None, num_workers: int = 0,
        evaluate: EvalFn | None = None, frozen: Sequence[nn.Module] = (),
        on_step_end: Callable[[nn.Module, int], None] | None = None,
        param_groups: list[dict[str, Any]] | None = None) -> FitResult:
    """Train ``model`` in place for ``cfg.steps`` optimizer steps (or the rest of them on resume).

    ``step_fn(model, batch)`` returns ``{"loss": ..., **extra_terms}`` (scalar tensors);
    ``"loss"`` is backpropagated, the others are only logged. It receives the *prepared*
    model: call ``model(...)`` itself so DDP/DeepSpeed see the forward pass. ``frozen``
    modules (teachers) are moved to the device, put in eval mode and never trained.
    ``evaluate(model, step)`` gets the unwrapped model in eval mode under ``no_grad`` and
    runs on every process, every ``eval_every`` steps and after the last one; it cannot
    disturb training randomness (RNG states are restored after it). ``on_step_end(model,
    step)`` runs after each optimizer step (e.g. clamping a temperature). ``param_groups``
    replaces the default AdamW groups (e.g. timm's layer-decay groups).

    ``cfg.resume``: "" starts fresh (refused if ``out_dir`` already holds checkpoints),
    "auto" continues from the newest checkpoint in ``out_dir`` (fresh if none), a folder
    continues from it. Resuming a finished run trains and evaluates nothing and returns
    the stored history.

    Raises :class:`TrainingDiverged` (before stepping or saving) when a loss term is NaN/inf,
    and before saving a checkpoint whose weights are not finite or absurdly large
    (:func:`_check_weights`): the checkpoint it names is the last one with sane weights.
    """
    out_dir = Path(out_dir)
    ckpt = _resume_checkpoint(cfg, out_dir)
    trackers = tracker_names(cfg.log_with)
    accelerator, amp_dtype = _make_accelerator(cfg, trackers, out_dir)
    if not accelerator.is_main_process:
        log.setLevel(logging.WARNING)  # one copy of the progress log: the main process's
    device = accelerator.device
    set_seed(cfg.seed)
    for module in frozen:
        module.to(device).eval().requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("trainable parameters: %s = %.2fM (of %s; %d process(es) on %s)",
             f"{trainable:,}", trainable / 1e6, f"{total:,}", accelerator.num_processes, device)

    optimizer = build_optimizer(model, cfg, param_groups)
    scheduler = build_scheduler(optimizer, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = unwrap(accelerator, model)

    # ---- resume or start fresh
    start_step, history, minutes_before, rng = 0, [], 0.0, None
    if ckpt is not None:
        configured_lrs = list(scheduler.base_lrs)
        state = load_checkpoint(accelerator, ckpt, model, optimizer, scheduler)
        _keep_configured_lrs(optimizer, scheduler, configured_lrs)
        _warn_config_changes(state.get("config", {}), _snapshot(cfg))
        start_step, history = state["step"], state["history"]
        minutes_before, rng = state["train_minutes"], state["rng"]
        log.info("resumed from %s (step %d of %d)", ckpt, start_step, cfg.steps)
    metrics_path = out_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, start_step)
    start_trackers(accelerator, trackers, out_dir, hyperparameters(out_dir, _snapshot(cfg)))

    loader = _train_loader(train_data, cfg, start_step, accelerator, collate_fn, num_workers)
    amp = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    if rng is not None:
        set_rng_state(rng)  # last thing before the first step: dropout continues exactly

    t_start = time.time()
    eval_seconds = 0.0  # evaluation is not training time (train_minutes)

    def session_minutes() -> float:
        return (time.time() - t_start - eval_seconds) / 60

    def run_eval(step: int) -> dict[str, float]:
        nonlocal eval_seconds
        if evaluate is None:
            return {}
        t0 = time.time()
        metrics = _evaluate(evaluate, unwrapped, step, amp)
        eval_seconds += time.time() - t0
        _train_mode(model, frozen)
        history.append({"step": step, **metrics})
        log.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return metrics

    def checkpoint(step: int) -> Path:
        _check_weights(unwrapped, step, last_ckpt)
        extra = {"history": history, "config": _snapshot(cfg),
                 "train_minutes": minutes_before + session_minutes()}
        return save_checkpoint(accelerator, out_dir, step, model, optimizer, scheduler, extra)

    # ---- the loop
    last_ckpt = ckpt
    train_seconds, window_seconds, window_steps, sps = 0.0, 0.0, 0, 0.0
    _train_mode(model, frozen)
    batches = iter(loader)
    bar = tqdm(total=cfg.steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=not accelerator.is_main_process,
               mininterval=0.5 if sys.stderr.isatty() else 30)  # log files: a line per 30 s
    with logging_redirect_tqdm(), bar:
        for step in range(start_step, cfg.steps):
            t0 = time.perf_counter()
            batch = _model_inputs(send_to_device(next(batches), device))
            with amp():
                out = step_fn(model, batch)
            terms = _scalar_terms(out, accelerator)  # one host sync per step, averaged over ranks
            _check_finite(terms, step + 1, last_ckpt)
            accelerator.backward(out["loss"])
            if cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the schedule
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if on_step_end is not None:
                on_step_end(unwrapped, done)

            elapsed = time.perf_counter() - t0
            train_seconds, window_seconds, window_steps = (
                train_seconds + elapsed, window_seconds + elapsed, window_steps + 1)
            record: dict[str, float] = {}
            if _every(done, cfg.log_every, cfg.steps):
                sps = window_steps * cfg.batch_size / window_seconds
                window_seconds, window_steps = 0.0, 0
                record = {"step": done, **terms, "lr": cfg.lr * lr_factor(step, cfg),
                          "samples_per_sec": sps}
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}", samples_s=f"{sps:.0f}", refresh=False)
            if _every(done, cfg.eval_every, cfg.steps):
                metrics = run_eval(done)
                if metrics:
                    record = {"step": done, **record, **metrics}
            if record and accelerator.is_main_process:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            if record and trackers:
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=done)
            if _every(done, cfg.ckpt_every, cfg.steps):
                last_ckpt = checkpoint(done)

    if trackers:
        accelerator.end_training()
    minutes = minutes_before + session_minutes()
    steps_run = max(0, cfg.steps - start_step)
    log.info("done: step %d, %.1f min of training, last checkpoint %s",
             max(start_step, cfg.steps), minutes, last_ckpt)
    return FitResult(step=max(start_step, cfg.steps), history=history, train_minutes=minutes,
                     samples_per_sec=steps_run * cfg.batch_size / train_seconds if train_seconds else 0.0,
                     out_dir=out_dir, checkpoint=last_ckpt, trainable_params=trainable)


# ----------------------------------------------------------------------------- helpers
def _model_inputs(batch: Any) -> Any:
    """The batch with its uint8 images (:data:`IMAGE_KEYS`) normalised on the device
    (:func:`to_model_input`); other batches as they are."""
    if not isinstance(batch, Mapping):
        return batch
    return {k: to_model_input(v) if k in IMAGE_KEYS and isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def _every(step: int, period: int, last: int) -> bool:
    """Log/eval/checkpoint schedule: every ``period`` steps (never if period <= 0) and at the end."""
    return (period > 0 and step % period == 0) or step == last


def _make_accelerator(cfg: TrainConfig, trackers: Sequence[str] = (), out_dir: Path = Path(".")
                      ) -> tuple[Accelerator, torch.dtype | None]:
    """Accelerator for ``cfg``: fp16/bf16 and DeepSpeed only with CUDA, else plain fp32 on CPU;
    ``trackers`` (:mod:`common.tracking`) write under ``out_dir/trackers``.

    Returns the accelerator and the autocast dtype (``None`` = fp32). Autocast wraps the
    whole ``step_fn`` so frozen teachers, which are not prepared, run in it too.
    """
    if cfg.precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"config error: train.precision={cfg.precision} is not one of no|fp16|bf16")
    plugin = None
    precision = cfg.precision
    if not torch.cuda.is_available():
        log.info("CUDA not available: training in fp32 on CPU, DeepSpeed off")
        precision = "no"
    elif cfg.deepspeed:
        _single_process_env()
        plugin = DeepSpeedPlugin(hf_ds_config=str(_find_file(cfg.deepspeed, "train.deepspeed")))
    # Each fit() may use other precision/DeepSpeed settings than an earlier one in this
    # process (a teacher bootstrap, then the student): drop the process-wide state.
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=precision, deepspeed_plugin=plugin,
                              cpu=not torch.cuda.is_available(), log_with=list(trackers) or None,
                              project_dir=str(out_dir / "trackers"))
    if cfg.batch_size % accelerator.num_processes:
        raise ConfigError(f"config error: train.batch_size={cfg.batch_size} is not divisible by "
                          f"the {accelerator.num_processes} processes")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # From train.deepspeed or from an `accelerate launch` DeepSpeed config: fill what
        # accelerate cannot infer (fit does not prepare the loader) from train.*.
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = cfg.batch_size // accelerator.num_processes
        if ds_config.get("gradient_clipping", "auto") == "auto":
            ds_config["gradient_clipping"] = cfg.grad_clip
    amp_dtype = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return accelerator, amp_dtype


def _single_process_env() -> None:
    """DeepSpeed always initialises torch.distributed; a plain ``python run.py`` (no
    launcher) gets a world of one on a free local port."""
    if "LOCAL_RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _find_file(path: str, key: str) -> Path:
    """A config path relative to the working directory or, failing that, to the repo root."""
    for candidate in (Path(path), REPO_ROOT / path):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config error: {key}={path} not found (relative paths are tried from the "
                      f"working directory and from {REPO_ROOT})")


class _StepSampler(Sampler[int]):
    """Stream indices of steps ``[start, stop)``: step s covers items ``[s*B, (s+1)*B)``, of
    which process ``rank`` of ``world`` takes the contiguous slice of length ``B // world``."""

    def __init__(self, start: int, stop: int, batch: int, rank: int, world: int):
        self.start, self.stop, self.batch, self.local = start, stop, batch, batch // world
        self.offset = rank * self.local

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.stop):
            first = step * self.batch + self.offset
            yield from range(first, first + self.local)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.local


def _train_loader(data: Dataset, cfg: TrainConfig, start_step: int, accelerator: Accelerator,
                  collate_fn: Callable | None, num_workers: int) -> DataLoader:
    sampler = _StepSampler(start_step, cfg.steps, cfg.batch_size, accelerator.process_index,
                           accelerator.num_processes)
    # A private generator: creating the iterator must not draw from the global torch RNG,
    # or a resumed run's dropout masks would shift by one draw.
    return DataLoader(data, batch_size=sampler.local, sampler=sampler, collate_fn=collate_fn,
                      num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(cfg.seed))


def _resume_checkpoint(cfg: TrainConfig, out_dir: Path) -> Path | None:
    """The checkpoint to resume from, if any; a fresh start must not mix with an old run."""
    ckpt = resolve_resume(cfg.resume, out_dir)
    existing = list_checkpoints(out_dir)
    if not cfg.resume and existing:
        raise UserError(f"{out_dir} already holds checkpoints (newest {existing[-1].name}): continue "
                        f"that run with train.resume=auto, or delete the folder to start over")
    return ckpt


def _snapshot(cfg: TrainConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def _warn_config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    changed = sorted(k for k in current if k != "resume" and saved.get(k) != current[k])
    if changed:
        log.warning("resuming with changed train settings %s: the run will not match an "
                    "uninterrupted one", ", ".join(f"{k}={current[k]}" for k in changed))


def _keep_configured_lrs(optimizer: torch.optim.Optimizer, scheduler: Any,
                         lrs: list[float]) -> None:
    """A checkpoint brings back the peak lrs it was trained with; a resume with another
    ``train.lr`` (the advice after a divergence) must train at the new one from here on, on
    the same schedule. Unchanged lrs are left alone, so an exact resume stays bit-exact."""
    if list(scheduler.base_lrs) == lrs:
        return
    scheduler.base_lrs = list(lrs)
    for group, lr, factor in zip(optimizer.param_groups, lrs, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)


def _truncate_metrics(path: Path, start_step: int) -> None:
    """Drop log lines past the resume step (they are about to be recomputed), and a line torn
    by a kill in the middle of writing it (with one warning)."""
    if not path.exists():
        return
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            step = json.loads(line)["step"] if line else None
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s line %d is torn (killed while writing?); dropped", path, number)
            continue
        if step is not None and step <= start_step:
            lines.append(line)
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves the old file, not a stray temp


def _train_mode(model: nn.Module, frozen: Sequence[nn.Module]) -> None:
    """``model.train()`` but frozen modules (possibly submodules of ``model``) stay in eval."""
    model.train()
    for module in frozen:
        module.eval()


def _scalar_terms(out: Mapping[str, Any], accelerator: Accelerator) -> dict[str, float]:
    if "loss" not in out:
        raise KeyError(f"step_fn must return a dict with a 'loss' entry, got keys {sorted(out)}")
    values = torch.stack([torch.as_tensor(v, device=accelerator.device).detach().float().reshape(())
                          for v in out.values()])
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, "mean")  # NaN on any rank reaches every rank
    return dict(zip(out.keys(), values.tolist()))


def _check_finite(terms: Mapping[str, float], step: int, last_ckpt: Path | None) -> None:
    bad = [k for k, v in terms.items() if not math.isfinite(v)]
    if bad:
        term = next((k for k in bad if k != "loss"), "loss")
        raise TrainingDiverged(
            f"loss diverged at step {step}: term '{term}' = {terms[term]}; last good checkpoint: "
            f"{last_ckpt or 'none yet'} (resume with train.resume=auto); try a lower train.lr, "
            f"enable train.grad_clip (e.g. 1.0), or check the data")


# Trained transformer weights stay far below this (|w| < 100 in ViT/BERT/data2vec checkpoints);
# a parameter beyond it means the run has diverged even if the loss is still a number.
WEIGHT_LIMIT = 1e4


def _check_weights(model: nn.Module, step: int, last_ckpt: Path | None) -> None:
    """Refuse to save weights that have diverged (non-finite, or some trainable parameter
    beyond :data:`WEIGHT_LIMIT` in absolute value), so that every checkpoint the NaN guard
    names as "last good" is one a resumed run can continue from."""
    peaks = [p.detach().abs().max().float() for p in model.parameters()
             if p.requires_grad and p.numel()]
    peak = torch.stack(peaks).max().item() if peaks else 0.0  # NaN anywhere -> NaN
    if not math.isfinite(peak) or peak > WEIGHT_LIMIT:
        raise TrainingDiverged(
            f"weights diverged by step {step}: max |weight| = {peak:.3g} (limit {WEIGHT_LIMIT:g}), "
            f"not saved; last good checkpoint: {last_ckpt or 'none yet'} (resume with "
            f"train.resume=auto); try a lower train.lr or enable train.grad_clip (e.g. 1.0)")


def _evaluate(evaluate: EvalFn, model: nn.Module, step: int, amp: Callable) -> dict[str, float]:
    """``evaluate`` in eval mode without grads; RNG states are put back afterwards so that
    evaluating (or not, or at other steps) never changes the training run."""
    state = rng_state()
    model.eval()
    with torch.no_grad(), amp():
        metrics = {k: float(v) for k, v in evaluate(model, step).items()}
    set_rng_state(state)
    return metrics
