"""Issue 15: every fault a user can cause ends in one clear line, and nothing is lost.

One test (or one parametrised test) per row of the issue's table, at the lowest level that
reproduces the fault quickly. Rows whose tests live beside the code they exercise:

- torn last line of ``metrics.jsonl``: test_train.py::test_a_torn_metrics_line_is_dropped_on_resume
- results CSV with a foreign column, the same run again: test_results.py::
  test_a_results_file_with_a_foreign_column_is_one_line_and_kept,
  test_the_same_run_again_replaces_its_rows (end to end: test_shre.py::
  test_tiny_run_writes_result_rows_and_resumes_without_retraining)
- ``image.init=evil.pt``: test_converters.py::test_a_checkpoint_with_a_code_payload_loads_without_running_it
- a CIFAR batch with a pickle payload: test_real_data.py::
  test_a_cifar_batch_with_a_code_payload_is_refused_without_running_it
- every range rule with its message: test_presets.py::test_out_of_range_settings_are_one_line_before_anything_runs
"""
import errno
import json
import logging
import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import common.checkpoint as checkpoint_module
from common.checkpoint import (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, list_checkpoints,
                               load_weights, resolve_resume)
from common.cli import main
from common.config import parse_cli
from common.data.cifar import prepare_cifar
from common.data.transforms import load_image
from common.errors import DataError, TrainingDiverged
from common.results import append_rows, load_results
from common.train import WEIGHT_LIMIT, fit
from test_train import ToyStream, cfg, make_model, step_fn


def the_line(err: BaseException) -> str:
    """The message of ``err``, asserting it is one non-empty line."""
    text = str(err)
    assert "\n" not in text and text
    return text


def numbers(rows):
    """Result rows without what differs between two identical runs."""
    return [{k: v for k, v in r.items() if k not in ("timestamp", "train_minutes")} for r in rows]


# ------------------------------------------------------------------ damaged checkpoints
def run_with_two_checkpoints(run):
    """A finished 20-step run with checkpoints at steps 10 and 20."""
    fit(make_model(), step_fn, ToyStream(), cfg(eval_every=0), run)
    return [p.name for p in list_checkpoints(run)]


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "model truncated": lambda c: truncate(c / MODEL_FILE),
    "model empty": lambda c: (c / MODEL_FILE).write_bytes(b""),
    "model deleted": lambda c: (c / MODEL_FILE).unlink(),
    "optimizer truncated": lambda c: truncate(c / OPTIMIZER_FILE),
    "optimizer empty": lambda c: (c / OPTIMIZER_FILE).write_bytes(b""),
    "optimizer deleted": lambda c: (c / OPTIMIZER_FILE).unlink(),
    "state truncated": lambda c: truncate(c / STATE_FILE),
    "state {}": lambda c: (c / STATE_FILE).write_text("{}"),
    "state deleted": lambda c: (c / STATE_FILE).unlink(),
}


def test_damaged_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, caplog):
    run = tmp_path / "run"
    assert run_with_two_checkpoints(run) == ["step_0000010", "step_0000020"]
    reference = make_model(seed=5)
    load_weights(reference, run / "checkpoints" / "step_0000020")
    for name, damage in DAMAGE.items():
        victim = tmp_path / name.replace(" ", "_")
        for src in list_checkpoints(run):
            dst = victim / "checkpoints" / src.name
            dst.mkdir(parents=True)
            for f in src.iterdir():
                (dst / f.name).write_bytes(f.read_bytes())
        damage(victim / "checkpoints" / "step_0000020")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert resolve_resume("auto", victim) == victim / "checkpoints" / "step_0000010", name
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "step_0000020" in warnings[0], (name, warnings)
        assert "using the older step_0000010" in warnings[0]
        with pytest.raises(DataError, match="damaged") as err:  # named explicitly: no fallback
            resolve_resume(str(victim / "checkpoints" / "step_0000020"), victim)
        the_line(err.value)

    # the e2e recovery: resume retrains steps 11-20 and ends where the undamaged run ended
    victim = tmp_path / "model_truncated"
    model = make_model(seed=9)
    result = fit(model, step_fn, ToyStream(), cfg(eval_every=0, resume="auto"), victim)
    assert result.step == 20
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    assert resolve_resume("auto", victim) == victim / "checkpoints" / "step_0000020"


