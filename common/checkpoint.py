"""Training checkpoints: safetensors for tensors, one small JSON for everything else.

Layout of ``<out_dir>/checkpoints/step_0000300/`` (the step is the number of finished
optimizer steps):

    model.safetensors       weights of the unwrapped model (shared/tied tensors stored once)
    optimizer.safetensors   optimizer state tensors, keys ``state.<param index>.<name>``
    state.json              step, scheduler state, optimizer param groups and non-tensor
                            state, python/numpy/torch(/cuda) RNG states, config snapshot,
                            eval history, train minutes so far (+ GradScaler under fp16)
    accelerate/             DeepSpeed only: ``Accelerator.save_state`` output (ZeRO-sharded
                            model/optimizer; replaces optimizer.safetensors)
    manifest.json           name -> size in bytes of every file above; written last

A checkpoint is written into ``.tmp_step_<n>`` and renamed into place; the newest ``keep``
folders are kept. A rename does not protect against what happens to the files later (a
full disk that truncated them, a hand-edited ``state.json``, a copy that stopped half-way),
so before a checkpoint is resumed from, :func:`checkpoint_problem` checks it: every file of
the manifest present with its size, ``state.json`` parsing with the keys that resume needs,
the safetensors headers parsing and covering their files. ``train.resume=auto`` skips a
damaged newest checkpoint with one warning and falls back to the newest intact one (or a
fresh start). Sizes, not checksums: hashing gigabytes on every resume costs more than the
damage it would catch beyond truncation. Checkpoints written before manifests existed are
accepted when the rest of the checks pass.

A write that fails (disk full, no permission) removes the ``.tmp_step_<n>`` folder, leaves
earlier checkpoints as they are and raises one :class:`DataError` line. Nothing here calls
``torch.load`` (only DeepSpeed's own loader does, on the GPU path).
"""
from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from common.errors import DataError

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
DEEPSPEED_DIR = "accelerate"
MANIFEST_FILE = "manifest.json"
# what resume reads from state.json besides the keys fit() adds itself
STATE_KEYS = ("step", "scheduler", "rng")