def test_evaluating_a_damaged_weights_file_is_one_line(tmp_path):
    run = tmp_path / "run"
    fit(make_model(), step_fn, ToyStream(), cfg(steps=10, eval_every=0), run)
    weights = run / "checkpoints" / "step_0000010" / MODEL_FILE
    truncate(weights)
    with pytest.raises(DataError, match="is damaged") as err:
        load_weights(make_model(), weights)
    assert the_line(err.value).startswith(f"weights file {weights} is damaged (")


def test_no_intact_checkpoint_starts_fresh_with_one_warning(tmp_path, caplog):
    run = tmp_path / "run"
    fit(make_model(), step_fn, ToyStream(), cfg(steps=10, eval_every=0), run)
    (run / "checkpoints" / "step_0000010" / STATE_FILE).write_text("{}")
    with caplog.at_level(logging.WARNING):
        result = fit(make_model(), step_fn, ToyStream(), cfg(steps=10, eval_every=0, resume="auto"), run)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no intact checkpoint" in warnings[0]
    assert result.step == 10 and resolve_resume("auto", run) is not None


def test_checkpoints_without_manifest_are_accepted_when_they_parse(tmp_path):
    run = tmp_path / "run"
    fit(make_model(), step_fn, ToyStream(), cfg(steps=10, eval_every=0), run)
    ckpt = run / "checkpoints" / "step_0000010"
    (ckpt / checkpoint_module.MANIFEST_FILE).unlink()  # as written before manifests existed
    assert resolve_resume("auto", run) == ckpt


# --------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full; free space on"),
                                         (errno.EACCES, "permission denied; make")])
def test_disk_full_while_saving_is_one_line_and_keeps_earlier_checkpoints(tmp_path, monkeypatch,
                                                                          code, words):
    run = tmp_path / "run"
    fit(make_model(), step_fn, ToyStream(), cfg(steps=10, eval_every=0), run)
    real = checkpoint_module.save_model

    def full_disk(model, filename, **kw):
        real(model, filename, **kw)
        with open(filename, "r+b") as f:
            f.truncate(10)  # half written, then the disk filled up
        raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Permission denied")

    monkeypatch.setattr(checkpoint_module, "save_model", full_disk)
    with pytest.raises(DataError) as err:
        fit(make_model(), step_fn, ToyStream(), cfg(steps=20, eval_every=0, resume="auto"), run)
    msg = the_line(err.value)
    assert msg.startswith("cannot write checkpoint step_0000020 in ") and words in msg
    assert "train.resume=auto" in msg
    assert not list((run / "checkpoints").glob(".tmp*"))
    assert [p.name for p in list_checkpoints(run)] == ["step_0000010"]
    assert resolve_resume("auto", run) == run / "checkpoints" / "step_0000010"


# ------------------------------------------------------------------------- NaN guard
def test_diverging_run_names_a_checkpoint_with_sane_weights(tmp_path):
    run = tmp_path / "run"
    huge = dict(steps=60, lr=1e3, warmup_steps=0, ckpt_every=2, eval_every=0)
    with pytest.raises(TrainingDiverged) as err:
        fit(make_model(), step_fn, ToyStream(), cfg(**huge), run)
    msg = the_line(err.value)
    named = run / "checkpoints" / "step_0000002"
    assert f"last good checkpoint: {named} " in msg and "not saved" in msg
    assert [p.name for p in list_checkpoints(run)] == ["step_0000002"]
    model = make_model(seed=3)
    load_weights(model, named)
    peak = max(p.abs().max().item() for p in model.parameters())
    assert peak <= WEIGHT_LIMIT
    # resuming from it at a lower lr (the advice) trains on with finite losses and weights
    result = fit(model, step_fn, ToyStream(), cfg(**{**huge, "lr": 1e-2, "steps": 8,
                                                     "resume": str(named)}), run)
    assert result.step == 8 and all(torch.isfinite(p).all() for p in model.parameters())
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) for r in logged)  # the old one was NaN at once
    assert all(r["lr"] <= 1e-2 for r in logged[2:])  # the lower lr applies from the resume on


# ------------------------------------------------------------- DataLoader worker failure
class CorruptImageStream(ToyStream):
    """A stream whose item 13 is a corrupt image file, read in a DataLoader worker."""

    def __init__(self, image):
        super().__init__()
        self.image = image

    def __getitem__(self, k):
        if k == 13:
            load_image(self.image)
        return super().__getitem__(k)


def test_worker_failure_is_the_original_line_without_the_worker_traceback(tmp_path, caplog):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stop:
        main(lambda: fit(make_model(), step_fn, CorruptImageStream(bad), cfg(steps=4, eval_every=0),
                         tmp_path / "run", num_workers=1))
    assert stop.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith(f"error: cannot read image {bad} (OSError: Truncated File Read)")
    assert errors[0].endswith("annotation file (in DataLoader worker process 0)")
    assert "Traceback" not in errors[0] and "File \"" not in errors[0]


# ------------------------------------------------------------------ results writer
def test_a_writer_killed_mid_append_leaves_no_orphan_temp_after_the_next_append(tmp_path):
    path = tmp_path / "r.csv"
    row = {"chapter": "shre", "run": "tiny", "model": "student", "dataset": "coco5k", "i2t_r1": 1.0}
    append_rows(path, [row])
    # what `kill -9` during the write leaves: a mkstemp temp beside the file
    fd, orphan = tempfile.mkstemp(dir=tmp_path, prefix=".r.csv.", suffix=".tmp")
    os.write(fd, b"chapter,run\nshre,ha")
    os.close(fd)
    other = tmp_path / ".r.csv.notes.tmp"  # not a name append_rows makes: left alone
    other.write_text("mine")
    append_rows(path, [{**row, "run": "second"}])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.csv.notes.tmp", "r.csv", "r.csv.lock"]
    assert load_results(path)["run"].tolist() == ["tiny", "second"]


def test_a_full_disk_while_writing_results_is_one_line_and_keeps_the_file(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    row = {"chapter": "shre", "run": "tiny", "model": "student", "dataset": "coco5k", "i2t_r1": 1.0}
    append_rows(path, [row])
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DataError) as err:
        append_rows(path, [{**row, "run": "second"}])
    assert the_line(err.value).startswith(f"cannot write results to {path} (No space left on device)")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv.lock"]


# ------------------------------------------------------------------ cold vs warm cache
def test_a_cold_teacher_cache_gives_the_numbers_of_a_warm_one(tmp_path, monkeypatch):
    from test_shre import CHAPTER, FEW_STEPS, shre

    monkeypatch.setenv("MMKD_CACHE", str(tmp_path / "cache"))  # cold: teacher and tokenizer
    runs = []
    for name in ("cold", "warm"):
        monkeypatch.setenv("MMKD_RUNS", str(tmp_path / name / "runs"))
        monkeypatch.setenv("MMKD_RESULTS", str(tmp_path / name / "results"))
        rows = shre.run(parse_cli(shre.ShreConfig, CHAPTER, [*FEW_STEPS, "train.eval_every=0"]))
        ckpt = list_checkpoints(tmp_path / name / "runs" / "shre" / "shre")[-1]
        runs.append((load_file(str(ckpt / MODEL_FILE)), rows))
    (cold, cold_rows), (warm, warm_rows) = runs
    assert cold.keys() == warm.keys()
    assert all(torch.equal(cold[k], warm[k]) for k in cold)
    assert numbers(cold_rows) == numbers(warm_rows)


# ---------------------------------------------------------------- interrupted CIFAR extraction
def test_an_interrupted_cifar_extraction_is_extracted_again(tmp_path):
    from test_real_data import write_cifar_archives

    write_cifar_archives(tmp_path)
    folder = tmp_path / "cifar"
    partial = folder / "cifar-10-batches-py"  # killed after the first member (older versions)
    partial.mkdir()
    (partial / "data_batch_1").write_bytes(b"\x80\x04")
    (folder / ".cifar-100-python.tmp" / "cifar-100-python").mkdir(parents=True)  # killed now
    splits = prepare_cifar(tmp_path, verify=False)["splits"]
    assert splits["cifar10_train"]["count"] == 10 and splits["cifar100_test"]["count"] == 2
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["cifar-10-batches-py",
                                                                      "cifar-100-python"]
    # a damaged extracted folder: --force extracts it again from the archive
    (partial / "test_batch").write_bytes(b"\x80\x04")
    assert prepare_cifar(tmp_path, verify=False, force=True)["splits"]["cifar10_test"]["count"] == 3
    # without an archive to extract from, an incomplete folder is one line naming both
    (folder / "cifar-10-python.tar.gz").unlink()
    (partial / "batches.meta").unlink()
    with pytest.raises(DataError, match="is incomplete .no batches.meta. and there is no") as err:
        prepare_cifar(tmp_path, verify=False, force=True)
    the_line(err.value)