# ---------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) generator states as JSON-serialisable values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`: the next random draws equal those after the capture."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run a block without consuming the caller's random numbers: the python, numpy and
    torch (and CUDA) states are put back afterwards. Around cached builds (tiny teachers), so
    a run's numbers do not depend on whether the cache was cold or warm."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _b64(byte_tensor: torch.Tensor) -> str:
    return base64.b64encode(byte_tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


# ------------------------------------------------------------------------ optimizer state
def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> dict[str, Any]:
    """Write the optimizer's tensor state to ``path`` (safetensors); return the rest for JSON.

    The returned dict holds ``param_groups`` (hyperparameters, param indices, names) and the
    non-tensor per-parameter state, i.e. whatever is not a tensor in ``state_dict()``.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in sd["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    save_file(tensors, str(path))
    return {"param_groups": sd["param_groups"], "state": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path, meta: dict[str, Any]) -> None:
    """Restore what :func:`save_optimizer` wrote (tensors move to each parameter's device)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in load_file(str(path)).items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["state"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ------------------------------------------------------------------------ checkpoint dirs
def unwrap(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The bare model. Single-process it is ``model`` itself; ``accelerator.unwrap_model``
    would import DeepSpeed just to check, which logs a warning on machines without a GPU."""
    if accelerator.distributed_type == DistributedType.NO:
        return model
    return accelerator.unwrap_model(model)


def step_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:07d}"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Checkpoint folders under ``out_dir/checkpoints`` (intact or not), oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step_*") if p.is_dir()), key=lambda p: p.name)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (a short phrase), or None when it is intact."""
    ckpt = Path(ckpt)
    if (ckpt / MANIFEST_FILE).is_file():
        try:
            files = json.loads((ckpt / MANIFEST_FILE).read_text())["files"]
            sizes = {str(name): int(size) for name, size in files.items()}
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            return f"{MANIFEST_FILE} is unreadable"
        for name, size in sizes.items():
            if not (ckpt / name).is_file():
                return f"{name} is missing"
            if (actual := (ckpt / name).stat().st_size) != size:
                return f"{name} has {actual} bytes instead of {size}"
    if not (ckpt / STATE_FILE).is_file():
        return f"{STATE_FILE} is missing"
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (ValueError, UnicodeDecodeError):
        return f"{STATE_FILE} is not valid JSON (truncated?)"
    deepspeed = (ckpt / DEEPSPEED_DIR).is_dir()
    needed = STATE_KEYS if deepspeed else (*STATE_KEYS, "optimizer")
    missing = [k for k in needed if not isinstance(state, dict) or k not in state]
    if missing:
        return f"{STATE_FILE} lacks {', '.join(missing)}"
    for name in (MODEL_FILE,) if deepspeed else (MODEL_FILE, OPTIMIZER_FILE):
        if not (ckpt / name).is_file():
            return f"{name} is missing"
        try:
            with safe_open(str(ckpt / name), "pt"):
                pass
        except SafetensorError as err:  # safe_open checks the header covers the whole file
            return f"{name} is damaged ({err})"
    return None


def latest_intact(out_dir: Path) -> Path | None:
    """The newest checkpoint of ``out_dir`` that :func:`checkpoint_problem` accepts, or None.

    Skipped (damaged) ones are named, with the reason and what is used instead, in one
    warning line.
    """
    skipped = []
    for ckpt in reversed(list_checkpoints(out_dir)):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            break
        skipped.append(f"{ckpt} ({problem})")
    else:
        ckpt = None
    if skipped:
        instead = f"using the older {ckpt.name}" if ckpt else "no intact checkpoint is left"
        log.warning("skipping damaged checkpoint %s; %s", "; ".join(skipped), instead)
    return ckpt


def resolve_resume(resume: str, out_dir: Path) -> Path | None:
    """``train.resume`` -> checkpoint folder: "" = none, "auto" = newest intact one of this
    run (or none), a folder = that one, which must be intact."""
    if not resume:
        return None
    if resume == "auto":
        found = latest_intact(out_dir)
        if found is None:
            log.info("train.resume=auto: no intact checkpoint under %s, starting from scratch",
                     out_dir)
        return found
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise DataError(f"train.resume={resume}: not a checkpoint folder (no {STATE_FILE}); "
                        f"pass a checkpoints/step_* folder or train.resume=auto")
    if (problem := checkpoint_problem(path)) is not None:
        raise DataError(f"train.resume={resume}: the checkpoint is damaged ({problem}); pass an "
                        f"older checkpoints/step_* folder or train.resume=auto")
    return path


def save_checkpoint(accelerator: Accelerator, out_dir: Path, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, extra: dict[str, Any],
                    keep: int = 2) -> Path:
    """Atomically write the checkpoint of ``step``; keep the newest ``keep``; return its folder.

    Every process must call this (DeepSpeed writes one shard per rank); only the main
    process writes the shared files. ``extra`` (history, config, ...) goes into state.json.
    """
    final = step_dir(out_dir, step)
    tmp = final.with_name(f".tmp_{final.name}")
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        if deepspeed:  # GPU only; exercised by the full preset, not by the CPU tests
            accelerator.save_state(str(tmp / DEEPSPEED_DIR))
            accelerator.wait_for_everyone()  # every shard is on disk before the manifest
        if accelerator.is_main_process:
            save_model(unwrap(accelerator, model), str(tmp / MODEL_FILE), force_contiguous=True)
            state = {"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(), **extra}
            if not deepspeed:
                state["optimizer"] = save_optimizer(optimizer, tmp / OPTIMIZER_FILE)
            if accelerator.scaler is not None:
                state["scaler"] = accelerator.scaler.state_dict()
            (tmp / STATE_FILE).write_text(json.dumps(state))
            _write_manifest(tmp)
            _replace_dir(tmp, final)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(_write_error(final, err)) from err
    if accelerator.is_main_process:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write_manifest(folder: Path) -> None:
    """The size of every file in ``folder``: written last, so its presence means "complete"."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size
             for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files}))


def _write_error(final: Path, err: Exception) -> str:
    """One line for a failed checkpoint write: what, where, how to fix. safetensors reports
    OS errors as text ("IoError(Os { code: 28, ... })"), hence the text match too."""
    where = final.parent
    code = getattr(err, "errno", None)
    text = " ".join(str(err).split())
    if code == errno.ENOSPC or "no space left" in text.lower():
        reason = "the disk is full"
        fix = f"free space on {where} (or set MMKD_RUNS to a disk with room)"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS) or "permission denied" in text.lower():
        reason = "permission denied"
        fix = f"make {where} writable (or set MMKD_RUNS to a writable folder)"
    else:
        reason, fix = text, f"check {where} (or set MMKD_RUNS to another folder)"
    return (f"cannot write checkpoint {final.name} in {where}: {reason}; {fix}, then continue with "
            f"train.resume=auto (earlier checkpoints are kept)")


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` (same step, older run) is moved aside first."""
    if dst.exists():
        trash = dst.with_name(f".old_{dst.name}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def load_checkpoint(accelerator: Accelerator, ckpt: Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore model, optimizer, scheduler (and GradScaler) from ``ckpt``; return state.json.

    RNG states are *not* restored here: the caller does that last, right before the first
    step, so nothing in between can consume random numbers.
    """
    state = json.loads((ckpt / STATE_FILE).read_text())
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed != (ckpt / DEEPSPEED_DIR).is_dir():
        raise DataError(f"checkpoint {ckpt} was written {'without' if deepspeed else 'with'} DeepSpeed; "
                        f"resume it with the same train.deepspeed setting and hardware")
    if deepspeed:
        accelerator.load_state(str(ckpt / DEEPSPEED_DIR))
    else:
        _load_model(unwrap(accelerator, model), ckpt / MODEL_FILE)
        load_optimizer(optimizer, ckpt / OPTIMIZER_FILE, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if accelerator.scaler is not None and "scaler" in state:
        accelerator.scaler.load_state_dict(state["scaler"])
    return state


def _load_model(model: nn.Module, path: Path, strict: bool = True) -> None:
    try:
        load_model(model, str(path), strict=strict)
    except SafetensorError as err:  # truncated, empty, not a safetensors file
        raise DataError(f"weights file {path} is damaged ({err}); use another checkpoint of the "
                        f"run (checkpoints/step_*) or train again") from None
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        detail = detail if len(detail) < 300 else detail[:300] + "..."
        raise DataError(f"checkpoint {path} does not fit the model; was it written with a different "
                        f"model config? ({detail})") from None


def load_weights(model: nn.Module, checkpoint: str | os.PathLike, strict: bool = True) -> Path:
    """Load model weights for evaluation; return the ``model.safetensors`` file used.

    ``checkpoint`` may be a ``model.safetensors`` file, a checkpoint folder, or a run's
    out_dir (its newest intact checkpoint is used).
    """
    path = Path(checkpoint)
    if path.is_dir() and not (path / MODEL_FILE).is_file():
        found = latest_intact(path)
        if found is not None:
            path = found
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise DataError(f"no model weights at {checkpoint}: expected a {MODEL_FILE}, a "
                        f"checkpoints/step_* folder or a run folder that contains checkpoints/")
    _load_model(model, path, strict)
    return path