# ------------------------------------------------------------------ corrupt test image
def test_a_corrupt_test_image_stops_the_run_before_training(tmp_path):
    from common.config import EvalConfig
    from common.data.prepare import prepare
    from common.experiment import EvalSets
    from test_real_data import real, write_coco

    write_coco(tmp_path)
    prepare(["coco", "--root", str(tmp_path)])
    evals = EvalConfig(retrieval=["coco_test"], zero_shot="")
    EvalSets(real(tmp_path, image_size=16), evals)  # intact: passes
    second = tmp_path / "coco" / "val2014" / "COCO_val2014_000000000005.jpg"
    second.write_bytes(second.read_bytes()[:200])  # a truncated download
    EvalSets(real(tmp_path, image_size=16, coco_test_size=1), evals)  # only the first is used
    with pytest.raises(DataError) as err:
        EvalSets(real(tmp_path, image_size=16), evals)
    assert the_line(err.value).startswith(f"cannot read image {second} (")


# ------------------------------------------------------------------ settings out of range
@pytest.mark.parametrize("override", ["train.steps=0", "train.steps=-3", "train.batch_size=0",
                                      "eval.batch_size=0", "data.max_text_len=1",
                                      "data.max_text_len=99"])
def test_a_setting_out_of_range_exits_2_before_anything_is_written(override, caplog):
    from test_shre import CHAPTER, shre

    runs, results = (Path(os.environ[k]) for k in ("MMKD_RUNS", "MMKD_RESULTS"))
    before = [sorted(p.rglob("*")) for p in (runs, results)]
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stop:
        main(lambda: shre.run(parse_cli(shre.ShreConfig, CHAPTER, [override])))
    assert stop.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and override.split("=")[0] in errors[0] and "\n" not in errors[0]
    assert [sorted(p.rglob("*")) for p in (runs, results)] == before


# ------------------------------------------------------------------ end to end, tiny SHRe
def test_tiny_shre_resumes_past_a_damaged_checkpoint_and_a_full_disk(tmp_path, monkeypatch, caplog):
    """The tiny SHRe preset through its entry point: a full disk at the last checkpoint is one
    line and exit 2 with the earlier checkpoint intact; the same command again finishes; a
    damaged newest checkpoint is skipped with one warning and the rerun ends with the same
    weights and rows."""
    from test_shre import CHAPTER, FEW_STEPS, shre

    args = [*FEW_STEPS, "train.ckpt_every=2", "train.eval_every=0"]
    out = Path(os.environ["MMKD_RUNS"]) / "shre" / "shre"
    real = checkpoint_module.save_model

    def full_at_step_4(model, filename, **kw):
        if "step_0000004" in filename:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(model, filename, **kw)

    def chapter():
        return shre.run(parse_cli(shre.ShreConfig, CHAPTER, args))

    monkeypatch.setattr(checkpoint_module, "save_model", full_at_step_4)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stop:
        main(chapter)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert stop.value.code == 2 and len(errors) == 1
    assert errors[0].startswith("error: cannot write checkpoint step_0000004 in ")
    assert [p.name for p in list_checkpoints(out)] == ["step_0000002"]
    assert not list((out / "checkpoints").glob(".tmp*"))

    monkeypatch.setattr(checkpoint_module, "save_model", real)
    args.append("train.resume=auto")
    rows = chapter()
    weights = load_file(str(out / "checkpoints" / "step_0000004" / MODEL_FILE))
    truncate(out / "checkpoints" / "step_0000004" / OPTIMIZER_FILE)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = chapter()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "step_0000004" in warnings[0] and "optimizer" in warnings[0]
    rerun = load_file(str(out / "checkpoints" / "step_0000004" / MODEL_FILE))
    assert all(torch.equal(weights[k], rerun[k]) for k in weights)
    assert numbers(again) == numbers(rows)
